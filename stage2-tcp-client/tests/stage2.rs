//! Exercise checks for stage 2. Run them against your own client with
//! `STAGE2_BIN=/path/to/your/client cargo test -p stage2-tcp-client`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread;

use assert_cmd::Command;
use testkit::TIMEOUT;

fn bin() -> PathBuf {
    testkit::bin("STAGE2_BIN", env!("CARGO_BIN_EXE_stage2-tcp-client"))
}

testkit::client_conventions!(bin());

/// A one-connection echo server on a thread, so these checks need no other stage.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            // Echo one byte at a time: the client must reassemble its lines.
            for byte in &buf[..n] {
                stream.write_all(&[*byte]).unwrap();
            }
        }
    });
    addr
}

#[test]
fn prints_each_reply_and_exits_at_end_of_input() {
    let addr = echo_server();
    Command::new(bin())
        .arg(addr.to_string())
        .write_stdin("hello\nworld\n")
        .timeout(TIMEOUT)
        .assert()
        .success()
        .stdout("hello\nworld\n");
}

#[test]
fn sends_a_last_line_without_newline() {
    let addr = echo_server();
    Command::new(bin())
        .arg(addr.to_string())
        .write_stdin("one\ntwo")
        .timeout(TIMEOUT)
        .assert()
        .success()
        .stdout("one\ntwo\n");
}
