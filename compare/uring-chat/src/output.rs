//! One client's output: stage 5's queue, kept still while the kernel
//! reads from it.
//!
//! With epoll, `writev(2)` has copied the bytes by the time it returns, so
//! a line may be queued right after. A `writev` submitted to io_uring reads
//! the queue's memory until its completion arrives, rounds later: the
//! queue it was given must not change meanwhile (a queue past its shared
//! ranges copies lines into a buffer that can move when it grows). So a
//! client has two of stage 5's queues: the one being sent, frozen while
//! its `writev` is in flight, and the one lines go to meanwhile, which
//! becomes the one sent once the first is written out.

use std::io::IoSlice;

use stage5_chat::queue::{Chunks, Line, MAX_SLICES, OutQueue};

/// The `iovec`s of a `writev` in flight: boxed, so they stay where the
/// kernel was told they are whatever happens to the client's table slot.
pub type Iovecs = Box<[libc::iovec; MAX_SLICES]>;

#[derive(Default)]
pub struct Output {
    /// What the next (or current) `writev` sends.
    sending: OutQueue,
    /// Lines queued while `sending` is frozen, or while earlier lines are
    /// still waiting here: always after every byte of `sending`.
    later: OutQueue,
    /// The `writev` in flight, if any: `sending` is frozen while it is.
    in_flight: Option<Iovecs>,
}

impl Output {
    /// Queue `line`, after everything queued before it.
    pub fn push(&mut self, chunks: &Chunks, line: &Line) {
        if self.in_flight.is_some() || !self.later.is_empty() {
            self.later.push(chunks, line);
        } else {
            self.sending.push(chunks, line);
        }
    }

    /// Bytes owed: what `--max-queue` bounds, in flight included.
    pub fn bytes(&self) -> usize {
        self.sending.bytes() + self.later.bytes()
    }

    /// Every byte written, none in flight.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.sending.is_empty() && self.later.is_empty()
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Start the one `writev` of this round: the `iovec`s to submit and how
    /// many, or `None` if one is in flight already or nothing is owed.
    /// Every chunk queued must be sealed ([`Chunks::seal`]). The `iovec`s
    /// and the bytes they point to stay valid and unchanged until
    /// [`Output::sent`] or [`Output::failed`].
    pub fn start(&mut self) -> Option<(*const libc::iovec, u32)> {
        if self.in_flight.is_some() {
            return None;
        }
        if self.sending.is_empty() {
            std::mem::swap(&mut self.sending, &mut self.later);
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let filled = self.sending.slices(&mut slices);
        if filled == 0 {
            return None;
        }
        let empty = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let mut iovecs: Iovecs = Box::new([empty; MAX_SLICES]);
        for (iovec, slice) in iovecs.iter_mut().zip(&slices[..filled]) {
            iovec.iov_base = slice.as_ptr() as *mut libc::c_void;
            iovec.iov_len = slice.len();
        }
        let iovecs = self.in_flight.insert(iovecs);
        Some((iovecs.as_ptr(), filled as u32))
    }

    /// The `writev` in flight took `n` bytes (possibly fewer than offered:
    /// the rest goes in the next one).
    pub fn sent(&mut self, n: usize) {
        self.in_flight = None;
        self.sending.consume(n);
        if self.sending.is_empty() {
            std::mem::swap(&mut self.sending, &mut self.later);
        }
    }

    /// The `writev` in flight failed or was cancelled: nothing was taken.
    pub fn failed(&mut self) {
        self.in_flight = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(chunks: &mut Chunks, text: &str) -> Line {
        chunks.write(|out| out.extend_from_slice(text.as_bytes()))
    }

    /// What a started `writev` would send, as bytes.
    fn offered(iovecs: *const libc::iovec, n: u32) -> Vec<u8> {
        // SAFETY: `start` returned these: `n` iovecs, each over live bytes.
        let iovecs = unsafe { std::slice::from_raw_parts(iovecs, n as usize) };
        let mut bytes = Vec::new();
        for iovec in iovecs {
            // SAFETY: as above; the output is not changed while we read.
            let slice =
                unsafe { std::slice::from_raw_parts(iovec.iov_base as *const u8, iovec.iov_len) };
            bytes.extend_from_slice(slice);
        }
        bytes
    }

    #[test]
    fn one_send_at_a_time_and_lines_meanwhile_go_after() {
        let mut chunks = Chunks::default();
        let mut out = Output::default();
        for text in ["a", "b"] {
            let l = line(&mut chunks, text);
            out.push(&chunks, &l);
        }
        chunks.seal();
        let (iovecs, n) = out.start().expect("something to send");
        assert_eq!(offered(iovecs, n), b"a\nb\n");
        assert!(out.start().is_none(), "one writev in flight at most");
        let l = line(&mut chunks, "c");
        out.push(&chunks, &l);
        chunks.seal();
        assert_eq!(
            offered(iovecs, n),
            b"a\nb\n",
            "the one in flight is untouched"
        );
        assert_eq!(out.bytes(), 6);
        out.sent(4);
        let (iovecs, n) = out.start().expect("the line queued meanwhile");
        assert_eq!(offered(iovecs, n), b"c\n");
        out.sent(2);
        assert!(out.is_idle());
    }

    #[test]
    fn a_short_send_resumes_before_the_later_lines() {
        let mut chunks = Chunks::default();
        let mut out = Output::default();
        let l = line(&mut chunks, "hello");
        out.push(&chunks, &l);
        chunks.seal();
        out.start().unwrap();
        let l = line(&mut chunks, "world");
        out.push(&chunks, &l);
        chunks.seal();
        out.sent(2);
        let (iovecs, n) = out.start().unwrap();
        assert_eq!(offered(iovecs, n), b"llo\n", "the rest of the first queue");
        // Still in flight: the next line goes after "world".
        let l = line(&mut chunks, "again");
        out.push(&chunks, &l);
        chunks.seal();
        out.sent(4);
        let (iovecs, n) = out.start().unwrap();
        assert_eq!(offered(iovecs, n), b"world\nagain\n");
        out.failed();
        assert!(!out.is_idle(), "a failed send takes nothing");
        assert_eq!(out.bytes(), 12);
    }

    #[test]
    fn nothing_owed_starts_nothing() {
        let mut out = Output::default();
        assert!(out.start().is_none());
        assert!(out.is_idle());
        assert!(!out.in_flight());
    }
}
