// ANCHOR: client_top
//! The chat client: sends each line of stdin and prints every line the
//! server sends, both at once.
//!
//! Stage 2's client waited for a reply after each line; a chat sends lines
//! at any time, so this one watches stdin and the socket in one epoll set
//! and handles whichever is ready.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrStorage, connect, send,
    shutdown, socket,
};
use nix::unistd::read;
// ANCHOR_END: client_top

// ANCHOR: usage
const USAGE: &str = "\
usage: client [--max-line BYTES] [ADDR]

Connects to the chat server, sends each line of stdin and prints every line
the server sends. At the end of stdin it waits briefly for the last lines
and exits.

A line over the server's limit, 4096 bytes unless --max-line says otherwise
(not counting its \\n or \\r\\n), is not sent, since the server would close
the connection: the client prints `* line too long (max 4096 bytes): not
sent` on stderr and goes on.

  ADDR              HOST:PORT of the server (default 127.0.0.1:8080)
  --max-line BYTES  the longest line the server takes (default 4096, as the server)
  -h, --help        print this help";

/// After the end of stdin: how long to wait for more lines from a server
/// that does not close the connection.
const LAST_LINES: u16 = 500; // milliseconds
/// Stdin waits while this much is not yet sent (a slow or stuck server).
const MAX_UNSENT: usize = 64 * 1024;

const STDIN: u64 = 0;
const SOCKET: u64 = 1;

struct Args {
    /// Every address ADDR resolved to, tried in turn.
    addrs: Vec<SocketAddr>,
    /// The server's `--max-line`: a longer line would get us disconnected,
    /// so it is not sent.
    max_line: usize,
}
// ANCHOR_END: usage

