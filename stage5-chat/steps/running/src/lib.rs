//! The pieces of the chat server that are plain data, kept apart from the
//! event loop in `src/bin/server.rs` so each can be read (and tested) alone:
//! the client table, whose clients now leave by a deadline, and 5a's framer
//! and 5c's sanitizer, used where they are.

pub mod clients;
// 5a's framer, unchanged: used by path, not copied.
#[path = "../../lines/src/framer.rs"]
pub mod framer;
// 5c's sanitizer, unchanged: used by path, not copied.
#[path = "../../commands/src/sanitize.rs"]
pub mod sanitize;
