//! Checks of how a server is built, not of what it answers: one thread, an
//! epoll instance that watches the listener and every client with the
//! flags the step teaches, no busy loop while its clients are idle, and
//! bounded memory under a client that never reads. They read only `/proc`
//! and the sockets, never the server's log, so they grade a server in any
//! language. A stage's test file states them in one line:
//! `testkit::built_checks!(bin(), probe, DESIGN);`
//!
//! Each check returns what the server did and what it means, so a test
//! can also assert that a server built another way fails it.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};

use crate::conventions::Probe;
use crate::interest::epoll_flags;
use crate::{Client, Server, TIMEOUT, holds_within_timeout};

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;

/// The kernel adds these to every registration: `/proc` shows them on
/// every entry, whatever the server asked for.
const ADDED_BY_THE_KERNEL: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

/// What a registration must hold: at least `at_least`, none of `without`.
/// A server that asks for more (`EPOLLPRI`, say) still passes.
#[derive(Clone, Copy, Debug)]
pub struct Interest {
    pub at_least: u32,
    pub without: u32,
}

impl Interest {
    /// At least `flags`, whatever else.
    pub const fn at_least(flags: u32) -> Interest {
        Interest {
            at_least: flags,
            without: 0,
        }
    }

    /// At least `flags`, and not `EPOLLET`.
    pub const fn level_triggered(flags: u32) -> Interest {
        Interest {
            at_least: flags,
            without: EPOLLET,
        }
    }
}

/// What the server serves: what a client that never reads sends it.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Bytes, which the server echoes to the client that never reads them.
    Echo,
    /// Chat lines from another client, which the server relays to the
    /// client that never reads them.
    Chat,
}

/// What the other clients get while one never reads.
#[derive(Clone, Copy, Debug)]
pub enum Meanwhile {
    /// They are served: every socket is non-blocking (stage 4 on).
    Served,
    /// They wait: the server blocks in `send(2)` to the client that never
    /// reads, which stage 3 does and stage 4 fixes.
    Wait,
}

/// How a step builds its server, as its chapter teaches it.
#[derive(Clone, Copy, Debug)]
pub struct Design {
    /// The step, as the failure messages name it: `"stage 4"`.
    pub stage: &'static str,
    pub listener: Interest,
    pub clients: Interest,
    pub load: Load,
    pub meanwhile: Meanwhile,
}

/// Clients connected while the checks look at the server: enough that a
/// thread per connection shows, few enough for tests that run in parallel.
const CLIENTS: usize = 4;

/// The server as the checks run it: quiet, on a free port of loopback.
fn start(bin: &Path) -> Server {
    Server::start(bin, &["-q", "127.0.0.1:0"])
}

/// `n` clients, each shown to be served.
fn connect_served(server: &Server, probe: Probe, n: usize) -> Result<Vec<Client>, String> {
    (0..n)
        .map(|i| {
            let mut client = server.connect_named(format!("client {} of {n}", i + 1));
            run_probe(probe, &mut client)?;
            Ok(client)
        })
        .collect()
}

/// The probe, its panic turned into the failure it describes.
fn run_probe(probe: Probe, client: &mut Client) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe(client))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the probe failed".to_string())
    })
}

/// The names of the server's threads (`/proc/PID/task/TID/comm`).
fn threads(server: &Server) -> Vec<String> {
    let tasks =
        std::fs::read_dir(format!("/proc/{}/task", server.pid())).expect("read /proc/PID/task");
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect()
}

/// The server runs one thread, with clients connected: not a thread per
/// connection, nor a pool.
pub fn one_thread(bin: &Path, probe: Probe) -> Result<(), String> {
    let server = start(bin);
    let _clients = connect_served(&server, probe, CLIENTS)?;
    let threads = threads(&server);
    if threads.len() == 1 {
        return Ok(());
    }
    // By name, each once with its count: `threads-echo ×5`.
    let mut named: Vec<(&str, usize)> = Vec::new();
    for name in &threads {
        match named.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => named.push((name, 1)),
        }
    }
    let named: Vec<String> = named.iter().map(|(n, c)| format!("{n} ×{c}")).collect();
    Err(format!(
        "the server has {} threads with {CLIENTS} clients connected ({}): a thread per \
         connection? these checks expect one thread and one epoll loop",
        threads.len(),
        named.join(", ")
    ))
}

