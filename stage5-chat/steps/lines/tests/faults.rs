//! Fault checks for stage 5a, lines, run as a reader runs it (its
//! connection log on): clients that reset, half-close or churn end only
//! their own connection. Run them against your own server with
//! `STAGE5A_BIN=/path/to/your/server cargo test -p stage5a-lines`.

use std::path::PathBuf;

use testkit::conventions::echo_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-lines"))
}

// An echo still: a half-closed client gets back all it sent, its last
// unfinished line too.
testkit::fault_checks!(server_bin(), echo_probe, Reply::Echo);
