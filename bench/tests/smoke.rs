//! The benchmark's smoke check: run `bench --smoke` (the quick path on tiny
//! numbers) against the workspace's debug binaries and check that it wrote
//! every file with the figures the chapter relies on. It asserts no timing:
//! which server is faster is the benchmark's business, not a test's.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;

/// The whole smoke run takes a few seconds; a hang fails instead.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// The smoke profile's first chat client count: the targets' runs, never counted by perf.
const FIRST_CHAT_CLIENTS: u32 = 4;

/// The servers the benchmark measures: (results key, binary, table label).
const SERVERS: &[(&str, &str, &str)] = &[
    ("stage1-tcp-server", "stage1-tcp-server", "stage 1"),
    ("stage3-epoll", "stage3-epoll", "stage 3"),
    ("stage4-edge-triggered", "stage4-edge-triggered", "stage 4"),
    ("poll-echo", "poll-echo", "poll-echo"),
    ("threads-echo", "threads-echo", "threads-echo"),
    ("stage5-chat", "server", "stage 5"),
    ("stage5-chat-notices-off", "server", "stage 5, notices off"),
    ("greeting-echo", "greeting-echo", "greeting-echo"),
    ("tokio-chat", "tokio-chat", "tokio-chat"),
    ("uring-chat", "uring-chat", "uring-chat"),
];

/// The targets' keys, in the order results.json lists them.
const TARGETS: [&str; 10] = [
    "fanout",
    "latency",
    "tail",
    "idle_bytes",
    "join_rss",
    "connect",
    "chaos",
    "cluster_idle_bytes",
    "cluster_p99",
    "cluster_faults",
];

/// The folder of the workspace's debug binaries (the tester and the servers).
fn bin_dir() -> PathBuf {
    let tester = testkit::workspace_bin("STAGE6_BIN", "tester");
    tester.parent().expect("the tester's folder").to_path_buf()
}

/// `bench --smoke` with the binaries in `bins`, writing into `out`.
fn smoke(bins: &Path, out: &Path) -> assert_cmd::assert::Assert {
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .arg("--bin-dir")
        .arg(bins)
        .arg("--out")
        .arg(out)
        .timeout(RUN_TIMEOUT)
        .assert()
}

fn run_smoke(out: &Path) {
    smoke(&bin_dir(), out).success();
}

fn tests_of<'a>(results: &'a Value, server: &str) -> Vec<&'a Value> {
    results["measurements"]
        .as_array()
        .expect("measurements is a list")
        .iter()
        .filter(|m| m["server"] == server)
        .collect()
}

