//! The checks of stage 7c, a cluster that loses nothing silently: a line
//! Redis refused, or never answered, is kept and goes once Redis takes
//! it; lines Redis lost are told with their count; a Redis that stops
//! answering is noticed within seconds. Each check starts a
//! `redis-server` of its own and two servers with `--redis`, reads only
//! what clients receive, and kills them all at its end. Every later step
//! runs them too (this file is included by path), against its own binary.

use std::time::{Duration, Instant};

use testkit::redis::Redis;
use testkit::{Client, Server};

use super::link::{chat_line, join, lines_from, node};
use super::stream::wait_crossing;

/// Two servers on one Redis, a client on each, lines crossing both ways.
fn two_nodes(redis: &Redis) -> (Server, Server, [(Client, String); 2]) {
    let (a, b) = (node(redis), node(redis));
    let (mut on_a, a_name) = join(&a);
    let (mut on_b, b_name) = join(&b);
    wait_crossing(&mut on_a, &mut on_b, &a_name);
    wait_crossing(&mut on_b, &mut on_a, &b_name);
    (a, b, [(on_a, a_name), (on_b, b_name)])
}

/// A notice that lines were lost, with their count: `* 1,287 lines from
/// server NODE were lost` -> 1287.
fn lost_count(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("* ")?;
    if !rest.contains(" lost") {
        return None;
    }
    let count: String = rest.split(' ').next()?.replace(',', "");
    count.parse().ok()
}

#[test]
fn a_line_redis_refused_is_kept_and_goes_once_redis_takes_writes_again() {
    let Some(redis) = Redis::start() else { return };
    let (_a, _b, [(mut on_a, a_name), (mut on_b, _)]) = two_nodes(&redis);
    redis.refuse_writes();
    on_a.send(b"kept 0\n");
    // The refusal is a lost contact, and the line waits in the backlog:
    // its sender is not told it cannot go.
    let told = on_a.recv_line_until(|l| l.starts_with("* "));
    assert_eq!(told, "* lost contact with the other servers");
    on_a.send(b"kept 1\nkept 2\n");
    redis.accept_writes();
    for n in 0..3 {
        assert_eq!(
            chat_line(&mut on_b),
            format!("{a_name}: kept {n}"),
            "a line Redis refused must go, once and in order, when it takes writes again"
        );
    }
    on_a.recv_line_until(|l| l == "* back in contact");
}

#[test]
fn lines_lost_by_a_redis_restarted_empty_are_told_with_their_count() {
    const LINES: usize = 5;
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (_a, b, [(mut on_a, a_name), (mut on_b, _)]) = two_nodes(&redis);
    // B stops reading; Redis takes A's lines, then dies with them.
    b.pause();
    let lines: String = (0..LINES).map(|n| format!("gone {n}\n")).collect();
    on_a.send(lines.as_bytes());
    testkit::wait_until("Redis has A's lines", || {
        lines_from(&redis, &format!("{a_name}: gone ")).len() == LINES
    });
    redis.stop();
    redis.start_again();
    b.signal(libc::SIGCONT);
    on_a.recv_line_until(|l| l == "* back in contact");
    // B reads on from the last entry it read, so this comes whenever B
    // is back; what lay between comes (a later step appends again what
    // Redis lost) or is counted, never skipped silently.
    on_a.send(b"after\n");
    let (mut received, mut told) = (0, 0);
    loop {
        let line = on_b.recv_line();
        if line.ends_with(": after") {
            break;
        }
        if line.contains(": gone ") {
            received += 1;
        }
        told += lost_count(&line).unwrap_or(0);
    }
    assert_eq!(
        received + told,
        LINES,
        "of A's {LINES} lines that Redis lost, B's client got {received} and was told of {told}"
    );
}

/// A node with a request out at least every second, waiting about 3 s
/// for each reply, notices a silent Redis within this (with room for a
/// loaded machine).
const NOTICED_WITHIN: Duration = Duration::from_secs(7);

#[test]
fn a_frozen_redis_is_noticed_within_seconds_and_the_lines_meanwhile_go_after() {
    let Some(redis) = Redis::start() else { return };
    let (_a, _b, [(mut on_a, a_name), (mut on_b, _)]) = two_nodes(&redis);
    // SIGSTOP: Redis keeps its connections and answers nothing.
    redis.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let told = on_a.recv_line_until(|l| l.starts_with("* "));
    assert_eq!(told, "* lost contact with the other servers");
    let took = frozen.elapsed();
    assert!(took < NOTICED_WITHIN, "noticed after {took:?}");
    on_a.send(b"meanwhile\n");
    redis.signal(libc::SIGCONT);
    assert_eq!(
        chat_line(&mut on_b),
        format!("{a_name}: meanwhile"),
        "a line sent while Redis was frozen must go once it answers"
    );
}
