//! What the benchmark measures: the servers, which tests each one gets, and
//! the numbers of each profile (smoke, quick, full).

use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// How much to measure: `quick` for a look, `full` for more rounds and more
/// points, `smoke` for the test that keeps the harness alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Smoke,
    Quick,
    Full,
}

/// What a server speaks, which decides the tests it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Echo,
    Chat,
    /// Speaks first, then echoes: measured in the connect rounds only, with
    /// `--greeting`, like the chat servers.
    GreetingEcho,
    /// Redis pub/sub used as a chat: the tester speaks RESP3 to it
    /// (`--publish`), and it says nothing on connect.
    PubSub,
}

impl Kind {
    /// Gets the chat runs.
    pub fn chats(self) -> bool {
        matches!(self, Kind::Chat | Kind::PubSub)
    }

    /// Says something first on every connection.
    pub fn greets(self) -> bool {
        matches!(self, Kind::Chat | Kind::GreetingEcho)
    }
}

/// Which of the tests a server gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// Every test its kind and `hold` give it.
    All,
    /// Only the connect rounds: a variant of another server's settings.
    Connect,
    /// Only the holds: a variant of how another server's connections are
    /// held.
    Hold,
}

/// Whether a server's held connections are measured, and how they sit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// No `hold` tests.
    No,
    /// Held idle, as opened (the servers the held-connections chart compares).
    Idle,
    /// Held after each sent this line (`tester hold --send`).
    After(&'static str),
}

/// One server under test.
pub struct ServerSpec {
    /// The key in results.json: the crate or baseline name.
    pub name: &'static str,
    /// The binary in the bin folder.
    pub bin: &'static str,
    /// The short name tables and charts use.
    pub label: &'static str,
    pub kind: Kind,
    pub hold: Hold,
    /// Flags before the address, beyond `-q`.
    pub args: &'static [&'static str],
    /// Which of the tests it gets.
    pub runs: Runs,
    /// Serves one client at a time (stage 1): its echo run sends as many
    /// round trips in all as one client of the others does, so a slow
    /// machine cannot stretch it past the run limit.
    pub one_at_a_time: bool,
    /// Gets the ping-pong runs among idle connections (poll against epoll).
    pub idle_scaling: bool,
}

/// What a server is unless its entry says otherwise.
const PLAIN: ServerSpec = ServerSpec {
    name: "",
    bin: "",
    label: "",
    kind: Kind::Echo,
    hold: Hold::No,
    args: &[],
    runs: Runs::All,
    one_at_a_time: false,
    idle_scaling: false,
};

/// Every server, in the order the tables list them.
pub const SERVERS: &[ServerSpec] = &[
    ServerSpec {
        name: "stage1-tcp-server",
        bin: "stage1-tcp-server",
        label: "stage 1",
        one_at_a_time: true,
        ..PLAIN
    },
    ServerSpec {
        name: "stage3-epoll",
        bin: "stage3-epoll",
        label: "stage 3",
        hold: Hold::Idle,
        idle_scaling: true,
        ..PLAIN
    },
    ServerSpec {
        name: "stage4-edge-triggered",
        bin: "stage4-edge-triggered",
        label: "stage 4",
        idle_scaling: true,
        ..PLAIN
    },
    // Stage 3 with poll(2) in place of epoll: the baseline of the ping-pong
    // runs among idle connections.
    ServerSpec {
        name: "poll-echo",
        bin: "poll-echo",
        label: "poll-echo",
        idle_scaling: true,
        ..PLAIN
    },
    ServerSpec {
        name: "threads-echo",
        bin: "threads-echo",
        label: "threads-echo",
        hold: Hold::Idle,
        ..PLAIN
    },
    ServerSpec {
        name: "stage5-chat",
        bin: "server",
        label: "stage 5",
        kind: Kind::Chat,
        hold: Hold::Idle,
        ..PLAIN
    },
    // Stage 5 with its join and leave notices off: the connect target is
    // judged on this one, since the notices are fan-out, which the chat runs
    // measure, not the cost of accepting and closing a connection.
    ServerSpec {
        name: STAGE5_NOTICES_OFF,
        bin: "server",
        label: "stage 5, notices off",
        kind: Kind::Chat,
        args: &["--announce-limit", "1"],
        runs: Runs::Connect,
        ..PLAIN
    },
    // Stage 4 plus a welcome line: how much of the chat's connection rate
    // the greeting alone accounts for.
    ServerSpec {
        name: "greeting-echo",
        bin: "greeting-echo",
        label: "greeting-echo",
        kind: Kind::GreetingEcho,
        runs: Runs::Connect,
        ..PLAIN
    },
    ServerSpec {
        name: "tokio-chat",
        bin: "tokio-chat",
        label: "tokio-chat",
        kind: Kind::Chat,
        hold: Hold::Idle,
        ..PLAIN
    },
    // Stage 5 on io_uring instead of epoll: the same protocol and output
    // queues, the loop handing the kernel whole operations instead.
    ServerSpec {
        name: URING,
        bin: "uring-chat",
        label: "uring-chat",
        kind: Kind::Chat,
        hold: Hold::Idle,
        ..PLAIN
    },
    // Redis 7 pub/sub used as a chat: the strongest single-threaded epoll
    // server there is, as a peer. Debian's `redis-server`, from the PATH.
    ServerSpec {
        name: REDIS_PUBSUB,
        bin: crate::redis::REDIS_SERVER,
        label: "Redis pub/sub",
        kind: Kind::PubSub,
        hold: Hold::Idle,
        ..PLAIN
    },
    // The same, its held connections subscribed to the channel, as a
    // chat's clients are: Redis keeps more for a subscriber.
    ServerSpec {
        name: "redis-pubsub-subscribed",
        bin: crate::redis::REDIS_SERVER,
        label: "Redis pub/sub, subscribed",
        kind: Kind::PubSub,
        hold: Hold::After("SUBSCRIBE chat"),
        runs: Runs::Hold,
        ..PLAIN
    },
];

