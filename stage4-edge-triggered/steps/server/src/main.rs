//! Stage 4b: stage 4's edge-triggered, non-blocking epoll echo server,
//! with one owner for every client.
//!
//! It does what stage 4 does, with the same calls and flags. What changes
//! is the shape: one `Server` owns the epoll instance, the listener and
//! every connection, and serves them in its methods, so that the code
//! serving one client can reach all the others, as a chat will need.

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
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrStorage, accept4, bind,
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
usage: stage4b-server [-q] [ADDR]

An edge-triggered, non-blocking epoll echo server.

  ADDR        HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  -q          do not log connections to stderr
  -h, --help  print this help";

/// Echo a connection may owe before the server stops reading from it, so a
/// client that sends without reading cannot grow the server without bound.
const MAX_PENDING: usize = 1 << 20;

/// The event data of the listener: a client's is its fd, which is never
/// this large.
const LISTENER: u64 = u64::MAX;
/// What the listener is registered for.
const LISTENER_EVENTS: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLET);
/// What every client socket is registered for. EPOLLRDHUP reports the
/// client's end-of-file even while we still owe it echo.
const CLIENT_EVENTS: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

#[derive(Clone)]
struct Args {
    addr: SocketAddr,
    quiet: bool,
}

/// What the server keeps per client.
struct Connection {
    fd: OwnedFd,
    phase: Phase,
    /// Echo the socket could not take yet, oldest first.
    pending: Vec<u8>,
    /// `EPOLLOUT` is in the interest list (only while `pending` is not empty).
    want_write: bool,
}

/// Where a client is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Read from, and sent its echo.
    Online,
    /// Read no more; closed once it is sent the echo it is still owed.
    Leaving { why: Why },
}

/// Why a connection ended: what its `closed fd N (...)` line says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The client sent end-of-file and has all its echo.
    EndOfFile,
    /// A call on the socket failed (`ECONNRESET`, `EPIPE`, ...).
    Error(Errno),
}

impl Why {
    /// Whether the client is still sent what it is owed: not after an error.
    fn owes_output(self) -> bool {
        !matches!(self, Why::Error(_))
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Why::EndOfFile => f.write_str("end of file"),
            // Debug prints the errno's name, as the man pages spell it.
            Why::Error(errno) => write!(f, "{errno:?}"),
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
    // SOCK_NONBLOCK: accept(2) returns EAGAIN instead of blocking when the
    // queue is empty, which is how the accept loop knows to stop.
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let listen_fd = socket(family, SockType::Stream, flags, None)
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

/// The `accepted` line names the peer when it can: a client that reset
/// while it waited in the accept queue has none (`getpeername` fails with
/// `ENOTCONN`), and the first read on its socket reports the reset.
fn log_accepted(fd: RawFd) {
    match getpeername::<SockaddrStorage>(fd) {
        Ok(peer) => log!("accepted fd {fd} from {peer}"),
        Err(err) => log!("accepted fd {fd} (getpeername: {err:?})"),
    }
}

/// Whether, and how, the listener is being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accepting {
    /// Its queue was empty at the last look: the next edge says when not.
    Open,
    /// `accept4` failed (out of descriptors) with connections left in its
    /// queue: no new edge will report them, so accept when a client closes.
    Backlogged,
}

/// Everything the event loop keeps between rounds.
struct Server {
    args: Args,
    epoll: Epoll,
    listen_fd: OwnedFd,
    accepting: Accepting,
    clients: HashMap<RawFd, Connection>,
}

fn run(args: &Args) -> Result<()> {
    let listen_fd = listen_on(args.addr)?;
    // epoll_create1(2): the kernel object that watches every socket for us.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("epoll_create1 failed")?;
    // epoll_ctl(EPOLL_CTL_ADD): the event's data says which descriptor a
    // ready event is about: a token for the listener, the fd for a client.
    epoll
        .add(&listen_fd, EpollEvent::new(LISTENER_EVENTS, LISTENER))
        .map_err(io::Error::from)
        .context("epoll_ctl ADD listener failed")?;
    let local: SockaddrStorage =
        getsockname(listen_fd.as_raw_fd()).context("cannot read the bound address")?;
    // Scripts and tests wait for this line, so it goes out at once, and
    // only once the server is ready to serve.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush().context("cannot write to stdout")?;

    let mut server = Server::new(args.clone(), epoll, listen_fd);
    // One buffer serves every read: a connection keeps only what it owes.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 64];
    loop {
        // epoll_wait(2) sleeps until at least one watched socket is ready.
        let n = match server.epoll.wait(&mut ready, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("epoll_wait failed"),
        };
        for event in &ready[..n] {
            match event.data() {
                LISTENER => server.accept_clients(),
                fd => server.serve_event(fd as RawFd, &mut scratch),
            }
        }
    }
}

impl Server {
    fn new(args: Args, epoll: Epoll, listen_fd: OwnedFd) -> Server {
        Server {
            clients: HashMap::new(),
            args,
            epoll,
            listen_fd,
            accepting: Accepting::Open,
        }
    }

