//! The framer's checks (stage 5a's, included by path), on this step's framer.

use stage5_chat as chat;

#[path = "../steps/chat/tests/checks/framer.rs"]
mod framer;
