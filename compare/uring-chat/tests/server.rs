//! Stage 5's checks, against the io_uring server: the conventions every
//! server follows, and the checks of stage 5's last step (5h) and of every
//! step before it (5a lines, 5b the chat, 5c commands, 5e a server you can
//! leave running, 5g a server at its limits), included by path. Run them
//! against another build with
//! `URING_CHAT_BIN=/path/to/server cargo test -p compare-uring-chat`.
//!
//! Left out, because they inspect epoll, which this server does not use:
//!
//! - `built_checks!` (stage 5h): reads the server's epoll interest list in
//!   `/proc/PID/fdinfo` to check how the listener and the clients are
//!   registered, which an io_uring server has no list for.
//! - From 5b's chat checks (taken out by `build.rs`):
//!   `lines_left_for_a_full_socket_arrive_in_order_without_more_traffic`,
//!   `lines_a_write_found_no_room_for_are_kept_for_epollout_not_dropped` and
//!   `end_of_file_still_gets_every_line_it_is_owed_then_the_close`: each
//!   fills a slow reader's socket until the server asks for `EPOLLOUT` on
//!   it in that same interest list, and never gets there without epoll.
//! - 5h's own check, `lines_that_arrive_together_reach_each_receiver_in_one_write`,
//!   is written in stage 5's test file itself, not in a file of its own,
//!   so it cannot be included by path; half of it counts `write` system
//!   calls (`/proc/PID/io`), which io_uring's `writev` operations do not
//!   make. Its other half, the TCP segments a receiver gets, is checked
//!   below.

mod common;

pub use common::server_bin;

use chat::{join, route, start};

testkit::server_conventions!(server_bin(), testkit::conventions::welcome_probe);

/// Stage 5a's checks: lines.
#[path = "../../../stage5-chat/steps/lines/tests/checks/lines.rs"]
mod lines;

/// Stage 5b's checks: the chat, without the three that read the epoll
/// interest list (see `build.rs`).
#[allow(dead_code)] // the helpers only those three used
mod chat {
    include!(concat!(env!("OUT_DIR"), "/chat.rs"));
}

/// Stage 5c's checks: commands.
#[path = "../../../stage5-chat/steps/commands/tests/checks/commands.rs"]
mod commands;

/// Stage 5e's checks: a server you can leave running.
#[path = "../../../stage5-chat/steps/running/tests/checks/running.rs"]
mod running;

/// Stage 5g's checks: a server at its limits.
#[path = "../../../stage5-chat/steps/limits/tests/checks/limits.rs"]
mod limits;

/// Lines that reach the server together reach each receiver in few TCP
/// segments: the server's one `writev` per client per round, seen from
/// the receiver (a write of its own per line makes many segments,
/// `TCP_NODELAY` or not). Stage 5h's check, less its count of `write`
/// system calls.
#[test]
fn lines_that_arrive_together_reach_each_receiver_in_few_segments() {
    const LINES: u64 = 300;
    /// Rounds a correct server may take for lines that arrive in one segment.
    const ROUNDS: u64 = 4;
    let server = start(&[]);
    let mut c = join(&server, 4);
    let segments_before = c[1].segments_received();
    // About 3 KiB in one write: one segment, one receive.
    let batch: String = (0..LINES).map(|n| format!("line {n}\n")).collect();
    c[0].send(batch.as_bytes());
    for receiver in &mut c[1..] {
        for n in 0..LINES {
            assert_eq!(receiver.recv_line(), format!("client1: line {n}"));
        }
    }
    let segments = u64::from(c[1].segments_received() - segments_before);
    assert!(
        segments <= ROUNDS,
        "{segments} segments for {LINES} lines to one receiver: a write per line"
    );
}
