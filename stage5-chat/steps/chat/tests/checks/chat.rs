//! The checks of stage 5b, the chat: the rows of the protocol table about
//! joining, talking and leaving, ordering under load, back-pressure and
//! faults. Every later step runs them too (this file is included by path),
//! against its own binary: the test file that includes it defines
//! `server_bin()`, and includes stage 5a's checks as `lines`, which follow a
//! line along [`route`].

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use testkit::conventions::welcome_probe;
use testkit::{Client, Server, TIMEOUT};

use super::lines::Route;
use super::server_bin;

/// Start a quiet server on a free port with extra `flags`.
pub fn start(flags: &[&str]) -> Server {
    let mut args = vec!["-q"];
    args.extend_from_slice(flags);
    args.push("127.0.0.1:0");
    Server::start(server_bin(), &args)
}

/// Connect `n` clients one after another; each reads its welcome, and
/// every client already in reads the newcomer's `joined` notice, so all
/// of them start with nothing unread.
pub fn join(server: &Server, n: usize) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..n {
        let mut newcomer = server.connect();
        let welcome = newcomer.recv_line();
        let name = welcome_name(&welcome);
        for client in &mut clients {
            assert_eq!(client.recv_line(), format!("* {name} joined"));
        }
        clients.push(newcomer);
    }
    clients
}

/// The next line is the welcome of `name` with `online` clients in the
/// chat (a server may say more after it, such as how to get help).
pub fn expect_welcome(client: &mut Client, name: &str, online: usize) {
    let line = client.recv_line();
    let welcome = format!("* welcome {name} ({online} online)");
    assert!(
        line.starts_with(&welcome),
        "expected {welcome:?}, got {line:?}"
    );
}

/// `client7` from `* welcome client7 (3 online)`.
pub fn welcome_name(welcome: &str) -> String {
    welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("expected a welcome, got {welcome:?}"))
        .to_string()
}

/// Where a line comes out in the chat: at every other client, as
/// `NAME: text`. Stage 5a's checks follow it from client1 to client2.
pub fn route(server: &Server) -> Route {
    let mut c = join(server, 2);
    let receiver = c.pop().unwrap();
    let sender = c.pop().unwrap();
    Route::Relay {
        sender,
        sender_name: "client1".into(),
        receiver,
        receiver_name: "client2".into(),
    }
}

// ---------------------------------------------------------------------
// The protocol table, one row at a time.

#[test]
fn connect_welcomes_by_name_and_count_and_tells_the_others() {
    let server = start(&[]);
    let mut first = server.connect();
    expect_welcome(&mut first, "client1", 1);
    let mut second = server.connect();
    expect_welcome(&mut second, "client2", 2);
    assert_eq!(first.recv_line(), "* client2 joined");
    let mut third = server.connect();
    expect_welcome(&mut third, "client3", 3);
    assert_eq!(first.recv_line(), "* client3 joined");
    assert_eq!(second.recv_line(), "* client3 joined");
}

#[test]
fn a_line_goes_to_every_client_but_its_sender() {
    let server = start(&[]);
    let mut c = join(&server, 3);
    c[0].send(b"hello everyone\n");
    assert_eq!(c[1].recv_line(), "client1: hello everyone");
    assert_eq!(c[2].recv_line(), "client1: hello everyone");
    // Had the sender been sent its own line, it would come before this one:
    // the server queued it before it read client2's answer.
    c[1].send(b"hi\n");
    assert_eq!(c[0].recv_line(), "client2: hi");
    assert_eq!(c[2].recv_line(), "client2: hi");
}

#[test]
fn a_disconnect_is_announced_as_left() {
    let server = start(&[]);
    let mut c = join(&server, 3);
    drop(c.remove(1));
    assert_eq!(c[0].recv_line(), "* client2 left");
    assert_eq!(c[1].recv_line(), "* client2 left");
    c[1].send(b"still here\n");
    assert_eq!(c[0].recv_line(), "client3: still here");
}

#[test]
fn end_of_file_from_a_client_means_it_left() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // Like `nc -N` at the end of its input: the socket stays open to read.
    c[1].shutdown_write();
    assert_eq!(c[0].recv_line(), "* client2 left");
    // The server finishes with it: end-of-file in return, then the close.
    assert_eq!(c[1].recv_to_eof(), b"");
}

#[test]
fn a_client_closed_for_a_line_too_long_is_announced_as_left() {
    let server = start(&["--max-line", "16"]);
    let mut c = join(&server, 2);
    c[0].send(format!("{}\n", "y".repeat(17)).as_bytes());
    assert_eq!(c[0].recv_line(), "* error: line too long (max 16 bytes)");
    assert_eq!(c[1].recv_line(), "* client1 left");
}

