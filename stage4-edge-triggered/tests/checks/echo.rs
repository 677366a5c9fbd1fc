// Stage 4's checks: an edge-triggered, non-blocking echo server that loses
// nothing. Stage 4 runs them (tests/stage4.rs), and so does 4b
// (steps/server/tests/server.rs), which serves the same way. The file that
// includes this one defines `server_bin()`, the binary under test, and
// `STAGE`, the step the failure messages name. It is included with
// `include!`, not as a module, so each check keeps its own name
// (`returns_a_one_mib_burst_whole`, `faults::log_reader_gone`) in both.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::thread;

use nix::poll::{PollFd, PollFlags, poll};

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};
use testkit::conventions::{echo_probe, try_echo_probe};
use testkit::{Client, Server, count, epoll_flags, interest_list};

testkit::server_conventions!(server_bin(), echo_probe);
testkit::fault_checks!(server_bin(), echo_probe);

/// How stage 4 is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and no client kept waiting
/// while another does not read.
const DESIGN: Design = Design {
    stage: STAGE,
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Echo,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), echo_probe, DESIGN);

const MIB: usize = 1 << 20;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;

/// `len` bytes of a stream whose bytes differ from their neighbours, from
/// offset `start` on, so a lost or repeated chunk shows up as a mismatch.
fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}

/// Where `a` and `b` first differ.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Send `data` from a thread while the caller reads the echo (and, with
/// `then_shut_down`, shut down the sending side after it, like `nc -N`).
fn send_in_background(
    client: &Client,
    data: &[u8],
    then_shut_down: bool,
) -> thread::JoinHandle<io::Result<()>> {
    let mut writer = client.stream.try_clone().unwrap();
    let data = data.to_vec();
    thread::spawn(move || {
        writer.write_all(&data)?;
        if then_shut_down {
            writer.shutdown(std::net::Shutdown::Write)?;
        }
        Ok(())
    })
}

/// The bytes read until the server closed, failing if the connection did
/// not end in a close (a reset, or no close within the timeout).
fn closed_once_all_is_sent(echo: Result<Vec<u8>, testkit::ReadFailure>) -> Vec<u8> {
    echo.unwrap_or_else(|e| {
        panic!(
            "{e}: does the server close a connection once it has read end-of-file \
             and written out all it owes?"
        )
    })
}

/// The most the kernel lets a TCP socket keep for sending once it has
/// grown its buffer: the last of the three figures in `tcp_wmem`.
fn send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().last()?.parse().ok())
        .unwrap_or(4 * MIB)
}

/// Send the pattern without reading until the server stops reading (nothing
/// drains for half a second: every buffer between the two is full) or
/// `limit` bytes are sent; returns how many were sent.
fn push_until_jammed(client: &Client, limit: usize) -> usize {
    const CHUNK: usize = 64 * 1024;
    // One period more than a chunk, so any offset's chunk is a slice of it.
    let stream = pattern(0, CHUNK + 251);
    let mut socket = &client.stream;
    socket.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < limit {
        let at = sent % 251;
        match socket.write(&stream[at..at + CHUNK.min(limit - sent)]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(client.stream.as_fd(), PollFlags::POLLOUT)];
                if poll(&mut fds, 500u16).unwrap() == 0 {
                    break; // jammed
                }
            }
            Err(e) => panic!("sending without reading: {e}"),
        }
    }
    socket.set_nonblocking(false).unwrap();
    sent
}

#[test]
fn returns_a_one_mib_burst_whole() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let mut client = server.connect();
    let data = pattern(0, MIB);
    // Nothing is read until everything is sent: the server's writes hit
    // EAGAIN and it must keep the rest until EPOLLOUT.
    client.send(&data);
    let echo = client.try_recv_echo(&data);
    assert!(
        echo.is_ok(),
        "{}: was the output that hit EAGAIN kept, and written on EPOLLOUT?",
        echo.unwrap_err()
    );
}

