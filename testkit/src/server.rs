//! A server under test: started, its `listening on` line read, its log
//! collected, its state read from `/proc`, and killed when dropped.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::sock_diag::{TCP_ESTABLISHED, tcp_state};
use crate::words::duration;
use crate::{Client, TIMEOUT};

/// What a child wrote to stderr, shared with the thread that collects it.
#[derive(Default)]
struct LogState {
    text: String,
    /// The child closed its stderr (it exited): `text` is complete.
    closed: bool,
}

type LogText = Arc<(Mutex<LogState>, Condvar)>;

/// Whether a test reads the server's stderr.
enum Log {
    Read,
    Unread,
}

/// A running server, killed (and reaped) when dropped.
pub struct Server {
    child: Child,
    /// The address from its `listening on` line.
    pub addr: SocketAddr,
    stderr: LogText,
}

impl Server {
    /// Start `bin` with `args` and wait for its `listening on` line.
    pub fn start(bin: impl Into<PathBuf>, args: &[&str]) -> Server {
        let mut cmd = Command::new(bin.into());
        cmd.args(args);
        Server::spawn(cmd)
    }

    /// Start a prepared command (for tests that set limits with `pre_exec`).
    pub fn spawn(cmd: Command) -> Server {
        Server::spawn_with(cmd, Log::Read)
    }

    /// Start `bin` with `args` writing its log into a pipe that nobody
    /// reads: the pipe's read end is closed at once, so every write to
    /// stderr fails with `EPIPE`. [`Server::stderr`] is then always empty.
    pub fn start_log_unread(bin: impl Into<PathBuf>, args: &[&str]) -> Server {
        let mut cmd = Command::new(bin.into());
        cmd.args(args);
        Server::spawn_with(cmd, Log::Unread)
    }

    fn spawn_with(mut cmd: Command, log: Log) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = match log {
            Log::Read => collect(stderr_pipe),
            Log::Unread => {
                drop(stderr_pipe); // the only read end: writes now fail with EPIPE
                let text: LogText = Arc::default();
                text.0.lock().unwrap().closed = true;
                text
            }
        };

