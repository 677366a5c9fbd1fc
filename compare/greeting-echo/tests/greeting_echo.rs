//! Checks for the greeting echo baseline: it follows the same conventions
//! as the stages, greets every client before anything else, and then
//! echoes like stage 4, so the connect rounds compare it fairly with the
//! chat. Run them against another build with
//! `GREETING_ECHO_BIN=/path/to/server cargo test -p compare-greeting-echo`.

use std::path::PathBuf;

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("GREETING_ECHO_BIN", env!("CARGO_BIN_EXE_greeting-echo"))
}

const GREETING: &str = "* welcome, every byte comes back";

/// The probe: the greeting first, then an echo.
fn greeting_probe(client: &mut Client) {
    assert_eq!(client.recv_line(), GREETING);
    echo_probe(client);
}

testkit::server_conventions!(bin(), greeting_probe);
testkit::fault_checks!(bin(), greeting_probe);

#[test]
fn the_greeting_comes_before_any_echo() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut client = server.connect();
    // Sent before the greeting is read: the echo must still come after it.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    client.send(&data);
    assert_eq!(client.recv_line(), GREETING);
    assert_eq!(client.recv_exact(data.len()), data);
}

#[test]
fn every_client_is_greeted_once() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut clients: Vec<Client> = (0..200).map(|_| server.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate().rev() {
        assert_eq!(client.recv_line(), GREETING);
        let msg = format!("client {i}\n");
        client.send(msg.as_bytes());
        // The next bytes are the echo, not a second greeting.
        assert_eq!(client.recv_exact(msg.len()), msg.as_bytes());
    }
}