#[test]
fn registers_each_client_edge_triggered() {
    let server = Server::start(server_bin(), &["127.0.0.1:0"]);
    let mut client = server.connect();
    echo_probe(&mut client);
    let fd = server.fd_of(&client);
    let events = server
        .epoll_interest()
        .into_iter()
        .find_map(|(watched, events)| (watched == fd).then_some(events))
        .unwrap_or_else(|| {
            panic!(
                "client fd {fd} is not in the interest list ({}): \
                 is each accepted client added with EPOLL_CTL_ADD?",
                interest_list(&server.epoll_interest())
            )
        });
    assert!(
        events & (EPOLLIN | EPOLLET) == EPOLLIN | EPOLLET,
        "client fd {fd} is registered for {}, not EPOLLIN|EPOLLET: \
         is it added to the interest list edge-triggered?",
        epoll_flags(events)
    );
}

#[test]
fn flushes_everything_before_closing_after_end_of_file() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    // A small window keeps most of the echo in the server when the client's
    // end-of-file arrives, so closing at once would lose it.
    let mut client = Client::connect_small_window(server.addr);
    let data = pattern(0, 8 * MIB);
    let sender = send_in_background(&client, &data, true);
    let echo = closed_once_all_is_sent(client.try_recv_to_eof());
    sender.join().unwrap().unwrap();
    assert!(
        echo.len() == data.len(),
        "the client got {} of {} bytes back before the server closed the connection: \
         was output that hit EAGAIN dropped, or the connection closed at end-of-file \
         while echo was still owed?",
        count(echo.len()),
        count(data.len())
    );
    assert!(
        echo == data,
        "the echo differs from what was sent from byte {} on: is the output kept in order?",
        count(first_difference(&echo, &data))
    );
}

#[test]
fn keeps_the_echo_it_owes_when_end_of_file_arrives_first() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    // The client reads only while the server offers no window (it has
    // stopped reading: it holds all it may), a little at a time, until its
    // end-of-file is in the server's kernel. The event that reports the
    // end-of-file then finds the server owing echo it holds itself, and a
    // close loses it, whatever the timing. The data is larger than what
    // the server's kernel keeps for sending (the last figure of
    // `tcp_wmem`), or the kernel would hold all the echo owed.
    let mut client = Client::connect_small_window(server.addr);
    let data = pattern(0, send_buffer_max() + 2 * MIB);
    let sender = send_in_background(&client, &data, true);
    let mut early = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    // A server that never takes it all before the client reads more is
    // right too: the wait ends at its timeout and the client reads on.
    let _ = testkit::holds_within_timeout(|| {
        if sender.is_finished() && client.all_delivered() {
            return true;
        }
        if client.send_window() > 0 {
            return false;
        }
        match client.stream.read(&mut chunk) {
            Ok(n) if n > 0 => early.extend_from_slice(&chunk[..n]),
            _ => return true, // closed early: the checks below say how
        }
        false
    });
    let echo = closed_once_all_is_sent(client.try_recv_to_eof());
    let echo = [early, echo].concat();
    sender.join().unwrap().unwrap();
    assert!(
        echo == data,
        "the client got {} of {} bytes back, different from byte {} on: did the server \
         close when end-of-file arrived (an event with EPOLLRDHUP), with echo still owed?",
        count(echo.len()),
        count(data.len()),
        count(first_difference(&echo, &data))
    );
}

#[test]
fn accepts_a_whole_burst_reported_by_one_edge() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    // Stop the server so all 300 connections wait in its accept queue: when it
    // resumes, the listener becomes ready once, and a server that accepts one
    // connection per event never hears about the other 299.
    server.signal(libc::SIGSTOP);
    let mut clients: Vec<Client> = (0..300)
        .map(|i| server.connect_named(format!("client {} of 300", i + 1)))
        .collect();
    server.signal(libc::SIGCONT);
    for client in &mut clients {
        let echo = try_echo_probe(client);
        assert!(
            echo.is_ok(),
            "{}: were the queued connections accepted? (one edge for the listener: \
             accept until EAGAIN)",
            echo.unwrap_err()
        );
    }
}

