// ANCHOR: top
//! Stage 1: a blocking TCP echo server that serves one client at a time.
//!
//! `socket`, `bind`, `listen`, then `accept` a client and echo its bytes
//! until it hangs up. While that client stays connected, the next one waits
//! in the kernel's accept queue: the limitation the later stages remove.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage, accept, bind,
    getpeername, getsockname, listen, send, setsockopt, socket, sockopt,
};
use nix::unistd::read;
// ANCHOR_END: top

// ANCHOR: log
/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}
// ANCHOR_END: log

// ANCHOR: usage
const USAGE: &str = "\
usage: stage1-tcp-server [-q] [ADDR]

A blocking TCP echo server that serves one client at a time.

  ADDR        HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  -q          do not log connections to stderr
  -h, --help  print this help";

struct Args {
    addr: SocketAddr,
    quiet: bool,
}
// ANCHOR_END: usage

// ANCHOR: closed
/// Why a connection ended: what its `closed fd N (...)` line says.
enum Closed {
    /// `read(2)` returned 0: the client closed its sending side.
    EndOfFile,
    /// A call on the socket failed (`ECONNRESET`, `EPIPE`, ...).
    Failed(Errno),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Closed::EndOfFile => f.write_str("end of file"),
            // Debug prints the errno's name, as the man pages spell it.
            Closed::Failed(errno) => write!(f, "{errno:?}"),
        }
    }
}
// ANCHOR_END: closed

// ANCHOR: main
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
// ANCHOR_END: main

// ANCHOR: parse_args
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
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
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
// ANCHOR_END: parse_args

// ANCHOR: listen
/// `socket(2)`, `bind(2)` and `listen(2)`: the three calls that make a
/// listening socket.
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
    bind(listen_fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .with_context(|| format!("cannot bind {addr}"))?;
    // The largest backlog the system allows: a burst of connects waits in
    // the kernel's accept queue instead of being dropped.
    listen(&listen_fd, Backlog::MAXCONN)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listen_fd)
}
// ANCHOR_END: listen

// ANCHOR: run
fn run(args: &Args) -> Result<()> {
    let listen_fd = listen_on(args.addr)?;
    let local: SockaddrStorage =
        getsockname(listen_fd.as_raw_fd()).context("cannot read the bound address")?;
    // Scripts and tests wait for this line, so it goes out at once.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush().context("cannot write to stdout")?;
    // ANCHOR_END: run

    // ANCHOR: accept
    loop {
        // accept(2) blocks until a client arrives, then returns its own socket.
        let client_fd = match accept(listen_fd.as_raw_fd()) {
            // SAFETY: accept(2) just returned this descriptor; nothing else owns it.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            // The client gave up before we got to it: wait for the next one.
            Err(Errno::ECONNABORTED | Errno::EINTR) => continue,
            // One connection's failure (EPROTO, ENETDOWN, ...) or a shortage
            // (EMFILE, ENOBUFS): that client is lost, the others are not.
            Err(err) => {
                log!("cannot accept: {err:?}");
                continue;
            }
        };
        if !args.quiet {
            log_accepted(client_fd.as_raw_fd());
        }
        // Every other client waits here until this one hangs up. A client
        // that resets the connection ends only its own session.
        let why = match echo(&client_fd) {
            Ok(()) => Closed::EndOfFile,
            Err(err) => Closed::Failed(err),
        };
        close_client(client_fd, why, args.quiet);
    }
}
// ANCHOR_END: accept

// ANCHOR: log_accepted
/// The `accepted` line names the peer when it can: a client that reset
/// while it waited in the accept queue has none (`getpeername` fails with
/// `ENOTCONN`), and the first read on its socket reports the reset.
fn log_accepted(fd: RawFd) {
    match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => log!("accepted fd {fd} from {peer}"),
        Err(err) => log!("accepted fd {fd} (getpeername: {err:?})"),
    }
}
// ANCHOR_END: log_accepted

// ANCHOR: echo
/// Send back every byte the client sends, until it closes its side.
fn echo(client_fd: &OwnedFd) -> nix::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        // read(2) blocks until bytes arrive; 0 means end-of-file.
        let n = read(client_fd, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            // send(2) may take only part of the bytes; MSG_NOSIGNAL makes a
            // write to a reset peer fail (ECONNRESET, then EPIPE) instead of
            // raising SIGPIPE, which would kill the server.
            let sent = send(client_fd.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL)?;
            rest = &rest[sent..];
        }
    }
}
// ANCHOR_END: echo

// ANCHOR: close
/// The one way a connection ends: `close(2)`, and a line that says why.
fn close_client(client_fd: OwnedFd, why: Closed, quiet: bool) {
    let fd = client_fd.as_raw_fd();
    drop(client_fd); // close(2)
    if !quiet {
        log!("closed fd {fd} ({why})");
    }
}
// ANCHOR_END: close
