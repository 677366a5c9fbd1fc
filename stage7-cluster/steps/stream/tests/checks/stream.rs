//! The checks of stage 7b, two servers as one chat: a line sent on one
//! reaches the clients of the other once, in order, and the clients are
//! told when the servers lose each other. Each check starts a
//! `redis-server` of its own and two servers with `--redis`, and kills
//! them all at its end. Every later step runs them too (this file is
//! included by path), against its own binary.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::Client;
use testkit::redis::Redis;

use super::link::{chat_line, join, node};

/// Wait until what `from` (named `from_name`) sends reaches `to`, a client
/// of another server: a server reads the stream from where it ends when it
/// connects, so lines sent before that never come. `from` sends `probe N`
/// until `to` hears something, then `to` reads up to the last probe sent.
pub fn wait_crossing(from: &mut Client, to: &mut Client, from_name: &str) {
    // Probes of every wait are told apart: a later step may append again
    // what a Redis that restarted lost.
    static WAITS: AtomicUsize = AtomicUsize::new(0);
    let probe = format!("probe {}.", WAITS.fetch_add(1, Ordering::Relaxed));
    let mut sent = 0;
    testkit::wait_until(
        &format!("lines from {from_name} reach a client of the other server"),
        || {
            sent += 1;
            from.send(format!("{probe}{sent}\n").as_bytes());
            // A wait on the socket, not a sleep. The byte it takes is the
            // first of a line whose end is all that is read below.
            to.try_expect_silence(Duration::from_millis(20)).is_err()
        },
    );
    let last = format!(": {probe}{sent}");
    to.recv_line_until(|l| l.ends_with(&last));
}

#[test]
fn a_line_on_one_server_reaches_the_clients_of_the_other_once_in_order() {
    const LINES: usize = 300;
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, a_name) = join(&a);
    let (mut also_on_a, _) = join(&a);
    let (mut on_b, b_name) = join(&b);
    wait_crossing(&mut on_a, &mut on_b, &a_name);
    wait_crossing(&mut on_b, &mut also_on_a, &b_name);
    let batch: String = (0..LINES).map(|n| format!("line {n}\n")).collect();
    on_a.send(batch.as_bytes());
    for n in 0..LINES {
        assert_eq!(chat_line(&mut on_b), format!("{a_name}: line {n}"));
    }
    on_b.send(b"from b\n");
    // The client beside the sender has each line once: from its server,
    // at once, and not again when the server reads its own entry back.
    for n in 0..LINES {
        assert_eq!(chat_line(&mut also_on_a), format!("{a_name}: line {n}"));
    }
    assert_eq!(
        chat_line(&mut also_on_a),
        format!("{b_name}: from b"),
        "a server must skip its own entries in the stream"
    );
}

#[test]
fn the_clients_are_told_when_the_servers_lose_each_other_and_when_they_are_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, a_name) = join(&a);
    let (mut on_b, b_name) = join(&b);
    wait_crossing(&mut on_a, &mut on_b, &a_name);
    wait_crossing(&mut on_b, &mut on_a, &b_name);
    redis.stop();
    for client in [&mut on_a, &mut on_b] {
        client.recv_line_until(|l| l == "* lost contact with the other servers");
    }
    // A new, empty Redis on the same port: both servers connect again.
    redis.start_again();
    for client in [&mut on_a, &mut on_b] {
        client.recv_line_until(|l| l == "* back in contact");
    }
    wait_crossing(&mut on_a, &mut on_b, &a_name);
    on_a.send(b"after the restart\n");
    assert_eq!(chat_line(&mut on_b), format!("{a_name}: after the restart"));
}
