//! The checks of stage 7d, numbers for the whole cluster: a client's
//! `client<N>` is unique across every node, its join and its leave are
//! told on every node, and a connection that cannot get a number is told
//! so and closed, not held for ever. Each check starts a `redis-server` of
//! its own (so numbers count from client1) and servers with `--redis`,
//! reads only what clients receive, and kills them all at its end. Every
//! later step runs them too (this file is included by path), against its
//! own binary.

use testkit::redis::Redis;

use super::link::{join, node};

#[test]
fn numbers_are_cluster_wide_and_joins_and_leaves_told_on_every_node() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, first) = join(&a);
    let (on_b, second) = join(&b);
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("client1", "client2"),
        "numbers come from the cluster, in the order the clients came"
    );
    assert_eq!(on_a.recv_line(), "* client2 joined");
    let (_third, third) = join(&a);
    assert_eq!(third, "client3");
    assert_eq!(on_a.recv_line(), "* client3 joined");
    drop(on_b);
    assert_eq!(on_a.recv_line(), "* client2 left");
}

#[test]
fn a_connection_that_cannot_get_a_number_is_told_and_closed() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis);
    let _in = join(&a);
    // Redis holds its connections and answers nothing: no number comes.
    redis.signal(libc::SIGSTOP);
    let mut waiting = a.connect();
    let told = waiting.recv_line();
    assert!(
        told.starts_with("* error"),
        "a connection with no number is told why, not welcomed: {told}"
    );
    // Closed: neither its descriptor nor its --max-clients slot is kept.
    waiting.recv_to_eof();
    redis.signal(libc::SIGCONT);
}
