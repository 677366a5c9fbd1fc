//! Exercise checks for the stage 5 chat client. Run them against your own
//! client with `STAGE5_CLIENT_BIN=/path/to/your/client cargo test -p stage5-chat`
//! (and your server with `STAGE5_SERVER_BIN`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use assert_cmd::Command as AssertCommand;
use testkit::{Client, Server, TIMEOUT};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

fn client_bin() -> PathBuf {
    testkit::bin("STAGE5_CLIENT_BIN", env!("CARGO_BIN_EXE_client"))
}

testkit::client_conventions!(client_bin());

fn start_server() -> Server {
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
    assert_eq!(other.recv_line(), "* welcome client1 (1 online)");
    let mut client = ChatClient::start(&server);
    assert_eq!(client.printed(), "* welcome client2 (2 online)");
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
    assert_eq!(client.printed(), "* welcome client1 (1 online)");
    server.signal(libc::SIGTERM);
    assert_eq!(client.printed(), "* server shutting down");
    assert_eq!(client.printed(), "* disconnected");
    assert_eq!(client.wait_exit(), Some(0));
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn piped_input_gets_every_reply_before_the_client_exits() {
    let server = start_server();
    let mut other = server.connect();
    assert_eq!(other.recv_line(), "* welcome client1 (1 online)");
    // All of stdin at once, then end-of-file: the replies still arrive.
    let output = AssertCommand::new(client_bin())
        .arg(server.addr.to_string())
        .write_stdin("first\r\n/nick piped\n/who\nlast line without newline")
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout,
        "* welcome client2 (2 online)\n\
         * client2 is now piped\n\
         * online: client1, piped\n"
    );
    assert_eq!(other.recv_line(), "* client2 joined");
    assert_eq!(other.recv_line(), "client2: first");
    assert_eq!(other.recv_line(), "* client2 is now piped");
    assert_eq!(other.recv_line(), "piped: last line without newline");
    assert_eq!(other.recv_line(), "* piped left");
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
    assert_eq!(other.recv_line(), "* welcome client1 (1 online)");
    let dir = std::env::temp_dir().join(format!("stage5-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("input.txt");
    let lines: String = (0..100).map(|n| format!("line {n}\n")).collect();
    std::fs::write(&file, &lines).unwrap();
    let output = AssertCommand::new(client_bin())
        .arg(server.addr.to_string())
        .pipe_stdin(&file)
        .unwrap()
        .timeout(TIMEOUT)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(other.recv_line(), "* client2 joined");
    for n in 0..100 {
        assert_eq!(other.recv_line(), format!("client2: line {n}"));
    }
    assert_eq!(other.recv_line(), "* client2 left");
}
