//! The project's targets for stage 5, each a ratio of two figures from the same
//! run, judged met or missed.

use serde::{Deserialize, Serialize};

use crate::cluster::{CLUSTER, Setup};
use crate::plan::{Numbers, REDIS_PUBSUB, STAGE5, STAGE5_NOTICES_OFF, TOKIO};
use crate::results::{Measurement, Test, median};
use crate::table::count;

/// The memory budget of the join and fan-out targets.
pub const RSS_BUDGET: u64 = 64 << 20;
/// The most a held, idle connection may cost the server.
pub const BYTES_PER_CONNECTION: f64 = 256.0;
/// The p99 delivery latency allowed at the target rate.
pub const P99_US: f64 = 2000.0;
/// The p99 delivery latency allowed across two stage 7 nodes.
pub const CLUSTER_P99_US: f64 = 5000.0;
/// Stage 5's fan-out must cost tokio-chat's server CPU per delivery divided
/// by this.
pub const FANOUT_FACTOR: f64 = 2.0;
/// Stage 5's connections/s must be at least this share of the fastest server's.
pub const CONNECT_SHARE: f64 = 0.95;

#[derive(Clone, Serialize, Deserialize)]
pub struct Target {
    /// A short key: fanout, latency, tail, idle_bytes, join_rss, connect, chaos.
    pub key: String,
    /// What must hold, in words.
    pub goal: String,
    /// The figures behind the ratio, in words.
    pub measured: String,
    /// The ratio the goal is about (see `needs`).
    pub ratio: Option<f64>,
    /// `≥ 2`, `≤ 1`, ...: what the ratio must be.
    pub needs: String,
    /// None when the figures were not measured (stage 5 not built).
    pub met: Option<bool>,
}

/// Judge every target from one run's measurements.
pub fn evaluate(ms: &[Measurement], numbers: &Numbers) -> Vec<Target> {
    let clients = numbers.chat_clients[0];
    let rate = numbers.target_rate();
    let connect_c = numbers.connect_concurrency[1];
    let mut targets = vec![
        fanout(ms, clients),
        latency(ms, clients, rate),
        tail(ms, clients, rate),
        idle_bytes(ms),
        join_rss(ms, numbers),
        connect(ms, connect_c),
        chaos(ms),
        cluster_idle_bytes(ms),
        cluster_p99(ms),
        cluster_faults(ms),
    ];
    // A figure a run did not report makes a ratio infinite (or NaN), which
    // JSON cannot hold: results.json would say `null` where this run's
    // table says `inf`. No ratio is what it is.
    for target in &mut targets {
        target.ratio = target.ratio.filter(|r| r.is_finite());
    }
    targets
}

/// The cluster part's targets' keys.
pub const CLUSTER_TARGETS: [&str; 2] = ["cluster_idle_bytes", "cluster_p99"];

/// A cluster target whose run was skipped (no Redis): not measured, with why.
fn cluster_skipped(key: &str, goal: &str, needs: &str, run: &Measurement) -> Option<Target> {
    let why = run.cluster.as_ref()?.skipped.as_ref()?;
    Some(Target {
        key: key.into(),
        goal: goal.into(),
        measured: format!("skipped: {why}"),
        ratio: None,
        needs: needs.into(),
        met: None,
    })
}

fn cluster_idle_bytes(ms: &[Measurement]) -> Target {
    let run = find(ms, CLUSTER, |t| matches!(t, Test::ClusterHold { .. }));
    let goal = format!(
        "stage 7, four nodes on one port: bytes per idle connection ≤ {BYTES_PER_CONNECTION} \
         on every node"
    );
    let key = CLUSTER_TARGETS[0];
    if let Some(t) = unmeasured(key, goal.clone(), "≤ 1", &[run]) {
        return t;
    }
    let run = run.unwrap();
    if let Some(t) = cluster_skipped(key, &goal, "≤ 1", run) {
        return t;
    }
    let Test::ClusterHold { connections, .. } = run.test else {
        unreachable!("found by its test")
    };
    let nodes = run.cluster.as_ref().map_or(&[][..], |c| &c.nodes[..]);
    let worst = nodes
        .iter()
        .map(|n| n.bytes_per_connection().unwrap_or(f64::INFINITY))
        .fold(f64::NAN, f64::max);
    let held: u64 = nodes.iter().filter_map(|n| n.held).sum();
    let open = run.figure("/open_at_end").unwrap_or(0.0);
    Target {
        key: key.into(),
        goal,
        measured: format!(
            "at most {worst:.0} bytes per connection on a node; {} of {} held",
            count(open),
            count(connections as f64)
        ),
        ratio: Some(worst / BYTES_PER_CONNECTION),
        needs: "≤ 1".into(),
        met: Some(
            worst <= BYTES_PER_CONNECTION && open as u64 == connections && held >= connections,
        ),
    }
}

