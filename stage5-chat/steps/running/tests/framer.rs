//! The framer's checks (stage 5a's, included by path), on this step's framer.

use stage5e_running as step;

#[path = "../../lines/tests/checks/framer.rs"]
mod framer;