/// Redis pub/sub as a chat: the peer of stage 5's tail target.
pub const REDIS_PUBSUB: &str = "redis-pubsub";
/// The channel every client of Redis pub/sub publishes to and reads.
pub const CHANNEL: &str = "chat";

/// The server whose targets the benchmark checks.
pub const STAGE5: &str = "stage5-chat";
/// Stage 5 started with `--announce-limit 1`, measured in the connect rounds only.
pub const STAGE5_NOTICES_OFF: &str = "stage5-chat-notices-off";
/// The baseline stage 5's fan-out is compared with.
pub const TOKIO: &str = "tokio-chat";
/// Stage 5 on io_uring: its provided buffer ring is reported beside its figures.
pub const URING: &str = "uring-chat";

/// The numbers of one profile.
pub struct Numbers {
    /// `tester connect --count`: connections per run. A count, not a
    /// duration, and below half the ephemeral ports: a run to one server
    /// that used up the fresh ports (the kernel hands `connect` ports of one
    /// parity first, about 14,000 here) would stall waiting to reuse its own
    /// TIME_WAIT ports, and measure that instead of the server.
    pub connect_count: u64,
    pub connect_concurrency: [u32; 2],
    /// Rounds of connect runs; the tables show each server's median.
    pub connect_rounds: u32,
    /// One unrecorded connect run per server before the rounds, so the
    /// first round meets the same TIME_WAIT state as the others.
    pub connect_warmup: bool,
    /// `tester hold --connections`: these, then the most the machine allows.
    pub hold_steps: &'static [u64],
    /// The most connections a hold may ask for in this profile, whatever
    /// the fd limit allows.
    pub hold_cap: u64,
    pub hold_for: Duration,
    pub echo_clients: u32,
    pub echo_messages: u64,
    pub echo_size: u64,
    /// Chat client counts; the first is the one the targets are set at.
    pub chat_clients: &'static [u32],
    /// Paced send rates (lines/s across all clients) at the first client
    /// count; a run with more clients sends proportionally fewer lines per
    /// second, so every client count gets the same deliveries per second.
    pub chat_rates: &'static [u64],
    /// Rounds of the unpaced run at the first client count (the fan-out
    /// target's), alternating the chat servers; the target takes the medians.
    pub fanout_rounds: u32,
    /// Runs of the latency target's paced run (`TARGET_RATE` across the
    /// first client count), alternating the chat servers; the target takes
    /// the median p99. One p99 is set by the worst 1% of a few seconds, so a
    /// single stall of the machine decides a lone run.
    pub latency_rounds: u32,
    /// Deliveries an unpaced chat run aims at (decides `--messages`):
    /// enough for a couple of seconds at the ~10 million a second the
    /// fastest server reaches here, so start and end do not dominate.
    pub chat_unpaced_deliveries: u64,
    /// How long a paced chat run sends (decides `--messages`).
    pub chat_paced_for: Duration,
    /// `tester hold` against the chat servers: clients joining at once.
    pub join_clients: u64,
    /// Idle connections held open while one client plays ping-pong: poll's
    /// cost grows with them, epoll's should not. Capped below the machine's
    /// limit at run time (the server needs a descriptor per connection).
    pub idle_steps: &'static [u64],
    /// How long the one client plays ping-pong at each step.
    pub ping_for: Duration,
    /// The limit of one ping-pong run, opening its idle connections
    /// included. Longer than `run_limit`: a poll server accepts one
    /// connection per `poll` call, each call a walk over all it holds, so
    /// opening N costs it O(N²) (about a minute for 19,000 on a busy
    /// two-CPU machine).
    pub idle_limit: Duration,
    /// How long `tester chaos` injects faults into stage 5 (started with
    /// logging on) while its checked clients talk.
    pub chaos_for: Duration,
    /// Idle connections the four stage 7 nodes hold together in the
    /// cluster part's wall run.
    pub cluster_hold: u64,
    /// Sends/s across the first chat client count in the cluster part's
    /// side-by-side runs.
    pub cluster_rate: u64,
    /// How long the cluster's fault run injects faults around its checked
    /// clients, and how long one Redis fault lasts (a freeze, a refusal of
    /// writes; a restart keeps Redis down half of it). A freeze longer
    /// than the nodes' 3 s wait for a reply is noticed and told.
    pub cluster_faults_for: Duration,
    pub cluster_fault_hold: Duration,
    /// Any single tester run taking longer than this is stopped and recorded
    /// as failed.
    pub run_limit: Duration,
}

