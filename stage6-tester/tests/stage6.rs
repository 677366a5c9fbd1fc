//! Exercise checks for the tester: every subcommand against the real stage
//! servers with small numbers, the chat verifier against relays that are
//! wrong on purpose, and clear errors for bad input. Run them against your
//! own tester with `STAGE6_BIN=/path/to/yours cargo test -p stage6-tester`
//! (the servers can be replaced too: `STAGE3_BIN`, `STAGE4_BIN`, `STAGE5_SERVER_BIN`).

mod relay;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;
use testkit::{Server, closed_port};

use relay::Fault;

/// Long enough for any run below; a hung tester fails instead of hanging.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn tester() -> PathBuf {
    testkit::bin("STAGE6_BIN", env!("CARGO_BIN_EXE_tester"))
}

fn stage1() -> PathBuf {
    testkit::workspace_bin("STAGE1_BIN", "stage1-tcp-server")
}

fn stage3() -> PathBuf {
    testkit::workspace_bin("STAGE3_BIN", "stage3-epoll")
}

fn stage4() -> PathBuf {
    testkit::workspace_bin("STAGE4_BIN", "stage4-edge-triggered")
}

fn stage5() -> PathBuf {
    testkit::workspace_bin("STAGE5_SERVER_BIN", "server")
}

fn cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(tester());
    cmd.args(args).timeout(RUN_TIMEOUT);
    cmd
}

