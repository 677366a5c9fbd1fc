//! Fault checks: clients that reset, shut down half their connection or come
//! and go in a burst, against a server started the way a reader starts it,
//! with its connection log on (no `-q`). Logging must never be what ends a
//! server, and a failure that belongs to one connection must close that
//! connection only. A stage's test file states them in one line:
//! `testkit::fault_checks!(bin(), probe);`

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::path::Path;
use std::thread;
use std::time::Duration;

use crate::conventions::Probe;
use crate::{Client, Server};

/// What a server sends back to a client that sends a payload and then shuts
/// down its sending side, before it closes the connection.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// Every byte of the payload (the echo servers).
    Echo,
    /// Nothing more (the chat servers: a line goes to everyone but its sender).
    Nothing,
}

/// Clients each check resets or churns: enough to hit the races, few enough
/// for tests that run in parallel.
const RESETS: usize = 50;
const CHURN: usize = 300;
const WRITERS: usize = 2;

/// How much a writer in [`resets_mid_write`] sends at most before it
/// resets: more than the kernel's buffers and an echo server's own output
/// buffer hold together (stage 4 stops reading after about 7 MiB), so the
/// server is left with output it could not send. A chat server reads on,
/// relaying to the other writer, until this much is sent.
const MID_WRITE_BYTES: usize = 16 << 20;

/// What the half-closing client sends an echo server.
const HALF_CLOSE_BYTES: u32 = 8 << 20;

/// The server as a reader runs it: logging on.
fn start(bin: &Path) -> Server {
    Server::start(bin, &["127.0.0.1:0"])
}

/// The whole `closed fd ...` lines in `log` (a line still being written is
/// not one yet).
fn close_lines(log: &str) -> impl Iterator<Item = &str> {
    log.split_inclusive('\n')
        .filter_map(|line| line.strip_suffix('\n'))
        .filter(|line| line.starts_with("closed fd "))
}

/// After a fault: the server logged why each of the `closed` connections
/// ended, is still running, and serves a fresh client.
fn still_serving(server: &mut Server, probe: Probe, closed: usize) {
    let what = format!("{closed} `closed fd N (REASON)` lines, one per client that left");
    server.wait_log(&what, |log| close_lines(log).count() >= closed);
    for line in close_lines(&server.stderr()) {
        let reason = line
            .split_once(" (")
            .and_then(|(_, rest)| rest.strip_suffix(')'));
        assert!(
            reason.is_some_and(|r| !r.is_empty()),
            "expected `closed fd N (REASON)`, got {line:?}"
        );
    }
    server.assert_running();
    probe(&mut server.connect_named("a fresh client, after the faults,"));
    server.assert_running();
}

/// Clients that reset while they still wait in the accept queue: the
/// server accepts sockets that are already dead, on which `getpeername`
/// fails (`ENOTCONN`) and the first read reports `ECONNRESET`.
pub fn resets_in_the_accept_queue(bin: &Path, probe: Probe) {
    let mut server = start(bin);
    // Stopped, the server cannot accept: the kernel completes every
    // handshake and queues the connections, which then reset in the queue.
    server.signal(libc::SIGSTOP);
    let clients: Vec<Client> = (0..RESETS).map(|_| server.connect()).collect();
    clients.into_iter().for_each(Client::reset);
    server.signal(libc::SIGCONT);
    still_serving(&mut server, probe, RESETS);
}

/// Clients that send lines without reading the answers and reset: the
/// server is writing to them (or holds output for them) when they go.
pub fn resets_mid_write(bin: &Path, probe: Probe) {
    let mut server = start(bin);
    // 64 KiB of 64-byte lines: an echo server echoes them, a chat relays them.
    let lines = [b"x".repeat(63), b"\n".to_vec()].concat().repeat(1024);
    let writers: Vec<Client> = (0..WRITERS)
        .map(|_| {
            // A small receive window: the server's answers back up at once.
            let mut client = Client::connect_small_window(server.addr);
            send_until_stalled(&mut client, &lines);
            client
        })
        .collect();
    writers.into_iter().for_each(Client::reset);
    still_serving(&mut server, probe, WRITERS);
}

