//! Fault checks for stage 5g, a server at its limits, run as a reader runs
//! it (its connection log on): clients that reset, half-close or churn end
//! only their own connection. Run them against your own server with
//! `STAGE5G_BIN=/path/to/your/server cargo test -p stage5g-limits`.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5G_BIN", env!("CARGO_BIN_EXE_stage5g-limits"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
