//! The command-line conventions every server and client follows,
//! checked once each. A stage's test file states them in one line:
//! `testkit::server_conventions!(bin(), probe);` or
//! `testkit::client_conventions!(bin());`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::thread;

use assert_cmd::Command;
use predicates::prelude::*;

use crate::{Client, ReadFailure, Server, TIMEOUT, closed_port};

/// What proves a server is serving a fresh client: an echo for stages 1-4,
/// the welcome line for the chat.
pub type Probe = fn(&mut Client);

/// Port 0 lets the kernel pick; the `listening on` line names the real port.
pub fn port_zero_prints_the_real_port(bin: &Path, probe: Probe) {
    let server = Server::start(bin, &["127.0.0.1:0"]);
    assert_ne!(
        server.addr.port(),
        0,
        "the `listening on` line must name the port the kernel picked (getsockname), not 0"
    );
    probe(&mut server.connect());
}

/// IPv6 loopback works like IPv4.
pub fn serves_ipv6_loopback(bin: &Path, probe: Probe) {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let server = Server::start(bin, &["[::1]:0"]);
    assert!(server.addr.is_ipv6(), "listening on {}", server.addr);
    probe(&mut server.connect());
}

/// ADDR may name a host: `localhost:0` is resolved once, at start, and
/// the `listening on` line names the address it resolved to.
pub fn listens_on_a_host_name(bin: &Path, probe: Probe) {
    let server = Server::start(bin, &["localhost:0"]);
    assert_eq!(
        server.addr.ip(),
        localhost().ip(),
        "listening on {}",
        server.addr
    );
    assert_ne!(server.addr.port(), 0, "the line must name the real port");
    probe(&mut server.connect());
}

/// The first address `localhost` resolves to, as a server or client would pick it.
fn localhost() -> SocketAddr {
    ("localhost", 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .expect("localhost resolves")
}

/// `--help` prints the usage (with the default address) and exits 0.
pub fn help_exits_zero(bin: &Path) {
    Command::new(bin)
        .arg("--help")
        .timeout(TIMEOUT)
        .assert()
        .success()
        .stdout(predicate::str::contains("usage:").and(predicate::str::contains("127.0.0.1:8080")));
}

/// A bad argument prints the usage to stderr and exits 2.
pub fn bad_argument_exits_two(bin: &Path) {
    for bad in ["--no-such-flag", "not-an-address"] {
        Command::new(bin)
            .arg(bad)
            .timeout(TIMEOUT)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("usage:"));
    }
}

/// A port in use is one clear line on stderr and exit 1, never a panic.
pub fn port_in_use_is_a_clear_error(bin: &Path) {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    Command::new(bin)
        .arg(&addr)
        .timeout(TIMEOUT)
        .assert()
        .code(1)
        .stderr(
            predicate::str::starts_with(format!(
                "error: cannot bind {addr}: Address already in use"
            ))
            .and(predicate::str::contains("panicked").not()),
        );
}

/// Each connection is logged on stderr with its fd and peer, open and close.
pub fn logs_each_connection(bin: &Path, probe: Probe) {
    let server = Server::start(bin, &["127.0.0.1:0"]);
    let mut client = server.connect();
    probe(&mut client);
    let peer = client.stream.local_addr().unwrap();
    server.wait_stderr(&format!("from {peer}"));
    let log = server.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("from {peer}")))
        .unwrap();
    let fd: u32 = line
        .strip_prefix("accepted fd ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|fd| fd.parse().ok())
        .unwrap_or_else(|| panic!("expected `accepted fd N from {peer}`, got {line:?}"));
    drop(client);
    server.wait_log(
        &format!("`closed fd {fd} (REASON)` after the client hung up"),
        |log| log.contains(&format!("closed fd {fd}")),
    );
}

/// `-q` silences the connection log.
pub fn quiet_silences_the_log(bin: &Path, probe: Probe) {
    let server = Server::start(bin, &["-q", "127.0.0.1:0"]);
    probe(&mut server.connect());
    let log = server.stop();
    assert!(
        !log.contains("accepted"),
        "with -q the server still logged its connections:\n{log}"
    );
}

