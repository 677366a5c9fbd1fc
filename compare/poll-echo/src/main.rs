//! A baseline, not a stage: stage 3's echo server with `poll(2)` in place of
//! epoll.
//!
//! The loop has stage 3's shape: the listener and every client watched for
//! `POLLIN`, level-triggered, one `accept` or one `read` per ready
//! descriptor. What differs is the interface: `poll` has no interest list in
//! the kernel, so every call passes the whole array of watched descriptors,
//! and the kernel checks each one, ready or not. The Measuring chapter sets
//! this against stage 3 with thousands of idle clients connected.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage, accept, bind,
    getpeername, getsockname, listen, send, setsockopt, socket, sockopt,
};
use nix::unistd::read;

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: poll-echo [-q] [ADDR]

Stage 3's level-triggered echo server, with poll(2) in place of epoll.

  ADDR        HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  -q          do not log connections to stderr
  -h, --help  print this help";

struct Args {
    addr: SocketAddr,
    quiet: bool,
}

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
    // A burst of connects waits in the kernel's accept queue instead of
    // being dropped.
    listen(&listen_fd, Backlog::MAXCONN)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listen_fd)
}

fn run(args: &Args) -> Result<()> {
    let listen_fd = listen_on(args.addr)?;
    let local: SockaddrStorage = getsockname(listen_fd.as_raw_fd())?;
    // Scripts and tests wait for this line, so it goes out at once.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush()?;

    let listener = listen_fd.as_raw_fd();
    let mut clients: HashMap<RawFd, OwnedFd> = HashMap::new();
    let mut ready: Vec<RawFd> = Vec::new();
    loop {
        // poll(2) keeps nothing between calls: the whole interest list is
        // built and handed over every time, and the kernel checks every
        // entry, however few are ready. This is the O(n) that epoll removes.
        let mut interest: Vec<PollFd> = Vec::with_capacity(clients.len() + 1);
        interest.push(PollFd::new(listen_fd.as_fd(), PollFlags::POLLIN));
        interest.extend(
            clients
                .values()
                .map(|client_fd| PollFd::new(client_fd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut interest, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("poll failed"),
        }
        // And finding the ready ones is a second walk over the whole array.
        ready.clear();
        ready.extend(
            interest
                .iter()
                .filter(|p| p.any().unwrap_or(false))
                .map(|p| p.as_fd().as_raw_fd()),
        );
        drop(interest);
        for &fd in &ready {
            if fd == listener {
                accept_client(&listen_fd, &mut clients, args.quiet);
            } else if let Some(client_fd) = clients.get(&fd) {
                // 0 bytes is end-of-file; an error (such as a reset) ends
                // this client only.
                let why = match echo_once(client_fd) {
                    Ok(0) => Closed::EndOfFile,
                    Ok(_) => continue,
                    Err(err) => Closed::Failed(err),
                };
                close_client(&mut clients, fd, why, args.quiet);
            }
        }
    }
}

/// One `accept(2)` per readiness: level-triggered, `poll` reports the
/// listener again at the next call if more clients are waiting.
fn accept_client(listen_fd: &OwnedFd, clients: &mut HashMap<RawFd, OwnedFd>, quiet: bool) {
    let fd = match accept(listen_fd.as_raw_fd()) {
        Ok(fd) => fd,
        // The client gave up before we got to it.
        Err(Errno::ECONNABORTED | Errno::EINTR) => return,
        // One connection's failure (EPROTO, ENETDOWN, ...) or a shortage
        // (EMFILE, ENOBUFS): as in stage 3, logged, and the server goes on.
        Err(err) => {
            log!("cannot accept: {err:?}");
            return;
        }
    };
    // SAFETY: accept(2) just returned this descriptor; nothing else owns it.
    let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if !quiet {
        match getpeername::<SockaddrStorage>(fd) {
            Ok(peer) => log!("accepted fd {fd} from {peer}"),
            // Reset while it waited in the accept queue: its first read
            // reports the reset and closes it.
            Err(err) => log!("accepted fd {fd} (getpeername: {err:?})"),
        }
    }
    clients.insert(fd, client_fd);
}

/// One `read(2)` per readiness, then send it all back; returns the number
/// of bytes echoed.
fn echo_once(client_fd: &OwnedFd) -> nix::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    let n = read(client_fd, &mut buf)?;
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        // The socket is blocking, as in stage 3: a client that does not read
        // its echo stalls this loop, and with it every other client.
        let sent = send(client_fd.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL)?;
        rest = &rest[sent..];
    }
    Ok(n)
}

/// Forgetting a client is only dropping it from the map: the next `poll`
/// call's array no longer has it. Then `close(2)`.
fn close_client(clients: &mut HashMap<RawFd, OwnedFd>, fd: RawFd, why: Closed, quiet: bool) {
    if let Some(client_fd) = clients.remove(&fd) {
        drop(client_fd); // close(2)
        if !quiet {
            log!("closed fd {fd} ({why})");
        }
    }
}
