//! Exercise checks for the stage 5b chat client. Run them against your own
//! client with `STAGE5B_CLIENT_BIN=/path/to/your/client cargo test -p stage5b-running`
//! (and your server with `STAGE5B_BIN`).

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5B_BIN", env!("CARGO_BIN_EXE_stage5b-running"))
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5B_CLIENT_BIN", env!("CARGO_BIN_EXE_stage5b-client"))
}

testkit::client_conventions!(client_bin());

#[path = "checks/client.rs"]
mod client;
