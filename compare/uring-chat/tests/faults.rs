//! Fault checks for the io_uring server, run as a reader runs it (its
//! connection log on), as stage 5's are: clients that reset, half-close or
//! churn end only their own connection. Run them against another build
//! with `URING_CHAT_BIN=/path/to/server cargo test -p compare-uring-chat`.

mod common;

use common::server_bin;
use testkit::conventions::welcome_probe;
use testkit::faults::Reply;

testkit::fault_checks!(server_bin(), welcome_probe, Reply::Nothing);
