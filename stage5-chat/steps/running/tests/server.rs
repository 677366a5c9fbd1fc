//! Exercise checks for stage 5e, a chat server you can leave running: the
//! checks of stages 5a, 5b and 5c, and its own. Run them against your own server with
//! `STAGE5E_BIN=/path/to/your/server cargo test -p stage5e-running`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use chat::route;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5E_BIN", env!("CARGO_BIN_EXE_stage5e-running"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 5e",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

/// Stage 5a's checks: lines.
#[path = "../../lines/tests/checks/lines.rs"]
mod lines;

/// Stage 5b's checks: the chat.
#[path = "../../chat/tests/checks/chat.rs"]
mod chat;

/// Stage 5c's checks: commands.
#[path = "../../commands/tests/checks/commands.rs"]
mod commands;

/// Its own checks.
#[path = "checks/running.rs"]
mod running;
