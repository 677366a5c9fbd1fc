//! Exercise checks for the cluster: several nodes and a real Redis, started
//! by each test on free loopback ports and killed when it ends. Without
//! `redis-server` on the machine they are skipped (`REQUIRE_REDIS=1` makes
//! that a failure). Without `--redis` the server is stage 5's: stage 5's
//! checks run against it in `server.rs` and `faults.rs`.

use std::time::Duration;

use testkit::conventions::welcome_probe;
use testkit::redis::Redis;
use testkit::{Client, Server};

/// A node of the cluster on a free port, logging (the default mode), once
/// it is in the cluster.
fn node(redis: &Redis, flags: &[&str]) -> Server {
    let mut args = vec!["--redis".to_string(), redis.arg()];
    args.extend(flags.iter().map(|f| f.to_string()));
    if !flags.iter().any(|f| f.contains(':')) {
        args.push("127.0.0.1:0".to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(env!("CARGO_BIN_EXE_stage7-cluster"), &args);
    // Its view of the cluster is taken: clients that join from now on are
    // counted once, wherever they join.
    server.wait_stderr("redis: in the cluster");
    server
}

/// Connect to `server` and read the welcome (each check has a Redis of
/// its own, so names count from client1).
fn join(server: &Server) -> Client {
    let mut client = server.connect();
    welcome_probe(&mut client);
    client
}

/// Two nodes and a client on each, each having seen the other join.
fn two_nodes(redis: &Redis) -> (Server, Server, Client, Client) {
    let (a, b) = (node(redis, &[]), node(redis, &[]));
    let mut on_a = join(&a);
    let on_b = join(&b);
    assert_eq!(on_a.recv_line(), "* client2 joined");
    (a, b, on_a, on_b)
}

#[test]
fn a_line_crosses_nodes_in_order_both_ways() {
    let Some(redis) = Redis::start() else { return };
    let (_a, _b, mut on_a, mut on_b) = two_nodes(&redis);
    let batch: String = (0..300).map(|n| format!("line {n}\n")).collect();
    on_a.send(batch.as_bytes());
    on_b.send(b"from b\n");
    for n in 0..300 {
        assert_eq!(on_b.recv_line(), format!("client1: line {n}"));
    }
    assert_eq!(on_a.recv_line(), "client2: from b");
}

#[test]
fn several_nodes_share_one_port() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, &["--reuseport"]);
    let port = a.addr.to_string();
    let b = node(&redis, &["--reuseport", &port]);
    assert_eq!(a.addr, b.addr);
    let mut clients: Vec<Client> = (0..12).map(|_| join(&a)).collect();
    // Every one of them has its name in Redis before its welcome, and
    // `/who` asks Redis, whichever node each is on.
    clients[0].send(b"/who\n");
    let who = clients[0].recv_line_until(|l| l.starts_with("* online: "));
    assert_eq!(who.split(", ").count(), 12, "{who}");
}

#[test]
fn a_node_shutting_down_tells_the_others_its_clients_left() {
    let Some(redis) = Redis::start() else { return };
    let (_a, mut b, mut on_a, mut on_b) = two_nodes(&redis);
    b.signal(libc::SIGTERM);
    assert_eq!(on_b.recv_line(), "* server shutting down");
    assert_eq!(on_a.recv_line(), "* client2 left");
    assert_eq!(b.wait_exit().code(), Some(0));
    on_a.send(b"/who\n");
    assert_eq!(on_a.recv_line(), "* online: client1");
}

#[test]
fn a_node_killed_after_a_redis_restart_is_still_announced() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (_a, b, mut on_a, _on_b) = two_nodes(&redis);
    redis.stop();
    assert_eq!(on_a.recv_line(), "* lost contact with the other servers");
    redis.start_again();
    assert_eq!(on_a.recv_line(), "* back in contact");
    // B has put back what it owns (a node that dies before that leaves
    // no names for the others to announce).
    testkit::wait_until("node B puts its client's name back", || {
        redis.command(&["HEXISTS", "chat:names", "client2"]) == ":1"
    });
    b.signal(libc::SIGKILL);
    assert_eq!(on_a.recv_line(), "* client2 left (server lost)");
}

/// `client1` on node A sends lines, Redis goes away (`stop`), it sends
/// more while the nodes know Redis is away, and Redis comes back
/// (`resume`). `client2` on node B must get every line, once, in order,
/// and be told once that contact was lost and once that it is back.
fn nothing_lost_while(mut redis: Redis, stop: fn(&mut Redis), resume: fn(&mut Redis)) -> Server {
    const LINES: usize = 1000;
    let (a, b, mut on_a, mut on_b) = two_nodes(&redis);
    let lines = |range: std::ops::Range<usize>| -> String {
        range.map(|n| format!("line {n}\n")).collect()
    };
    let mut notices = Vec::new();
    let mut expect = |on_b: &mut Client, range: std::ops::Range<usize>| {
        for n in range {
            let mut line = on_b.recv_line();
            while line.starts_with("* ") {
                notices.push(line);
                line = on_b.recv_line();
            }
            assert_eq!(line, format!("client1: line {n}"));
        }
    };
    // Redis goes away with appended lines that B may not have read yet.
    on_a.send(lines(0..LINES / 2).as_bytes());
    expect(&mut on_b, 0..LINES / 10);
    stop(&mut redis);
    assert_eq!(on_a.recv_line(), "* lost contact with the other servers");
    // Sent while the node knows Redis is away: they wait in its backlog.
    on_a.send(lines(LINES / 2..LINES).as_bytes());
    resume(&mut redis);
    expect(&mut on_b, LINES / 10..LINES);
    drop(on_a);
    loop {
        let line = on_b.recv_line();
        assert!(
            line.starts_with("* "),
            "a line after the last one: {line:?}"
        );
        if line == "* client1 left" {
            break;
        }
        notices.push(line);
    }
    assert_eq!(
        notices,
        ["* lost contact with the other servers", "* back in contact"],
        "told once each"
    );
    drop(b);
    a
}

#[test]
fn a_killed_redis_connection_loses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let kill = |redis: &mut Redis| {
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "normal"]);
        assert!(killed.starts_with(':'), "CLIENT KILL: {killed}");
    };
    let a = nothing_lost_while(redis, kill, |_| {});
    a.wait_stderr("redis: connection lost");
}

#[test]
fn a_redis_restart_after_five_seconds_away_loses_nothing() {
    let Some(redis) = Redis::start() else { return };
    let away = |redis: &mut Redis| {
        // The outage itself, not a wait for something: five seconds is the
        // longest a node must ride out, and no node may be taken for dead.
        std::thread::sleep(Duration::from_secs(5));
        redis.start_again();
    };
    let a = nothing_lost_while(redis, Redis::stop, away);
    a.wait_stderr("it forgot this node; putting it back");
}