/// Run the tester with `--json`, expect success, return the one JSON object.
fn run_json(args: &[&str]) -> Value {
    let output = cmd(args).arg("--json").output().expect("run the tester");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tester {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

/// A server started with `-q` on a free IPv4 loopback port, and its address
/// as the tester's argument. Keep the server bound (`_server`, not `_`):
/// dropping it kills the process.
fn start_quiet(bin: PathBuf) -> (Server, String) {
    let server = Server::start(bin, &["-q", "127.0.0.1:0"]);
    let addr = server.addr.to_string();
    (server, addr)
}

// ---- echo ----

#[test]
fn echo_checks_every_byte_from_stage4() {
    let (_server, addr) = start_quiet(stage4());
    let report = run_json(&[
        "echo",
        &addr,
        "--clients",
        "8",
        "--messages",
        "50",
        "--size",
        "3000",
    ]);
    assert_eq!(
        report["round_trips"], 400,
        "8 clients sent 50 messages each: does every client send all its messages \
         and count each echo once? {report}"
    );
    assert_eq!(
        report["bytes_checked"],
        400 * 3000,
        "every byte of the 400 echoes of 3,000 bytes is checked: {report}"
    );
    assert_eq!(
        report["latency"]["samples"], 400,
        "one latency sample per round trip: {report}"
    );
    assert_eq!(
        report["faults"].as_array().unwrap().len(),
        0,
        "stage 4 returns every byte, so a fault means the tester misread an echo: {report}"
    );
}

#[test]
fn echo_works_against_stage1_with_one_client() {
    let (_server, addr) = start_quiet(stage1());
    // The summary states every setting, so the run can be repeated.
    cmd(&[
        "echo",
        &addr,
        "--clients",
        "1",
        "--messages",
        "100",
        "--size",
        "64",
    ])
    .assert()
    .success()
    .stdout(
        predicate::str::starts_with(format!(
            "tester echo {addr} --clients 1 --messages 100 --size 64 --timeout 5s\n"
        ))
        .and(predicate::str::contains("round trips  100 of 100"))
        .and(predicate::str::contains(
            "every byte came back (6,400 checked)",
        )),
    );
}

#[test]
fn echo_works_over_ipv6() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let server = Server::start(stage3(), &["-q", "[::1]:0"]);
    let report = run_json(&[
        "echo",
        &server.addr.to_string(),
        "--clients",
        "3",
        "--messages",
        "20",
    ]);
    assert_eq!(report["round_trips"], 60);
}

/// An echo server that changes one byte: the 100th byte of each connection.
fn start_corrupting_echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut offset = 0usize;
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if (offset..offset + n).contains(&100) {
                        buf[100 - offset] ^= 0xff;
                    }
                    offset += n;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn echo_names_a_corrupted_byte() {
    let addr = start_corrupting_echo();
    cmd(&[
        "echo",
        &addr,
        "--clients",
        "1",
        "--messages",
        "10",
        "--size",
        "64",
    ])
    .assert()
    .code(1)
    .stdout(
        predicate::str::contains("FAILED").and(predicate::str::contains(
            "client 1 message 2: byte 36 came back as",
        )),
    );
}

// ---- connect ----

#[test]
fn connect_counts_every_connection_to_stage3() {
    let (_server, addr) = start_quiet(stage3());
    let report = run_json(&["connect", &addr, "--count", "300", "--concurrency", "16"]);
    assert_eq!(
        report["attempts"], 300,
        "--count 300 makes 300 attempts: {report}"
    );
    assert_eq!(
        report["connections"], 300,
        "stage 3 accepts every connection: is each completed connect(2) counted \
         (EPOLLOUT, then SO_ERROR 0)? {report}"
    );
    assert_eq!(
        report["latency"]["samples"], 300,
        "one latency sample per connection: {report}"
    );
    assert_eq!(report["errors"]["refused"], 0, "{report}");
    assert_eq!(report["errors"]["timeout"], 0, "{report}");
}

#[test]
fn connect_with_greeting_waits_for_the_first_line() {
    // A listener that never accepts: the kernel completes the handshakes,
    // but nobody ever says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let report = run_json(&["connect", &addr, "--count", "5"]);
    assert_eq!(
        report["connections"], 5,
        "a handshake alone counts without --greeting"
    );
    // The tester says how much CPU it used, so a run can tell whether the
    // tester itself set the pace.
    let cpu = &report["tester_cpu"];
    assert!(cpu["user_s"].as_f64().unwrap() + cpu["system_s"].as_f64().unwrap() > 0.0);

    cmd(&[
        "connect",
        &addr,
        "--count",
        "5",
        "--greeting",
        "--timeout",
        "300ms",
    ])
    .assert()
    .code(1)
    .stderr(predicate::str::starts_with(format!(
        "error: cannot connect to {addr}: timed out"
    )));

    // A server that greets: every connection counts once its line arrived.
    let relay = relay::start(Fault::None, true, false).to_string();
    let report = run_json(&["connect", &relay, "--count", "20", "--greeting"]);
    assert_eq!(report["connections"], 20);
    assert_eq!(report["settings"]["greeting"], true);
}

// ---- hold ----

#[test]
fn hold_keeps_connections_open_on_stage3() {
    let server = Server::start(stage3(), &["-q", "127.0.0.1:0"]);
    let idle_fds = sockets(server.pid());
    let pid = server.pid().to_string();
    let addr = server.addr.to_string();
    let hold = Background::start(&[
        "hold",
        &addr,
        "--connections",
        "150",
        "--duration",
        "2s",
        "--server-pid",
        &pid,
    ]);
    // While the tester holds, the server really has all 150 connections.
    let mut seen = 0;
    let held = testkit::holds_within_timeout(|| {
        seen = sockets(server.pid()).saturating_sub(idle_fds);
        seen >= 150
    });
    assert!(
        held,
        "the server had {seen} of the 150 connections the tester was to hold: \
         does the tester keep every connection open for --duration?"
    );
    let report = hold.report();
    assert_eq!(report["open"], 150, "{report}");
    assert_eq!(
        report["open_at_end"], 150,
        "stage 3 closes no connection: are the held ones checked at the end? {report}"
    );
    assert_eq!(report["closed_by_server"], 0, "{report}");
    assert!(report["server_rss_after"].as_u64().unwrap() > 0);
    assert!(report["server_bytes_per_connection"].is_number());
    // Closed again afterwards.
    testkit::wait_until(
        "the server closes the held connections (does the tester close them at the end?)",
        || sockets(server.pid()) <= idle_fds,
    );
}

/// A process a test started itself, killed when dropped, so that a failed
/// assert leaves no tester running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tester run (`--json`) left running while the test watches the server:
/// its stdout is read on a thread, so that a tester that writes more than
/// a pipe holds is not blocked meanwhile.
struct Background {
    subcommand: String,
    child: KillOnDrop,
    stdout: thread::JoinHandle<std::io::Result<Vec<u8>>>,
}

impl Background {
    fn start(args: &[&str]) -> Background {
        let mut child = KillOnDrop(
            std::process::Command::new(tester())
                .args(args)
                .arg("--json")
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the tester"),
        );
        let mut stdout = child.0.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        });
        let subcommand = args[0].to_string();
        Background {
            subcommand,
            child,
            stdout,
        }
    }

    /// Wait for the run to end (within the test's timeout), and return
    /// its report.
    fn report(mut self) -> Value {
        let status = testkit::wait_for_exit(&mut self.child.0);
        assert!(
            status.success(),
            "tester {} failed: {status}",
            self.subcommand
        );
        let stdout = self
            .stdout
            .join()
            .unwrap()
            .expect("read the tester's stdout");
        serde_json::from_slice(&stdout).unwrap()
    }
}

