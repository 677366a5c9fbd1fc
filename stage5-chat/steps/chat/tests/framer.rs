//! The framer's checks (stage 5a's, included by path), on this step's framer.

use stage5a_chat as chat;

#[path = "checks/framer.rs"]
mod framer;
