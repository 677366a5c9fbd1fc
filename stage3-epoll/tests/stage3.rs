//! Exercise checks for stage 3. Run them against your own server with
//! `STAGE3_BIN=/path/to/your/server cargo test -p stage3-epoll`.

use std::path::PathBuf;

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("STAGE3_BIN", env!("CARGO_BIN_EXE_stage3-epoll"))
}

testkit::server_conventions!(bin(), echo_probe);
testkit::fault_checks!(bin(), echo_probe);

#[test]
fn serves_an_idle_client_and_a_busy_one_together() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut idle = server.connect();
    let mut busy = server.connect();
    // In stage 1, `busy` would wait for `idle` to leave; here it is served at once.
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
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(client.recv_exact(payload(i).len()), payload(i));
    }
}

#[test]
fn a_reset_client_is_removed_and_disturbs_no_one() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut stays = server.connect();
    echo_probe(&mut stays);
    let interest_before = server.epoll_interest();
    let fds_before = server.open_fds();

    let mut leaves = server.connect();
    echo_probe(&mut leaves);
    let fd = server.fd_of(&leaves);
    assert!(
        server
            .epoll_interest()
            .iter()
            .any(|&(watched, _)| watched == fd)
    );
    leaves.send(b"unread echo");
    leaves.reset();

    server.wait_stderr(&format!("closed fd {fd} (ECONNRESET)\n"));
    assert_eq!(
        server.epoll_interest(),
        interest_before,
        "the fd left the interest list"
    );
    assert_eq!(server.open_fds(), fds_before, "the fd was closed");
    echo_probe(&mut stays);
}
