//! The cluster part: stage 7's nodes joined through a Redis the benchmark
//! starts for each run. Two measurements: the wall (four nodes on one port
//! holding idle connections, each node's memory per connection and Redis's)
//! and, side by side in one run, the cost of the bus at a fixed chat load
//! (one node without Redis, one node with it, two nodes with the clients
//! split over both). Without `redis-server` the part is recorded as
//! skipped, with the reason, and the rest of the benchmark stands.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::machine::load_average;
use crate::measure::Bench;
use crate::process::{Server, cpu_split_of, open_fds, rss_of, run_tester};
use crate::redis::{self, Redis};
use crate::results::{Measurement, RunInfo, Test};

/// The server's name in results.json, and its binary.
pub const CLUSTER: &str = "stage7-cluster";

/// Nodes sharing one port in the wall run: four processes of at most
/// 20,000 descriptors each hold 75,000 connections.
pub const WALL_NODES: u32 = 4;

/// How often the nodes are looked at while the tester holds: each look
/// lists every node's descriptors, so not much more often.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// How often, and at most how many times, the nodes' descriptors are
/// counted before the wall run, until two counts agree.
const SETTLE_EVERY: Duration = Duration::from_millis(250);
const SETTLE_LOOKS: u32 = 20;

/// One look at the nodes while the tester holds: each node's descriptors
/// and resident memory, and Redis's memory.
#[derive(Default)]
struct Look {
    total_fds: u64,
    nodes: Vec<(Option<u64>, Option<u64>)>,
    redis_rss: Option<u64>,
}

/// One side of the side-by-side chat runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// One node without `--redis`: stage 5's loop.
    OneNode,
    /// One node with `--redis`: every line goes through the stream.
    OneNodeRedis,
    /// Two nodes with `--redis`, the clients split over both addresses.
    TwoNodes,
}

impl Setup {
    pub const ALL: [Setup; 3] = [Setup::OneNode, Setup::OneNodeRedis, Setup::TwoNodes];

    pub fn label(self) -> &'static str {
        match self {
            Setup::OneNode => "one node, no Redis",
            Setup::OneNodeRedis => "one node, with Redis",
            Setup::TwoNodes => "two nodes, clients split",
        }
    }

    fn nodes(self) -> usize {
        match self {
            Setup::TwoNodes => 2,
            _ => 1,
        }
    }

    fn redis(self) -> bool {
        self != Setup::OneNode
    }
}

/// What a cluster run measured beyond the tester's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterFigures {
    /// Why the run did not happen (no `redis-server`, no stage 7 binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub nodes: Vec<Node>,
    /// Redis's resident memory before the tester started and when it had
    /// finished (the wall: at the moment the nodes held the most), bytes.
    pub redis_rss_before: Option<u64>,
    pub redis_rss_after: Option<u64>,
    /// CPU time Redis used during the tester's run, seconds.
    pub redis_cpu_s: Option<f64>,
}

/// One node's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Client connections it held at the fullest moment (its descriptors
    /// then, less those it had before the tester started).
    pub held: Option<u64>,
    /// Resident memory (VmRSS) before the tester started and at the
    /// fullest moment, bytes.
    pub rss_before: Option<u64>,
    pub rss_held: Option<u64>,
    /// CPU time used during the tester's run, seconds.
    pub cpu_s: Option<f64>,
}

impl Node {
    /// What one held connection cost it: its memory growth over them.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let held = self.held.filter(|&n| n > 0)? as f64;
        Some(self.rss_held?.saturating_sub(self.rss_before?) as f64 / held)
    }
}

/// The part's runs, in order: the wall, then the three chat setups.
pub fn part(bench: &Bench, bin_dir: &Path) -> Vec<Measurement> {
    let numbers = bench.numbers;
    let bin = bin_dir.join(CLUSTER);
    let clients = numbers.chat_clients[0];
    let rate = numbers.cluster_rate;
    let mut tests = vec![Test::ClusterHold {
        nodes: WALL_NODES,
        connections: numbers.cluster_hold,
    }];
    tests.extend(Setup::ALL.map(|setup| Test::ClusterChat {
        setup,
        clients,
        rate,
    }));
    let skipped = if !bin.is_file() {
        Some(format!("{} is not built", bin.display()))
    } else if !redis::installed() {
        Some("redis-server is not installed (apt-get install redis-server)".to_string())
    } else {
        None
    };
    tests
        .into_iter()
        .map(|test| {
            let mut m = Measurement::new(CLUSTER, command(&test, bench), test);
            m.run = Some(RunInfo {
                load_before: load_average(),
                ..RunInfo::default()
            });
            match &skipped {
                Some(why) => {
                    m.cluster = Some(ClusterFigures {
                        skipped: Some(why.clone()),
                        ..ClusterFigures::default()
                    });
                    eprintln!("{CLUSTER:<24} {}: skipped: {why}", m.what());
                }
                None => {
                    let ran = match m.test {
                        Test::ClusterHold { nodes, .. } => wall(&mut m, bench, &bin, nodes),
                        Test::ClusterChat { setup, .. } => chat(&mut m, bench, &bin, setup),
                        _ => unreachable!("only cluster tests here"),
                    };
                    if let Err(err) = ran {
                        m.error = Some(format!("{err:#}"));
                    }
                    eprintln!("{CLUSTER:<24} {}", summary(&m));
                }
            }
            if let Some(run) = &mut m.run {
                run.load_after = load_average();
                run.server_stayed_up = m.error.is_none();
            }
            m
        })
        .collect()
}

