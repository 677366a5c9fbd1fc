//! The shape of results.json: every raw figure the tester printed, with the
//! machine, the commit and the commands that produced it. The table and the
//! charts are drawn from this alone, so `bench render` can redraw them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cluster::{ClusterFigures, Setup};
use crate::machine::{Commit, Machine};
use crate::noise::Noise;
use crate::plan::Profile;
use crate::targets::Target;

#[derive(Serialize, Deserialize)]
pub struct Results {
    pub profile: Profile,
    /// How the benchmark was started.
    pub command: String,
    pub machine: Machine,
    pub commit: Commit,
    pub servers: Vec<ServerInfo>,
    pub measurements: Vec<Measurement>,
    pub targets: Vec<Target>,
    /// How long measuring took, seconds (the build not included).
    #[serde(default)]
    pub elapsed_s: Option<f64>,
    /// `/proc/loadavg` when the benchmark ended.
    #[serde(default)]
    pub load_after: Option<String>,
}

/// A server as the benchmark started it.
#[derive(Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub label: String,
    /// The command line, with the binary's name instead of its path.
    pub command: String,
    /// False when its binary was not in the bin folder (nothing measured).
    pub built: bool,
}

/// What one tester run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum Test {
    /// Rounds of connect runs go through every server in turn, so that all
    /// of them meet the same kernel state (TIME_WAIT sockets, port reuse).
    Connect {
        concurrency: u32,
        #[serde(default)]
        round: u32,
        /// `--greeting`: a chat server's connection counts once its welcome
        /// line arrived, and the tester reads it before closing, so the
        /// connection ends with the same FIN and TIME_WAIT as an echo
        /// server's (an unread welcome would end it with a reset instead).
        #[serde(default)]
        greeting: bool,
    },
    Hold {
        connections: u64,
    },
    Echo {
        clients: u32,
        messages: u64,
        size: u64,
    },
    Chat {
        clients: u32,
        messages: u32,
        rate: u64,
        /// The unpaced runs at the targets' client count are repeated in
        /// rounds that alternate the chat servers; the others run once.
        #[serde(default)]
        round: u32,
    },
    /// `tester hold` against a chat server: many clients joining at once.
    Join {
        clients: u64,
    },
    /// The benchmark's own driver: `idle` connections held open and silent
    /// while one more client sends `size` bytes and waits for their echo,
    /// over and over.
    PingPong {
        idle: u64,
        size: u64,
    },
    /// `tester chaos` for `seconds` against a server started with logging
    /// on: checked clients talking among misbehaving ones.
    Chaos {
        seconds: u64,
    },
    /// `tester hold` against `nodes` stage 7 nodes sharing one port
    /// (`--reuseport`), joined through one Redis.
    ClusterHold {
        nodes: u32,
        connections: u64,
    },
    /// `tester chat` paced at `rate` sends/s against one `setup` of stage 7.
    ClusterChat {
        setup: Setup,
        clients: u32,
        rate: u64,
    },
    /// The benchmark's own checked clients on `nodes` stage 7 nodes while
    /// faults of Redis and of a node are injected for `seconds`, in an
    /// order drawn from `seed`.
    ClusterFaults {
        nodes: u32,
        seconds: u64,
        seed: u64,
    },
}

/// One tester run against a freshly started server.
#[derive(Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub server: String,
    #[serde(flatten)]
    pub test: Test,
    /// The tester's command line; ADDR and PID stand for the server's
    /// address and process id in this run.
    pub command: String,
    /// The tester's `--json` object, whole.
    pub tester: Option<Value>,
    /// The server's peak resident memory (VmHWM) by the end of the run, bytes.
    pub server_peak_rss: Option<u64>,
    /// CPU time the server used in this run (user + system), seconds.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// The part of `server_cpu_s` spent in user space, seconds.
    #[serde(default)]
    pub server_user_cpu_s: Option<f64>,
    /// TIME_WAIT sockets on the machine when a connect run started
    /// (`tw` in /proc/net/sockstat).
    #[serde(default)]
    pub time_wait_before: Option<u64>,
    /// What else used the machine's CPUs while the run went on.
    #[serde(default)]
    pub noise: Option<Noise>,
    /// Chat runs: system calls the server made during the tester's run
    /// (`perf stat -e raw_syscalls:sys_enter -p PID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_syscalls: Option<u64>,
    /// Chat runs without that count: why (no perf, perf could not attach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_syscalls_absent: Option<String>,
    /// Why the run gave no figures (or faulty ones).
    pub error: Option<String>,
    /// Runs with the server's logging on (chaos): what the server logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_log: Option<ServerLog>,
    /// Runs that can be measured alone (chaos): how the benchmark was
    /// started and the machine's load around the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
    /// Cluster runs: each node's figures and Redis's, or why the part was
    /// skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterFigures>,
}

/// A server's log: the file (under the benchmark's output folder) and its
/// length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerLog {
    pub file: String,
    pub lines: Option<u64>,
}

