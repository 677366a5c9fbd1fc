//! Exercise checks for the stage 5 chat client. Run them against your own
//! client with `STAGE5_CLIENT_BIN=/path/to/your/client cargo test -p stage5-chat`
//! (and your server with `STAGE5_SERVER_BIN`).

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5_CLIENT_BIN", env!("CARGO_BIN_EXE_client"))
}

testkit::client_conventions!(client_bin());

#[path = "../steps/running/tests/checks/client.rs"]
mod client;
