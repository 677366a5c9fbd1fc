//! Exercise checks for the stage 5d chat client, on a pipe and on a file,
//! against 5c's server. Run them against your own client with
//! `STAGE5D_CLIENT_BIN=/path/to/your/client cargo test -p stage5d-client`
//! (and your server with `STAGE5C_BIN`).

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::workspace_bin("STAGE5C_BIN", "stage5c-commands")
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5D_CLIENT_BIN", env!("CARGO_BIN_EXE_stage5d-client"))
}

testkit::client_conventions!(client_bin());

/// Its own: the client on a pipe.
#[path = "checks/client.rs"]
mod client;