// ---------------------------------------------------------------------
// Load: nothing lost, duplicated or reordered.

#[test]
fn twenty_clients_sending_500_lines_each_lose_and_reorder_nothing() {
    const CLIENTS: usize = 20;
    const LINES: usize = 500;
    let server = start(&[]);
    let clients = join(&server, CLIENTS);
    let mut workers = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let me = format!("client{}", i + 1);
        // Writers and readers run at once: a client that only read after
        // writing everything could fill its socket and be dropped as slow.
        let mut writer = client.stream.try_clone().unwrap();
        workers.push(thread::spawn(move || {
            let mut batch = String::new();
            for n in 0..LINES {
                batch.push_str(&format!("line {n}\n"));
            }
            writer.write_all(batch.as_bytes()).unwrap();
            HashMap::new()
        }));
        workers.push(thread::spawn(move || {
            let mut reader = BufReader::new(client.stream.try_clone().unwrap());
            let mut next: HashMap<String, usize> = HashMap::new();
            let mut received = 0;
            while received < (CLIENTS - 1) * LINES {
                let mut line = String::new();
                let n = reader.read_line(&mut line).unwrap_or_else(|e| {
                    panic!("{me} after {received} lines: {e}");
                });
                assert!(n > 0, "{me}: the server closed the connection");
                let (sender, text) = line.trim_end().split_once(": ").unwrap();
                assert_ne!(sender, me, "{me} got its own line back");
                let seq: usize = text.strip_prefix("line ").unwrap().parse().unwrap();
                let expected = next.entry(sender.to_string()).or_insert(0);
                assert_eq!(seq, *expected, "{me}: {sender}'s lines out of order");
                *expected += 1;
                received += 1;
            }
            next
        }));
    }
    for worker in workers {
        let counts = worker.join().unwrap();
        for (sender, count) in counts {
            assert_eq!(count, LINES, "lines from {sender}");
        }
    }
}

// ---------------------------------------------------------------------
// Back-pressure.

#[test]
fn a_client_that_never_reads_is_dropped_and_stalls_no_one() {
    // Loopback sockets buffer megabytes in the kernel before a write hits
    // EAGAIN, so the sender goes on until the drop is seen (or 32 MiB).
    const MAX_LINES: usize = 32 * 1024;
    let server = start(&["--max-queue", "65536"]);
    let mut c = join(&server, 2);
    // A tiny receive window: the server's writes to it soon hit EAGAIN,
    // and what it owes piles up in its queue.
    let _hog = Client::connect_small_window(server.addr);
    assert_eq!(c[0].recv_line(), "* client3 joined");
    assert_eq!(c[1].recv_line(), "* client3 joined");
    let baseline = server.rss();

    // The sender stays at most two batches ahead of the reader, so only
    // the hog falls behind: a reader slower than a blasting sender would be
    // dropped too, rightly.
    const BATCH: usize = 64;
    let stop = Arc::new(AtomicBool::new(false));
    let (ack, acks) = mpsc::channel::<()>();
    let mut writer = c[0].stream.try_clone().unwrap();
    let sender = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let batch = format!("{}\n", "x".repeat(1000)).repeat(BATCH);
            for n in 0..MAX_LINES / BATCH {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                writer.write_all(batch.as_bytes()).unwrap();
                if n > 0 {
                    acks.recv_timeout(TIMEOUT).expect("the reader stalled");
                }
            }
            writer.write_all(b"done\n").unwrap();
        })
    };
    // The other reader keeps receiving, in order, while the hog reads nothing.
    let mut relayed: usize = 0;
    let mut dropped = false;
    let mut peak = baseline;
    loop {
        let line = c[1].recv_line();
        if line == "* client3 left (too slow)" {
            assert!(!dropped, "announced twice");
            dropped = true;
            stop.store(true, Ordering::Relaxed);
            continue;
        }
        if line == "client1: done" {
            break;
        }
        assert!(line.starts_with("client1: xxx"), "got {line:?}");
        relayed += 1;
        if relayed.is_multiple_of(BATCH) {
            let _ = ack.send(()); // the sender may have finished
        }
        if relayed.is_multiple_of(1024) {
            peak = peak.max(server.rss());
        }
    }
    sender.join().unwrap();
    assert!(dropped, "the non-reader was never dropped");
    // Megabytes went past a client whose queue may hold only 64 KiB.
    assert!(
        peak < baseline + 16 * 1024 * 1024,
        "RSS grew from {baseline} to {peak} bytes"
    );
}

