//! The checks of stage 5a, the chat: every row of the protocol table about
//! talking, framing, ordering under load, back-pressure and faults. Every
//! later step runs them too (this file is included by path), against its
//! own binary: the test file that includes it defines `server_bin()`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use testkit::conventions::welcome_probe;
use testkit::{Client, Server, TIMEOUT};

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
fn nick_renames_and_tells_everyone() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/nick alice\n");
    assert_eq!(c[0].recv_line(), "* client1 is now alice");
    assert_eq!(c[1].recv_line(), "* client1 is now alice");
    c[0].send(b"it is me\n");
    assert_eq!(c[1].recv_line(), "alice: it is me");
    c[0].send(b"/who\n");
    assert_eq!(c[0].recv_line(), "* online: alice, client2");
}

#[test]
fn nick_refuses_invalid_names_to_the_sender_only() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    let too_long = format!("/nick {}\n", "x".repeat(33));
    for bad in [
        "/nick\n",
        "/nick two words\n",
        "/nick caf\u{e9}\n",
        "/nick semi;colon\n",
        too_long.as_str(),
    ] {
        c[0].send(bad.as_bytes());
        let reply = c[0].recv_line();
        assert!(reply.starts_with("* error: "), "{bad:?} got {reply:?}");
    }
    // 32 characters of the allowed set is fine.
    let longest = "aZ09_-".repeat(6)[..32].to_string();
    c[0].send(format!("/nick {longest}\n").as_bytes());
    assert_eq!(c[0].recv_line(), format!("* client1 is now {longest}"));
    // The other client saw none of the errors: the rename is its next line.
    assert_eq!(c[1].recv_line(), format!("* client1 is now {longest}"));
}

#[test]
fn nick_refuses_a_name_that_is_taken() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/nick bob\n");
    assert_eq!(c[0].recv_line(), "* client1 is now bob");
    assert_eq!(c[1].recv_line(), "* client1 is now bob");
    c[1].send(b"/nick bob\n");
    // The protocol fixes `* error: ` and leaves the words after it free.
    let reply = c[1].recv_line();
    assert!(
        reply.starts_with("* error: "),
        "client2 asked for bob, which client1 holds, and got {reply:?} instead of a `* error: ...` line"
    );
    c[1].send(b"/who\n");
    assert_eq!(c[1].recv_line(), "* online: bob, client2");
    // A taken `client<N>` is skipped when numbering newcomers.
    c[0].send(b"/nick client3\n");
    assert_eq!(c[1].recv_line(), "* bob is now client3");
    let mut third = server.connect();
    expect_welcome(&mut third, "client4", 3);
}

#[test]
fn who_lists_everyone_online_in_the_order_they_joined() {
    let server = start(&[]);
    let mut c = join(&server, 3);
    c[1].send(b"/who\n");
    assert_eq!(c[1].recv_line(), "* online: client1, client2, client3");
    drop(c.remove(0));
    assert_eq!(c[0].recv_line(), "* client1 left");
    c[0].send(b"/who\n");
    assert_eq!(c[0].recv_line(), "* online: client2, client3");
}

#[test]
fn quit_says_bye_closes_and_tells_the_others() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/quit\nthis line is never relayed\n");
    assert_eq!(c[0].recv_line(), "* bye");
    assert_eq!(c[0].recv_to_eof(), b"", "the server closes after the bye");
    assert_eq!(c[1].recv_line(), "* client1 left");
    let mut third = server.connect();
    expect_welcome(&mut third, "client3", 2);
}

#[test]
fn help_lists_every_command_one_line_each_to_the_sender_only() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // `/who` after `/help`: its answer marks the end of the list.
    c[0].send(b"/help\n/who\n");
    let mut listed = Vec::new();
    loop {
        let line = c[0].recv_line();
        if line.starts_with("* online: ") {
            break;
        }
        assert!(line.starts_with("* "), "a notice, got {line:?}");
        listed.push(line);
    }
    for command in ["/nick", "/who", "/help", "/quit"] {
        let lines = listed.iter().filter(|l| l.contains(command)).count();
        assert_eq!(lines, 1, "{command} on one line of {listed:?}");
    }
    c[0].send(b"after\n");
    assert_eq!(
        c[1].recv_line(),
        "client1: after",
        "the list went to the sender only"
    );
}

