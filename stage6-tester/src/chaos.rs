//! `tester chaos`: for `--duration`, checked chat clients (a `chat::Group`,
//! every line verified) keep talking at a modest `--rate` while misbehaving
//! clients come and go around them: resets at any point, half-closes, lines
//! over the limit, megabytes without a newline, invalid bytes and escape
//! sequences, clients that never read, connect-and-close churn, `/nick`
//! storms. The run passes when the checked clients lost, duplicated and
//! reordered nothing, all stayed connected, the server still accepts a
//! fresh client at the end and, with `--server-pid`, holds no more
//! descriptors than before.
//!
//! Every choice comes from one seeded generator (`--seed`, printed in the
//! summary), so a run's sequence of faults can be repeated.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{Shutdown, shutdown};
use serde_json::json;

use crate::chat::{Group, Setup};
use crate::cli::{ChaosArgs, addr_list, show_addrs, show_duration};
use crate::hold::vm_rss;
use crate::net::{self, Errors, Failure, ReadEnd, Slots};
use crate::report::{Outcome, Progress, duration, plural, thousands};

/// Epoll tokens of misbehaving clients start here; the checked clients'
/// are their indexes, far below.
const MISFIT: u64 = 1 << 32;
/// What the client that never sends a newline sends.
const NO_NEWLINE_BYTES: usize = 8 << 20;
/// The receive buffer of a client that never reads: small, so the server
/// has to queue what it owes it instead of the kernel.
const DEAF_BUFFER: usize = 4096;
/// How long, after the last client closed, the server may take to close
/// its side of every connection (a server lingers to let a leaving client
/// read its last lines).
const SETTLE: Duration = Duration::from_secs(5);
/// The most a fresh client reads while waiting for its greeting.
const MAX_GREETING: usize = 64 * 1024;

// ANCHOR: kinds
/// The ways a client misbehaves; each is one a server on a network meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Connect, then reset (`SO_LINGER` 0 + `close`) before the welcome:
    /// a client that gave up, or a port scanner.
    ResetBeforeWelcome,
    /// Reset in the middle of a line: a crash or a pulled cable mid-write.
    ResetMidLine,
    /// Send a burst of lines and reset at once: the server is relaying
    /// them (and owes this client replies) when its writes meet the reset.
    ResetMidBroadcast,
    /// `shutdown(SHUT_WR)` after some lines: `nc -N`, or a client done
    /// talking that still reads the rest.
    HalfClose,
    /// A line over the server's limit.
    LongLine,
    /// 8 MiB without a newline: a file piped into the chat, or an attack
    /// on a server that buffers until the newline.
    NoNewline,
    /// Invalid UTF-8, escape sequences and control bytes: what a binary
    /// file or a hostile client sends to other people's terminals.
    BadBytes,
    /// Floods `/who` and never reads the replies: a stuck or malicious
    /// reader, whose queue the server must bound.
    NeverReads,
    /// Connect and close at once, with or without waiting for the welcome:
    /// health checks and reconnect loops.
    Churn,
    /// Dozens of `/nick` commands, valid, invalid and taken.
    NickStorm,
}
// ANCHOR_END: kinds

const KINDS: [Kind; 10] = [
    Kind::ResetBeforeWelcome,
    Kind::ResetMidLine,
    Kind::ResetMidBroadcast,
    Kind::HalfClose,
    Kind::LongLine,
    Kind::NoNewline,
    Kind::BadBytes,
    Kind::NeverReads,
    Kind::Churn,
    Kind::NickStorm,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::ResetBeforeWelcome => "reset-before-welcome",
            Kind::ResetMidLine => "reset-mid-line",
            Kind::ResetMidBroadcast => "reset-mid-broadcast",
            Kind::HalfClose => "half-close",
            Kind::LongLine => "long-line",
            Kind::NoNewline => "no-newline",
            Kind::BadBytes => "bad-bytes",
            Kind::NeverReads => "never-reads",
            Kind::Churn => "churn",
            Kind::NickStorm => "nick-storm",
        }
    }
}