fn cluster_p99(ms: &[Measurement]) -> Target {
    let run = find(ms, CLUSTER, |t| {
        matches!(
            t,
            Test::ClusterChat {
                setup: Setup::TwoNodes,
                ..
            }
        )
    });
    let goal = "stage 7, two nodes, clients split: p99 delivery latency ≤ 5 ms".to_string();
    let key = CLUSTER_TARGETS[1];
    if let Some(t) = unmeasured(key, goal.clone(), "≤ 1", &[run]) {
        return t;
    }
    let run = run.unwrap();
    if let Some(t) = cluster_skipped(key, &goal, "≤ 1", run) {
        return t;
    }
    paced_p99(key.into(), goal, &[run], CLUSTER_P99_US)
}

/// The p99s of one server's runs at one load: the median, the lowest and
/// the highest, and whether every run sent at the rate asked.
struct P99s {
    median: f64,
    lowest: f64,
    highest: f64,
    runs: usize,
    rate_met: bool,
}

impl P99s {
    fn of(runs: &[&Measurement]) -> P99s {
        let ok: Vec<&Measurement> = runs.iter().copied().filter(|m| m.error.is_none()).collect();
        let p99s: Vec<f64> = ok
            .iter()
            .filter_map(|m| m.figure("/latency/p99_us"))
            .collect();
        P99s {
            median: median(&ok, |m| m.figure("/latency/p99_us")).unwrap_or(f64::INFINITY),
            lowest: p99s.iter().copied().fold(f64::INFINITY, f64::min),
            highest: p99s.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            runs: p99s.len(),
            rate_met: ok.iter().all(|m| {
                m.tester
                    .as_ref()
                    .and_then(|j| j.get("rate_met"))
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
            }),
        }
    }

    fn range(&self) -> f64 {
        self.highest - self.lowest
    }
}

impl std::fmt::Display for P99s {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} ms ({:.3}–{:.3} over {} runs)",
            self.median / 1000.0,
            self.lowest / 1000.0,
            self.highest / 1000.0,
            self.runs
        )
    }
}

/// A latency target: the runs' median p99 at most `limit_us`, every run at
/// the rate it was asked to keep.
fn paced_p99(key: String, goal: String, runs: &[&Measurement], limit_us: f64) -> Target {
    let p99s = P99s::of(runs);
    let achieved = median(runs, |m| m.figure("/send_rate")).unwrap_or(0.0);
    // Of several runs, the median p99 and the lowest and highest.
    let rounds = if p99s.runs > 1 {
        format!(
            " (the median of {} runs, {:.3}–{:.3} ms)",
            p99s.runs,
            p99s.lowest / 1000.0,
            p99s.highest / 1000.0
        )
    } else {
        String::new()
    };
    Target {
        key,
        goal,
        measured: format!(
            "p99 {:.3} ms{rounds} at {achieved:.0} sends/s achieved{}",
            p99s.median / 1000.0,
            if p99s.rate_met {
                ""
            } else {
                " (below the asked rate)"
            }
        ),
        ratio: Some(p99s.median / limit_us),
        needs: "≤ 1".into(),
        met: Some(p99s.median <= limit_us && p99s.rate_met),
    }
}

/// The chaos target's key.
pub const CHAOS: &str = "chaos";

/// The cluster fault run's target's key.
pub const CLUSTER_FAULTS: &str = "cluster_faults";

