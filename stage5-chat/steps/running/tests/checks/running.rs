//! The checks of stage 5b, a server you can leave running: the lingering
//! close, limits, signals and running out of descriptors. Every later step
//! runs them too (this file is included by path), against its own binary.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{Client, Server};

use testkit::conventions::welcome_probe;

use super::chat::{expect_welcome, join, start};
use super::server_bin;

// ---------------------------------------------------------------------
// The lingering close: the last line is not lost.

#[test]
fn the_error_line_survives_a_flood_the_server_never_reads_as_lines() {
    let server = start(&["--max-line", "100"]);
    let mut c = join(&server, 1);
    // 256 KiB with no newline: the server must stop at the limit, send the
    // error, and close without a reset that would destroy the error line.
    c[0].send(&vec![b'z'; 256 * 1024]);
    assert_eq!(c[0].recv_line(), "* error: line too long (max 100 bytes)");
    assert_eq!(c[0].recv_to_eof(), b"");
}

#[test]
fn the_error_line_reaches_a_client_that_has_not_read_yet() {
    /// 9 KiB: more than the small window, less than a socket's send buffer.
    const LINES: usize = 100;
    let server = start(&["--max-line", "100"]);
    let mut talker = join(&server, 1).remove(0);
    // A small window, and lines it does not read yet: more than its
    // window, so some wait in the server's socket buffer (and none in the
    // server's queue, which it must empty before it can end its side).
    let mut slow = Client::connect_small_window(server.addr);
    expect_welcome(&mut slow, "client2", 2);
    assert_eq!(talker.recv_line(), "* client2 joined");
    let chat = format!("{}\n", "c".repeat(90)).repeat(LINES);
    talker.send(chat.as_bytes());
    talker.send(b"/who\n");
    assert_eq!(talker.recv_line(), "* online: client1, client2");
    // Now a line far over the limit, still arriving when the server gives
    // up on it. Closing with that input unread would make the kernel reset
    // the connection and throw away everything not yet delivered: the chat
    // lines and the error with them.
    let mut writer = slow.stream.try_clone().unwrap();
    let flood = thread::spawn(move || {
        let _ = writer.write_all(&vec![b'z'; 1 << 20]);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    // Read nothing until the server has ended its side (sent its FIN, or
    // reset): whatever it did to the bytes in flight is done by then.
    testkit::wait_until("the server ends its side of the connection", || {
        server.has_ended_its_side(&slow)
    });
    for _ in 0..LINES {
        assert_eq!(slow.recv_line(), format!("client1: {}", "c".repeat(90)));
    }
    let error = slow.recv_line();
    assert!(error.starts_with("* error: "), "got {error:?}");
    assert_eq!(slow.recv_to_eof(), b"");
    flood.join().unwrap();
    assert_eq!(talker.recv_line(), "* client2 left");
}

// ---------------------------------------------------------------------
// Fairness.

#[test]
fn input_left_after_a_rounds_share_is_read_in_the_next_round() {
    let server = start(&["--max-queue", "268435456"]);
    let mut c = join(&server, 2);
    let line = |n: usize| format!("{n:07} {}\n", "y".repeat(91));
    let receive = |reader: &mut Client, lines: std::ops::Range<usize>| {
        for n in lines {
            let expected = format!("client1: {}", line(n));
            assert_eq!(reader.recv_line(), expected.trim_end(), "line {n}");
        }
    };
    // A stream the server reads as fast as it comes: the kernel grows the
    // window it offers the sender.
    const WARM_UP: usize = 80_000;
    let mut writer = c[0].stream.try_clone().unwrap();
    let warm_up = thread::spawn(move || {
        let lines: String = (0..WARM_UP).map(line).collect();
        writer.write_all(lines.as_bytes()).unwrap();
    });
    receive(&mut c[1], 0..WARM_UP);
    warm_up.join().unwrap();
    // Stopped, the server reads nothing: a window's worth of lines waits
    // in its socket, and nothing in the sender's, so when it resumes one
    // edge announces them all and no later one will. A server that reads
    // a share per round must remember to come back for the rest.
    server.pause();
    let more = c[0].send_window().saturating_sub(16 * 1024) / 100;
    let lines: String = (WARM_UP..WARM_UP + more).map(line).collect();
    c[0].send(lines.as_bytes());
    testkit::wait_until("every byte is in the server's socket", || {
        c[0].all_delivered()
    });
    server.signal(libc::SIGCONT);
    receive(&mut c[1], WARM_UP..WARM_UP + more);
}

// ---------------------------------------------------------------------
// Limits.

#[test]
fn a_full_server_says_so_and_closes() {
    let server = start(&["--max-clients", "2"]);
    let mut c = join(&server, 2);
    let mut third = server.connect();
    assert_eq!(third.recv_line(), "* error: server full");
    assert_eq!(third.recv_to_eof(), b"");
    // The two inside heard nothing of it: this is their next line.
    c[0].send(b"ok\n");
    assert_eq!(c[1].recv_line(), "client1: ok");
    // Room again once someone leaves.
    drop(c.remove(1));
    assert_eq!(c[0].recv_line(), "* client2 left");
    let mut fourth = server.connect();
    expect_welcome(&mut fourth, "client3", 2);
}

#[test]
fn join_and_leave_notices_stop_above_the_announce_limit() {
    let server = start(&["--announce-limit", "2"]);
    let mut c = join(&server, 2); // 2 online: announced
    let mut third = server.connect();
    expect_welcome(&mut third, "client3", 3);
    // No `client3 joined`: the first line the others get is this one.
    c[1].send(b"ping\n");
    assert_eq!(c[0].recv_line(), "client2: ping");
    assert_eq!(third.recv_line(), "client2: ping");
    // 3 online: this leave is not announced either. `/who` answers only
    // after the server has handled the leave; anything it announced would
    // then be queued for client1 before the next line.
    drop(third);
    let deadline = Instant::now() + testkit::TIMEOUT;
    loop {
        c[1].send(b"/who\n");
        let who = c[1].recv_line();
        if who == "* online: client1, client2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client2's /who still answers {who:?} 10 s after client3 closed its connection: \
             does the server read end-of-file and remove the client?"
        );
    }
    c[1].send(b"ping again\n");
    assert_eq!(c[0].recv_line(), "client2: ping again");
    // ...but with 2 online it is.
    drop(c.remove(1));
    assert_eq!(c[0].recv_line(), "* client2 left");
}

// ---------------------------------------------------------------------
// Signals.

#[test]
fn sigterm_and_sigint_tell_everyone_and_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = start(&[]);
        let mut c = join(&server, 3);
        c[0].send(b"/quit\n"); // one client already leaving
        assert_eq!(c[0].recv_line(), "* bye");
        for client in &mut c[1..] {
            assert_eq!(client.recv_line(), "* client1 left");
        }
        server.signal(signal);
        for client in &mut c[1..] {
            assert_eq!(client.recv_line(), "* server shutting down");
            assert_eq!(client.recv_to_eof(), b"");
        }
        drop(c);
        let status = server.wait_exit();
        assert_eq!(status.code(), Some(0), "after signal {signal}");
    }
}

