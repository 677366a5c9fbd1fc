//! Exercise checks for the stage 5 chat client: 5d's, on a pipe, and 5f's,
//! on a terminal. Run them against your own client with
//! `STAGE5_CLIENT_BIN=/path/to/your/client cargo test -p stage5-chat`
//! (and your server with `STAGE5_SERVER_BIN`).

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5_CLIENT_BIN", env!("CARGO_BIN_EXE_client"))
}

testkit::client_conventions!(client_bin());

/// Stage 5d's checks: the client on a pipe.
#[path = "../steps/client/tests/checks/client.rs"]
mod client;

/// Stage 5f's checks: the client on a terminal.
#[path = "../steps/terminal/tests/checks/terminal.rs"]
mod terminal;
