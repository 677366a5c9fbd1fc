//! The pieces of the chat server that are plain data, kept apart from the
//! event loop in `src/main.rs` so each can be read (and tested) alone; and
//! the cluster: Redis as more descriptors in the same loop.

pub mod clients;
pub mod cluster;
pub mod delivery;
pub mod framer;
pub mod queue;
pub mod redis;
