//! What the cluster promises, checked under the faults that break it:
//! a node killed among three, a node paused past its lease, Redis frozen,
//! Redis restarted empty, Redis refusing writes, and a stream trimmed
//! under a reader. Each check starts its own `redis-server` and nodes and
//! kills them at its end, and reads only what clients receive (and the
//! nodes' descriptors), so `STAGE7_BIN=/path/to/yours` runs it against
//! your build.
//!
//! Under traffic, every talking client sends a numbered line twenty
//! times a second (tens of lines a second in all), through faults that
//! last: Redis frozen for 20 s, Redis down for 10 s. At the end each must
//! have every other's lines once, in order, except those it was told it
//! lost (`* N lines from server NODE were lost`) or whose sender was told
//! they could not go: **lines lost silently: 0**.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testkit::redis::Redis;
use testkit::{Client, Server};

fn node_bin() -> PathBuf {
    testkit::bin("STAGE7_BIN", env!("CARGO_BIN_EXE_stage7-cluster"))
}

/// A node of the cluster on a free port, logging (the default mode).
fn node(redis: &Redis) -> Server {
    Server::start(node_bin(), &["--redis", &redis.arg(), "127.0.0.1:0"])
}

/// Connect to `server` and read the welcome, which comes once the node is
/// in the cluster and the client has its name; returns the client and
/// its name.
fn join(server: &Server, who: &str) -> (Client, String) {
    let mut client = server.connect_named(who);
    let welcome = client.recv_line();
    let name = welcome
        .strip_prefix("* welcome ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{who} expected `* welcome NAME ...`, got {welcome:?}"))
        .to_string();
    (client, name)
}

/// Wait until every other client's join has reached `client`.
fn hears_joins(client: &mut Client, names: &[&str]) {
    for name in names {
        let joined = format!("* {name} joined");
        client.recv_line_until(|l| l == joined);
    }
}

/// `/who`, as a list of names.
fn who(client: &mut Client) -> Vec<String> {
    client.send(b"/who\n");
    let line = client.recv_line_until(|l| l.starts_with("* online: ") || l.starts_with("* error"));
    let names = line
        .strip_prefix("* online: ")
        .unwrap_or_else(|| panic!("{} asked /who and got {line:?}", client.name()));
    names.split(", ").map(str::to_string).collect()
}

/// `/who` lists exactly `names`, each once.
fn assert_who(client: &mut Client, names: &[&str]) {
    let mut listed = who(client);
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(
        listed,
        want,
        "{}: /who must list exactly the live clients, each once",
        client.name()
    );
}

/// The node's descriptors come back to `baseline` once its clients are
/// gone: nothing leaked (a connection to Redis replaced is closed).
fn assert_fds_back(server: &Server, baseline: usize, what: &str) {
    let back = testkit::holds_within_timeout(|| server.open_fds() == baseline);
    assert!(
        back,
        "{what}: the node holds {} descriptors, {baseline} before: {:?}",
        server.open_fds(),
        server.fds()
    );
}

/// One client of the check's traffic.
struct Talker {
    client: Client,
    name: String,
    sent: usize,
}

/// Every talker sends one numbered line, `rounds` times, 50 ms apart:
/// twenty lines a second each, whatever the fault meanwhile.
fn talk(talkers: &mut [Talker], rounds: usize) {
    for _ in 0..rounds {
        for talker in talkers.iter_mut() {
            let line = format!("line {}\n", talker.sent);
            talker.client.send(line.as_bytes());
            talker.sent += 1;
        }
        // Pacing the traffic, not waiting for anything.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `wait` while every talker keeps sending, as [`talk`] does, on a
/// thread of its own: the traffic goes on under the fault for as long as
/// the wait takes (at most a minute), and stops with it, panic or not.
fn talk_while<T>(talkers: &mut [Talker], wait: impl FnOnce() -> T) -> T {
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..1200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                talk(talkers, 1);
            }
        });
        let _stop = Stop(&stop);
        wait()
    })
}

/// Read lines until `want` comes, for at most `wait` (the talkers' traffic
/// keeps lines coming, so each read is short): how long it took.
fn hear_within(client: &mut Client, want: &str, wait: Duration) -> Duration {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < wait,
            "{} did not hear {want:?} within {wait:?}",
            client.name()
        );
        if client.recv_line() == want {
            return start.elapsed();
        }
    }
}