#[test]
fn smoke_run_writes_every_figure_table_and_chart() {
    let out = tempfile::tempdir().expect("a temporary folder");
    run_smoke(out.path());

    let text = fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(results["profile"], "smoke");
    for key in ["cores", "cpu_model", "kernel", "nofile_soft", "nofile_hard"] {
        assert!(!results["machine"][key].is_null(), "machine.{key} missing");
    }
    assert!(results["commit"]["hash"].is_string());
    assert!(results["commit"]["dirty"].is_boolean());

    // Every server was measured with every test it gets, and each run kept
    // the tester's whole JSON.
    for &(name, _, _) in SERVERS {
        let info = results["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing from servers"));
        assert_eq!(
            info["built"], true,
            "{name} was not found in the bin folder"
        );
        let runs = tests_of(&results, name);
        let kinds: Vec<&str> = runs.iter().map(|m| m["test"].as_str().unwrap()).collect();
        let chat = name.contains("chat");
        let greets = chat || name == "greeting-echo";
        let mut expected = vec!["connect"];
        if matches!(name, "stage5-chat-notices-off" | "greeting-echo") {
            // Measured in the connect rounds only.
            assert!(kinds.iter().all(|&k| k == "connect"), "{name}: {kinds:?}");
        } else if chat {
            expected.extend(["chat", "join"]);
            if name == "stage5-chat" {
                expected.push("chaos");
            }
        } else {
            expected.push("echo");
        }
        if matches!(
            name,
            "stage3-epoll" | "threads-echo" | "stage5-chat" | "tokio-chat" | "uring-chat"
        ) {
            expected.push("hold");
        }
        if matches!(name, "poll-echo" | "stage3-epoll" | "stage4-edge-triggered") {
            expected.push("ping_pong");
        }
        for kind in expected {
            assert!(kinds.contains(&kind), "{name}: no {kind} run in {kinds:?}");
        }
        for m in runs {
            assert!(m["error"].is_null(), "{name}: {m}");
            if m["test"] == "ping_pong" {
                // The benchmark's own driver: every idle connection held,
                // round trips counted, the server's CPU read around them.
                assert_eq!(m["tester"]["held"], m["idle"], "{name}: {m}");
                assert!(m["tester"]["round_trips"].as_u64().unwrap() > 0, "{m}");
                assert!(m["server_cpu_s"].is_number(), "{name}: no CPU time in {m}");
                continue;
            }
            assert!(m["command"].as_str().unwrap().starts_with("tester "));
            if m["test"] == "connect" {
                // Servers that greet: the tester waits for the welcome, so
                // every server's connections close the same way.
                assert_eq!(m["greeting"], greets, "{name}: {m}");
                assert!(m["time_wait_before"].is_u64(), "{name}: {m}");
            }
            let figure = match m["test"].as_str().unwrap() {
                "connect" => "connections_per_s",
                "hold" | "join" => "server_bytes_per_connection",
                "echo" => "round_trips_per_s",
                "chat" => "deliveries_per_s",
                "chaos" => "injected_total",
                other => panic!("unknown test {other}"),
            };
            assert!(
                m["tester"][figure].is_number(),
                "{name}: {figure} missing in {m}"
            );
            if m["test"] == "chaos" {
                check_chaos_run(m, out.path());
            }
            if m["test"] == "chat" {
                // Counted, or absent with the reason (no perf, no
                // permission): never neither, whichever it is here; and
                // never at the targets' client count (the first), whose
                // runs perf would slow down.
                let counted = m["server_syscalls"].is_u64();
                let absent = m["server_syscalls_absent"].is_string();
                if m["clients"] == FIRST_CHAT_CLIENTS {
                    assert!(
                        !counted && !absent,
                        "{name}: a target's run was counted: {m}"
                    );
                } else {
                    assert!(
                        counted != absent,
                        "{name}: syscalls neither counted nor excused: {m}"
                    );
                }
            }
            assert!(m["server_peak_rss"].is_u64(), "{name}: no peak RSS in {m}");
            assert!(m["server_cpu_s"].is_number(), "{name}: no CPU time in {m}");
            assert!(
                m["tester"]["tester_cpu"]["system_s"].is_number(),
                "{name}: no tester CPU time in {m}"
            );
        }
    }

    // Redis pub/sub, stage 5's peer, wherever redis-server is installed
    // (with REQUIRE_REDIS=1 it must be): connect rounds, holds and chat
    // runs, the chat runs in RESP3 pub/sub, every line checked like any
    // chat's; and its holds again, subscribed to the channel.
    let redis = results["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "redis-pubsub")
        .expect("redis-pubsub is among the servers");
    if redis["built"] == true || std::env::var_os("REQUIRE_REDIS").is_some() {
        assert_eq!(redis["built"], true, "redis-server not found: {redis}");
        let runs = tests_of(&results, "redis-pubsub");
        let kinds: Vec<&str> = runs.iter().map(|m| m["test"].as_str().unwrap()).collect();
        for kind in ["connect", "chat", "hold"] {
            assert!(
                kinds.contains(&kind),
                "redis-pubsub: no {kind} run in {kinds:?}"
            );
        }
        for m in runs {
            assert!(m["error"].is_null(), "redis-pubsub: {m}");
            match m["test"].as_str().unwrap() {
                "chat" => {
                    assert!(m["command"].as_str().unwrap().contains("--publish"), "{m}");
                    assert!(
                        m["tester"]["deliveries_per_s"].as_f64().unwrap() > 0.0,
                        "{m}"
                    );
                    assert_eq!(m["tester"]["lost"], 0, "{m}");
                }
                "connect" => {
                    assert_eq!(m["greeting"], false, "Redis says nothing on connect: {m}");
                }
                _ => assert!(
                    m["tester"]["server_bytes_per_connection"].is_number(),
                    "{m}"
                ),
            }
        }
        let subscribed = tests_of(&results, "redis-pubsub-subscribed");
        assert!(!subscribed.is_empty(), "no subscribed holds");
        for m in subscribed {
            assert!(m["error"].is_null(), "redis-pubsub-subscribed: {m}");
            assert_eq!(m["test"], "hold", "held subscribed, and nothing else: {m}");
            assert_eq!(m["tester"]["settings"]["send"], "SUBSCRIBE chat", "{m}");
            // The command as a reader would paste it into a shell.
            let command = m["command"].as_str().unwrap();
            assert!(command.contains("--send 'SUBSCRIBE chat'"), "{command}");
            assert!(
                m["tester"]["server_bytes_per_connection"].is_number(),
                "{m}"
            );
        }
    }

    // Every target is judged, met or missed (which, is not a test's
    // business on tiny numbers); the cluster's may be skipped, said so,
    // on a machine without redis-server.
    let keys: Vec<&str> = results["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let skipped = t["measured"]
                .as_str()
                .is_some_and(|m| m.starts_with("skipped: "));
            let key = t["key"].as_str().unwrap();
            if !((key.starts_with("cluster") || key == "tail") && skipped) {
                assert!(t["met"].is_boolean(), "{t}");
                assert!(t["ratio"].is_number(), "{t}");
            }
            t["key"].as_str().unwrap()
        })
        .collect();
    assert_eq!(keys, TARGETS);

    // Every part the chapter includes is there, between its anchors.
    let table = fs::read_to_string(out.path().join("results.md")).expect("results.md");
    for anchor in [
        "setup",
        "targets",
        "connect",
        "connection_costs",
        "hold",
        "echo",
        "ping_pong",
        "chat_unpaced",
        "chat_paced",
        "join",
        "chaos",
        "cluster",
        "failures",
        "noise",
        "machine",
        "commands",
    ] {
        let start = format!("// ANCHOR: {anchor}\n");
        let end = format!("// ANCHOR_END: {anchor}\n");
        let part = table
            .split_once(&start)
            .and_then(|(_, rest)| rest.split_once(&end))
            .map(|(part, _)| part)
            .unwrap_or_else(|| panic!("results.md has no part {anchor}:\n{table}"));
        assert!(!part.trim().is_empty(), "results.md's {anchor} is empty");
    }
    for &(_, _, label) in SERVERS {
        assert!(
            table.contains(&format!("| {label} |")),
            "results.md lacks {label}"
        );
    }
    // Both chat tables have the system-calls column, and uring-chat's
    // buffer ring is stated beside them.
    for anchor in ["chat_unpaced", "chat_paced"] {
        let part = table
            .split_once(&format!("// ANCHOR: {anchor}\n"))
            .and_then(|(_, rest)| rest.split_once("// ANCHOR_END"))
            .unwrap()
            .0;
        let header = part.lines().find(|l| l.starts_with("| server |")).unwrap();
        assert!(header.contains("| system calls per delivery |"), "{header}");
    }
    assert!(
        table.contains("uring-chat's provided buffer ring"),
        "{table}"
    );

    for chart in [
        "held.svg",
        "chat-deliveries.svg",
        "chat-p99.svg",
        "ping-pong.svg",
    ] {
        let svg = fs::read_to_string(out.path().join(chart)).expect(chart);
        assert!(svg.starts_with("<svg"), "{chart} is not SVG");
    }
    let held = fs::read_to_string(out.path().join("held.svg")).unwrap();
    for label in ["stage 3", "stage 5", "threads-echo", "tokio-chat"] {
        assert!(held.contains(label), "held.svg has no line for {label}");
    }
    let deliveries = fs::read_to_string(out.path().join("chat-deliveries.svg")).unwrap();
    assert!(deliveries.contains("stage 5") && deliveries.contains("tokio-chat"));
    // A line for every server whose runs gave a CPU time (on tiny runs a
    // fast server may use less than one clock tick: no figure, no point).
    let ping = fs::read_to_string(out.path().join("ping-pong.svg")).unwrap();
    for (name, label) in [
        ("poll-echo", "poll-echo"),
        ("stage3-epoll", "stage 3"),
        ("stage4-edge-triggered", "stage 4"),
    ] {
        let measured = tests_of(&results, name)
            .iter()
            .any(|m| m["test"] == "ping_pong" && m["server_cpu_s"].as_f64() > Some(0.0));
        assert_eq!(
            ping.contains(label),
            measured,
            "ping-pong.svg and {name}'s CPU times disagree"
        );
    }
}

