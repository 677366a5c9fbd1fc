//! The framer's checks (stage 5a's, included by path), on this step's framer.

use stage5b_running as chat;

#[path = "../../chat/tests/checks/framer.rs"]
mod framer;