/// Stage 7 under faults of Redis and of a node: not a checked line lost
/// without its receiver (or its sender) being told, none twice or out of
/// order, no ghost of a paused node, `/who` exact, no descriptor leaked,
/// every node up. The ratio is the count of lines lost silently.
fn cluster_faults(ms: &[Measurement]) -> Target {
    let run = find(ms, CLUSTER, |t| matches!(t, Test::ClusterFaults { .. }));
    let goal = "stage 7 under faults (Redis frozen, restarted empty, refusing writes; a node \
                paused past its lease): checked lines lost silently = 0, none twice or out of \
                order, no ghost, `/who` exact, no descriptor leaked, every node up"
        .to_string();
    let key = CLUSTER_FAULTS;
    if let Some(t) = run.and_then(|r| cluster_skipped(key, &goal, "= 0", r)) {
        return t;
    }
    let Some(run) = run.filter(|m| m.tester.is_some()) else {
        return unmeasured(key, goal.clone(), "= 0", &[run]).unwrap_or(Target {
            key: key.into(),
            goal,
            measured: "no figures".into(),
            ratio: None,
            needs: "= 0".into(),
            met: Some(false),
        });
    };
    let n = |p: &str| run.figure(p).unwrap_or(f64::NAN);
    let flag = |k: &str| {
        run.tester
            .as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    let failures = run
        .tester
        .as_ref()
        .and_then(|j| j.get("failures"))
        .and_then(|v| v.as_array())
        .map_or(0, Vec::len);
    let silent = n("/lost_silently");
    let up = n("/nodes_up") == 1.0;
    let clean = n("/duplicated_or_reordered") == 0.0
        && n("/ghost_lines") == 0.0
        && n("/leaked_fds") == 0.0
        && flag("who_exact")
        && failures == 0;
    let failed = run
        .error
        .as_ref()
        .map_or(String::new(), |e| format!("; run failed: {e}"));
    Target {
        key: key.into(),
        goal,
        measured: format!(
            "{} faults in {:.1} min; {} lines delivered, {} lost and told, {} lost silently; \
             {} duplicated or reordered, {} ghost lines, {} descriptors leaked, `/who` {}; \
             nodes {}{failed}",
            count(n("/injected_total")),
            n("/elapsed_s") / 60.0,
            count(n("/delivered")),
            count(n("/lost_told")),
            count(silent),
            n("/duplicated_or_reordered"),
            n("/ghost_lines"),
            n("/leaked_fds"),
            if flag("who_exact") {
                "exact"
            } else {
                "NOT exact"
            },
            if up { "up" } else { "DOWN" }
        ),
        ratio: Some(silent),
        needs: "= 0".into(),
        met: Some(silent == 0.0 && clean && up && run.error.is_none()),
    }
}

fn find<'a>(
    ms: &'a [Measurement],
    server: &str,
    test: impl Fn(&Test) -> bool,
) -> Option<&'a Measurement> {
    // A run without an error when there is one: of repeated runs, one
    // failure does not void the others.
    ms.iter()
        .filter(|m| m.server == server && test(&m.test))
        .min_by_key(|m| m.error.is_some())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// A target whose figures are missing or whose run failed.
fn unmeasured(
    key: &str,
    goal: String,
    needs: &str,
    runs: &[Option<&Measurement>],
) -> Option<Target> {
    let (met, measured) = if runs.iter().any(Option::is_none) {
        (None, "not measured".to_string())
    } else if let Some(err) = runs.iter().flatten().find_map(|m| m.error.as_ref()) {
        (Some(false), format!("run failed: {err}"))
    } else {
        return None;
    };
    Some(Target {
        key: key.into(),
        goal,
        measured,
        ratio: None,
        needs: needs.into(),
        met,
    })
}

