//! Exercise checks for stage 7e, names for the whole cluster: without
//! `--redis` it is stage 5's server, so the checks of stage 5's steps (5a
//! lines, 5b the chat, 5c commands, 5e a server you can leave running) run
//! against it unchanged; with `--redis`, 7a's to 7d's and its own.
//! Run them against your own server with
//! `STAGE7E_BIN=/path/to/yours cargo test -p stage7e-names`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use chat::route;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE7E_BIN", env!("CARGO_BIN_EXE_stage7e-names"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 7e",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

/// Stage 5a's checks: lines.
#[path = "../../../../stage5-chat/steps/lines/tests/checks/lines.rs"]
mod lines;

/// Stage 5b's checks: the chat.
#[path = "../../../../stage5-chat/steps/chat/tests/checks/chat.rs"]
mod chat;

/// Stage 5c's checks: commands.
#[path = "../../../../stage5-chat/steps/commands/tests/checks/commands.rs"]
mod commands;

/// Stage 5e's checks: a server you can leave running.
#[path = "../../../../stage5-chat/steps/running/tests/checks/running.rs"]
mod running;

/// Stage 7a's checks: the link to Redis.
#[path = "../../link/tests/checks/link.rs"]
mod link;

/// Stage 7b's checks: the stream, read.
#[path = "../../stream/tests/checks/stream.rs"]
mod stream;

/// Stage 7c's checks: nothing lost silently.
#[path = "../../lossless/tests/checks/lossless.rs"]
mod lossless;

/// Stage 7d's checks: numbers for the whole cluster.
#[path = "../../numbers/tests/checks/numbers.rs"]
mod numbers;

/// Its own: names for the whole cluster.
#[path = "checks/names.rs"]
mod names;
