//! Test support for the workbook's exercise checks.
//!
//! Every stage's tests start the real binary, read its `listening on` line,
//! talk to it over loopback and kill it when the test ends. Every wait here
//! has a timeout, so a broken server fails a test instead of hanging it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
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
pub fn bin(var: &str, default: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(default),
    }
}

/// Another workspace crate's binary (for tests that drive one stage with
/// another, like the tester against the servers), or `$var` when set.
/// Cargo passes `CARGO_BIN_EXE_*` only for a package's own binaries, so this
/// looks beside the test executable: `cargo test --workspace` builds every
/// binary before it runs any test.
pub fn workspace_bin(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
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
        assert!(!timed_out, "server never logged {what}; stderr:\n{text}");
    }

    /// Panic (with its stderr) if the server has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "the server exited ({status}); stderr:\n{}",
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
        self.wait_stderr(&format!("from {peer}\n"));
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
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        thread::sleep(Duration::from_millis(5)); // polling /proc, which has no notification
    }
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
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Client::from_stream(stream)
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
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Client::from_stream(TcpStream::from(fd))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Write all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to server");
    }

    /// Read exactly `n` bytes, or fail after the timeout.
    pub fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("expected {n} bytes: {e}"));
        buf
    }

    /// Read one line (without its `\n`), or fail after the timeout.
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("connection closed while waiting for a line"),
            Ok(_) => line.trim_end_matches('\n').to_string(),
            Err(e) => panic!("expected a line, got {e} (partial: {line:?})"),
        }
    }

    /// Read lines until one satisfies `pred`; returns it.
    pub fn recv_line_until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            assert!(Instant::now() < deadline, "no matching line in time");
            let line = self.recv_line();
            if pred(&line) {
                return line;
            }
        }
    }

    /// Assert that nothing arrives for `wait`: the server must stay silent.
    pub fn expect_silence(&mut self, wait: Duration) {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let got = self.reader.read(&mut byte);
        self.reader
            .get_ref()
            .set_read_timeout(Some(TIMEOUT))
            .unwrap();
        match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            other => panic!("expected silence, got {other:?} ({:?})", byte[0] as char),
        }
    }

    /// Read until the server closes the connection; returns what came first.
    pub fn recv_to_eof(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest,
            // A server that closes with unread input sends a reset: still a close.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => rest,
            Err(e) => panic!("expected the server to close the connection: {e}"),
        }
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
