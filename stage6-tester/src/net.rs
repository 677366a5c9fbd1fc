//! The event-loop machinery every subcommand shares: non-blocking `connect`
//! (`EINPROGRESS`, then `EPOLLOUT` and `SO_ERROR`), reads and writes that stop
//! at `EAGAIN`, one `epoll_wait` with a timeout, and the clock that tokens
//! carry between processes.
//!
//! Every socket is registered once, edge-triggered, for input and output
//! together (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`): the loop never has
//! to call `epoll_ctl(EPOLL_CTL_MOD)`, in exchange it must always read and
//! write until `EAGAIN`, exactly as stage 4 teaches.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, bind, connect, send, setsockopt,
    socket, sockopt,
};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::read;
use serde::{Deserialize, Serialize};

// ANCHOR: interest
/// The one interest set every connection is registered with.
pub const INTEREST: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLOUT)
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// For a socket that only waits for the server to speak (`connect
/// --greeting`): the end of the handshake wakes nobody, and a failed
/// connect still wakes the loop, with the `EPOLLERR` and `EPOLLHUP` that
/// epoll reports whatever the interest.
pub const INPUT: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

/// `epoll_create1(EPOLL_CLOEXEC)`: one per event loop.
pub fn epoll_create() -> Result<Epoll> {
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("cannot create an epoll instance")
}

/// `epoll_ctl(EPOLL_CTL_ADD)`; `token` comes back in every event for this
/// descriptor. Its failure (`ENOMEM`, `ENOSPC` past `max_user_watches`)
/// belongs to that one connection: the caller counts it like a failed
/// connect, and the run goes on.
pub fn watch(epoll: &Epoll, fd: impl AsFd, interest: EpollFlags, token: u64) -> Result<(), Errno> {
    epoll.add(fd, EpollEvent::new(interest, token))
}
// ANCHOR_END: interest

/// `epoll_ctl(EPOLL_CTL_DEL)`, then `close(2)` by dropping the descriptor:
/// the same order the servers use.
pub fn close(epoll: &Epoll, fd: OwnedFd) {
    let _ = epoll.delete(&fd);
    drop(fd);
}

/// `epoll_wait` for at most `timeout`; a signal that interrupts it (`EINTR`)
/// just means "no events this time".
pub fn wait(epoll: &Epoll, ready: &mut [EpollEvent], timeout: Duration) -> Result<usize> {
    // Round up, so a wait for 0.4 ms does not become a busy loop of 0 ms waits.
    let millis = timeout.as_micros().div_ceil(1000).min(u16::MAX as u128) as u16;
    match epoll.wait(ready, millis) {
        Ok(n) => Ok(n),
        Err(Errno::EINTR) => Ok(0),
        Err(err) => Err(io::Error::from(err)).context("epoll_wait failed"),
    }
}

// ANCHOR: connect
/// What `connect(2)` on a non-blocking socket said.
pub enum Started {
    /// Already connected (possible on loopback, rare).
    Connected,
    /// `EINPROGRESS`: the handshake goes on; `EPOLLOUT` reports its end.
    InProgress,
}

/// `socket(2)` with `SOCK_NONBLOCK`, optionally `bind(2)` to a source
/// address, then `connect(2)`, which returns at once instead of waiting for
/// the handshake. `no_delay` for connections that will send messages.
pub fn start_connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    no_delay: bool,
) -> Result<(OwnedFd, Started), Errno> {
    let family = match target {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Stream, flags, None)?;
    // Small request-response messages must not wait for Nagle's algorithm.
    if no_delay {
        setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    }
    if let Some(ip) = source {
        // Pick the port at connect time from the whole 4-tuple, not at bind
        // time from the source address alone.
        setsockopt(&fd, sockopt::IpBindAddressNoPort, &true)?;
        bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(ip, 0)),
        )?;
    }
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(target)) {
        Ok(()) => Ok((fd, Started::Connected)),
        Err(Errno::EINPROGRESS) => Ok((fd, Started::InProgress)),
        Err(err) => Err(err),
    }
}

/// After `EPOLLOUT` on a connecting socket: `getsockopt(SO_ERROR)` says
/// whether the handshake worked (0) or why it failed.
pub fn connect_result(fd: &OwnedFd) -> Result<(), Errno> {
    match getsockopt_so_error(fd) {
        0 => Ok(()),
        errno => Err(Errno::from_raw(errno)),
    }
}

