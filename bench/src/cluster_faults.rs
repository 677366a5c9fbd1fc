//! The cluster's fault run: three stage 7 nodes (logging on) joined through
//! one Redis, checked clients talking on two of them, and faults injected
//! by kind in an order drawn from a fixed seed: Redis frozen (`SIGSTOP`),
//! Redis killed and started again empty, the third node paused past its
//! lease and continued, Redis refusing writes (`maxmemory` with
//! `noeviction`) and lifted. Every line a checked client sends is
//! numbered; at the end each must have had every other's once and in
//! order, or have been told of those it missed (`* N lines from server
//! NODE were lost`, or its sender told the line could not go): what is
//! left is lost silently, and must be 0. The third node's clients say
//! nothing but one line each while their node is stopped, which must reach
//! no one: a node taken for dead leaves no ghost.
//!
//! The checked clients are the benchmark's own: blocking sockets on
//! loopback, a reader thread each, every wait bounded.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::{CLUSTER, settled_fds};
use crate::machine::load_average;
use crate::measure::Bench;
use crate::process::{Server, cpu_split_of, open_fds};
use crate::redis::{self, Redis};
use crate::results::{Measurement, RunInfo, ServerLog, Test};

/// Nodes in the run: the first two have the checked clients, the third
/// is the one paused.
pub const NODES: u32 = 3;
/// Checked clients on each of the first two nodes.
const CHECKED_PER_NODE: usize = 2;
/// Lines a second each checked client sends: tens of lines a second in all.
pub const RATE: u64 = 10;
/// Clients of the node that is paused.
const BYSTANDERS: usize = 2;
/// The longest any one step waits (a welcome, a notice, the last lines).
const WAIT: Duration = Duration::from_secs(20);
/// How often a waiting step looks again.
const POLL: Duration = Duration::from_millis(50);
/// How long a read blocks before its thread looks whether to stop.
const READ_TICK: Duration = Duration::from_millis(200);

/// The log of node `i` in the output folder.
fn log_name(i: usize) -> String {
    format!("cluster-faults-node{}.log", i + 1)
}

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    RedisFrozen,
    RedisRestarted,
    NodePaused,
    RedisRefusing,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::RedisFrozen,
        Fault::RedisRestarted,
        Fault::NodePaused,
        Fault::RedisRefusing,
    ];

    /// Its key in the figures.
    pub fn key(self) -> &'static str {
        match self {
            Fault::RedisFrozen => "redis_frozen",
            Fault::RedisRestarted => "redis_restarted_empty",
            Fault::NodePaused => "node_paused_past_lease",
            Fault::RedisRefusing => "redis_refusing_writes",
        }
    }

    /// The time it needs before the run's end to be started: a pause
    /// lasts until the others take the node for dead (its 6 s lease, and
    /// the look that finds it gone).
    fn needs(self, hold: Duration) -> Duration {
        match self {
            Fault::NodePaused => Duration::from_secs(9),
            Fault::RedisRestarted => hold / 2,
            _ => hold,
        }
    }
}

/// Sets its flag when dropped: a thread told to stop, whatever the way out.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// SplitMix64: a small generator whose sequence a seed fixes.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Every kind once, in an order of the seed's.
    fn round(&mut self) -> [Fault; 4] {
        let mut kinds = Fault::ALL;
        for i in (1..kinds.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            kinds.swap(i, j);
        }
        kinds
    }
}

/// What one client has received, kept by its reader thread.
#[derive(Default, Debug)]
struct Tally {
    /// The next number expected from each checked sender, and how many of
    /// its lines came.
    next: HashMap<usize, u64>,
    received: HashMap<usize, u64>,
    /// Lines that came twice or out of their sender's order.
    out_of_order: u64,
    /// Lines it was told it missed.
    told_lost: u64,
    /// `* error` lines: lines of its own the other servers miss.
    refused: u64,
    /// Checked senders whose last line came.
    ended: HashSet<usize>,
    /// Lines of a paused node's clients that reached it.
    ghosts: u64,
    /// `* NAME left (server lost)`, by name.
    left: Vec<String>,
    lost_contact: u64,
    back_in_contact: u64,
    /// The last `* online:` answer.
    online: Option<Vec<String>>,
    /// The server closed the connection.
    closed: bool,
}

