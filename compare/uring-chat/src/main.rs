//! Baseline: the stage 5 chat server on io_uring instead of epoll.
//!
//! The same protocol, flags, log lines and limits as stage 5's server, and
//! the same library pieces (output queues and their shared chunks, the
//! framer, the sanitizer, the reasons a client leaves); only the loop
//! differs: one thread and one ring, a multishot accept, one receive in
//! flight per client into a provided buffer ring, at most one `writev`
//! per client in flight, and SIGINT/SIGTERM read from a `signalfd` by a
//! read in the ring. No epoll anywhere.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, getsockname, listen,
    setsockopt, socket, sockopt,
};

mod buffers;
mod clients;
mod op;
mod output;
mod ring;
mod server;

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program (stderr piped into a program that has quit fails
/// every write with `EPIPE`).
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: uring-chat [-q] [--max-clients N] [--max-queue BYTES] [--max-line BYTES]
                  [--announce-limit N] [ADDR]

The stage 5 chat server on io_uring instead of epoll (a baseline for the
benchmark): every line a client sends goes to every other client.

  ADDR                  HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-clients N       clients in the chat at once; the next is told the server is full (default 100000)
  --max-queue BYTES     output owed to one client before it is dropped as too slow (default 1048576)
  --max-line BYTES      longest line a client may send (default 4096)
  --announce-limit N    send join/leave notices only while at most N clients are online (default 1000)
  -q                    do not log connections to stderr
  -h, --help            print this help";

#[derive(Clone)]
pub struct Args {
    addr: SocketAddr,
    quiet: bool,
    max_clients: usize,
    max_queue: usize,
    max_line: usize,
    announce_limit: usize,
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [-q] [FLAGS] [ADDR]`; exits 0 after `--help` and 2 after a bad
/// argument (stage 5's parser: it lives in its binary, so it is here too).
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        quiet: false,
        max_clients: 100_000,
        max_queue: 1 << 20,
        max_line: 4096,
        announce_limit: 1000,
    };
    let mut addr_given = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut number = |flag: &str| -> usize {
            match argv.next().map(|value| value.parse::<usize>()) {
                Some(Ok(n)) if n > 0 => n,
                _ => usage_error(&format!("{flag} needs a positive number")),
            }
        };
        match arg.as_str() {
            "-h" | "--help" => {
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
            "--max-clients" => args.max_clients = number(&arg),
            "--max-queue" => args.max_queue = number(&arg),
            "--max-line" => args.max_line = number(&arg),
            "--announce-limit" => args.announce_limit = number(&arg),
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

fn usage_error(msg: &str) -> ! {
    log!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

fn run(args: Args) -> Result<()> {
    // The ring first: on a kernel without what it needs, that is the one
    // error to report, before anything is bound.
    let ring = ring::Ring::new()?;
    raise_fd_limit()?;
    let listen_fd = listen_on(args.addr)?;
    let signal_fd = watch_signals()?;
    let local: SockaddrStorage =
        getsockname(listen_fd.as_raw_fd()).context("cannot read the bound address")?;
    // Scripts and tests wait for this line, so it goes out at once, and
    // only once the server is ready to serve.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush().context("cannot write to stdout")?;
    server::Server::new(args, ring, listen_fd, signal_fd).run()
}

/// `socket(2)`, `bind(2)` and `listen(2)`, as stage 5, except that the
/// listener stays blocking: the ring's accept waits for connections
/// itself, and the sockets it accepts are never asked to return EAGAIN.
fn listen_on(addr: SocketAddr) -> Result<OwnedFd> {
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
    // Chat lines are small: send each round's batch at once. Linux copies
    // the option to every accepted socket.
    setsockopt(&listen_fd, sockopt::TcpNoDelay, &true)
        .map_err(io::Error::from)
        .context("cannot set TCP_NODELAY")?;
    bind(listen_fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .with_context(|| format!("cannot bind {addr}"))?;
    listen(&listen_fd, Backlog::MAXCONN)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listen_fd)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit: every client is a
/// descriptor. (The ring's accept reads the limit when it is submitted,
/// so this comes before it.)
fn raise_fd_limit() -> Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(io::Error::from)
        .context("getrlimit(RLIMIT_NOFILE) failed")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(io::Error::from)
        .context("setrlimit(RLIMIT_NOFILE) failed")
}

/// Block SIGINT and SIGTERM and receive them from a `signalfd(2)`, read by
/// an operation in the ring. Blocking (no `SFD_NONBLOCK`): the ring waits
/// for the signal, where a non-blocking read would return EAGAIN at once.
fn watch_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(io::Error::from)
        .context("sigprocmask failed")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
        .context("signalfd failed")
}
