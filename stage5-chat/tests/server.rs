//! Exercise checks for the stage 5 chat server: the checks of every step
//! before it (5a lines, 5b the chat, 5c commands, 5e a server you can leave
//! running, 5g a server at its limits), and its own. Run them against
//! your own server with
//! `STAGE5_SERVER_BIN=/path/to/your/server cargo test -p stage5-chat`.

use std::path::PathBuf;

use testkit::built::{Design, EPOLLET, EPOLLIN, EPOLLRDHUP, Interest, Load, Meanwhile};

use chat::{join, route, start};

fn server_bin() -> PathBuf {
    testkit::bin("STAGE5_SERVER_BIN", env!("CARGO_BIN_EXE_server"))
}

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// How the chat is built: one thread, the listener edge-triggered, every
/// client edge-triggered with `EPOLLRDHUP`, and a client that never reads
/// dropped before what it is owed grows without bound.
const DESIGN: Design = Design {
    stage: "stage 5h",
    listener: Interest::at_least(EPOLLIN | EPOLLET),
    clients: Interest::at_least(EPOLLIN | EPOLLET | EPOLLRDHUP),
    load: Load::Chat,
    meanwhile: Meanwhile::Served,
};
testkit::built_checks!(server_bin(), testkit::conventions::welcome_probe, DESIGN);

/// Stage 5a's checks: lines.
#[path = "../steps/lines/tests/checks/lines.rs"]
mod lines;

/// Stage 5b's checks: the chat.
#[path = "../steps/chat/tests/checks/chat.rs"]
mod chat;

/// Stage 5c's checks: commands.
#[path = "../steps/commands/tests/checks/commands.rs"]
mod commands;

/// Stage 5e's checks: a server you can leave running.
#[path = "../steps/running/tests/checks/running.rs"]
mod running;

/// Stage 5g's checks: a server at its limits.
#[path = "../steps/limits/tests/checks/limits.rs"]
mod limits;

// ---------------------------------------------------------------------
// Its own: fewer system calls.

/// Lines that reach the server together reach each receiver in one write
/// (a few, for a server that takes them in a few rounds): counted by the
/// server's `write`/`writev` calls (`/proc/PID/io`) and, for a server that
/// uses `send`, which that count leaves out, by the TCP segments a receiver
/// gets (a write of its own per line makes many, `TCP_NODELAY` or not).
#[test]
fn lines_that_arrive_together_reach_each_receiver_in_one_write() {
    const LINES: u64 = 300;
    /// Rounds a correct server may take for lines that arrive in one segment.
    const ROUNDS: u64 = 4;
    let server = start(&[]);
    let mut c = join(&server, 4);
    let writes_before = server.write_calls();
    let segments_before = c[1].segments_received();
    // About 3 KiB in one write: one segment, one read.
    let batch: String = (0..LINES).map(|n| format!("line {n}\n")).collect();
    c[0].send(batch.as_bytes());
    for receiver in &mut c[1..] {
        for n in 0..LINES {
            assert_eq!(receiver.recv_line(), format!("client1: line {n}"));
        }
    }
    let writes = server.write_calls() - writes_before;
    let segments = u64::from(c[1].segments_received() - segments_before);
    assert!(
        writes <= ROUNDS * 3,
        "{writes} write calls for {LINES} lines to 3 receivers: a write per line"
    );
    assert!(
        segments <= ROUNDS,
        "{segments} segments for {LINES} lines to one receiver: a write per line"
    );
}
