//! Stage 3: a level-triggered epoll echo server that serves many clients.
//!
//! One `epoll_create1`, the listener and every client registered for
//! `EPOLLIN`, one `epoll_wait` loop. The server sleeps in `epoll_wait` until
//! some socket is ready, so an idle client no longer blocks the others.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
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
usage: stage3-epoll [-q] [ADDR]

A level-triggered epoll echo server that serves many clients at once.

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
    // The largest backlog the system allows: a burst of connects waits in
    // the kernel's accept queue instead of being dropped.
    listen(&listen_fd, Backlog::MAXCONN)
        .map_err(io::Error::from)
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listen_fd)
}

fn run(args: &Args) -> Result<()> {
    let listen_fd = listen_on(args.addr)?;
    let local: SockaddrStorage =
        getsockname(listen_fd.as_raw_fd()).context("cannot read the bound address")?;
    // Scripts and tests wait for this line, so it goes out at once.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush().context("cannot write to stdout")?;

    // epoll_create1(2): the kernel object that watches every socket for us.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("epoll_create1 failed")?;
    // epoll_ctl(EPOLL_CTL_ADD): the event's data is the fd, so a ready event
    // names the socket it is about.
    let listener = listen_fd.as_raw_fd();
    let interest = EpollEvent::new(EpollFlags::EPOLLIN, listener as u64);
    epoll
        .add(&listen_fd, interest)
        .map_err(io::Error::from)
        .context("epoll_ctl ADD listener failed")?;

    let mut clients: HashMap<RawFd, OwnedFd> = HashMap::new();
    let mut ready = [EpollEvent::empty(); 64];
    loop {
        // epoll_wait(2) sleeps until at least one watched socket is ready.
        let n = match epoll.wait(&mut ready, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("epoll_wait failed"),
        };
        for event in &ready[..n] {
            let fd = event.data() as RawFd;
            if fd == listener {
                accept_client(&listen_fd, &epoll, &mut clients, args.quiet);
            } else if let Some(client_fd) = clients.get(&fd) {
                // 0 bytes is end-of-file; an error (such as a reset) ends
                // this client only.
                let why = match echo_once(client_fd) {
                    Ok(0) => Closed::EndOfFile,
                    Ok(_) => continue,
                    Err(err) => Closed::Failed(err),
                };
                close_client(&epoll, &mut clients, fd, why, args.quiet);
            }
        }
    }
}

/// One `accept(2)` per readiness event: level-triggered epoll reports the
/// listener again at the next `epoll_wait` if more clients are waiting.
fn accept_client(
    listen_fd: &OwnedFd,
    epoll: &Epoll,
    clients: &mut HashMap<RawFd, OwnedFd>,
    quiet: bool,
) {
    let fd = match accept(listen_fd.as_raw_fd()) {
        Ok(fd) => fd,
        // The client gave up before we got to it.
        Err(Errno::ECONNABORTED | Errno::EINTR) => return,
        // One connection's failure (EPROTO, ENETDOWN, ...) or a shortage
        // (EMFILE, ENOBUFS). The listener stays ready, so with no descriptor
        // to spare this repeats at every epoll_wait: stage 4 fixes the spin.
        Err(err) => {
            log!("cannot accept: {err:?}");
            return;
        }
    };
    // SAFETY: accept(2) just returned this descriptor; nothing else owns it.
    let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if !quiet {
        log_accepted(fd);
    }
    let added = epoll.add(&client_fd, EpollEvent::new(EpollFlags::EPOLLIN, fd as u64));
    clients.insert(fd, client_fd);
    if let Err(err) = added {
        close_client(epoll, clients, fd, Closed::Failed(err), quiet);
    }
}

/// The `accepted` line names the peer when it can: a client that reset
/// while it waited in the accept queue has none (`getpeername` fails with
/// `ENOTCONN`), and the first read on its socket reports the reset.
fn log_accepted(fd: RawFd) {
    match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => log!("accepted fd {fd} from {peer}"),
        Err(err) => log!("accepted fd {fd} (getpeername: {err:?})"),
    }
}

/// One `read(2)` per readiness event, then send it all back; returns the
/// number of bytes echoed.
fn echo_once(client_fd: &OwnedFd) -> nix::Result<usize> {
    let mut buf = [0u8; 16 * 1024];
    let n = read(client_fd, &mut buf)?;
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        // The socket is blocking: a client that does not read its echo
        // stalls this loop, and with it every other client (stage 4 fixes this).
        let sent = send(client_fd.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL)?;
        rest = &rest[sent..];
    }
    Ok(n)
}

/// The one way a connection ends. `EPOLL_CTL_DEL` before `close(2)`: the
/// interest list forgets the socket while its descriptor number is still ours.
fn close_client(
    epoll: &Epoll,
    clients: &mut HashMap<RawFd, OwnedFd>,
    fd: RawFd,
    why: Closed,
    quiet: bool,
) {
    if let Some(client_fd) = clients.remove(&fd) {
        let _ = epoll.delete(&client_fd);
        drop(client_fd); // close(2)
        if !quiet {
            log!("closed fd {fd} ({why})");
        }
    }
}
