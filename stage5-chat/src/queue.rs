// ANCHOR: top
//! Output: the lines the server owes each client.
//!
//! Every line the server sends is formatted once, into the *chunk* being
//! filled: one growing buffer that takes every line of an `epoll_wait`
//! round. Before anything is written the chunk is *sealed* (frozen) and
//! shared: a client's queue holds ranges of chunks, not copies. A line that
//! starts where the queue's last range ends, in the same chunk, just makes
//! that range longer, so a client that was sent 50 lines in a round usually
//! has one or two ranges to write (its own lines, which it is not sent,
//! split them), and `writev(2)` copies a few large slices instead of one
//! small slice per line. A chunk is freed when the last range in it is
//! written; a client that falls behind gets its own copy of further lines
//! instead, so it cannot keep every chunk alive while it does not read.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;
// ANCHOR_END: top

// ANCHOR: chunk
/// A sealed chunk holding at least this much starts the next line in a new
/// one: a slow client keeps a whole chunk alive, so chunks stay small.
const CHUNK_SIZE: usize = 64 * 1024;

/// Lines written into one buffer, shared by every queue that holds a range
/// of it. Its bytes are set once, when it is sealed; until then they are in
/// the [`Chunks`] that fills it, and no queue may be written.
#[derive(Default)]
struct Chunk {
    bytes: OnceCell<Vec<u8>>,
}
// ANCHOR_END: chunk

// ANCHOR: line
/// One line, newline included: a range of a chunk.
#[derive(Clone)]
pub struct Line {
    chunk: Rc<Chunk>,
    start: usize,
    end: usize,
}

impl Line {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}
// ANCHOR_END: line

// ANCHOR: chunks
/// Where the server formats its lines: the chunk being filled.
#[derive(Default)]
pub struct Chunks {
    /// The chunk being filled and its bytes so far (moved into it when it
    /// is sealed); `None` when every chunk is sealed.
    open: Option<(Rc<Chunk>, Vec<u8>)>,
    /// The size of the last chunk sealed: the next one starts with room for
    /// as much, so a busy round grows its buffer once, not line by line.
    last_size: usize,
}
// ANCHOR_END: chunks

// ANCHOR: write
impl Chunks {
    /// A line made by `write` (which appends the text) and a newline.
    pub fn write(&mut self, write: impl FnOnce(&mut Vec<u8>)) -> Line {
        let capacity = self.last_size;
        let (chunk, bytes) = self
            .open
            .get_or_insert_with(|| (Rc::default(), Vec::with_capacity(capacity)));
        let start = bytes.len();
        write(bytes);
        bytes.push(b'\n');
        let line = Line {
            chunk: Rc::clone(chunk),
            start,
            end: bytes.len(),
        };
        if bytes.len() >= CHUNK_SIZE {
            self.seal();
        }
        line
    }
    // ANCHOR_END: write

    // ANCHOR: seal
    /// The bytes of `line`, sealed or not.
    pub fn bytes<'a>(&'a self, line: &'a Line) -> &'a [u8] {
        let bytes = match (&self.open, line.chunk.bytes.get()) {
            (_, Some(sealed)) => sealed,
            (Some((_, open)), None) => open,
            (None, None) => unreachable!("a chunk is open until it is sealed"),
        };
        &bytes[line.start..line.end]
    }

    /// Freeze the chunk being filled, so the queues that hold its lines can
    /// be written; the next line starts a new chunk.
    pub fn seal(&mut self) {
        if let Some((chunk, bytes)) = self.open.take() {
            self.last_size = bytes.len().min(CHUNK_SIZE);
            // Only `seal` sets the bytes, and a chunk is sealed once.
            let _ = chunk.bytes.set(bytes);
        }
    }
}
// ANCHOR_END: seal

// ANCHOR: limits
/// The most ranges a queue holds. A client that keeps up has a few per
/// round and writes them all; past this many it is falling behind, and
/// gets its own copy of what follows, so a slow client keeps at most this
/// many shared chunks alive, not every chunk since it stopped reading.
const MAX_RANGES: usize = 8;

/// The most slices a queue's bytes take: its ranges, and its own copy (a
/// ring buffer, so two). One `writev(2)` is offered them all, far fewer
/// than the `IOV_MAX` (1024) it accepts.
pub const MAX_SLICES: usize = MAX_RANGES + 2;
// ANCHOR_END: limits

