//! Running the plan: for each server and each of its tests, start a fresh
//! server on its CPU, run one `tester ... --json` against it on the other,
//! note its peak memory, and kill it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cluster;
use crate::cluster_faults;
use crate::idle;
use crate::machine::{load_average, time_wait_sockets};
use crate::noise::Snapshot;
use crate::pin::Pinning;
use crate::plan::{
    CHANNEL, CHAOS_SEED, Hold, Kind, Numbers, Part, Runs, SERVERS, STAGE5, ServerSpec,
};
use crate::process::{Server, count_lines, process_up, run_tester, server_args};
use crate::redis;
use crate::results::{Measurement, RunInfo, ServerInfo, ServerLog, Test};
use crate::syscalls;

/// What every run shares: the profile's numbers, the tester, the CPUs,
/// the folder server logs go to, and the part to run alone, if any.
pub struct Bench<'a> {
    pub numbers: &'a Numbers,
    pub tester: &'a Path,
    pub pinning: &'a Pinning,
    pub out: &'a Path,
    pub only: Option<Part>,
}

/// The chaos run's server log, in the output folder.
pub const CHAOS_LOG: &str = "chaos-server.log";

/// Measure every server whose binary is in `bin_dir`.
pub fn run_all(
    bench: &Bench,
    bin_dir: &Path,
    max_connections: u64,
) -> (Vec<ServerInfo>, Vec<Measurement>) {
    let numbers = bench.numbers;
    let mut servers = Vec::new();
    let mut measurements = Vec::new();
    let mut built_specs = Vec::new();
    for spec in SERVERS {
        let (bin, built, command) = match spec.kind {
            // Installed, not built: found on the PATH. It is stage 5's
            // peer, so it is measured only beside stage 5.
            Kind::PubSub => (
                PathBuf::from(spec.bin),
                redis::installed() && stage5_built(bin_dir),
                redis_command(),
            ),
            _ => {
                let bin = bin_dir.join(spec.bin);
                let command = format!("{} {}", spec.bin, shell_words(&server_args(spec.args)));
                (bin.clone(), bin.is_file(), command)
            }
        };
        servers.push(ServerInfo {
            name: spec.name.into(),
            label: spec.label.into(),
            command,
            built,
        });
        if !built {
            let why = match spec.kind {
                Kind::PubSub if redis::installed() => "stage 5 is not built".to_string(),
                Kind::PubSub => format!("{} is not installed", spec.bin),
                _ => format!("{} missing", bin.display()),
            };
            eprintln!("{:<22} not built ({why}): skipped", spec.name);
            continue;
        }
        built_specs.push((spec, bin));
    }
    match bench.only {
        Some(Part::Chaos) => {
            measurements.extend(chaos_part(bench, &built_specs));
            return (servers, measurements);
        }
        Some(Part::Cluster) => {
            measurements.extend(cluster::part(bench, bin_dir));
            return (servers, measurements);
        }
        Some(Part::ClusterFaults) => {
            measurements.push(cluster_faults::part(bench, bin_dir));
            return (servers, measurements);
        }
        None => {}
    }
    // Connection rates first, in rounds across all servers: each connect
    // leaves kernel state behind (TIME_WAIT sockets) that changes the next
    // run's rate, whichever server it measures.
    let connecting: Vec<&(&ServerSpec, PathBuf)> = built_specs
        .iter()
        .filter(|(spec, _)| spec.runs != Runs::Hold)
        .collect();
    if numbers.connect_warmup {
        let concurrency = *numbers.connect_concurrency.iter().max().unwrap_or(&1);
        for (spec, bin) in connecting.iter().copied() {
            let test = Test::Connect {
                concurrency,
                round: 0,
                greeting: spec.kind.greets(),
            };
            let m = measure(bench, spec, bin, test);
            eprintln!("{:<24} (warm-up, not recorded)", "");
            drop(m);
        }
    }
    // Each round starts one server later, so that no server is always the
    // one that meets the TIME_WAIT state the others left.
    for round in 0..numbers.connect_rounds {
        let n = connecting.len();
        let order = connecting
            .iter()
            .copied()
            .cycle()
            .skip(round as usize % n.max(1))
            .take(n);
        for (spec, bin) in order {
            for &concurrency in &numbers.connect_concurrency {
                let test = Test::Connect {
                    concurrency,
                    round,
                    greeting: spec.kind.greets(),
                };
                measurements.push(measure(bench, spec, bin, test));
            }
        }
    }
    // The fan-out target's runs, alternating the chat servers, so a slow
    // moment of the machine does not land on one server's only run.
    let clients = numbers.chat_clients[0];
    for round in 0..numbers.fanout_rounds {
        for (spec, bin) in &built_specs {
            if spec.kind.chats() && spec.runs == Runs::All {
                let test = Test::Chat {
                    clients,
                    messages: numbers.unpaced_messages(clients),
                    rate: 0,
                    round,
                };
                measurements.push(measure(bench, spec, bin, test));
            }
        }
    }
    // The latency target's paced run, again, alternating the chat servers
    // the same way: its first run is among each server's tests below.
    let rate = numbers.scaled_rate(numbers.target_rate(), clients);
    for round in 1..numbers.latency_rounds {
        for (spec, bin) in &built_specs {
            if spec.kind.chats() && spec.runs == Runs::All {
                let test = Test::Chat {
                    clients,
                    messages: numbers.paced_messages(clients, rate),
                    rate,
                    round,
                };
                measurements.push(measure(bench, spec, bin, test));
            }
        }
    }
    for (spec, bin) in &built_specs {
        for test in tests_for(spec, numbers, max_connections) {
            measurements.push(measure(bench, spec, bin, test));
        }
    }
    // Poll against epoll: at each step, every such server in turn, so a
    // slow stretch of the machine does not fall on one server's line only.
    // The driver holds the idle connections itself, so it needs their
    // descriptors too: the same cap as the server's.
    for idle in numbers.idle_sizes(max_connections) {
        for (spec, bin) in built_specs.iter().filter(|(s, _)| s.idle_scaling) {
            let test = Test::PingPong {
                idle,
                size: numbers.echo_size,
            };
            measurements.push(measure(bench, spec, bin, test));
        }
    }
    measurements.extend(chaos_part(bench, &built_specs));
    measurements.extend(cluster::part(bench, bin_dir));
    measurements.push(cluster_faults::part(bench, bin_dir));
    (servers, measurements)
}

