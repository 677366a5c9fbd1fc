//! Stage 5a: an edge-triggered epoll server that echoes whole lines.
//!
//! Stage 4's loop, with lines on top. TCP delivers bytes, not messages: a
//! `read` may return half a line, or several lines and the start of the
//! next. The framer cuts what each read returns into lines; each whole line
//! is echoed, the start of an unfinished one is kept for the next read, and
//! a line over the limit ends the connection.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::ControlFlow;
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

use stage5a_lines::framer::{LineTooLong, split_lines};

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: stage5a-lines [-q] [--max-line BYTES] [ADDR]

An edge-triggered epoll server that echoes every line a client sends.

  ADDR              HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-line BYTES  longest line a client may send (default 4096)
  -q                do not log connections to stderr
  -h, --help        print this help";

/// Echo a connection may owe before the server stops reading from it, so a
/// client that sends without reading cannot grow the server without bound.
const MAX_PENDING: usize = 1 << 20;

struct Args {
    addr: SocketAddr,
    quiet: bool,
    max_line: usize,
}

/// What the server keeps per client.
struct Connection {
    fd: OwnedFd,
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    /// Echo the socket could not take yet, oldest first.
    pending: Vec<u8>,
    /// Why the server reads no more from the client (end-of-file, or a line
    /// too long): flush `pending`, then close for that reason.
    read_closed: Option<Closed>,
    /// `EPOLLOUT` is in the interest list (only while `pending` is not empty).
    want_write: bool,
}

/// Why a connection ended: what its `closed fd N (...)` line says.
#[derive(Clone, Copy)]
enum Closed {
    /// The client sent end-of-file and has all its echo.
    EndOfFile,
    /// The client sent a line over `--max-line`, and has its error.
    LineTooLong,
    /// A call on the socket failed (`ECONNRESET`, `EPIPE`, ...).
    Failed(Errno),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Closed::EndOfFile => f.write_str("end of file"),
            Closed::LineTooLong => f.write_str("line too long"),
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

/// `BIN [-q] [FLAGS] [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        quiet: false,
        max_line: 4096,
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
            "--max-line" => args.max_line = number(&arg),
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
    let interest = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, listener as u64);
    epoll
        .add(&listen_fd, interest)
        .map_err(io::Error::from)
        .context("epoll_ctl ADD listener failed")?;

    let mut clients: HashMap<RawFd, Connection> = HashMap::new();
    // One buffer serves every read: a connection keeps only what it owes.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 64];
    // Connections left in the accept queue when accept4 failed: no new edge
    // will report them, so we must remember to come back.
    let mut backlog_left = false;
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
                backlog_left = !accept_clients(&listen_fd, &epoll, &mut clients, args.quiet);
            } else if let Some(conn) = clients.get_mut(&fd) {
                // Whatever the event says, try both directions: reading may
                // have paused for a full buffer that writing just emptied.
                let why = match serve(conn, &mut scratch, args.max_line) {
                    Ok(()) => match conn.read_closed {
                        Some(why) if conn.pending.is_empty() => why,
                        _ => match update_interest(&epoll, conn) {
                            Ok(()) => continue,
                            Err(err) => Closed::Failed(err),
                        },
                    },
                    // A reset or other error ends only this client.
                    Err(err) => Closed::Failed(err),
                };
                close_client(&epoll, &mut clients, fd, why, args.quiet);
                if backlog_left {
                    backlog_left = !accept_clients(&listen_fd, &epoll, &mut clients, args.quiet);
                }
            }
        }
    }
}

/// Accept until `EAGAIN`: an edge-triggered listener is reported once for a
/// burst of connections, and any left in the queue would wait for the next
/// newcomer. Returns whether the queue was drained.
fn accept_clients(
    listen_fd: &OwnedFd,
    epoll: &Epoll,
    clients: &mut HashMap<RawFd, Connection>,
    quiet: bool,
) -> bool {
    loop {
        // accept4(2) sets the new socket non-blocking in the same call.
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = match accept4(listen_fd.as_raw_fd(), flags) {
            Ok(fd) => fd,
            Err(Errno::EAGAIN) => return true, // the queue is empty
            // The client gave up before we got to it.
            Err(Errno::ECONNABORTED | Errno::EINTR) => continue,
            // Out of descriptors (EMFILE) or memory, or one connection's
            // failure (EPROTO, ...): keep serving the clients we have, and
            // come back to the queue when one of them leaves.
            Err(err) => {
                log!("cannot accept: {err:?}");
                return false;
            }
        };
        // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
        let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if !quiet {
            log_accepted(fd);
        }
        // EPOLLRDHUP reports the client's end-of-file even while we still owe it echo.
        let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
        let added = epoll.add(&client_fd, EpollEvent::new(flags, fd as u64));
        let conn = Connection {
            fd: client_fd,
            partial: Vec::new(),
            pending: Vec::new(),
            read_closed: None,
            want_write: false,
        };
        clients.insert(fd, conn);
        if let Err(err) = added {
            close_client(epoll, clients, fd, Closed::Failed(err), quiet);
        }
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

/// Read until `EAGAIN` (or end-of-file, or a full `pending`), echoing each
/// whole line as we go. `Err` means the connection is broken.
fn serve(conn: &mut Connection, scratch: &mut [u8], max_line: usize) -> nix::Result<()> {
    flush(conn)?;
    while conn.read_closed.is_none() && conn.pending.len() < MAX_PENDING {
        match read(&conn.fd, scratch) {
            Ok(0) => {
                // End-of-file: no more input, so an unfinished last line is
                // as whole as it will get. It goes back as it came.
                conn.pending.append(&mut conn.partial);
                conn.read_closed = Some(Closed::EndOfFile);
            }
            Ok(n) => {
                echo_lines(conn, &scratch[..n], max_line);
                flush(conn)?;
            }
            Err(Errno::EAGAIN) => break, // drained: wait for the next edge
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Frame `input`, the next bytes from the client, into lines, and queue
/// each whole one in `pending`, with its `\n` (a `\r\n` comes back as
/// `\n`); empty lines are ignored. A line over `max_line` bytes is answered
/// with an error, and the server reads no more from that client.
fn echo_lines(conn: &mut Connection, input: &[u8], max_line: usize) {
    let framed = split_lines(&mut conn.partial, input, max_line, |line| {
        if !line.is_empty() {
            conn.pending.extend_from_slice(line);
            conn.pending.push(b'\n');
        }
        ControlFlow::Continue(())
    });
    if let Err(LineTooLong) = framed {
        let error = format!("* error: line too long (max {max_line} bytes)\n");
        conn.pending.extend_from_slice(error.as_bytes());
        conn.read_closed = Some(Closed::LineTooLong);
    }
}

/// Send as much of `pending` as the socket takes; stop at `EAGAIN`.
fn flush(conn: &mut Connection) -> nix::Result<()> {
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

/// The one way a connection ends. `EPOLL_CTL_DEL` before `close(2)`: the
/// interest list forgets the socket while its descriptor number is still ours.
fn close_client(
    epoll: &Epoll,
    clients: &mut HashMap<RawFd, Connection>,
    fd: RawFd,
    why: Closed,
    quiet: bool,
) {
    if let Some(conn) = clients.remove(&fd) {
        let _ = epoll.delete(&conn.fd);
        drop(conn); // close(2)
        if !quiet {
            log!("closed fd {fd} ({why})");
        }
    }
}
