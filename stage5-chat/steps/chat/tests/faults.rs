//! Fault checks for stage 5b, the chat, run as a reader runs it (its
//! connection log on): clients that reset, half-close or churn end only
//! their own connection. Run them against your own server with
//! `STAGE5B_BIN=/path/to/your/server cargo test -p stage5b-chat`.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5B_BIN", env!("CARGO_BIN_EXE_stage5b-chat"))
}

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