/// Faults around checked clients: stage 5 as a reader runs it, logging on.
fn chaos_part(
    bench: &Bench,
    built_specs: &[(&ServerSpec, std::path::PathBuf)],
) -> Option<Measurement> {
    let (spec, bin) = built_specs.iter().find(|(s, _)| s.name == STAGE5)?;
    let seconds = bench.numbers.chaos_for.as_secs().max(1);
    Some(measure(bench, spec, bin, Test::Chaos { seconds }))
}

/// The tests a server gets after the connect rounds, in the order they run.
fn tests_for(spec: &ServerSpec, numbers: &Numbers, max_connections: u64) -> Vec<Test> {
    let mut tests = Vec::new();
    if spec.runs == Runs::Connect {
        return tests;
    }
    if spec.hold != Hold::No {
        for connections in numbers.hold_sizes(max_connections) {
            tests.push(Test::Hold { connections });
        }
    }
    if spec.runs == Runs::Hold {
        return tests;
    }
    match spec.kind {
        // The echo runs expect no greeting: connect rounds only.
        Kind::GreetingEcho => {}
        Kind::Echo => tests.push(Test::Echo {
            clients: numbers.echo_clients,
            messages: numbers.echo_messages(spec.one_at_a_time),
            size: numbers.echo_size,
        }),
        Kind::Chat | Kind::PubSub => {
            for (i, &clients) in numbers.chat_clients.iter().enumerate() {
                // The first count's unpaced runs are the fan-out rounds.
                if i > 0 {
                    tests.push(Test::Chat {
                        clients,
                        messages: numbers.unpaced_messages(clients),
                        rate: 0,
                        round: 0,
                    });
                }
                for &base_rate in numbers.chat_rates {
                    let rate = numbers.scaled_rate(base_rate, clients);
                    tests.push(Test::Chat {
                        clients,
                        messages: numbers.paced_messages(clients, rate),
                        rate,
                        round: 0,
                    });
                }
            }
            // Redis has no join to time: its clients subscribe.
            if spec.kind == Kind::Chat {
                tests.push(Test::Join {
                    clients: numbers.join_clients.min(max_connections),
                });
            }
        }
    }
    tests
}

