//! Stage 5: an edge-triggered epoll chat server.
//!
//! Stage 4's loop, with a chat on top: every line a client sends is relayed
//! to every other client. Each client has an output queue; lines queued
//! during one `epoll_wait` round go out together in one `writev`, and a
//! socket that is full gets `EPOLLOUT` while the server serves everyone
//! else. A client that falls too far behind is dropped, a server out of
//! descriptors pauses accepting instead of spinning, and SIGINT/SIGTERM
//! arrive through a `signalfd` in the same epoll set.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, Shutdown, SockFlag, SockType, SockaddrStorage, accept4, bind,
    getpeername, getsockname, listen, setsockopt, shutdown, socket, sockopt,
};
use nix::sys::uio::writev;
use nix::unistd::read;

use stage5_chat::clients::{Clients, NickError, sanitize};
use stage5_chat::framer::{LineTooLong, split_lines};

const USAGE: &str = "\
usage: server [-q] [--max-clients N] [--max-queue BYTES] [--max-line BYTES]
              [--announce-limit N] [ADDR]

An edge-triggered epoll chat server: every line a client sends goes to
every other client.

  ADDR                  IP:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-clients N       clients in the chat at once; the next is told the server is full (default 100000)
  --max-queue BYTES     output owed to one client before it is dropped as too slow (default 1048576)
  --max-line BYTES      longest line a client may send (default 4096)
  --announce-limit N    send join/leave notices only while at most N clients are online (default 1000)
  -q                    do not log connections to stderr
  -h, --help            print this help";

/// How long a client that has left gets to take its last lines and close.
const LINGER: Duration = Duration::from_secs(1);
/// How long SIGINT/SIGTERM waits for the goodbye notices to go out.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);
/// How often a server out of descriptors tries `accept` again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Reads of one client per round before the others get their turn.
const READS_PER_ROUND: usize = 8;
/// Connections accepted per round: between batches the round's output is
/// written, so a burst of joins never piles thousands of notices into
/// every queue at once (memory the allocator would keep afterwards).
const ACCEPTS_PER_ROUND: usize = 64;
/// The most slices one `writev(2)` is given. Lines that follow each other
/// in a chunk share a slice, so a queue holds a few per round; whatever is
/// left over goes in the next round's write.
const SLICES_PER_WRITE: usize = 64;
/// What every client socket is registered for.
const CLIENT_EVENTS: EpollFlags = EpollFlags::EPOLLIN
    .union(EpollFlags::EPOLLRDHUP)
    .union(EpollFlags::EPOLLET);

#[derive(Clone)]
struct Args {
    addr: SocketAddr,
    quiet: bool,
    max_clients: usize,
    max_queue: usize,
    max_line: usize,
    announce_limit: usize,
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

/// `BIN [-q] [FLAGS] [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
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
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
            "--max-clients" => args.max_clients = number(&arg),
            "--max-queue" => args.max_queue = number(&arg),
            "--max-line" => args.max_line = number(&arg),
            "--announce-limit" => args.announce_limit = number(&arg),
            _ if !addr_given && !arg.starts_with('-') => {
                match std::net::ToSocketAddrs::to_socket_addrs(arg.as_str()).map(|mut a| a.next()) {
                    Ok(Some(addr)) => (args.addr, addr_given) = (addr, true),
                    _ => usage_error(&format!("cannot resolve {arg:?} (expected HOST:PORT)")),
                }
            }
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}

fn usage_error(msg: &str) -> ! {
    eprintln!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

// ANCHOR: listen
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
    // Chat lines are small: send each round's batch at once instead of
    // holding it back to merge with the next (Nagle's algorithm). Linux
    // copies the option to every accepted socket, so one call here saves
    // one per connection.
    setsockopt(&listen_fd, sockopt::TcpNoDelay, &true)
        .map_err(io::Error::from)
        .context("cannot set TCP_NODELAY")?;
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

// ANCHOR: limits
/// Raise the soft `RLIMIT_NOFILE` to the hard limit: every client is a
/// descriptor, and the soft default (often 1024) would cap the chat.
fn raise_fd_limit() -> Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(io::Error::from)
        .context("getrlimit(RLIMIT_NOFILE) failed")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
        .map_err(io::Error::from)
        .context("setrlimit(RLIMIT_NOFILE) failed")
}