/// What one client received of the others' traffic.
#[derive(Default, Debug)]
struct Tally {
    /// Lines received, per sender.
    received: HashMap<String, usize>,
    /// Lines it was told it lost.
    told_lost: usize,
    /// Lines of its own it was told could not go to the other servers.
    not_sent: usize,
    /// Every other `* ` line.
    notices: Vec<String>,
}

impl Tally {
    fn count(&self, notice: &str) -> usize {
        self.notices.iter().filter(|n| n.as_str() == notice).count()
    }

    fn any(&self, part: &str) -> bool {
        self.notices.iter().any(|n| n.contains(part))
    }
}

/// Every talker sends `end`, then reads until it has every other's: the
/// lines in between are tallied, and each sender's must come in order
/// and once (a gap is allowed, and counted, to be matched with what the
/// clients were told).
fn finish(talkers: &mut [Talker]) -> Vec<Tally> {
    for talker in talkers.iter_mut() {
        talker.client.send(b"end\n");
    }
    let names: Vec<String> = talkers.iter().map(|t| t.name.clone()).collect();
    let mut tallies = Vec::new();
    for talker in talkers.iter_mut() {
        let mut tally = Tally::default();
        let mut next: HashMap<String, usize> = HashMap::new();
        let mut ended: Vec<&str> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while ended.len() < names.len() - 1 {
            assert!(
                Instant::now() < deadline,
                "{} did not get every other talker's last line within 30 s",
                talker.name
            );
            let line = talker.client.recv_line();
            if let Some((sender, text)) = line.split_once(": ")
                && let Some(sender) = names.iter().find(|n| *n == sender)
            {
                if text == "end" {
                    ended.push(sender);
                    continue;
                }
                let n: usize = text
                    .strip_prefix("line ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("{}: a line it never sent: {line:?}", sender));
                let want = next.entry(sender.clone()).or_default();
                assert!(
                    n >= *want,
                    "{} got {line:?} after line {}: twice, or out of order",
                    talker.name,
                    *want - 1
                );
                *want = n + 1;
                *tally.received.entry(sender.clone()).or_default() += 1;
            } else if let Some(lost) = lost_count(&line) {
                tally.told_lost += lost;
            } else if line.starts_with("* error: ") {
                // A talker sends only numbered lines: an error is about one
                // of them, which its sender was told could not go.
                tally.not_sent += 1;
            } else {
                assert!(line.starts_with("* "), "{}: {line:?}", talker.name);
                tally.notices.push(line);
            }
        }
        tallies.push(tally);
    }
    tallies
}

/// A Lua script that runs `body` for every stream key `k` in Redis and
/// returns the sum of what it returns (0 for a non-number).
fn for_each_stream(body: &str) -> String {
    format!(
        "local n = 0 for _, k in ipairs(redis.call('KEYS', '*')) do \
         if redis.call('TYPE', k).ok == 'stream' then \
         local r = {body} if type(r) == 'number' then n = n + r end end end return n"
    )
}

/// How many entries Redis holds in all its streams.
fn stream_entries(redis: &Redis) -> usize {
    let reply = redis.command(&["EVAL", &for_each_stream("redis.call('XLEN', k)"), "0"]);
    reply
        .strip_prefix(':')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("counting stream entries: {reply:?}"))
}

/// A notice that lines were lost, with their count: a `* ` line that says
/// a number of lines were lost (`* 1,287 lines from server NODE were
/// lost`) -> 1287. The words around the count are the server's to choose.
fn lost_count(line: &str) -> Option<usize> {
    let rest = line.strip_prefix("* ")?;
    if !rest.contains("lost") || !rest.contains("line") {
        return None;
    }
    rest.split_whitespace()
        .find_map(|word| word.replace(',', "").parse().ok())
}

/// Lines lost silently: sent by the others, neither received nor told
/// lost, nor refused to their sender. Printed for the record.
fn assert_nothing_lost_silently(talkers: &[Talker], tallies: &[Tally], what: &str) {
    let not_sent: usize = tallies.iter().map(|t| t.not_sent).sum();
    for (talker, tally) in talkers.iter().zip(tallies) {
        let expected: usize = talkers
            .iter()
            .filter(|t| t.name != talker.name)
            .map(|t| t.sent)
            .sum();
        let received: usize = tally.received.values().sum();
        let silent = expected.saturating_sub(received + tally.told_lost + not_sent);
        eprintln!(
            "{what}: {}: others sent {expected}, received {received}, told lost {}, \
             refused to senders {not_sent}, lost silently {silent}",
            talker.name, tally.told_lost
        );
        assert_eq!(
            silent, 0,
            "{what}: {} missed {silent} lines without being told ({tally:?})",
            talker.name
        );
    }
}