/// xorshift64*: a few lines, no crate, and the same sequence for the same
/// seed on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // The state must never be 0 (xorshift would stay at 0).
        Rng((seed ^ 0x9e37_79b9_7f4a_7c15).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

// ANCHOR: deck
/// Hands out every kind once, in a random order, then again: a short run
/// still injects every kind.
struct Deck {
    cards: Vec<Kind>,
}

impl Deck {
    fn draw(&mut self, rng: &mut Rng) -> Kind {
        if self.cards.is_empty() {
            self.cards = KINDS.to_vec();
            // Fisher-Yates.
            for i in (1..self.cards.len()).rev() {
                let j = rng.between(0, i as u64) as usize;
                self.cards.swap(i, j);
            }
        }
        self.cards.pop().expect("refilled above")
    }
}
// ANCHOR_END: deck

/// What a misbehaving client does once its bytes are out.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// `SO_LINGER` 0 and `close`: a reset, whatever is in flight.
    Reset,
    /// An ordinary `close`.
    Close,
    /// `shutdown(SHUT_WR)`, then read until the server closes.
    HalfClose,
    /// Read until the server closes (after `/quit`, or an error).
    Drain,
}

#[derive(Debug)]
enum Phase {
    Connecting,
    /// Reading until the server's first line.
    Greeting,
    /// Writing `out`, then `filler` bytes; reading (and discarding) too,
    /// unless deaf.
    Sending,
    /// Waiting until then, still reading unless deaf.
    Pausing(Instant),
    /// Reading until the server closes.
    Draining,
}

/// One misbehaving client: its plan, and how far along it is.
struct Misfit {
    kind: Kind,
    fd: OwnedFd,
    target: SocketAddr,
    phase: Phase,
    /// Waits for the welcome before misbehaving.
    greet: bool,
    /// Never reads.
    deaf: bool,
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes without a newline to send after `out`.
    filler: usize,
    pause: Duration,
    then: Then,
    /// Past this, the client is reset and counted as unfinished (or, still
    /// connecting, as a connect that timed out).
    deadline: Instant,
    /// It has just connected: the next `settle` counts it as injected.
    fresh: bool,
}

/// How one step left a misbehaving client.
enum Step {
    Going,
    /// Finished: close it (with a reset when asked).
    Done {
        reset: bool,
    },
    /// The server reset it (a read or a send failed): the end of this
    /// client, and one more way a server may treat a misbehaving one.
    Cut,
    /// Could not connect.
    Failed(Failure),
}

/// Names some misbehaving clients try to take (`client1` is a checked
/// client's name while nobody renames it).
const NICKS: [&str; 6] = ["client1", "chaos", "x", "a_b-c", "bad name", "ÄÖÜ"];

/// Lines of bytes no terminal should receive raw.
const BAD_LINES: [&[u8]; 6] = [
    b"\xff\xfe invalid utf-8 \xc3\x28 \xa0\xa1\n",
    b"\x1b[2J\x1b[H cleared your screen\n",
    b"\x1b]0;window title\x07 bell\n",
    b"nul \x00 backspace \x08\x08 delete \x7f\n",
    b"\x1b[31mred\x1b[0m \x1bc reset terminal\n",
    b"\r\x1b[K carriage return over the line\n",
];