/// The sockets a process has open (`/proc/PID/fd` links named `socket:[..]`):
/// its listener and its connections, not its epoll instance or stdio.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn hold_spreads_over_worker_processes() {
    let (_server, addr) = start_quiet(stage3());
    let output = cmd(&["hold", &addr, "--connections", "120", "--workers", "3"])
        .args(["--duration", "200ms"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tester hold failed ({}): {summary}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(summary.contains("120 of 120 open"), "{summary}");
    assert!(summary.contains("3 worker processes"), "{summary}");
    assert!(summary.contains("120 still open after 200ms"), "{summary}");
}

#[test]
fn hold_moves_to_the_next_source_address_past_one_port_range() {
    // Stage 3 logs each peer address; the tester is told that one source
    // address holds only 40 connections (normally about 27,000).
    let server = Server::start(stage3(), &["127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let output = cmd(&["hold", &addr, "--connections", "100", "--per-source", "40"])
        .args(["--duration", "100ms"])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tester hold failed ({}): {summary}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(summary.contains("100 of 100 open"), "{summary}");
    assert!(
        summary.contains("source addresses 127.0.0.1-127.0.0.3"),
        "{summary}"
    );
    let log = server.stop();
    for (source, count) in [("127.0.0.1:", 40), ("127.0.0.2:", 40), ("127.0.0.3:", 20)] {
        let seen = log
            .lines()
            .filter(|l| l.starts_with("accepted") && l.contains(&format!("from {source}")))
            .count();
        assert_eq!(seen, count, "connections from {source}\n{log}");
    }
}

#[test]
fn hold_on_ipv6_stops_at_one_port_range_and_says_so() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let server = Server::start(stage3(), &["-q", "[::1]:0"]);
    let addr = server.addr.to_string();
    let report = run_json(&[
        "hold",
        &addr,
        "--connections",
        "50",
        "--per-source",
        "30",
        "--duration",
        "100ms",
    ]);
    assert_eq!(report["attempted"], 30);
    assert_eq!(report["open"], 30);
    let note = report["notes"][0].as_str().unwrap();
    assert!(note.contains("capped at 30"), "{note}");
}

// ---- chat ----

#[test]
fn chat_through_stage5_loses_nothing() {
    let (_server, addr) = start_quiet(stage5());
    let report = run_json(&["chat", &addr, "--clients", "6", "--messages", "40"]);
    assert_eq!(
        report["sent"], 240,
        "6 clients send 40 lines each: {report}"
    );
    assert_eq!(
        report["delivered"],
        6 * 5 * 40,
        "each line reaches the 5 other clients: does every receiver count every \
         other client's lines? {report}"
    );
    assert_eq!(
        report["lost"], 0,
        "stage 5 loses nothing, so a loss means the tester miscounted: {report}"
    );
    assert_eq!(report["duplicated"], 0, "{report}");
    assert_eq!(report["reordered"], 0, "{report}");
    // At a set rate too, and the summary says the rate it was asked for.
    cmd(&[
        "chat",
        &addr,
        "--clients",
        "3",
        "--messages",
        "20",
        "--rate",
        "200",
    ])
    .assert()
    .success()
    .stdout(
        predicate::str::contains("(200 requested)")
            .and(predicate::str::contains("delivered    120 of 120"))
            .and(predicate::str::contains("once and in order")),
    );
}

#[test]
fn chat_with_publish_measures_redis_pub_sub_as_a_chat() {
    let Some(redis) = testkit::redis::Redis::start() else {
        return;
    };
    let addr = redis.arg();
    for rate in ["0", "400"] {
        let report = run_json(&[
            "chat",
            &addr,
            "--clients",
            "6",
            "--messages",
            "40",
            "--rate",
            rate,
            "--publish",
            "room",
        ]);
        assert_eq!(
            report["delivered"],
            6 * 5 * 40,
            "each line reaches the 5 other subscribers, and a publisher's own \
             copy is not counted (--rate {rate}): {report}"
        );
        for fault in ["lost", "duplicated", "reordered"] {
            assert_eq!(report[fault], 0, "{fault} (--rate {rate}): {report}");
        }
        assert_eq!(report["settings"]["publish"], "room", "{report}");
    }
}

#[test]
fn hold_with_send_holds_subscribed_redis_clients() {
    let Some(redis) = testkit::redis::Redis::start() else {
        return;
    };
    let addr = redis.arg();
    let hold = Background::start(&[
        "hold",
        &addr,
        "--connections",
        "60",
        "--workers",
        "2",
        "--duration",
        "3s",
        "--send",
        "SUBSCRIBE room",
    ]);
    // Redis's own count of the channel's subscribers, while the tester holds.
    let numsub = "return redis.call('PUBSUB', 'NUMSUB', KEYS[1])[2]";
    let mut seen = String::new();
    let held = testkit::holds_within_timeout(|| {
        seen = redis.command(&["EVAL", numsub, "1", "room"]);
        seen == ":60"
    });
    assert!(
        held,
        "Redis counted {seen} subscribers of the 60 held: does each connection send --send's line?"
    );
    let report = hold.report();
    assert_eq!(report["open_at_end"], 60, "{report}");
    assert_eq!(report["settings"]["send"], "SUBSCRIBE room", "{report}");
}

#[test]
fn chat_batch_through_stage5_delivers_every_line_once_in_order() {
    let (_server, addr) = start_quiet(stage5());
    // Several lines per write, several writes in flight per client.
    let report = run_json(&[
        "chat",
        &addr,
        "--clients",
        "5",
        "--messages",
        "60",
        "--batch",
        "8",
    ]);
    assert_eq!(report["settings"]["batch"], 8);
    assert_eq!(report["in_flight"], 8);
    assert_eq!(report["sent"], 300);
    assert_eq!(report["delivered"], 5 * 4 * 60);
    assert_eq!(report["latency"]["samples"], 5 * 4 * 60);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["reordered"], 0);
    assert_eq!(report["stalled"], false);
    // A window that would owe a receiver too much is cut, and the summary
    // says so: 19 senders of 80-byte lines fit 172 lines each in 256 KiB.
    let report = run_json(&[
        "chat",
        &addr,
        "--clients",
        "20",
        "--messages",
        "5",
        "--batch",
        "4096",
    ]);
    assert_eq!(report["in_flight"], 172);
    assert_eq!(report["delivered"], 20 * 19 * 5);
    assert_eq!(report["lost"], 0);
    let note = report["notes"][0].as_str().unwrap();
    assert!(note.contains("not --batch 4096"), "{note}");
}

/// A chat server that greets and relays the tester's sync line, then
/// relays nothing: enough for a run to start, never to finish.
fn start_silent_chat(clients: usize) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    use std::sync::{Arc, Mutex};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let streams: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming().take(clients) {
            let mut stream = stream.unwrap();
            stream.write_all(b"welcome\n").unwrap();
            streams.lock().unwrap().push(stream.try_clone().unwrap());
            let streams = Arc::clone(&streams);
            thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("~sync~") {
                        for other in streams.lock().unwrap().iter_mut() {
                            let _ = other.write_all(b"~sync~\n");
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn chat_unpaced_stops_when_the_server_stops_relaying() {
    // Each client's window fills with 2 lines that never arrive; the run
    // must end after --drain-timeout and count exactly those as lost.
    let addr = start_silent_chat(3).to_string();
    let output = cmd(&[
        "chat",
        &addr,
        "--clients",
        "3",
        "--messages",
        "50",
        "--batch",
        "2",
        "--drain-timeout",
        "300ms",
        "--json",
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["stalled"], true);
    assert_eq!(report["sent"], 3 * 2);
    assert_eq!(report["delivered"], 0);
    assert_eq!(report["lost"], 3 * 2 * 2);
    let note = report["notes"][0].as_str().unwrap();
    assert!(note.contains("stopped sending"), "{note}");
}

#[test]
fn connect_with_greeting_counts_stage5_welcomes() {
    let server = Server::start(stage5(), &["-q", "127.0.0.1:0"]);
    let report = run_json(&[
        "connect",
        &server.addr.to_string(),
        "--count",
        "100",
        "--greeting",
    ]);
    assert_eq!(report["connections"], 100);
    assert_eq!(report["errors"]["refused"], 0);
}

#[test]
fn chat_passes_a_correct_relay() {
    let addr = relay::start(Fault::None, true, false).to_string();
    let report = run_json(&["chat", &addr, "--clients", "4", "--messages", "30"]);
    assert_eq!(report["sent"], 120);
    assert_eq!(report["delivered"], 4 * 3 * 30);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["reordered"], 0);
    assert_eq!(report["latency"]["samples"], 360);
}

#[test]
fn chat_names_a_lost_line() {
    let addr = relay::start(Fault::DropOne, true, false).to_string();
    cmd(&[
        "chat",
        &addr,
        "--clients",
        "3",
        "--messages",
        "10",
        "--drain-timeout",
        "500ms",
    ])
    .assert()
    .code(1)
    .stdout(
        predicate::str::contains("FAILED: lost 1 line (client ")
            .and(predicate::str::contains("never reached client 2)"))
            .and(predicate::str::contains("delivered    59 of 60")),
    );
}

#[test]
fn chat_names_a_reordered_line() {
    let addr = relay::start(Fault::SwapTwo, true, false).to_string();
    cmd(&["chat", &addr, "--clients", "3", "--messages", "10"])
        .assert()
        .code(1)
        .stdout(
            predicate::str::contains("FAILED: reordered 1 line (client ")
                .and(predicate::str::contains("reached client 2 after seq"))
                .and(predicate::str::contains("lost").not()),
        );
}

#[test]
fn chat_names_a_duplicated_line() {
    let run = |extra: &[&str]| {
        // A fresh relay for each run: it numbers clients over its whole life.
        let addr = relay::start(Fault::DuplicateOne, true, false).to_string();
        cmd(&["chat", &addr, "--clients", "3", "--messages", "10"])
            .args(extra)
            .assert()
            .code(1)
    };
    run(&[]).stdout(
        // The whole verdict: one duplicate, named like a loss or a reorder.
        predicate::str::is_match(concat!(
            r"(?m)^check +FAILED: duplicated 1 line ",
            r"\(client [13] seq ([1-9]|10) reached client 2 twice\)$",
        ))
        .unwrap()
        .and(predicate::str::contains("delivered    60 of 60"))
        .and(predicate::str::contains("lost").not())
        .and(predicate::str::contains("reordered").not()),
    );
    let json = run(&["--json"]);
    let report: Value = serde_json::from_slice(&json.get_output().stdout).unwrap();
    assert_eq!(report["duplicated"], 1);
    assert_eq!(report["delivered"], 60);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["reordered"], 0);
}

#[test]
fn chat_hello_is_sent_first() {
    // This relay takes a client's first line as its name.
    let addr = relay::start(Fault::None, true, true).to_string();
    let report = run_json(&[
        "chat",
        &addr,
        "--clients",
        "3",
        "--messages",
        "5",
        "--hello",
        "bot",
    ]);
    assert_eq!(report["delivered"], 30);
    // Without --hello, each client's first line becomes its name instead.
    cmd(&[
        "chat",
        &addr,
        "--clients",
        "3",
        "--messages",
        "5",
        "--drain-timeout",
        "300ms",
    ])
    .assert()
    .code(1)
    .stdout(predicate::str::contains("seq 1 never reached"));
}

#[test]
fn chat_needs_no_greeting_when_told() {
    let addr = relay::start(Fault::None, false, false).to_string();
    cmd(&[
        "chat",
        &addr,
        "--clients",
        "2",
        "--messages",
        "5",
        "--timeout",
        "300ms",
    ])
    .assert()
    .code(1)
    .stderr(predicate::str::contains("--no-greeting"));
    let report = run_json(&[
        "chat",
        &addr,
        "--clients",
        "2",
        "--messages",
        "5",
        "--no-greeting",
    ]);
    assert_eq!(report["delivered"], 10);
}

#[test]
fn chat_says_when_the_rate_was_not_met() {
    let addr = relay::start(Fault::None, true, false).to_string();
    // A billion lines a second: no machine sends 400 lines in 0.4µs.
    cmd(&[
        "chat",
        &addr,
        "--clients",
        "2",
        "--messages",
        "200",
        "--rate",
        "1000000000",
    ])
    .assert()
    .success()
    .stdout(
        predicate::str::contains("--rate 1000000000")
            .and(predicate::str::contains("note         rate not met: sent")),
    );
}

// ---- bad input ----

#[test]
fn an_unreachable_address_is_one_clear_error() {
    let addr = format!("127.0.0.1:{}", closed_port());
    // `connect --greeting` waits for input only: the refusal must still
    // reach it, through EPOLLERR and the read's error.
    for sub in ["connect", "connect --greeting", "hold", "echo", "chat"] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.insert(1, &addr);
        cmd(&args).assert().code(1).stdout("").stderr(
            predicate::str::starts_with(format!(
                "error: cannot connect to {addr}: Connection refused (os error 111)\n"
            ))
            .and(predicate::str::contains("panicked").not()),
        );
    }
}

#[test]
fn range_errors_exit_two_in_one_style() {
    // Every count and duration the subcommands take, at a value out of range.
    let cases: &[(&str, &str, &str)] = &[
        ("connect", "--concurrency", "0"),
        ("connect", "--count", "0"),
        ("connect", "--duration", "0"),
        ("connect", "--timeout", "0s"),
        ("hold", "--connections", "0"),
        ("hold", "--concurrency", "0"),
        ("hold", "--workers", "0"),
        ("hold", "--duration", "0ms"),
        ("echo", "--clients", "0"),
        ("echo", "--messages", "0"),
        ("echo", "--size", "0"),
        ("chat", "--clients", "0"),
        ("chat", "--messages", "0"),
        ("chat", "--batch", "0"),
        ("chat", "--drain-timeout", "0"),
        ("chaos", "--clients", "0"),
        ("chaos", "--rate", "0"),
        ("chaos", "--fault-rate", "0"),
        ("chaos", "--concurrency", "0"),
        ("chaos", "--max-line", "0"),
        ("chaos", "--duration", "0"),
        ("hold", "--server-pid", "0"),
        ("chaos", "--server-pid", "0"),
    ];
    for &(sub, flag, value) in cases {
        cmd(&[sub, flag, value]).assert().code(2).stdout("").stderr(
            predicate::str::starts_with(format!("error: invalid value '{value}' for '{flag} <"))
                .and(predicate::str::contains("must be")),
        );
    }
}

#[test]
fn a_zero_duration_is_refused_before_any_attempt() {
    // A listener that would see any attempt: none may come.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    cmd(&["connect", &addr, "--duration", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("must be more than 0").and(
            // Not the old answer: a failure with an empty reason.
            predicate::str::contains("cannot connect").not(),
        ));
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the tester connected anyway"
    );
}

