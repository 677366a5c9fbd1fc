//! The checks of stage 7e, names for the whole cluster: a client's number
//! and name are unique across every node, `/nick` is claimed in Redis
//! while its sender alone waits, and `/who` covers every node. Each check starts a `redis-server` of its own (so numbers
//! count from client1) and servers with `--redis`, reads only what clients
//! receive, and kills them all at its end. Every later step runs them too
//! (this file is included by path), against its own binary.

use testkit::redis::Redis;

use super::link::{join, node};

#[test]
fn names_are_cluster_wide() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis);
    let (mut on_a, _) = join(&a);
    let b = node(&redis);
    let mut on_b = b.connect();
    assert!(
        on_b.recv_line().starts_with("* welcome client2 ("),
        "numbers come from the cluster"
    );
    assert_eq!(on_a.recv_line(), "* client2 joined");
    on_a.send(b"/nick alice\n");
    assert_eq!(on_a.recv_line(), "* client1 is now alice");
    assert_eq!(on_b.recv_line(), "* client1 is now alice");
    on_b.send(b"/nick alice\n");
    assert_eq!(on_b.recv_line(), "* error: the name alice is taken");
    // A name taken on the other node a moment ago, before this node has
    // read about it, is refused by Redis itself.
    on_a.send(b"/nick bob\n");
    on_b.send(b"/nick bob\n");
    let (mut won, mut lost) = (0, 0);
    for (client, old) in [(&mut on_a, "alice"), (&mut on_b, "client2")] {
        // Its own answer; the winner's rename may reach the loser first.
        let mine = format!("* {old} is now bob");
        let refused = "* error: the name bob is taken";
        let line = client.recv_line_until(|l| l == mine || l == refused);
        if line == mine { won += 1 } else { lost += 1 }
    }
    assert_eq!((won, lost), (1, 1), "one claim wins");
}

#[test]
fn a_nick_waiting_for_redis_holds_up_its_sender_alone() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis);
    let (mut waiting, _) = join(&a);
    let (mut talker, _) = join(&a);
    let (mut listener, _) = join(&a);
    assert_eq!(waiting.recv_line(), "* client2 joined");
    assert_eq!(waiting.recv_line(), "* client3 joined");
    assert_eq!(talker.recv_line(), "* client3 joined");
    // Redis holds its connections and answers nothing.
    redis.signal(libc::SIGSTOP);
    waiting.send(b"/nick alice\nsent after the nick\n");
    talker.send(b"the loop goes on\n");
    assert_eq!(listener.recv_line(), "client2: the loop goes on");
    assert_eq!(waiting.recv_line(), "client2: the loop goes on");
    redis.signal(libc::SIGCONT);
    // Its line waited for the answer, so it comes after, under the new name.
    assert_eq!(listener.recv_line(), "* client1 is now alice");
    assert_eq!(listener.recv_line(), "alice: sent after the nick");
}

#[test]
fn who_lists_every_node_in_the_order_names_were_given() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut first, _) = join(&a);
    let (mut second, _) = join(&b);
    assert_eq!(first.recv_line(), "* client2 joined");
    let _third = join(&a);
    assert_eq!(second.recv_line(), "* client3 joined");
    second.send(b"/who\n");
    assert_eq!(second.recv_line(), "* online: client1, client2, client3");
    drop(first);
    assert_eq!(second.recv_line(), "* client1 left");
    second.send(b"/who\n");
    assert_eq!(second.recv_line(), "* online: client2, client3");
}