/// A server (logging on, so its log names each client's fd) with room to
/// queue a lot; a talker; a witness, which reads everything the talker
/// says; and a client with a small receive window, which has read its
/// welcome and now reads nothing.
struct SlowReader {
    server: Server,
    talker: Client,
    witness: Client,
    slow: Client,
    /// The slow client's descriptor in the server.
    fd: i32,
    /// Line `n` of the talker's bursts, newline included.
    line: fn(usize) -> String,
}

impl SlowReader {
    fn start() -> SlowReader {
        SlowReader::start_with(Client::connect_small_window, numbered)
    }

    /// The same, with the slow client connected by `connect`, and the
    /// talker's lines made by `line`.
    fn start_with(connect: fn(SocketAddr) -> Client, line: fn(usize) -> String) -> SlowReader {
        let server = Server::start(server_bin(), &["--max-queue", "268435456", "127.0.0.1:0"]);
        let mut c = join(&server, 2);
        let mut slow = connect(server.addr);
        expect_welcome(&mut slow, "client3", 3);
        for client in &mut c {
            assert_eq!(client.recv_line(), "* client3 joined");
        }
        let fd = server.fd_of(&slow);
        let witness = c.pop().unwrap();
        let talker = c.pop().unwrap();
        SlowReader {
            server,
            talker,
            witness,
            slow,
            fd,
            line,
        }
    }

    /// Lines `range` in one write, read back by the witness: once it has
    /// the last one, the server has read them all and queued them for the
    /// slow client too, in the same rounds.
    fn burst(&mut self, range: std::ops::Range<usize>) {
        let lines: String = range.clone().map(self.line).collect();
        self.talker.send(lines.as_bytes());
        for n in range {
            let expected = format!("client1: {}", (self.line)(n));
            assert_eq!(
                self.witness.recv_line(),
                expected.trim_end(),
                "the witness, line {n}"
            );
        }
    }

    /// Bursts, from line `from` on, until the slow reader's socket is full,
    /// which the server shows by asking for `EPOLLOUT` on it; returns the
    /// number of the next line to send. The kernel buffers a few megabytes
    /// at most, so 640,000 lines owed with no `EPOLLOUT` means the server
    /// drops lines or forgets to ask.
    fn fill(&mut self, from: usize) -> usize {
        const BURST: usize = 2000;
        let epollout = libc::EPOLLOUT as u32;
        let mut sent = from;
        loop {
            // Only once a burst has gone through: an EPOLLOUT left from
            // before it proves nothing about this fill.
            let interest = self.server.epoll_interest();
            if sent > from
                && interest
                    .iter()
                    .any(|&(f, events)| f == self.fd && events & epollout != 0)
            {
                return sent;
            }
            assert!(
                sent - from < 640_000,
                "{sent} lines owed to a client that reads nothing, and no EPOLLOUT: {}",
                testkit::interest_list(&interest)
            );
            self.burst(sent..sent + BURST);
            sent += BURST;
        }
    }
}

/// Line `n` of the talker's bursts: 100 bytes, newline included.
fn numbered(n: usize) -> String {
    format!("line {n:06} {}\n", "x".repeat(88))
}

#[test]
fn lines_left_for_a_full_socket_arrive_in_order_without_more_traffic() {
    let mut room = SlowReader::start();
    let full = room.fill(0);
    // More lines while the socket is full: queued behind the others.
    room.burst(full..full + 2000);
    // Nothing else happens now: only EPOLLOUT can tell the server that the
    // socket has room again, and no line may overtake one queued before it.
    for n in 0..full + 2000 {
        let expected = format!("client1: {}", numbered(n));
        assert_eq!(room.slow.recv_line(), expected.trim_end(), "line {n}");
    }
}

/// A client whose path the server fills in a few kilobytes, cut in
/// segments of 76 bytes: a small receive buffer, and the smallest MSS
/// Linux takes (88 bytes, 76 once the timestamp option is counted), both
/// set before `connect` so that the handshake announces them. The
/// server's kernel then packs the 76-byte lines of [`segment_line`] whole
/// into its segments, so its socket most often fills at the end of a
/// line: the next write gets `EAGAIN`, not a short count.
fn connect_small_segments(addr: SocketAddr) -> Client {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::RcvBuf, &4096).expect("SO_RCVBUF");
    setsockopt(&fd, sockopt::TcpMaxSeg, &88).expect("TCP_MAXSEG");
    connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .unwrap_or_else(|e| panic!("the slow reader cannot connect to {addr}: {e}"));
    Client::from_stream(TcpStream::from(fd)).named("the slow reader")
}

/// Line `n` of the talker's bursts: 67 bytes, newline included, which the
/// server relays as 76 (`client1: ` in front).
fn segment_line(n: usize) -> String {
    format!("line {n:06} {}\n", "x".repeat(54))
}

