//! The checks of stage 7a, the server as a Redis client: every line goes
//! to the stream once, in order, and the chat never waits for Redis. Each
//! check starts a `redis-server` of its own on a free loopback port and
//! the server with `--redis`, reads the stream through Redis itself, and
//! kills both at its end. Without `redis-server` on the machine they are
//! skipped (`REQUIRE_REDIS=1` makes that a failure). Every later step runs
//! them too (this file is included by path), against its own binary.

use std::sync::atomic::{AtomicUsize, Ordering};

use testkit::redis::Redis;
use testkit::{Client, Server};

use super::server_bin;

/// Every entry of `chat:stream` as `NODE TEXT` (its `n` and `t` fields),
/// oldest first, in one status reply, which `Redis::command` reads whole.
const ENTRIES: &str = "local out = {} \
    for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do \
      local f, node, text = entry[2], '', nil \
      for i = 1, #f, 2 do \
        if f[i] == 'n' then node = f[i + 1] elseif f[i] == 't' then text = f[i + 1] end \
      end \
      if text then table.insert(out, node .. ' ' .. text) end \
    end \
    return {ok = table.concat(out, '|')}";

/// The chat lines in the stream, oldest first: `(node, text)`.
pub fn stream(redis: &Redis) -> Vec<(String, String)> {
    let reply = redis.command(&["EVAL", ENTRIES, "1", "chat:stream"]);
    let entries = reply
        .strip_prefix('+')
        .unwrap_or_else(|| panic!("reading the stream: {reply}"));
    entries
        .split('|')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (node, text) = e.split_once(' ').unwrap_or(("", e));
            (node.to_string(), text.to_string())
        })
        .collect()
}

/// The lines of the stream that start with `prefix`, oldest first.
pub fn lines_from(redis: &Redis, prefix: &str) -> Vec<String> {
    stream(redis)
        .into_iter()
        .map(|(_, text)| text)
        .filter(|text| text.starts_with(prefix))
        .collect()
}

/// A server with `--redis`, logging (as a reader runs it).
pub fn node(redis: &Redis) -> Server {
    Server::start(server_bin(), &["--redis", &redis.arg(), "127.0.0.1:0"])
}

/// Connect and read the welcome; returns the client and its name.
pub fn join(server: &Server) -> (Client, String) {
    let mut client = server.connect();
    let welcome = client.recv_line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("expected `* welcome NAME ...`, got {welcome:?}"))
        .to_string();
    (client, name)
}

/// Wait until the server appends `client`'s lines: a line sent while the
/// server is not connected to Redis may not reach the stream, so `client`
/// sends `probe N` until one does, and then until the last one sent is the
/// stream's last line from it. From then on every line it sends counts.
pub fn wait_appended(redis: &Redis, client: &mut Client, name: &str) {
    // Probes of every wait are told apart: a later step may append again
    // what a Redis that restarted lost.
    static WAITS: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!("{name}: probe {}.", WAITS.fetch_add(1, Ordering::Relaxed));
    let mut sent = 0;
    testkit::wait_until(
        "the server appends its client's lines to chat:stream",
        || {
            sent += 1;
            client.send(format!("{}{sent}\n", &prefix[name.len() + 2..]).as_bytes());
            !lines_from(redis, &prefix).is_empty()
        },
    );
    let last = format!("{prefix}{sent}");
    testkit::wait_until("the last probe reaches chat:stream", || {
        lines_from(redis, &prefix).last() == Some(&last)
    });
}

/// The next chat line `client` gets: notices and probes are skipped.
pub fn chat_line(client: &mut Client) -> String {
    client.recv_line_until(|l| !l.starts_with("* ") && !l.contains(": probe "))
}

/// `count` numbered lines, `WORD N`, in one write.
fn numbered(word: &str, count: usize) -> String {
    (0..count).map(|n| format!("{word} {n}\n")).collect()
}