/// The tester's command line, ADDR standing for the node addresses.
fn command(test: &Test, bench: &Bench) -> String {
    format!(
        "tester {}",
        tester_args(test, bench, &["ADDR".into()]).join(" ")
    )
}

fn tester_args(test: &Test, bench: &Bench, addrs: &[String]) -> Vec<String> {
    let numbers = bench.numbers;
    let mut args: Vec<String> = match *test {
        Test::ClusterHold { connections, .. } => {
            let mut a = vec!["hold".to_string()];
            a.extend(addrs.iter().cloned());
            a.extend([
                "--connections".into(),
                connections.to_string(),
                "--duration".into(),
                format!("{}ms", numbers.hold_for.as_millis()),
            ]);
            a
        }
        Test::ClusterChat { clients, rate, .. } => {
            let mut a = vec!["chat".to_string()];
            a.extend(addrs.iter().cloned());
            a.extend([
                "--clients".into(),
                clients.to_string(),
                "--messages".into(),
                numbers.paced_messages(clients, rate).to_string(),
                "--rate".into(),
                rate.to_string(),
            ]);
            a
        }
        _ => Vec::new(),
    };
    args.push("--json".into());
    args
}

/// The wall: `nodes` nodes on one port (the first picks it, the others
/// share it with `--reuseport`), the tester holding its idle connections
/// to that port while every node is looked at; the fullest look gives each
/// node's connections and memory.
fn wall(m: &mut Measurement, bench: &Bench, bin: &Path, nodes: u32) -> Result<()> {
    let cpu = bench.pinning.server_cpu;
    let redis = Redis::start(cpu)?;
    let redis_addr = redis.addr.to_string();
    let flags = ["--redis", redis_addr.as_str(), "--reuseport"];
    let first = Server::start(bin, &flags, cpu)?;
    let addr = first.addr.to_string();
    let mut servers = vec![first];
    for _ in 1..nodes {
        servers.push(Server::start_on(bin, &flags, &addr, cpu)?);
    }
    let pids: Vec<u32> = servers.iter().map(Server::pid).collect();
    let fds_before = settled_fds(&pids);
    let rss_before: Vec<Option<u64>> = pids.iter().map(|&p| rss_of(p)).collect();
    let redis_rss_before = redis.rss();
    let redis_cpu_before = redis.cpu_seconds();
    let args = tester_args(&m.test, bench, &[addr]);
    let stop = AtomicBool::new(false);
    // The fullest look, the one with the most descriptors open.
    let (run, fullest) = thread::scope(|scope| {
        let looker = scope.spawn(|| {
            let mut fullest: Option<Look> = None;
            while !stop.load(Ordering::Relaxed) {
                let nodes: Vec<(Option<u64>, Option<u64>)> =
                    pids.iter().map(|&p| (open_fds(p), rss_of(p))).collect();
                let total_fds = nodes.iter().filter_map(|(fds, _)| *fds).sum::<u64>();
                if fullest.as_ref().is_none_or(|f| total_fds > f.total_fds) {
                    fullest = Some(Look {
                        total_fds,
                        nodes,
                        redis_rss: redis.rss(),
                    });
                }
                thread::sleep(SAMPLE_EVERY);
            }
            fullest
        });
        let run = run_tester(
            bench.tester,
            &args,
            bench.numbers.run_limit,
            bench.pinning.tester_cpu,
        );
        stop.store(true, Ordering::Relaxed);
        (run, looker.join().ok().flatten())
    });
    let run = run?;
    m.tester = run.json;
    let fullest = fullest.unwrap_or_default();
    let (look, redis_rss_held) = (fullest.nodes, fullest.redis_rss);
    let nodes: Vec<Node> = (0..pids.len())
        .map(|i| {
            let (fds, rss) = look.get(i).copied().unwrap_or_default();
            Node {
                held: fds.zip(fds_before[i]).map(|(f, b)| f.saturating_sub(b)),
                rss_before: rss_before[i],
                rss_held: rss,
                cpu_s: None,
            }
        })
        .collect();
    m.cluster = Some(ClusterFigures {
        skipped: None,
        nodes,
        redis_rss_before,
        redis_rss_after: redis_rss_held,
        redis_cpu_s: redis
            .cpu_seconds()
            .zip(redis_cpu_before)
            .map(|(a, b)| a - b),
    });
    m.server_peak_rss = servers.iter().filter_map(Server::peak_rss).max();
    m.error = servers.iter_mut().find_map(Server::exited).or(run.error);
    Ok(())
}