/// A client of a node: a writer, and a thread reading into its tally.
struct Peer {
    name: String,
    writer: TcpStream,
    tally: Arc<Mutex<Tally>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Peer {
    /// Connect to `addr` and wait for the welcome, which comes once the
    /// node has the client's cluster-wide name; retried while the node
    /// says it cannot take a client now (it is out of contact).
    fn join(addr: SocketAddr, stop: &Arc<AtomicBool>) -> Result<Peer> {
        let started = Instant::now();
        loop {
            match Peer::try_join(addr, stop)? {
                Some(peer) => return Ok(peer),
                None if started.elapsed() < WAIT => thread::sleep(Duration::from_millis(250)),
                None => bail!("{addr} took no new client within {WAIT:?}"),
            }
        }
    }

    fn try_join(addr: SocketAddr, stop: &Arc<AtomicBool>) -> Result<Option<Peer>> {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut welcome = String::new();
        reader
            .read_line(&mut welcome)
            .with_context(|| format!("no welcome from {addr}"))?;
        let Some(name) = welcome
            .strip_prefix("* welcome ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            if welcome.starts_with("* error") || welcome.is_empty() {
                return Ok(None);
            }
            bail!("{addr} greeted with {welcome:?}");
        };
        let name = name.to_string();
        reader.get_ref().set_read_timeout(Some(READ_TICK))?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (shared, stop) = (Arc::clone(&tally), Arc::clone(stop));
        let reader = thread::spawn(move || read_lines(reader, &shared, &stop));
        Ok(Some(Peer {
            name,
            writer: stream,
            tally,
            reader: Some(reader),
        }))
    }

    fn send(&mut self, line: &str) -> Result<()> {
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("{} could not send", self.name))
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A reader thread: every line into the tally, until the server closes
/// or the run stops. A line cut by the read timeout is kept and finished.
fn read_lines(mut reader: BufReader<TcpStream>, tally: &Mutex<Tally>, stop: &AtomicBool) {
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) if line.ends_with(b"\n") => {
                let text = String::from_utf8_lossy(&line);
                tally_line(text.trim_end(), &mut tally.lock().unwrap());
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tally.lock().unwrap().closed = true;
}

/// One received line.
fn tally_line(line: &str, t: &mut Tally) {
    if let Some(rest) = line.strip_prefix("* ") {
        if let Some(n) = lost_count(rest) {
            t.told_lost += n;
        } else if rest.starts_with("error") {
            t.refused += 1;
        } else if rest == "lost contact with the other servers" {
            t.lost_contact += 1;
        } else if rest == "back in contact" {
            t.back_in_contact += 1;
        } else if let Some(name) = rest.strip_suffix(" left (server lost)") {
            t.left.push(name.to_string());
        } else if let Some(names) = rest.strip_prefix("online: ") {
            t.online = Some(names.split(", ").map(str::to_string).collect());
        }
        return;
    }
    let Some((_, text)) = line.split_once(": ") else {
        return;
    };
    let mut words = text.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("cf"), Some(sender), Some(n)) => {
            let (Ok(sender), Ok(n)) = (sender.parse::<usize>(), n.parse::<u64>()) else {
                return;
            };
            let next = t.next.entry(sender).or_default();
            if n < *next {
                t.out_of_order += 1;
                return;
            }
            *next = n + 1;
            *t.received.entry(sender).or_default() += 1;
        }
        (Some("cf-end"), Some(sender), None) => {
            if let Ok(sender) = sender.parse() {
                t.ended.insert(sender);
            }
        }
        (Some("ghost"), ..) => t.ghosts += 1,
        _ => {}
    }
}

/// `1,287 lines from server NODE were lost` -> 1287.
fn lost_count(notice: &str) -> Option<u64> {
    if !notice.contains("lost") || !notice.contains("line") {
        return None;
    }
    notice
        .split_whitespace()
        .find_map(|word| word.replace(',', "").parse().ok())
}

/// Wait until `done`, at most `limit`; false if it never was.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return false;
        }
        thread::sleep(POLL);
    }
    true
}

/// Whether a process is stopped (`T` in /proc/PID/stat).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "T")
    })
}

fn signal(server: &Server, signal: Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.pid() as i32), signal)
        .with_context(|| format!("cannot send {signal} to node {}", server.pid()))
}

/// The run's description, for results.json and the tables.
pub fn command(bench: &Bench) -> String {
    let n = bench.numbers;
    format!(
        "(the benchmark's own checked clients) {NODES} nodes with logging on, one Redis; \
         {} checked clients on two nodes at {RATE} lines/s each, {BYSTANDERS} clients on the \
         third; faults for {} s, each Redis fault {} s, seed {}",
        2 * CHECKED_PER_NODE,
        n.cluster_faults_for.as_secs(),
        n.cluster_fault_hold.as_secs_f64(),
        crate::plan::CLUSTER_FAULTS_SEED
    )
}