/// Block SIGINT and SIGTERM and receive them from a `signalfd(2)` instead:
/// a signal becomes one more readable descriptor in the epoll set, handled
/// between rounds like any event, with no handler running at a random point.
fn watch_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(io::Error::from)
        .context("sigprocmask failed")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(io::Error::from)
        .context("signalfd failed")
}
// ANCHOR_END: limits

// ANCHOR: server
/// Everything the event loop keeps between rounds.
struct Server {
    args: Args,
    epoll_fd: Epoll,
    listen_fd: OwnedFd,
    clients: Clients,
    /// Clients that have left, with the time by which they are closed
    /// whatever happens: (deadline, fd, id), oldest first.
    lingering: VecDeque<(Instant, RawFd, u64)>,
    /// Clients whose reads stopped before `EAGAIN`: read again next round.
    unread: Vec<RawFd>,
    /// Clients with more queued than one `writev` took: write next round.
    unwritten: Vec<RawFd>,
    /// The accept loop stopped at `ACCEPTS_PER_ROUND`: accept next round.
    accept_more: bool,
    /// `accept` ran out of descriptors: the listener is out of the interest
    /// list until a client closes, or until this time.
    accept_paused: Option<Instant>,
    /// `accept` has failed since the last success (log it once).
    accept_failing: bool,
    /// A client was closed this round, so `accept` may work again.
    fd_freed: bool,
    /// SIGINT or SIGTERM arrived: exit once every client is gone, or then.
    shutdown: Option<Instant>,
}
// ANCHOR_END: server

// ANCHOR: run
fn run(args: &Args) -> Result<()> {
    raise_fd_limit()?;
    let listen_fd = listen_on(args.addr)?;
    let signal_fd = watch_signals()?;

    // epoll_create1(2): the kernel object that watches every socket for us.
    let epoll_fd = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("epoll_create1 failed")?;
    // epoll_ctl(EPOLL_CTL_ADD): the event's data is the fd, so a ready event
    // names the socket it is about.
    let listener = listen_fd.as_raw_fd();
    let interest = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, listener as u64);
    epoll_fd
        .add(&listen_fd, interest)
        .map_err(io::Error::from)
        .context("epoll_ctl ADD listener failed")?;
    let signals = signal_fd.as_raw_fd();
    epoll_fd
        .add(
            &signal_fd,
            EpollEvent::new(EpollFlags::EPOLLIN, signals as u64),
        )
        .map_err(io::Error::from)
        .context("epoll_ctl ADD signalfd failed")?;
    let local: SockaddrStorage = getsockname(listen_fd.as_raw_fd())?;
    // Scripts and tests wait for this line, so it goes out at once, and
    // only once the server is ready to serve.
    println!("listening on {local}");
    io::stdout().flush()?;

    let mut server = Server {
        args: args.clone(),
        epoll_fd,
        listen_fd,
        clients: Clients::new(args.max_queue),
        lingering: VecDeque::new(),
        unread: Vec::new(),
        unwritten: Vec::new(),
        accept_more: false,
        accept_paused: None,
        accept_failing: false,
        fd_freed: false,
        shutdown: None,
    };
    // One buffer serves every read: a client keeps only half a line.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 256];
    loop {
        // epoll_wait(2) sleeps until a socket is ready or the next deadline.
        let n = match server.epoll_fd.wait(&mut ready, server.timeout()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("epoll_wait failed"),
        };
        // Work carried over from the last round: edge-triggered epoll will
        // not report these again, so we must remember them ourselves.
        let unread = std::mem::take(&mut server.unread);
        let accept_more = std::mem::take(&mut server.accept_more);
        for event in &ready[..n] {
            let fd = event.data() as RawFd;
            if fd == listener {
                server.accept_clients()?;
            } else if fd == signals {
                if server.shut_down(&signal_fd) {
                    return Ok(()); // a second signal: do not wait any longer
                }
            } else {
                server.serve_event(fd, event.events(), &mut scratch);
            }
        }
        for fd in unread {
            server.serve(fd, &mut scratch);
        }
        if accept_more && server.shutdown.is_none() {
            server.accept_clients()?;
        }
        server.expire_lingering();
        // The one write per client per round.
        server.flush_all();
        if let Some(deadline) = server.shutdown
            && (server.clients.is_empty() || Instant::now() >= deadline)
        {
            return Ok(()); // exiting closes whatever is still open
        }
        server.retry_accept()?;
    }
}
// ANCHOR_END: run