fn getsockopt_so_error(fd: &OwnedFd) -> i32 {
    nix::sys::socket::getsockopt(fd, sockopt::SocketError).unwrap_or_else(|err| err as i32)
}
// ANCHOR_END: connect

// ANCHOR: drain
/// What a read until `EAGAIN` found.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// `EAGAIN`: nothing more for now; the next edge brings more.
    WouldBlock,
    /// `read` returned 0: the peer closed its side.
    Eof,
    /// The connection failed (for example `ECONNRESET`).
    Failed(Errno),
}

/// `read(2)` until `EAGAIN`, handing each chunk to `chunk`.
pub fn read_all(fd: &OwnedFd, buf: &mut [u8], mut chunk: impl FnMut(&[u8])) -> ReadEnd {
    loop {
        match read(fd, buf) {
            Ok(0) => return ReadEnd::Eof,
            Ok(n) => chunk(&buf[..n]),
            Err(Errno::EAGAIN) => return ReadEnd::WouldBlock,
            Err(Errno::EINTR) => continue,
            Err(err) => return ReadEnd::Failed(err),
        }
    }
}

/// `send(2)` as much of `bytes` as the socket takes; returns how many went.
/// `MSG_NOSIGNAL`: a write to a reset peer fails (`ECONNRESET`, then
/// `EPIPE`) instead of raising `SIGPIPE`.
pub fn send_some(fd: &OwnedFd, bytes: &[u8]) -> Result<usize, Errno> {
    let mut sent = 0;
    while sent < bytes.len() {
        match send(fd.as_raw_fd(), &bytes[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(sent)
}
// ANCHOR_END: drain

/// `SO_LINGER` with a zero timeout: the `close(2)` that follows sends a
/// reset (RST) instead of a FIN, and drops whatever was not yet sent.
pub fn set_linger_zero(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = setsockopt(fd, sockopt::Linger, &linger);
}

/// `SO_RCVBUF`: a small receive buffer, so that a client that never reads
/// stops taking bytes soon and the server has to queue them itself.
pub fn shrink_receive_buffer(fd: &OwnedFd, bytes: usize) {
    let _ = setsockopt(fd, sockopt::RcvBuf, &bytes);
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process on the
/// machine, so a send time written by one worker process can be compared with
/// the receive time in another.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC always exists");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (the most a process may
/// ask for without privileges); returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The ephemeral port range (`/proc/sys/net/ipv4/ip_local_port_range`):
/// how many connections one source address can make to one server.
pub fn ephemeral_ports() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28_232)
}

/// Failed connections, counted by kind.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Errors {
    /// `ECONNREFUSED`: nothing listens, or the accept queue overflowed.
    pub refused: u64,
    /// `ECONNRESET` / `EPIPE`: the server reset the connection.
    pub reset: u64,
    /// No answer within the timeout.
    pub timeout: u64,
    /// Anything else, by errno name.
    pub other: BTreeMap<String, u64>,
    /// The first failure, as a message (for `error: cannot connect ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    /// The address the first failure was at, when the run has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_target: Option<SocketAddr>,
}

/// Why one connection failed.
#[derive(Debug, Clone, Copy)]
pub enum Failure {
    Os(Errno),
    Timeout,
    /// The server closed the connection before it said anything.
    Closed,
}

impl Failure {
    pub fn message(self) -> String {
        match self {
            Failure::Os(errno) => io::Error::from(errno).to_string(),
            Failure::Timeout => "timed out".to_string(),
            Failure::Closed => "closed by the server".to_string(),
        }
    }
}

impl Errors {
    pub fn count(&mut self, failure: Failure) {
        match failure {
            Failure::Os(Errno::ECONNREFUSED) => self.refused += 1,
            Failure::Os(Errno::ECONNRESET | Errno::EPIPE) => self.reset += 1,
            Failure::Os(Errno::ETIMEDOUT) | Failure::Timeout => self.timeout += 1,
            Failure::Os(errno) => *self.other.entry(format!("{errno:?}")).or_default() += 1,
            Failure::Closed => *self.other.entry("closed".to_string()).or_default() += 1,
        }
        self.first.get_or_insert_with(|| failure.message());
    }

    /// Count a failure at `target`, remembered if it is the first.
    pub fn count_for(&mut self, target: SocketAddr, failure: Failure) {
        if self.first.is_none() {
            self.first_target = Some(target);
        }
        self.count(failure);
    }

    /// `cannot connect to ADDR: WHY` for the first failure (at `fallback`
    /// if none was counted with its address).
    pub fn cannot_connect(&self, fallback: SocketAddr) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot connect to {}: {}",
            self.first_target.unwrap_or(fallback),
            self.first.as_deref().unwrap_or("")
        )
    }

    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.other.values().sum::<u64>()
    }

    pub fn merge(&mut self, other: &Errors) {
        self.refused += other.refused;
        self.reset += other.reset;
        self.timeout += other.timeout;
        for (kind, n) in &other.other {
            *self.other.entry(kind.clone()).or_default() += n;
        }
        if self.first.is_none() {
            self.first.clone_from(&other.first);
            self.first_target = other.first_target;
        }
    }

    /// `refused 3, timeout 1, EADDRNOTAVAIL 2`, or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, n) in [
            ("refused", self.refused),
            ("reset", self.reset),
            ("timeout", self.timeout),
        ] {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        }
        for (name, n) in &self.other {
            parts.push(format!("{name} {n}"));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

// ANCHOR: deadlines
/// Connections still in their handshake, oldest first. Every connection
/// gets the same timeout, so the oldest is always the next to expire: a
/// queue finds the expired ones without scanning every connection.
#[derive(Default)]
pub struct Deadlines {
    queue: VecDeque<(Instant, usize, u64)>,
}

impl Deadlines {
    /// Remember that connection `serial` in `slot` must be done by `deadline`.
    pub fn push(&mut self, deadline: Instant, slot: usize, serial: u64) {
        self.queue.push_back((deadline, slot, serial));
    }

    /// The `(slot, serial)` pairs whose deadline has passed; the caller
    /// ignores the ones that finished meanwhile (their serial no longer
    /// matches the slot).
    pub fn expired(&mut self, now: Instant) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        while let Some(&(deadline, slot, serial)) = self.queue.front() {
            if deadline > now {
                break;
            }
            self.queue.pop_front();
            out.push((slot, serial));
        }
        out
    }

    /// How long until the oldest deadline, if any.
    pub fn next_in(&self, now: Instant) -> Option<Duration> {
        self.queue
            .front()
            .map(|&(deadline, _, _)| deadline.saturating_duration_since(now))
    }
}
// ANCHOR_END: deadlines