/// Judged on server CPU per delivery, not on deliveries/s: each server has
/// a CPU of its own, and the tester one, so a server that needs less than
/// the tester per line is held to the tester's pace, and its rate says how
/// fast the tester is. Its CPU per line is its own, whatever the pace.
fn fanout(ms: &[Measurement], clients: u32) -> Target {
    let unpaced = |t: &Test| matches!(*t, Test::Chat { clients: c, rate: 0, .. } if c == clients);
    let (stage5, tokio) = (find(ms, STAGE5, unpaced), find(ms, TOKIO, unpaced));
    let goal = format!(
        "fan-out, {clients} clients unpaced (median of the rounds): stage 5's server CPU per \
         delivery ≤ 1/{FANOUT_FACTOR} of tokio-chat's, its deliveries/s ≥ tokio-chat's, peak RSS < {}",
        mib(RSS_BUDGET)
    );
    if let Some(t) = unmeasured("fanout", goal.clone(), "≥ 2", &[stage5, tokio]) {
        return t;
    }
    let runs = |server: &str| -> Vec<&Measurement> {
        ms.iter()
            .filter(|m| m.server == server && unpaced(&m.test))
            .collect()
    };
    let (ours_runs, theirs_runs) = (runs(STAGE5), runs(TOKIO));
    let rate = |m: &Measurement| m.figure("/deliveries_per_s");
    let cpu = |m: &Measurement| m.cpu_ns_per("/delivered");
    let ours = median(&ours_runs, rate).unwrap_or(0.0);
    let theirs = median(&theirs_runs, rate).unwrap_or(0.0);
    let (ours_cpu, theirs_cpu) = (median(&ours_runs, cpu), median(&theirs_runs, cpu));
    let ratio = match (ours_cpu, theirs_cpu) {
        (Some(a), Some(b)) if a > 0.0 => b / a,
        _ => 0.0,
    };
    let peak = ours_runs
        .iter()
        .map(|m| m.server_peak_rss.unwrap_or(u64::MAX))
        .max()
        .unwrap_or(u64::MAX);
    let cpu_note = match (ours_cpu, theirs_cpu) {
        (Some(a), Some(b)) => format!("server CPU {a:.0} vs {b:.0} ns per delivery"),
        _ => "server CPU per delivery not measured".into(),
    };
    let tester_busy =
        |m: &Measurement| m.busy(|m| m.tester_ns_per("/delivered"), "/deliveries_per_s");
    let busy_note = median(&ours_runs, tester_busy)
        .map(|b| {
            format!(
                ", the tester's CPU {:.0}% busy in stage 5's runs",
                b * 100.0
            )
        })
        .unwrap_or_default();
    Target {
        key: "fanout".into(),
        goal,
        measured: format!(
            "{cpu_note}; {ours:.0} vs {theirs:.0} deliveries/s over {} and {} runs{busy_note}; \
             stage 5 peak RSS {}",
            ours_runs.len(),
            theirs_runs.len(),
            mib(peak)
        ),
        ratio: Some(ratio),
        needs: format!("≥ {FANOUT_FACTOR}"),
        met: Some(ratio >= FANOUT_FACTOR && ours >= theirs && peak < RSS_BUDGET),
    }
}

fn latency(ms: &[Measurement], clients: u32, rate: u64) -> Target {
    let paced = |t: &Test| matches!(*t, Test::Chat { clients: c, rate: r, .. } if c == clients && r == rate);
    let goal = format!(
        "p99 delivery latency at {rate} sends/s across {clients} clients ≤ 2 ms (the median of the runs)"
    );
    if let Some(t) = unmeasured("latency", goal.clone(), "≤ 1", &[find(ms, STAGE5, paced)]) {
        return t;
    }
    let runs: Vec<&Measurement> = ms
        .iter()
        .filter(|m| m.server == STAGE5 && paced(&m.test))
        .collect();
    paced_p99("latency".into(), goal, &runs, P99_US)
}

