//! Fault checks for the stage 5 chat server, run as a reader runs it (its
//! connection log on): clients that reset, half-close or churn end only
//! their own connection. Run them against your own server with
//! `STAGE5_SERVER_BIN=/path/to/your/server cargo test -p stage5-chat`.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