/// The chaos run: stage 5 with logging on (its log in a file, counted),
/// the tester given its PID, every checked line accounted for, and the
/// server's descriptors and memory read before and after.
fn check_chaos_run(m: &Value, out: &Path) {
    let command = m["command"].as_str().unwrap();
    assert!(command.contains("--server-pid PID"), "{command}");
    let tester = &m["tester"];
    for figure in [
        "lost",
        "duplicated",
        "reordered",
        "delivered",
        "server_fds_before",
        "server_fds_after",
        "server_rss_before",
        "server_rss_after",
    ] {
        assert!(tester[figure].is_u64(), "chaos: {figure} missing in {m}");
    }
    let kinds = tester["injected"].as_object().expect("faults by kind");
    let sum: u64 = kinds.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(Some(sum), tester["injected_total"].as_u64(), "{m}");
    assert!(sum > 0, "no fault injected: {m}");
    assert_eq!(m["run"]["server_stayed_up"], true, "{m}");
    assert!(m["run"]["server_up_s"].as_f64() > Some(0.0), "{m}");
    // Logging was on: the log holds a line for each accepted connection at least.
    let file = m["server_log"]["file"].as_str().expect("the log's file");
    let log = fs::read_to_string(out.join(file)).expect("the chaos run's server log");
    let lines = m["server_log"]["lines"]
        .as_u64()
        .expect("the log's line count");
    assert_eq!(lines, log.lines().count() as u64);
    let accepted = log.lines().filter(|l| l.starts_with("accepted")).count() as u64;
    assert!(
        accepted >= sum,
        "{accepted} accepted lines for {sum} faults"
    );
}

