//! Test support for the workbook's exercise checks.
//!
//! Every stage's tests start the real binary, read its `listening on` line,
//! talk to it over loopback and kill it when the test ends. Every wait here
//! has a timeout, so a broken server fails a test instead of hanging it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod conventions;
pub mod faults;
pub mod redis;

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The binary under test: the path in `$var` when it is set (a reader's own
/// implementation), otherwise the workspace's own build (`default`, which a
/// test passes as `env!("CARGO_BIN_EXE_<name>")`).
///
/// A path from `$var` is announced once per test binary; one that cannot be
/// run ends the test binary with one line, instead of every test failing.
pub fn bin(var: &str, default: &str) -> PathBuf {
    from_var(var).unwrap_or_else(|| PathBuf::from(default))
}

/// Another workspace crate's binary (for tests that drive one stage with
/// another, like the tester against the servers), or `$var` when set.
/// Cargo passes `CARGO_BIN_EXE_*` only for a package's own binaries, so this
/// looks beside the test executable: `cargo test --workspace` builds every
/// binary before it runs any test.
pub fn workspace_bin(var: &str, name: &str) -> PathBuf {
    if let Some(path) = from_var(var) {
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The workspace's root folder, from which a relative path in a variable is
/// read: cargo runs each test in its own crate's folder, and a reader types
/// the path from wherever they ran `cargo test`, most often the root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is a folder of the workspace")
}

/// The binary named by `$var`, announced on its first use, or `None` when
/// `$var` is unset or empty. A binary that cannot be run ends the process.
fn from_var(var: &str) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os(var).filter(|v| !v.is_empty())?);
    let root = workspace_root();
    let path = resolve(&value, root);
    // Held while the line is written (and while exiting), so the tests that
    // start at once print one line between them.
    static ANNOUNCED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut announced = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
    if !announced.iter().any(|v| v == var) {
        // Straight to the descriptor: libtest captures `eprint!` per test
        // and shows it only for a failure, and this line is for the whole run.
        let mut stderr = io::stderr();
        if let Some(error) = unrunnable(var, &value, &path, root) {
            let _ = stderr.write_all(format!("error: {error}\n").as_bytes());
            std::process::exit(1);
        }
        let line = format!("testing {} (from {var})\n", path.display());
        let _ = stderr.write_all(line.as_bytes());
        announced.push(var.to_string());
    }
    Some(path)
}

/// `value` read from `root` when it is relative, without `.` components.
fn resolve(value: &Path, root: &Path) -> PathBuf {
    root.join(value).components().collect()
}

/// Why `path` (given as `$var=value`) cannot be run, in a sentence, or
/// `None` when it is an executable file.
fn unrunnable(var: &str, value: &Path, path: &Path, root: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let whence = if value.is_relative() {
                format!(" (relative paths are read from {})", root.display())
            } else {
                String::new()
            };
            format!("no such file{whence}")
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
        Ok(meta) if meta.is_dir() => format!("{} is a directory, not a program", path.display()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            format!("not executable (chmod +x {})", path.display())
        }
        Ok(_) => return None,
    };
    Some(format!("{var}={}: {problem}", value.display()))
}

/// The event flags, in the order a reader thinks of them: direction, mode,
/// then the conditions. `EPOLLERR` and `EPOLLHUP` are in every mask
/// `/proc` shows: the kernel adds them to each registration.
const EPOLL_FLAGS: [(libc::c_int, &str); 15] = [
    (libc::EPOLLIN, "EPOLLIN"),
    (libc::EPOLLOUT, "EPOLLOUT"),
    (libc::EPOLLET, "EPOLLET"),
    (libc::EPOLLONESHOT, "EPOLLONESHOT"),
    (libc::EPOLLEXCLUSIVE, "EPOLLEXCLUSIVE"),
    (libc::EPOLLWAKEUP, "EPOLLWAKEUP"),
    (libc::EPOLLRDHUP, "EPOLLRDHUP"),
    (libc::EPOLLPRI, "EPOLLPRI"),
    (libc::EPOLLERR, "EPOLLERR"),
    (libc::EPOLLHUP, "EPOLLHUP"),
    (libc::EPOLLRDNORM, "EPOLLRDNORM"),
    (libc::EPOLLRDBAND, "EPOLLRDBAND"),
    (libc::EPOLLWRNORM, "EPOLLWRNORM"),
    (libc::EPOLLWRBAND, "EPOLLWRBAND"),
    (libc::EPOLLMSG, "EPOLLMSG"),
];

