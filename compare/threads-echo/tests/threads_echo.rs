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

#[test]
fn a_client_past_max_clients_is_closed_while_the_others_are_served() {
    let server = Server::start(bin(), &["--max-clients", "3", "127.0.0.1:0"]);
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    // An echo from each proves its thread is running, so all three count.
    for client in &mut clients {
        client.send(b"here\n");
        assert_eq!(client.recv_exact(5), b"here\n");
    }

    let mut fourth = server.connect();
    let refused_fd = server.fd_of(&fourth);
    assert_eq!(fourth.recv_to_eof(), b"", "the 4th client got bytes");
    server.wait_stderr(&format!("closed fd {refused_fd} (no room"));
    assert!(
        server.stderr().contains("--max-clients"),
        "the refusal names the cap:\n{}",
        server.stderr()
    );

    // The three are still echoed after the refusal.
    for (i, client) in clients.iter_mut().enumerate() {
        let msg = format!("still {i}\n");
        client.send(msg.as_bytes());
        assert_eq!(client.recv_exact(msg.len()), msg.as_bytes());
    }

    // One leaves; once its close is logged, its place is free for the next.
    let leaving = clients.pop().unwrap();
    let leaving_fd = server.fd_of(&leaving);
    drop(leaving);
    server.wait_stderr(&format!("closed fd {leaving_fd} (end of file)\n"));
    let mut fifth = server.connect();
    fifth.send(b"my turn\n");
    assert_eq!(fifth.recv_exact(8), b"my turn\n");
}

#[test]
fn max_clients_needs_a_positive_number() {
    for bad in [
        &["--max-clients"][..],
        &["--max-clients", "0"],
        &["--max-clients", "many"],
    ] {
        assert_cmd::Command::new(bin())
            .args(bad)
            .timeout(testkit::TIMEOUT)
            .assert()
            .code(2)
            .stderr(predicates::str::contains("usage:"));
    }
}

/// The checks of how stages 3 on are built tell this server apart: it
/// answers like them, but with a thread per connection and no epoll.
#[test]
fn fails_the_checks_of_how_an_epoll_server_is_built() {
    use testkit::built::{self, Design, EPOLLIN, Interest, Load, Meanwhile};
    let design = Design {
        stage: "stage 3",
        listener: Interest::level_triggered(EPOLLIN),
        clients: Interest::level_triggered(EPOLLIN),
        load: Load::Echo,
        meanwhile: Meanwhile::Wait,
    };
    let threads = built::one_thread(&bin(), echo_probe);
    assert!(
        threads
            .as_ref()
            .is_err_and(|e| e.contains("threads with") && e.contains("a thread per connection")),
        "the thread check should count a thread per client, and said {threads:?}"
    );
    let epoll = built::epoll_watches_the_listener_and_clients(&bin(), echo_probe, &design);
    assert!(
        epoll
            .as_ref()
            .is_err_and(|e| e.contains("no epoll instance")),
        "the epoll check should find no epoll instance, and said {epoll:?}"
    );
}