/// The fault run as one measurement, or skipped (said why) without Redis
/// or without the stage 7 binary.
pub fn part(bench: &Bench, bin_dir: &Path) -> Measurement {
    let seconds = bench.numbers.cluster_faults_for.as_secs();
    let test = Test::ClusterFaults {
        nodes: NODES,
        seconds,
        seed: crate::plan::CLUSTER_FAULTS_SEED,
    };
    let mut m = Measurement::new(CLUSTER, command(bench), test);
    let bin = bin_dir.join(CLUSTER);
    let mut info = RunInfo {
        load_before: load_average(),
        ..RunInfo::default()
    };
    let skipped = if !bin.is_file() {
        Some(format!("{} is not built", bin.display()))
    } else if !redis::installed() {
        Some("redis-server is not installed (apt-get install redis-server)".to_string())
    } else {
        None
    };
    if let Some(why) = skipped {
        eprintln!("{CLUSTER:<24} cluster faults: skipped: {why}");
        m.cluster = Some(crate::cluster::ClusterFigures {
            skipped: Some(why),
            ..Default::default()
        });
    } else {
        let started = Instant::now();
        if let Err(err) = run(&mut m, bench, &bin) {
            m.error = Some(format!("{err:#}"));
        }
        info.server_up_s = Some(started.elapsed().as_secs_f64());
        eprintln!("{CLUSTER:<24} {}", summary(&m));
    }
    info.load_after = load_average();
    info.server_stayed_up = m.error.is_none() && m.figure("/nodes_up") == Some(1.0);
    m.run = Some(info);
    m
}