/// Two nodes and a talker on each, each having heard the other join.
fn two_talking(redis: &Redis) -> (Server, Server, Vec<Talker>) {
    let (a, b) = (node(redis), node(redis));
    let (mut on_a, name_a) = join(&a, "the talker on node A");
    let (on_b, name_b) = join(&b, "the talker on node B");
    hears_joins(&mut on_a, &[&name_b]);
    let talkers = vec![
        Talker {
            client: on_a,
            name: name_a,
            sent: 0,
        },
        Talker {
            client: on_b,
            name: name_b,
            sent: 0,
        },
    ];
    (a, b, talkers)
}

#[test]
fn every_survivor_of_three_nodes_hears_a_killed_nodes_clients_leave() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis)).collect();
    // A talker and a listener on each survivor, two clients on the node
    // that is killed.
    let mut talkers = Vec::new();
    for (i, server) in nodes[..2].iter().enumerate() {
        let (client, name) = join(server, &format!("the talker on node {i}"));
        talkers.push(Talker {
            client,
            name,
            sent: 0,
        });
    }
    let mut listeners = Vec::new();
    let mut names: Vec<String> = talkers.iter().map(|t| t.name.clone()).collect();
    for (i, server) in nodes[..2].iter().enumerate() {
        let (client, name) = join(server, &format!("the listener on node {i}"));
        listeners.push(client);
        names.push(name);
    }
    let mut doomed = Vec::new();
    for i in 0..2 {
        doomed.push(join(
            &nodes[2],
            &format!("client {i} of the node that is killed"),
        ));
    }
    let doomed_names: Vec<&str> = doomed.iter().map(|(_, n)| n.as_str()).collect();
    for listener in &mut listeners {
        hears_joins(listener, &doomed_names);
    }
    let baselines: Vec<usize> = nodes[..2].iter().map(Server::open_fds).collect();
    talk(&mut talkers, 10);
    nodes[2].signal(libc::SIGKILL);
    // Past the lease, under traffic: every survivor's clients hear each
    // of the killed node's clients leave.
    talk_while(&mut talkers, || {
        for listener in &mut listeners {
            for name in &doomed_names {
                let left = format!("* {name} left (server lost)");
                hear_within(listener, &left, Duration::from_secs(20));
            }
        }
    });
    talk(&mut talkers, 10);
    let tallies = finish(&mut talkers);
    assert_nothing_lost_silently(&talkers, &tallies, "a node killed");
    for (talker, tally) in talkers.iter().zip(&tallies) {
        for name in &doomed_names {
            let left = format!("* {name} left (server lost)");
            assert_eq!(
                tally.count(&left),
                1,
                "{} must hear {left:?} once: {:?}",
                talker.name,
                tally.notices
            );
        }
        assert!(!tally.any("lost contact"), "{:?}", tally.notices);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for talker in &mut talkers {
        assert_who(&mut talker.client, &refs);
    }
    for (i, (server, baseline)) in nodes[..2].iter().zip(baselines).enumerate() {
        assert_fds_back(server, baseline, &format!("survivor {i} after the kill"));
    }
}

#[test]
fn a_node_paused_past_its_lease_comes_back_with_no_ghost() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, name_a) = join(&a, "the client on node A");
    let (mut on_b, name_b) = join(&b, "the client on node B");
    hears_joins(&mut on_a, &[&name_b]);
    let baseline = b.open_fds() - 1;
    b.pause();
    let left = format!("* {name_b} left (server lost)");
    on_a.recv_line_until(|l| l == left);
    // Its name is free: a new client takes it.
    let (mut newcomer, name_new) = join(&a, "the newcomer on node A");
    newcomer.send(format!("/nick {name_b}\n").as_bytes());
    let renamed = format!("* {name_new} is now {name_b}");
    newcomer.recv_line_until(|l| l == renamed);
    // Sent while its server is stopped: read when it runs again.
    on_b.send(b"sent from the paused node\n");
    b.signal(libc::SIGCONT);
    let told = on_b.recv_line_until(|l| l.starts_with("* error"));
    eprintln!("the client of the paused node was told {told:?}");
    on_b.recv_to_eof();
    // The node serves again: a new client of it is heard on A.
    let (mut later, name_later) = join(&b, "a new client on node B");
    later.send(b"hello from node B\n");
    let hello = format!("{name_later}: hello from node B");
    let mut before = Vec::new();
    loop {
        let line = on_a.recv_line();
        if line == hello {
            break;
        }
        before.push(line);
    }
    assert!(
        !before
            .iter()
            .any(|l| l.contains("sent from the paused node") || *l == format!("* {name_b} left")),
        "a ghost of the paused node's client reached node A: {before:?}"
    );
    // Both nodes list the same clients: the newcomer has the name once.
    assert_who(&mut on_a, &[&name_a, &name_b, &name_later]);
    assert_who(&mut later, &[&name_a, &name_b, &name_later]);
    drop(later);
    assert_fds_back(&b, baseline, "the paused node once its clients left");
}

