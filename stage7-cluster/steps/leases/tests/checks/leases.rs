//! The checks of stage 7g, leases: a node that dies is found by the
//! others, and every surviving node's clients hear who left with it, once,
//! whatever the number of nodes; its names are free again. Each check
//! starts a `redis-server` of its own and servers with `--redis`, reads
//! only what clients receive, and kills them all at its end. Every later
//! step runs them too (this file is included by path), against its own
//! binary.

use std::time::{Duration, Instant};

use testkit::Server;
use testkit::redis::Redis;

use super::link::{join, node};

/// Read `client`'s lines until `want`; fail if it takes past `wait`.
fn hear_within(client: &mut testkit::Client, want: &str, wait: Duration) {
    let start = Instant::now();
    client.recv_line_until(|l| l == want);
    let took = start.elapsed();
    assert!(took < wait, "{want:?} came after {took:?}");
}

#[test]
fn a_node_killed_is_announced_as_left_within_ten_seconds() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, _) = join(&a);
    let (_on_b, b_name) = join(&b);
    on_a.recv_line_until(|l| l == format!("* {b_name} joined"));
    b.signal(libc::SIGKILL);
    hear_within(
        &mut on_a,
        &format!("* {b_name} left (server lost)"),
        Duration::from_secs(10),
    );
    // Its name is free again.
    on_a.send(format!("/nick {b_name}\n").as_bytes());
    let renamed = on_a.recv_line_until(|l| l.starts_with("* "));
    assert!(
        renamed.ends_with(&format!(" is now {b_name}")),
        "{renamed:?}"
    );
}

#[test]
fn both_survivors_of_three_nodes_hear_a_killed_nodes_clients_leave() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis)).collect();
    let mut survivors: Vec<_> = nodes[..2].iter().map(join).collect();
    let doomed: Vec<_> = (0..2).map(|_| join(&nodes[2])).collect();
    for (client, _) in &mut survivors {
        for (_, name) in &doomed {
            client.recv_line_until(|l| l == format!("* {name} joined"));
        }
    }
    nodes[2].signal(libc::SIGKILL);
    for (client, _) in &mut survivors {
        for (_, name) in &doomed {
            let left = format!("* {name} left (server lost)");
            hear_within(client, &left, Duration::from_secs(20));
        }
    }
    // Each heard it once: `/who`'s answer is the next line, with no
    // second announcement before it, and lists the survivors alone.
    let mut names: Vec<String> = survivors.iter().map(|(_, n)| n.clone()).collect();
    names.sort_by_key(|n| n.trim_start_matches("client").parse::<u64>().unwrap_or(0));
    for (client, _) in &mut survivors {
        client.send(b"/who\n");
        assert_eq!(
            client.recv_line(),
            format!("* online: {}", names.join(", "))
        );
    }
}