/// The rate (sends/s across 100 clients) of the latency target.
pub const TARGET_RATE: u64 = 5000;

impl Profile {
    pub fn numbers(self) -> Numbers {
        match self {
            Profile::Smoke => Numbers {
                connect_count: 40,
                connect_concurrency: [1, 8],
                connect_rounds: 2,
                connect_warmup: false,
                hold_steps: &[20],
                hold_cap: 40,
                hold_for: Duration::from_millis(200),
                echo_clients: 2,
                echo_messages: 20,
                echo_size: 64,
                chat_clients: &[4, 8],
                chat_rates: &[200],
                fanout_rounds: 2,
                latency_rounds: 2,
                chat_unpaced_deliveries: 100,
                chat_paced_for: Duration::from_millis(100),
                join_clients: 50,
                idle_steps: &[10, 100],
                ping_for: Duration::from_millis(300),
                idle_limit: Duration::from_secs(30),
                chaos_for: Duration::from_secs(3),
                cluster_hold: 40,
                cluster_rate: 200,
                cluster_faults_for: Duration::from_secs(4),
                cluster_fault_hold: Duration::from_secs(1),
                run_limit: Duration::from_secs(30),
            },
            Profile::Quick => Numbers {
                connect_count: 10_000,
                connect_concurrency: [1, 64],
                connect_rounds: 5,
                connect_warmup: true,
                hold_steps: &[1000],
                hold_cap: 19_500,
                hold_for: Duration::from_secs(1),
                echo_clients: 10,
                echo_messages: 5000,
                echo_size: 64,
                chat_clients: &[100, 1000],
                chat_rates: &[TARGET_RATE],
                fanout_rounds: 3,
                latency_rounds: 3,
                chat_unpaced_deliveries: 20_000_000,
                chat_paced_for: Duration::from_secs(2),
                join_clients: 10_000,
                // Up to 10,000: a poll server takes minutes to open 19,000.
                idle_steps: &[10, 100, 1000, 10_000],
                ping_for: Duration::from_secs(1),
                idle_limit: Duration::from_secs(300),
                chaos_for: Duration::from_secs(30),
                cluster_hold: 4000,
                cluster_rate: TARGET_RATE,
                // Each kind once.
                cluster_faults_for: Duration::from_secs(30),
                cluster_fault_hold: Duration::from_secs(4),
                run_limit: Duration::from_secs(60),
            },
            Profile::Full => Numbers {
                connect_count: 10_000,
                connect_concurrency: [1, 64],
                connect_rounds: 11,
                connect_warmup: true,
                hold_steps: &[1000, 5000, 10_000, 15_000],
                hold_cap: 50_000,
                hold_for: Duration::from_secs(2),
                echo_clients: 10,
                echo_messages: 20_000,
                echo_size: 64,
                chat_clients: &[100, 300, 1000],
                chat_rates: &[1000, TARGET_RATE, 10_000],
                fanout_rounds: 5,
                latency_rounds: 5,
                chat_unpaced_deliveries: 40_000_000,
                chat_paced_for: Duration::from_secs(5),
                join_clients: 10_000,
                idle_steps: &[10, 100, 1000, 5000, 10_000, 19_000],
                ping_for: Duration::from_secs(2),
                idle_limit: Duration::from_secs(300),
                chaos_for: Duration::from_secs(180),
                cluster_hold: 75_000,
                cluster_rate: TARGET_RATE,
                // Each kind about three times, the freezes and refusals
                // past the nodes' leases.
                cluster_faults_for: Duration::from_secs(100),
                cluster_fault_hold: Duration::from_secs(8),
                run_limit: Duration::from_secs(120),
            },
        }
    }
}