/// Send `chunk` over and over, up to [`MID_WRITE_BYTES`], until the server
/// stops reading (nothing drains for a while: every buffer on the way is
/// full) or has closed the connection.
fn send_until_stalled(client: &mut Client, chunk: &[u8]) {
    // Not a synchronisation: however the sending ends, the reset that
    // follows finds the server with output it could not deliver.
    let stall = Duration::from_millis(300);
    client.stream.set_write_timeout(Some(stall)).unwrap();
    let mut sent = 0;
    while sent < MID_WRITE_BYTES {
        match client.stream.write(chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break, // stalled (timed out), or closed by the server
        }
    }
}

/// A client that sends its payload and shuts down its sending side gets
/// everything it is owed, and then the close (`end of file`).
pub fn half_close_gets_its_answer_then_the_close(bin: &Path, probe: Probe, reply: Reply) {
    let mut server = start(bin);
    // A small receive window, so the echo backs up in the server: when
    // end-of-file arrives, it still owes most of the payload.
    let mut client = Client::connect_small_window(server.addr).named("the half-closed client");
    probe(&mut client);
    let fd = server.fd_of(&client);
    let (payload, owed) = match reply {
        // More than the kernel's buffers hold; bytes that differ from their
        // neighbours, so a lost or repeated chunk shows.
        Reply::Echo => {
            let data: Vec<u8> = (0..HALF_CLOSE_BYTES).map(|i| (i % 251) as u8).collect();
            (data.clone(), data)
        }
        Reply::Nothing => (b"hello\n".to_vec(), Vec::new()),
    };
    // Sent from a thread while this one reads: a blocking echo server
    // answers as it reads, and would wait for us to read.
    let mut writer = client.stream.try_clone().unwrap();
    let sender = thread::spawn(move || {
        writer.write_all(&payload)?;
        writer.shutdown(Shutdown::Write)
    });
    let got = client.recv_to_eof();
    sender
        .join()
        .unwrap()
        .expect("send the payload, then shut down");
    assert!(
        got == owed,
        "the half-closed client got {} of the {} it was owed before the close: \
         does the server write out what it owes after it reads end-of-file?",
        crate::count(got.len()),
        crate::bytes(owed.len())
    );
    server.wait_stderr(&format!("closed fd {fd} (end of file)\n"));
    still_serving(&mut server, probe, 1);
}

/// A few hundred clients that connect and leave at once, half of them
/// with a reset: nothing is left behind and the server goes on.
pub fn connect_close_churn(bin: &Path, probe: Probe) {
    let mut server = start(bin);
    for i in 0..CHURN {
        let client = server.connect();
        if i % 2 == 0 {
            drop(client); // close(2): a FIN
        } else {
            client.reset();
        }
    }
    still_serving(&mut server, probe, CHURN);
}

/// A log nobody reads: the server's stderr is a pipe whose reader has gone
/// (a log viewer that quit, `server 2>&1 | head`), so every log line meets
/// `EPIPE`. The server loses those lines and goes on serving everyone.
pub fn log_reader_gone(bin: &Path, probe: Probe) {
    let mut server = Server::start_log_unread(bin, &["127.0.0.1:0"]);
    // The first connection's `accepted` line is the first write to the pipe.
    probe(&mut server.connect());
    for i in 0..RESETS {
        let client = server.connect();
        if i % 2 == 0 {
            drop(client);
        } else {
            client.reset();
        }
    }
    // Accepted after every client above, so served only once their
    // `accepted` lines (and most `closed` ones) met the broken pipe.
    probe(&mut server.connect_named("a client after the log's reader left"));
    server.assert_running();
}

/// One test per fault check, for the binary `$bin` and probe `$probe`;
/// `$reply` says what a half-closed client is owed (echo servers by default).
#[macro_export]
macro_rules! fault_checks {
    ($bin:expr, $probe:expr) => {
        $crate::fault_checks!($bin, $probe, $crate::faults::Reply::Echo);
    };
    ($bin:expr, $probe:expr, $reply:expr) => {
        mod faults {
            use super::*;
            use $crate::faults as f;
            #[test]
            fn resets_in_the_accept_queue() {
                f::resets_in_the_accept_queue(&$bin, $probe)
            }
            #[test]
            fn resets_mid_write() {
                f::resets_mid_write(&$bin, $probe)
            }
            #[test]
            fn half_close_gets_its_answer_then_the_close() {
                f::half_close_gets_its_answer_then_the_close(&$bin, $probe, $reply)
            }
            #[test]
            fn connect_close_churn() {
                f::connect_close_churn(&$bin, $probe)
            }
            #[test]
            fn log_reader_gone() {
                f::log_reader_gone(&$bin, $probe)
            }
        }
    };
}
