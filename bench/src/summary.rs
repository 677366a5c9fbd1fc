//! The few lines the benchmark ends with: each target and its result, the
//! poll-against-epoll figures, the runs that failed, what else used the
//! machine, and where the full report is. Short enough for any terminal.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::results::{Results, Test};
use crate::table::count;

/// At most this many failed runs are named; the report has them all.
const FAILURES_SHOWN: usize = 3;

pub fn render(r: &Results, reports: &[PathBuf]) -> String {
    let mut out = String::new();
    let took = r
        .elapsed_s
        .map_or(String::new(), |s| format!(", measured in {}", minutes(s)));
    let _ = writeln!(
        out,
        "\n{} ({:?} profile{took}), commit {}",
        r.command,
        r.profile,
        r.commit.describe()
    );
    out.push_str("targets for stage 5:\n");
    for t in &r.targets {
        let result = match t.met {
            Some(true) => "met   ",
            Some(false) => "MISSED",
            None => "n/a   ",
        };
        let ratio = t.ratio.map_or("—".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "  {result} {:<11} ratio {ratio} (needs {})",
            t.key, t.needs
        );
    }
    ping_pong(&mut out, r);
    chaos(&mut out, r);
    cluster_faults(&mut out, r);
    let total = r.measurements.len();
    let failed: Vec<_> = r
        .measurements
        .iter()
        .filter(|m| m.error.is_some())
        .collect();
    let _ = writeln!(out, "runs: {total}, failed: {}", failed.len());
    for m in failed.iter().take(FAILURES_SHOWN) {
        let what = m.what();
        let what = what.split(" --").next().unwrap_or(&what);
        let why = m.error.as_deref().unwrap_or_default();
        let why: String = why.chars().take(70).collect();
        let _ = writeln!(out, "  {} `{what}`: {why}", r.label(&m.server));
    }
    if failed.len() > FAILURES_SHOWN {
        let _ = writeln!(out, "  and {} more", failed.len() - FAILURES_SHOWN);
    }
    noise(&mut out, r);
    for (i, path) in reports.iter().enumerate() {
        let what = if i == 0 { "full report" } else { "book's copy" };
        let _ = writeln!(out, "{what}: {}", path.display());
    }
    out
}

/// Server CPU per round trip at the fewest and the most idle connections.
fn ping_pong(out: &mut String, r: &Results) {
    let mut lines = Vec::new();
    for s in r.built() {
        let runs = r.all(&s.name, |t| matches!(t, Test::PingPong { .. }));
        let points: Vec<(u64, f64)> = runs
            .iter()
            .filter(|m| m.error.is_none())
            .filter_map(|m| match m.test {
                Test::PingPong { idle, .. } => Some((idle, m.cpu_ns_per("/round_trips")?)),
                _ => None,
            })
            .collect();
        if let (Some(first), Some(last)) = (points.first(), points.last()) {
            lines.push(format!(
                "  {:<9} {:>7.1} µs at {:>6} idle, {:>7.1} µs at {:>6} idle",
                s.label,
                first.1 / 1e3,
                count(first.0 as f64),
                last.1 / 1e3,
                count(last.0 as f64)
            ));
        }
    }
    if !lines.is_empty() {
        out.push_str("server CPU per ping-pong round trip among idle connections:\n");
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// The cluster's fault run, when it ran: its progress line.
fn cluster_faults(out: &mut String, r: &Results) {
    let Some(m) = r
        .measurements
        .iter()
        .find(|m| matches!(m.test, Test::ClusterFaults { .. }) && !m.skipped())
    else {
        return;
    };
    let _ = writeln!(out, "{}", crate::cluster_faults::summary(m));
}

/// The chaos run in one line: faults, lines that went wrong, the server.
fn chaos(out: &mut String, r: &Results) {
    let Some(m) = r.chaos() else {
        return;
    };
    let n = |p: &str| m.figure(p).map_or("—".into(), count);
    let up = m.run.as_ref().is_some_and(|run| run.server_stayed_up);
    let log = m
        .server_log
        .as_ref()
        .and_then(|l| l.lines)
        .map_or("—".into(), |lines| count(lines as f64));
    let _ = writeln!(
        out,
        "chaos: {} faults in {}, server {}; {} lines verified, lost {}, duplicated {}, \
         reordered {}; descriptors {} → {}; {log} log lines",
        n("/injected_total"),
        m.figure("/elapsed_s").map_or("—".into(), minutes),
        if up { "up" } else { "DOWN" },
        n("/delivered"),
        n("/lost"),
        n("/duplicated"),
        n("/reordered"),
        n("/server_fds_before"),
        n("/server_fds_after"),
    );
}

/// What else used the CPUs, and the load averages at the start and the end.
fn noise(out: &mut String, r: &Results) {
    let mut other: Vec<f64> = r
        .measurements
        .iter()
        .filter_map(|m| m.noise.map(|n| n.other_cpus + n.steal_cpus))
        .collect();
    other.sort_by(f64::total_cmp);
    let load = format!(
        "load average {} at the start, {} at the end",
        r.machine.load_before.as_deref().unwrap_or("unknown"),
        r.load_after.as_deref().unwrap_or("unknown")
    );
    match (other.get(other.len() / 2), other.last()) {
        (Some(mid), Some(max)) => {
            let busy = other.iter().filter(|&&o| o >= 0.10).count();
            let _ = writeln!(
                out,
                "other work on the machine (CPUs' worth, incl. steal): {mid:.2} in the median \
                 run, {max:.2} at most, ≥ 0.10 in {busy} of {} runs;\n  {load}",
                other.len()
            );
        }
        _ => {
            let _ = writeln!(out, "other work on the machine: not measured; {load}");
        }
    }
}

/// `3 min 12 s`
pub fn minutes(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}
