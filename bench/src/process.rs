//! Starting the processes the benchmark measures: a server (read its
//! `listening on` line, kill it by PID when done) and a tester run (its JSON,
//! stopped if it overruns). Every wait here has a limit.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::unistd::{SysconfVar, sysconf};
use serde_json::Value;

use crate::machine::{kib, proc_field};
use crate::pin::pin;
use crate::redis;

/// How long a server may take to print its `listening on` line.
const START_LIMIT: Duration = Duration::from_secs(10);

/// How much of a server's stderr is kept for an error message.
const STDERR_KEPT: usize = 4096;

/// A running server; killed (SIGKILL to its own PID) and reaped on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    stderr: Stderr,
}

/// Where a server's stderr goes.
enum Stderr {
    /// A pipe, of which the last few kilobytes are kept (`-q` servers).
    Tail(Tail),
    /// A file: the log of a server started with logging on.
    Log(PathBuf),
}

impl Server {
    /// Start `bin -q FLAGS 127.0.0.1:0` on `cpu` and wait for its
    /// `listening on` line.
    pub fn start(bin: &Path, flags: &[&str], cpu: Option<usize>) -> Result<Server> {
        Server::spawn(bin, flags, cpu, None, None)
    }

    /// Start `bin -q FLAGS ADDR` on `cpu`: a server that shares a port
    /// another one already listens on (`--reuseport`).
    pub fn start_on(bin: &Path, flags: &[&str], addr: &str, cpu: Option<usize>) -> Result<Server> {
        Server::spawn(bin, flags, cpu, None, Some(addr))
    }

    /// Start `bin FLAGS 127.0.0.1:0` with logging on (no `-q`), its stderr
    /// written to `log`, as a reader runs it.
    pub fn start_logging(
        bin: &Path,
        flags: &[&str],
        cpu: Option<usize>,
        log: &Path,
    ) -> Result<Server> {
        Server::spawn(bin, flags, cpu, Some(log), None)
    }

    /// Start Debian's `redis-server` on a free loopback port on `cpu`, with
    /// no persistence, and wait until it answers PING: the pub/sub peer of
    /// the chat servers. It prints no `listening on` line.
    pub fn start_redis(cpu: Option<usize>) -> Result<Server> {
        let port = redis::free_port()?;
        let mut command = Command::new(redis::REDIS_SERVER);
        pin(&mut command, cpu);
        let mut child = command
            .args(redis::args(&port.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", redis::REDIS_SERVER))?;
        // Redis logs to stdout.
        let stderr = Stderr::Tail(keep_tail(child.stdout.take().expect("piped stdout")));
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
        };
        redis::wait_until_ready(server.addr, || server.exited())?;
        Ok(server)
    }

    fn spawn(
        bin: &Path,
        flags: &[&str],
        cpu: Option<usize>,
        log: Option<&Path>,
        addr: Option<&str>,
    ) -> Result<Server> {
        let mut command = Command::new(bin);
        pin(&mut command, cpu);
        let mut args = server_args(flags);
        if let Some(addr) = addr {
            *args.last_mut().expect("an address") = addr;
        }
        let stderr_to = match log {
            Some(path) => {
                args.retain(|&a| a != "-q");
                let file = File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                Stdio::from(file)
            }
            None => Stdio::piped(),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_to)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = match (log, child.stderr.take()) {
            (Some(path), _) => Stderr::Log(path.to_path_buf()),
            (None, pipe) => Stderr::Tail(keep_tail(pipe.expect("piped stderr"))),
        };
        let (first_line, line) = mpsc::channel();
        // The thread goes on draining stdout so the server never blocks on it.
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            for _ in lines {}
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let line = match line.recv_timeout(START_LIMIT) {
            Ok(Some(Ok(line))) => line,
            _ => bail!(
                "{} printed no `listening on` line: {}",
                bin.display(),
                server.exited().unwrap_or_default()
            ),
        };
        server.addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.trim().parse().ok())
            .with_context(|| format!("first line is not `listening on IP:PORT`: {line:?}"))?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = format!("/proc/{}/status", self.pid());
        proc_field(&status, "VmHWM").and_then(|v| kib(&v))
    }

