//! Exercise checks for stage 3. Run them against your own server with
//! `STAGE3_BIN=/path/to/your/server cargo test -p stage3-epoll`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLIN, Interest, Load, Meanwhile};
use testkit::conventions::{echo_probe, try_echo_probe};
use testkit::{Client, Server, interest_list};

fn bin() -> PathBuf {
    testkit::bin("STAGE3_BIN", env!("CARGO_BIN_EXE_stage3-epoll"))
}

testkit::server_conventions!(bin(), echo_probe);
testkit::fault_checks!(bin(), echo_probe);

/// How stage 3 is built: one thread, the listener and every client
/// registered level-triggered for `EPOLLIN`, and a blocking `send(2)` that
/// keeps the others waiting while one client does not read (stage 4's lesson).
const DESIGN: Design = Design {
    stage: "stage 3",
    listener: Interest::level_triggered(EPOLLIN),
    clients: Interest::level_triggered(EPOLLIN),
    load: Load::Echo,
    meanwhile: Meanwhile::Wait,
};
testkit::built_checks!(bin(), echo_probe, DESIGN);

#[test]
fn serves_an_idle_client_and_a_busy_one_together() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut idle = server.connect_named("the idle client");
    let mut busy = server.connect_named("the busy client");
    // In stage 1, `busy` would wait for `idle` to leave; here it is served at once.
    for round in 0..50 {
        let msg = format!("round {round}\n");
        busy.send(msg.as_bytes());
        let echo = busy.try_recv_echo(msg.as_bytes());
        assert!(
            echo.is_ok(),
            "{} in round {round}, while the idle client sent nothing: \
             was it accepted, and does the server wait in epoll_wait for both instead of \
             blocking on one?",
            echo.unwrap_err()
        );
    }
    let echo = try_echo_probe(&mut idle);
    assert!(
        echo.is_ok(),
        "{} after 50 rounds with the busy one: is it still in the interest list?",
        echo.unwrap_err()
    );
}

#[test]
fn hundred_concurrent_clients_each_get_their_own_bytes() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut clients: Vec<Client> = (0..100)
        .map(|i| server.connect_named(format!("client {} of 100", i + 1)))
        .collect();
    let payload = |i: usize| format!("client {i} says {}\n", "x".repeat(i * 10)).into_bytes();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(&payload(i));
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let echo = client.try_recv_echo(&payload(i));
        assert!(
            echo.is_ok(),
            "{}: was every client accepted, and does each echo go to its own client's fd?",
            echo.unwrap_err()
        );
    }
}

#[test]
fn a_reset_client_is_removed_and_disturbs_no_one() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut stays = server.connect_named("the client that stays");
    echo_probe(&mut stays);
    let interest_before = server.epoll_interest();
    let fds_before = server.open_fds();

    let mut leaves = server.connect_named("the client that resets");
    echo_probe(&mut leaves);
    let fd = server.fd_of(&leaves);
    let interest = server.epoll_interest();
    assert!(
        interest.iter().any(|&(watched, _)| watched == fd),
        "client fd {fd} is not in the interest list ({}): is each accepted client \
         added with EPOLL_CTL_ADD?",
        interest_list(&interest)
    );
    leaves.send(b"unread echo");
    leaves.reset();

    server.wait_stderr(&format!("closed fd {fd} (ECONNRESET)\n"));
    let interest_after = server.epoll_interest();
    assert!(
        interest_after == interest_before,
        "after fd {fd} reset, the interest list is {} (before it came: {}): \
         is the fd taken out (EPOLL_CTL_DEL) when its read fails?",
        interest_list(&interest_after),
        interest_list(&interest_before)
    );
    let fds_after = server.open_fds();
    assert!(
        fds_after == fds_before,
        "after fd {fd} reset, the server has {fds_after} descriptors open, {fds_before} \
         before it came: is the fd closed when its read fails?"
    );
    let echo = try_echo_probe(&mut stays);
    assert!(
        echo.is_ok(),
        "{} after another client reset: does one client's error end only its connection?",
        echo.unwrap_err()
    );
}