/// The circumstances of one run, kept with it when it is merged into the
/// results of another (`--only`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// The benchmark's command line.
    pub bench_command: String,
    /// The commit measured, as the results' setup names it.
    #[serde(default)]
    pub commit: Option<String>,
    /// `/proc/loadavg` when the run started and when it ended.
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    /// How long the server was seen running, from the tester's start:
    /// the whole run when it stayed up, seconds.
    pub server_up_s: Option<f64>,
    /// Whether the server was still running when the tester ended.
    pub server_stayed_up: bool,
}

impl Measurement {
    /// A run of `test` against `server`, nothing measured yet.
    pub fn new(server: &str, command: String, test: Test) -> Measurement {
        Measurement {
            server: server.into(),
            command,
            test,
            tester: None,
            server_peak_rss: None,
            server_cpu_s: None,
            server_user_cpu_s: None,
            time_wait_before: None,
            noise: None,
            server_syscalls: None,
            server_syscalls_absent: None,
            error: None,
            server_log: None,
            run: None,
            cluster: None,
        }
    }

    /// Whether the run did not happen, for a stated reason (the cluster
    /// part without redis-server): no figure, and no failure either.
    pub fn skipped(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.skipped.is_some())
    }

    /// Server CPU time per `figure` (`/delivered`, `/connections`), in ns.
    pub fn cpu_ns_per(&self, pointer: &str) -> Option<f64> {
        let n = self.figure(pointer).filter(|&n| n > 0.0)?;
        // Less than one clock tick of CPU reads as 0: no figure, not a free run.
        let cpu = self.server_cpu_s.filter(|&s| s > 0.0)?;
        Some(cpu * 1e9 / n)
    }

    /// The server's system calls per `figure` (`/delivered`).
    pub fn syscalls_per(&self, pointer: &str) -> Option<f64> {
        let n = self.figure(pointer).filter(|&n| n > 0.0)?;
        Some(self.server_syscalls? as f64 / n)
    }

    /// Server CPU time in user space per `figure`, in ns. Clock ticks, like
    /// the total, but unlike it a run may well have spent 0 ticks here.
    pub fn user_ns_per(&self, pointer: &str) -> Option<f64> {
        let n = self.figure(pointer).filter(|&n| n > 0.0)?;
        self.server_cpu_s.filter(|&s| s > 0.0)?;
        Some(self.server_user_cpu_s? * 1e9 / n)
    }

    /// The tester's own CPU time (user + system) per `figure`, in ns.
    pub fn tester_ns_per(&self, pointer: &str) -> Option<f64> {
        let n = self.figure(pointer).filter(|&n| n > 0.0)?;
        let cpu = self.figure("/tester_cpu/user_s")? + self.figure("/tester_cpu/system_s")?;
        Some(cpu * 1e9 / n).filter(|&ns| ns > 0.0)
    }

    /// How busy a process kept its CPU: its CPU time per item (`per`, in
    /// ns) times the items a second (`rate`, a JSON pointer). Each process
    /// has one CPU, so the one near 1 set the pace.
    pub fn busy(&self, per: fn(&Measurement) -> Option<f64>, rate: &str) -> Option<f64> {
        Some(per(self)? * self.figure(rate)? / 1e9)
    }

    /// The run in a few words: its command, or for the benchmark's own
    /// ping-pong driver a description.
    pub fn what(&self) -> String {
        match self.test {
            Test::PingPong { idle, .. } => format!("ping-pong among {idle} idle connections"),
            _ => self.command.trim_end_matches(" --json").to_string(),
        }
    }

    /// A number from the tester's JSON by JSON pointer (`/latency/p99_us`).
    pub fn figure(&self, pointer: &str) -> Option<f64> {
        self.tester.as_ref()?.pointer(pointer)?.as_f64()
    }
}

/// The median of a figure over the runs it has (the connect rounds), or
/// None when no run without an error has it.
pub fn median(runs: &[&Measurement], figure: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
    let mut values: Vec<f64> = runs
        .iter()
        .filter(|m| m.error.is_none())
        .filter_map(|m| figure(m))
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

impl Results {
    /// Every measurement of `server` whose test `matches`, in run order.
    pub fn all(&self, server: &str, matches: impl Fn(&Test) -> bool) -> Vec<&Measurement> {
        self.measurements
            .iter()
            .filter(|m| m.server == server && matches(&m.test))
            .collect()
    }

    /// The chaos run, if these results have one.
    pub fn chaos(&self) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|m| matches!(m.test, Test::Chaos { .. }))
    }

    /// The servers that were built, in table order.
    pub fn built(&self) -> impl Iterator<Item = &ServerInfo> {
        self.servers.iter().filter(|s| s.built)
    }

    pub fn label<'a>(&'a self, server: &'a str) -> &'a str {
        self.servers
            .iter()
            .find(|s| s.name == server)
            .map_or(server, |s| s.label.as_str())
    }
}
