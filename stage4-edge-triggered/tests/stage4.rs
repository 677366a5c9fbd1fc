//! Exercise checks for stage 4. Run them against your own server with
//! `STAGE4_BIN=/path/to/your/server cargo test -p stage4-edge-triggered`.

use std::path::PathBuf;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE4_BIN", env!("CARGO_BIN_EXE_stage4-edge-triggered"))
}

/// The step the checks' failure messages name.
const STAGE: &str = "stage 4";

// The checks are in a file of their own, so that 4b runs them too.
include!("checks/echo.rs");