/// Stage 5's tail against Redis pub/sub's at the latency target's load, in
/// the same run: both servers make about the same system calls a round
/// there, so a looser tail would be the server's own doing.
fn tail(ms: &[Measurement], clients: u32, rate: u64) -> Target {
    let paced = |t: &Test| matches!(*t, Test::Chat { clients: c, rate: r, .. } if c == clients && r == rate);
    let goal = format!(
        "p99 delivery latency at {rate} sends/s across {clients} clients ≤ Redis pub/sub's \
         (the median of the runs), and the range of the runs no wider"
    );
    let found = [find(ms, STAGE5, paced), find(ms, REDIS_PUBSUB, paced)];
    if let [Some(_), None] = found {
        return Target {
            key: "tail".into(),
            goal,
            measured: "skipped: Redis pub/sub was not measured (is redis-server installed?)".into(),
            ratio: None,
            needs: "≤ 1".into(),
            met: None,
        };
    }
    if let Some(t) = unmeasured("tail", goal.clone(), "≤ 1", &found) {
        return t;
    }
    let of = |server: &str| {
        let runs: Vec<&Measurement> = ms
            .iter()
            .filter(|m| m.server == server && paced(&m.test))
            .collect();
        P99s::of(&runs)
    };
    let (ours, theirs) = (of(STAGE5), of(REDIS_PUBSUB));
    let rate_met = ours.rate_met && theirs.rate_met;
    Target {
        key: "tail".into(),
        goal,
        measured: format!(
            "p99 {ours} against Redis pub/sub's {theirs}{}",
            if rate_met {
                ""
            } else {
                " (below the asked rate)"
            }
        ),
        ratio: Some(ours.median / theirs.median),
        needs: "≤ 1".into(),
        met: Some(ours.median <= theirs.median && ours.range() <= theirs.range() && rate_met),
    }
}

fn idle_bytes(ms: &[Measurement]) -> Target {
    let largest = ms
        .iter()
        .filter(|m| m.server == STAGE5)
        .filter_map(|m| match m.test {
            Test::Hold { connections } => Some((connections, m)),
            _ => None,
        })
        .max_by_key(|&(n, _)| n);
    let goal = format!("bytes per idle connection ≤ {BYTES_PER_CONNECTION} (the largest hold)");
    if let Some(t) = unmeasured(
        "idle_bytes",
        goal.clone(),
        "≤ 1",
        &[largest.map(|(_, m)| m)],
    ) {
        return t;
    }
    let (n, run) = largest.unwrap();
    let held = run.figure("/open_at_end").unwrap_or(0.0);
    let bytes = run
        .figure("/server_bytes_per_connection")
        .unwrap_or(f64::INFINITY);
    // The cost of one more connection, from the smallest hold to the
    // largest: it leaves out what the server keeps from the first ones.
    let smallest = ms
        .iter()
        .filter(|m| m.server == STAGE5 && m.error.is_none())
        .filter(|m| matches!(m.test, Test::Hold { connections } if connections < n))
        .min_by_key(|m| match m.test {
            Test::Hold { connections } => connections,
            _ => u64::MAX,
        });
    let marginal = smallest.and_then(|small| {
        let rss = run.figure("/server_rss_after")? - small.figure("/server_rss_after")?;
        let more = held - small.figure("/open_at_end")?;
        (more > 0.0).then(|| {
            format!(
                "; {:.0} bytes per connection past the first {:.0}",
                rss / more,
                held - more
            )
        })
    });
    Target {
        key: "idle_bytes".into(),
        goal,
        measured: format!(
            "{bytes:.0} bytes per connection, {held:.0} of {n} held{}",
            marginal.unwrap_or_default()
        ),
        ratio: Some(bytes / BYTES_PER_CONNECTION),
        needs: "≤ 1".into(),
        met: Some(bytes <= BYTES_PER_CONNECTION && held as u64 == n),
    }
}

fn join_rss(ms: &[Measurement], numbers: &Numbers) -> Target {
    let run = find(ms, STAGE5, |t| matches!(t, Test::Join { .. }));
    let goal = format!(
        "{} clients joining: server peak RSS < {}",
        numbers.join_clients,
        mib(RSS_BUDGET)
    );
    if let Some(t) = unmeasured("join_rss", goal.clone(), "< 1", &[run]) {
        return t;
    }
    let run = run.unwrap();
    let peak = run.server_peak_rss.unwrap_or(u64::MAX);
    let held = run.figure("/open_at_end").unwrap_or(0.0);
    Target {
        key: "join_rss".into(),
        goal,
        measured: format!("peak RSS {}, {held:.0} clients held", mib(peak)),
        ratio: Some(peak as f64 / RSS_BUDGET as f64),
        needs: "< 1".into(),
        met: Some(peak < RSS_BUDGET && held as u64 == numbers.join_clients),
    }
}