#[test]
fn lines_a_write_found_no_room_for_are_kept_for_epollout_not_dropped() {
    const ROUNDS: usize = 3;
    let mut room = SlowReader::start_with(connect_small_segments, segment_line);
    let mut next = 0;
    for round in 1..=ROUNDS {
        // The socket fills, and lines go on coming while it is full: the
        // server must keep every one it could not write, whole, until
        // EPOLLOUT says there is room again.
        let full = room.fill(next);
        room.burst(full..full + 2000);
        for n in next..full + 2000 {
            let expected = format!("client1: {}", segment_line(n));
            let line = room.slow.recv_line();
            assert_eq!(
                line,
                expected.trim_end(),
                "round {round} of {ROUNDS}, line {n}: a line owed while the socket was full \
                 (EAGAIN) must wait in the queue for EPOLLOUT, whole, not be dropped or cut"
            );
        }
        next = full + 2000;
    }
}

#[test]
fn end_of_file_still_gets_every_line_it_is_owed_then_the_close() {
    let mut room = SlowReader::start();
    let full = room.fill(0);
    // More lines while the socket is full, so the server still owes some
    // of them when the end-of-file comes.
    room.burst(full..full + 2000);
    // End-of-file means "no more input", not "throw away what I am owed".
    room.slow.shutdown_write();
    assert_eq!(
        room.talker.recv_line(),
        "* client3 left",
        "the server saw the end-of-file"
    );
    for n in 0..full + 2000 {
        let expected = format!("client1: {}", numbered(n));
        assert_eq!(room.slow.recv_line(), expected.trim_end(), "line {n}");
    }
    assert_eq!(room.slow.recv_to_eof(), b"");
}

// ---------------------------------------------------------------------
// Faults.

#[test]
fn a_burst_of_300_connects_is_welcomed_whole() {
    let server = start(&[]);
    // Stopped, the server cannot accept: all 300 wait in its accept queue
    // and the listener becomes ready once for all of them.
    server.signal(libc::SIGSTOP);
    let mut clients: Vec<Client> = (0..300).map(|_| server.connect()).collect();
    server.signal(libc::SIGCONT);
    let mut names = HashSet::new();
    for client in &mut clients {
        names.insert(welcome_name(&client.recv_line()));
    }
    assert_eq!(names.len(), 300, "every client has its own name");
}

#[test]
fn a_client_that_resets_before_reading_its_welcome_disturbs_no_one() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    let rude = server.connect();
    assert_eq!(c[0].recv_line(), "* client3 joined");
    rude.reset();
    assert_eq!(c[0].recv_line(), "* client3 left");
    assert_eq!(c[1].recv_line(), "* client3 joined");
    assert_eq!(c[1].recv_line(), "* client3 left");
    c[0].send(b"all fine\n");
    assert_eq!(c[1].recv_line(), "client1: all fine");
    welcome_probe(&mut server.connect());
}

#[test]
fn a_client_that_resets_mid_broadcast_disturbs_no_one() {
    const LINES: usize = 2000;
    let server = start(&[]);
    let mut c = join(&server, 2);
    let rude = Client::connect_small_window(server.addr);
    assert_eq!(c[0].recv_line(), "* client3 joined");
    assert_eq!(c[1].recv_line(), "* client3 joined");
    let mut writer = c[0].stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        for n in 0..LINES {
            writer.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
    });
    let mut n = 0;
    let mut left = false;
    let mut rude = Some(rude);
    while n < LINES {
        let line = c[1].recv_line();
        if line == "* client3 left" {
            left = true;
            continue;
        }
        assert_eq!(line, format!("client1: line {n}"));
        n += 1;
        if n == LINES / 4 {
            // The server has lines queued for it and a write may be under way.
            rude.take().unwrap().reset();
        }
    }
    sender.join().unwrap();
    if !left {
        assert_eq!(c[1].recv_line(), "* client3 left");
    }
}

#[test]
fn ten_thousand_connect_close_cycles_leak_no_descriptor() {
    let server = start(&[]);
    // Once a client is welcomed the server is fully set up: count from here.
    let mut probe = server.connect();
    welcome_probe(&mut probe);
    let before = server.open_fds();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..10_000 {
        assert!(Instant::now() < deadline, "cycle {i} took too long");
        let stream = TcpStream::connect(server.addr).unwrap();
        if i % 2 == 0 {
            // Half of them read their welcome first; the rest close with it
            // unread, which makes their close a reset.
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert!(line.starts_with("* welcome"), "cycle {i}: {line:?}");
        }
    }
    testkit::wait_until("every connection is closed", || server.open_fds() == before);
    welcome_probe(&mut server.connect());
}
