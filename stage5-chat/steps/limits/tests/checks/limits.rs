//! The checks of stage 5g, a server at its limits: fairness, the limits on
//! clients and on notices, the descriptor limit, and running out of
//! descriptors. Every later step runs them too (this file is included by
//! path), against its own binary.

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
// The descriptor limit.

/// The server, started with a soft `RLIMIT_NOFILE` of `soft` and a hard
/// one of `hard` (or the hard limit it would have inherited).
fn start_with_fd_limit(soft: u64, hard: Option<u64>) -> Server {
    let mut cmd = Command::new(server_bin());
    cmd.args(["-q", "127.0.0.1:0"]);
    // SAFETY: getrlimit and setrlimit are async-signal-safe, and the
    // closure touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit.rlim_max = hard.unwrap_or(limit.rlim_max);
            limit.rlim_cur = soft.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(cmd)
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let server = start_with_fd_limit(64, None);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
        .expect("read /proc/PID/limits");
    // `Max open files            64                   1048576              files`
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a `Max open files` line in /proc/PID/limits");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (soft, hard) = (fields[3], fields[4]);
    assert!(
        soft == hard,
        "the server, started with a soft limit of 64 descriptors, still has {soft} \
         once it listens (the hard limit is {hard}): does it raise RLIMIT_NOFILE with \
         setrlimit before it accepts? Every client is a descriptor."
    );
}

// ---------------------------------------------------------------------
// Running out of descriptors.

#[test]
fn running_out_of_descriptors_neither_kills_nor_spins_the_server() {
    const LIMIT: u64 = 64;
    let server = start_with_fd_limit(LIMIT, Some(LIMIT));
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
