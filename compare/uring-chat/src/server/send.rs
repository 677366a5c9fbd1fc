//! Sending: at most one `writev` in flight per client, of all its queued
//! output, started at the end of the round that queued it.

use std::os::fd::RawFd;

use io_uring::opcode;
use io_uring::types::Fd;
use nix::errno::Errno;

use stage5_chat::clients::Why;

use crate::op::Op;
use crate::ring::Completion;

use super::Server;

impl Server {
    /// A client's `writev` completed: more to send, or done.
    pub(super) fn sent(&mut self, fd: RawFd, completion: Completion) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        match usize::try_from(completion.result) {
            Ok(n) => client.out.sent(n),
            Err(_) => client.out.failed(),
        }
        if client.is_closed() {
            return self.release_if_idle(fd);
        }
        match Errno::from_raw(-completion.result.min(0)) {
            Errno::UnknownErrno | Errno::EINTR | Errno::EAGAIN => {}
            err => return self.end(fd, Why::Error(err)),
        }
        // The next `writev`, or the end of a client that has left, at the
        // end of the round.
        self.clients.mark_dirty(fd);
    }

    /// Start every dirty client's `writev`. Closing a client can queue
    /// `left` notices for others, so this goes on until no client is dirty.
    pub(super) fn flush_all(&mut self) {
        while let Some(fd) = self.clients.pop_dirty() {
            self.flush(fd);
        }
    }

    /// Start the client's next `writev`, if it has output and none in
    /// flight, then see whether it is too slow, or done and leaving.
    fn flush(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd).filter(|c| !c.is_closed()) else {
            return;
        };
        if let Some((iovecs, count)) = client.out.start() {
            let entry = opcode::Writev::new(Fd(fd), iovecs, count)
                .build()
                .user_data(Op::Send(fd).encode());
            // SAFETY: the iovecs are boxed in the client's output, over
            // sealed chunks and a queue that `Output` keeps unchanged until
            // this send completes; the client (and so its descriptor and
            // output) stays in the table until then.
            unsafe { self.push(entry) };
        }
        if self.clients.too_slow(fd) {
            return self.end(fd, Why::TooSlow);
        }
        self.finish(fd);
    }
}
