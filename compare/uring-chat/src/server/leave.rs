//! Leaving: how a client ends (the others told, its last lines written,
//! our side shut so no reset destroys them), and how its descriptor is
//! closed only once no operation in flight can still name it.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::opcode;
use io_uring::types::{CancelBuilder, Fd};
use nix::sys::socket::{Shutdown, shutdown};

use stage5_chat::clients::{Phase, Why};

use crate::op::Op;

use super::{LINGER, Server};

impl Server {
    /// `read` returned 0: the client sends no more.
    pub(super) fn end_of_file(&mut self, fd: RawFd) {
        match self.clients.get(fd).map(|c| c.phase()) {
            Some(Phase::Online) => self.end(fd, Why::EndOfFile),
            // Its end-of-file after ours: nothing unread, no reset.
            Some(Phase::Closing { .. }) => self.close(fd),
            // Still owed lines: closed once they are written.
            Some(Phase::Leaving { .. }) => self.finish(fd),
            None => {}
        }
    }

    /// The one way a client ends: out of the chat, the others told why
    /// (while few enough are online), and closed now if it is owed nothing
    /// more, or else once what it is owed is written (or at a deadline).
    pub(super) fn end(&mut self, fd: RawFd, why: Why) {
        let online = self.clients.online_count();
        let deadline = Instant::now() + LINGER;
        let left = self.clients.leave(fd, why, deadline);
        if let Some(name) = &left
            && online <= self.args.announce_limit
            && let Some(notice) = why.notice(name)
        {
            self.clients.broadcast(notice, None);
        }
        if !why.owes_output() {
            return self.close(fd);
        }
        self.finish(fd);
        if left.is_some() && self.clients.get(fd).is_some_and(|c| !c.is_closed()) {
            self.deadlines.push_back((deadline, fd)); // not closed yet: by then
        }
    }

    /// Close a client that has left once it is owed nothing. If it may
    /// still send, end our side first and wait for its end-of-file: closing
    /// with unread input makes the kernel send a reset, which can destroy
    /// the last line before the client reads it.
    pub(super) fn finish(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get(fd) else {
            return;
        };
        let Phase::Leaving { why, .. } = client.phase() else {
            return;
        };
        if client.is_closed() || !client.out.is_idle() {
            return;
        }
        if why == Why::EndOfFile || client.eof {
            return self.close(fd); // it sends nothing more: no reset
        }
        // shutdown(SHUT_WR) sends FIN after the bytes written.
        if let Err(err) = shutdown(client.fd().as_raw_fd(), Shutdown::Write) {
            return self.end(fd, Why::Error(err));
        }
        self.clients.closing(fd);
    }

    /// Close the clients whose time to leave is up.
    pub(super) fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, fd)) = self.deadlines.front()
            && deadline <= now
        {
            self.deadlines.pop_front();
            // The fd may have been closed, and reused by a newer client.
            if let Some(client) = self.clients.get(fd)
                && let Phase::Leaving { deadline: at, .. } | Phase::Closing { deadline: at, .. } =
                    client.phase()
                && at <= now
            {
                self.close(fd);
            }
        }
    }

    /// Out of the chat for good: logged now, its operations cancelled, and
    /// its descriptor closed once the last of them has completed (so its
    /// number is not reused while a completion may still name it).
    pub(super) fn close(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get(fd).filter(|c| !c.is_closed()) else {
            return;
        };
        if let Phase::Leaving { why, .. } | Phase::Closing { why, .. } = client.phase() {
            self.log(format_args!("closed fd {fd} ({why})"));
        }
        let has_ops = client.has_ops();
        self.clients.close(fd);
        if !has_ops {
            return self.release_if_idle(fd);
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(Op::Cancel(fd).encode());
        // SAFETY: a cancellation points to no memory of ours.
        unsafe { self.push(entry) };
    }

    /// Drop a closed client once nothing of its is in flight: close(2). A
    /// free descriptor lets a paused listener accept again.
    pub(super) fn release_if_idle(&mut self, fd: RawFd) {
        if self
            .clients
            .get(fd)
            .is_some_and(|c| c.is_closed() && !c.has_ops())
        {
            drop(self.clients.remove(fd));
            self.resume_accepting();
        }
    }
}