/// Judged on stage 5 started with `--announce-limit 1`: with 64 connections
/// in flight every connect and close otherwise sends a notice to each of
/// the other 63, which is fan-out (what the chat runs measure), not the
/// cost of accepting and closing. The default's figure is given beside it.
fn connect(ms: &[Measurement], concurrency: u32) -> Target {
    let at = |t: &Test| matches!(*t, Test::Connect { concurrency: c, .. } if c == concurrency);
    let run = find(ms, STAGE5_NOTICES_OFF, at);
    // Each server's median over the rounds.
    let rate = |server: &str| {
        let runs: Vec<&Measurement> = ms
            .iter()
            .filter(|m| m.server == server && at(&m.test))
            .collect();
        median(&runs, |m| m.figure("/connections_per_s"))
    };
    let goal = format!(
        "connections/s (concurrency {concurrency}, median of the rounds) of stage 5 with notices off \
         (`--announce-limit 1`) within 5% of the fastest server in the run"
    );
    if let Some(t) = unmeasured("connect", goal.clone(), "≥ 0.95", &[run]) {
        return t;
    }
    let ours = rate(STAGE5_NOTICES_OFF).unwrap_or(0.0);
    let mut servers: Vec<&str> = ms.iter().map(|m| m.server.as_str()).collect();
    servers.sort_unstable();
    servers.dedup();
    let fastest = servers
        .into_iter()
        .filter_map(|s| Some((rate(s)?, s)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((ours, STAGE5_NOTICES_OFF));
    let ratio = if fastest.0 > 0.0 {
        ours / fastest.0
    } else {
        0.0
    };
    let default = rate(STAGE5).map_or(String::new(), |r| {
        format!("; stage 5 with its notices (the default) {r:.0}/s")
    });
    Target {
        key: "connect".into(),
        goal,
        measured: format!("{ours:.0}/s vs {:.0}/s ({}){default}", fastest.0, fastest.1),
        ratio: Some(ratio),
        needs: format!("≥ {CONNECT_SHARE}"),
        met: Some(ratio >= CONNECT_SHARE),
    }
}

/// Faults around checked clients: not a line of theirs lost, duplicated or
/// reordered, and the server up at the end and greeting a fresh client.
/// The ratio is the count of lines that went wrong.
fn chaos(ms: &[Measurement]) -> Target {
    let run = find(ms, STAGE5, |t| matches!(t, Test::Chaos { .. }));
    let goal = "chaos (stage 5, logging on): checked lines lost + duplicated + reordered = 0, \
                the server up at the end"
        .to_string();
    let Some(run) = run.filter(|m| m.tester.is_some()) else {
        return unmeasured(CHAOS, goal.clone(), "= 0", &[run]).unwrap_or(Target {
            key: CHAOS.into(),
            goal,
            measured: "no figures".into(),
            ratio: None,
            needs: "= 0".into(),
            met: Some(false),
        });
    };
    let n = |p: &str| run.figure(p).unwrap_or(f64::NAN);
    let wrong = n("/lost") + n("/duplicated") + n("/reordered");
    let up = run.run.as_ref().is_some_and(|r| r.server_stayed_up)
        && run
            .tester
            .as_ref()
            .and_then(|j| j.get("fresh_client"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
    let failed = run
        .error
        .as_ref()
        .map_or(String::new(), |e| format!("; run failed: {e}"));
    Target {
        key: CHAOS.into(),
        goal,
        measured: format!(
            "{} faults in {:.1} min; lost {}, duplicated {}, reordered {} of {} lines \
             delivered; server {}{failed}",
            count(n("/injected_total")),
            n("/elapsed_s") / 60.0,
            n("/lost"),
            n("/duplicated"),
            n("/reordered"),
            count(n("/delivered")),
            if up { "up" } else { "DOWN" }
        ),
        ratio: Some(wrong),
        needs: "= 0".into(),
        met: Some(wrong == 0.0 && up && run.error.is_none()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An unpaced 100-client run: `rate` deliveries/s, `cpu_ns` of server
    /// CPU per delivery, the tester's CPU as busy as `tester_busy`.
    fn unpaced(server: &str, round: u32, rate: f64, cpu_ns: f64, tester_busy: f64) -> Measurement {
        let test = Test::Chat {
            clients: 100,
            messages: 4040,
            rate: 0,
            round,
        };
        let mut m = Measurement::new(server, "tester chat".into(), test);
        let delivered = 40_000_000.0;
        let seconds = delivered / rate;
        m.tester = Some(json!({
            "delivered": delivered,
            "deliveries_per_s": rate,
            "tester_cpu": { "user_s": seconds * tester_busy, "system_s": 0.0 },
        }));
        m.server_cpu_s = Some(delivered * cpu_ns / 1e9);
        m.server_peak_rss = Some(3 << 20);
        m
    }

    fn judged(ours: (f64, f64), theirs: (f64, f64)) -> Target {
        let ms: Vec<Measurement> = (0..3)
            .flat_map(|round| {
                [
                    unpaced(STAGE5, round, ours.0, ours.1, 0.98),
                    unpaced(TOKIO, round, theirs.0, theirs.1, 0.7),
                ]
            })
            .collect();
        fanout(&ms, 100)
    }

    /// A run at the latency target's load with this p99.
    fn paced(server: &str, round: u32, p99_us: f64) -> Measurement {
        let test = Test::Chat {
            clients: 100,
            messages: 250,
            rate: 5000,
            round,
        };
        let mut m = Measurement::new(server, "tester chat".into(), test);
        m.tester = Some(json!({ "latency": { "p99_us": p99_us }, "rate_met": true }));
        m
    }

    fn tail_of(ours: [f64; 3], theirs: [f64; 3]) -> Target {
        let ms: Vec<Measurement> = (0..3)
            .flat_map(|i| {
                [
                    paced(STAGE5, i as u32, ours[i]),
                    paced(REDIS_PUBSUB, i as u32, theirs[i]),
                ]
            })
            .collect();
        tail(&ms, 100, 5000)
    }

    #[test]
    fn the_tail_is_judged_on_the_median_and_the_range_of_the_runs() {
        let tighter = tail_of([1300.0, 1400.0, 1700.0], [1600.0, 2900.0, 3700.0]);
        assert_eq!(tighter.met, Some(true), "{}", tighter.measured);
        assert!((tighter.ratio.unwrap() - 1400.0 / 2900.0).abs() < 1e-9);
        // A lower median, but one round far out: not as tight.
        let wide = tail_of([900.0, 1000.0, 4000.0], [1100.0, 1200.0, 1300.0]);
        assert_eq!(wide.met, Some(false), "{}", wide.measured);
        // As steady, but slower.
        let slower = tail_of([2000.0, 2100.0, 2200.0], [1100.0, 1200.0, 1300.0]);
        assert_eq!(slower.met, Some(false), "{}", slower.measured);
        // No Redis in the run: not judged.
        let alone: Vec<Measurement> = (0..3).map(|i| paced(STAGE5, i, 1000.0)).collect();
        assert_eq!(tail(&alone, 100, 5000).met, None);
    }

    #[test]
    fn fan_out_is_judged_on_server_cpu_per_delivery() {
        // At the tester's pace, 1.5 times the rate but a quarter of the CPU.
        let held_back = judged((23e6, 15.0), (15e6, 65.0));
        assert_eq!(held_back.met, Some(true), "{}", held_back.measured);
        assert!((held_back.ratio.unwrap() - 65.0 / 15.0).abs() < 1e-9);
        assert!(
            held_back.measured.contains("98% busy"),
            "{}",
            held_back.measured
        );
        // Twice the rate, but as costly per line: not a faster server.
        let costly = judged((30e6, 40.0), (15e6, 65.0));
        assert_eq!(costly.met, Some(false), "{}", costly.measured);
        // Frugal, yet slower than tokio-chat: a server that idles.
        let idle = judged((10e6, 15.0), (15e6, 65.0));
        assert_eq!(idle.met, Some(false), "{}", idle.measured);
    }
}
