//! Stage 5's fault checks, run as a reader runs the server (its connection
//! log on), against stage 7e without `--redis`: clients that reset,
//! half-close or churn end only their own connection.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE7E_BIN", env!("CARGO_BIN_EXE_stage7e-names"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