#[test]
fn keeps_what_the_socket_cannot_take_until_epollout() {
    let server = Server::start(server_bin(), &["127.0.0.1:0"]);
    let mut client = Client::connect_small_window(server.addr);
    let fd = server.fd_of(&client);
    // 8 MiB is more than the kernel's buffers hold, so the server's send(2)
    // must hit EAGAIN: it then keeps the rest and asks for EPOLLOUT.
    let data = pattern(0, 8 * MIB);
    let sender = send_in_background(&client, &data, false);
    let mut registered = None;
    let asked = testkit::holds_within_timeout(|| {
        let interest = server.epoll_interest();
        registered = interest
            .iter()
            .find_map(|&(watched, events)| (watched == fd).then_some(events));
        registered.is_some_and(|events| events & EPOLLOUT != 0)
    });
    assert!(
        asked,
        "client fd {fd} stayed registered for {} for {} while its echo could not be sent: \
         does the server ask for EPOLLOUT (EPOLL_CTL_MOD) when send(2) hits EAGAIN?",
        registered.map_or(
            "nothing (it is not in the interest list)".to_string(),
            epoll_flags
        ),
        testkit::duration(testkit::TIMEOUT)
    );
    let echo = client.try_recv_echo(&data);
    assert!(
        echo.is_ok(),
        "{}: was the output that hit EAGAIN kept, and written on EPOLLOUT?",
        echo.unwrap_err()
    );
    sender.join().unwrap().unwrap();
}

#[test]
fn sleeps_once_the_echo_is_delivered() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let mut client = Client::connect_small_window(server.addr);
    // Enough to make the server wait for EPOLLOUT; once all of it is back,
    // the socket is writable for good, and a server still waiting for
    // EPOLLOUT level-triggered is woken at every epoll_wait.
    let data = pattern(0, 8 * MIB);
    let sender = send_in_background(&client, &data, false);
    let echo = client.try_recv_echo(&data);
    assert!(
        echo.is_ok(),
        "{}: was the output that hit EAGAIN kept, and written on EPOLLOUT?",
        echo.unwrap_err()
    );
    sender.join().unwrap().unwrap();
    server.assert_sleeps(
        "with an idle client whose echo is all delivered (does it still ask for EPOLLOUT \
         level-triggered?)",
        0.5,
    );
}

#[test]
fn reads_again_once_the_client_takes_its_echo() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let mut client = Client::connect_small_window(server.addr);
    // The client sends until the server stops reading (it owes as much as
    // it will hold), then sends nothing more and reads. The input the server
    // left unread makes no new EPOLLIN edge: the server must read it again
    // when EPOLLOUT says the client took some echo.
    let sent = push_until_jammed(&client, 64 * MIB);
    let echo = client.try_recv_echo(&pattern(0, sent));
    assert!(
        echo.is_ok(),
        "{}: does the server read the input it left unread once EPOLLOUT says the client \
         took some echo (no new EPOLLIN edge comes for it)?",
        echo.unwrap_err()
    );
}

#[test]
fn a_client_that_never_reads_stalls_no_one() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    // The hog sends without reading until every buffer between it and the
    // server is full: its socket stays unwritable. A server that blocks in
    // send(2) to the hog is stuck from then on.
    let hog = Client::connect_small_window(server.addr);
    push_until_jammed(&hog, 256 * MIB);
    let mut other = server.connect_named("another client");
    for round in 0..20 {
        let echo = try_echo_probe(&mut other);
        assert!(
            echo.is_ok(),
            "{} in round {round}, while a client that never reads stays connected: \
             does the server block in send(2) to it (is every socket non-blocking)?",
            echo.unwrap_err()
        );
    }
}