        // Read stdout on a thread so a silent server cannot hang the test;
        // the thread keeps draining stdout so the server never blocks on it.
        let (first_line, line) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            for _ in lines {}
        });
        let line = match line.recv_timeout(TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.0.lock().unwrap().text.clone();
                panic!("server printed no `listening on` line ({other:?}); stderr:\n{err}");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| panic!("first line is not `listening on IP:PORT`: {line:?}"));
        Server {
            child,
            addr,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connect a new client to the server.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Connect a new client that its failures call `name` ("client 2 of 300").
    pub fn connect_named(&self, name: impl Into<String>) -> Client {
        Client::connect_named(self.addr, name)
    }

    /// Everything the server has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.0.lock().unwrap().text.clone()
    }

    /// Kill the server and return all it wrote to stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.whole_stderr()
    }

    /// All the server wrote to stderr, once it has exited.
    fn whole_stderr(&self) -> String {
        let (log, changed) = &*self.stderr;
        let log = log.lock().unwrap();
        let (log, _) = changed
            .wait_timeout_while(log, TIMEOUT, |l| !l.closed)
            .unwrap();
        log.text.clone()
    }

    /// Wait until stderr contains `needle`; panics after [`TIMEOUT`].
    pub fn wait_stderr(&self, needle: &str) {
        self.wait_log(&format!("{needle:?}"), |log| log.contains(needle));
    }

    /// Wait until what the server wrote to stderr satisfies `done` (`what`
    /// describes it for the failure message); panics after [`TIMEOUT`].
    pub fn wait_log(&self, what: &str, done: impl Fn(&str) -> bool) {
        let (text, changed) = &*self.stderr;
        let log = text.lock().unwrap();
        let (log, timeout) = changed
            .wait_timeout_while(log, TIMEOUT, |l| !done(&l.text))
            .unwrap();
        // Released before a failure, so the panic does not poison the log.
        let (timed_out, text) = (timeout.timed_out(), log.text.clone());
        drop(log);
        assert!(
            !timed_out,
            "waited {} for the server to log {what}, in vain; its stderr:\n{text}",
            duration(TIMEOUT)
        );
    }

    /// Panic (with its stderr) if the server has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "the server exited ({status}) while the test still needed it; its stderr:\n{}",
                self.whole_stderr()
            );
        }
    }

    /// Stop the server with `SIGSTOP` and wait until it is stopped (state
    /// `T` in `/proc/PID/stat`): from then on it runs no code until `SIGCONT`.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        wait_until("the server is stopped", || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
            stat[stat.rfind(')').unwrap() + 2..].starts_with('T')
        });
    }

    /// Send a signal (for example `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    /// Wait for the server to exit; panics after [`TIMEOUT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child)
    }

    /// The number of descriptors the server has open (`/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        self.fds().len()
    }

    /// The descriptors the server has open, lowest first (`/proc/PID/fd`).
    pub fn fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort();
        fds
    }

    /// The server's epoll interest list as (fd, event mask) pairs, from the
    /// `tfd:` lines of `/proc/PID/fdinfo/N` for its epoll descriptor.
    pub fn epoll_interest(&self) -> Vec<(i32, u32)> {
        let pid = self.pid();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("read /proc/PID/fd") {
            let entry = entry.unwrap();
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            if target.to_string_lossy() != "anon_inode:[eventpoll]" {
                continue;
            }
            let fd = entry.file_name().to_string_lossy().into_owned();
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
            // tfd:        5 events: 80002019 data: ...
            let mut watched: Vec<(i32, u32)> = info
                .lines()
                .filter_map(|l| {
                    let mut words = l.strip_prefix("tfd:")?.split_whitespace();
                    let fd = words.next()?.parse().ok()?;
                    let events = u32::from_str_radix(words.nth(1)?, 16).ok()?;
                    Some((fd, events))
                })
                .collect();
            watched.sort();
            return watched;
        }
        panic!("server {pid} has no epoll descriptor");
    }

    /// The fd the server logged (`accepted fd N from PEER`) for `client`.
    pub fn fd_of(&self, client: &Client) -> i32 {
        let peer = client.stream.local_addr().unwrap();
        let needle = format!("from {peer}\n");
        self.wait_log(
            &format!("`accepted fd N from {peer}` for {}", client.name()),
            |log| log.contains(&needle),
        );
        let log = self.stderr();
        let line = log
            .lines()
            .find(|l| l.ends_with(&format!("from {peer}")))
            .unwrap();
        line.split(' ').nth(2).unwrap().parse().unwrap()
    }

    /// The server's user + system CPU time so far, from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which may hold spaces) start at field 3.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The `write` and `writev` calls the server has made (`syscw` in
    /// `/proc/PID/io`; `send`, `sendto` and `sendmsg` are not counted).
    pub fn write_calls(&self) -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap();
        let line = io.lines().find(|l| l.starts_with("syscw:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Whether the server's side of `client`'s connection has left
    /// `ESTABLISHED`: it has sent its end-of-file (`shutdown` or `close`)
    /// or reset the connection (asked of the kernel with `sock_diag`).
    pub fn has_ended_its_side(&self, client: &Client) -> bool {
        // A connection the server reset has no peer any more: its side has
        // ended (`getpeername` fails with ENOTCONN).
        let (Ok(server_side), Ok(client_side)) =
            (client.stream.peer_addr(), client.stream.local_addr())
        else {
            return true;
        };
        tcp_state(server_side, client_side) != Some(TCP_ESTABLISHED)
    }

    /// How long the server's threads have been runnable so far: on a CPU or
    /// waiting for one (the first two fields of `/proc/PID/task/*/schedstat`).
    pub fn runnable_time(&self) -> Duration {
        let tasks =
            std::fs::read_dir(format!("/proc/{}/task", self.pid())).expect("read /proc/PID/task");
        let nanos: u64 = tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
            .map(|stat| {
                let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap());
                fields.next().unwrap() + fields.next().unwrap()
            })
            .sum();
        Duration::from_nanos(nanos)
    }

    /// Assert that the server sleeps while it has nothing to do: over half a
    /// second it is runnable (on a CPU or waiting for one) less than
    /// `max_share` of the time. A server that spins (an `epoll_wait` that
    /// returns at once, again and again) is runnable the whole time, whether
    /// a busy machine gives it a CPU or keeps it waiting for one. A server
    /// that wakes on a timer (to retry `accept`, say) is runnable a little
    /// after each wake-up, longer the busier the machine: its bound is
    /// higher, below the spinner's 100%.
    pub fn assert_sleeps(&self, while_what: &str, max_share: f64) {
        let (busy, window) = self.runnable_over_half_a_second();
        assert!(
            busy < window.mul_f64(max_share),
            "the server spins {while_what}: runnable {busy:?} of {window:?}"
        );
    }

    /// How long the server was runnable over about half a second, and how
    /// long that window really was: `(busy, window)`.
    pub fn runnable_over_half_a_second(&self) -> (Duration, Duration) {
        let (start, runnable) = (Instant::now(), self.runnable_time());
        // A measuring window, not a synchronisation: nothing happens in it.
        thread::sleep(Duration::from_millis(500));
        let busy = self.runnable_time().saturating_sub(runnable);
        (busy, start.elapsed())
    }

    /// The server's resident set size in bytes (`VmRSS` in `/proc/PID/status`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for `child` to exit; panics after [`TIMEOUT`].
pub fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let mut status = None;
    wait_until("the process exits", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    status.unwrap()
}

/// Wait until `condition` holds, checking every few milliseconds; panics
/// after [`TIMEOUT`]. For state that can only be polled, such as `/proc`.
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    assert!(
        holds_within_timeout(condition),
        "timed out after {} waiting until {what}",
        duration(TIMEOUT)
    );
}