    /// Accept until `EAGAIN`: an edge-triggered listener is reported once for
    /// a burst of connections, and any left in the queue would wait for the
    /// next newcomer.
    fn accept_clients(&mut self) {
        loop {
            // accept4(2) sets the new socket non-blocking in the same call.
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let fd = match accept4(self.listen_fd.as_raw_fd(), flags) {
                Ok(fd) => fd,
                Err(Errno::EAGAIN) => {
                    self.accepting = Accepting::Open; // the queue is empty
                    return;
                }
                // The client gave up before we got to it.
                Err(Errno::ECONNABORTED | Errno::EINTR) => continue,
                // Out of descriptors (EMFILE) or memory: keep serving the
                // clients we have, and come back when one of them leaves.
                Err(err) => {
                    self.log(format_args!("cannot accept: {err:?}"));
                    self.accepting = Accepting::Backlogged;
                    return;
                }
            };
            // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
            let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(err) = self
                .epoll
                .add(&client_fd, EpollEvent::new(CLIENT_EVENTS, fd as u64))
            {
                self.log(format_args!(
                    "epoll_ctl ADD fd {fd}: {}",
                    io::Error::from(err)
                ));
                continue; // dropping client_fd closes it
            }
            if !self.args.quiet {
                log_accepted(fd);
            }
            self.admit(client_fd);
        }
    }

    /// A new connection goes into the table, owed nothing yet.
    fn admit(&mut self, client_fd: OwnedFd) {
        let client = Connection {
            fd: client_fd,
            phase: Phase::Online,
            pending: Vec::new(),
            want_write: false,
        };
        self.clients.insert(client.fd.as_raw_fd(), client);
    }

    /// A descriptor is free: accept what waited in the queue meanwhile.
    fn resume_accepting(&mut self) {
        if self.accepting == Accepting::Backlogged {
            self.accept_clients();
        }
    }

    /// One ready event for a client. Whatever the event says, try both
    /// directions: reading may have paused for a full `pending` that
    /// writing just emptied.
    fn serve_event(&mut self, fd: RawFd, scratch: &mut [u8]) {
        self.flush(fd);
        self.serve(fd, scratch);
    }

    /// Read until `EAGAIN` or end-of-file, echoing as we go.
    fn serve(&mut self, fd: RawFd, scratch: &mut [u8]) {
        loop {
            let Some(client) = self.clients.get_mut(&fd) else {
                return;
            };
            // A client that has left is read no more, and one that owes
            // MAX_PENDING is read again once it has taken some echo.
            if client.phase != Phase::Online || client.pending.len() >= MAX_PENDING {
                return;
            }
            match read(&client.fd, scratch) {
                Ok(0) => self.end(fd, Why::EndOfFile),
                Ok(n) => self.handle_input(fd, &scratch[..n]),
                Err(Errno::EAGAIN) => return, // drained: wait for the next edge
                Err(Errno::EINTR) => {}
                Err(err) => return self.end(fd, Why::Error(err)),
            }
            self.flush(fd); // the echo goes out as it is made
        }
    }

    /// What was read goes back: it is queued as the client's echo.
    fn handle_input(&mut self, fd: RawFd, input: &[u8]) {
        if let Some(client) = self.clients.get_mut(&fd) {
            client.pending.extend_from_slice(input);
        }
    }

    /// The one way a client ends: read no more, and closed now if it is
    /// owed nothing more, or else once what it is owed is written.
    fn end(&mut self, fd: RawFd, why: Why) {
        if let Some(client) = self.clients.get_mut(&fd) {
            client.phase = Phase::Leaving { why };
        }
        if why.owes_output() {
            self.finish(fd);
        } else {
            self.close(fd);
        }
    }

    /// Close a client that has left once it is owed nothing.
    fn finish(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.get(&fd)
            && let Phase::Leaving { .. } = client.phase
            && client.pending.is_empty()
        {
            self.close(fd);
        }
    }

    /// `EPOLL_CTL_DEL` before `close(2)`: the interest list forgets the
    /// socket while its descriptor number is still ours. A free descriptor
    /// lets a backlogged listener accept again.
    fn close(&mut self, fd: RawFd) {
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        let _ = self.epoll.delete(&client.fd);
        if let Phase::Leaving { why } = client.phase {
            self.log(format_args!("closed fd {fd} ({why})"));
        }
        drop(client); // close(2)
        self.resume_accepting();
    }

    /// Write what the socket takes, ask for `EPOLLOUT` if it took less,
    /// and close a client that has left once it is owed nothing.
    fn flush(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let written = send_pending(client).and_then(|()| update_interest(&self.epoll, client));
        if let Err(err) = written {
            return self.end(fd, Why::Error(err));
        }
        self.finish(fd);
    }

    /// One line of the connection log on stderr, unless `-q`.
    fn log(&self, line: std::fmt::Arguments<'_>) {
        if !self.args.quiet {
            log!("{line}");
        }
    }
}

/// Send as much of `pending` as the socket takes; stop at `EAGAIN`.
fn send_pending(conn: &mut Connection) -> nix::Result<()> {
    while !conn.pending.is_empty() {
        // MSG_NOSIGNAL: a write to a reset peer fails (ECONNRESET, then
        // EPIPE) instead of raising SIGPIPE, which would kill the server.
        match send(conn.fd.as_raw_fd(), &conn.pending, MsgFlags::MSG_NOSIGNAL) {
            Ok(sent) => {
                conn.pending.drain(..sent);
            }
            Err(Errno::EAGAIN) => break, // the socket is full: EPOLLOUT will tell us
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Ask for `EPOLLOUT` only while echo is pending: the interest list then
/// shows who waits to write, and the loop stays correct without `EPOLLET`,
/// where a socket with room to write would be reported on every wait.
fn update_interest(epoll: &Epoll, conn: &mut Connection) -> nix::Result<()> {
    let want_write = !conn.pending.is_empty();
    if want_write == conn.want_write {
        return Ok(());
    }
    let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
    if want_write {
        flags |= EpollFlags::EPOLLOUT;
    }
    let fd = conn.fd.as_raw_fd();
    epoll.modify(&conn.fd, &mut EpollEvent::new(flags, fd as u64))?;
    conn.want_write = want_write;
    Ok(())
}
