//! The checks of the chat client on a pipe and on a file: it sends and
//! receives at the same time, gets every reply before it exits, and refuses
//! a line over the server's limit. Every later step runs them too (this file
//! is included by path), against its own binaries: the test file that
//! includes it defines `server_bin()` and `client_bin()`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use assert_cmd::Command as AssertCommand;
use testkit::{Client, Server, TIMEOUT};

use super::{client_bin, server_bin};

pub(crate) fn start_server() -> Server {
    Server::start(server_bin(), &["-q", "127.0.0.1:0"])
}

/// The client binary running with a pipe for stdin and its stdout read
/// line by line on a thread; killed when dropped.
struct ChatClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl ChatClient {
    fn start(server: &Server) -> ChatClient {
        let mut child = Command::new(client_bin())
            .arg(server.addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        ChatClient {
            child,
            stdin,
            lines,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the client printed, or fail after the timeout.
    fn printed(&self) -> String {
        self.lines
            .recv_timeout(TIMEOUT)
            .expect("the client printed no line in time")
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn wait_exit(&mut self) -> Option<i32> {
        testkit::wait_for_exit(&mut self.child).code()
    }
}

impl Drop for ChatClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sends_stdin_lines_while_printing_what_arrives() {
    let server = start_server();
    let mut other = server.connect();
    assert!(
        other
            .recv_line()
            .starts_with("* welcome client1 (1 online)")
    );
    let mut client = ChatClient::start(&server);
    assert!(client.printed().starts_with("* welcome client2 (2 online)"));
    assert_eq!(other.recv_line(), "* client2 joined");

    client.type_line("hello from the client");
    assert_eq!(other.recv_line(), "client2: hello from the client");
    // stdin is still open and idle: a line from the other side is printed
    // at once, not after the next line typed.
    other.send(b"hello back\n");
    assert_eq!(client.printed(), "client1: hello back");
    client.type_line("/who");
    assert_eq!(client.printed(), "* online: client1, client2");

    client.close_stdin();
    assert_eq!(client.wait_exit(), Some(0));
    assert_eq!(other.recv_line(), "* client2 left");
}

#[test]
fn prints_disconnected_and_exits_zero_when_the_server_closes() {
    let mut server = start_server();
    let mut client = ChatClient::start(&server);
    assert!(client.printed().starts_with("* welcome client1 (1 online)"));
    // Killed, the server says nothing: the kernel closes its sockets, and
    // the client, whose stdin is still open, must see the close by itself.
    server.signal(libc::SIGKILL);
    assert_eq!(client.printed(), "* disconnected");
    assert_eq!(client.wait_exit(), Some(0));
    assert_eq!(server.wait_exit().code(), None);
}

#[test]
fn piped_input_gets_every_reply_before_the_client_exits() {
    let server = start_server();
    let mut other = server.connect();
    assert!(
        other
            .recv_line()
            .starts_with("* welcome client1 (1 online)")
    );
    // All of stdin at once, then end-of-file: the replies still arrive.
    let output = AssertCommand::new(client_bin())
        .arg(server.addr.to_string())
        .write_stdin("first\r\n/nick piped\n/who\nlast line without newline")
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (welcome, rest) = stdout.split_once('\n').unwrap();
    assert!(
        welcome.starts_with("* welcome client2 (2 online)"),
        "{welcome:?}"
    );
    assert_eq!(rest, "* client2 is now piped\n* online: client1, piped\n");
    assert_eq!(other.recv_line(), "* client2 joined");
    assert_eq!(other.recv_line(), "client2: first");
    assert_eq!(other.recv_line(), "* client2 is now piped");
    assert_eq!(other.recv_line(), "piped: last line without newline");
    assert_eq!(other.recv_line(), "* piped left");
}

#[test]
fn end_of_input_reaches_the_server_as_end_of_file_and_its_answer_still_arrives() {
    // The test is the server here, so that it can answer only after the
    // client's end-of-file: a client that does not send one (`shutdown`
    // with `SHUT_WR`) is heard from again only when it closes, too late.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let child = Command::new(client_bin())
        .arg(listener.local_addr().unwrap().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut child = KillOnDrop(child);
    child
        .0
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\n")
        .unwrap();
    let mut accepted = None;
    testkit::wait_until("the client connects", || {
        accepted = listener.accept().ok();
        accepted.is_some()
    });
    let (mut conn, _) = accepted.unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut received = Vec::new();
    conn.read_to_end(&mut received)
        .expect("end-of-file from the client in time");
    assert_eq!(received, b"one\ntwo\n");
    conn.write_all(b"* the answer to your last line\n").unwrap();
    drop(conn);
    let mut stdout = String::new();
    let pipe = child.0.stdout.take().unwrap();
    BufReader::new(pipe).read_to_string(&mut stdout).unwrap();
    assert_eq!(
        stdout, "* the answer to your last line\n",
        "the server's answer after the client's end-of-file"
    );
    assert_eq!(testkit::wait_for_exit(&mut child.0).code(), Some(0));
}

/// A child killed when the test ends, failed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_server_may_be_named_by_host_name() {
    let server = start_server();
    let output = AssertCommand::new(client_bin())
        .arg(format!("localhost:{}", server.addr.port()))
        .write_stdin("/who\n")
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.ends_with("* online: client1\n"),
        "stdout: {stdout:?}"
    );
}

#[test]
fn reads_stdin_from_a_regular_file() {
    // epoll refuses regular files (EPERM): the client must still send them.
    let server = start_server();
    let mut other: Client = server.connect();
    assert!(
        other
            .recv_line()
            .starts_with("* welcome client1 (1 online)")
    );
    let dir = std::env::temp_dir().join(format!("stage5-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.txt");
    let lines: String = (0..100).map(|n| format!("line {n}\n")).collect();
    std::fs::write(&file, &lines).unwrap();
    // The file itself as stdin, as the shell's `<` gives it (not a pipe
    // that a thread fills from the file).
    let child = Command::new(client_bin())
        .arg(server.addr.to_string())
        .stdin(File::open(&file).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the client");
    let mut child = KillOnDrop(child);
    let status = testkit::wait_for_exit(&mut child.0);
    std::fs::remove_dir_all(&dir).unwrap();
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(other.recv_line(), "* client2 joined");
    for n in 0..100 {
        assert_eq!(other.recv_line(), format!("client2: line {n}"));
    }
    assert_eq!(other.recv_line(), "* client2 left");
}

/// Whether a line the client printed refuses a line as too long. The
/// wording is the client's own, not the protocol's, so only its shape
/// is checked: a `* ` notice that says "too long".
pub(crate) fn is_refusal(line: &str) -> bool {
    line.starts_with("* ") && line.contains("too long")
}

/// How many lines of `output` are refusals.
fn refusals(output: &str) -> usize {
    output.lines().filter(|line| is_refusal(line)).count()
}

#[test]
fn a_piped_line_over_the_limit_is_reported_and_the_next_ones_are_sent() {
    let server = start_server();
    let mut other = server.connect();
    assert!(
        other
            .recv_line()
            .starts_with("* welcome client1 (1 online)")
    );
    // 4096 bytes before a `\r\n` are within the limit, 4097 are not; the
    // last line is over it and has no `\n`.
    let mut input = b"before\n".to_vec();
    input.extend_from_slice(&[b'z'; 5000]);
    input.extend_from_slice(b"\nbetween\n");
    input.extend_from_slice(&[b'w'; 4096]);
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&[b'v'; 4097]);
    input.extend_from_slice(b"\r\nafter\n");
    input.extend_from_slice(&[b'u'; 4097]);
    let output = AssertCommand::new(client_bin())
        .arg(server.addr.to_string())
        .write_stdin(input)
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        refusals(&stderr),
        3,
        "one refusal per long line: {stderr:?}"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("* welcome client2 (2 online)") && !stdout.contains("error"),
        "stdout: {stdout:?}"
    );
    assert_eq!(other.recv_line(), "* client2 joined");
    assert_eq!(other.recv_line(), "client2: before");
    assert_eq!(other.recv_line(), "client2: between");
    assert_eq!(other.recv_line(), format!("client2: {}", "w".repeat(4096)));
    assert_eq!(other.recv_line(), "client2: after");
    assert_eq!(other.recv_line(), "* client2 left");

    // `--max-line` sets the limit for a server started with another one.
    let output = AssertCommand::new(client_bin())
        .args(["--max-line", "8", &server.addr.to_string()])
        .write_stdin("12345678\n123456789\n")
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        refusals(&stderr),
        1,
        "one refusal per long line: {stderr:?}"
    );
    assert_eq!(other.recv_line(), "* client3 joined");
    assert_eq!(other.recv_line(), "client3: 12345678");
    assert_eq!(other.recv_line(), "* client3 left");
}
