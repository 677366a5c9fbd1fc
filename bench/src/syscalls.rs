//! System calls a server makes during a run, counted by `perf stat` on the
//! `raw_syscalls:sys_enter` tracepoint, attached to the server's PID for
//! the tester's run. Every call counts once, whatever it is: an
//! `io_uring_enter` is one call, however many operations it submits.
//!
//! `perf` is not something a reader must have: where it is missing, or
//! cannot attach (no permission, no tracepoint), the figure is absent and
//! the reason recorded; the run itself never fails for it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where Debian installs perf (`linux-perf`).
pub const PERF: &str = "/usr/bin/perf";
const EVENT: &str = "raw_syscalls:sys_enter";
/// perf prints the calls counted in each interval. Its total at the end of
/// an attached run reads `<not counted>` on this machine (perf 6.1, Linux
/// 6.18) while the intervals count, so the figure is their sum; the first
/// interval's line is also the sign that counting has begun.
const INTERVAL_MS: u32 = 100;
/// How long perf may take to attach and print its first interval, and to
/// print its last one once told to stop.
const PERF_LIMIT: Duration = Duration::from_secs(5);

/// A `perf stat` attached to one process, counting until `stop`.
pub struct Counter {
    child: Child,
    lines: Receiver<String>,
    /// Interval lines read so far (the first, read while waiting for it).
    seen: Vec<String>,
}

impl Counter {
    /// Attach to `pid` and return once perf is counting (its first interval
    /// line arrived), or say why it cannot.
    pub fn attach(pid: u32) -> Result<Counter, String> {
        if !Path::new(PERF).is_file() {
            return Err(format!("{PERF} is not installed"));
        }
        let mut child = Command::new(PERF)
            .args(["stat", "-e", EVENT, "-x", ",", "-I"])
            .arg(INTERVAL_MS.to_string())
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {PERF}: {e}"))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        // Drains perf's stderr for as long as it runs, so it never blocks.
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut counter = Counter {
            child,
            lines,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + PERF_LIMIT;
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match counter.lines.recv_timeout(left) {
                Ok(line) if interval_count(&line).is_some() => {
                    counter.seen.push(line);
                    return Ok(counter);
                }
                Ok(line) => other.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    counter.end();
                    return Err(format!("perf printed no count within {PERF_LIMIT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    counter.end();
                    let said = other.join(" ").trim().to_string();
                    return Err(format!("perf could not count: {said}"));
                }
            }
        }
    }

    /// Stop counting (SIGINT makes perf print the last, partial interval)
    /// and return the calls counted since `attach`.
    pub fn stop(mut self) -> Result<u64, String> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let deadline = Instant::now() + PERF_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.end();
                    return Err(format!("perf did not stop within {PERF_LIMIT:?}"));
                }
            }
        }
        let _ = self.child.wait();
        let mut total = 0;
        for line in &self.seen {
            match interval_count(line) {
                Some(Ok(n)) => total += n,
                Some(Err(what)) => return Err(format!("perf: {EVENT} {what}")),
                None => {}
            }
        }
        Ok(total)
    }

    /// Kill perf (our own child, by its PID) and reap it.
    fn end(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The count in one interval line of `perf stat -x, -I`
/// (`TIME,COUNT,UNIT,EVENT,...`): None for another line, an error for a
/// counter perf cannot read. `<not counted>` is an interval in which the
/// process never ran: no calls.
fn interval_count(line: &str) -> Option<Result<u64, String>> {
    let fields: Vec<&str> = line.trim().split(',').collect();
    if fields.len() < 4 || fields[3] != EVENT || fields[0].parse::<f64>().is_err() {
        return None;
    }
    Some(match fields[1] {
        "<not counted>" => Ok(0),
        "<not supported>" => Err("is not supported here".into()),
        n => n.parse().map_err(|_| format!("gave {n:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_lines_are_read_and_others_skipped() {
        let line = "     0.200280937,183,,raw_syscalls:sys_enter,1610600,100.00,,";
        assert_eq!(interval_count(line), Some(Ok(183)));
        let idle = "0.1,<not counted>,,raw_syscalls:sys_enter,0,100.00,,";
        assert_eq!(interval_count(idle), Some(Ok(0)));
        let missing = "0.1,<not supported>,,raw_syscalls:sys_enter,0,100.00,,";
        assert!(matches!(interval_count(missing), Some(Err(_))));
        assert_eq!(interval_count("# started on Tue Dec  8 2026"), None);
        assert_eq!(interval_count(""), None);
    }
}