/// An epoll event mask by its flags' names (`EPOLLIN|EPOLLET|EPOLLRDHUP`),
/// any bits without a name last, in hex; `0` for no flag at all.
pub fn epoll_flags(mask: u32) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut rest = mask;
    for (flag, name) in EPOLL_FLAGS {
        let flag = flag as u32;
        if mask & flag != 0 {
            names.push(name.to_string());
            rest &= !flag;
        }
    }
    if rest != 0 {
        names.push(format!("{rest:#x}"));
    }
    if names.is_empty() {
        return "0".to_string();
    }
    names.join("|")
}

/// An interest list (from [`Server::epoll_interest`]) in words:
/// `fd 3 EPOLLIN|EPOLLERR|EPOLLHUP, fd 5 ...`, or `empty`.
pub fn interest_list(interest: &[(i32, u32)]) -> String {
    if interest.is_empty() {
        return "empty".to_string();
    }
    let entries: Vec<String> = interest
        .iter()
        .map(|&(fd, events)| format!("fd {fd} {}", epoll_flags(events)))
        .collect();
    entries.join(", ")
}

/// A fresh TCP socket, neither bound nor connected: a descriptor for
/// tests of data structures that own one per client.
pub fn tcp_socket() -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket(2)")
}

/// A port on loopback where nothing listens (bound once, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe listener");
    listener.local_addr().expect("probe address").port()
}

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
    /// or reset the connection (from `/proc/net/tcp` and `tcp6`).
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
        let (start, runnable) = (Instant::now(), self.runnable_time());
        // A measuring window, not a synchronisation: nothing happens in it.
        thread::sleep(Duration::from_millis(500));
        let busy = self.runnable_time().saturating_sub(runnable);
        let window = start.elapsed();
        assert!(
            busy < window.mul_f64(max_share),
            "the server spins {while_what}: runnable {busy:?} of {window:?}"
        );
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
        let (state, changed) = &*shared;
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            state.lock().unwrap().text.push_str(&text);
            changed.notify_all();
        }
        state.lock().unwrap().closed = true;
        changed.notify_all();
    });
    log
}

/// A test client over loopback: every read has a timeout.
///
/// Its failures name it ("the client", or the name a test gives it with
/// [`Client::named`]) and say what it waited for, how long, and what came.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    name: String,
}

/// What a client waited for and did not get, in words: which client, what
/// it expected, within what time, and what arrived instead.
#[derive(Debug)]
pub struct ReadFailure(String);

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadFailure {}

/// What a read was waiting for.
enum Wanted<'a> {
    Bytes(usize),
    Echo(&'a [u8]),
    Line,
    Eof,
}

/// How a read that fell short ended.
enum End {
    /// Nothing came for the read timeout.
    Quiet,
    /// The server closed the connection (end-of-file).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Any other error, as the system says it.
    Error(io::Error),
}

impl End {
    fn of(error: io::Error) -> End {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Quiet,
            io::ErrorKind::ConnectionReset => End::Reset,
            _ => End::Error(error),
        }
    }

    /// What happened, as a clause of its own.
    fn what(&self) -> String {
        match self {
            End::Quiet => format!("nothing came for {}", duration(TIMEOUT)),
            End::Closed => "the server closed the connection".to_string(),
            End::Reset => "the server reset the connection (ECONNRESET)".to_string(),
            End::Error(e) => format!("reading failed: {e}"),
        }
    }

    /// The end of a sentence that starts with what arrived (`got` bytes).
    fn words(&self, got: usize) -> String {
        match self {
            End::Quiet if got == 0 => format!(" within {}", duration(TIMEOUT)),
            End::Quiet => format!(", then nothing more for {}", duration(TIMEOUT)),
            _ if got == 0 => format!(": {}", self.what()),
            _ => format!(", then {}", self.what()),
        }
    }
}

/// A duration as a reader says it: `10 s`, `300 ms`.
pub fn duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// A count with thousands separators: `1,048,576`.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `n bytes`, or `1 byte`.
pub(crate) fn bytes(n: usize) -> String {
    if n == 1 {
        "1 byte".to_string()
    } else {
        format!("{} bytes", count(n))
    }
}

/// Bytes as text with escapes (`"pin"`, `"\xff\n"`), the last few of a long run.
fn shown(data: &[u8]) -> String {
    const MAX: usize = 40;
    if data.len() <= MAX {
        format!("\"{}\"", data.escape_ascii())
    } else {
        let tail = &data[data.len() - MAX..];
        format!("\"...{}\"", tail.escape_ascii())
    }
}

