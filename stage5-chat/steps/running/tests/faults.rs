//! Fault checks for stage 5e, a server you can leave running, run as a
//! reader runs it (its connection log on): clients that reset, half-close
//! or churn end only their own connection. Run them against your own server with
//! `STAGE5E_BIN=/path/to/your/server cargo test -p stage5e-running`.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5E_BIN", env!("CARGO_BIN_EXE_stage5e-running"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