/// Whether `condition` comes to hold within [`TIMEOUT`], checking every few
/// milliseconds: for a test that says itself what a failure means.
pub fn holds_within_timeout(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5)); // polling /proc, which has no notification
    }
    true
}

/// Collect a child's stderr on a thread, waking waiters on every chunk.
fn collect(mut pipe: impl Read + Send + 'static) -> LogText {
    let log: LogText = Arc::default();
    let shared = Arc::clone(&log);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A character split across two reads waits here for its end.
        let mut pending = Vec::new();
        let (state, changed) = &*shared;
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            pending.extend_from_slice(&buf[..n]);
            decode(&mut pending, &mut state.lock().unwrap().text);
            changed.notify_all();
        }
        let mut state = state.lock().unwrap();
        state.text.push_str(&String::from_utf8_lossy(&pending));
        state.closed = true;
        changed.notify_all();
    });
    log
}

/// Move what `bytes` holds of whole characters onto `text`, with U+FFFD for
/// bytes that are not UTF-8; an incomplete character at the end stays in
/// `bytes`, for the next read to complete.
fn decode(bytes: &mut Vec<u8>, text: &mut String) {
    let mut start = 0;
    while start < bytes.len() {
        match std::str::from_utf8(&bytes[start..]) {
            Ok(whole) => {
                text.push_str(whole);
                start = bytes.len();
            }
            Err(e) => {
                let valid = start + e.valid_up_to();
                // The prefix up to `valid` is UTF-8, so nothing is replaced.
                text.push_str(&String::from_utf8_lossy(&bytes[start..valid]));
                start = valid;
                let Some(invalid) = e.error_len() else {
                    break;
                };
                text.push(char::REPLACEMENT_CHARACTER);
                start += invalid;
            }
        }
    }
    bytes.drain(..start);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_two_reads_is_kept_whole() {
        let (mut bytes, mut text) = (Vec::new(), String::new());
        let word = "délai – 10 s ✓".as_bytes();
        // Every split point, the middle of a character among them.
        for at in 0..=word.len() {
            bytes.extend_from_slice(&word[..at]);
            decode(&mut bytes, &mut text);
            bytes.extend_from_slice(&word[at..]);
            decode(&mut bytes, &mut text);
            assert_eq!(text, "délai – 10 s ✓", "split at byte {at}");
            assert!(bytes.is_empty());
            text.clear();
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let (mut bytes, mut text) = (b"a\xffb\xe2\x9c".to_vec(), String::new());
        decode(&mut bytes, &mut text);
        assert_eq!(text, "a\u{FFFD}b");
        assert_eq!(bytes, b"\xe2\x9c", "the start of a character waits");
        bytes.extend_from_slice(b"x");
        decode(&mut bytes, &mut text);
        assert_eq!(text, "a\u{FFFD}b\u{FFFD}x");
    }

    #[test]
    fn the_collected_log_has_every_character_of_a_slow_writer() {
        // A reader that hands out one byte per read splits every character.
        struct ByteByByte(&'static [u8]);
        impl Read for ByteByByte {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = first;
                self.0 = rest;
                Ok(1)
            }
        }
        let log = collect(ByteByByte("accepted «ü» ✓\n".as_bytes()));
        let (state, changed) = &*log;
        let state = changed
            .wait_timeout_while(state.lock().unwrap(), TIMEOUT, |s| !s.closed)
            .unwrap()
            .0;
        assert!(state.closed, "the collector did not finish");
        assert_eq!(state.text, "accepted «ü» ✓\n");
    }
}
