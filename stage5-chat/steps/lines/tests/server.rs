//! Exercise checks for stage 5a, lines. Run them against your own server
//! with `STAGE5A_BIN=/path/to/your/server cargo test -p stage5a-lines`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use testkit::Server;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-lines"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::echo_probe);

/// How this step is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and no client kept waiting
/// while another does not read.
const DESIGN: Design = Design {
    stage: "stage 5a",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Echo,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::echo_probe, DESIGN);

/// Where a line comes out in this step: back at the client that sent it.
fn route(server: &Server) -> lines::Route {
    lines::Route::Echo {
        sender: server.connect(),
    }
}

#[path = "checks/lines.rs"]
mod lines;
