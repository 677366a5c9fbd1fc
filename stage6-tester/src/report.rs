//! Turning measurements into output: latency histograms and their
//! percentiles, rates, the live progress line, and the summary/JSON printer.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeVal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Latencies in nanoseconds, kept in an HDR histogram: fixed memory however
/// many samples, every percentile within 0.1%.
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            // 1ns to 1 hour at 3 significant digits; anything longer counts
            // as an hour (no run here lasts that long).
            histogram: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .expect("valid histogram bounds"),
        }
    }
}

impl Latency {
    pub fn record(&mut self, elapsed: Duration) {
        self.record_ns(elapsed.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.record_ns_n(ns, 1);
    }

    /// `count` samples of the same latency at once.
    pub fn record_ns_n(&mut self, ns: u64, count: u64) {
        self.histogram.saturating_record_n(ns.max(1), count);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    fn at(&self, percentile: f64) -> Duration {
        Duration::from_nanos(self.histogram.value_at_percentile(percentile))
    }

    fn max(&self) -> Duration {
        Duration::from_nanos(self.histogram.max())
    }

    /// `p50 41µs  p99 180µs  max 2.1ms` for the given percentiles.
    pub fn describe(&self, percentiles: &[f64]) -> String {
        if self.count() == 0 {
            return "no samples".to_string();
        }
        let mut text = String::new();
        for &p in percentiles {
            let _ = write!(text, "p{p} {}  ", duration(self.at(p)));
        }
        let _ = write!(text, "max {}", duration(self.max()));
        text
    }

    /// `{"p50_us": .., "max_us": ..}` for the given percentiles.
    pub fn json(&self, percentiles: &[f64]) -> Value {
        let mut map = serde_json::Map::new();
        map.insert("samples".into(), json!(self.count()));
        if self.count() > 0 {
            for &p in percentiles {
                map.insert(format!("p{p}_us"), json!(micros(self.at(p))));
            }
            map.insert("max_us".into(), json!(micros(self.max())));
        }
        Value::Object(map)
    }

    /// The recorded values, for sending to another process.
    pub fn to_counts(&self) -> LatencyCounts {
        LatencyCounts(
            self.histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Add what another process recorded.
    pub fn merge(&mut self, counts: &LatencyCounts) {
        for &(value, count) in &counts.0 {
            self.histogram.saturating_record_n(value, count);
        }
    }
}

/// A histogram as `(value, count)` pairs: how workers send theirs home.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LatencyCounts(pub Vec<(u64, u64)>);

fn micros(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 1000.0 * 10.0).round() / 10.0
}

/// A duration in the unit that reads best: `850ns`, `41.2µs`, `3.10ms`, `2.50s`.
pub fn duration(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// `count / elapsed`, 0 for an empty interval.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        count as f64 / elapsed.as_secs_f64()
    }
}

/// A large number with thousands separators: `17,204`.
pub fn thousands(n: f64) -> String {
    let whole = n.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 line` / `2 lines`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// What a subcommand hands back: the text summary and the JSON object, and
/// whether the run found a fault (exit 1).
pub struct Outcome {
    pub summary: String,
    pub json: Value,
    pub failed: bool,
}

/// The live progress line on stderr: only on a terminal, only once the run
/// has taken more than a second, redrawn at most five times a second.
pub struct Progress {
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Redraw the line if it is time; `text` is only built when it is.
    pub fn tick(&mut self, text: impl FnOnce() -> String) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now - self.start < Duration::from_secs(1)
            || self
                .last
                .is_some_and(|t| now - t < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        let elapsed = (now - self.start).as_secs_f64();
        // \r returns to the start of the line; ESC[K clears what was there.
        eprint!("\r\x1b[K[{elapsed:5.1}s] {}", text());
        let _ = std::io::stderr().flush();
    }

    /// Erase the line before the summary is printed.
    pub fn finish(&mut self) {
        if self.last.take().is_some() {
            eprint!("\r\x1b[K");
            let _ = std::io::stderr().flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The CPU time this process and its finished workers used, user and
/// system apart (`getrusage(2)`): it tells whether the tester itself, not
/// the server, set the pace of a run.
pub fn own_cpu() -> Value {
    let seconds = |t: TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    let (mut user, mut system) = (0.0, 0.0);
    for who in [UsageWho::RUSAGE_SELF, UsageWho::RUSAGE_CHILDREN] {
        if let Ok(usage) = getrusage(who) {
            user += seconds(usage.user_time());
            system += seconds(usage.system_time());
        }
    }
    json!({ "user_s": user, "system_s": system })
}
