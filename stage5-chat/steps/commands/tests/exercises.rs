//! Checks for the chapter's feature exercises, ignored until you build the
//! feature: `cargo test -p stage5c-commands --test exercises -- --ignored`
//! (with `STAGE5C_BIN=/path/to/your/server` for your own build). This step
//! as it is fails them; the solutions are in `exercises/stage5c/`.

use std::path::PathBuf;

use testkit::{Client, Server};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5C_BIN", env!("CARGO_BIN_EXE_stage5c-commands"))
}

/// Connect `n` clients one after the other, each welcomed before the next
/// connects; returns them with the names their welcomes gave them.
fn join(server: &Server, n: usize) -> Vec<(Client, String)> {
    (1..=n)
        .map(|i| {
            let mut client = server.connect_named(format!("client {i} of {n}"));
            let welcome = client.recv_line();
            let name = welcome
                .strip_prefix("* welcome ")
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| {
                    panic!(
                        "{} expected `* welcome NAME ...`, got {welcome:?}",
                        client.name()
                    )
                })
                .to_string();
            (client, name)
        })
        .collect()
}

/// Read lines until the first that `is_it` accepts; panics, saying so, if
/// one of the lines before it is `forbidden`.
fn next_line_skipping_notices(
    client: &mut Client,
    is_it: impl Fn(&str) -> bool,
    forbidden: impl Fn(&str) -> bool,
    what_it_means: &str,
) -> String {
    loop {
        let line = client.recv_line();
        assert!(
            !forbidden(&line),
            "{} got {line:?}: {what_it_means}",
            client.name()
        );
        if is_it(&line) {
            return line;
        }
    }
}

#[test]
#[ignore = "exercise: private messages"]
fn msg_goes_to_the_one_named_and_no_one_else() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let mut c = join(&server, 3);
    let (sender, to) = (c[0].1.clone(), c[1].1.clone());

    // A line for everyone after the whisper: the one named must get the
    // whisper before it, and the one left out that line with no whisper.
    c[0].0
        .send(format!("/msg {to} psst, a secret\na line for everyone\n").as_bytes());
    let whisper = format!("* {sender} whispers: psst, a secret");
    let public = format!("{sender}: a line for everyone");
    let got = c[1].0.recv_line_until(|l| l == whisper || l == public);
    assert!(
        got == whisper,
        "{to} got {public:?} with no whisper before it: after `/msg {to} psst, a secret`, \
         {to} expected `{whisper}` first: does the server know /msg, and queue the whisper \
         for that one client?"
    );
    let left_out = c[2].1.clone();
    next_line_skipping_notices(
        &mut c[2].0,
        |l| l == public,
        |l| l.contains("whispers") || l.contains("psst"),
        &format!("the whisper to {to} reached {left_out} too"),
    );

    c[0].0.send(b"/msg nobody-here hello?\n");
    let error = c[0].0.recv_line_until(|l| l.starts_with("* error"));
    assert!(
        error == "* error: no such name",
        "{sender} sent `/msg nobody-here hello?` and expected `* error: no such name`, got \
         {error:?}"
    );
}

#[test]
#[ignore = "exercise: rooms"]
fn a_line_reaches_only_the_others_in_its_room() {
    let server = Server::start(server_bin(), &["-q", "127.0.0.1:0"]);
    let mut c = join(&server, 4);
    let names: Vec<String> = c.iter().map(|(_, name)| name.clone()).collect();
    // The first two go to `red`; the last two stay in the lobby.
    for (client, _) in &mut c[..2] {
        client.send(b"/join red\n");
        let answer = client.recv_line_until(|l| !l.ends_with(" joined"));
        assert!(
            answer == "* you are in red",
            "{} sent `/join red` and expected `* you are in red`, got {answer:?}: does the \
             server know /join?",
            client.name()
        );
    }

    c[0].0.send(b"said in red\n");
    let (red, lobby) = c.split_at_mut(2);
    next_line_skipping_notices(
        &mut red[1].0,
        |l| l == format!("{}: said in red", names[0]),
        |l| l.starts_with(&format!("{}: ", names[2])),
        "a line from the lobby reached red",
    );
    // A line from the lobby after the one in red: the lobby must get it
    // with nothing from red before it, and red must not get it at all.
    lobby[0].0.send(b"said in the lobby\n");
    let lobby_line = format!("{}: said in the lobby", names[2]);
    next_line_skipping_notices(
        &mut lobby[1].0,
        |l| l == lobby_line,
        |l| l.contains("said in red"),
        "a line said in red reached a client in the lobby: does relay send a line only to \
         the clients in the sender's room?",
    );
    red[0].0.send(b"said in red again\n");
    next_line_skipping_notices(
        &mut red[1].0,
        |l| l == format!("{}: said in red again", names[0]),
        |l| l.contains("said in the lobby"),
        "a line said in the lobby reached a client in red: does relay send a line only to \
         the clients in the sender's room?",
    );
}
