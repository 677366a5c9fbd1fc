//! Checks for the chapter's feature exercises, ignored until you build the
//! feature: `cargo test -p stage5e-running --test exercises -- --ignored`
//! (with `STAGE5E_BIN=/path/to/your/server` for your own build). This step
//! as it is fails them; a solution is in `exercises/stage5e/`.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use testkit::Server;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5E_BIN", env!("CARGO_BIN_EXE_stage5e-running"))
}

#[test]
#[ignore = "exercise: idle timeout"]
fn a_client_silent_in_the_middle_of_a_line_is_closed_and_one_that_trickles_is_not() {
    let server = Server::start(server_bin(), &["-q", "--idle-timeout", "1", "127.0.0.1:0"]);
    let mut stalled = server.connect_named("the client that stops in mid-line");
    let mut trickler = server.connect_named("the client that sends a byte at a time");
    for client in [&mut stalled, &mut trickler] {
        client.recv_line_until(|l| l.starts_with("* welcome"));
    }
    stalled.send(b"half a li");

    // A byte every 200 ms for two idle timeouts: never silent for one.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        trickler.send(b"x");
        // The pace of the sender, not a wait for the server.
        thread::sleep(Duration::from_millis(200));
    }
    trickler.send(b"\n/who\n");
    loop {
        let line = trickler.recv_line();
        assert!(
            !line.starts_with("* error"),
            "{} got {line:?}, though it sent a byte every 200 ms with --idle-timeout 1: \
             does every read, not only a whole line, start the idle time again?",
            trickler.name()
        );
        if line.starts_with("* online") {
            break;
        }
    }

    // By now the stalled client has been silent for two seconds.
    // What the others said comes first; then the error line.
    let got = loop {
        match stalled.try_recv_line() {
            Ok(line) if !line.starts_with("* error") => continue,
            other => break other,
        }
    };
    assert!(
        matches!(&got, Ok(line) if line == "* error: idle for too long"),
        "{} sent half a line and then nothing for 2 s with --idle-timeout 1, and expected \
         `* error: idle for too long`, then the close; it got {}: does the server keep when \
         each client last sent a byte, wake for the earliest idle deadline, and end the client \
         with the lingering close?",
        stalled.name(),
        got.map_or_else(|e| e.to_string(), |l| format!("{l:?}"))
    );
    let rest = stalled.try_recv_to_eof();
    assert!(
        rest.is_ok(),
        "{} after its idle error: {}",
        stalled.name(),
        rest.unwrap_err()
    );
}