/// Whether stage 5's server is in the bin folder.
fn stage5_built(bin_dir: &Path) -> bool {
    SERVERS
        .iter()
        .find(|s| s.name == STAGE5)
        .is_some_and(|s| bin_dir.join(s.bin).is_file())
}

/// The command line Redis is started with, as the results show it.
fn redis_command() -> String {
    let args = redis::args("PORT");
    format!("{} {}", redis::REDIS_SERVER, shell_words(&args))
}

/// Arguments as a shell reads them back: one that is empty or holds a
/// space in single quotes (`--send 'SUBSCRIBE chat'`).
fn shell_words<S: AsRef<str>>(args: &[S]) -> String {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| {
            let a = a.as_ref();
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.to_string()
            }
        })
        .collect();
    quoted.join(" ")
}

/// One test against a fresh server, so no run inherits another's memory.
fn measure(bench: &Bench, spec: &ServerSpec, bin: &Path, test: Test) -> Measurement {
    let command = match test {
        Test::PingPong { idle, size } => format!(
            "(the benchmark's own driver) hold {idle} idle connections, then one more \
             sends {size} bytes and reads them back, for {}",
            duration(bench.numbers.ping_for)
        ),
        _ => format!(
            "tester {}",
            shell_words(&tester_args(spec, &test, bench.numbers, "ADDR", "PID"))
        ),
    };
    let mut m = Measurement::new(spec.name, command, test);
    let ran = match m.test {
        Test::Chaos { .. } => chaos(&mut m, bench, spec, bin),
        _ => run_one(&mut m, bench, spec, bin),
    };
    if let Err(err) = ran {
        m.error = Some(format!("{err:#}"));
    }
    eprintln!("{:<24} {}", spec.name, summary(&m));
    m
}

fn run_one(m: &mut Measurement, bench: &Bench, spec: &ServerSpec, bin: &Path) -> Result<()> {
    let mut server = match spec.kind {
        Kind::PubSub => Server::start_redis(bench.pinning.server_cpu)?,
        _ => Server::start(bin, spec.args, bench.pinning.server_cpu)?,
    };
    if let Test::PingPong { idle, size } = m.test {
        return ping_pong(m, bench, &mut server, idle, size);
    }
    let args = tester_args(
        spec,
        &m.test,
        bench.numbers,
        &server.addr.to_string(),
        &server.pid().to_string(),
    );
    // The machine-wide TIME_WAIT count decides how costly a close is, so a
    // connect figure is kept with the count it started from.
    if matches!(m.test, Test::Connect { .. }) {
        m.time_wait_before = time_wait_sockets();
    }
    // Counting starts before the tester does and stops when it ends, so
    // the count covers the run the other figures describe. Counting costs
    // the server time at every call (perf's tracepoint), so the runs the
    // targets judge, at the first client count, are left uncounted.
    let counter = match m.test {
        Test::Chat { clients, .. } if clients != bench.numbers.chat_clients[0] => {
            Some(syscalls::Counter::attach(server.pid()))
        }
        _ => None,
    };
    let (server_before, before) = (server.cpu_seconds(), Snapshot::take());
    let run = run_tester(
        bench.tester,
        &args,
        bench.numbers.run_limit,
        bench.pinning.tester_cpu,
    );
    match counter.map(|c| c.and_then(syscalls::Counter::stop)) {
        Some(Ok(n)) => m.server_syscalls = Some(n),
        Some(Err(why)) => m.server_syscalls_absent = Some(why),
        None => {}
    }
    let run = run?;
    m.tester = run.json;
    record_server(m, &server, server_before, before);
    // A server that died mid-run explains the tester's errors better than
    // they do themselves.
    m.error = server.exited().or(run.error);
    Ok(())
}

/// After a tester run: what else used the machine meanwhile (from the
/// server's CPU time and the machine's counters `before`), and the server's
/// peak memory and CPU time.
fn record_server(
    m: &mut Measurement,
    server: &Server,
    server_before: Option<f64>,
    before: Option<Snapshot>,
) {
    let (server_after, after) = (server.cpu_seconds(), Snapshot::take());
    if let (Some(s0), Some(s1), Some(b), Some(a)) = (server_before, server_after, before, after) {
        m.noise = b.noise(&a, s1 - s0);
    }
    m.server_peak_rss = server.peak_rss();
    if let Some((user, system)) = server.cpu_split() {
        m.server_cpu_s = Some(user + system);
        m.server_user_cpu_s = Some(user);
    }
}

