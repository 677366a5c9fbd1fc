//! Checks for the chapter's feature exercises, ignored until you build the
//! feature: `cargo test -p stage5a-lines --test exercises -- --ignored`
//! (with `STAGE5A_BIN=/path/to/your/server` for your own build). This step
//! as it is fails them; a solution is in `exercises/stage5a/`.

use std::path::PathBuf;

use testkit::Server;

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5A_BIN", env!("CARGO_BIN_EXE_stage5a-lines"))
}

#[test]
#[ignore = "exercise: quit"]
fn a_quit_line_ends_the_connection_and_nothing_after_it_is_echoed() {
    let server = Server::start(server_bin(), &["127.0.0.1:0"]);
    let mut client = server.connect();
    let fd = server.fd_of(&client);
    // One write, so the lines after `quit` arrive in the same read as it.
    client.send(b"a\nquits\nquit\nb\n");
    for line in ["a", "quits"] {
        let got = client.try_recv_line();
        assert!(
            matches!(&got, Ok(got) if got == line),
            "the echo of the line {line:?} before `quit` did not come back ({}): \
             are the lines before `quit` still echoed, and only the exact line `quit` ends \
             the connection?",
            got.map_or_else(|e| e.to_string(), |l| format!("{l:?}"))
        );
    }
    let rest = client.try_recv_to_eof();
    assert!(
        rest.as_ref().is_ok_and(|rest| rest.is_empty()),
        "after the line `quit` the client expected the server to close the connection with \
         nothing more, but: {}: does `handle_line` stop the framer (ControlFlow::Break) at \
         `quit`, and does the server drop the rest of that read and end the client?",
        match &rest {
            Ok(rest) => format!("{:?} came first", String::from_utf8_lossy(rest)),
            Err(e) => e.to_string(),
        }
    );
    server.wait_stderr(&format!("closed fd {fd} (quit)\n"));
}