// ANCHOR: queue
/// The lines owed to one client, oldest first.
#[derive(Default)]
pub struct OutQueue {
    /// `None` while nothing is owed: an idle client's queue is one null
    /// pointer, and the bookkeeping below exists only while it is needed.
    pending: Option<Box<Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Unwritten ranges of shared chunks; the front one's `start` moves as
    /// the socket takes its bytes.
    ranges: VecDeque<Line>,
    /// What follows the ranges once there were `MAX_RANGES` of them: the
    /// lines copied, for this client alone.
    copied: VecDeque<u8>,
    /// Bytes queued and not yet written: what `--max-queue` bounds.
    bytes: usize,
}
// ANCHOR_END: queue

// ANCHOR: push
impl OutQueue {
    /// Queue `line`, a line of `chunks`.
    pub fn push(&mut self, chunks: &Chunks, line: &Line) {
        let pending = self.pending.get_or_insert_with(Box::default);
        pending.bytes += line.len();
        if !pending.copied.is_empty() {
            // Copying already: the line goes after the copied ones.
            pending.copied.extend(chunks.bytes(line));
        } else if let Some(last) = pending.ranges.back_mut()
            && Rc::ptr_eq(&last.chunk, &line.chunk)
            && last.end == line.start
        {
            // The line that follows the last one queued, in the same
            // chunk: one longer range, not one more.
            last.end = line.end;
        } else if pending.ranges.len() < MAX_RANGES {
            pending.ranges.push_back(line.clone());
        } else {
            pending.copied.extend(chunks.bytes(line));
        }
    }
    // ANCHOR_END: push

    // ANCHOR: slices
    pub fn is_empty(&self) -> bool {
        self.pending.is_none()
    }

