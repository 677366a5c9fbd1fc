//! Checks for the `poll(2)` baseline: it follows the same conventions as the
//! stages and echoes like stage 3, so the benchmark compares like with like.
//! Run them against another build with
//! `POLL_ECHO_BIN=/path/to/server cargo test -p compare-poll-echo`.

use std::path::PathBuf;

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("POLL_ECHO_BIN", env!("CARGO_BIN_EXE_poll-echo"))
}

testkit::server_conventions!(bin(), echo_probe);
testkit::fault_checks!(bin(), echo_probe);

#[test]
fn echoes_exactly_the_bytes_it_receives() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut client = server.connect();
    // Not line-based: no newline, every byte value, more than one read's worth.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    client.send(&data);
    assert_eq!(client.recv_exact(data.len()), data);
}

#[test]
fn serves_an_idle_client_and_a_busy_one_together() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut idle = server.connect();
    let mut busy = server.connect();
    for round in 0..50 {
        let msg = format!("round {round}\n");
        busy.send(msg.as_bytes());
        assert_eq!(busy.recv_exact(msg.len()), msg.as_bytes());
    }
    echo_probe(&mut idle);
}

#[test]
fn hundred_concurrent_clients_each_get_their_own_bytes() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut clients: Vec<Client> = (0..100).map(|_| server.connect()).collect();
    let payload = |i: usize| format!("client {i} says {}\n", "x".repeat(i * 10)).into_bytes();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&payload(i));
    }
    // Answered in reverse order: each ready descriptor is served in the
    // same pass, whatever its place in the array.
    for (i, client) in clients.iter_mut().enumerate().rev() {
        assert_eq!(client.recv_exact(payload(i).len()), payload(i));
    }
}

#[test]
fn a_client_that_leaves_is_closed_and_disturbs_no_one() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut stays = server.connect();
    echo_probe(&mut stays);
    let fds_before = server.open_fds();

    for end in ["reset", "end-of-file"] {
        let mut leaves = server.connect();
        echo_probe(&mut leaves);
        let fd = server.fd_of(&leaves);
        assert_eq!(server.open_fds(), fds_before + 1, "{end}: one more fd");
        if end == "reset" {
            leaves.send(b"unread echo");
            leaves.reset();
        } else {
            drop(leaves);
        }
        // The number is reused, so the log line may be an earlier close's:
        // the count of open descriptors is what proves this one closed.
        testkit::wait_until(&format!("{end}: fd {fd} closed"), || {
            server.open_fds() == fds_before
        });
        // A reset is named by the call that met it (ECONNRESET, or EPIPE on
        // a later send); end-of-file by itself.
        let why = if end == "reset" {
            "(E"
        } else {
            "(end of file)"
        };
        let closed = format!("closed fd {fd} {why}");
        server.wait_stderr(&closed);
        echo_probe(&mut stays);
    }
}

#[test]
fn serves_a_busy_client_among_hundreds_of_idle_ones_without_epoll() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut idle: Vec<Client> = (0..300).map(|_| server.connect()).collect();
    let mut busy = server.connect();
    for round in 0..20 {
        let msg = format!("round {round}\n");
        busy.send(msg.as_bytes());
        assert_eq!(busy.recv_exact(msg.len()), msg.as_bytes());
    }
    echo_probe(idle.last_mut().unwrap());
    // The baseline's point is the other interface: no epoll descriptor.
    let pid = server.pid();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
        let target = std::fs::read_link(entry.unwrap().path()).unwrap_or_default();
        assert_ne!(
            target.to_string_lossy(),
            "anon_inode:[eventpoll]",
            "poll-echo watches its clients through epoll"
        );
    }
}

/// The checks of how stages 3 on are built tell this server apart: one
/// thread, like stage 3, but poll(2) instead of an epoll instance.
#[test]
fn fails_the_epoll_check_and_passes_the_thread_check() {
    use testkit::built::{self, Design, EPOLLIN, Interest, Load, Meanwhile};
    let design = Design {
        stage: "stage 3",
        listener: Interest::level_triggered(EPOLLIN),
        clients: Interest::level_triggered(EPOLLIN),
        load: Load::Echo,
        meanwhile: Meanwhile::Wait,
    };
    let epoll = built::epoll_watches_the_listener_and_clients(&bin(), echo_probe, &design);
    assert!(
        epoll
            .as_ref()
            .is_err_and(|e| e.contains("no epoll instance")),
        "the epoll check should find no epoll instance, and said {epoll:?}"
    );
    let threads = built::one_thread(&bin(), echo_probe);
    assert_eq!(
        threads,
        Ok(()),
        "poll-echo runs one thread, as stage 3 does"
    );
}
