//! Exercise checks for the stage 5 chat server: the checks of every step
//! before it (5a, the chat; 5b, a server you can leave running), and its
//! own. Run them against your own server with
//! `STAGE5_SERVER_BIN=/path/to/your/server cargo test -p stage5-chat`.

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// Stage 5a's checks: the chat.
#[path = "../steps/chat/tests/checks/chat.rs"]
mod chat;

/// Stage 5b's checks: a server you can leave running.
#[path = "../steps/running/tests/checks/running.rs"]
mod running;
