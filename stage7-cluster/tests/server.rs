//! Without `--redis`, stage 7 is stage 5: the checks of stage 5's steps
//! (5a lines, 5b the chat, 5c commands, 5e a server you can leave running,
//! 5g a server at its limits) run against this binary unchanged. Run them against your own with
//! `STAGE7_BIN=/path/to/your/server cargo test -p stage7-cluster`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use chat::route;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE7_BIN", env!("CARGO_BIN_EXE_stage7-cluster"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 7",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

/// Stage 5a's checks: lines.
#[path = "../../stage5-chat/steps/lines/tests/checks/lines.rs"]
mod lines;

/// Stage 5b's checks: the chat.
#[path = "../../stage5-chat/steps/chat/tests/checks/chat.rs"]
mod chat;

/// Stage 5c's checks: commands.
#[path = "../../stage5-chat/steps/commands/tests/checks/commands.rs"]
mod commands;

/// Stage 5e's checks: a server you can leave running.
#[path = "../../stage5-chat/steps/running/tests/checks/running.rs"]
mod running;

/// Stage 5g's checks: a server at its limits.
#[path = "../../stage5-chat/steps/limits/tests/checks/limits.rs"]
mod limits;

/// Stage 7a's checks: the link to Redis.
#[path = "../steps/link/tests/checks/link.rs"]
mod link;

/// Stage 7b's checks: the stream, read.
#[path = "../steps/stream/tests/checks/stream.rs"]
mod stream;

/// Stage 7c's checks: nothing lost silently.
#[path = "../steps/lossless/tests/checks/lossless.rs"]
mod lossless;

/// Stage 7d's checks: numbers for the whole cluster.
#[path = "../steps/numbers/tests/checks/numbers.rs"]
mod numbers;

/// Stage 7e's checks: names for the whole cluster.
#[path = "../steps/names/tests/checks/names.rs"]
mod names;

/// Stage 7f's checks: the count of the whole cluster.
#[path = "../steps/counts/tests/checks/counts.rs"]
mod counts;

/// Stage 7g's checks: leases, and a node that dies.
#[path = "../steps/leases/tests/checks/leases.rs"]
mod leases;