/// The chaos run: the server started with logging on, its log in a file,
/// watched while the tester runs so a crash is timed, then its log counted.
fn chaos(m: &mut Measurement, bench: &Bench, spec: &ServerSpec, bin: &Path) -> Result<()> {
    let log = bench.out.join(CHAOS_LOG);
    std::fs::create_dir_all(bench.out)?;
    m.server_log = Some(ServerLog {
        file: CHAOS_LOG.into(),
        lines: None,
    });
    let mut info = RunInfo {
        load_before: load_average(),
        ..RunInfo::default()
    };
    let mut server = Server::start_logging(bin, spec.args, bench.pinning.server_cpu, &log)?;
    let args = tester_args(
        spec,
        &m.test,
        bench.numbers,
        &server.addr.to_string(),
        &server.pid().to_string(),
    );
    let (server_before, before) = (server.cpu_seconds(), Snapshot::take());
    let started = Instant::now();
    let watch = Watch::start(server.pid());
    let run = run_tester(
        bench.tester,
        &args,
        bench.numbers.chaos_limit(),
        bench.pinning.tester_cpu,
    );
    let died_after = watch.stop();
    let elapsed = started.elapsed();
    let run = run?;
    m.tester = run.json;
    record_server(m, &server, server_before, before);
    let exited = server.exited();
    info.server_stayed_up = exited.is_none();
    info.server_up_s = Some(died_after.unwrap_or(elapsed).as_secs_f64());
    info.load_after = load_average();
    m.error = exited.or(run.error);
    m.run = Some(info);
    // Killed and reaped first, so the log is complete when it is counted.
    drop(server);
    m.server_log = Some(ServerLog {
        file: CHAOS_LOG.into(),
        lines: count_lines(&log).ok(),
    });
    Ok(())
}

/// Watches a process while a run lasts, noting when it stopped running.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Option<Duration>>,
}

impl Watch {
    /// How often the process is looked at: the precision of the time a
    /// crashed server is said to have survived.
    const EVERY: Duration = Duration::from_millis(100);

