//! The checks of stage 5a, lines: whatever the reads look like, a client's
//! lines come out whole, one for each `\n`, and a line over the limit ends
//! the connection. Every later step runs them too (this file is included by
//! path), against its own binary: the test file that includes it defines
//! `server_bin()`, and `route(&Server) -> Route`, which says where a line
//! that a client sends comes out (back at the sender in this step, at
//! another client once the server is a chat).

use std::time::Duration;

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

use super::{route, server_bin};

/// How long a line that is not whole yet must stay unseen. A server that
/// sends each piece as it reads it sends it at once, well within this.
const NOT_YET: Duration = Duration::from_millis(200);

/// Where a line that a client sends comes out.
// Each step's test file builds one of the two; the other is never built there.
#[allow(dead_code)]
pub enum Route {
    /// Back at the sender, as it was sent: the echo of stage 5a.
    Echo { sender: Client },
    /// At another client, after the sender's name (`NAME: text`): the chat.
    Relay {
        sender: Client,
        sender_name: String,
        receiver: Client,
        receiver_name: String,
    },
}

impl Route {
    /// The client whose lines the checks follow.
    pub fn sender(&mut self) -> &mut Client {
        match self {
            Route::Echo { sender } | Route::Relay { sender, .. } => sender,
        }
    }

    /// Send `bytes` from the sender, as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.sender().send(bytes);
    }

    /// The next line out of the route is the sender's line `text`.
    pub fn expect(&mut self, text: &str) {
        let (out, expected) = match self {
            Route::Echo { sender } => (sender, text.to_string()),
            Route::Relay {
                sender_name,
                receiver,
                ..
            } => (receiver, format!("{sender_name}: {text}")),
        };
        assert_eq!(out.recv_line(), expected);
    }

    /// Nothing comes out of the route for a while: the sender's line is not
    /// whole yet, so none of it may be sent on.
    pub fn expect_nothing_yet(&mut self) {
        let out = match self {
            Route::Echo { sender } => sender,
            Route::Relay { receiver, .. } => receiver,
        };
        out.try_expect_silence(NOT_YET).unwrap_or_else(|e| {
            panic!("{e}: a line goes on only once its `\\n` has come, whole, never piece by piece")
        });
    }

    /// Another client is served while the sender's line is half sent: in an
    /// echo a new client gets its own line back; in a chat the receiver's
    /// line reaches the sender.
    pub fn expect_others_served(&mut self, server: &Server) {
        match self {
            Route::Echo { .. } => echo_probe(&mut server.connect_named("another client")),
            Route::Relay {
                sender,
                receiver,
                receiver_name,
                ..
            } => {
                receiver.send(b"meanwhile\n");
                assert_eq!(sender.recv_line(), format!("{receiver_name}: meanwhile"));
            }
        }
    }
}

/// Start a quiet server on a free port with extra `flags`, and the route
/// of its first client's lines.
fn open(flags: &[&str]) -> (Server, Route) {
    let mut args = vec!["-q"];
    args.extend_from_slice(flags);
    args.push("127.0.0.1:0");
    let server = Server::start(server_bin(), &args);
    let route = route(&server);
    (server, route)
}

// ---------------------------------------------------------------------
// Framing: whatever the reads look like, the lines are the same.

#[test]
fn a_line_sent_one_byte_at_a_time_arrives_whole() {
    let (_server, mut route) = open(&[]);
    route.sender().stream.set_nodelay(true).unwrap();
    for byte in b"one byte at a time" {
        route.send(&[*byte]);
    }
    route.expect_nothing_yet();
    route.send(b"\n");
    route.expect("one byte at a time");
}

#[test]
fn a_line_split_across_writes_arrives_whole() {
    let (server, mut route) = open(&[]);
    route.sender().stream.set_nodelay(true).unwrap();
    route.send(b"hel");
    route.send(b"lo wo");
    // The others are served while the line is half sent.
    route.expect_others_served(&server);
    route.expect_nothing_yet();
    route.send(b"rld\n");
    route.expect("hello world");
}

#[test]
fn several_lines_in_one_write_arrive_as_several_lines_and_the_rest_waits() {
    let (_server, mut route) = open(&[]);
    route.sender().stream.set_nodelay(true).unwrap();
    route.send(b"one\ntwo\nthr");
    route.expect("one");
    route.expect("two");
    // The start of the third line is kept for the next read.
    route.expect_nothing_yet();
    route.send(b"ee\n");
    route.expect("three");
}

#[test]
fn crlf_endings_are_accepted_and_empty_lines_ignored() {
    let (_server, mut route) = open(&[]);
    route.send(b"from windows\r\n\n\r\n\r\nafter the empty lines\n");
    route.expect("from windows");
    route.expect("after the empty lines");
}

// ---------------------------------------------------------------------
// The line limit.

#[test]
fn a_line_over_the_limit_is_an_error_then_a_close() {
    let (_server, mut route) = open(&["--max-line", "16"]);
    route.send(format!("{}\n", "x".repeat(16)).as_bytes());
    route.expect(&"x".repeat(16));
    // The `\r` of a `\r\n` ending does not count.
    route.send(format!("{}\r\n", "w".repeat(16)).as_bytes());
    route.expect(&"w".repeat(16));
    route.send(format!("{}\n", "y".repeat(17)).as_bytes());
    let sender = route.sender();
    assert_eq!(sender.recv_line(), "* error: line too long (max 16 bytes)");
    assert_eq!(
        sender.recv_to_eof(),
        b"",
        "the server closes after the error"
    );
}

#[test]
fn the_default_line_limit_is_4096_bytes() {
    let (_server, mut route) = open(&[]);
    route.send(format!("{}\r\n", "a".repeat(4096)).as_bytes());
    route.expect(&"a".repeat(4096));
    route.send(format!("{}\n", "b".repeat(4097)).as_bytes());
    let sender = route.sender();
    assert_eq!(
        sender.recv_line(),
        "* error: line too long (max 4096 bytes)"
    );
    assert_eq!(
        sender.recv_to_eof(),
        b"",
        "the server closes after the error"
    );
}

#[test]
fn a_line_over_the_limit_is_refused_before_its_newline_comes() {
    let (_server, mut route) = open(&["--max-line", "16"]);
    // No `\n` will come: a server that waits for one before it checks the
    // length buffers whatever a client sends, and never answers.
    route.send(&[b'z'; 1000]);
    let sender = route.sender();
    assert_eq!(sender.recv_line(), "* error: line too long (max 16 bytes)");
    assert_eq!(
        sender.recv_to_eof(),
        b"",
        "the server closes after the error"
    );
}