/// How long Redis stays frozen: far past every lease, with the nodes'
/// backlogs holding all that time's traffic.
const FROZEN: Duration = Duration::from_secs(20);

/// A node that waits about 3 s for a reply, with a request out at least
/// every second, notices within this (with room for a loaded machine).
const NOTICE_BOUND: Duration = Duration::from_secs(7);

#[test]
fn a_frozen_redis_is_noticed_within_seconds_and_nothing_is_lost_silently() {
    let Some(redis) = Redis::start() else { return };
    let (a, _b, mut talkers) = two_talking(&redis);
    let (mut asker, name_asker) = join(&a, "a client that asks /who");
    let baseline = a.open_fds();
    talk(&mut talkers, 20);
    redis.signal(libc::SIGSTOP);
    let frozen = Instant::now();
    let lost = "* lost contact with the other servers";
    let noticed = talk_while(&mut talkers, || hear_within(&mut asker, lost, NOTICE_BOUND));
    eprintln!("a frozen Redis was noticed after {noticed:?}");
    // Told, and answered at once while out of contact.
    let answer = who_answer(&mut asker);
    assert!(
        answer.starts_with("* error"),
        "/who while frozen: {answer:?}"
    );
    let rest = FROZEN.saturating_sub(frozen.elapsed());
    talk(&mut talkers, (rest.as_millis() / 50) as usize);
    redis.signal(libc::SIGCONT);
    // Back within seconds: a lease claim, then the backlogs go out.
    let back = talk_while(&mut talkers, || {
        hear_within(&mut asker, "* back in contact", Duration::from_secs(20))
    });
    eprintln!("back in contact {back:?} after Redis was continued");
    talk(&mut talkers, 20);
    let tallies = finish(&mut talkers);
    assert_nothing_lost_silently(&talkers, &tallies, "Redis frozen 20 s");
    for (talker, tally) in talkers.iter().zip(&tallies) {
        assert_eq!(
            (tally.count(lost), tally.count("* back in contact")),
            (1, 1),
            "{} must be told once each: {:?}",
            talker.name,
            tally.notices
        );
        assert!(!tally.any("server lost"), "{:?}", tally.notices);
    }
    let mut names: Vec<String> = talkers.iter().map(|t| t.name.clone()).collect();
    names.push(name_asker);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for talker in &mut talkers {
        assert_who(&mut talker.client, &refs);
    }
    drop(talkers);
    drop(asker);
    assert_fds_back(&a, baseline - 2, "node A after Redis was frozen");
}

/// The next `* online:` or `* error` line.
fn who_answer(client: &mut Client) -> String {
    client.send(b"/who\n");
    client.recv_line_until(|l| l.starts_with("* online: ") || l.starts_with("* error"))
}

/// How long Redis stays down before it starts again, empty.
const DOWN: Duration = Duration::from_secs(10);

#[test]
fn a_redis_restarted_empty_under_traffic_loses_nothing_silently() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (a, _b, mut talkers) = two_talking(&redis);
    let baseline = a.open_fds();
    talk(&mut talkers, 20);
    redis.stop();
    talk(&mut talkers, (DOWN.as_millis() / 50) as usize);
    redis.start_again();
    talk(&mut talkers, 20);
    let tallies = finish(&mut talkers);
    assert_nothing_lost_silently(&talkers, &tallies, "Redis down 10 s, restarted empty");
    for (talker, tally) in talkers.iter().zip(&tallies) {
        assert_eq!(
            (
                tally.count("* lost contact with the other servers"),
                tally.count("* back in contact")
            ),
            (1, 1),
            "{} must be told once each: {:?}",
            talker.name,
            tally.notices
        );
        assert!(!tally.any("server lost"), "{:?}", tally.notices);
    }
    let names: Vec<String> = talkers.iter().map(|t| t.name.clone()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for talker in &mut talkers {
        assert_who(&mut talker.client, &refs);
    }
    drop(talkers);
    assert_fds_back(&a, baseline - 1, "node A after the restart");
}