// ANCHOR: main
fn main() -> ExitCode {
    let args = parse_args();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [--max-line BYTES] [ADDR]`; exits 0 after `--help` and 2 after a
/// bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addrs: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        max_line: 4096,
    };
    let mut addr_given = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                // A reader gone (`client --help | head -1`) is no error.
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            "--max-line" => match argv.next().map(|value| value.parse::<usize>()) {
                Some(Ok(n)) if n > 0 => args.max_line = n,
                _ => usage_error("--max-line needs a positive number"),
            },
            _ if !addr_given && !arg.starts_with('-') => match parse_addr(&arg) {
                Ok(addrs) => (args.addrs, addr_given) = (addrs, true),
                Err(msg) => usage_error(&msg),
            },
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}
// ANCHOR_END: main

// ANCHOR: parse_addr
/// `HOST:PORT`, where HOST is a name (`localhost`) or an IP address
/// (`[::1]` for IPv6), resolved once, here.
fn parse_addr(arg: &str) -> Result<Vec<SocketAddr>, String> {
    let invalid = |why: String| format!("invalid address {arg:?} (expected HOST:PORT): {why}");
    let addrs: Vec<SocketAddr> = arg
        .to_socket_addrs()
        .map_err(|err| invalid(err.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(invalid("the name has no address".into()));
    }
    Ok(addrs)
}

fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}
// ANCHOR_END: parse_addr

// ANCHOR: connect
/// Connect to the first of `addrs` that answers (a name may have an IPv6 and
/// an IPv4 address, and the server listen on only one of them).
fn connect_any(addrs: &[SocketAddr]) -> Result<OwnedFd> {
    let mut result = Err(anyhow::anyhow!("no address to connect to"));
    for &addr in addrs {
        result = connect_to(addr);
        if result.is_ok() {
            break;
        }
    }
    result
}

/// `socket(2)` and a blocking `connect(2)`, then non-blocking from here on:
/// the event loop must never wait on one side while the other is ready.
fn connect_to(addr: SocketAddr) -> Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let socket_fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)
        .context("cannot create a socket")?;
    connect(socket_fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .with_context(|| format!("cannot connect to {addr}"))?;
    set_nonblocking(socket_fd.as_fd())?;
    Ok(socket_fd)
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}
// ANCHOR_END: connect

// ANCHOR: client_struct
/// What the loop knows about each side.
struct Client {
    socket_fd: OwnedFd,
    epoll_fd: Epoll,
    /// Stdin is a regular file (or `/dev/null`), which epoll refuses with
    /// `EPERM`: it is always readable, so it is read whenever there is room.
    stdin_is_file: bool,
    stdin_open: bool,
    /// Stdin is in the interest list.
    stdin_watched: bool,
    /// The server's line limit.
    max_line: usize,
    /// The start of stdin's current line, held until its `\n` shows that
    /// it is within the limit (at most `max_line` + 2 bytes).
    line: Vec<u8>,
    /// The current line is over the limit: the rest of it is dropped.
    too_long: bool,
    /// Bytes read from stdin that the socket has not taken yet.
    unsent: Vec<u8>,
    /// `EPOLLOUT` is in the interest list for the socket.
    want_write: bool,
    /// We sent end-of-file (`shutdown(SHUT_WR)`) after the last line.
    sent_eof: bool,
}
// ANCHOR_END: client_struct

// ANCHOR: client_loop
fn run(args: &Args) -> Result<ExitCode> {
    let socket_fd = connect_any(&args.addrs)?;
    // epoll_create1(2): one set for both sides, so neither blocks the other.
    let epoll_fd = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("epoll_create1 failed")?;
    epoll_fd
        .add(&socket_fd, EpollEvent::new(EpollFlags::EPOLLIN, SOCKET))
        .map_err(io::Error::from)
        .context("epoll_ctl ADD socket failed")?;
    let stdin = io::stdin();
    let stdin_is_file = match epoll_fd.add(&stdin, EpollEvent::new(EpollFlags::EPOLLIN, STDIN)) {
        Ok(()) => false,
        Err(Errno::EPERM) => true,
        Err(err) => return Err(io::Error::from(err)).context("epoll_ctl ADD stdin failed"),
    };
    let mut client = Client {
        socket_fd,
        epoll_fd,
        stdin_is_file,
        stdin_open: true,
        stdin_watched: !stdin_is_file,
        max_line: args.max_line,
        line: Vec::new(),
        too_long: false,
        unsent: Vec::new(),
        want_write: false,
        sent_eof: false,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 2];
    // ANCHOR_END: client_loop
    // ANCHOR: event_loop
    loop {
        let timeout = if client.stdin_is_file && client.stdin_open && client.room() {
            EpollTimeout::ZERO // a file is always readable: don't sleep
        } else if client.sent_eof {
            EpollTimeout::from(LAST_LINES)
        } else {
            EpollTimeout::NONE
        };
        // Level-triggered: a side stays ready until it is read or written,
        // so one read per event is enough and nothing is missed.
        let n = match client.epoll_fd.wait(&mut ready, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("epoll_wait failed"),
        };
        if n == 0 && client.sent_eof {
            return Ok(ExitCode::SUCCESS); // no more lines came: we are done
        }
        let mut stdin_ready = client.stdin_is_file && client.stdin_open && client.room();
        for event in &ready[..n] {
            match event.data() {
                STDIN => stdin_ready = true,
                _ => {
                    if event.events().contains(EpollFlags::EPOLLOUT) {
                        client.send_unsent()?;
                    }
                    if event.events().intersects(
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR,
                    ) && !client.receive(&mut buf)?
                    {
                        return Ok(ExitCode::SUCCESS); // the server closed the connection
                    }
                }
            }
        }
        if stdin_ready {
            client.read_stdin(&mut buf)?;
        }
        client.update_interest()?;
    }
}
// ANCHOR_END: event_loop

// ANCHOR: receive
impl Client {
    /// Whether stdin may be read: not while much is still unsent.
    fn room(&self) -> bool {
        self.unsent.len() < MAX_UNSENT
    }

    /// Print what the server sent. Returns false once it has closed.
    fn receive(&mut self, buf: &mut [u8]) -> Result<bool> {
        let n = match read(&self.socket_fd, buf) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return Ok(true),
            Err(Errno::ECONNRESET) => 0, // a reset is a close too
            Err(err) => return Err(io::Error::from(err)).context("cannot read from the server"),
        };
        // After our own end-of-file the server closing is the expected end.
        let received: &[u8] = match n {
            0 if self.sent_eof => b"",
            0 => b"* disconnected\n",
            _ => &buf[..n],
        };
        let mut stdout = io::stdout().lock();
        stdout.write_all(received)?;
        stdout.flush()?;
        Ok(n > 0)
    }

    /// Read what stdin has and send it on.
    fn read_stdin(&mut self, buf: &mut [u8]) -> Result<()> {
        match read(io::stdin(), buf) {
            Ok(0) => {
                self.stdin_open = false;
                if !self.line.is_empty() || self.too_long {
                    self.take_lines(b"\n"); // the last line of a file may lack its newline
                }
            }
            Ok(n) => self.take_lines(&buf[..n]),
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(err) => return Err(io::Error::from(err)).context("cannot read stdin"),
        }
        self.send_unsent()
    }
    // ANCHOR_END: receive

    // ANCHOR: take_lines
    /// Move the whole lines of `input` to `unsent`. A line over the limit is
    /// not sent but reported on stderr: the server would answer it by
    /// closing the connection, and every line after it would be lost.
    fn take_lines(&mut self, input: &[u8]) {
        for piece in input.split_inclusive(|&b| b == b'\n') {
            if !self.too_long {
                self.line.extend_from_slice(piece);
                // Counted as the server counts: without the `\n`, and
                // without a `\r` that is (or may yet be) part of `\r\n`.
                let text = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                if text.len() > self.max_line {
                    self.too_long = true;
                    self.line = Vec::new();
                }
            }
            if piece.ends_with(b"\n") {
                if std::mem::take(&mut self.too_long) {
                    // Not `eprintln!`, which panics when stderr is a
                    // closed pipe (`client 2>&1 | head`).
                    let _ = writeln!(io::stderr(), "{}", too_long(self.max_line));
                } else {
                    self.unsent.append(&mut self.line);
                }
            }
        }
    }
    // ANCHOR_END: take_lines

    // ANCHOR: send_unsent
    /// Send as much as the socket takes; once stdin has ended and all is
    /// sent, send end-of-file so the server knows we are done.
    fn send_unsent(&mut self) -> Result<()> {
        while !self.unsent.is_empty() {
            match send(
                self.socket_fd.as_raw_fd(),
                &self.unsent,
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(n) => {
                    self.unsent.drain(..n);
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                // The server is gone; the read side will say so.
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    self.unsent.clear();
                    break;
                }
                Err(err) => return Err(io::Error::from(err)).context("cannot send to the server"),
            }
        }
        if self.unsent.is_empty() {
            self.unsent = Vec::new();
            if !self.stdin_open && !self.sent_eof {
                // The server answers end-of-file by sending what it still
                // owes us and closing: then every last line has arrived.
                let _ = shutdown(self.socket_fd.as_raw_fd(), Shutdown::Write);
                self.sent_eof = true;
            }
        }
        Ok(())
    }
    // ANCHOR_END: send_unsent

    // ANCHOR: update_interest
    /// Watch the socket for `EPOLLOUT` only while something is unsent, and
    /// stdin only while there is room for more.
    fn update_interest(&mut self) -> Result<()> {
        let want_write = !self.unsent.is_empty();
        if want_write != self.want_write {
            let mut flags = EpollFlags::EPOLLIN;
            if want_write {
                flags |= EpollFlags::EPOLLOUT;
            }
            self.epoll_fd
                .modify(&self.socket_fd, &mut EpollEvent::new(flags, SOCKET))
                .map_err(io::Error::from)
                .context("epoll_ctl MOD socket failed")?;
            self.want_write = want_write;
        }
        let watch_stdin = !self.stdin_is_file && self.stdin_open && self.room();
        if watch_stdin != self.stdin_watched {
            let stdin = io::stdin();
            let result = if watch_stdin {
                self.epoll_fd
                    .add(&stdin, EpollEvent::new(EpollFlags::EPOLLIN, STDIN))
            } else {
                self.epoll_fd.delete(&stdin)
            };
            result
                .map_err(io::Error::from)
                .context("epoll_ctl stdin failed")?;
            self.stdin_watched = watch_stdin;
        }
        Ok(())
    }
}
// ANCHOR_END: update_interest

// ANCHOR: too_long
/// What the client says instead of sending a line over the limit.
fn too_long(max_line: usize) -> String {
    format!("* line too long (max {max_line} bytes): not sent")
}
// ANCHOR_END: too_long
