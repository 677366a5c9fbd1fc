//! The checks of stage 7f, the count of the whole cluster: a client is
//! welcomed with the number of clients on every node, and that number
//! follows who joins and who leaves anywhere. Each check starts a
//! `redis-server` of its own (so numbers count from client1) and servers
//! with `--redis`, reads only what clients receive, and kills them all at
//! its end. Every later step runs them too (this file is included by
//! path), against its own binary.

use testkit::redis::Redis;

use super::link::{join, node};

/// The count in a welcome: `* welcome NAME (COUNT online); ...`.
fn count(welcome: &str) -> &str {
    welcome
        .split_once('(')
        .and_then(|(_, rest)| rest.split_once(" online)"))
        .map_or(welcome, |(count, _)| count)
}

#[test]
fn a_welcome_counts_the_clients_of_every_node() {
    let Some(redis) = Redis::start() else { return };
    // B starts once client1 is in, so it finds client1 when it first looks
    // at the cluster. (A client that joins in that very instant may be
    // counted twice, until a later step's lease sets the count right.)
    let a = node(&redis);
    let (mut on_a, _) = join(&a);
    let b = node(&redis);
    let mut on_b = b.connect();
    let welcome = on_b.recv_line();
    assert_eq!(count(&welcome), "2", "B counts A's client: {welcome}");
    assert_eq!(on_a.recv_line(), "* client2 joined");
    // A learns of B's client from the stream, after it started.
    let mut second_on_a = a.connect();
    let welcome = second_on_a.recv_line();
    assert_eq!(count(&welcome), "3", "A counts B's client: {welcome}");
}

#[test]
fn a_client_that_leaves_another_node_is_no_longer_counted() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, _) = join(&a);
    let (_stays, _) = join(&b);
    assert_eq!(on_a.recv_line(), "* client2 joined");
    let (leaves, _) = join(&b);
    assert_eq!(on_a.recv_line(), "* client3 joined");
    drop(leaves);
    assert_eq!(on_a.recv_line(), "* client3 left");
    // A has read B's leave by now: the stream brought the notice.
    let mut next = a.connect();
    let welcome = next.recv_line();
    let told = "client1, client2 and itself";
    assert_eq!(count(&welcome), "3", "{told}: {welcome}");
}