/// A refused connection is one clear line on stderr and exit 1.
pub fn client_refused_is_a_clear_error(bin: &Path) {
    let addr = format!("127.0.0.1:{}", closed_port());
    Command::new(bin)
        .arg(&addr)
        .write_stdin("hello\n")
        .timeout(TIMEOUT)
        .assert()
        .code(1)
        .stderr(
            predicate::str::starts_with(format!(
                "error: cannot connect to {addr}: Connection refused"
            ))
            .and(predicate::str::contains("panicked").not()),
        );
}

/// A client given `localhost:PORT` connects to the address the name
/// resolves to, sends its input and prints what comes back.
pub fn client_connects_to_a_host_name(bin: &Path) {
    let listener = TcpListener::bind(localhost()).expect("bind a listener on localhost");
    let port = listener.local_addr().unwrap().port();
    // A one-connection echo server: it sends back what it reads until
    // end-of-file, then closes.
    let echo = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            stream.write_all(&buf[..n]).unwrap();
        }
    });
    Command::new(bin)
        .arg(format!("localhost:{port}"))
        .write_stdin("hello\n")
        .timeout(TIMEOUT)
        .assert()
        .success()
        .stdout(predicate::str::contains("hello"));
    echo.join().unwrap();
}

/// One test per server convention, for the binary `$bin` and probe `$probe`.
#[macro_export]
macro_rules! server_conventions {
    ($bin:expr, $probe:expr) => {
        mod conventions {
            use super::*;
            use $crate::conventions as c;
            #[test]
            fn port_zero_prints_the_real_port() {
                c::port_zero_prints_the_real_port(&$bin, $probe)
            }
            #[test]
            fn serves_ipv6_loopback() {
                c::serves_ipv6_loopback(&$bin, $probe)
            }
            #[test]
            fn listens_on_a_host_name() {
                c::listens_on_a_host_name(&$bin, $probe)
            }
            #[test]
            fn help_exits_zero() {
                c::help_exits_zero(&$bin)
            }
            #[test]
            fn bad_argument_exits_two() {
                c::bad_argument_exits_two(&$bin)
            }
            #[test]
            fn port_in_use_is_a_clear_error() {
                c::port_in_use_is_a_clear_error(&$bin)
            }
            #[test]
            fn logs_each_connection() {
                c::logs_each_connection(&$bin, $probe)
            }
            #[test]
            fn quiet_silences_the_log() {
                c::quiet_silences_the_log(&$bin, $probe)
            }
        }
    };
}

/// One test per client convention, for the binary `$bin`.
#[macro_export]
macro_rules! client_conventions {
    ($bin:expr) => {
        mod conventions {
            use super::*;
            use $crate::conventions as c;
            #[test]
            fn help_exits_zero() {
                c::help_exits_zero(&$bin)
            }
            #[test]
            fn bad_argument_exits_two() {
                c::bad_argument_exits_two(&$bin)
            }
            #[test]
            fn refused_connection_is_a_clear_error() {
                c::client_refused_is_a_clear_error(&$bin)
            }
            #[test]
            fn connects_to_a_host_name() {
                c::client_connects_to_a_host_name(&$bin)
            }
        }
    };
}

/// The probe for echo servers: a few bytes come back unchanged.
pub fn echo_probe(client: &mut Client) {
    try_echo_probe(client).unwrap_or_else(|e| panic!("{e}"));
}

/// [`echo_probe`] for a test that says what a failure means.
pub fn try_echo_probe(client: &mut Client) -> Result<(), ReadFailure> {
    client.send(b"ping\n");
    client.try_recv_echo(b"ping\n")
}

/// The probe for chat servers: a fresh client is welcomed by name.
pub fn welcome_probe(client: &mut Client) {
    let line = client.recv_line();
    assert!(
        line.starts_with("* welcome client"),
        "{} expected `* welcome clientN ...` as its first line, got {line:?}",
        client.name()
    );
}