/// A part of the benchmark that can be run alone (`--only`), its results
/// put in place of the same part's in an earlier results.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// `tester chaos` against stage 5 with logging on.
    Chaos,
    /// Stage 7's nodes through a Redis of the benchmark's own: the wall of
    /// idle connections and the cost of the bus.
    Cluster,
    /// Stage 7's nodes under faults of Redis and of a node, around checked
    /// clients: lines lost silently.
    ClusterFaults,
}

/// The seed of the chaos run: the same faults in the same order every time,
/// so two runs differ only in timing.
pub const CHAOS_SEED: u64 = 2026;

/// The seed of the cluster's fault run: the same kinds in the same order.
pub const CLUSTER_FAULTS_SEED: u64 = 2026;

impl Numbers {
    /// The limit of the chaos run: its duration, the tester's wait for late
    /// lines and the closing checks, and a margin for a busy machine.
    pub fn chaos_limit(&self) -> Duration {
        self.chaos_for + Duration::from_secs(60)
    }

    /// The limit of the cluster's fault run: its faults (the last may
    /// start just before the end, and a node's pause waits up to 20 s for
    /// its lease to be taken), the recovery and the closing checks.
    pub fn cluster_faults_limit(&self) -> Duration {
        self.cluster_faults_for + self.cluster_fault_hold + Duration::from_secs(90)
    }

    /// Keep `connect_count` below a third of the machine's ephemeral ports
    /// (see `connect_count`), when the range is known.
    pub fn fit_ports(&mut self, ephemeral_ports: Option<u64>) {
        if let Some(ports) = ephemeral_ports {
            self.connect_count = self.connect_count.min((ports / 3).max(1));
        }
    }

    /// The hold sizes: the steps below the limit, then the limit itself.
    pub fn hold_sizes(&self, machine_max: u64) -> Vec<u64> {
        let top = machine_max.min(self.hold_cap);
        let mut sizes: Vec<u64> = self
            .hold_steps
            .iter()
            .copied()
            .filter(|&n| n < top)
            .collect();
        sizes.push(top);
        sizes
    }

    /// The idle steps this machine can hold (see `Machine::max_connections`).
    pub fn idle_sizes(&self, machine_max: u64) -> Vec<u64> {
        self.idle_steps
            .iter()
            .map(|&n| n.min(machine_max))
            .fold(Vec::new(), |mut sizes, n| {
                if sizes.last() != Some(&n) {
                    sizes.push(n);
                }
                sizes
            })
    }

    /// `--messages` per client of an echo run: a one-at-a-time server gets
    /// the round trips of one client in all, spread over its clients.
    pub fn echo_messages(&self, one_at_a_time: bool) -> u64 {
        if one_at_a_time {
            (self.echo_messages / u64::from(self.echo_clients.max(1))).max(1)
        } else {
            self.echo_messages
        }
    }

    /// The latency target's rate (sends/s across the first client count):
    /// `TARGET_RATE` where the profile runs it, else its highest paced rate.
    pub fn target_rate(&self) -> u64 {
        if self.chat_rates.contains(&TARGET_RATE) {
            TARGET_RATE
        } else {
            *self.chat_rates.last().expect("a paced rate")
        }
    }

    /// `--rate` for `clients` clients that gives the same deliveries per
    /// second as `base_rate` does at the first client count.
    pub fn scaled_rate(&self, base_rate: u64, clients: u32) -> u64 {
        let base = u64::from(self.chat_clients[0]);
        (base_rate * base / u64::from(clients)).max(1)
    }

    /// `--messages` per client for an unpaced run of `clients` clients.
    pub fn unpaced_messages(&self, clients: u32) -> u32 {
        let c = u64::from(clients);
        let per_send = c.saturating_sub(1).max(1);
        (self.chat_unpaced_deliveries / (c * per_send)).clamp(1, u64::from(u32::MAX)) as u32
    }

    /// `--messages` per client for a run paced at `rate` lines/s.
    pub fn paced_messages(&self, clients: u32, rate: u64) -> u32 {
        let lines = rate as f64 * self.chat_paced_for.as_secs_f64();
        ((lines / f64::from(clients)).round() as u32).max(1)
    }
}
