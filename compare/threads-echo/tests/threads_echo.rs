//! Checks for the thread-per-connection baseline: it follows the same
//! conventions as the stages and echoes correctly, so the benchmark compares
//! like with like. Run them against another build with
//! `THREADS_ECHO_BIN=/path/to/server cargo test -p compare-threads-echo`.

use std::path::PathBuf;
use std::thread;

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("THREADS_ECHO_BIN", env!("CARGO_BIN_EXE_threads-echo"))
}

testkit::server_conventions!(bin(), echo_probe);

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
fn serves_many_clients_at_once() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    // All connected before any sends: each has a thread blocked in read.
    let mut clients: Vec<Client> = (0..200).map(|_| server.connect()).collect();
    // Answered in reverse order of arrival: no client waits for another.
    for (i, client) in clients.iter_mut().enumerate().rev() {
        let msg = format!("client {i} says hello\n");
        client.send(msg.as_bytes());
        assert_eq!(client.recv_exact(msg.len()), msg.as_bytes());
    }
}

#[test]
fn clients_sending_together_each_get_their_own_bytes() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let handles: Vec<_> = (0..20u8)
        .map(|i| {
            let mut client = server.connect();
            thread::spawn(move || {
                let data = vec![i; 64 * 1024];
                client.send(&data);
                assert_eq!(client.recv_exact(data.len()), data);
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a client thread failed");
    }
}

#[test]
fn flushes_everything_after_the_client_shuts_down_its_side() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut client = server.connect();
    let data = vec![b'x'; 1 << 20];
    // Send from a second handle while this one reads, so neither side's
    // socket buffer fills up and stalls the other.
    let mut sender = client.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        use std::io::Write;
        sender.write_all(&data).unwrap();
        sender.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let echoed = client.recv_to_eof();
    writer.join().unwrap();
    assert_eq!(echoed.len(), 1 << 20);
    assert!(echoed.iter().all(|&b| b == b'x'));
}
