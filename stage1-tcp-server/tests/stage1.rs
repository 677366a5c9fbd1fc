//! Exercise checks for stage 1. Run them against your own server with
//! `STAGE1_BIN=/path/to/your/server cargo test -p stage1-tcp-server`.

use std::path::PathBuf;
use std::time::Duration;

use testkit::conventions::echo_probe;
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
    assert_eq!(client.recv_exact(data.len()), data);
}

#[test]
fn serves_one_client_at_a_time() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut a = server.connect();
    echo_probe(&mut a);

    // B's connect succeeds (the kernel queues it) but nobody reads its bytes.
    let mut b = server.connect();
    b.send(b"hello from B");
    b.expect_silence(Duration::from_millis(300));

    // Once A hangs up, the server accepts B and echoes what was waiting.
    drop(a);
    assert_eq!(b.recv_exact(12), b"hello from B");
}

#[test]
fn queues_a_burst_of_connects_while_busy() {
    // With a small backlog (the classic 5, or 128) most of these would time
    // out; with SOMAXCONN they all wait in the accept queue.
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut busy = server.connect();
    echo_probe(&mut busy);
    let waiting: Vec<Client> = (0..300).map(|_| server.connect()).collect();
    drop(busy);
    let mut first = waiting.into_iter().next().unwrap();
    echo_probe(&mut first);
}