/// What a write error means for the client that got it.
fn send_words(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "nothing drained for {}: is the server reading?",
            duration(TIMEOUT)
        ),
        io::ErrorKind::BrokenPipe => "the server closed the connection (EPIPE)".to_string(),
        io::ErrorKind::ConnectionReset => {
            "the server reset the connection (ECONNRESET)".to_string()
        }
        _ => error.to_string(),
    }
}

impl Client {
    /// Connect to `addr` as "the client".
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_named(addr, "the client")
    }

    /// Connect to `addr` as `name` ("client 2 of 300"), which its failures,
    /// the connect's among them, name.
    pub fn connect_named(addr: SocketAddr, name: impl Into<String>) -> Client {
        let name = name.into();
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap_or_else(|e| {
            let why = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                    "no answer within {}: is the accept queue full?",
                    duration(TIMEOUT)
                ),
                _ => e.to_string(),
            };
            panic!("{name} cannot connect to {addr}: {why}")
        });
        Client::from_stream(stream).named(name)
    }

    /// Connect with a small receive buffer (set before `connect`, so the
    /// window is small from the handshake on): the server's writes to this
    /// client hit `EAGAIN` after a few kilobytes.
    pub fn connect_small_window(addr: SocketAddr) -> Client {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket,
            sockopt,
        };
        use std::os::fd::AsRawFd;
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
        connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))
            .unwrap_or_else(|e| panic!("the client cannot connect to {addr}: {e}"));
        Client::from_stream(TcpStream::from(fd))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client {
            stream,
            reader,
            name: "the client".to_string(),
        }
    }

    /// The same client under a name for its failure messages
    /// (`client 2 of 300`, `the reader`).
    pub fn named(mut self, name: impl Into<String>) -> Client {
        self.name = name.into();
        self
    }

    /// The name its failure messages use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Write all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!(
                "{} could not send {}: {}",
                self.name,
                self::bytes(bytes.len()),
                send_words(&e)
            );
        }
    }

    /// A read that fell short, in words.
    fn failure(&self, wanted: Wanted, got: &[u8], end: End) -> ReadFailure {
        let name = &self.name;
        let ending = end.words(got.len());
        ReadFailure(match wanted {
            Wanted::Bytes(n) if got.is_empty() => {
                format!("{name} got none of the {} it waited for{ending}", bytes(n))
            }
            Wanted::Bytes(n) => format!(
                "{name} got {} of {} ({}){ending}",
                count(got.len()),
                bytes(n),
                shown(got)
            ),
            Wanted::Echo(sent) if got.is_empty() && sent.len() <= 40 => {
                format!("{name} got no echo of {}{ending}", shown(sent))
            }
            Wanted::Echo(sent) if got.is_empty() => {
                format!("{name} got no echo of its {}{ending}", bytes(sent.len()))
            }
            Wanted::Echo(sent) => format!(
                "{name} got {} of {} back{ending}",
                count(got.len()),
                bytes(sent.len())
            ),
            Wanted::Line if got.is_empty() => format!("{name} got no line{ending}"),
            Wanted::Line => format!("{name} got {} but no end of line{ending}", shown(got)),
            Wanted::Eof => match end {
                End::Quiet => format!(
                    "{name} waited {} for the server to close the connection, and it is still \
                     open ({} arrived meanwhile)",
                    duration(TIMEOUT),
                    bytes(got.len())
                ),
                _ => format!(
                    "{name} waited for the server to close the connection, got {}{ending}",
                    bytes(got.len())
                ),
            },
        })
    }

    /// Read exactly `n` bytes, or return what came and how the read ended.
    fn read_n(&mut self, n: usize) -> Result<Vec<u8>, (Vec<u8>, End)> {
        let mut buf = vec![0; n];
        let mut got = 0;
        while got < n {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => return Err((buf[..got].to_vec(), End::Closed)),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((buf[..got].to_vec(), End::of(e))),
            }
        }
        Ok(buf)
    }

    /// Read exactly `n` bytes, or say what came instead within the timeout.
    pub fn try_recv_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadFailure> {
        self.read_n(n)
            .map_err(|(got, end)| self.failure(Wanted::Bytes(n), &got, end))
    }

    /// Read exactly `n` bytes, or fail after the timeout.
    pub fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        self.try_recv_exact(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Read back `sent`, the echo of what this client sent: the failure
    /// says how much came back, or from which byte on it differs.
    pub fn try_recv_echo(&mut self, sent: &[u8]) -> Result<(), ReadFailure> {
        let got = self
            .read_n(sent.len())
            .map_err(|(got, end)| self.failure(Wanted::Echo(sent), &got, end))?;
        match got.iter().zip(sent).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(at) => {
                let upto = (at + 16).min(sent.len());
                Err(ReadFailure(format!(
                    "{} got {} back, but from byte {} on they differ from what it sent: \
                     sent {}, got {}",
                    self.name,
                    bytes(sent.len()),
                    count(at),
                    shown(&sent[at..upto]),
                    shown(&got[at..upto])
                )))
            }
        }
    }

    /// Read back `sent`, or fail saying how much came back.
    pub fn recv_echo(&mut self, sent: &[u8]) {
        self.try_recv_echo(sent).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Read one line (without its `\n`), or say what came instead.
    /// A last line without `\n` before end-of-file counts as a line.
    pub fn try_recv_line(&mut self) -> Result<String, ReadFailure> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => Err(self.failure(Wanted::Line, &line, End::Closed)),
            Ok(_) => match String::from_utf8(line) {
                Ok(text) => Ok(text.trim_end_matches('\n').to_string()),
                Err(e) => Err(ReadFailure(format!(
                    "{} got a line that is not UTF-8: {}",
                    self.name,
                    shown(e.as_bytes())
                ))),
            },
            Err(e) => Err(self.failure(Wanted::Line, &line, End::of(e))),
        }
    }

    /// Read one line (without its `\n`), or fail after the timeout.
    pub fn recv_line(&mut self) -> String {
        self.try_recv_line().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Read lines until one satisfies `pred`; returns it.
    pub fn recv_line_until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut skipped: Vec<String> = Vec::new();
        let seen = |skipped: &[String]| match skipped {
            [] => "no other line before".to_string(),
            _ => {
                let last = &skipped[skipped.len().saturating_sub(5)..];
                format!("{} other lines before, the last: {last:?}", skipped.len())
            }
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "{} got no line it was waiting for within {} ({})",
                self.name,
                duration(TIMEOUT),
                seen(&skipped)
            );
            match self.try_recv_line() {
                Ok(line) if pred(&line) => return line,
                Ok(line) => skipped.push(line),
                Err(e) => panic!("{e} ({})", seen(&skipped)),
            }
        }
    }

    /// Check that nothing arrives for `wait`, or say what did.
    pub fn try_expect_silence(&mut self, wait: Duration) -> Result<(), ReadFailure> {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let got = self.reader.read(&mut byte);
        self.reader
            .get_ref()
            .set_read_timeout(Some(TIMEOUT))
            .unwrap();
        let what = match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Ok(0) => "the server closed the connection".to_string(),
            Ok(_) => format!("{} arrived", shown(&byte)),
            Err(e) => End::of(e).what(),
        };
        Err(ReadFailure(format!(
            "{} expected nothing for {}, but {what}",
            self.name,
            duration(wait)
        )))
    }

    /// Assert that nothing arrives for `wait`: the server must stay silent.
    pub fn expect_silence(&mut self, wait: Duration) {
        self.try_expect_silence(wait)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Read until the server closes the connection (end-of-file, or a
    /// reset: a server that closes with unread input sends one); returns
    /// what came first, or says what came and that the connection is open.
    pub fn try_recv_to_eof(&mut self) -> Result<Vec<u8>, ReadFailure> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => Ok(rest),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(rest),
            Err(e) => Err(self.failure(Wanted::Eof, &rest, End::of(e))),
        }
    }

    /// Read until the server closes the connection; returns what came first.
    pub fn recv_to_eof(&mut self) -> Vec<u8> {
        self.try_recv_to_eof().unwrap_or_else(|e| panic!("{e}"))
    }

    /// TCP segments with data that this connection has received
    /// (`tcpi_data_segs_in` of `TCP_INFO`): one per `write` of the peer's,
    /// at least, when the peer sends with `TCP_NODELAY`.
    pub fn segments_received(&self) -> u32 {
        self.tcp_info().tcpi_data_segs_in
    }

    /// The window the peer's kernel last offered: how much more it takes
    /// before it waits for the peer to read (`tcpi_snd_wnd`).
    pub fn send_window(&self) -> usize {
        self.tcp_info().tcpi_snd_wnd as usize
    }

    /// Whether every byte written so far is in the peer's kernel: sent and
    /// acknowledged, nothing left in our socket.
    pub fn all_delivered(&self) -> bool {
        let info = self.tcp_info();
        info.tcpi_unacked == 0 && info.tcpi_notsent_bytes == 0
    }

    /// `getsockopt(TCP_INFO)` on this connection.
    fn tcp_info(&self) -> libc::tcp_info {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero tcp_info is valid (integers only).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which
        // is that large; a kernel older than the struct writes fewer.
        let rc = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info
    }

    /// Close our sending side (`shutdown(SHUT_WR)`): the server reads EOF.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Close with a reset instead of a FIN: `SO_LINGER` with a zero timeout.
    pub fn reset(self) {
        set_linger_zero(&self.stream);
    }
}

