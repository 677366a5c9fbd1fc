//! The size of the provided buffer ring, in a file of its own so that the
//! benchmark can include it by path and report what the ring costs from
//! these very numbers, not from a copy of them.

/// Buffers in the ring (a power of two, as the kernel requires).
pub const BUFFERS: u16 = 2048;
/// Bytes per buffer: a receive takes at most this much at once. Many
/// small buffers rather than few large ones: a pool that runs dry fails
/// every receive that finds it empty (`ENOBUFS`), to be submitted again.
pub const BUF_SIZE: usize = 4 * 1024;
