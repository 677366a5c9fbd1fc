//! Exercise checks for stage 5b, a chat server you can leave running: the
//! checks of stage 5a, and its own. Run them against your own server with
//! `STAGE5B_BIN=/path/to/your/server cargo test -p stage5b-running`.

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5B_BIN", env!("CARGO_BIN_EXE_stage5b-running"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// Stage 5a's checks: the chat.
#[path = "../../chat/tests/checks/chat.rs"]
mod chat;

/// Its own checks.
#[path = "checks/running.rs"]
mod running;