#[test]
fn shutdown_is_bounded_when_a_client_never_reads_or_closes() {
    let mut server = start(&[]);
    let mut c = join(&server, 1);
    let _stuck = Client::connect_small_window(server.addr);
    assert!(c[0].recv_line().ends_with(" joined"));
    server.signal(libc::SIGTERM);
    assert_eq!(c[0].recv_line(), "* server shutting down");
    assert_eq!(server.wait_exit().code(), Some(0));
}

// ---------------------------------------------------------------------
// Running out of descriptors.

#[test]
fn running_out_of_descriptors_neither_kills_nor_spins_the_server() {
    const LIMIT: u64 = 64;
    let mut cmd = Command::new(server_bin());
    cmd.args(["-q", "127.0.0.1:0"]);
    // SAFETY: setrlimit is async-signal-safe, and the closure touches no
    // memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::spawn(cmd);
    let mut inside: Vec<Client> = (0..50)
        .map(|_| {
            let mut client = server.connect();
            welcome_probe(&mut client);
            client
        })
        .collect();
    // More than the descriptors left: the rest wait in the accept queue.
    let mut waiting: Vec<Client> = (0..30).map(|_| server.connect()).collect();
    // Every descriptor number below the limit in use (the server may also
    // hold higher ones it inherited, such as cargo's jobserver pipe).
    let below_limit = || {
        server
            .fds()
            .iter()
            .filter(|&&fd| (fd as u64) < LIMIT)
            .count() as u64
    };
    testkit::wait_until("the server runs out of descriptors", || {
        below_limit() == LIMIT
    });

    // A bounded wait that also shows the server sends no one anything new
    // while it cannot accept (the last client joined long before).
    let mut quiet_one = server.connect();
    quiet_one.expect_silence(Duration::from_millis(300));
    // It retries accept every 100 ms; on a busy machine each wake-up may
    // wait tens of milliseconds for a CPU, so the bound is near the
    // spinner's 100%, not at half.
    server.assert_sleeps("while it is out of descriptors", 0.9);

    // Free descriptors: everyone waiting is welcomed.
    inside.drain(..40);
    for client in &mut waiting {
        let line = client.recv_line_until(|l| l.starts_with("* welcome"));
        assert!(line.starts_with("* welcome client"));
    }
    inside[0].send(b"still chatting\n");
    assert_eq!(
        waiting[0].recv_line_until(|l| !l.starts_with("* ")),
        "client41: still chatting"
    );
}