#[test]
fn holds_a_bounded_amount_for_a_client_that_never_reads() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    echo_probe(&mut server.connect());
    let before = server.rss();
    // A server that reads whatever comes keeps all of it: 256 MiB.
    let hog = Client::connect_small_window(server.addr);
    let sent = push_until_jammed(&hog, 256 * MIB);
    let grown = server.rss().saturating_sub(before) as usize;
    assert!(
        grown < 64 * MIB,
        "the server grew by {} MiB while a client sent {} MiB without reading: \
         does it stop reading from a client while it owes that client too much echo?",
        grown / MIB,
        sent / MIB
    );
}

#[test]
fn a_client_that_resets_before_reading_stops_nothing() {
    let server = Server::start(server_bin(), &["127.0.0.1:0"]);
    let mut stays = server.connect_named("the client that stays");
    echo_probe(&mut stays);
    let mut leaves = server.connect_named("the client that resets");
    leaves.send(&pattern(0, MIB));
    let peer = leaves.stream.local_addr().unwrap();
    server.wait_stderr(&format!("from {peer}\n"));
    leaves.reset();
    server.wait_stderr("closed fd");
    let echo = try_echo_probe(&mut stays);
    assert!(
        echo.is_ok(),
        "{} after another client reset with echo owed: does one client's error \
         (ECONNRESET, EPIPE) end only that connection?",
        echo.unwrap_err()
    );
    echo_probe(&mut server.connect_named("a client that came after the reset"));
}

#[test]
fn every_ended_connection_gives_back_its_descriptor() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    // Counted while a client is connected, so whatever the server opens
    // for its first client is in the count too.
    let mut first = server.connect();
    echo_probe(&mut first);
    let idle = server.open_fds() - 1;
    drop(first);
    // Every way a connection ends: close, reset, end-of-file while still
    // reading, and a reset with echo still owed.
    for i in 0..40 {
        let mut client = server.connect();
        echo_probe(&mut client);
        match i % 4 {
            0 => drop(client),
            1 => client.reset(),
            2 => {
                client.shutdown_write();
                let rest = client.recv_to_eof();
                assert!(
                    rest.is_empty(),
                    "after its probe was echoed, the client got {} more before the close",
                    count(rest.len())
                );
            }
            _ => {
                client.send(&pattern(0, MIB));
                client.reset();
            }
        }
    }
    let mut open = 0;
    let closed = testkit::holds_within_timeout(|| {
        open = server.open_fds();
        open <= idle
    });
    assert!(
        closed,
        "after 40 clients came and went, the server has {open} descriptors open, \
         {idle} with none: is every connection's fd closed however it ends \
         (close, reset, end-of-file, a reset with echo owed)?"
    );
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_server() {
    const LIMIT: usize = 16;
    let mut cmd = std::process::Command::new(server_bin());
    cmd.args(["127.0.0.1:0"]);
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT as libc::rlim_t,
                rlim_max: LIMIT as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut server = Server::spawn(cmd);
    // Sixteen descriptors cannot hold thirty clients: accept4 fails with
    // EMFILE, and the clients it could not take wait in the accept queue.
    let mut clients: Vec<Client> = (0..30).map(|_| server.connect()).collect();
    // Out of descriptors: every number below the limit is taken (the server
    // may also hold higher ones, inherited from whoever started it).
    testkit::wait_until("the server has used all its descriptors", || {
        server.assert_running();
        server.fds().iter().filter(|&&fd| fd < LIMIT as i32).count() == LIMIT
    });
    server.assert_sleeps("while it is out of descriptors", 0.5);
    echo_probe(&mut clients[0]);
    // The last client is still in the queue. When the others leave, the
    // server must go back to the queue and serve it, not close it.
    let mut queued = clients.pop().unwrap().named("the last of 30 clients");
    drop(clients);
    let echo = try_echo_probe(&mut queued);
    assert!(
        echo.is_ok(),
        "{} once the others left: after EMFILE, does the server accept again when \
         descriptors are free?",
        echo.unwrap_err()
    );
    echo_probe(&mut server.connect_named("a client that came after the others left"));
}
