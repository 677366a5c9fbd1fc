//! The listener: one multishot accept in flight, which the kernel may end
//! at any time, and a pause (not a spin, not an exit) when the process is
//! out of descriptors.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use io_uring::opcode;
use io_uring::types::Fd;
use nix::errno::Errno;
use nix::sys::socket::{SockaddrStorage, getpeername};

use crate::op::Op;
use crate::ring::{self, Completion};

use super::Server;

/// How often a server out of descriptors tries to accept again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Whether, and how, the listener is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Accepting {
    /// Its multishot accept is in flight.
    Armed,
    /// Out of descriptors: the multishot accept ended with the error, and
    /// is submitted again once a client closes, or at `until`.
    Paused { until: Instant },
    /// Shutting down: its accept cancelled for good.
    Closed,
}

impl Server {
    /// Serve the listener: one multishot accept, a completion per client.
    pub(super) fn arm_accept(&mut self) {
        // Accepted sockets stay blocking: io_uring waits for readiness
        // itself, while a non-blocking socket's `writev` would come back
        // with EAGAIN instead.
        let entry = opcode::AcceptMulti::new(Fd(self.listen_fd.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Op::Accept.encode());
        // SAFETY: a multishot accept points to no memory of ours.
        unsafe { self.push(entry) };
        self.accepting = Accepting::Armed;
    }

    /// A connection from the multishot accept, or its end.
    pub(super) fn accepted(&mut self, completion: Completion) {
        if completion.result >= 0 {
            // SAFETY: the kernel just installed this descriptor for us;
            // nothing else owns it.
            let client_fd = unsafe { OwnedFd::from_raw_fd(completion.result) };
            if self.accepting != Accepting::Closed {
                self.accept_error = None;
                if !self.args.quiet {
                    log_accepted(completion.result);
                }
                self.admit(client_fd);
            } // else: shutting down, and dropping it closes it
        }
        if ring::more(completion.flags) || self.accepting == Accepting::Closed {
            return;
        }
        // The multishot accept ended: after an error, or for no reason
        // given (the kernel may end one at any time).
        match Errno::from_raw(-completion.result.min(0)) {
            // The client gave up before we got to it, or its network did.
            Errno::UnknownErrno
            | Errno::ECONNABORTED
            | Errno::EINTR
            | Errno::EPROTO
            | Errno::EPERM
            | Errno::ENETDOWN
            | Errno::ENETUNREACH
            | Errno::EHOSTUNREACH => self.arm_accept(),
            Errno::EINVAL => {
                let err = anyhow!("io_uring: multishot accept (Linux 5.19) was refused: EINVAL");
                self.failed.get_or_insert(err);
            }
            // Out of descriptors (EMFILE, ENFILE) or memory, or anything
            // else: retrying at once would fail again, so pause instead of
            // spinning, and never exit for it.
            err => self.pause_accepting(err),
        }
    }

    /// Out of descriptors (or the like): accept again later, logged once.
    fn pause_accepting(&mut self, err: Errno) {
        self.accepting = Accepting::Paused {
            until: Instant::now() + ACCEPT_RETRY,
        };
        if self.accept_error != Some(err) {
            self.accept_error = Some(err);
            self.log(format_args!(
                "accept: {}: waiting for a client to leave",
                io::Error::from(err)
            ));
        }
    }

    /// Accept again, once a client closed (or after a while).
    pub(super) fn resume_accepting(&mut self) {
        if matches!(self.accepting, Accepting::Paused { .. }) {
            self.arm_accept();
        }
    }
}

/// The `accepted` line names the peer when it can: a client that reset
/// while it waited in the accept queue has none (`getpeername` fails with
/// `ENOTCONN`), and its receive reports the reset.
fn log_accepted(fd: RawFd) {
    let _ = match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => writeln!(io::stderr(), "accepted fd {fd} from {peer}"),
        Err(err) => writeln!(io::stderr(), "accepted fd {fd} (getpeername: {err:?})"),
    };
}