/// Each node's descriptors once they stop changing: a node opens its
/// Redis connections and its timer after it prints `listening on`, and
/// those are not client connections. Gives up waiting after a few seconds.
pub(crate) fn settled_fds(pids: &[u32]) -> Vec<Option<u64>> {
    let look = || -> Vec<Option<u64>> { pids.iter().map(|&p| open_fds(p)).collect() };
    let mut last = look();
    for _ in 0..SETTLE_LOOKS {
        thread::sleep(SETTLE_EVERY);
        let now = look();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// One chat setup: its nodes (and Redis, if it has one) started afresh,
/// the tester's clients spread over the nodes' addresses.
fn chat(m: &mut Measurement, bench: &Bench, bin: &Path, setup: Setup) -> Result<()> {
    let cpu = bench.pinning.server_cpu;
    let redis = if setup.redis() {
        Some(Redis::start(cpu)?)
    } else {
        None
    };
    let redis_addr = redis.as_ref().map(|r| r.addr.to_string());
    let mut flags = Vec::new();
    if let Some(addr) = &redis_addr {
        flags.extend(["--redis", addr.as_str()]);
    }
    let mut servers = Vec::new();
    for _ in 0..setup.nodes() {
        servers.push(Server::start(bin, &flags, cpu)?);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let args = tester_args(&m.test, bench, &addrs);
    let cpu_of = |pid: u32| cpu_split_of(pid).map(|(user, system)| user + system);
    let nodes_before: Vec<Option<f64>> = servers.iter().map(|s| cpu_of(s.pid())).collect();
    let redis_before = redis.as_ref().and_then(Redis::cpu_seconds);
    let redis_rss_before = redis.as_ref().and_then(Redis::rss);
    let run = run_tester(
        bench.tester,
        &args,
        bench.numbers.run_limit,
        bench.pinning.tester_cpu,
    )?;
    m.tester = run.json;
    let nodes: Vec<Node> = servers
        .iter()
        .zip(&nodes_before)
        .map(|(s, before)| Node {
            held: None,
            rss_before: None,
            rss_held: s.peak_rss(),
            cpu_s: cpu_of(s.pid()).zip(*before).map(|(a, b)| a - b),
        })
        .collect();
    m.server_cpu_s = nodes.iter().map(|n| n.cpu_s).sum();
    m.server_peak_rss = servers.iter().filter_map(Server::peak_rss).max();
    m.cluster = Some(ClusterFigures {
        skipped: None,
        nodes,
        redis_rss_before,
        redis_rss_after: redis.as_ref().and_then(Redis::rss),
        redis_cpu_s: redis
            .as_ref()
            .and_then(Redis::cpu_seconds)
            .zip(redis_before)
            .map(|(a, b)| a - b),
    });
    m.error = servers.iter_mut().find_map(Server::exited).or(run.error);
    Ok(())
}

/// One progress line.
fn summary(m: &Measurement) -> String {
    let what = m.what();
    if let Some(err) = &m.error {
        return format!("{what}: FAILED: {err}");
    }
    let Some(c) = &m.cluster else {
        return format!("{what}: no figure");
    };
    match m.test {
        Test::ClusterHold { .. } => {
            let per_node: Vec<String> = c
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "{} held, {:.0} B each",
                        n.held.unwrap_or(0),
                        n.bytes_per_connection().unwrap_or(f64::NAN)
                    )
                })
                .collect();
            format!("{what}: {}", per_node.join("; "))
        }
        _ => format!(
            "{what}: {:.0} deliveries/s, p99 {:.0} µs",
            m.figure("/deliveries_per_s").unwrap_or(f64::NAN),
            m.figure("/latency/p99_us").unwrap_or(f64::NAN)
        ),
    }
}