/// The plan for one misbehaving client of `kind`.
fn plan(kind: Kind, rng: &mut Rng, max_line: usize, fd: OwnedFd, target: SocketAddr) -> Misfit {
    let mut out = Vec::new();
    let (mut greet, mut deaf, mut filler) = (true, false, 0);
    let mut pause = Duration::ZERO;
    let then = match kind {
        Kind::ResetBeforeWelcome => {
            greet = false;
            Then::Reset
        }
        Kind::ResetMidLine => {
            let len = rng.between(1, 200.min(max_line as u64)) as usize;
            out.extend((0..len).map(|_| b'a' + rng.between(0, 25) as u8));
            pause = Duration::from_millis(rng.between(0, 20));
            Then::Reset
        }
        Kind::ResetMidBroadcast => {
            for n in 0..rng.between(5, 50) {
                out.extend_from_slice(format!("chaos line {n} for everyone\n").as_bytes());
            }
            out.extend_from_slice(b"/who\n");
            pause = Duration::from_millis(rng.between(0, 3));
            Then::Reset
        }
        Kind::HalfClose => {
            for n in 0..rng.between(0, 3) {
                out.extend_from_slice(format!("last words {n}\n").as_bytes());
            }
            if rng.coin() {
                out.extend_from_slice(b"and no newline after this");
            }
            Then::HalfClose
        }
        Kind::LongLine => {
            let len = max_line + 1 + rng.between(0, max_line as u64) as usize;
            out.resize(len, b'x');
            out.push(b'\n');
            Then::Drain
        }
        Kind::NoNewline => {
            filler = NO_NEWLINE_BYTES;
            Then::Drain
        }
        Kind::BadBytes => {
            for _ in 0..rng.between(1, 8) {
                out.extend_from_slice(BAD_LINES[rng.between(0, 5) as usize]);
            }
            out.extend_from_slice(b"/quit\n");
            Then::Drain
        }
        Kind::NeverReads => {
            greet = false;
            deaf = true;
            for _ in 0..rng.between(20_000, 60_000) {
                out.extend_from_slice(b"/who\n");
            }
            pause = Duration::from_millis(rng.between(500, 2_000));
            Then::Reset
        }
        Kind::Churn => {
            greet = rng.coin();
            Then::Close
        }
        Kind::NickStorm => {
            for n in 0..rng.between(20, 60) {
                let nick = match rng.between(0, 2) {
                    0 => format!("chaos{n}"),
                    1 => NICKS[rng.between(0, NICKS.len() as u64 - 1) as usize].to_string(),
                    _ => "n".repeat(rng.between(33, 80) as usize),
                };
                out.extend_from_slice(format!("/nick {nick}\n").as_bytes());
            }
            out.extend_from_slice(b"/quit\n");
            Then::Drain
        }
    };
    Misfit {
        kind,
        fd,
        target,
        phase: Phase::Connecting,
        greet,
        deaf,
        out,
        out_sent: 0,
        filler,
        pause,
        then,
        // Set at launch, and again when it connects.
        deadline: Instant::now(),
        fresh: false,
    }
}

impl Misfit {
    // ANCHOR: misfit_step
    /// Move the client along after a readiness event (or a timer): every
    /// outcome the server may cause, a reset, an early close, is an end
    /// of this client, never of the run.
    fn step(&mut self, events: EpollFlags, buf: &mut [u8], now: Instant) -> Step {
        if let Phase::Connecting = self.phase {
            if !events
                .intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
            {
                return Step::Going;
            }
            if let Err(errno) = net::connect_result(&self.fd) {
                return Step::Failed(Failure::Os(errno));
            }
            self.fresh = true;
            self.phase = if self.greet {
                Phase::Greeting
            } else {
                Phase::Sending
            };
        }
        // ANCHOR_END: misfit_step
        // ANCHOR: misfit_greeting
        loop {
            match self.phase {
                Phase::Connecting => unreachable!("handled above"),
                Phase::Greeting => {
                    let mut greeted = false;
                    let end =
                        net::read_all(&self.fd, buf, |chunk| greeted |= chunk.contains(&b'\n'));
                    if !greeted {
                        // Closed before any welcome: the server is full, or it
                        // let go; either way this client is over.
                        return match end {
                            ReadEnd::WouldBlock => Step::Going,
                            ReadEnd::Eof => Step::Done { reset: false },
                            ReadEnd::Failed(_) => Step::Cut,
                        };
                    }
                    self.phase = Phase::Sending;
                }
                // ANCHOR_END: misfit_greeting
                // ANCHOR: misfit_sending
                Phase::Sending => {
                    let end = if self.deaf {
                        ReadEnd::WouldBlock
                    } else {
                        self.discard(buf)
                    };
                    if let ReadEnd::Failed(_) = end {
                        return Step::Cut;
                    }
                    match self.send() {
                        Err(_) => return Step::Cut,
                        // Closed by the server (after its error line, say)
                        // with bytes still to send: nobody reads them now.
                        Ok(false) if end == ReadEnd::Eof => return Step::Done { reset: false },
                        Ok(false) => return Step::Going,
                        Ok(true) => self.phase = Phase::Pausing(now + self.pause),
                    }
                }
                // ANCHOR_END: misfit_sending
                // ANCHOR: misfit_ending
                Phase::Pausing(until) => {
                    if !self.deaf {
                        match self.discard(buf) {
                            ReadEnd::WouldBlock => {}
                            ReadEnd::Eof => return Step::Done { reset: false },
                            ReadEnd::Failed(_) => return Step::Cut,
                        }
                    }
                    if now < until {
                        return Step::Going;
                    }
                    match self.then {
                        Then::Reset => return Step::Done { reset: true },
                        Then::Close => return Step::Done { reset: false },
                        Then::HalfClose => {
                            let _ = shutdown(self.fd.as_raw_fd(), Shutdown::Write);
                            self.phase = Phase::Draining;
                        }
                        Then::Drain => self.phase = Phase::Draining,
                    }
                }
                Phase::Draining => {
                    return match self.discard(buf) {
                        ReadEnd::WouldBlock => Step::Going,
                        ReadEnd::Eof => Step::Done { reset: false },
                        ReadEnd::Failed(_) => Step::Cut,
                    };
                }
            }
        }
    }
    // ANCHOR_END: misfit_ending