    fn start(pid: u32) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let started = Instant::now();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if !process_up(pid) {
                    return Some(started.elapsed());
                }
                thread::sleep(Watch::EVERY);
            }
            None
        });
        Watch { stop, thread }
    }

    /// When the process stopped running, or None if it still runs.
    fn stop(self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// The idle-connections run: the server's CPU is read around the
/// ping-pong stretch only, not while the idle connections are opened.
fn ping_pong(
    m: &mut Measurement,
    bench: &Bench,
    server: &mut Server,
    idle: u64,
    size: u64,
) -> Result<()> {
    let server_ref: &Server = server;
    let cpu_now = || server_ref.cpu_split();
    let before = Snapshot::take();
    let run = idle::ping_pong(
        server_ref.addr,
        idle,
        size,
        bench.numbers.ping_for,
        bench.numbers.idle_limit,
        bench.pinning.tester_cpu,
        &cpu_now,
    );
    let after = Snapshot::take();
    m.server_peak_rss = server.peak_rss();
    match run {
        Ok((figures, cpu)) => {
            if let (Some(b), Some(a), Some((user, system))) = (before, after, cpu) {
                m.noise = b.noise(&a, user + system);
            }
            m.tester = Some(figures);
            m.server_cpu_s = cpu.map(|(user, system)| user + system);
            m.server_user_cpu_s = cpu.map(|(user, _)| user);
            m.error = server.exited();
        }
        Err(err) => m.error = Some(server.exited().unwrap_or_else(|| format!("{err:#}"))),
    }
    Ok(())
}

/// The tester's arguments for `test`, with `addr` and `pid` filled in.
fn tester_args(
    spec: &ServerSpec,
    test: &Test,
    numbers: &Numbers,
    addr: &str,
    pid: &str,
) -> Vec<String> {
    let mut args: Vec<String> = match *test {
        Test::Connect {
            concurrency,
            greeting,
            ..
        } => {
            let mut a = vec![
                "connect".into(),
                addr.into(),
                "--concurrency".into(),
                concurrency.to_string(),
            ];
            a.extend(["--count".into(), numbers.connect_count.to_string()]);
            if greeting {
                a.push("--greeting".into());
            }
            a
        }
        Test::Hold { connections } => {
            let mut args = hold_args(addr, pid, connections, numbers);
            if let Hold::After(line) = spec.hold {
                args.extend(["--send".into(), line.into()]);
            }
            args
        }
        Test::Join { clients } => hold_args(addr, pid, clients, numbers),
        Test::Echo {
            clients,
            messages,
            size,
        } => vec![
            "echo".into(),
            addr.into(),
            "--clients".into(),
            clients.to_string(),
            "--messages".into(),
            messages.to_string(),
            "--size".into(),
            size.to_string(),
        ],
        // Not a tester run (see `ping_pong`), or not against one server
        // (see `cluster`).
        Test::PingPong { .. }
        | Test::ClusterHold { .. }
        | Test::ClusterChat { .. }
        | Test::ClusterFaults { .. } => Vec::new(),
        Test::Chaos { seconds } => vec![
            "chaos".into(),
            addr.into(),
            "--duration".into(),
            format!("{seconds}s"),
            "--seed".into(),
            CHAOS_SEED.to_string(),
            "--server-pid".into(),
            pid.into(),
        ],
        Test::Chat {
            clients,
            messages,
            rate,
            ..
        } => vec![
            "chat".into(),
            addr.into(),
            "--clients".into(),
            clients.to_string(),
            "--messages".into(),
            messages.to_string(),
            "--rate".into(),
            rate.to_string(),
        ],
    };
    if spec.kind == Kind::PubSub && matches!(test, Test::Chat { .. }) {
        args.extend(["--publish", CHANNEL, "--no-greeting"].map(String::from));
    }
    args.push("--json".into());
    args
}

fn hold_args(addr: &str, pid: &str, connections: u64, numbers: &Numbers) -> Vec<String> {
    vec![
        "hold".into(),
        addr.into(),
        "--connections".into(),
        connections.to_string(),
        "--duration".into(),
        duration(numbers.hold_for),
        "--server-pid".into(),
        pid.into(),
    ]
}

/// A duration as the tester reads it: `250ms`.
fn duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One progress line: the test and its headline figure.
fn summary(m: &Measurement) -> String {
    let what = m.what();
    let figure = match m.test {
        Test::Connect { .. } => m
            .figure("/connections_per_s")
            .map(|v| format!("{v:.0} connections/s")),
        Test::Hold { .. } | Test::Join { .. } | Test::ClusterHold { .. } => {
            m.figure("/open_at_end").map(|open| {
                let rss = m.figure("/server_rss_after").unwrap_or(0.0) / 1048576.0;
                format!("{open:.0} held, server RSS {rss:.1} MiB")
            })
        }
        Test::Echo { .. } => m
            .figure("/round_trips_per_s")
            .map(|v| format!("{v:.0} round trips/s")),
        Test::PingPong { .. } => m.figure("/round_trips_per_s").map(|v| {
            let cpu = m
                .cpu_ns_per("/round_trips")
                .map_or("—".into(), |ns| format!("{:.1} µs", ns / 1e3));
            format!("{v:.0} round trips/s, server CPU {cpu} per round trip")
        }),
        Test::Chaos { .. } => m.figure("/injected_total").map(|faults| {
            format!(
                "{faults:.0} faults, lost {}, duplicated {}, reordered {}",
                m.figure("/lost").unwrap_or(f64::NAN),
                m.figure("/duplicated").unwrap_or(f64::NAN),
                m.figure("/reordered").unwrap_or(f64::NAN)
            )
        }),
        Test::Chat { .. } | Test::ClusterChat { .. } => m.figure("/deliveries_per_s").map(|v| {
            let p99 = m.figure("/latency/p99_us").unwrap_or(0.0);
            format!("{v:.0} deliveries/s, p99 {p99:.0} µs")
        }),
        Test::ClusterFaults { .. } => Some(cluster_faults::summary(m)),
    };
    match (&m.error, figure) {
        (Some(err), _) => format!("{what}: FAILED: {err}"),
        (None, Some(figure)) => format!("{what}: {figure}"),
        (None, None) => format!("{what}: no figure"),
    }
}
