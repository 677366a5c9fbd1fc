// ANCHOR: lib
//! The pieces of the chat server that are plain data, kept apart from the
//! event loop in `src/bin/server.rs` so each can be read (and tested) alone.

pub mod clients;
pub mod framer;
// ANCHOR_END: lib
