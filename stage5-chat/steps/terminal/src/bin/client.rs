//! The chat client: sends each line of stdin and prints every line the
//! server sends, both at once.
//!
//! Stage 2's client waited for a reply after each line; a chat sends lines
//! at any time, so this one watches stdin and the socket in one epoll set
//! and handles whichever is ready. On a terminal it draws its own input
//! line, so a line that arrives never lands in the middle of what you type.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::panic;
use std::process::ExitCode;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, MsgFlags, Shutdown, SockFlag, SockType, SockaddrStorage, connect, send,
    shutdown, socket,
};
use nix::sys::termios::{
    InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios, tcgetattr, tcsetattr,
};
use nix::unistd::{isatty, read};

// In `src/`, not `src/bin/`, where cargo would take it for a program.
#[path = "../input_line.rs"]
mod input_line;
use input_line::{InputLine, Keys};

const USAGE: &str = "\
usage: client [--max-line BYTES] [ADDR]

Connects to the chat server, sends each line of stdin and prints every line
the server sends. At the end of stdin it waits briefly for the last lines
and exits.

A line over the server's limit, 4096 bytes unless --max-line says otherwise
(not counting its \\n or \\r\\n), is not sent, since the server would close
the connection: the client prints `* line too long (max 4096 bytes): not
sent` (to stderr when stdin is not a terminal) and goes on.

On a terminal it keeps its own input line under the lines it prints:
Enter sends, Backspace and Ctrl-U edit, Ctrl-D on an empty line ends the
input, Ctrl-C quits. A line refused as too long stays in the input line.

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
const SIGNALS: u64 = 2;

struct Args {
    /// Every address ADDR resolved to, tried in turn.
    addrs: Vec<SocketAddr>,
    /// The server's `--max-line`: a longer line would get us disconnected,
    /// so it is not sent.
    max_line: usize,
}

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
    /// Stdin and stdout are a terminal: we draw the input line.
    terminal: Option<Terminal>,
}

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
    // Typing on a terminal: raw mode and our own input line. (With stdout
    // sent to a file, the prompt and escape codes would land in the file.)
    let on_terminal = isatty(io::stdin()).unwrap_or(false) && isatty(io::stdout()).unwrap_or(false);
    let terminal = if on_terminal {
        Some(Terminal::start(&epoll_fd, args.max_line)?)
    } else {
        None
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
        terminal,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 3];
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
                SIGNALS => {
                    if let Some(terminal) = &mut client.terminal
                        && let Some(code) = terminal.signalled()?
                    {
                        return Ok(code); // SIGINT, SIGTERM or SIGHUP
                    }
                }
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
        if stdin_ready && let Some(code) = client.read_stdin(&mut buf)? {
            return Ok(code); // Ctrl-C
        }
        client.update_interest()?;
    }
}

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
        if let Some(terminal) = &mut self.terminal {
            terminal.print_received(received, n == 0)?;
        } else {
            let mut stdout = io::stdout().lock();
            stdout.write_all(received)?;
            stdout.flush()?;
        }
        Ok(n > 0)
    }

    /// Read what stdin has and send it on. Returns an exit code when the
    /// user pressed Ctrl-C.
    fn read_stdin(&mut self, buf: &mut [u8]) -> Result<Option<ExitCode>> {
        match read(io::stdin(), buf) {
            Ok(0) => {
                self.stdin_open = false;
                if !self.line.is_empty() || self.too_long {
                    self.take_lines(b"\n"); // the last line of a file may lack its newline
                }
            }
            Ok(n) => match &mut self.terminal {
                Some(terminal) => match terminal.keys(&buf[..n], &mut self.unsent)? {
                    Keys::Typed => {}
                    Keys::EndOfInput => self.stdin_open = false,
                    Keys::Interrupt => return Ok(Some(exit_code(Signal::SIGINT))),
                },
                None => self.take_lines(&buf[..n]),
            },
            Err(Errno::EAGAIN | Errno::EINTR) => {}
            Err(err) => return Err(io::Error::from(err)).context("cannot read stdin"),
        }
        self.send_unsent()?;
        Ok(None)
    }

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

/// What the client says instead of sending a line over the limit.
fn too_long(max_line: usize) -> String {
    format!("* line too long (max {max_line} bytes): not sent")
}

/// The exit code a shell shows for a process ended by `signal`.
fn exit_code(signal: Signal) -> ExitCode {
    ExitCode::from(128 + signal as u8)
}