/// The run itself: figures into `m.tester`, as a tester's JSON would be.
fn run(m: &mut Measurement, bench: &Bench, bin: &Path) -> Result<()> {
    let numbers = bench.numbers;
    let hold = numbers.cluster_fault_hold;
    let calm = (hold / 2).clamp(Duration::from_secs(1), Duration::from_secs(3));
    let cpu = bench.pinning.server_cpu;
    std::fs::create_dir_all(bench.out)?;
    let mut redis = Redis::start(cpu)?;
    let redis_addr = redis.addr.to_string();
    let flags = ["--redis", redis_addr.as_str()];
    let mut nodes = Vec::new();
    for i in 0..NODES as usize {
        let log = bench.out.join(log_name(i));
        nodes.push(Server::start_logging(bin, &flags, cpu, &log)?);
    }
    m.server_log = Some(ServerLog {
        file: log_name(0),
        lines: None,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut checked = Vec::new();
    for node in &nodes[..2] {
        for _ in 0..CHECKED_PER_NODE {
            checked.push(Peer::join(node.addr, &stop)?);
        }
    }
    let node_of = |i: usize| i / CHECKED_PER_NODE;
    let mut bystanders = Vec::new();
    for _ in 0..BYSTANDERS {
        bystanders.push(Peer::join(nodes[2].addr, &stop)?);
    }
    let pids: Vec<u32> = nodes.iter().map(Server::pid).collect();
    let fds_before = settled_fds(&pids);
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|&p| cpu_of(p)).collect();
    let started = Instant::now();
    let deadline = started + numbers.cluster_faults_for;
    let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
    let mut left_expected: u64 = 0;
    let mut failures: Vec<String> = Vec::new();
    let mut rng = Seeded(crate::plan::CLUSTER_FAULTS_SEED);
    let talking = AtomicBool::new(true);
    let max_rounds = (numbers.cluster_faults_limit().as_secs() * RATE) as usize;
    let sent: Vec<u64> = thread::scope(|scope| -> Result<Vec<u64>> {
        // The traffic: each checked client a numbered line every 1/RATE s,
        // for at most the run's limit.
        let writers: Vec<TcpStream> = checked
            .iter()
            .map(|p| p.writer.try_clone())
            .collect::<std::io::Result<_>>()?;
        let traffic = scope.spawn(|| {
            let mut writers = writers;
            let mut sent = vec![0u64; writers.len()];
            let period = Duration::from_millis(1000 / RATE);
            for _ in 0..max_rounds {
                if !talking.load(Ordering::Relaxed) {
                    break;
                }
                for (i, writer) in writers.iter_mut().enumerate() {
                    if writer
                        .write_all(format!("cf {i} {}\n", sent[i]).as_bytes())
                        .is_ok()
                    {
                        sent[i] += 1;
                    }
                }
                // Pacing the traffic, not waiting for anything.
                thread::sleep(period);
            }
            sent
        });
        // The traffic stops however the faults end, an error included.
        let quiet = StopOnDrop(&talking);
        thread::sleep(calm);
        'faults: while Instant::now() < deadline {
            let mut any = false;
            for fault in rng.round() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break 'faults;
                }
                if fault.needs(hold) > left {
                    continue;
                }
                any = true;
                *injected.entry(fault).or_default() += 1;
                eprintln!(
                    "{CLUSTER:<24} cluster faults: {} at {:.1} s",
                    fault.key(),
                    started.elapsed().as_secs_f64()
                );
                match fault {
                    Fault::RedisFrozen => {
                        redis.signal(Signal::SIGSTOP)?;
                        thread::sleep(hold);
                        redis.signal(Signal::SIGCONT)?;
                    }
                    Fault::RedisRestarted => redis.restart_empty(hold / 2)?,
                    Fault::RedisRefusing => {
                        redis.refuse_writes(true)?;
                        thread::sleep(hold);
                        redis.refuse_writes(false)?;
                    }
                    Fault::NodePaused => {
                        let names: Vec<String> =
                            bystanders.iter().map(|b| b.name.clone()).collect();
                        let announced = |checked: &[Peer]| {
                            checked.iter().all(|p| {
                                let t = p.tally();
                                names.iter().all(|n| t.left.contains(n))
                            })
                        };
                        signal(&nodes[2], Signal::SIGSTOP)?;
                        if !wait_for(WAIT, || is_stopped(pids[2])) {
                            bail!("node 3 did not stop");
                        }
                        // Read by the node only when it runs again, after
                        // it was taken for dead: must reach no one.
                        for b in &mut bystanders {
                            b.send("ghost from a paused node\n")?;
                        }
                        left_expected += (names.len() * checked.len()) as u64;
                        if !wait_for(WAIT, || announced(&checked)) {
                            failures.push(format!(
                                "a node paused {WAIT:?}: not every checked client heard its \
                                 clients leave"
                            ));
                        }
                        signal(&nodes[2], Signal::SIGCONT)?;
                        // Its clients are told and let go; new ones join.
                        let gone = wait_for(WAIT, || bystanders.iter().all(|b| b.tally().closed));
                        if !gone {
                            failures.push("the paused node kept its clients".into());
                        }
                        bystanders.clear();
                        for _ in 0..BYSTANDERS {
                            bystanders.push(Peer::join(nodes[2].addr, &stop)?);
                        }
                    }
                }
                thread::sleep(calm);
            }
            if !any {
                break;
            }
        }
        drop(quiet);
        Ok(traffic.join().expect("the traffic thread"))
    })?;
    let elapsed = started.elapsed();
    // Back in contact after the last fault, then every checked client's
    // last line, which comes after all its others.
    let recovered = wait_for(WAIT, || {
        checked.iter().all(|p| {
            let t = p.tally();
            t.back_in_contact >= t.lost_contact
        })
    });
    if !recovered {
        failures.push("not every checked client heard `* back in contact`".into());
    }
    for (i, p) in checked.iter_mut().enumerate() {
        p.send(&format!("cf-end {i}\n"))?;
    }
    let all: Vec<usize> = (0..checked.len()).collect();
    let ended = wait_for(WAIT, || {
        checked.iter().enumerate().all(|(i, p)| {
            let t = p.tally();
            all.iter().all(|j| *j == i || t.ended.contains(j))
        })
    });
    if !ended {
        failures.push(format!(
            "not every checked client had the others' last lines within {WAIT:?}"
        ));
    }
    // `/who` lists exactly the live clients, each once, on both nodes.
    let mut live: Vec<String> = checked
        .iter()
        .chain(&bystanders)
        .map(|p| p.name.clone())
        .collect();
    live.sort();
    for p in &mut checked {
        p.tally().online = None;
        p.send("/who\n")?;
    }
    let answered = wait_for(WAIT, || checked.iter().all(|p| p.tally().online.is_some()));
    let who_exact = answered
        && checked.iter().all(|p| {
            let mut listed = p.tally().online.clone().unwrap_or_default();
            listed.sort();
            listed == live
        });
    if !who_exact {
        failures.push("`/who` did not list exactly the live clients".into());
    }
    // Tally: what each checked client should have had of the others'.
    let mut delivered = 0;
    let mut told = 0;
    let mut refused_total = 0;
    let mut silent = 0;
    let mut out_of_order = 0;
    let mut ghosts = 0;
    let mut left_heard = 0;
    let mut lost_contact = 0;
    let mut back = 0;
    let refused: Vec<u64> = checked.iter().map(|p| p.tally().refused).collect();
    for (r, p) in checked.iter().enumerate() {
        let t = p.tally();
        // A line its sender was told could not go reaches only its node.
        let expected: u64 = (0..checked.len())
            .filter(|&s| s != r)
            .map(|s| {
                let not_sent = if node_of(s) == node_of(r) {
                    0
                } else {
                    refused[s]
                };
                sent[s].saturating_sub(not_sent)
            })
            .sum();
        let received: u64 = t.received.values().sum();
        silent += expected.saturating_sub(received + t.told_lost);
        delivered += received;
        told += t.told_lost;
        refused_total += t.refused;
        out_of_order += t.out_of_order;
        ghosts += t.ghosts;
        left_heard += t.left.len() as u64;
        lost_contact += t.lost_contact;
        back += t.back_in_contact;
    }
    // Nothing leaked: each node back to the descriptors it had, its
    // clients (the third's replaced) connected and Redis's connections
    // replaced, not added.
    let fds_now = || -> Vec<Option<u64>> { pids.iter().map(|&p| open_fds(p)).collect() };
    wait_for(Duration::from_secs(5), || fds_now() == fds_before);
    let fds_after = fds_now();
    let leaked: u64 = fds_after
        .iter()
        .zip(&fds_before)
        .map(|(a, b)| a.unwrap_or(0).saturating_sub(b.unwrap_or(0)))
        .sum();
    let cpu: Vec<Option<f64>> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, b)| cpu_of(p).zip(*b).map(|(a, b)| a - b))
        .collect();
    let exited: Vec<String> = nodes.iter_mut().filter_map(Server::exited).collect();
    m.server_peak_rss = nodes.iter().filter_map(Server::peak_rss).max();
    m.server_cpu_s = cpu.iter().copied().sum();
    stop.store(true, Ordering::Relaxed);
    drop(checked);
    drop(bystanders);
    drop(nodes);
    drop(redis);
    let total: u64 = injected.values().sum();
    let by_kind: serde_json::Map<String, serde_json::Value> = Fault::ALL
        .iter()
        .map(|f| {
            (
                f.key().to_string(),
                json!(injected.get(f).copied().unwrap_or(0)),
            )
        })
        .collect();
    m.tester = Some(json!({
        "injected": by_kind,
        "injected_total": total,
        "elapsed_s": elapsed.as_secs_f64(),
        "checked_clients": sent.len(),
        "sent": sent.iter().sum::<u64>(),
        "delivered": delivered,
        "lost_told": told,
        "refused_to_senders": refused_total,
        "lost_silently": silent,
        "duplicated_or_reordered": out_of_order,
        "ghost_lines": ghosts,
        "left_announced": left_heard,
        "left_expected": left_expected,
        "lost_contact_notices": lost_contact,
        "back_in_contact_notices": back,
        "who_exact": who_exact,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "leaked_fds": leaked,
        "nodes_up": u8::from(exited.is_empty()),
        "failures": failures,
    }));
    for i in 0..NODES as usize {
        let lines = crate::process::count_lines(&bench.out.join(log_name(i))).ok();
        if i == 0 {
            m.server_log = Some(ServerLog {
                file: log_name(0),
                lines,
            });
        }
    }
    if let Some(exit) = exited.into_iter().next() {
        m.error = Some(exit);
    }
    Ok(())
}

fn cpu_of(pid: u32) -> Option<f64> {
    cpu_split_of(pid).map(|(user, system)| user + system)
}

/// One progress line.
pub fn summary(m: &Measurement) -> String {
    if let Some(err) = &m.error {
        return format!("cluster faults: FAILED: {err}");
    }
    let n = |p: &str| m.figure(p).map_or("—".into(), crate::table::count);
    let kinds: Vec<String> = Fault::ALL
        .iter()
        .map(|f| format!("{} {}", f.key(), n(&format!("/injected/{}", f.key()))))
        .collect();
    format!(
        "cluster faults: {} faults in {:.0} s ({}); {} lines delivered, {} lost and told, \
         {} lost silently; {} duplicated or reordered, {} ghost lines",
        n("/injected_total"),
        m.figure("/elapsed_s").unwrap_or(f64::NAN),
        kinds.join(", "),
        n("/delivered"),
        n("/lost_told"),
        n("/lost_silently"),
        n("/duplicated_or_reordered"),
        n("/ghost_lines"),
    )
}