    /// Read and throw away until `EAGAIN`, end-of-file or an error.
    fn discard(&self, buf: &mut [u8]) -> ReadEnd {
        net::read_all(&self.fd, buf, |_| {})
    }

    /// Send `out`, then the filler, as far as the socket takes them.
    /// Returns whether everything is out.
    fn send(&mut self) -> Result<bool, nix::errno::Errno> {
        if self.out_sent < self.out.len() {
            self.out_sent += net::send_some(&self.fd, &self.out[self.out_sent..])?;
            if self.out_sent < self.out.len() {
                return Ok(false);
            }
        }
        static FILLER: [u8; 64 * 1024] = [b'y'; 64 * 1024];
        while self.filler > 0 {
            let n = net::send_some(&self.fd, &FILLER[..self.filler.min(FILLER.len())])?;
            if n == 0 {
                return Ok(false);
            }
            self.filler -= n;
        }
        Ok(true)
    }

    /// Waiting only for time to pass (a pause with nothing to read).
    fn timer_due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Pausing(until) if now >= until)
    }
}

/// The server's descriptors and memory, read from `/proc/PID`.
#[derive(Clone, Copy)]
struct Usage {
    fds: usize,
    rss: u64,
}

fn usage(pid: u32) -> Result<Usage> {
    let path = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&path)
        .with_context(|| format!("cannot read {path} (is the server's process id right?)"))?
        .count();
    Ok(Usage {
        fds,
        rss: vm_rss(pid)?,
    })
}

// ANCHOR: probe
/// Does the server still accept a client and greet it? A plain blocking
/// connect and read, bounded by `timeout` in all and by `MAX_GREETING`
/// bytes: a server that trickles bytes without a newline fails too.
fn probe(target: SocketAddr, timeout: Duration) -> Result<(), String> {
    let give_up = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&target, timeout).map_err(|e| e.to_string())?;
    let mut greeting = Vec::new();
    while greeting.len() < MAX_GREETING {
        let left = give_up.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 512];
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed without a line".to_string()),
            Ok(n) if chunk[..n].contains(&b'\n') => return Ok(()),
            Ok(n) => greeting.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("no line within {}: {err}", show_duration(timeout))),
        }
    }
    Err(format!("no line within {}", show_duration(timeout)))
}
// ANCHOR_END: probe

