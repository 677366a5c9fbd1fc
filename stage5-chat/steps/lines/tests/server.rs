//! Exercise checks for stage 5a, lines. Run them against your own server
//! with `STAGE5A_BIN=/path/to/your/server cargo test -p stage5a-lines`.

use std::path::PathBuf;

use testkit::Server;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-lines"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::echo_probe);

/// Where a line comes out in this step: back at the client that sent it.
fn route(server: &Server) -> lines::Route {
    lines::Route::Echo {
        sender: server.connect(),
    }
}

#[path = "checks/lines.rs"]
mod lines;