#[test]
fn render_only_redraws_from_results_json() {
    let out = tempfile::tempdir().expect("a temporary folder");
    run_smoke(out.path());
    let table = out.path().join("results.md");
    let first = fs::read_to_string(&table).unwrap();
    fs::remove_file(&table).unwrap();
    fs::remove_file(out.path().join("held.svg")).unwrap();
    // A verdict written by an older rule is judged again from the figures.
    let json = out.path().join("results.json");
    let mut results: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    results["targets"][0]["goal"] = "an older rule".into();
    fs::write(&json, results.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--render-only")
        .arg("--out")
        .arg(out.path())
        .timeout(RUN_TIMEOUT)
        .assert()
        .success();
    assert_eq!(fs::read_to_string(&table).unwrap(), first);
    assert!(out.path().join("held.svg").is_file());
}

/// A bin folder with the tester, the real stage 3 (when `with_stage3`), and
/// in place of stage 1 a script that prints its `listening on` line and
/// exits at once: a server that crashes under every test.
fn bin_dir_with_a_crashing_server(with_stage3: bool) -> tempfile::TempDir {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tempfile::tempdir().expect("a temporary folder");
    let real = bin_dir();
    symlink(real.join("tester"), dir.path().join("tester")).unwrap();
    if with_stage3 {
        symlink(real.join("stage3-epoll"), dir.path().join("stage3-epoll")).unwrap();
    }
    let crash = dir.path().join("stage1-tcp-server");
    fs::write(
        &crash,
        "#!/bin/sh\necho 'listening on 127.0.0.1:1'\nexit 3\n",
    )
    .unwrap();
    fs::set_permissions(&crash, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_failed_run_is_data_and_the_others_still_count() {
    let bins = bin_dir_with_a_crashing_server(true);
    let out = tempfile::tempdir().expect("a temporary folder");
    let run = smoke(bins.path(), out.path()).success();
    let stderr = String::from_utf8_lossy(&run.get_output().stderr).into_owned();

    let text = fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let results: Value = serde_json::from_str(&text).unwrap();
    let crashed = tests_of(&results, "stage1-tcp-server");
    assert!(!crashed.is_empty(), "stage 1's runs are recorded");
    for m in &crashed {
        assert!(m["error"].is_string(), "a crashed run has its error: {m}");
        // One warning line per failed run, naming the server and the command.
        let warning = format!(
            "warning: stage1-tcp-server `{}` failed",
            m["command"].as_str().unwrap()
        );
        assert!(stderr.contains(&warning), "no {warning:?} in:\n{stderr}");
    }
    for m in tests_of(&results, "stage3-epoll") {
        assert!(m["error"].is_null(), "stage 3 was measured: {m}");
    }
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    let failures = table
        .split_once("// ANCHOR: failures\n")
        .and_then(|(_, rest)| rest.split_once("// ANCHOR_END: failures"))
        .expect("results.md has its failures part")
        .0;
    assert!(failures.contains("- stage 1, `tester"), "{table}");
}

#[test]
fn nothing_measured_exits_non_zero() {
    let bins = bin_dir_with_a_crashing_server(false);
    let out = tempfile::tempdir().expect("a temporary folder");
    let run = smoke(bins.path(), out.path()).code(1);
    let stderr = String::from_utf8_lossy(&run.get_output().stderr);
    assert!(stderr.contains("nothing was measured"), "{stderr}");
    // The failures are still written down.
    assert!(out.path().join("results.json").is_file());
}

/// By default the figures go under target/, and into the book only when
/// asked. (A server that crashes at once keeps these runs short.)
#[test]
fn the_book_is_written_only_with_update_book() {
    let bins = bin_dir_with_a_crashing_server(false);
    let root = tempfile::tempdir().expect("a temporary folder");
    let run = |update: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bench"));
        cmd.current_dir(root.path())
            .arg("--smoke")
            .arg("--bin-dir")
            .arg(bins.path());
        if update {
            cmd.arg("--update-book");
        }
        let run = cmd.timeout(RUN_TIMEOUT).assert().code(1);
        String::from_utf8_lossy(&run.get_output().stdout).into_owned()
    };
    let book = root.path().join("book/src/measuring/results.json");

    let summary = run(false);
    assert!(root.path().join("target/bench/results.json").is_file());
    assert!(!book.exists(), "the book was written without --update-book");
    // The summary ends with the report's path, and is short.
    assert!(
        summary.contains("full report: target/bench/results.md"),
        "{summary}"
    );
    assert!(!summary.contains("book's copy"), "{summary}");
    assert!(summary.lines().count() <= 24, "{summary}");

    let summary = run(true);
    assert!(book.is_file(), "--update-book did not write the book");
    assert!(
        summary.contains("book's copy: book/src/measuring/results.md"),
        "{summary}"
    );
}

/// `--only chaos` measures that part alone and puts it in place of the
/// chaos run already in OUT, keeping every other run and target there.
#[test]
fn only_chaos_replaces_that_part_and_keeps_the_rest() {
    let out = tempfile::tempdir().expect("a temporary folder");
    run_smoke(out.path());
    let read = || -> Value {
        let text = fs::read_to_string(out.path().join("results.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let others = |r: &Value| -> Vec<Value> {
        r["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["test"] != "chaos")
            .cloned()
            .collect()
    };
    let chaos_runs = |r: &Value| -> Vec<Value> {
        r["measurements"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["test"] == "chaos")
            .cloned()
            .collect()
    };
    let before = read();
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--only", "chaos", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path())
        .timeout(RUN_TIMEOUT)
        .assert()
        .success();
    let summary = String::from_utf8_lossy(&run.get_output().stdout).into_owned();
    assert!(summary.contains("chaos: "), "{summary}");

    let after = read();
    assert_eq!(others(&after), others(&before));
    assert_eq!(after["command"], before["command"]);
    let chaos = chaos_runs(&after);
    assert_eq!(chaos.len(), 1, "one chaos run, the new one: {chaos:?}");
    assert_eq!(
        chaos[0]["run"]["bench_command"],
        "bench --smoke --only chaos"
    );
    assert_ne!(chaos[0]["run"], chaos_runs(&before)[0]["run"]);
    let keys: Vec<&str> = after["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, TARGETS);
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        table.contains("Measured with `bench --smoke --only chaos`"),
        "{table}"
    );
}

/// A chat server that dies at once under chaos is reported, not hidden: the
/// run is recorded with its error, the server down, the target missed.
#[test]
fn a_chaos_run_against_a_dead_server_is_data() {
    let bins = bin_dir_with_a_crashing_server(false);
    let crash = bins.path().join("stage1-tcp-server");
    fs::rename(&crash, bins.path().join("server")).unwrap();
    let out = tempfile::tempdir().expect("a temporary folder");
    let run = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--only", "chaos", "--bin-dir"])
        .arg(bins.path())
        .arg("--out")
        .arg(out.path())
        .timeout(RUN_TIMEOUT)
        .assert()
        .code(1);
    let summary = String::from_utf8_lossy(&run.get_output().stdout).into_owned();
    assert!(summary.contains("MISSED chaos"), "{summary}");

    let text = fs::read_to_string(out.path().join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    let runs = tests_of(&results, "stage5-chat");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(runs[0]["error"].is_string(), "{}", runs[0]);
    assert_eq!(runs[0]["run"]["server_stayed_up"], false, "{}", runs[0]);
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(table.contains("**The run failed**"), "{table}");
}

/// `bench --smoke --only cluster` into an empty folder.
fn only_cluster(out: &Path, path: Option<&str>) -> assert_cmd::assert::Assert {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bench"));
    if let Some(path) = path {
        command.env("PATH", path);
    }
    command
        .args(["--smoke", "--only", "cluster", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(out)
        .timeout(RUN_TIMEOUT)
        .assert()
}

/// `--only cluster` in tiny form, with a real Redis: four nodes on one port
/// share the held connections (each node's count and memory, Redis's
/// memory), and the three chat setups run side by side, no line lost.
#[test]
fn only_cluster_measures_four_nodes_and_three_setups() {
    // Skips (or with REQUIRE_REDIS=1 fails) without redis-server.
    let Some(_redis) = testkit::redis::Redis::start() else {
        return;
    };
    let out = tempfile::tempdir().expect("a temporary folder");
    only_cluster(out.path(), None).success();
    let text = fs::read_to_string(out.path().join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    let runs = tests_of(&results, "stage7-cluster");
    let tests: Vec<&str> = runs.iter().map(|m| m["test"].as_str().unwrap()).collect();
    assert_eq!(
        tests,
        [
            "cluster_hold",
            "cluster_chat",
            "cluster_chat",
            "cluster_chat"
        ]
    );
    for m in &runs {
        assert!(m["error"].is_null(), "{m}");
        assert!(m["cluster"]["skipped"].is_null(), "{m}");
    }
    let hold = runs[0];
    let nodes = hold["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{hold}");
    let held: u64 = nodes.iter().map(|n| n["held"].as_u64().unwrap()).sum();
    assert_eq!(held, hold["connections"].as_u64().unwrap(), "{hold}");
    assert_eq!(hold["tester"]["open_at_end"], hold["connections"]);
    for n in nodes {
        assert!(n["rss_held"].as_u64() >= n["rss_before"].as_u64(), "{n}");
    }
    assert!(hold["cluster"]["redis_rss_before"].is_u64(), "{hold}");
    assert!(hold["cluster"]["redis_rss_after"].is_u64(), "{hold}");

    let setups: Vec<&str> = runs[1..]
        .iter()
        .map(|m| m["setup"].as_str().unwrap())
        .collect();
    assert_eq!(setups, ["one_node", "one_node_redis", "two_nodes"]);
    for m in &runs[1..] {
        assert_eq!(m["tester"]["lost"], 0, "{m}");
        assert!(m["tester"]["deliveries_per_s"].is_number(), "{m}");
        assert!(m["server_cpu_s"].is_number(), "{m}");
        let nodes = m["cluster"]["nodes"].as_array().unwrap().len();
        let with_redis = m["setup"] != "one_node";
        assert_eq!(nodes, if m["setup"] == "two_nodes" { 2 } else { 1 });
        assert_eq!(m["cluster"]["redis_cpu_s"].is_number(), with_redis, "{m}");
    }
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    for row in [
        "| 4 |",
        "| Redis |",
        "| one node, no Redis |",
        "| two nodes, clients split |",
    ] {
        assert!(table.contains(row), "no {row} in:\n{table}");
    }
}

/// Without redis-server the cluster part is data, not a failure: each run
/// recorded as skipped with the reason, the targets not measured, said so.
#[test]
fn only_cluster_without_redis_is_skipped_and_says_why() {
    let out = tempfile::tempdir().expect("a temporary folder");
    let empty = tempfile::tempdir().expect("a folder without redis-server");
    // Nothing measured, so the exit says so; the results still say why.
    only_cluster(out.path(), empty.path().to_str()).code(1);
    let text = fs::read_to_string(out.path().join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    let runs = tests_of(&results, "stage7-cluster");
    assert_eq!(runs.len(), 4, "{runs:?}");
    for m in runs {
        assert!(m["error"].is_null(), "{m}");
        let why = m["cluster"]["skipped"].as_str().unwrap_or_default();
        assert!(why.contains("redis-server is not installed"), "{m}");
    }
    for t in results["targets"].as_array().unwrap() {
        assert!(t["met"].is_null(), "{t}");
        assert!(
            t["measured"].as_str().unwrap().starts_with("skipped: "),
            "{t}"
        );
    }
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        table.contains("The cluster part was skipped: redis-server is not installed"),
        "{table}"
    );
}

/// `--only cluster-faults` in tiny form, with a real Redis: three nodes,
/// faults injected by kind, and every checked line accounted for.
#[test]
fn only_cluster_faults_injects_faults_and_accounts_for_every_line() {
    // Skips (or with REQUIRE_REDIS=1 fails) without redis-server.
    let Some(_redis) = testkit::redis::Redis::start() else {
        return;
    };
    let out = tempfile::tempdir().expect("a temporary folder");
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--only", "cluster-faults", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(out.path())
        .timeout(RUN_TIMEOUT)
        .assert()
        .success();
    let text = fs::read_to_string(out.path().join("results.json")).unwrap();
    let results: Value = serde_json::from_str(&text).unwrap();
    let runs = tests_of(&results, "stage7-cluster");
    assert_eq!(runs.len(), 1, "{runs:?}");
    let m = runs[0];
    assert_eq!(m["test"], "cluster_faults", "{m}");
    assert!(m["error"].is_null(), "{m}");
    let figures = &m["tester"];
    let kinds = figures["injected"].as_object().expect("faults by kind");
    let sum: u64 = kinds.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(Some(sum), figures["injected_total"].as_u64(), "{m}");
    assert!(sum > 0, "no fault injected: {m}");
    assert!(figures["delivered"].as_u64() > Some(0), "{m}");
    for figure in [
        "lost_silently",
        "duplicated_or_reordered",
        "ghost_lines",
        "leaked_fds",
    ] {
        assert_eq!(figures[figure], 0, "{figure}: {m}");
    }
    assert!(figures["lost_told"].is_u64(), "{m}");
    assert_eq!(figures["who_exact"], true, "{m}");
    let target = &results["targets"][0];
    assert_eq!(target["key"], "cluster_faults", "{target}");
    assert_eq!(target["met"], true, "{target}");
    let table = fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(table.contains("| lines sent | delivered |"), "{table}");
}