impl Server {
    /// How long `epoll_wait` may sleep: not at all while work is carried
    /// over, otherwise until the next deadline (or for ever).
    fn timeout(&self) -> EpollTimeout {
        if self.accept_more || !self.unread.is_empty() || !self.unwritten.is_empty() {
            return EpollTimeout::ZERO;
        }
        let next = [
            self.accept_paused,
            self.lingering.front().map(|&(deadline, _, _)| deadline),
            self.shutdown,
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else {
            return EpollTimeout::NONE;
        };
        // Rounded up: waking a little early would only go round again.
        let millis = next
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000);
        EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
    }

    // ANCHOR: accept
    /// Accept until `EAGAIN`: an edge-triggered listener is reported once for
    /// a burst of connections. After `ACCEPTS_PER_ROUND` the rest waits for
    /// the next round.
    fn accept_clients(&mut self) -> Result<()> {
        for _ in 0..ACCEPTS_PER_ROUND {
            // accept4(2) sets the new socket non-blocking in the same call.
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let fd = match accept4(self.listen_fd.as_raw_fd(), flags) {
                Ok(fd) => fd,
                Err(Errno::EAGAIN) => return Ok(()), // the queue is empty
                // The client gave up before we got to it, or its network did.
                Err(
                    Errno::ECONNABORTED
                    | Errno::EINTR
                    | Errno::EPROTO
                    | Errno::EPERM
                    | Errno::ENETDOWN
                    | Errno::ENETUNREACH
                    | Errno::EHOSTUNREACH,
                ) => continue,
                // Out of descriptors (this process or the system) or memory:
                // retrying at once would fail again, so pause instead of spin.
                Err(err @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    return self.pause_accepting(err);
                }
                Err(err) => return Err(io::Error::from(err)).context("accept4 failed"),
            };
            self.accept_failing = false;
            // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
            let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if let Err(err) = self
                .epoll_fd
                .add(&client_fd, EpollEvent::new(CLIENT_EVENTS, fd as u64))
            {
                eprintln!("epoll_ctl ADD fd {fd}: {}", io::Error::from(err));
                continue; // dropping client_fd closes it
            }
            if !self.args.quiet {
                match getpeername::<SockaddrStorage>(fd) {
                    Ok(peer) => eprintln!("accepted fd {fd} from {peer}"),
                    Err(_) => eprintln!("accepted fd {fd}"), // already reset
                }
            }
            self.clients.add(client_fd);
            if self.clients.online() >= self.args.max_clients {
                self.clients.send(fd, "* error: server full");
                self.linger(fd);
                continue;
            }
            let name = self.clients.join(fd);
            let online = self.clients.online();
            let welcome = format!("* welcome {name} ({online} online)");
            self.clients.send(fd, welcome);
            // Past the limit, N clients joining would cost N² notices.
            if online <= self.args.announce_limit {
                let joined = format!("* {name} joined");
                self.clients.broadcast(joined, Some(fd));
            }
        }
        self.accept_more = true;
        Ok(())
    }

    /// Take the listener out of the interest list: until a descriptor is
    /// free, its readiness would wake the loop only to fail again.
    fn pause_accepting(&mut self, err: Errno) -> Result<()> {
        self.epoll_fd
            .delete(&self.listen_fd)
            .map_err(io::Error::from)
            .context("epoll_ctl DEL listener failed")?;
        self.accept_paused = Some(Instant::now() + ACCEPT_RETRY);
        if !self.accept_failing {
            self.accept_failing = true;
            eprintln!(
                "accept4: {}: waiting for a client to leave",
                io::Error::from(err)
            );
        }
        Ok(())
    }

