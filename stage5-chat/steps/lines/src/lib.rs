// ANCHOR: lib
//! The framer, kept apart from the event loop in `src/bin/server.rs` so it
//! can be read (and tested) alone: it is plain data, bytes in and lines out.

pub mod framer;
// ANCHOR_END: lib