#[test]
fn checking_lines_needs_two_clients() {
    // One client has nobody to check its lines: "0 of 0 delivered" would
    // be a check that checks nothing, so it is refused, and says why.
    for sub in ["chat", "chaos"] {
        cmd(&[sub, "--clients", "1"]).assert().code(2).stderr(
            predicate::str::contains("must be at least 2")
                .and(predicate::str::contains("checked at the other clients")),
        );
    }
}

#[test]
fn echo_against_a_chat_server_asks_if_it_is_one() {
    let (_server, addr) = start_quiet(stage5());
    cmd(&["echo", &addr, "--messages", "5"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            predicate::str::starts_with(format!("error: is {addr} a chat server? it spoke first"))
                .and(predicate::str::contains("* welcome client"))
                .and(predicate::str::contains("came back as").not()),
        );
}

#[test]
fn chat_against_an_echo_server_asks_if_it_is_a_chat_server_first() {
    // An echo server says nothing on connect: no greeting ever comes.
    let (_server, addr) = start_quiet(stage4());
    cmd(&["chat", &addr, "--clients", "3", "--timeout", "300ms"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::starts_with(format!("error: is {addr} a chat server? "))
                .and(predicate::str::contains("--no-greeting")),
        );
}

// ---- one connection's failure is that connection's ----

#[test]
fn a_refused_address_among_good_ones_is_counted_not_fatal() {
    // Half the clients go to a port where nothing listens: they are
    // counted as refused, and the run goes on with the others.
    let (_echo, good) = start_quiet(stage4());
    let bad = format!("127.0.0.1:{}", closed_port());
    let output = cmd(&["echo", &good, &bad, "--clients", "4", "--messages", "10"])
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a client that could not connect is a fault"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["round_trips"], 20);
    assert_eq!(report["errors"]["refused"], 2);

    let report = run_json(&["connect", &good, &bad, "--count", "20"]);
    assert_eq!(report["connections"], 10);
    assert_eq!(report["errors"]["refused"], 10);

    let (_chat, chat) = start_quiet(stage5());
    let output = cmd(&["chat", &chat, &bad, "--clients", "6", "--messages", "10"])
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["errors"]["refused"], 3);
    assert_eq!(
        report["delivered"],
        3 * 2 * 10,
        "the three that joined are checked"
    );
    assert_eq!(report["lost"], 0);
}

// ---- several addresses ----

#[test]
fn chat_spreads_its_clients_over_two_addresses() {
    // One relay listening on two addresses: one chat with two doors.
    let ([first, second], accepted) = relay::start_pair(Fault::None);
    let report = run_json(&[
        "chat",
        &first.to_string(),
        &second.to_string(),
        "--clients",
        "6",
        "--messages",
        "20",
    ]);
    assert_eq!(report["delivered"], 6 * 5 * 20);
    assert_eq!(report["lost"], 0);
    let counts = accepted.map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(counts, [3, 3], "clients go to each address in turn");
    assert_eq!(report["settings"]["addrs"][1], second.to_string());
}

#[test]
fn addresses_may_name_a_host() {
    let (_server, addr) = start_quiet(stage5());
    let port = addr.rsplit_once(':').unwrap().1;
    let host = format!("localhost:{port}");
    let report = run_json(&["chat", &host, "--clients", "3", "--messages", "10"]);
    assert_eq!(report["delivered"], 3 * 2 * 10);
    // Resolved once, at start: the summary names the address it used.
    let used = report["settings"]["addr"].as_str().unwrap();
    assert!(used.ends_with(&format!(":{port}")), "{used}");
    let report = run_json(&["connect", &host, "--count", "10", "--greeting"]);
    assert_eq!(report["connections"], 10);
    cmd(&["connect", "localhost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected IP:PORT or HOST:PORT"));
}

// ---- chaos ----

/// Every kind of misbehaving client chaos injects.
const FAULT_KINDS: [&str; 10] = [
    "reset-before-welcome",
    "reset-mid-line",
    "reset-mid-broadcast",
    "half-close",
    "long-line",
    "no-newline",
    "bad-bytes",
    "never-reads",
    "churn",
    "nick-storm",
];

#[test]
fn chaos_costs_stage5_checked_clients_nothing() {
    // Logging on, as a reader runs it: logging must never be what fails.
    let server = Server::start(stage5(), &["127.0.0.1:0"]);
    let addr = server.addr.to_string();
    let pid = server.pid().to_string();
    let output = cmd(&["chaos", &addr, "--duration", "3s", "--clients", "8"])
        .args(["--rate", "60", "--fault-rate", "40", "--concurrency", "8"])
        .args(["--seed", "42", "--server-pid", &pid, "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chaos failed: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["settings"]["seed"], 42);
    for kind in FAULT_KINDS {
        assert!(
            report["injected"][kind].as_u64().unwrap() >= 1,
            "no {kind} injected: {report}"
        );
    }
    // The checked clients lost nothing while the faults went on, and
    // their lines kept flowing all through the run.
    assert!(report["sent"].as_u64().unwrap() >= 100, "{report}");
    assert_eq!(report["delivered"], report["expected"]);
    assert_eq!(report["lost"], 0);
    assert_eq!(report["duplicated"], 0);
    assert_eq!(report["reordered"], 0);
    // The misbehaving clients' notices reached them, and were not counted.
    assert!(report["notices"].as_u64().unwrap() > 0);
    // The server stayed up, kept every checked client, and let go of
    // every other connection.
    assert_eq!(report["still_connected"], 8);
    assert_eq!(report["fresh_client"], true);
    let before = report["server_fds_before"].as_u64().unwrap();
    let after = report["server_fds_after"].as_u64().unwrap();
    assert!(
        after <= before,
        "descriptors {before} before, {after} after"
    );
    assert!(report["server_rss_after"].as_u64().unwrap() > 0);
    assert_eq!(report["failures"].as_array().unwrap().len(), 0);
    assert!(server.stderr().contains("accepted fd"), "logging was on");
}

#[test]
fn chaos_survives_a_server_that_resets_misbehaving_clients() {
    // The relay resets a client whose line is too long, where stage 5
    // closes politely: a misbehaving client's reset must end that client
    // only, never the run.
    let addr = relay::start(Fault::None, true, false).to_string();
    let report = run_json(&[
        "chaos",
        &addr,
        // The fault kinds come in an order drawn from the seed, and the
        // relay keeps the kinds it does not reset until `--timeout`, so in
        // one second only a few kinds may start: seed 3 draws the long
        // line first.
        "--seed",
        "3",
        "--duration",
        "1s",
        "--clients",
        "3",
        "--rate",
        "30",
        "--fault-rate",
        "20",
        "--concurrency",
        "4",
        "--timeout",
        "2s",
    ]);
    assert!(report["reset_by_server"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["still_connected"], 3);
    assert_eq!(report["fresh_client"], true);
}

#[test]
fn chaos_reports_what_a_faulty_relay_did() {
    for (fault, found) in [
        (Fault::DropOne, "FAILED: lost 1 line (client "),
        (Fault::DuplicateOne, "FAILED: duplicated 1 line (client "),
    ] {
        let addr = relay::start(fault, true, false).to_string();
        let output = cmd(&["chaos", &addr, "--duration", "1s", "--clients", "3"])
            .args(["--rate", "30", "--fault-rate", "20", "--concurrency", "4"])
            .args(["--drain-timeout", "500ms", "--timeout", "2s"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.contains(found) && stdout.contains("client 2"),
            "{stdout}"
        );
        // The summary names the seed, so the run can be repeated.
        assert!(stdout.contains(" --seed "), "{stdout}");
    }
}

#[test]
fn bad_flags_exit_two() {
    cmd(&["echo", "--no-such-flag"]).assert().code(2);
    cmd(&["echo", "not-an-address"]).assert().code(2);
    cmd(&["connect", "--duration", "soon"]).assert().code(2);
    cmd(&["nonsense"]).assert().code(2);
}

#[test]
fn help_lists_the_subcommands() {
    cmd(&["--help"]).assert().success().stdout(
        predicate::str::contains("connect")
            .and(predicate::str::contains("hold"))
            .and(predicate::str::contains("echo"))
            .and(predicate::str::contains("chat"))
            .and(predicate::str::contains("chaos"))
            .and(predicate::str::contains("127.0.0.1:8080")),
    );
}