#[test]
fn an_unknown_command_is_an_error_to_the_sender() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // The protocol fixes the start; a server may add how to get help.
    c[0].send(b"/dance wildly\n");
    let reply = c[0].recv_line();
    assert!(
        reply.starts_with("* error: unknown command /dance"),
        "got {reply:?}"
    );
    c[0].send(b"/\n");
    let reply = c[0].recv_line();
    assert!(
        reply.starts_with("* error: unknown command /"),
        "got {reply:?}"
    );
    c[0].send(b"after\n");
    assert_eq!(c[1].recv_line(), "client1: after", "no command was relayed");
}

#[test]
fn a_line_over_the_limit_is_an_error_then_a_close() {
    let server = start(&["--max-line", "16"]);
    let mut c = join(&server, 2);
    c[0].send(format!("{}\n", "x".repeat(16)).as_bytes());
    assert_eq!(c[1].recv_line(), format!("client1: {}", "x".repeat(16)));
    c[0].send(format!("{}\n", "y".repeat(17)).as_bytes());
    assert_eq!(c[0].recv_line(), "* error: line too long (max 16 bytes)");
    assert_eq!(c[0].recv_to_eof(), b"");
    assert_eq!(c[1].recv_line(), "* client1 left");
}

#[test]
fn the_default_line_limit_is_4096_bytes() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(format!("{}\r\n", "a".repeat(4096)).as_bytes());
    assert_eq!(c[1].recv_line(), format!("client1: {}", "a".repeat(4096)));
    c[0].send(format!("{}\n", "b".repeat(4097)).as_bytes());
    assert_eq!(c[0].recv_line(), "* error: line too long (max 4096 bytes)");
}

// ---------------------------------------------------------------------
// Framing: whatever the reads look like, the lines are the same.

#[test]
fn a_line_sent_one_byte_at_a_time_arrives_whole() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].stream.set_nodelay(true).unwrap();
    for byte in b"one byte at a time\n" {
        c[0].send(&[*byte]);
    }
    assert_eq!(c[1].recv_line(), "client1: one byte at a time");
}

#[test]
fn a_line_split_across_writes_arrives_whole() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].stream.set_nodelay(true).unwrap();
    c[0].send(b"hel");
    c[0].send(b"lo wo");
    // The other client can take part while the line is half sent.
    c[1].send(b"meanwhile\n");
    assert_eq!(c[0].recv_line(), "client2: meanwhile");
    c[0].send(b"rld\n");
    assert_eq!(c[1].recv_line(), "client1: hello world");
}

#[test]
fn several_lines_in_one_write_arrive_as_several_lines() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"one\ntwo\nthree\n");
    assert_eq!(c[1].recv_line(), "client1: one");
    assert_eq!(c[1].recv_line(), "client1: two");
    assert_eq!(c[1].recv_line(), "client1: three");
}

#[test]
fn crlf_endings_are_accepted_and_empty_lines_ignored() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"from windows\r\n\n\r\n\r\nafter the empty lines\n");
    assert_eq!(c[1].recv_line(), "client1: from windows");
    assert_eq!(c[1].recv_line(), "client1: after the empty lines");
}

#[test]
fn control_bytes_become_question_marks_and_other_bytes_pass() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // Invalid UTF-8, valid UTF-8, a terminal escape, BEL, TAB, DEL.
    c[0].send(b"\xff\xfe caf\xc3\xa9 \x1b[2J\x07bell\ttab\x7f\x00end\n");
    let expected: &[u8] = b"client1: \xff\xfe caf\xc3\xa9 ?[2J?bell\ttab??end\n";
    assert_eq!(c[1].recv_exact(expected.len()), expected);
}

#[test]
fn c1_controls_become_question_marks_in_utf8_and_as_lone_bytes() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // U+009B (CSI) in UTF-8, then a lone byte 0x9B: on a terminal that
    // honours 8-bit controls each is `ESC [`. Around them, UTF-8 that must
    // pass: `é`, a no-break space (C2 A0, just past the C1 range), an emoji.
    c[0].send(b"caf\xc3\xa9 \xc2\x9b31mred \x9b2J \xc2\xa0\xf0\x9f\x98\x80 end\n");
    let line = recv_raw_line(&mut c[1]);
    let expected: &[u8] = b"client1: caf\xc3\xa9 ?31mred ?2J \xc2\xa0\xf0\x9f\x98\x80 end";
    // The failure says which way the line is wrong: a C1 control that
    // came through, or else UTF-8 around them that did not pass unchanged.
    let why = match first_c1_control(&line) {
        Some(c1) => format!("relayed a C1 control, {c1}"),
        None => "each C1 control must become `?` and the UTF-8 around it pass unchanged".into(),
    };
    assert_eq!(line, expected, "{why}: {line:x?}");
}

