//! Exercise checks for stage 5a, the chat server. Run them against your own
//! server with `STAGE5A_BIN=/path/to/your/server cargo test -p stage5a-chat`.

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-chat"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

#[path = "checks/chat.rs"]
mod chat;
