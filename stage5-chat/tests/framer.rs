//! The framer's checks (stage 5a's, included by path), on this step's framer.

use stage5_chat as step;

#[path = "../steps/lines/tests/checks/framer.rs"]
mod framer;
