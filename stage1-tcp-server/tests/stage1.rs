//! Exercise checks for stage 1. Run them against your own server with
//! `STAGE1_BIN=/path/to/your/server cargo test -p stage1-tcp-server`.

use std::path::PathBuf;
use std::time::Duration;

use testkit::conventions::{echo_probe, try_echo_probe};
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("STAGE1_BIN", env!("CARGO_BIN_EXE_stage1-tcp-server"))
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
    let echo = client.try_recv_echo(&data);
    assert!(
        echo.is_ok(),
        "{}: does the server write back all of every read, whatever the bytes, \
         with write_all (a write may take less than it is given)?",
        echo.unwrap_err()
    );
}

#[test]
fn serves_one_client_at_a_time() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut a = server.connect_named("client A");
    echo_probe(&mut a);

    // B's connect succeeds (the kernel queues it) but nobody reads its bytes.
    let mut b = server.connect_named("client B");
    b.send(b"hello from B");
    let silence = b.try_expect_silence(Duration::from_millis(300));
    assert!(
        silence.is_ok(),
        "{} while A was still connected: stage 1 serves one client at a time",
        silence.unwrap_err()
    );

    // Once A hangs up, the server accepts B and echoes what was waiting.
    drop(a);
    let echo = b.try_recv_echo(b"hello from B");
    assert!(
        echo.is_ok(),
        "{} after A hung up: does the server go back to accept(2) when its client leaves?",
        echo.unwrap_err()
    );
}

#[test]
fn queues_a_burst_of_connects_while_busy() {
    // With a small backlog (the classic 5, or 128) most of these would time
    // out; with SOMAXCONN they all wait in the accept queue.
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut busy = server.connect_named("the busy client");
    echo_probe(&mut busy);
    // A connect that finds the accept queue full times out (the kernel
    // drops its handshake): the failure names the backlog.
    let waiting: Vec<Client> = (0..300)
        .map(|i| server.connect_named(format!("client {} of 300", i + 1)))
        .collect();
    drop(busy);
    let mut first = waiting.into_iter().next().unwrap();
    let echo = try_echo_probe(&mut first);
    assert!(
        echo.is_ok(),
        "{} after the busy client left: were the queued connections accepted?",
        echo.unwrap_err()
    );
}
