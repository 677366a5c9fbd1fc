//! Exercise checks for stage 5g, a chat server at its limits: the checks
//! of stages 5a, 5b, 5c and 5e, and its own. Run them against your own
//! server with `STAGE5G_BIN=/path/to/your/server cargo test -p stage5g-limits`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use chat::route;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5G_BIN", env!("CARGO_BIN_EXE_stage5g-limits"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 5g",
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

/// Stage 5e's checks: a server you can leave running.
#[path = "../../running/tests/checks/running.rs"]
mod running;

/// Its own checks.
#[path = "checks/limits.rs"]
mod limits;
