//! Exercise checks for stage 5b, a chat server you can leave running: the
//! checks of stage 5a, and its own. Run them against your own server with
//! `STAGE5B_BIN=/path/to/your/server cargo test -p stage5b-running`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5B_BIN", env!("CARGO_BIN_EXE_stage5b-running"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 5b",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

/// Stage 5a's checks: the chat.
#[path = "../../chat/tests/checks/chat.rs"]
mod chat;

/// Its own checks.
#[path = "checks/running.rs"]
mod running;