    /// Put the listener back once a client closed (or after a while).
    /// `EPOLL_CTL_ADD` checks readiness at once, so connections that waited
    /// in the accept queue meanwhile are reported on the next round.
    fn retry_accept(&mut self) -> Result<()> {
        let freed = std::mem::take(&mut self.fd_freed);
        if let Some(retry) = self.accept_paused
            && (freed || Instant::now() >= retry)
            && self.shutdown.is_none()
        {
            let listener = self.listen_fd.as_raw_fd();
            let interest =
                EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, listener as u64);
            self.epoll_fd
                .add(&self.listen_fd, interest)
                .map_err(io::Error::from)
                .context("epoll_ctl ADD listener failed")?;
            self.accept_paused = None;
        }
        Ok(())
    }
    // ANCHOR_END: accept

    // ANCHOR: serve
    /// One ready event for a client. Events for a client closed earlier in
    /// the round are harmless: at worst a read finds `EAGAIN`.
    fn serve_event(&mut self, fd: RawFd, events: EpollFlags, scratch: &mut [u8]) {
        if events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
            && let Some(client) = self.clients.get_mut(fd)
        {
            // Room in the socket again: write at the end of the round.
            client.blocked = false;
            self.clients.mark_dirty(fd);
        }
        if events.intersects(
            EpollFlags::EPOLLIN
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLERR
                | EpollFlags::EPOLLHUP,
        ) {
            self.serve(fd, scratch);
        }
    }

    /// Read until `EAGAIN` or end-of-file, handling each line as it is
    /// framed. A client that still has input after `READS_PER_ROUND` reads
    /// is read again next round, so one fast sender cannot starve the rest.
    fn serve(&mut self, fd: RawFd, scratch: &mut [u8]) {
        for _ in 0..READS_PER_ROUND {
            let Some(client) = self.clients.get_mut(fd) else {
                return;
            };
            if client.read_closed {
                return;
            }
            match read(&client.fd, scratch) {
                Ok(0) => {
                    // End-of-file: the client has left, as if it had closed.
                    client.read_closed = true;
                    let was_online = self.leave(fd, "");
                    self.finish(fd); // closes it now unless it is still owed lines
                    if was_online {
                        self.linger(fd);
                    }
                    return;
                }
                Ok(n) => self.handle_input(fd, &scratch[..n]),
                Err(Errno::EAGAIN) => return, // drained: wait for the next edge
                Err(Errno::EINTR) => {}
                Err(_) => return self.close_client(fd, ""), // a reset ends only this client
            }
        }
        self.unread.push(fd);
    }
    // ANCHOR_END: serve

    // ANCHOR: input
    /// Frame what was read into lines and act on each.
    fn handle_input(&mut self, fd: RawFd, input: &[u8]) {
        let max_line = self.args.max_line;
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        if !client.online {
            return; // it has left: its input is read only to be thrown away
        }
        let mut partial = std::mem::take(&mut client.partial);
        let framed = split_lines(&mut partial, input, max_line, |text| {
            self.handle_line(fd, text)
        });
        match framed {
            Ok(_) => {
                if let Some(client) = self.clients.get_mut(fd)
                    && client.online
                {
                    client.partial = partial;
                }
            }
            Err(LineTooLong) => {
                let error = format!("* error: line too long (max {max_line} bytes)");
                self.clients.send(fd, error);
                if self.leave(fd, "") {
                    self.linger(fd);
                }
            }
        }
    }

    /// One line from the client `fd`: a command or chat for the others.
    fn handle_line(&mut self, fd: RawFd, text: &[u8]) -> ControlFlow<()> {
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        if let Some(command) = text.strip_prefix(b"/") {
            let command: Vec<u8> = command.iter().map(|&b| sanitize(b)).collect();
            return self.command(fd, &command);
        }
        self.clients.relay(fd, text);
        ControlFlow::Continue(())
    }

    /// `/nick NEW`, `/who`, `/quit`; anything else is an unknown command.
    fn command(&mut self, fd: RawFd, command: &[u8]) -> ControlFlow<()> {
        let (word, arg) = match command.iter().position(|&b| b == b' ') {
            Some(space) => (&command[..space], command[space + 1..].trim_ascii()),
            None => (command, &b""[..]),
        };
        let reply = match word {
            b"nick" => match self.clients.rename(fd, arg) {
                Ok(old) => {
                    let new = String::from_utf8_lossy(arg);
                    self.clients
                        .broadcast(format!("* {old} is now {new}"), None);
                    return ControlFlow::Continue(());
                }
                Err(NickError::Invalid) => {
                    b"* error: a name is 1-32 of the characters A-Z a-z 0-9 _ -".to_vec()
                }
                Err(NickError::Taken) => [b"* error: the name ", arg, b" is taken"].concat(),
            },
            b"who" => format!("* online: {}", self.clients.names().join(", ")).into_bytes(),
            b"quit" => {
                self.clients.send(fd, "* bye");
                if self.leave(fd, "") {
                    self.linger(fd);
                }
                return ControlFlow::Break(()); // nothing after /quit counts
            }
            _ => [b"* error: unknown command /", word].concat(),
        };
        self.clients.send(fd, reply);
        ControlFlow::Continue(())
    }
    // ANCHOR_END: input

    /// Take `fd` out of the chat and tell the others (while few enough are
    /// online). Returns whether it was in the chat.
    fn leave(&mut self, fd: RawFd, why: &str) -> bool {
        let online = self.clients.online();
        let Some(name) = self.clients.leave(fd) else {
            return false;
        };
        if online <= self.args.announce_limit {
            self.clients.broadcast(format!("* {name} left{why}"), None);
        }
        true
    }

    /// Give a client that has left `LINGER` to take its last lines and
    /// close; after that it is closed whatever its state.
    fn linger(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.get(fd) {
            let deadline = Instant::now() + LINGER;
            self.lingering.push_back((deadline, fd, client.id));
        }
    }

    fn expire_lingering(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, fd, id)) = self.lingering.front()
            && deadline <= now
        {
            self.lingering.pop_front();
            // The fd may have been closed, and reused by a newer client.
            if self.clients.get(fd).is_some_and(|c| c.id == id) {
                self.close_client(fd, "");
            }
        }
    }

    // ANCHOR: finish
    /// Close a client that has left once it is owed nothing. If it may
    /// still send, end our side first and wait for its end-of-file: closing
    /// with unread input makes the kernel send a reset, which can destroy
    /// the last line (`* bye`, the error) before the client reads it.
    fn finish(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        if client.online || !client.queue.is_empty() {
            return;
        }
        if client.read_closed {
            self.close_client(fd, "");
        } else if !client.write_closed {
            // shutdown(SHUT_WR) sends FIN after the queued bytes: the client
            // reads everything, then end-of-file, and closes its side.
            let _ = shutdown(client.fd.as_raw_fd(), Shutdown::Write);
            client.write_closed = true;
        }
    }
    // ANCHOR_END: finish

    // ANCHOR: flush
    /// Write every dirty client's queue. Closing a client can queue `left`
    /// notices for others, so this goes on until no client is dirty.
    fn flush_all(&mut self) {
        for fd in std::mem::take(&mut self.unwritten) {
            self.clients.mark_dirty(fd);
        }
        while let Some(fd) = self.clients.pop_dirty() {
            self.flush(fd);
        }
    }

    /// At most one `writev(2)` for this client this round: every queued
    /// line in one system call. `writev` has no `MSG_NOSIGNAL` flag; Rust
    /// programs start with SIGPIPE ignored, so a reset peer is `EPIPE` here.
    fn flush(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        client.dirty = false;
        // While blocked, the socket is known to be full: wait for EPOLLOUT.
        if !client.blocked && !client.queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_WRITE];
            let filled = client.queue.slices(&mut slices);
            let slices = &slices[..filled];
            let offered: usize = slices.iter().map(|s| s.len()).sum();
            let written = writev(&client.fd, slices);
            match written {
                Ok(n) => {
                    client.queue.consume(n);
                    client.blocked = n < offered; // a short write: the socket is full
                }
                Err(Errno::EAGAIN) => client.blocked = true,
                Err(Errno::EINTR) => {}
                Err(_) => return self.close_client(fd, ""),
            }
            if !client.blocked && !client.queue.is_empty() {
                self.unwritten.push(fd); // more than one writev takes
            }
        }
        if self.clients.too_slow(fd) {
            return self.close_client(fd, " (too slow)");
        }
        if let Err(err) = self.update_interest(fd) {
            eprintln!("epoll_ctl MOD fd {fd}: {}", io::Error::from(err));
            return self.close_client(fd, "");
        }
        self.finish(fd);
    }
    // ANCHOR_END: flush

    // ANCHOR: interest
    /// Ask for `EPOLLOUT` only while the socket is full: a socket with room
    /// to write is almost always writable, and would wake us for nothing.
    fn update_interest(&mut self, fd: RawFd) -> nix::Result<()> {
        let Some(client) = self.clients.get_mut(fd) else {
            return Ok(());
        };
        let want_write = client.blocked;
        if want_write == client.want_write {
            return Ok(());
        }
        let mut flags = CLIENT_EVENTS;
        if want_write {
            flags |= EpollFlags::EPOLLOUT;
        }
        self.epoll_fd
            .modify(&client.fd, &mut EpollEvent::new(flags, fd as u64))?;
        client.want_write = want_write;
        Ok(())
    }
    // ANCHOR_END: interest

    // ANCHOR: close
    /// `EPOLL_CTL_DEL` before `close(2)`: the interest list forgets the
    /// socket while its descriptor number is still ours.
    fn close_client(&mut self, fd: RawFd, why: &str) {
        self.leave(fd, why);
        if let Some(client) = self.clients.remove(fd) {
            let _ = self.epoll_fd.delete(&client.fd);
            drop(client); // close(2)
            self.fd_freed = true;
            if !self.args.quiet {
                eprintln!("closed fd {fd}");
            }
        }
    }
    // ANCHOR_END: close

    // ANCHOR: shutdown
    /// SIGINT or SIGTERM: stop accepting, tell everyone, and let the main
    /// loop flush (bounded by `SHUTDOWN_FLUSH`). Returns true on a second
    /// signal, which ends the server at once.
    fn shut_down(&mut self, signal_fd: &SignalFd) -> bool {
        // Reading the signalfd consumes the signal.
        let signal = match signal_fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => return false,
        };
        if self.shutdown.is_some() {
            return true;
        }
        if !self.args.quiet
            && let Some(signal) = signal
        {
            eprintln!("{signal}: shutting down");
        }
        self.shutdown = Some(Instant::now() + SHUTDOWN_FLUSH);
        if self.accept_paused.take().is_none() {
            let _ = self.epoll_fd.delete(&self.listen_fd);
        }
        self.clients.broadcast("* server shutting down", None);
        for fd in self.clients.online_fds() {
            // Out of the chat without a `left` notice: everyone is leaving.
            self.clients.leave(fd);
        }
        false
    }
    // ANCHOR_END: shutdown
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::os::fd::AsFd;

    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::socket::{SockaddrIn, getsockopt};

    use super::*;

    /// The server sets `TCP_NODELAY` once, on the listener, and relies on
    /// Linux copying it to every accepted socket.
    #[test]
    fn accepted_sockets_inherit_tcp_nodelay() {
        let listen_fd = listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
        let local: SockaddrIn = getsockname(listen_fd.as_raw_fd()).unwrap();
        let _client = TcpStream::connect(SocketAddr::from(std::net::SocketAddrV4::from(local)))
            .expect("connect to the listener");
        // The listener is non-blocking: wait (at most 5 s) until the
        // connection is in the accept queue.
        let mut ready = [PollFd::new(listen_fd.as_fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut ready, PollTimeout::from(5000u16)), Ok(1));
        let fd = accept4(listen_fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap();
        // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
        let client_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        assert!(getsockopt(&client_fd, sockopt::TcpNoDelay).unwrap());
    }
}
