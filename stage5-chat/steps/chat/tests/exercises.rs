//! Checks for the chapter's feature exercises, ignored until you build the
//! feature: `cargo test -p stage5b-chat --test exercises -- --ignored`
//! (with `STAGE5B_BIN=/path/to/your/server` for your own build). This step
//! as it is fails them; a solution is in `exercises/stage5b/`.

use std::path::PathBuf;

use testkit::{Client, Server};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5B_BIN", env!("CARGO_BIN_EXE_stage5b-chat"))
}

/// Connect a client, read its welcome and return it with its name.
fn join(server: &Server, what: &str) -> (Client, String) {
    let mut client = server.connect_named(what);
    let welcome = client.recv_line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{what} expected `* welcome NAME ...`, got {welcome:?}"))
        .to_string();
    (client, name)
}

#[test]
#[ignore = "exercise: rate limit"]
fn a_flood_of_lines_is_cut_short_with_slow_down() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let (mut flooder, flooder_name) = join(&server, "the client that sends 100 lines at once");
    let (mut reader, _) = join(&server, "the client that reads them");
    let (mut marker, marker_name) = join(&server, "the client that speaks after them");

    let lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
    flooder.send(lines.as_bytes());
    let error = first_error(&mut flooder);
    assert!(
        error.as_deref() == Some("* error: slow down"),
        "{} sent 100 lines in one write and expected `* error: slow down` for the excess, got \
         {}: does each client have a token bucket, and is a line without a token answered \
         instead of relayed?",
        flooder.name(),
        error.unwrap_or_else(|| "nothing".to_string())
    );

    // The flood was read in one go; a line from someone else after it
    // marks the end of what was relayed.
    marker.send(b"after the flood\n");
    let (mut relayed, end) = (0, format!("{marker_name}: after the flood"));
    loop {
        let line = reader.recv_line();
        if line == end {
            break;
        }
        if line.starts_with(&format!("{flooder_name}: line ")) {
            relayed += 1;
        }
    }
    assert!(
        (1..100).contains(&relayed),
        "{} got {relayed} of the 100 lines {flooder_name} sent at once: a burst is relayed up \
         to the bucket's size, and the rest is not",
        reader.name()
    );
}

/// The first line starting with `* error`, skipping notices, or `None` if
/// nothing comes within the timeout.
fn first_error(client: &mut Client) -> Option<String> {
    loop {
        match client.try_recv_line() {
            Ok(line) if line.starts_with("* error") => return Some(line),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}
