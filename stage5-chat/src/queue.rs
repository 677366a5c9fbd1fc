//! A client's output queue: the lines the server owes it.
//!
//! A broadcast line is formatted once and shared: every receiver's queue
//! holds a pointer to the same bytes (`Rc<[u8]>`), not a copy. The queue
//! hands its unwritten bytes to `writev(2)` as one slice per line, so
//! everything queued for a client goes out in one system call.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// One line, newline included, ready to send; shared by every queue it is in.
pub type Line = Rc<[u8]>;

/// `text` and its newline as a [`Line`].
pub fn line(text: impl AsRef<[u8]>) -> Line {
    let text = text.as_ref();
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text);
    bytes.push(b'\n');
    bytes.into()
}

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
    lines: VecDeque<Line>,
    /// How much of the front line the socket has already taken.
    written: usize,
    /// Bytes queued and not yet written: what `--max-queue` bounds.
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, line: Line) {
        let pending = self.pending.get_or_insert_with(Box::default);
        pending.bytes += line.len();
        pending.lines.push_back(line);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_none()
    }

    /// Bytes still to write.
    pub fn bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.bytes)
    }

    /// The unwritten bytes as at most `max` slices, for one `writev(2)`.
    pub fn slices(&self, max: usize) -> Vec<IoSlice<'_>> {
        let Some(pending) = &self.pending else {
            return Vec::new();
        };
        pending
            .lines
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, line)| {
                let skip = if i == 0 { pending.written } else { 0 };
                IoSlice::new(&line[skip..])
            })
            .collect()
    }

    /// Forget the first `n` unwritten bytes: the socket has taken them.
    pub fn consume(&mut self, mut n: usize) {
        let Some(pending) = &mut self.pending else {
            return;
        };
        pending.bytes -= n;
        while let Some(front) = pending.lines.front() {
            let left = front.len() - pending.written;
            if n < left {
                pending.written += n;
                return;
            }
            n -= left;
            pending.written = 0;
            pending.lines.pop_front(); // the last queue holding it frees the line
        }
        // All written: give the memory back, so an idle client keeps none.
        self.pending = None;
    }
}
// ANCHOR_END: queue

#[cfg(test)]
mod tests {
    use super::*;

    fn unwritten(queue: &OutQueue) -> Vec<u8> {
        queue
            .slices(usize::MAX)
            .iter()
            .flat_map(|s| s.to_vec())
            .collect()
    }

    #[test]
    fn partial_writes_resume_mid_line() {
        let mut queue = OutQueue::default();
        queue.push(line("hello"));
        queue.push(line("world"));
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
    fn slices_are_capped_for_writev() {
        let mut queue = OutQueue::default();
        for i in 0..10 {
            queue.push(line(format!("{i}")));
        }
        assert_eq!(queue.slices(4).len(), 4);
        assert_eq!(queue.slices(100).len(), 10);
    }

    #[test]
    fn one_line_is_shared_not_copied() {
        let shared = line("to everyone");
        let mut a = OutQueue::default();
        let mut b = OutQueue::default();
        a.push(Rc::clone(&shared));
        b.push(Rc::clone(&shared));
        assert_eq!(Rc::strong_count(&shared), 3);
        a.consume(a.bytes());
        assert_eq!(
            Rc::strong_count(&shared),
            2,
            "a written line leaves the queue"
        );
    }

    #[test]
    fn an_emptied_queue_gives_its_memory_back() {
        let mut queue = OutQueue::default();
        queue.push(line("x"));
        assert!(queue.pending.is_some());
        queue.consume(2);
        assert!(queue.pending.is_none());
    }
}
