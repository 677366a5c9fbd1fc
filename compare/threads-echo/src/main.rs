//! Baseline: a thread-per-connection echo server.
//!
//! The design the epoll articles contrast epoll with: a blocking `accept`
//! loop that hands every client to a thread of its own, which blocks in
//! `read` until its client sends something. Simple and correct; what it
//! costs per connection is what the Measuring chapter shows.
//!
//! It also has a hard ceiling the epoll servers do not: every thread takes
//! memory mappings, and `vm.max_map_count` caps those per process. Past the
//! ceiling Rust's runtime aborts the whole process when a thread cannot be
//! set up, so the server counts its threads and closes a client it has no
//! room for (`--max-clients`) instead of dying with every other client.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: threads-echo [-q] [--max-clients N] [ADDR]

A thread-per-connection TCP echo server (a baseline for the benchmark).

  ADDR             HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-clients N  client threads at once; a client past them is closed at once
                   (default: a quarter of vm.max_map_count, less 512)
  -q               do not log connections to stderr
  -h, --help       print this help";

/// Each client's thread gets this much stack instead of std's 2 MiB default:
/// the echo loop needs only `io::copy`'s 8 KiB buffer, and a tuned
/// thread-per-connection server keeps 20,000 threads' stack reservations
/// at 1.3 GB instead of 40 GB (only touched pages become resident either way).
const STACK_SIZE: usize = 64 * 1024;

/// Memory mappings one client thread takes: its stack and the stack's guard
/// page, and the signal stack and its guard page that Rust's runtime adds.
const MAPPINGS_PER_THREAD: u64 = 4;

/// Mappings left for everything else: the binary, its libraries, the heap
/// and malloc's per-thread arenas.
const MAPPINGS_SPARE: u64 = 2048;

/// The cap when `/proc/sys/vm/max_map_count` cannot be read (its usual
/// value, 65,530, gives about this many).
const FALLBACK_MAX_CLIENTS: usize = 15_000;

struct Args {
    addr: SocketAddr,
    quiet: bool,
    max_clients: usize,
}

/// Why a connection ended: what its `closed fd N (...)` line says.
enum Closed {
    /// The client closed its sending side and has all its echo.
    EndOfFile,
    /// A read or write failed (`ECONNRESET`, `EPIPE`, ...).
    Failed(io::Error),
    /// `--max-clients` threads are running already.
    NoRoom,
    /// No thread could be started for it (out of threads or memory).
    NoThread(io::Error),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Closed::EndOfFile => f.write_str("end of file"),
            Closed::Failed(err) => write!(f, "{}", errno_name(err)),
            Closed::NoRoom => f.write_str("no room: --max-clients threads running"),
            Closed::NoThread(err) => write!(f, "cannot start a thread: {}", errno_name(err)),
        }
    }
}

/// An error's errno as the man pages name it (`ECONNRESET`), when it has one.
fn errno_name(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => format!("{:?}", Errno::from_raw(code)),
        None => err.to_string(),
    }
}

/// The one line that says a connection ended, and why. Where the socket is
/// still open, it is logged before the close, so a new connection that
/// reuses the fd number is always logged after this one's end.
fn log_closed(fd: i32, why: Closed, quiet: bool) {
    if !quiet {
        log!("closed fd {fd} ({why})");
    }
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [-q] [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        quiet: false,
        max_clients: default_max_clients(),
    };
    let mut addr_given = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
            "--max-clients" => {
                args.max_clients = match argv.next().map(|n| n.parse()) {
                    Some(Ok(n)) if n > 0 => n,
                    _ => usage_error("--max-clients needs a number above 0"),
                }
            }
            // A host name is resolved once, here, to its first address.
            _ if !addr_given && !arg.starts_with('-') => match arg.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => (args.addr, addr_given) = (addr, true),
                    None => usage_error(&format!("{arg:?} has no address")),
                },
                Err(_) => usage_error(&format!("cannot resolve {arg:?} (expected HOST:PORT)")),
            },
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}

/// As many threads as `vm.max_map_count` leaves room for: a quarter of it
/// (four mappings each), less what the rest of the process maps.
fn default_max_clients() -> usize {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(|maps| maps.saturating_sub(MAPPINGS_SPARE) / MAPPINGS_PER_THREAD)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n > 0)
        .unwrap_or(FALLBACK_MAX_CLIENTS)
}

fn usage_error(msg: &str) -> ! {
    log!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

/// A listener with the `SOMAXCONN` backlog. `TcpListener::bind` would ask
/// for only 128, so a burst of connects could be dropped; the socket is made
/// with nix and then handed to std.
fn listen_on(addr: SocketAddr) -> Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let listen_fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)
        .context("cannot create a socket")?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    setsockopt(&listen_fd, sockopt::ReuseAddr, &true)
        .map_err(io::Error::from)
        .context("cannot set SO_REUSEADDR")?;
    bind(listen_fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .with_context(|| format!("cannot bind {addr}"))?;
    listen(&listen_fd, Backlog::MAXCONN)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(TcpListener::from(listen_fd))
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, as the chat server
/// does, so both are limited by the same number of descriptors.
fn raise_fd_limit() -> Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    raise_fd_limit()?;
    let listener = listen_on(args.addr)?;
    // Scripts and tests wait for this line, so it goes out at once.
    writeln!(io::stdout(), "listening on {}", listener.local_addr()?)
        .context("cannot write to stdout")?;
    io::stdout().flush()?;

    // Client threads alive now: counted up here, down by each thread as it ends.
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if is_out_of_fds(&err) => {
                // Nothing can be accepted until a client leaves; retrying at
                // once would spin, so wait a little.
                if !args.quiet {
                    log!("accept: {err}");
                }
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            // The client gave up before we got to it (ECONNABORTED, ...).
            Err(_) => continue,
        };
        let fd = stream.as_raw_fd();
        if !args.quiet {
            log!("accepted fd {fd} from {peer}");
        }
        let quiet = args.quiet;
        // Only this loop counts up, so the check and the increment cannot race.
        if clients.load(Ordering::SeqCst) >= args.max_clients {
            log_closed(fd, Closed::NoRoom, quiet);
            drop(stream); // close(2)
            continue;
        }
        clients.fetch_add(1, Ordering::SeqCst);
        let count = Arc::clone(&clients);
        let spawned = thread::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn(move || serve(stream, fd, quiet, &count));
        // Out of threads or memory: the closure, and with it the stream,
        // has been dropped, so this client is closed and the server goes on.
        if let Err(err) = spawned {
            clients.fetch_sub(1, Ordering::SeqCst);
            log_closed(fd, Closed::NoThread(err), quiet);
        }
    }
}

/// One client's thread: echo until end-of-file, then close.
fn serve(stream: TcpStream, fd: i32, quiet: bool, clients: &AtomicUsize) {
    // `io::copy` reads and writes until the client closes its side; a peer
    // that resets mid-write is an error here, not a SIGPIPE (Rust programs
    // start with SIGPIPE ignored).
    let result = io::copy(&mut &stream, &mut &stream);
    // The place is free before `closed fd` is logged, so a client that
    // connects after that line is never turned away for this one.
    clients.fetch_sub(1, Ordering::SeqCst);
    let why = match result {
        Ok(_) => Closed::EndOfFile,
        Err(err) => Closed::Failed(err),
    };
    log_closed(fd, why, quiet);
    drop(stream); // close(2)
}

/// `EMFILE`/`ENFILE`: this process, or the whole system, is out of descriptors.
fn is_out_of_fds(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}
