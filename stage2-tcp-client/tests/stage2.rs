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

/// Run the client against `addr` with `input` on stdin; a client still
/// running after [`TIMEOUT`] is killed. Returns its status in words and
/// its stdout.
fn run_client(addr: SocketAddr, input: &str) -> (Option<String>, String) {
    use std::os::unix::process::ExitStatusExt;
    let output = Command::new(bin())
        .arg(addr.to_string())
        .write_stdin(input)
        .timeout(TIMEOUT)
        .output()
        .expect("start the client");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failure = match (output.status.success(), output.status.signal()) {
        (true, _) => None,
        // 9 is SIGKILL, which the timeout sends.
        (false, Some(9)) => Some(format!(
            "the client was still running {} after its input ended, and was killed",
            testkit::duration(TIMEOUT)
        )),
        (false, _) => Some(format!(
            "the client ended with {}; its stderr: {stderr:?}",
            output.status
        )),
    };
    (failure, stdout)
}

#[test]
fn prints_each_reply_and_exits_at_end_of_input() {
    let addr = echo_server();
    let (failure, stdout) = run_client(addr, "hello\nworld\n");
    assert!(
        failure.is_none(),
        "{}: does it exit once stdin ends and every reply is printed? it printed {stdout:?}",
        failure.unwrap()
    );
    assert_eq!(
        stdout, "hello\nworld\n",
        "the client printed {stdout:?} for the replies to \"hello\\nworld\\n\": \
         does it print each reply whole (the server sends one byte at a time)?"
    );
}

#[test]
fn sends_a_last_line_without_newline() {
    let addr = echo_server();
    let (failure, stdout) = run_client(addr, "one\ntwo");
    assert!(
        failure.is_none(),
        "{}: does it exit once stdin ends and every reply is printed? it printed {stdout:?}",
        failure.unwrap()
    );
    assert_eq!(
        stdout, "one\ntwo\n",
        "the client printed {stdout:?} for input \"one\\ntwo\" (no newline at the end): \
         is the last line sent, and its reply printed with a newline?"
    );
}
