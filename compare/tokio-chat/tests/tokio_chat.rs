//! Checks for the tokio chat baseline: it follows the same conventions and
//! speaks the same protocol as stage 5, so the benchmark compares like
//! with like. Run them against another build with
//! `TOKIO_CHAT_BIN=/path/to/server cargo test -p compare-tokio-chat`.

use std::path::PathBuf;

use testkit::conventions::welcome_probe;
use testkit::faults::Reply;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("TOKIO_CHAT_BIN", env!("CARGO_BIN_EXE_tokio-chat"))
}

testkit::server_conventions!(bin(), welcome_probe);
testkit::fault_checks!(bin(), welcome_probe, Reply::Nothing);

/// Connect and read the welcome; returns the client and its name.
fn join(server: &Server) -> (Client, String) {
    let mut client = server.connect();
    let welcome = client.recv_line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("expected `* welcome NAME (N online)`, got {welcome:?}"))
        .to_string();
    (client, name)
}

#[test]
fn welcomes_with_a_name_and_the_count_and_announces_the_newcomer() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut a = server.connect();
    assert_eq!(a.recv_line(), "* welcome client1 (1 online)");
    let mut b = server.connect();
    assert_eq!(b.recv_line(), "* welcome client2 (2 online)");
    assert_eq!(a.recv_line(), "* client2 joined");
}

#[test]
fn relays_a_line_to_everyone_but_its_sender() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, name_a) = join(&server);
    let (mut b, name_b) = join(&server);
    let (mut c, name_c) = join(&server);
    assert_eq!(a.recv_line(), format!("* {name_b} joined"));
    assert_eq!(a.recv_line(), format!("* {name_c} joined"));
    assert_eq!(b.recv_line(), format!("* {name_c} joined"));

    a.send(b"hello\tall \x1b[2J\r\n");
    let expected = format!("{name_a}: hello\tall ?[2J");
    assert_eq!(b.recv_line(), expected);
    assert_eq!(c.recv_line(), expected);
    // The sender gets nothing back: its next line is the reply to /who.
    a.send(b"/who\n");
    assert!(a.recv_line().starts_with("* online: "));
}

#[test]
fn c1_controls_become_question_marks_in_utf8_and_as_lone_bytes() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, _) = join(&server);
    let (mut b, name_b) = join(&server);
    a.recv_line(); // b joined

    // U+009B (CSI) in UTF-8 and a lone byte 0x9B are both `ESC [` to a
    // terminal that honours 8-bit controls; `é`, C2 A0 and an emoji pass.
    b.send(b"caf\xc3\xa9 \xc2\x9b31mred \x9b2J \xc2\xa0\xf0\x9f\x98\x80\n");
    let expected = [
        name_b.as_bytes(),
        b": caf\xc3\xa9 ?31mred ?2J \xc2\xa0\xf0\x9f\x98\x80\n",
    ]
    .concat();
    assert_eq!(a.recv_exact(expected.len()), expected);
}

#[test]
fn nick_renames_for_everyone_and_refuses_bad_or_taken_names() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, name_a) = join(&server);
    let (mut b, name_b) = join(&server);
    a.recv_line(); // b joined

    a.send(b"/nick alice\n");
    let renamed = format!("* {name_a} is now alice");
    assert_eq!(a.recv_line(), renamed);
    assert_eq!(b.recv_line(), renamed);

    b.send(b"/nick alice\n");
    assert!(b.recv_line().starts_with("* error: "));
    b.send(b"/nick bad!name\n");
    assert!(b.recv_line().starts_with("* error: "));

    b.send(b"/who\n");
    assert_eq!(b.recv_line(), format!("* online: alice, {name_b}"));
    b.send(b"hi\n");
    assert_eq!(a.recv_line(), format!("{name_b}: hi"));
}

#[test]
fn quit_says_bye_closes_and_tells_the_others() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, _) = join(&server);
    let (mut b, name_b) = join(&server);
    a.recv_line(); // b joined

    b.send(b"/quit\n");
    assert_eq!(b.recv_line(), "* bye");
    assert_eq!(b.recv_to_eof(), b"");
    assert_eq!(a.recv_line(), format!("* {name_b} left"));
}

#[test]
fn unknown_command_is_an_error_to_the_sender() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, _) = join(&server);
    a.send(b"/dance now\n");
    assert_eq!(a.recv_line(), "* error: unknown command /dance");
}

#[test]
fn a_line_over_the_limit_is_an_error_then_a_close() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let (mut a, _) = join(&server);
    let (mut b, name_b) = join(&server);
    a.recv_line(); // b joined

    // Exactly the limit is fine.
    let mut ok = vec![b'x'; 4096];
    ok.push(b'\n');
    b.send(&ok);
    assert_eq!(a.recv_line().len(), name_b.len() + 2 + 4096);

    let mut long = vec![b'x'; 10_000];
    long.push(b'\n');
    b.send(&long);
    assert_eq!(b.recv_line(), "* error: line too long (max 4096 bytes)");
    assert_eq!(b.recv_to_eof(), b"");
    assert_eq!(a.recv_line(), format!("* {name_b} left"));
}

#[test]
fn a_full_server_says_so_and_closes() {
    let server = Server::start(bin(), &["-q", "--max-clients", "2", "127.0.0.1:0"]);
    let _a = join(&server);
    let _b = join(&server);
    let mut c = server.connect();
    assert_eq!(c.recv_line(), "* error: server full");
    assert_eq!(c.recv_to_eof(), b"");
}

#[test]
fn sigterm_tells_everyone_and_exits_zero() {
    let mut server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut clients: Vec<Client> = (0..3).map(|_| join(&server).0).collect();
    server.signal(libc::SIGTERM);
    for client in &mut clients {
        client.recv_line_until(|l| l == "* server shutting down");
        assert_eq!(client.recv_to_eof(), b"");
    }
    assert!(server.wait_exit().success());
}

#[test]
fn a_client_that_never_reads_is_dropped_as_too_slow() {
    let server = Server::start(bin(), &["-q", "--max-queue", "262144", "127.0.0.1:0"]);
    let (mut talker, _) = join(&server);
    let (mut sleeper, name) = join(&server);
    talker.recv_line(); // the sleeper joined
    // 12 MB: more than the kernel's socket buffers (a few MB on loopback)
    // plus the 256 KiB queue, so the sleeper's queue must overflow.
    let text = vec![b'z'; 999];
    for _ in 0..12_000 {
        talker.send(&[&text[..], b"\n"].concat());
    }
    // The talker hears only notices, so this is the next line it gets.
    assert_eq!(talker.recv_line(), format!("* {name} left (too slow)"));
    // The sleeper's connection was closed after what the kernel held.
    let held = sleeper.recv_to_eof();
    assert!(held.len() < 12_000 * 1000, "got {} bytes", held.len());
}

#[test]
fn no_join_notices_above_the_announce_limit() {
    let server = Server::start(bin(), &["-q", "--announce-limit", "1", "127.0.0.1:0"]);
    let (mut a, _) = join(&server);
    let mut b = server.connect();
    // The newcomer's welcome still gives the count.
    assert_eq!(b.recv_line(), "* welcome client2 (2 online)");
    b.send(b"hi\n");
    // Had a join notice gone out, it would have come before this line.
    assert_eq!(a.recv_line(), "client2: hi");
}
