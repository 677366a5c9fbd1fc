//! Exercise checks for stage 4b. It is stage 4 reshaped, so its checks are
//! stage 4's, every one, run against this step's binary. Run them against
//! your own server with
//! `STAGE4B_BIN=/path/to/your/server cargo test -p stage4b-server`.

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE4B_BIN", env!("CARGO_BIN_EXE_stage4b-server"))
}

/// The step the checks' failure messages name.
const STAGE: &str = "stage 4b";

include!("../../../tests/checks/echo.rs");
