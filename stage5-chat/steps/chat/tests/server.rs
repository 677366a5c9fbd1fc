//! Exercise checks for stage 5a, the chat server. Run them against your own
//! server with `STAGE5A_BIN=/path/to/your/server cargo test -p stage5a-chat`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-chat"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 5a",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

#[path = "checks/chat.rs"]
mod chat;