    /// CPU time the server has used so far (user + system, all threads).
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.cpu_split().map(|(user, system)| user + system)
    }

    /// CPU time so far, in user space and in the kernel apart, in seconds.
    /// Counted in clock ticks (10 ms here), so a short run's split is rough.
    pub fn cpu_split(&self) -> Option<(f64, f64)> {
        cpu_split_of(self.pid())
    }

    /// If the server has exited: how, and the end of what it wrote to stderr.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let last = match &self.stderr {
            Stderr::Tail(tail) => last_line(tail),
            Stderr::Log(path) => last_line_of_file(path),
        };
        Some(match last {
            Some(line) => format!("server exited ({status}): {line}"),
            None => format!("server exited ({status})"),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has used so far, in user space and in the kernel
/// apart, in seconds.
pub fn cpu_split_of(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start
    // with the state, field 3; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let per_second = sysconf(SysconfVar::CLK_TCK).ok()?? as f64;
    Some((tick(11)? as f64 / per_second, tick(12)? as f64 / per_second))
}

/// Process `pid`'s resident memory now (VmRSS), in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    proc_field(&format!("/proc/{pid}/status"), "VmRSS").and_then(|v| kib(&v))
}

/// How many descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Whether process `pid` is still running: it exists and is not a zombie
/// waiting to be reaped.
pub fn process_up(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// A server's arguments: quiet, its own `flags`, loopback, a port the
/// kernel picks.
pub fn server_args<'a>(flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["-q"];
    args.extend_from_slice(flags);
    args.push("127.0.0.1:0");
    args
}

/// The end of what a child wrote to a pipe.
type Tail = Arc<Mutex<Vec<u8>>>;

/// Its last non-empty line.
fn last_line(tail: &Tail) -> Option<String> {
    let bytes = tail.lock().unwrap();
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}

/// The last non-empty line of a log file, read from its last few kilobytes.
fn last_line_of_file(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(STDERR_KEPT as u64)))
        .ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::to_string)
}

/// How many lines a log file holds.
pub fn count_lines(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut lines = 0;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(lines);
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = buf.len();
        reader.consume(n);
    }
}

/// Collect a pipe on a thread, keeping only its last few kilobytes.
fn keep_tail(mut pipe: impl Read + Send + 'static) -> Tail {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut bytes = sink.lock().unwrap();
            bytes.extend_from_slice(&buf[..n]);
            if bytes.len() > 2 * STDERR_KEPT {
                let cut = bytes.len() - STDERR_KEPT;
                bytes.drain(..cut);
            }
        }
    });
    kept
}

/// What a tester run gave back.
pub struct TesterRun {
    /// Its `--json` object, when it printed one.
    pub json: Option<Value>,
    /// Why the run failed: a non-zero exit, no JSON, or overrunning `limit`.
    pub error: Option<String>,
}

/// Run `tester ARGS` on `cpu`, stopping it (SIGKILL to its PID) after `limit`.
pub fn run_tester(
    tester: &Path,
    args: &[String],
    limit: Duration,
    cpu: Option<usize>,
) -> Result<TesterRun> {
    let mut command = Command::new(tester);
    pin(&mut command, cpu);
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", tester.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let stderr = keep_tail(child.stderr.take().expect("piped stderr"));
    let (done, output) = mpsc::channel();
    thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = done.send(text);
    });
    let (text, overran) = match output.recv_timeout(limit) {
        Ok(text) => (text, false),
        Err(_) => {
            let _ = child.kill();
            (String::new(), true)
        }
    };
    let status = child.wait().context("cannot wait for the tester")?;
    let json: Option<Value> = serde_json::from_str(text.trim()).ok();
    let error = if overran {
        Some(format!(
            "tester overran {}s and was stopped",
            limit.as_secs()
        ))
    } else if !status.success() || json.is_none() {
        let why = last_line(&stderr);
        let faults = json
            .as_ref()
            .and_then(|j| j.get("faults"))
            .filter(|f| f.as_array().is_some_and(|a| !a.is_empty()))
            .map(|f| format!(" faults: {f}"));
        Some(format!(
            "tester {status}{}{}",
            why.map(|w| format!(": {w}")).unwrap_or_default(),
            faults.unwrap_or_default()
        ))
    } else {
        None
    };
    Ok(TesterRun { json, error })
}
