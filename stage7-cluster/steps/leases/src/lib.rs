//! The pieces of the chat server that are plain data, kept apart from the
//! event loop in `src/main.rs` so each can be read (and tested) alone; and
//! the cluster: Redis as more descriptors in the same loop.

// 7e's client table, and 7f's record of what a node keeps and its names,
// unchanged: used by path, not copied.
#[path = "../../names/src/clients.rs"]
pub mod clients;
pub mod cluster;
#[path = "../../counts/src/delivery.rs"]
pub mod delivery;
#[path = "../../counts/src/names.rs"]
pub mod names;
// Stage 5's framer and output queue, unchanged: used by path, not copied.
#[path = "../../../../stage5-chat/steps/lines/src/framer.rs"]
pub mod framer;
#[path = "../../../../stage5-chat/src/queue.rs"]
pub mod queue;
// 7a's connection to Redis, unchanged: used by path, not copied.
#[path = "../../link/src/redis.rs"]
pub mod redis;
// Stage 5's sanitizer, unchanged: used by path, not copied.
#[path = "../../../../stage5-chat/steps/commands/src/sanitize.rs"]
pub mod sanitize;
