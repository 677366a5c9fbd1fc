//! The pieces of the chat server that are plain data, kept apart from the
//! event loop in `src/bin/server.rs` so each can be read (and tested) alone:
//! the client table, which now holds the names `/nick` changes and the
//! sanitizer for relayed text, and the framer.

pub mod clients;
pub mod sanitize;
// 5a's framer, unchanged: used by path, not copied.
#[path = "../../lines/src/framer.rs"]
pub mod framer;