/// Wait until the stream holds `count` lines starting with `prefix`, and
/// return them.
fn wait_lines(redis: &Redis, prefix: &str, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let enough = testkit::holds_within_timeout(|| {
        lines = lines_from(redis, prefix);
        lines.len() >= count
    });
    assert!(
        enough,
        "chat:stream holds {} of the {count} lines `{prefix}...` sent: {lines:?}",
        lines.len()
    );
    lines
}

#[test]
fn every_line_goes_to_the_stream_once_in_order() {
    const LINES: usize = 200;
    let Some(redis) = Redis::start() else { return };
    let server = node(&redis);
    let (mut talker, name) = join(&server);
    let (mut other, other_name) = join(&server);
    wait_appended(&redis, &mut talker, &name);
    talker.send(numbered("line", LINES).as_bytes());
    other.send(b"from the other\n");
    let want: Vec<String> = (0..LINES).map(|n| format!("{name}: line {n}")).collect();
    // The chat itself is stage 5's: the local client gets every line.
    for line in &want {
        assert_eq!(chat_line(&mut other), *line);
    }
    let got = wait_lines(&redis, &format!("{name}: line "), LINES);
    assert_eq!(got, want, "each line once, in the order it was sent");
    let theirs = wait_lines(&redis, &format!("{other_name}: "), 1);
    assert_eq!(theirs, [format!("{other_name}: from the other")]);
    // Every entry says which server appended it, the same for all of them.
    let nodes: Vec<String> = stream(&redis).into_iter().map(|(n, _)| n).collect();
    assert!(
        !nodes[0].is_empty() && nodes.iter().all(|n| *n == nodes[0]),
        "every entry's `n` names its server: {nodes:?}"
    );
}

#[test]
fn the_chat_goes_on_while_redis_is_gone_and_lines_go_to_the_stream_once_it_is_back() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let server = node(&redis);
    let (mut talker, name) = join(&server);
    let (mut listener, _) = join(&server);
    wait_appended(&redis, &mut talker, &name);
    redis.stop();
    talker.send(b"while redis is gone\n");
    let line = chat_line(&mut listener);
    assert_eq!(
        line,
        format!("{name}: while redis is gone"),
        "the chat must not wait for Redis"
    );
    // A new, empty Redis on the same port: the server connects again.
    redis.start_again();
    wait_appended(&redis, &mut talker, &name);
    talker.send(numbered("back", 50).as_bytes());
    let want: Vec<String> = (0..50).map(|n| format!("{name}: back {n}")).collect();
    assert_eq!(wait_lines(&redis, &format!("{name}: back "), 50), want);
    for line in &want {
        assert_eq!(chat_line(&mut listener), *line);
    }
}

#[test]
fn a_frozen_redis_holds_up_no_client() {
    let Some(redis) = Redis::start() else { return };
    let server = node(&redis);
    let (mut talker, name) = join(&server);
    let (mut listener, _) = join(&server);
    wait_appended(&redis, &mut talker, &name);
    // Stopped, Redis keeps its connections open and answers nothing.
    redis.signal(libc::SIGSTOP);
    talker.send(numbered("frozen", 100).as_bytes());
    for n in 0..100 {
        let line = chat_line(&mut listener);
        assert_eq!(
            line,
            format!("{name}: frozen {n}"),
            "the chat must not wait for Redis's replies"
        );
    }
    redis.signal(libc::SIGCONT);
    wait_appended(&redis, &mut talker, &name);
}

#[test]
fn an_error_reply_is_not_taken_for_success() {
    let Some(redis) = Redis::start() else { return };
    let server = node(&redis);
    let (mut talker, name) = join(&server);
    wait_appended(&redis, &mut talker, &name);
    // `-OOM command not allowed ...` to every XADD.
    redis.refuse_writes();
    talker.send(b"refused\n");
    server.wait_stderr("refused");
    redis.accept_writes();
    wait_appended(&redis, &mut talker, &name);
}

#[test]
fn a_server_whose_redis_is_gone_sleeps_between_tries() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let server = node(&redis);
    let (mut talker, name) = join(&server);
    wait_appended(&redis, &mut talker, &name);
    redis.stop();
    // It tries again and again, on a timer: asleep in between.
    server.assert_sleeps("while Redis is gone", 0.5);
}
