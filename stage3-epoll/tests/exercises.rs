//! Checks for the chapter's feature exercises, ignored until you build the
//! feature: `cargo test -p stage3-epoll --test exercises -- --ignored`
//! (with `STAGE3_BIN=/path/to/your/server` for your own build). Stage 3 as
//! it is fails them; a solution is in `exercises/stage3/`.

use std::path::PathBuf;

use testkit::Server;
use testkit::conventions::{echo_probe, try_echo_probe};

fn bin() -> PathBuf {
    testkit::bin("STAGE3_BIN", env!("CARGO_BIN_EXE_stage3-epoll"))
}

#[test]
#[ignore = "exercise: max clients"]
fn a_client_beyond_the_limit_is_closed_at_once_and_the_others_served() {
    let server = Server::start(bin(), &["--max-clients", "2", "127.0.0.1:0"]);
    let mut first = server.connect_named("client 1 of 2");
    let mut second = server.connect_named("client 2 of 2");
    echo_probe(&mut first);
    echo_probe(&mut second);
    let fds = server.open_fds();

    let mut third = server.connect_named("the third client, beyond --max-clients 2");
    let refused = third.try_recv_to_eof();
    assert!(
        refused.is_ok(),
        "{}: is a client beyond the limit accepted and closed at once?",
        refused.unwrap_err()
    );
    let now = server.open_fds();
    assert!(
        now == fds,
        "after refusing the third client the server has {now} descriptors open, {fds} before \
         it came: is the refused client's descriptor closed?"
    );
    for client in [&mut first, &mut second] {
        let echo = try_echo_probe(client);
        assert!(
            echo.is_ok(),
            "{} after a third client was refused",
            echo.unwrap_err()
        );
    }

    // Once one leaves there is room again.
    let fd = server.fd_of(&first);
    drop(first);
    server.wait_stderr(&format!("closed fd {fd} (end of file)\n"));
    let mut next = server.connect_named("a client after one of the two left");
    let echo = try_echo_probe(&mut next);
    assert!(
        echo.is_ok(),
        "{}: once a client has left, is a new one served again?",
        echo.unwrap_err()
    );
}
