//! Stage 5's fault checks, run as a reader runs the server (its connection
//! log on), against stage 7d without `--redis`: clients that reset,
//! half-close or churn end only their own connection.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE7D_BIN", env!("CARGO_BIN_EXE_stage7d-numbers"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