/// A fixed set of slots for connections; a slot's index is the epoll token.
/// Freed slots are reused so tokens stay small and the table stays compact.
pub struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
    used: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            items: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }
}

impl<T> Slots<T> {
    pub fn insert(&mut self, item: T) -> usize {
        self.used += 1;
        match self.free.pop() {
            Some(slot) => {
                self.items[slot] = Some(item);
                slot
            }
            None => {
                self.items.push(Some(item));
                self.items.len() - 1
            }
        }
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.items.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn remove(&mut self, slot: usize) -> Option<T> {
        let item = self.items.get_mut(slot).and_then(Option::take);
        if item.is_some() {
            self.used -= 1;
            self.free.push(slot);
        }
        item
    }

    pub fn len(&self) -> usize {
        self.used
    }

    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// One past the highest slot ever used: `0..capacity()` covers every slot.
    pub fn capacity(&self) -> usize {
        self.items.len()
    }

    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.used = 0;
        self.free.clear();
        self.items.drain(..).flatten()
    }
}

// ANCHOR: sources
/// The loopback source addresses for `count` connections to `target`: one
/// address serves up to `per_source` connections, then the next is used
/// (127.0.0.2, 127.0.0.3, ...; the whole 127.0.0.0/8 is loopback). `None`
/// lets the kernel choose, as for the first `per_source` connections and
/// for any target that is not on 127.0.0.0/8.
pub fn source_for(target: SocketAddr, index: u64, per_source: u64) -> Option<IpAddr> {
    let block = index / per_source;
    match target.ip() {
        // Unbound connections leave from 127.0.0.1, so extra blocks start at .2.
        IpAddr::V4(ip) if ip.is_loopback() && block > 0 => {
            Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | (block as u32 + 1))))
        }
        _ => None,
    }
}
// ANCHOR_END: sources

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_move_on_past_one_port_range() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(source_for(target, 0, 28_000), None);
        assert_eq!(source_for(target, 27_999, 28_000), None);
        assert_eq!(
            source_for(target, 28_000, 28_000),
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            source_for(target, 60_000, 28_000),
            Some("127.0.0.3".parse().unwrap())
        );
        // IPv6 has one loopback address: no spreading.
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert_eq!(source_for(v6, 60_000, 28_000), None);
    }
}