/// `TCP_ESTABLISHED` in the `st` column of `/proc/net/tcp`.
const TCP_ESTABLISHED: u8 = 1;

/// The state of the TCP socket bound to `local` and connected to `remote`
/// (`/proc/net/tcp` or `tcp6`), or `None` when there is none.
fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    // Addresses as the kernel prints them: each 32-bit word in host order.
    fn hex(addr: SocketAddr) -> String {
        let ip = match addr.ip() {
            std::net::IpAddr::V4(ip) => u32::from_ne_bytes(ip.octets()).to_be_bytes().to_vec(),
            std::net::IpAddr::V6(ip) => ip
                .octets()
                .chunks(4)
                .flat_map(|w| u32::from_ne_bytes(w.try_into().unwrap()).to_be_bytes())
                .collect(),
        };
        let ip: String = ip.iter().map(|b| format!("{b:02X}")).collect();
        format!("{ip}:{:04X}", addr.port())
    }
    let (local, remote) = (hex(local), hex(remote));
    let table = if local.len() > 13 { "tcp6" } else { "tcp" };
    let text = std::fs::read_to_string(format!("/proc/net/{table}")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(fields[3], 16).ok())
            .flatten()
    })
}

/// Make `close` send a reset (RST) instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream, sockopt::Linger, &linger).expect("SO_LINGER");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_read_from_the_root() {
        let root = Path::new("/work/main");
        assert_eq!(
            resolve(Path::new("target/debug/stage3-epoll"), root),
            Path::new("/work/main/target/debug/stage3-epoll")
        );
        assert_eq!(
            resolve(Path::new("./mine"), root),
            Path::new("/work/main/mine")
        );
        assert_eq!(
            resolve(Path::new("../elsewhere/mine"), root),
            Path::new("/work/main/../elsewhere/mine")
        );
    }

    #[test]
    fn an_absolute_path_is_kept() {
        assert_eq!(
            resolve(Path::new("/opt/./mine"), Path::new("/work/main")),
            Path::new("/opt/mine")
        );
    }

    #[test]
    fn the_root_is_the_folder_above_testkit() {
        assert!(workspace_root().join("testkit/Cargo.toml").is_file());
    }

    /// A fresh folder of this test process's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("testkit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn says_in_one_line_why_a_path_cannot_be_run() {
        use std::os::unix::fs::PermissionsExt;
        let root = scratch("unrunnable");
        let check = |value: &str| {
            let value = Path::new(value);
            unrunnable("STAGE3_BIN", value, &resolve(value, &root), &root)
        };
        let at = root.display();
        assert_eq!(
            check("./mine"),
            Some(format!(
                "STAGE3_BIN=./mine: no such file (relative paths are read from {at})"
            ))
        );
        let missing = root.join("gone");
        assert_eq!(
            check(missing.to_str().unwrap()),
            Some(format!("STAGE3_BIN={}: no such file", missing.display()))
        );
        std::fs::write(root.join("text"), "not a program").unwrap();
        assert_eq!(
            check("text"),
            Some(format!(
                "STAGE3_BIN=text: not executable (chmod +x {at}/text)"
            ))
        );
        std::fs::create_dir(root.join("dir")).unwrap();
        assert_eq!(
            check("dir"),
            Some(format!(
                "STAGE3_BIN=dir: {at}/dir is a directory, not a program"
            ))
        );
        let program = root.join("mine");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check("mine"), None);
        assert_eq!(check(program.to_str().unwrap()), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn names_each_epoll_flag() {
        let (epollin, epollet, epollrdhup) = (
            libc::EPOLLIN as u32,
            libc::EPOLLET as u32,
            libc::EPOLLRDHUP as u32,
        );
        assert_eq!(
            epoll_flags(epollin | epollet | epollrdhup),
            "EPOLLIN|EPOLLET|EPOLLRDHUP"
        );
        // As /proc shows a registration for EPOLLIN|EPOLLET: the kernel
        // adds EPOLLERR and EPOLLHUP.
        assert_eq!(
            epoll_flags(0x8000_0019),
            "EPOLLIN|EPOLLET|EPOLLERR|EPOLLHUP"
        );
        assert_eq!(epoll_flags(libc::EPOLLOUT as u32), "EPOLLOUT");
        assert_eq!(epoll_flags(0), "0");
    }

    #[test]
    fn shows_unknown_epoll_bits_in_hex_last() {
        assert_eq!(epoll_flags(0x0100_0001), "EPOLLIN|0x1000000");
        assert_eq!(epoll_flags(0x0300_0000), "0x3000000");
    }

    #[test]
    fn names_every_flag_libc_has() {
        let all = EPOLL_FLAGS.iter().fold(0u32, |m, &(f, _)| m | f as u32);
        assert!(!epoll_flags(all).contains("0x"), "{}", epoll_flags(all));
    }

    #[test]
    fn words_an_interest_list() {
        assert_eq!(interest_list(&[]), "empty");
        assert_eq!(
            interest_list(&[(3, libc::EPOLLIN as u32), (5, 0x8000_0001)]),
            "fd 3 EPOLLIN, fd 5 EPOLLIN|EPOLLET"
        );
    }

    #[test]
    fn counts_and_durations_read_as_a_person_writes_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(524_288), "524,288");
        assert_eq!(count(1_048_576), "1,048,576");
        assert_eq!(duration(Duration::from_secs(10)), "10 s");
        assert_eq!(duration(Duration::from_millis(300)), "300 ms");
    }

    /// A client named `name` on a loopback connection, and the server's side.
    fn pair(name: &str) -> (Client, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = Client::connect(listener.local_addr().unwrap()).named(name);
        let (server_side, _) = listener.accept().unwrap();
        (client, server_side)
    }

    #[test]
    fn a_short_read_says_which_client_what_it_expected_and_what_came() {
        let (client, _server) = pair("client 2 of 300");
        let cases = [
            (
                client.failure(Wanted::Echo(b"ping\n"), b"", End::Quiet),
                "client 2 of 300 got no echo of \"ping\\n\" within 10 s",
            ),
            (
                client.failure(Wanted::Echo(&[0; 1 << 20]), &[0; 524_288], End::Quiet),
                "client 2 of 300 got 524,288 of 1,048,576 bytes back, then nothing more for 10 s",
            ),
            (
                client.failure(Wanted::Bytes(5), b"pin", End::Closed),
                "client 2 of 300 got 3 of 5 bytes (\"pin\"), then the server closed the connection",
            ),
            (
                client.failure(Wanted::Line, b"", End::Reset),
                "client 2 of 300 got no line: the server reset the connection (ECONNRESET)",
            ),
            (
                client.failure(Wanted::Line, b"* wel", End::Quiet),
                "client 2 of 300 got \"* wel\" but no end of line, then nothing more for 10 s",
            ),
            (
                client.failure(Wanted::Eof, b"ab", End::Quiet),
                "client 2 of 300 waited 10 s for the server to close the connection, and it is \
                 still open (2 bytes arrived meanwhile)",
            ),
        ];
        for (failure, words) in cases {
            assert_eq!(failure.to_string(), words);
            assert!(!words.contains("os error"));
        }
    }

    #[test]
    fn an_echo_that_differs_says_from_where() {
        let (mut client, mut server) = pair("the client");
        server.write_all(b"hellO world").unwrap();
        let failure = client.try_recv_echo(b"hello world").unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the client got 11 bytes back, but from byte 4 on they differ from what it sent: \
             sent \"o world\", got \"O world\""
        );
    }

    #[test]
    fn a_closed_connection_ends_a_read_at_once() {
        let (mut client, server) = pair("the reader");
        drop(server);
        let failure = client.try_recv_exact(5).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the reader got none of the 5 bytes it waited for: the server closed the connection"
        );
        assert!(client.try_recv_to_eof().unwrap().is_empty());
    }

    #[test]
    fn silence_that_breaks_says_what_came() {
        let (mut client, mut server) = pair("B");
        server.write_all(b"h").unwrap();
        let failure = client
            .try_expect_silence(Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(
            failure.to_string(),
            "B expected nothing for 300 ms, but \"h\" arrived"
        );
    }
}