/// One entry of an interest list, as `/proc/PID/fdinfo` shows it.
struct Registration {
    /// The epoll instance's descriptor.
    epoll: i32,
    /// The descriptor it was registered under (`tfd`).
    fd: i32,
    events: u32,
    /// The inode of the file it watches, which names the socket even if
    /// the descriptor has since been duplicated or closed.
    inode: u64,
}

/// The server's epoll instances and every entry of their interest lists;
/// `None` when it has no epoll instance at all.
fn registrations(server: &Server) -> Option<Vec<Registration>> {
    let pid = server.pid();
    let epolls: Vec<i32> = server
        .fds()
        .into_iter()
        .filter(|fd| link(pid, *fd) == "anon_inode:[eventpoll]")
        .collect();
    if epolls.is_empty() {
        return None;
    }
    let mut entries = Vec::new();
    for epoll in epolls {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epoll}")) else {
            continue; // closed since the listing
        };
        // tfd:        5 events: 80002019 data: 5  pos:0 ino:2a0f sdev:8
        for line in info.lines() {
            let Some(rest) = line.strip_prefix("tfd:") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            let field = |name: &str| {
                let at = words.iter().position(|w| *w == name)?;
                words.get(at + 1).copied()
            };
            let ino = words.iter().find_map(|w| w.strip_prefix("ino:"));
            let (Some(fd), Some(events), Some(inode)) = (
                words.first().and_then(|w| w.parse().ok()),
                field("events:").and_then(|e| u32::from_str_radix(e, 16).ok()),
                ino.and_then(|i| u64::from_str_radix(i, 16).ok()),
            ) else {
                continue;
            };
            entries.push(Registration {
                epoll,
                fd,
                events,
                inode,
            });
        }
    }
    Some(entries)
}