#[test]
fn a_redis_refusing_writes_under_traffic_loses_nothing_silently() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, mut talkers) = two_talking(&redis);
    let (mut renamer, _) = join(&a, "a client that asks /nick");
    let (a_base, b_base) = (a.open_fds(), b.open_fds());
    talk(&mut talkers, 10);
    redis.refuse_writes();
    talk(&mut talkers, 20);
    // A name Redis would not write is not a name someone has.
    renamer.send(b"/nick alice\n");
    let answer = renamer.recv_line_until(|l| l.contains("alice") || l.starts_with("* error"));
    assert!(
        !answer.contains("taken"),
        "/nick while Redis refuses writes: {answer:?}"
    );
    let mut newcomer = b.connect_named("a client that joins meanwhile");
    // Past every lease: a node that took the refusals for silence would
    // now take the others for dead.
    talk(&mut talkers, 180);
    redis.accept_writes();
    talk(&mut talkers, 20);
    let tallies = finish(&mut talkers);
    assert_nothing_lost_silently(&talkers, &tallies, "Redis refusing writes 10 s");
    for tally in &tallies {
        assert!(!tally.any("server lost"), "{:?}", tally.notices);
        let (lost, back) = (
            tally.count("* lost contact with the other servers"),
            tally.count("* back in contact"),
        );
        assert!(lost <= 1 && lost == back, "{:?}", tally.notices);
    }
    // The newcomer was let in, or told and let go: never left waiting.
    let first = newcomer.recv_line();
    if first.starts_with("* error") {
        newcomer.recv_to_eof();
    } else {
        assert!(first.starts_with("* welcome"), "{first:?}");
        drop(newcomer);
    }
    let mut names: Vec<String> = talkers.iter().map(|t| t.name.clone()).collect();
    let renamed: Vec<String> = who(&mut renamer)
        .into_iter()
        .filter(|n| !names.contains(n))
        .collect();
    names.extend(renamed);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_who(&mut talkers[0].client, &refs);
    assert_eq!(refs.len(), 3, "the two talkers and the renamer: {refs:?}");
    drop(talkers);
    drop(renamer);
    assert_fds_back(&a, a_base - 2, "node A after the refusals");
    assert_fds_back(&b, b_base - 1, "node B after the refusals");
}

#[test]
fn entries_trimmed_before_a_node_read_them_are_told_with_a_count() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis), node(&redis));
    let (mut on_a, _) = join(&a, "the client on node A");
    let (mut on_b, name_b) = join(&b, "the client on node B");
    hears_joins(&mut on_a, &[&name_b]);
    on_b.send(b"first\n");
    on_a.recv_line_until(|l| l.ends_with(": first"));
    // A stops reading; B's lines are trimmed away before it reads them.
    // Whatever streams a cluster keeps, and however it names them, all of
    // them are counted and emptied.
    let before = stream_entries(&redis);
    a.pause();
    let lines: String = (0..20).map(|n| format!("line {n}\n")).collect();
    on_b.send(lines.as_bytes());
    testkit::wait_until("Redis has B's twenty lines", || {
        stream_entries(&redis) >= before + 20
    });
    assert!(
        redis
            .command(&[
                "EVAL",
                &for_each_stream("redis.call('XTRIM', k, 'MAXLEN', 0)"),
                "0"
            ])
            .starts_with(':')
    );
    a.signal(libc::SIGCONT);
    on_b.send(b"after\n");
    let mut received = 0;
    let mut told = 0;
    loop {
        let line = on_a.recv_line();
        if line.ends_with(": after") {
            break;
        }
        if let Some(lost) = lost_count(&line) {
            told += lost;
        } else if line.contains(": line ") {
            received += 1;
        }
    }
    eprintln!("trimmed: sent 20, received {received}, told lost {told}");
    assert_eq!(
        received + told,
        20,
        "lines lost silently: {}",
        20 - received - told
    );
    assert!(told > 0, "the trim took lines, and A's client was not told");
}
