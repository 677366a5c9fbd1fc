//! The event loop: one thread, one ring.
//!
//! Where stage 5 waits for readiness and then makes each system call,
//! this server keeps operations in flight in the ring and reacts to their
//! completions: one multishot accept for the listener, one receive in
//! flight per client (its bytes land in the shared buffer ring), one read
//! of the `signalfd`, and per client at most one `writev` of its queued
//! output, started at the end of the round that queued it. A round is one
//! `io_uring_enter(2)`: it submits the round's new operations and waits
//! for the next completions (or the next deadline).
//!
//! This file is the loop itself; each kind of completion is handled in a
//! file of its own: `accept` (the listener), `receive` and `send` (a
//! client's bytes in and out), `signal` (SIGINT, SIGTERM), `leave` (how a
//! client ends and is closed), and `chat` (what its lines mean).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::Result;
use io_uring::squeue::Entry;
use nix::errno::Errno;
use nix::sys::signalfd::SignalFd;

use crate::Args;
use crate::clients::Clients;
use crate::op::Op;
use crate::ring::{Completion, Ring};

use accept::Accepting;

mod accept;
mod chat;
mod leave;
mod receive;
mod send;
mod signal;

/// How long a client that has left gets to take its last lines and close.
const LINGER: Duration = Duration::from_secs(1);
/// Completions handled per round before the round's output is started: a
/// burst of joins never piles thousands of notices into every queue.
const COMPLETIONS_PER_ROUND: usize = 4096;
/// `sizeof(struct signalfd_siginfo)`: a `signalfd` read returns whole ones.
const SIGINFO_SIZE: usize = 128;

/// Everything the event loop keeps between rounds.
pub struct Server {
    // First, so dropped first: the kernel is done with every buffer and
    // queue below before they are freed.
    ring: Ring,
    /// Where the `signalfd` read in flight puts its `signalfd_siginfo`.
    signal_buf: Box<[u8; SIGINFO_SIZE]>,
    args: Args,
    listen_fd: OwnedFd,
    signal_fd: SignalFd,
    accepting: Accepting,
    /// The error last logged for accept, so a shortage is logged once.
    accept_error: Option<Errno>,
    clients: Clients,
    /// When clients that are leaving are closed whatever happens.
    deadlines: VecDeque<(Instant, RawFd)>,
    /// SIGINT or SIGTERM arrived: exit once every client is gone, or then.
    shutdown: Option<Instant>,
    /// A submission that could not be made: the loop ends with it.
    failed: Option<anyhow::Error>,
    /// Where a receive's bytes are framed from, once its buffer is back.
    scratch: Vec<u8>,
}

impl Server {
    pub fn new(args: Args, ring: Ring, listen_fd: OwnedFd, signal_fd: SignalFd) -> Server {
        Server {
            ring,
            signal_buf: Box::new([0; SIGINFO_SIZE]),
            clients: Clients::new(args.max_queue),
            args,
            listen_fd,
            signal_fd,
            accepting: Accepting::Armed,
            accept_error: None,
            deadlines: VecDeque::new(),
            shutdown: None,
            failed: None,
            scratch: Vec::new(),
        }
    }

    pub fn run(mut self) -> Result<()> {
        self.arm_accept();
        self.arm_signal();
        let mut completions = Vec::with_capacity(COMPLETIONS_PER_ROUND);
        loop {
            if let Some(err) = self.failed.take() {
                return Err(err);
            }
            self.ring.submit_and_wait(self.timeout())?;
            self.ring.reap(&mut completions, COMPLETIONS_PER_ROUND);
            for completion in completions.drain(..) {
                if self.complete(completion) {
                    return Ok(()); // a second signal: do not wait any longer
                }
            }
            self.expire_deadlines();
            // Each dirty client's one `writev` of the round.
            self.flush_all();
            if self.is_done() {
                return Ok(()); // exiting closes whatever is still open
            }
        }
    }

    /// Queue a submission; a failure ends the loop at the next round.
    ///
    /// # Safety
    ///
    /// As [`Ring::push`]: what `entry` points to outlives its completions.
    unsafe fn push(&mut self, entry: Entry) {
        // SAFETY: passed on from the caller.
        if let Err(err) = unsafe { self.ring.push(&entry) } {
            self.failed.get_or_insert(err);
        }
    }

    /// How long the wait may last: until the next deadline, or for ever.
    fn timeout(&self) -> Option<Duration> {
        let retry = match self.accepting {
            Accepting::Paused { until } => Some(until),
            _ => None,
        };
        let next = [
            retry,
            self.deadlines.front().map(|&(at, _)| at),
            self.shutdown,
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// After a shutdown, once everyone is gone or its time is up. Also: a
    /// paused listener whose retry is due accepts again.
    fn is_done(&mut self) -> bool {
        if let Some(deadline) = self.shutdown {
            return self.clients.is_empty() || Instant::now() >= deadline;
        }
        if let Accepting::Paused { until } = self.accepting
            && Instant::now() >= until
        {
            self.resume_accepting();
        }
        false
    }

    /// One completion; true when the server must exit at once.
    fn complete(&mut self, completion: Completion) -> bool {
        match Op::decode(completion.user_data) {
            Some(Op::Accept) => self.accepted(completion),
            Some(Op::Signal) => return self.signalled(completion),
            Some(Op::Recv(fd)) => self.received(fd, completion),
            Some(Op::Send(fd)) => self.sent(fd, completion),
            Some(Op::Cancel(_)) | None => {}
        }
        false
    }

    /// One line of the connection log on stderr, unless `-q`.
    fn log(&self, line: std::fmt::Arguments<'_>) {
        if !self.args.quiet {
            let _ = writeln!(io::stderr(), "{line}");
        }
    }
}