    /// Bytes still to write.
    pub fn bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes)
    }

    /// Fill `slices` with the unwritten bytes, oldest first, for one
    /// `writev(2)`; returns how many it filled. Every chunk queued must be
    /// sealed ([`Chunks::seal`]).
    pub fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let Some(pending) = &self.pending else {
            return 0;
        };
        let (copied_front, copied_back) = pending.copied.as_slices();
        let shared = pending.ranges.iter().map(|range| {
            let chunk = range.chunk.bytes.get();
            &chunk.expect("chunks are sealed before writing")[range.start..range.end]
        });
        let all = shared.chain([copied_front, copied_back]);
        let mut filled = 0;
        for (bytes, slice) in all.filter(|b| !b.is_empty()).zip(slices.iter_mut()) {
            *slice = IoSlice::new(bytes);
            filled += 1;
        }
        filled
    }
    // ANCHOR_END: slices

    // ANCHOR: consume
    /// Forget the first `n` unwritten bytes: the socket has taken them.
    pub fn consume(&mut self, mut n: usize) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        pending.bytes -= n;
        while let Some(front) = pending.ranges.front_mut() {
            if n < front.len() {
                front.start += n;
                return;
            }
            n -= front.len();
            pending.ranges.pop_front(); // the last range in a chunk frees it
        }
        pending.copied.drain(..n);
        if pending.bytes == 0 {
            // All written: give the memory back, so an idle client keeps none.
            self.pending = None;
        }
    }
}
// ANCHOR_END: consume

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritten(queue: &OutQueue) -> Vec<u8> {
        let mut slices = [IoSlice::new(&[]); 16];
        let n = queue.slices(&mut slices);
        slices[..n].iter().flat_map(|s| s.to_vec()).collect()
    }

    fn text(chunks: &mut Chunks, text: &str) -> Line {
        chunks.write(|out| out.extend_from_slice(text.as_bytes()))
    }

    /// Write `text` as a line and queue it.
    fn send(chunks: &mut Chunks, queue: &mut OutQueue, text: &str) -> Line {
        let line = self::text(chunks, text);
        queue.push(chunks, &line);
        line
    }

    #[test]
    fn partial_writes_resume_mid_line() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        send(&mut chunks, &mut queue, "hello");
        send(&mut chunks, &mut queue, "world");
        chunks.seal();
        assert_eq!(queue.bytes(), 12);
        queue.consume(3);
        assert_eq!(unwritten(&queue), b"lo\nworld\n");
        queue.consume(3);
        assert_eq!(unwritten(&queue), b"world\n");
        assert_eq!(queue.bytes(), 6);
        queue.consume(6);
        assert!(queue.is_empty());
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn lines_that_follow_each_other_are_one_slice() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        for i in 0..10 {
            send(&mut chunks, &mut queue, &format!("{i}"));
        }
        chunks.seal();
        let mut slices = [IoSlice::new(&[]); 16];
        assert_eq!(queue.slices(&mut slices), 1);
        assert_eq!(unwritten(&queue), b"0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n");
    }

    #[test]
    fn a_line_not_sent_to_this_client_splits_its_slices() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        send(&mut chunks, &mut queue, "a");
        let _own = text(&mut chunks, "mine, sent to the others");
        send(&mut chunks, &mut queue, "b");
        send(&mut chunks, &mut queue, "c");
        chunks.seal();
        send(&mut chunks, &mut queue, "next round");
        chunks.seal();
        let mut slices = [IoSlice::new(&[]); 16];
        assert_eq!(queue.slices(&mut slices), 3);
        assert_eq!(unwritten(&queue), b"a\nb\nc\nnext round\n");
    }

    #[test]
    fn slices_are_capped_for_writev() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        for i in 0..10 {
            send(&mut chunks, &mut queue, &format!("{i}"));
            chunks.seal(); // a chunk each, so no two lines merge
        }
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(queue.slices(&mut slices), 4);
        assert_eq!(unwritten(&queue).len(), 20);
    }

    #[test]
    fn a_full_chunk_is_sealed_and_the_next_line_starts_another() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        let long = "x".repeat(CHUNK_SIZE);
        send(&mut chunks, &mut queue, &long);
        send(&mut chunks, &mut queue, "after");
        chunks.seal();
        let mut slices = [IoSlice::new(&[]); 16];
        assert_eq!(queue.slices(&mut slices), 2);
        assert_eq!(queue.bytes(), CHUNK_SIZE + 1 + 6);
    }

    #[test]
    fn one_line_is_shared_not_copied_and_freed_by_the_last_queue() {
        let mut chunks = Chunks::default();
        let shared = text(&mut chunks, "to everyone");
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        a.push(&chunks, &shared);
        b.push(&chunks, &shared);
        chunks.seal();
        let chunk = Rc::downgrade(&shared.chunk);
        drop(shared);
        assert_eq!(chunk.strong_count(), 2, "one chunk, held by both queues");
        a.consume(a.bytes());
        assert_eq!(chunk.strong_count(), 1, "a written line leaves the queue");
        b.consume(b.bytes());
        assert!(chunk.upgrade().is_none(), "the last queue frees the chunk");
    }

    #[test]
    fn a_queue_past_max_ranges_copies_and_keeps_no_more_chunks_alive() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        let mut expected = Vec::new();
        let mut kept = Vec::new();
        for i in 0..MAX_RANGES + 3 {
            let line = text(&mut chunks, &format!("line {i}"));
            queue.push(&chunks, &line);
            kept.push(Rc::downgrade(&line.chunk));
            expected.extend_from_slice(format!("line {i}\n").as_bytes());
            chunks.seal(); // one chunk each, as when every line is a round
        }
        let alive = kept.iter().filter(|c| c.upgrade().is_some()).count();
        assert_eq!(alive, MAX_RANGES, "the copied lines' chunks are freed");
        assert_eq!(unwritten(&queue), expected, "nothing lost or reordered");
        assert_eq!(queue.bytes(), expected.len());
        // With a range written, there is room for one more; but a new line
        // must still go after the copies, or it would overtake them.
        let first = "line 0\n".len();
        queue.consume(first + 3);
        let line = text(&mut chunks, "last");
        queue.push(&chunks, &line);
        chunks.seal();
        expected.extend_from_slice(b"last\n");
        assert_eq!(unwritten(&queue), expected[first + 3..]);
        // Written to the end, mid-copy included: the memory goes back.
        let copied_start = expected.len() - queue.pending.as_ref().unwrap().copied.len();
        queue.consume(copied_start - (first + 3) + 2);
        assert_eq!(unwritten(&queue), expected[copied_start + 2..]);
        queue.consume(queue.bytes());
        assert!(queue.is_empty());
        assert!(kept.iter().all(|c| c.upgrade().is_none()));
    }

    #[test]
    fn an_emptied_queue_gives_its_memory_back() {
        let mut chunks = Chunks::default();
        let mut queue = OutQueue::default();
        send(&mut chunks, &mut queue, "x");
        assert!(queue.pending.is_some());
        queue.consume(2);
        assert!(queue.pending.is_none());
    }
}
