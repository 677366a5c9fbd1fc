//! Baseline: a thread-per-connection echo server.
//!
//! The design the epoll articles contrast epoll with: a blocking `accept`
//! loop that hands every client to a thread of its own, which blocks in
//! `read` until its client sends something. Simple and correct; what it
//! costs per connection is what the Measuring chapter shows.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};

const USAGE: &str = "\
usage: threads-echo [-q] [ADDR]

A thread-per-connection TCP echo server (a baseline for the benchmark).

  ADDR        IP:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  -q          do not log connections to stderr
  -h, --help  print this help";

/// Each client's thread gets this much stack instead of std's 2 MiB default:
/// the echo loop needs only `io::copy`'s 8 KiB buffer, and a tuned
/// thread-per-connection server keeps 20,000 threads' stack reservations
/// at 1.3 GB instead of 40 GB (only touched pages become resident either way).
const STACK_SIZE: usize = 64 * 1024;

struct Args {
    addr: SocketAddr,
    quiet: bool,
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [-q] [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        quiet: false,
    };
    let mut addr_given = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
            _ if !addr_given && !arg.starts_with('-') => match arg.parse() {
                Ok(addr) => (args.addr, addr_given) = (addr, true),
                Err(_) => usage_error(&format!("invalid address {arg:?} (expected IP:PORT)")),
            },
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}

fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}\n\n{USAGE}");
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
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if is_out_of_fds(&err) => {
                // Nothing can be accepted until a client leaves; retrying at
                // once would spin, so wait a little.
                if !args.quiet {
                    eprintln!("accept: {err}");
                }
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            // The client gave up before we got to it (ECONNABORTED, ...).
            Err(_) => continue,
        };
        let fd = stream.as_raw_fd();
        if !args.quiet {
            eprintln!("accepted fd {fd} from {peer}");
        }
        let quiet = args.quiet;
        let spawned = thread::Builder::new()
            .stack_size(STACK_SIZE)
            .spawn(move || serve(stream, fd, quiet));
        // Out of threads or memory: the closure, and with it the stream,
        // has been dropped, so this client is closed and the server goes on.
        if let Err(err) = spawned
            && !quiet
        {
            eprintln!("cannot start a thread for fd {fd}: {err}");
            eprintln!("closed fd {fd}");
        }
    }
}

/// One client's thread: echo until end-of-file, then close.
fn serve(stream: TcpStream, fd: i32, quiet: bool) {
    // `io::copy` reads and writes until the client closes its side; a peer
    // that resets mid-write is an error here, not a SIGPIPE (Rust programs
    // start with SIGPIPE ignored).
    let result = io::copy(&mut &stream, &mut &stream);
    // Logged before the close, so a new connection that reuses the fd
    // number is always logged after this one's end.
    if !quiet {
        if let Err(err) = result {
            eprintln!("fd {fd}: {err}");
        }
        eprintln!("closed fd {fd}");
    }
    drop(stream); // close(2)
}

/// `EMFILE`/`ENFILE`: this process, or the whole system, is out of descriptors.
fn is_out_of_fds(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE)
    )
}
