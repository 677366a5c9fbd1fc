//! Exercise checks for the stage 5f chat client, against 5e's server: 5d's
//! on a pipe, and its own on a terminal. Run them against your own client
//! with `STAGE5F_CLIENT_BIN=/path/to/your/client cargo test -p stage5f-terminal`
//! (and your server with `STAGE5E_BIN`).

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::workspace_bin("STAGE5E_BIN", "stage5e-running")
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5F_CLIENT_BIN", env!("CARGO_BIN_EXE_stage5f-client"))
}

testkit::client_conventions!(client_bin());

/// Stage 5d's checks: the client on a pipe.
#[path = "../../client/tests/checks/client.rs"]
mod client;

/// Its own: the client on a terminal.
#[path = "checks/terminal.rs"]
mod terminal;