/// Raw mode for as long as this lives: dropping it restores the terminal,
/// on a normal return, an error return, and while a panic unwinds.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode> {
        let saved = tcgetattr(io::stdin())
            .map_err(io::Error::from)
            .context("tcgetattr failed")?;
        let mut raw = saved.clone();
        // Every key as it is typed, not a line at a time (ICANON), and not
        // echoed by the terminal (ECHO): the client draws the line itself.
        // Ctrl-C, Ctrl-Z, Ctrl-\ (ISIG), Ctrl-V, Ctrl-O (IEXTEN), Ctrl-S and
        // Ctrl-Q (IXON) arrive as bytes instead of acting on the terminal.
        raw.local_flags &=
            !(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        // Enter arrives as `\r`, not turned into `\n` (ICRNL).
        raw.input_flags &= !(InputFlags::ICRNL | InputFlags::IXON);
        // A read returns as soon as one byte is there, with no timer.
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        // Output processing (OPOST) stays on: `\n` still goes out as `\r\n`.
        tcsetattr(io::stdin(), SetArg::TCSANOW, &raw)
            .map_err(io::Error::from)
            .context("tcsetattr failed")?;
        // The default panic hook prints the message before unwinding starts:
        // restore first, so the message reads as usual. (A `Termios` may not
        // cross threads; the `libc::termios` inside it may.)
        let copy = libc::termios::from(saved.clone());
        let default_hook = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            restore(&Termios::from(copy));
            default_hook(info);
        }));
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(&self.saved);
    }
}

/// Erase the input line and put the terminal back as it was. Errors are
/// ignored: this runs on the way out, when nothing better can be done.
fn restore(saved: &Termios) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(b"\r\x1b[2K");
    let _ = stdout.flush();
    let _ = tcsetattr(io::stdin(), SetArg::TCSANOW, saved);
}

/// Block SIGINT, SIGTERM and SIGHUP and receive them from a `signalfd(2)`
/// in the epoll set: a `kill` ends the loop like any other event, and the
/// terminal is restored on the way out. (Raw mode makes Ctrl-C a byte, but
/// not a signal sent by another process.) SIGWINCH, which the kernel sends
/// when the window's size changes, comes the same way, to redraw the line.
fn watch_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.add(Signal::SIGWINCH);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(io::Error::from)
        .context("sigprocmask failed")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
        .context("signalfd failed")
}

/// The terminal when stdin and stdout are one: raw mode, the signals that
/// must not leave it raw, and the input line drawn under what arrives.
struct Terminal {
    /// Kept for its `Drop`, which restores the terminal.
    _raw: RawMode,
    signal_fd: SignalFd,
    /// What is typed, and how it is drawn with what arrives.
    line: InputLine,
}

impl Terminal {
    /// Signals first, then raw mode: a signal from here on ends the loop
    /// with the terminal restored.
    fn start(epoll_fd: &Epoll, max_line: usize) -> Result<Terminal> {
        let signal_fd = watch_signals()?;
        epoll_fd
            .add(&signal_fd, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))
            .map_err(io::Error::from)
            .context("epoll_ctl ADD signalfd failed")?;
        let mut terminal = Terminal {
            _raw: RawMode::enter()?,
            signal_fd,
            line: InputLine::new(max_line),
        };
        show(&terminal.line.redraw(terminal_width()))?;
        Ok(terminal)
    }

    /// Take the signal waiting in the signalfd. SIGWINCH redraws the input
    /// line for the window's new size; any other asks for an exit, with the
    /// code a shell shows for a process it ended (`None`: no exit).
    fn signalled(&mut self) -> Result<Option<ExitCode>> {
        let info = self
            .signal_fd
            .read_signal()
            .map_err(io::Error::from)
            .context("cannot read the signalfd")?;
        match info {
            Some(info) if info.ssi_signo == Signal::SIGWINCH as u32 => {
                show(&self.line.redraw(terminal_width()))?;
                Ok(None)
            }
            Some(info) => Ok(Some(ExitCode::from(128 + info.ssi_signo as u8))),
            None => Ok(None),
        }
    }

    /// Edit the input line with the keys just read; Enter moves the line
    /// to `unsent`.
    fn keys(&mut self, keys: &[u8], unsent: &mut Vec<u8>) -> io::Result<Keys> {
        let (keys, screen) = self.line.keys(keys, unsent, terminal_width());
        show(&screen)?;
        Ok(keys)
    }

    /// Print the whole lines received so far above the input line.
    fn print_received(&mut self, received: &[u8], closed: bool) -> io::Result<()> {
        show(&self.line.received(received, closed, terminal_width()))
    }
}

/// Write a drawing of the input line at once, so the screen does not
/// flicker.
fn show(screen: &[u8]) -> io::Result<()> {
    if screen.is_empty() {
        return Ok(());
    }
    let mut stdout = io::stdout().lock();
    stdout.write_all(screen)?;
    stdout.flush()
}

/// The terminal's width in columns (`TIOCGWINSZ`), asked at every redraw,
/// the one for SIGWINCH too; 80 if it cannot say.
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` to the pointer, which points
    // to a `winsize` that lives through the call.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}