/// One line as bytes, without its `\n`, whether or not it is UTF-8.
fn recv_raw_line(client: &mut Client) -> Vec<u8> {
    let mut line = Vec::new();
    loop {
        match client.recv_exact(1)[0] {
            b'\n' => return line,
            b => line.push(b),
        }
        assert!(line.len() <= 4096, "no newline in {line:x?}");
    }
}

/// Where `bytes` hold a C1 control: U+0080-U+009F in valid UTF-8, or a
/// byte 0x80-0x9F outside a valid sequence, which some terminals obey too.
fn first_c1_control(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            if ('\u{80}'..='\u{9f}').contains(&c) {
                return Some(format!("U+{:04X} at byte {}", c as u32, at + i));
            }
        }
        at += chunk.valid().len();
        for (i, &b) in chunk.invalid().iter().enumerate() {
            if (0x80..=0x9f).contains(&b) {
                return Some(format!("lone byte {b:#04x} at byte {}", at + i));
            }
        }
        at += chunk.invalid().len();
    }
    None
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
/// queue a lot, a talker, and a client with a small receive window that has
/// read its welcome and now reads nothing.
fn with_a_slow_reader() -> (Server, Client, Client, i32) {
    let server = Server::start(server_bin(), &["--max-queue", "268435456", "127.0.0.1:0"]);
    let mut talker = server.connect();
    welcome_probe(&mut talker);
    let mut slow = Client::connect_small_window(server.addr);
    let name = welcome_name(&slow.recv_line());
    assert_eq!(talker.recv_line(), format!("* {name} joined"));
    let fd = server.fd_of(&slow);
    (server, talker, slow, fd)
}

/// Line `n` of the talker's bursts: 100 bytes, newline included.
fn numbered(n: usize) -> String {
    format!("line {n:06} {}\n", "x".repeat(88))
}

/// Lines `range` in one write, then the answer to `/who`: by then the
/// server has read the lines and tried to write them.
fn burst(talker: &mut Client, range: std::ops::Range<usize>) {
    let lines: String = range.map(numbered).collect();
    talker.send(lines.as_bytes());
    talker.send(b"/who\n");
    let reply = talker.recv_line();
    assert!(reply.starts_with("* online: "), "got {reply:?}");
}

/// Bursts until the slow reader's socket is full, which the server shows
/// by asking for `EPOLLOUT` on it; returns how many lines were sent. The
/// kernel buffers a few megabytes at most, so 64 MiB owed with no
/// `EPOLLOUT` means the server drops lines or forgets to ask.
fn fill(server: &Server, talker: &mut Client, fd: i32) -> usize {
    const BURST: usize = 2000;
    let epollout = libc::EPOLLOUT as u32;
    let asked = || {
        let interest = server.epoll_interest();
        interest
            .iter()
            .any(|&(f, events)| f == fd && events & epollout != 0)
    };
    let mut sent = 0;
    while !asked() {
        assert!(
            sent < 640_000,
            "{sent} lines owed to a client that reads nothing, and no EPOLLOUT: {}",
            testkit::interest_list(&server.epoll_interest())
        );
        burst(talker, sent..sent + BURST);
        sent += BURST;
    }
    sent
}

#[test]
fn lines_left_for_a_full_socket_arrive_in_order_without_more_traffic() {
    let (server, mut talker, mut slow, fd) = with_a_slow_reader();
    let full = fill(&server, &mut talker, fd);
    // More lines while the socket is full: queued behind the others.
    burst(&mut talker, full..full + 2000);
    // Nothing else happens now: only EPOLLOUT can tell the server that the
    // socket has room again, and no line may overtake one queued before it.
    for n in 0..full + 2000 {
        let expected = format!("client1: {}", numbered(n));
        assert_eq!(slow.recv_line(), expected.trim_end(), "line {n}");
    }
}

#[test]
fn end_of_file_still_gets_every_line_it_is_owed_then_the_close() {
    let (server, mut talker, mut slow, fd) = with_a_slow_reader();
    let full = fill(&server, &mut talker, fd);
    // More lines while the socket is full, so the server still owes some
    // of them when the end-of-file comes.
    burst(&mut talker, full..full + 2000);
    // End-of-file means "no more input", not "throw away what I am owed".
    slow.shutdown_write();
    assert_eq!(
        talker.recv_line(),
        "* client2 left",
        "the server saw the end-of-file"
    );
    for n in 0..full + 2000 {
        let expected = format!("client1: {}", numbered(n));
        assert_eq!(slow.recv_line(), expected.trim_end(), "line {n}");
    }
    assert_eq!(slow.recv_to_eof(), b"");
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
