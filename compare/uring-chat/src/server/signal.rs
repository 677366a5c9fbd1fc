//! SIGINT and SIGTERM, read from a `signalfd` by a read in the ring: the
//! first starts a bounded shutdown, a second ends the server at once.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::opcode;
use io_uring::types::Fd;
use nix::sys::signal::Signal;

use stage5_chat::clients::Why;

use crate::op::Op;
use crate::ring::Completion;

use super::accept::Accepting;
use super::{SIGINFO_SIZE, Server};

/// How long SIGINT/SIGTERM waits for the goodbye notices to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

impl Server {
    /// Read the next SIGINT or SIGTERM from the `signalfd`.
    pub(super) fn arm_signal(&mut self) {
        let entry = opcode::Read::new(
            Fd(self.signal_fd.as_raw_fd()),
            self.signal_buf.as_mut_ptr(),
            SIGINFO_SIZE as u32,
        )
        .build()
        .user_data(Op::Signal.encode());
        // SAFETY: `signal_buf` is boxed and lives as long as the ring.
        unsafe { self.push(entry) };
    }

    /// SIGINT or SIGTERM: stop accepting, tell everyone, and let the main
    /// loop flush (bounded by `SHUTDOWN_FLUSH`). Returns true on a second
    /// signal, which ends the server at once.
    pub(super) fn signalled(&mut self, completion: Completion) -> bool {
        if usize::try_from(completion.result) != Ok(SIGINFO_SIZE) {
            self.arm_signal(); // interrupted: read again
            return false;
        }
        // `ssi_signo` is the first field of `signalfd_siginfo`.
        let signo = u32::from_ne_bytes(self.signal_buf[..4].try_into().expect("4 bytes"));
        if self.shutdown.is_some() {
            return true;
        }
        if let Ok(signal) = Signal::try_from(signo as i32) {
            self.log(format_args!("{signal}: shutting down"));
        }
        self.shutdown = Some(Instant::now() + SHUTDOWN_FLUSH);
        if self.accepting == Accepting::Armed {
            let entry = opcode::AsyncCancel::new(Op::Accept.encode())
                .build()
                .user_data(Op::Cancel(self.listen_fd.as_raw_fd()).encode());
            // SAFETY: a cancellation points to no memory of ours.
            unsafe { self.push(entry) };
        }
        self.accepting = Accepting::Closed;
        self.clients.broadcast("* server shutting down", None);
        for fd in self.clients.online_fds() {
            self.end(fd, Why::Shutdown); // no `left` notice: everyone is leaving
        }
        self.arm_signal(); // a second signal ends the wait
        false
    }
}