/// Where `/proc/PID/fd/FD` points, or an empty string.
fn link(pid: u32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|target| target.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The server's sockets: inode to descriptor (from `socket:[INODE]`).
fn sockets(server: &Server) -> HashMap<u64, i32> {
    let pid = server.pid();
    server
        .fds()
        .into_iter()
        .filter_map(|fd| {
            let target = link(pid, fd);
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some((inode.parse().ok()?, fd))
        })
        .collect()
}

/// `TCP_LISTEN` in the `st` column of `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0a;

/// One row of `/proc/net/tcp` or `tcp6`.
struct TcpRow {
    local: String,
    remote: String,
    state: u8,
    inode: u64,
}

/// An address as `/proc/net/tcp` prints it: each 32-bit word of the IP in
/// host order, then the port, in hex.
fn proc_hex(addr: SocketAddr) -> String {
    let ip: Vec<u8> = match addr.ip() {
        std::net::IpAddr::V4(ip) => u32::from_ne_bytes(ip.octets()).to_be_bytes().to_vec(),
        std::net::IpAddr::V6(ip) => ip
            .octets()
            .chunks(4)
            .flat_map(|w| u32::from_ne_bytes(w.try_into().unwrap()).to_be_bytes())
            .collect(),
    };
    let ip: String = ip.iter().map(|b| format!("{b:02X}")).collect();
    format!("{ip}:{:04X}", addr.port())
}

/// The TCP sockets of `addr`'s family on this machine.
fn tcp_rows(addr: SocketAddr) -> Vec<TcpRow> {
    let table = if addr.is_ipv4() { "tcp" } else { "tcp6" };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpRow {
                local: f.get(1)?.to_string(),
                remote: f.get(2)?.to_string(),
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The inode of the socket that listens on `addr`.
fn listener_inode(addr: SocketAddr) -> Option<u64> {
    let local = proc_hex(addr);
    tcp_rows(addr)
        .into_iter()
        .find(|row| row.local == local && row.state == TCP_LISTEN)
        .map(|row| row.inode)
}

/// The inode of the server's side of `client`'s connection: the socket on
/// the server's address whose peer is the client's own address.
fn server_side_inode(server: &Server, client: &Client) -> Option<u64> {
    let peer = proc_hex(client.stream.local_addr().ok()?);
    let local = proc_hex(server.addr);
    tcp_rows(server.addr)
        .into_iter()
        .find(|row| row.local == local && row.remote == peer && row.state != TCP_LISTEN)
        .map(|row| row.inode)
}

/// A mask as the server asked for it: without what the kernel adds.
fn asked(events: u32) -> String {
    epoll_flags(events & !ADDED_BY_THE_KERNEL)
}

/// Whether `events` holds what `interest` asks for; if not, what the
/// server registered `what` for and what the step registers `whom` for.
fn check_flags(
    what: &str,
    events: u32,
    interest: Interest,
    design: &Design,
    whom: &str,
) -> Result<(), String> {
    let (missing, extra) = (interest.at_least & !events, interest.without & events);
    let registered = format!("{what} is registered for {}", asked(events));
    let (stage, wanted) = (design.stage, epoll_flags(interest.at_least));
    if missing != 0 {
        let mode = if missing & EPOLLET != 0 {
            " (edge-triggered)"
        } else {
            ""
        };
        return Err(format!(
            "{registered} but not {}: {stage} registers {whom} for {wanted}{mode}",
            epoll_flags(missing)
        ));
    }
    if extra != 0 {
        let mode = if extra & EPOLLET != 0 {
            " (level-triggered; edge-triggered is the next stage's lesson)"
        } else {
            ""
        };
        return Err(format!(
            "{registered}, with {}: {stage} registers {whom} for {wanted} without {}{mode}",
            epoll_flags(extra),
            epoll_flags(interest.without)
        ));
    }
    Ok(())
}

/// An epoll instance watches the listener and every connected client, with
/// the flags `design` gives for each.
pub fn epoll_watches_the_listener_and_clients(
    bin: &Path,
    probe: Probe,
    design: &Design,
) -> Result<(), String> {
    let server = start(bin);
    let clients = connect_served(&server, probe, 2)?;
    let Some(registrations) = registrations(&server) else {
        return Err(format!(
            "no epoll instance watches the listener: none of the server's {} descriptors is \
             an epoll instance (anon_inode:[eventpoll] in /proc/PID/fd): does the server use \
             epoll_wait, or poll/select?",
            server.open_fds()
        ));
    };
    let sockets = sockets(&server);
    let listener = listener_inode(server.addr)
        .filter(|inode| sockets.contains_key(inode))
        .ok_or_else(|| {
            format!(
                "the server holds no socket that listens on {}, the address of its \
                 `listening on` line",
                server.addr
            )
        })?;
    let listener_fd = sockets[&listener];
    let Some(entry) = registrations.iter().find(|r| r.inode == listener) else {
        return Err(format!(
            "no epoll instance watches the listener (fd {listener_fd}; the interest lists \
             hold {}): does the server use epoll_wait, or poll/select? is the listener \
             added with EPOLL_CTL_ADD?",
            listed(&registrations)
        ));
    };
    check_flags(
        &format!("the listener (fd {listener_fd})"),
        entry.events,
        design.listener,
        design,
        "the listener",
    )?;
    for client in &clients {
        let name = client.name();
        let inode = server_side_inode(&server, client)
            .filter(|inode| sockets.contains_key(inode))
            .ok_or_else(|| {
                format!("the server holds no socket connected to {name}, which it served")
            })?;
        let fd = sockets[&inode];
        // Registered by the time it is served, most likely; a server may
        // write a welcome first, so the registration gets its time.
        let mut events = None;
        holds_within_timeout(|| {
            events = registrations_of(&server, inode);
            events.is_some()
        });
        let Some(events) = events else {
            return Err(format!(
                "client fd {fd} ({name}) is in no epoll interest list (they hold {}): is \
                 each accepted client added with EPOLL_CTL_ADD?",
                listed(&self::registrations(&server).unwrap_or_default())
            ));
        };
        check_flags(
            &format!("client fd {fd}"),
            events,
            design.clients,
            design,
            "clients",
        )?;
    }
    Ok(())
}

/// The events the socket `inode` is registered for now, in any instance.
fn registrations_of(server: &Server, inode: u64) -> Option<u32> {
    registrations(server)?
        .into_iter()
        .find(|r| r.inode == inode)
        .map(|r| r.events)
}

/// The interest lists in words: `fd 3 EPOLLIN, fd 5 EPOLLIN (epoll fd 4)`.
fn listed(registrations: &[Registration]) -> String {
    if registrations.is_empty() {
        return "nothing".to_string();
    }
    let entries: Vec<String> = registrations
        .iter()
        .map(|r| format!("fd {} {} (epoll fd {})", r.fd, asked(r.events), r.epoll))
        .collect();
    entries.join(", ")
}

/// The share of a measuring window an idle server may be runnable: a
/// sleeping server hardly is, a spinning one all the time.
const IDLE_SHARE: f64 = 0.5;

/// With clients connected and idle, the server sleeps: no busy loop.
pub fn sleeps_while_idle(bin: &Path, probe: Probe) -> Result<(), String> {
    let server = start(bin);
    let _clients = connect_served(&server, probe, CLIENTS)?;
    let (busy, window) = server.runnable_over_half_a_second();
    if busy < window.mul_f64(IDLE_SHARE) {
        return Ok(());
    }
    Err(format!(
        "the server was runnable {} ms of {} ms with {CLIENTS} idle clients connected: a busy \
         loop? an epoll_wait with a timeout of 0, or a socket always ready in its interest \
         list (EPOLLOUT, level-triggered), wakes it again and again",
        busy.as_millis(),
        window.as_millis()
    ))
}

const MIB: usize = 1 << 20;
/// What a client that never reads is sent at most: far more than the
/// kernel's buffers hold, so a server that keeps all it is owed grows
/// well past [`MEMORY_BOUND`].
const FLOOD: usize = 48 * MIB;
/// How much the server may grow above its peak before the flood.
const MEMORY_BOUND: usize = 16 * MIB;
/// Nothing drained for this long: the server has stopped reading.
const STALL: Duration = Duration::from_millis(300);

/// A size in MiB, to a tenth: `16.8 MiB`.
fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The server's peak resident set so far, in bytes (`VmHWM`): a queue that
/// grows and is freed again still shows.
fn peak_rss(server: &Server) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// A client with a small receive window that never reads: the server owes
/// it more and more (the echo of what it sends, or the lines another
/// client sends the chat). The server's peak memory stays within
/// [`MEMORY_BOUND`] of where it was, and, from stage 4 on, it serves a
/// fresh client afterwards.
pub fn memory_bounded_under_a_client_that_never_reads(
    bin: &Path,
    probe: Probe,
    design: &Design,
) -> Result<(), String> {
    let server = start(bin);
    let hog = Client::connect_small_window(server.addr).named("the client that never reads");
    let (flooded, hint, grown) = match design.load {
        Load::Echo => {
            let before = peak_rss(&server);
            let sent = flood_bytes(&server, &hog, before);
            (
                format!("a client that never reads sent {} to echo", mib(sent)),
                "does it stop reading from a client while it owes that client too much echo?",
                peak_rss(&server).saturating_sub(before),
            )
        }
        Load::Chat => {
            let mut talker = server.connect_named("the talking client");
            run_probe(probe, &mut talker)?;
            let mut reader = server.connect_named("the reading client");
            run_probe(probe, &mut reader)?;
            let before = peak_rss(&server);
            let sent = flood_lines(&server, &mut talker, &mut reader, &hog, before)?;
            (
                format!(
                    "another client sent {} of chat lines to a client that never reads",
                    mib(sent)
                ),
                "does it drop a client whose queue passes --max-queue?",
                peak_rss(&server).saturating_sub(before),
            )
        }
    };
    if grown >= MEMORY_BOUND {
        return Err(format!(
            "the server grew by {} while {flooded}: {hint}",
            mib(grown)
        ));
    }
    if let Meanwhile::Served = design.meanwhile {
        let mut fresh = server.connect_named("a fresh client");
        run_probe(probe, &mut fresh).map_err(|failure| {
            format!(
                "{failure}, after {flooded}: does the server block in send(2) to the client \
                 that never reads (is every socket non-blocking)?"
            )
        })?;
    }
    Ok(())
}

/// What the flood sends: lines of 1,000 bytes, well under any line limit,
/// 64 to a write.
fn flood_batch() -> Vec<u8> {
    [vec![b'x'; 999], b"\n".to_vec()].concat().repeat(64)
}

/// The hog sends bytes to echo until [`FLOOD`] is sent, the server stops
/// reading from it, it ends the hog's connection, or it has grown by
/// [`MEMORY_BOUND`]; returns how much was sent.
fn flood_bytes(server: &Server, hog: &Client, before: usize) -> usize {
    let chunk = flood_batch();
    let mut stream = &hog.stream;
    stream.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let (mut sent, mut looked) = (0, 0);
    while sent < FLOOD && Instant::now() < deadline {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLOUT)];
                if poll(&mut fds, STALL.as_millis() as u16).unwrap_or(0) == 0 {
                    break; // the server stopped reading
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break, // the server closed the hog: nothing more to grow
        }
        // Every MiB: stop as soon as the answer is known.
        if sent - looked >= MIB {
            looked = sent;
            let grown = peak_rss(server).saturating_sub(before);
            if grown >= MEMORY_BOUND || server.has_ended_its_side(hog) {
                break;
            }
        }
    }
    stream.set_nonblocking(false).unwrap();
    sent
}

/// The talker sends lines until [`FLOOD`] is sent, the server ends the
/// hog's connection, or it has grown by [`MEMORY_BOUND`]; returns how much
/// was sent. The talker stays at most one write ahead of the reader, so
/// the server keeps ending its rounds (a server may read a fast talker to
/// `EAGAIN` before it writes), and only the hog falls behind.
fn flood_lines(
    server: &Server,
    talker: &mut Client,
    reader: &mut Client,
    hog: &Client,
    before: usize,
) -> Result<usize, String> {
    let batch = flood_batch();
    let lines = batch.iter().filter(|&&b| b == b'\n').count();
    let tail = "x".repeat(999);
    let deadline = Instant::now() + TIMEOUT;
    let (mut sent, mut writes, mut received) = (0, 0, 0);
    while sent < FLOOD && Instant::now() < deadline {
        talker.stream.write_all(&batch).map_err(|e| {
            format!(
                "the talking client could not send its lines ({e}) while a client that never \
                 reads was connected: does the server stop reading from others when one \
                 client's socket is full?"
            )
        })?;
        (sent, writes) = (sent + batch.len(), writes + 1);
        while received < (writes - 1) * lines {
            let line = reader.try_recv_line().map_err(|failure| {
                format!(
                    "{failure}, after the talking client sent {} of lines while a client \
                     that never reads was connected: does the server block in send(2) to it?",
                    mib(sent)
                )
            })?;
            if line.ends_with(&tail) {
                received += 1;
            }
        }
        // Every MiB: stop as soon as the answer is known.
        if writes % 16 == 0 {
            let grown = peak_rss(server).saturating_sub(before);
            if grown >= MEMORY_BOUND || server.has_ended_its_side(hog) {
                break;
            }
        }
    }
    Ok(sent)
}

/// One test per check of how the server is built, for the binary `$bin`,
/// probe `$probe` and [`Design`] `$design`.
#[macro_export]
macro_rules! built_checks {
    ($bin:expr, $probe:expr, $design:expr) => {
        mod built {
            use super::*;
            use $crate::built as b;
            fn passes(check: Result<(), String>) {
                if let Err(failure) = check {
                    panic!("{failure}");
                }
            }
            #[test]
            fn runs_one_thread() {
                passes(b::one_thread(&$bin, $probe))
            }
            #[test]
            fn epoll_watches_the_listener_and_clients() {
                passes(b::epoll_watches_the_listener_and_clients(
                    &$bin, $probe, &$design,
                ))
            }
            #[test]
            fn sleeps_while_its_clients_are_idle() {
                passes(b::sleeps_while_idle(&$bin, $probe))
            }
            #[test]
            fn memory_stays_bounded_under_a_client_that_never_reads() {
                passes(b::memory_bounded_under_a_client_that_never_reads(
                    &$bin, $probe, &$design,
                ))
            }
        }
    };
}