pub fn run(args: &ChaosArgs) -> Result<Outcome> {
    let targets = &args.common.addrs;
    let timeout = args.common.timeout;
    let seed = args
        .seed
        .unwrap_or_else(|| net::monotonic_ns() ^ u64::from(std::process::id()));
    let mut rng = Rng::new(seed);
    let mut deck = Deck { cards: Vec::new() };
    let before = args.server_pid.map(usage).transpose()?;

    let epoll = net::epoll_create()?;
    let lines = (args.rate as f64 * args.duration.as_secs_f64()).ceil() as u64;
    let mut group = Group::connect(
        &epoll,
        &Setup {
            targets,
            clients: args.clients,
            max_seq: u32::try_from(lines / u64::from(args.clients) + 2).unwrap_or(u32::MAX),
            hello: None,
            publish: None,
            greeting: true,
            timeout,
        },
    )?;
    let members = group.members();

    let mut misfits: Slots<Misfit> = Slots::default();
    let mut tally = Tally {
        injected: KINDS.iter().map(|&k| (k, 0)).collect(),
        ..Tally::default()
    };
    let mut launched = 0u64;
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut progress = Progress::new();

    let start = Instant::now();
    let end = start + args.duration;
    // After the end: the misbehaving clients finish (each within --timeout)
    // and the lines in flight arrive; this bounds it all.
    let hard_stop = end + timeout + args.drain_timeout;
    let line_every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let fault_every = Duration::from_secs_f64(1.0 / args.fault_rate as f64);
    let (mut next_line, mut next_fault) = (0u64, start);
    let mut last_send = start;
    loop {
        let now = Instant::now();
        // ANCHOR: schedule
        if now < end {
            // The checked clients' lines, paced: they flow all through the
            // faults, which is what shows the faults cost them nothing.
            while start + line_every.mul_f64(next_line as f64) <= now {
                let index = members[(next_line % members.len() as u64) as usize];
                next_line += 1;
                if group.send(index, 1, &epoll) > 0 {
                    last_send = now;
                }
            }
            while next_fault <= now && misfits.len() < args.concurrency as usize {
                let target = targets[(launched % targets.len() as u64) as usize];
                launched += 1;
                next_fault += fault_every;
                let kind = deck.draw(&mut rng);
                launch(
                    kind,
                    target,
                    args,
                    &mut rng,
                    &epoll,
                    &mut misfits,
                    &mut tally.errors,
                );
            }
            // At the limit, the schedule waits instead of bursting later.
            next_fault = next_fault.max(now);
        } else {
            let quiet = now - last_send.max(group.last_delivery) >= args.drain_timeout;
            if misfits.is_empty() && (group.all_delivered() || quiet) || now >= hard_stop {
                break;
            }
        }
        // ANCHOR_END: schedule

        let wait_for = if now < end {
            (start + line_every.mul_f64(next_line as f64))
                .min(next_fault)
                .saturating_duration_since(now)
                .min(Duration::from_millis(50))
        } else {
            Duration::from_millis(20)
        };
        let n = net::wait(&epoll, &mut ready, wait_for)?;
        let now = Instant::now();
        for event in &ready[..n] {
            let token = event.data();
            if token < MISFIT {
                group.receive(token as usize, &epoll);
                continue;
            }
            let slot = (token - MISFIT) as usize;
            if let Some(misfit) = misfits.get_mut(slot) {
                let step = misfit.step(event.events(), &mut buf, now);
                settle(step, slot, &epoll, &mut misfits, &mut tally, now, timeout);
            }
        }
        // Timers: pauses that ended, and clients past their deadline.
        for slot in 0..misfits.capacity() {
            let Some(misfit) = misfits.get_mut(slot) else {
                continue;
            };
            if now >= misfit.deadline || now >= hard_stop {
                if let Phase::Connecting = misfit.phase {
                    tally.errors.count_for(misfit.target, Failure::Timeout);
                } else {
                    *tally.unfinished.entry(misfit.kind).or_default() += 1;
                }
                close_misfit(&epoll, misfits.remove(slot).expect("in use"), true);
            } else if misfit.timer_due(now) {
                let step = misfit.step(EpollFlags::empty(), &mut buf, now);
                settle(step, slot, &epoll, &mut misfits, &mut tally, now, timeout);
            }
        }
        progress.tick(|| {
            format!(
                "{} faults, {} lines sent, {} delivered",
                thousands(tally.injected.values().sum::<u64>() as f64),
                thousands(group.sent as f64),
                thousands(group.delivered as f64)
            )
        });
    }
    progress.finish();
    // Connecting clients left at the hard stop are simply closed.
    for misfit in misfits.drain() {
        close_misfit(&epoll, misfit, true);
    }

    // ANCHOR: verdict
    // Is the server still up? Every checked client is still connected, and
    // a fresh client is accepted and greeted at every address.
    let still_connected = group.connected();
    let probes: Vec<(SocketAddr, Result<(), String>)> =
        targets.iter().map(|&t| (t, probe(t, timeout))).collect();
    group.finish(&epoll);
    // The server closes its side once it sees ours close: wait (bounded)
    // for its descriptors to come back to where they were.
    let after = match (args.server_pid, before) {
        (Some(pid), Some(before)) => {
            let settle_by = Instant::now() + SETTLE;
            loop {
                let now = usage(pid).ok();
                if now.is_none_or(|u| u.fds <= before.fds) || Instant::now() >= settle_by {
                    break now;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        _ => None,
    };
    // ANCHOR_END: verdict

    report(
        args,
        seed,
        &group,
        &tally,
        still_connected,
        &probes,
        before,
        after,
        start.elapsed(),
    )
}

/// Start one misbehaving client of `kind`; a socket that cannot even be
/// started is counted, not fatal.
fn launch(
    kind: Kind,
    target: SocketAddr,
    args: &ChaosArgs,
    rng: &mut Rng,
    epoll: &Epoll,
    misfits: &mut Slots<Misfit>,
    errors: &mut Errors,
) {
    let fd = match net::start_connect(target, None, true) {
        Ok((fd, _)) => fd,
        Err(errno) => return errors.count_for(target, Failure::Os(errno)),
    };
    if kind == Kind::NeverReads {
        net::shrink_receive_buffer(&fd, DEAF_BUFFER);
    }
    let mut misfit = plan(kind, rng, args.max_line, fd, target);
    misfit.deadline = Instant::now() + args.common.timeout;
    let slot = misfits.insert(misfit);
    let misfit = misfits.get_mut(slot).expect("inserted");
    if let Err(errno) = net::watch(epoll, &misfit.fd, net::INTEREST, MISFIT + slot as u64) {
        errors.count_for(target, Failure::Os(errno));
        drop(misfits.remove(slot));
    }
}

/// What the misbehaving clients did and met.
#[derive(Default)]
struct Tally {
    /// By kind, counted when the client connected.
    injected: BTreeMap<Kind, u64>,
    /// By kind: still open at their deadline, so reset then.
    unfinished: BTreeMap<Kind, u64>,
    /// Clients that could not connect.
    errors: Errors,
    /// Clients the server reset.
    cut: u64,
}

/// Act on a step: count a client that connected, close one that is done.
fn settle(
    step: Step,
    slot: usize,
    epoll: &Epoll,
    misfits: &mut Slots<Misfit>,
    tally: &mut Tally,
    now: Instant,
    timeout: Duration,
) {
    let Some(misfit) = misfits.get_mut(slot) else {
        return;
    };
    // Counted once, when it connected: from then on the server meets the
    // fault. Its deadline counts from then too.
    if std::mem::take(&mut misfit.fresh) {
        *tally.injected.entry(misfit.kind).or_default() += 1;
        misfit.deadline = now + timeout;
    }
    match step {
        Step::Going => {}
        Step::Done { reset } => {
            close_misfit(epoll, misfits.remove(slot).expect("in use"), reset);
        }
        Step::Cut => {
            tally.cut += 1;
            close_misfit(epoll, misfits.remove(slot).expect("in use"), false);
        }
        Step::Failed(failure) => {
            tally.errors.count_for(misfit.target, failure);
            close_misfit(epoll, misfits.remove(slot).expect("in use"), false);
        }
    }
}

/// Close a misbehaving client; `reset`: with `SO_LINGER` 0, so the server
/// gets an RST instead of a FIN.
fn close_misfit(epoll: &Epoll, misfit: Misfit, reset: bool) {
    if reset {
        net::set_linger_zero(&misfit.fd);
    }
    net::close(epoll, misfit.fd);
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &ChaosArgs,
    seed: u64,
    group: &Group,
    tally: &Tally,
    still_connected: usize,
    probes: &[(SocketAddr, Result<(), String>)],
    before: Option<Usage>,
    after: Option<Usage>,
    elapsed: Duration,
) -> Result<Outcome> {
    let mut settings = format!(
        "tester chaos {} --duration {} --clients {} --rate {} --fault-rate {} --concurrency {} \
         --max-line {} --seed {seed} --drain-timeout {} --timeout {}",
        show_addrs(&args.common.addrs),
        show_duration(args.duration),
        args.clients,
        args.rate,
        args.fault_rate,
        args.concurrency,
        args.max_line,
        show_duration(args.drain_timeout),
        show_duration(args.common.timeout),
    );
    if let Some(pid) = args.server_pid {
        settings += &format!(" --server-pid {pid}");
    }
    let Tally {
        injected,
        unfinished,
        errors,
        cut,
    } = tally;
    let total: u64 = injected.values().sum();
    let by_kind: Vec<String> = injected
        .iter()
        .map(|(kind, n)| format!("{} {n}", kind.name()))
        .collect();
    let mut failures = group.faults();
    if group.errors.total() > 0 {
        failures.push(format!(
            "{} of the checked clients could not join ({})",
            group.errors.total(),
            group.errors.describe()
        ));
    }
    for (target, probe) in probes {
        if let Err(why) = probe {
            failures.push(format!(
                "a fresh client at {target} was not served at the end: {why}"
            ));
        }
    }
    let mut fd_line = None;
    let mut memory_line = None;
    if let (Some(before), pid) = (before, args.server_pid.unwrap_or(0)) {
        match after {
            Some(after) => {
                let (line, failure) = descriptors(before, after);
                fd_line = Some(line);
                failures.extend(failure);
                memory_line = Some(format!(
                    "VmRSS {} before, {} after",
                    mib(before.rss),
                    mib(after.rss)
                ));
            }
            None => failures.push(format!("the server process {pid} is gone")),
        }
    }
    let verdict = if failures.is_empty() {
        "every line reached every other checked client once and in order; the server stayed up"
            .to_string()
    } else {
        format!("FAILED: {}", failures.join("; "))
    };
    let joined = group.joined();
    let server_line = format!(
        "{}; {still_connected} of {joined} checked clients still connected",
        if probes.iter().all(|(_, p)| p.is_ok()) {
            "accepted and greeted a fresh client at the end"
        } else {
            "did NOT serve a fresh client at the end"
        }
    );
    let unfinished_total: u64 = unfinished.values().sum();
    let mut summary = format!(
        "{settings}\n\
         faults       {} injected in {}: {}\n\
         checked      {} sent {} lines; {} of {} delivered, lost {}, duplicated {}, reordered {}\n\
         latency      {}\n\
         server       {server_line}",
        thousands(total as f64),
        duration(elapsed),
        by_kind.join(", "),
        plural(joined as u64, "client"),
        thousands(group.sent as f64),
        thousands(group.delivered as f64),
        thousands(group.expected() as f64),
        group.lost(),
        group.duplicated(),
        group.reordered(),
        group.latency.describe(&[50.0, 99.0]),
    );
    if let Some(line) = &fd_line {
        summary += &format!("\ndescriptors  {line}");
    }
    if let Some(line) = &memory_line {
        summary += &format!("\nmemory       {line}");
    }
    summary += &format!("\ncheck        {verdict}");
    let mut notes = vec![format!(
        "{} server notices ignored by the checked clients",
        thousands(group.notices() as f64)
    )];
    if *cut > 0 {
        notes.push(format!(
            "{} reset by the server",
            plural(*cut, "misbehaving client")
        ));
    }
    if errors.total() > 0 {
        notes.push(format!(
            "misbehaving clients that could not connect: {}",
            errors.describe()
        ));
    }
    if unfinished_total > 0 {
        let kinds: Vec<String> = unfinished
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.name()))
            .collect();
        notes.push(format!(
            "misbehaving clients the server had not closed within {} (reset then): {}",
            show_duration(args.common.timeout),
            kinds.join(", ")
        ));
    }
    for note in &notes {
        summary += &format!("\nnote         {note}");
    }
    let json = json!({
        "command": "chaos",
        "settings": {
            "addr": args.common.addrs[0].to_string(),
            "addrs": addr_list(&args.common.addrs),
            "duration_s": args.duration.as_secs_f64(),
            "clients": args.clients,
            "rate": args.rate,
            "fault_rate": args.fault_rate,
            "concurrency": args.concurrency,
            "max_line": args.max_line,
            "seed": seed,
            "server_pid": args.server_pid,
            "drain_timeout_s": args.drain_timeout.as_secs_f64(),
            "timeout_s": args.common.timeout.as_secs_f64(),
        },
        "elapsed_s": elapsed.as_secs_f64(),
        "injected": injected.iter().map(|(k, n)| (k.name(), *n)).collect::<BTreeMap<_, _>>(),
        "injected_total": total,
        "unfinished": unfinished.iter().map(|(k, n)| (k.name(), *n)).collect::<BTreeMap<_, _>>(),
        "errors": errors,
        "reset_by_server": cut,
        "sent": group.sent,
        "expected": group.expected(),
        "delivered": group.delivered,
        "lost": group.lost(),
        "duplicated": group.duplicated(),
        "reordered": group.reordered(),
        "latency": group.latency.json(&[50.0, 99.0]),
        "notices": group.notices(),
        "joined": joined,
        "still_connected": still_connected,
        "disconnected": group.disconnected(),
        "fresh_client": probes.iter().all(|(_, p)| p.is_ok()),
        "server_fds_before": before.map(|u| u.fds),
        "server_fds_after": after.map(|u| u.fds),
        "server_rss_before": before.map(|u| u.rss),
        "server_rss_after": after.map(|u| u.rss),
        "failures": failures,
        "notes": notes,
    });
    Ok(Outcome {
        summary,
        json,
        failed: !failures.is_empty(),
    })
}

/// The descriptors line of the summary, and the failure when the server
/// holds more after the run (and the wait for it) than before.
fn descriptors(before: Usage, after: Usage) -> (String, Option<String>) {
    if after.fds <= before.fds {
        let line = format!(
            "{} before, {} after: back to the baseline",
            before.fds, after.fds
        );
        return (line, None);
    }
    let more = after.fds - before.fds;
    let line = format!(
        "{} before, {} after (still {more} more after {})",
        before.fds,
        after.fds,
        duration(SETTLE)
    );
    let failure = format!(
        "the server holds {} more after the run than before ({} before, {} after)",
        plural(more as u64, "descriptor"),
        before.fds,
        after.fds
    );
    (line, Some(failure))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_left_open_fail_the_run() {
        let at = |fds| Usage { fds, rss: 0 };
        let (line, failure) = descriptors(at(8), at(8));
        assert_eq!(line, "8 before, 8 after: back to the baseline");
        assert_eq!(failure, None);
        // Fewer after (a log file closed, say) is no leak.
        assert_eq!(descriptors(at(8), at(7)).1, None);
        let (line, failure) = descriptors(at(8), at(11));
        assert_eq!(line, "8 before, 11 after (still 3 more after 5.00s)");
        assert_eq!(
            failure.as_deref(),
            Some(
                "the server holds 3 descriptors more after the run than before (8 before, 11 after)"
            )
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_faults() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            let mut deck = Deck { cards: Vec::new() };
            (0..30).map(|_| deck.draw(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // Every ten draws hold every kind once.
        let mut first: Vec<Kind> = draw(7)[..10].to_vec();
        first.sort();
        assert_eq!(first, KINDS);
    }
}
