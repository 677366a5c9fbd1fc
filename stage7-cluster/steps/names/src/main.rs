//! Stage 7e: several chat servers as one chat, with names for all of it.
//!
//! Without `--redis` this is stage 5's server. With `--redis HOST:PORT` it
//! is one node of a cluster: its clients' lines and notices go to a Redis
//! stream, kept until Redis confirms them, the other nodes' come from it,
//! and names are claimed in Redis, unique across every node.
//! Redis is two more sockets and a timer in the same epoll set
//! (`src/cluster.rs`); the loop never waits for it. With `--reuseport`
//! several nodes on one machine share one listening port.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
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
use nix::unistd::read;

use stage7e_names::clients::{Client, Clients, Phase, Why};
use stage7e_names::cluster::{self, Cluster, Done};
use stage7e_names::framer::{LineTooLong, split_lines};
use stage7e_names::sanitize::sanitize;

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// What `/help` sends: the commands, one short line each.
const HELP: [&str; 4] = [
    "* /nick NAME  take the name NAME (1-32 of A-Z a-z 0-9 _ -)",
    "* /who        list who is online",
    "* /help       this list",
    "* /quit       leave the chat",
];

const USAGE: &str = "\
usage: stage7e-names [-q] [--max-clients N] [--max-queue BYTES] [--max-line BYTES]
                      [--announce-limit N] [--redis HOST:PORT] [--reuseport] [ADDR]

An edge-triggered epoll chat server: every line a client sends goes to
every other client, on this server and, with --redis, on every server
joined through the same Redis.

  ADDR                  HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-clients N       clients in the chat at once; the next is told the server is full (default 100000)
  --max-queue BYTES     output owed to one client before it is dropped as too slow (default 1048576)
  --max-line BYTES      longest line a client may send (default 4096)
  --announce-limit N    send join/leave notices only while at most N clients are online (default 1000)
  --redis HOST:PORT     join the cluster of the servers that use this Redis
  --reuseport           share the port with other servers (SO_REUSEPORT)
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
/// The event data of the listener and the `signalfd`: a client's is its
/// fd, which is never this large.
const LISTENER: u64 = u64::MAX;
const SIGNALS: u64 = u64::MAX - 1;
/// What the listener is registered for.
const LISTENER_EVENTS: EpollFlags = EpollFlags::EPOLLIN.union(EpollFlags::EPOLLET);
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
    /// Redis, for a node of a cluster.
    redis: Option<SocketAddr>,
    reuseport: bool,
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
        max_clients: 100_000,
        max_queue: 1 << 20,
        max_line: 4096,
        announce_limit: 1000,
        redis: None,
        reuseport: false,
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
            "--reuseport" => args.reuseport = true,
            // A host name is resolved once, here.
            "--redis" => match argv
                .next()
                .map(|a| a.to_socket_addrs().map(|mut a| a.next()))
            {
                Some(Ok(Some(addr))) => args.redis = Some(addr),
                _ => usage_error("--redis needs HOST:PORT"),
            },
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
fn listen_on(addr: SocketAddr, reuseport: bool) -> Result<OwnedFd> {
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
    // Several sockets bound to one port, each with its own accept queue:
    // the kernel spreads new connections over them by a hash of the peer.
    if reuseport {
        setsockopt(&listen_fd, sockopt::ReusePort, &true)
            .map_err(io::Error::from)
            .context("cannot set SO_REUSEPORT")?;
    }
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
    /// In the interest list, and its queue was empty at the last look.
    Open,
    /// In the interest list, with connections left in its queue after the
    /// round's share: no new edge will report them, so accept next round.
    Backlogged,
    /// Out of descriptors: out of the interest list until a client closes,
    /// or until `until`.
    Paused { until: Instant },
    /// Shutting down: out of the interest list for good.
    Closed,
}

/// Everything the event loop keeps between rounds.
struct Server {
    args: Args,
    epoll: Epoll,
    listen_fd: OwnedFd,
    accepting: Accepting,
    /// The error last logged for `accept4`, so a shortage is logged once.
    accept_error: Option<Errno>,
    clients: Clients,
    /// Clients whose reads stopped before `EAGAIN`: read again next round.
    unread: Vec<RawFd>,
    /// When clients that are leaving are closed whatever happens, oldest
    /// first.
    deadlines: VecDeque<(Instant, RawFd)>,
    /// SIGINT or SIGTERM arrived: exit once every client is gone, or then.
    shutdown: Option<Instant>,
    /// This node's part in a cluster, with `--redis`.
    cluster: Option<Cluster>,
}

fn run(args: &Args) -> Result<()> {
    raise_fd_limit()?;
    let listen_fd = listen_on(args.addr, args.reuseport)?;
    let signal_fd = watch_signals()?;
    // epoll_create1(2): the kernel object that watches every socket for us.
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(io::Error::from)
        .context("epoll_create1 failed")?;
    // epoll_ctl(EPOLL_CTL_ADD): the event's data says which descriptor a
    // ready event is about: a token for these two, the fd for a client.
    epoll
        .add(&listen_fd, EpollEvent::new(LISTENER_EVENTS, LISTENER))
        .map_err(io::Error::from)
        .context("epoll_ctl ADD listener failed")?;
    epoll
        .add(&signal_fd, EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))
        .map_err(io::Error::from)
        .context("epoll_ctl ADD signalfd failed")?;
    let local: SockaddrStorage =
        getsockname(listen_fd.as_raw_fd()).context("cannot read the bound address")?;
    // Scripts and tests wait for this line, so it goes out at once, and
    // only once the server is ready to serve.
    writeln!(io::stdout(), "listening on {local}").context("cannot write to stdout")?;
    io::stdout().flush().context("cannot write to stdout")?;

    let mut server = Server::new(args.clone(), epoll, listen_fd);
    if let Some(redis) = args.redis {
        let cluster = Cluster::new(redis, &server.epoll, args.quiet)
            .context("cannot set up the cluster's timer")?;
        server.cluster = Some(cluster);
    }
    // One buffer serves every read: a client keeps only half a line.
    let mut scratch = vec![0u8; 64 * 1024];
    let mut ready = [EpollEvent::empty(); 256];
    loop {
        // epoll_wait(2) sleeps until a socket is ready or the next deadline.
        let n = match server.epoll.wait(&mut ready, server.timeout()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(io::Error::from(err)).context("epoll_wait failed"),
        };
        // Work carried over from the last round: edge-triggered epoll will
        // not report it again, so we must remember it ourselves.
        let unread = std::mem::take(&mut server.unread);
        let backlogged = server.accepting == Accepting::Backlogged;
        for event in &ready[..n] {
            match event.data() {
                LISTENER => server.accept_clients(),
                SIGNALS => {
                    if server.shut_down(&signal_fd) {
                        return Ok(()); // a second signal: do not wait any longer
                    }
                }
                token @ (cluster::COMMANDS | cluster::READER | cluster::TIMER) => {
                    server.cluster_event(token, event.events(), &mut scratch)
                }
                fd => server.serve_event(fd as RawFd, event.events(), &mut scratch),
            }
        }
        for fd in unread {
            server.serve(fd, &mut scratch);
        }
        if backlogged {
            server.accept_clients();
        }
        server.expire_deadlines();
        // The one write per client per round, and Redis's.
        server.flush_all();
        if server.cluster.is_some() {
            server.flush_cluster();
            server.flush_all(); // a lost Redis is told at once
        }
        if server.is_done() {
            return Ok(()); // exiting closes whatever is still open
        }
    }
}

impl Server {
    fn new(args: Args, epoll: Epoll, listen_fd: OwnedFd) -> Server {
        Server {
            clients: Clients::new(args.max_queue),
            args,
            epoll,
            listen_fd,
            accepting: Accepting::Open,
            accept_error: None,
            unread: Vec::new(),
            deadlines: VecDeque::new(),
            shutdown: None,
            cluster: None,
        }
    }

    /// How long `epoll_wait` may sleep: not at all while work is carried
    /// over, otherwise until the next deadline (or for ever).
    fn timeout(&self) -> EpollTimeout {
        if !self.unread.is_empty() || self.accepting == Accepting::Backlogged {
            return EpollTimeout::ZERO;
        }
        let retry = match self.accepting {
            Accepting::Paused { until } => Some(until),
            _ => None,
        };
        let next = [
            retry,
            self.deadlines.front().map(|&(at, _)| at),
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

    /// After a shutdown, once everyone is gone or its time is up. Also the
    /// end of every round's bookkeeping: a paused listener whose retry is
    /// due goes back in the interest list.
    fn is_done(&mut self) -> bool {
        if let Some(deadline) = self.shutdown {
            let drained = self.cluster.as_ref().is_none_or(Cluster::is_drained);
            return (self.clients.is_empty() && drained) || Instant::now() >= deadline;
        }
        if let Accepting::Paused { until } = self.accepting
            && Instant::now() >= until
        {
            self.resume_accepting();
        }
        false
    }

    /// Accept until `EAGAIN`: an edge-triggered listener is reported once for
    /// a burst of connections. After `ACCEPTS_PER_ROUND` the rest waits for
    /// the next round.
    fn accept_clients(&mut self) {
        if matches!(self.accepting, Accepting::Paused { .. } | Accepting::Closed) {
            return; // a stale event from before the listener left the interest list
        }
        for _ in 0..ACCEPTS_PER_ROUND {
            // accept4(2) sets the new socket non-blocking in the same call.
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let fd = match accept4(self.listen_fd.as_raw_fd(), flags) {
                Ok(fd) => fd,
                Err(Errno::EAGAIN) => {
                    self.accepting = Accepting::Open; // the queue is empty
                    return;
                }
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
                // Out of descriptors (EMFILE, ENFILE) or memory, or anything
                // else: retrying at once would fail again, so pause instead
                // of spinning, and never exit for it.
                Err(err) => return self.pause_accepting(err),
            };
            self.accept_error = None;
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
        self.accepting = Accepting::Backlogged;
    }

    /// A new connection joins the chat, or is told the server is full.
    fn admit(&mut self, client_fd: OwnedFd) {
        let waiting = self.cluster.as_ref().map_or(0, Cluster::waiting);
        if self.clients.online_count() + waiting >= self.args.max_clients {
            let deadline = Instant::now() + LINGER;
            let fd = self.clients.refuse(client_fd, Why::ServerFull, deadline);
            self.deadlines.push_back((deadline, fd));
            self.clients.queue_line(fd, "* error: server full");
            return;
        }
        if let Some(cluster) = &mut self.cluster {
            // It waits, out of the chat, for a name from Redis.
            return cluster.join(client_fd);
        }
        let (fd, name) = self.clients.join(client_fd);
        self.welcome(fd, &name);
    }

    /// Greet a client that has just joined, and tell the others; returns
    /// whether they were told.
    fn welcome(&mut self, fd: RawFd, name: &str) -> bool {
        let online = self.clients.online_count();
        let welcome = format!("* welcome {name} ({online} online); /help lists the commands");
        self.clients.queue_line(fd, welcome);
        // Past the limit, N clients joining would cost N² notices.
        let announce = online <= self.args.announce_limit;
        if announce {
            self.clients.broadcast(format!("* {name} joined"), Some(fd));
        }
        announce
    }

    /// Take the listener out of the interest list: until a descriptor is
    /// free, its readiness would wake the loop only to fail again.
    fn pause_accepting(&mut self, err: Errno) {
        if let Err(del) = self.epoll.delete(&self.listen_fd) {
            self.log(format_args!(
                "epoll_ctl DEL listener: {}",
                io::Error::from(del)
            ));
        }
        self.accepting = Accepting::Paused {
            until: Instant::now() + ACCEPT_RETRY,
        };
        if self.accept_error != Some(err) {
            self.accept_error = Some(err);
            self.log(format_args!(
                "accept4: {}: waiting for a client to leave",
                io::Error::from(err)
            ));
        }
    }

    /// Put a paused listener back, once a client closed (or after a while).
    /// `EPOLL_CTL_ADD` checks readiness at once, so connections that waited
    /// in the accept queue meanwhile are reported on the next round.
    fn resume_accepting(&mut self) {
        if !matches!(self.accepting, Accepting::Paused { .. }) {
            return;
        }
        let interest = EpollEvent::new(LISTENER_EVENTS, LISTENER);
        match self.epoll.add(&self.listen_fd, interest) {
            Ok(()) => self.accepting = Accepting::Open,
            Err(err) => {
                self.log(format_args!(
                    "epoll_ctl ADD listener: {}",
                    io::Error::from(err)
                ));
                self.accepting = Accepting::Paused {
                    until: Instant::now() + ACCEPT_RETRY,
                };
            }
        }
    }

    /// One ready event for a client. Events for a client closed earlier in
    /// the round are harmless: at worst a read finds `EAGAIN`.
    fn serve_event(&mut self, fd: RawFd, events: EpollFlags, scratch: &mut [u8]) {
        if events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
            && let Some(client) = self.clients.get_mut(fd)
        {
            // Room in the socket again: write at the end of the round.
            client.freed();
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
        if self.cluster.as_ref().is_some_and(|c| c.holds(fd)) {
            return; // its /nick waits for Redis: it is read after the answer
        }
        for _ in 0..READS_PER_ROUND {
            let Some(client) = self.clients.get_mut(fd) else {
                return;
            };
            match read(client.fd(), scratch) {
                Ok(0) => return self.end_of_file(fd),
                Ok(n) => self.handle_input(fd, &scratch[..n]),
                Err(Errno::EAGAIN) => return, // drained: wait for the next edge
                Err(Errno::EINTR) => {}
                Err(err) => return self.end(fd, Why::Error(err)),
            }
        }
        self.unread.push(fd);
    }

    /// `read` returned 0: the client sends no more.
    fn end_of_file(&mut self, fd: RawFd) {
        match self.clients.get(fd).map(Client::phase) {
            Some(Phase::Online) => self.end(fd, Why::EndOfFile),
            // Its end-of-file after ours: the receive buffer is empty, so
            // `close` sends no reset.
            Some(Phase::Closing { .. }) => self.close(fd),
            // Still owed lines: sent, then our end-of-file wakes us again.
            Some(Phase::Leaving { .. }) | None => {}
        }
    }

    /// Frame what was read into lines and act on each.
    fn handle_input(&mut self, fd: RawFd, input: &[u8]) {
        let max_line = self.args.max_line;
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        if client.phase() != Phase::Online {
            return; // it has left: its input is read only to be thrown away
        }
        let mut partial = client.take_partial();
        let framed = split_lines(&mut partial, input, max_line, |text| {
            self.handle_line(fd, text)
        });
        match framed {
            Ok(_) => {
                // After held lines, it is handled after the answer too.
                let held = self
                    .cluster
                    .as_mut()
                    .is_some_and(|c| c.hold(fd, &[&partial]));
                if !held && let Some(client) = self.clients.get_mut(fd) {
                    client.keep_partial(partial);
                }
            }
            Err(LineTooLong) => {
                let error = format!("* error: line too long (max {max_line} bytes)");
                self.clients.queue_line(fd, error);
                self.end(fd, Why::LineTooLong);
            }
        }
    }

    /// One line from the client `fd`: a command or chat for the others.
    fn handle_line(&mut self, fd: RawFd, text: &[u8]) -> ControlFlow<()> {
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        if self
            .cluster
            .as_mut()
            .is_some_and(|c| c.hold(fd, &[text, b"\n"]))
        {
            return ControlFlow::Continue(());
        }
        if let Some(command) = text.strip_prefix(b"/") {
            let mut clean = Vec::with_capacity(command.len());
            sanitize(command, &mut clean);
            return self.command(fd, &clean);
        }
        self.clients.relay(fd, text);
        if let Some(cluster) = &mut self.cluster
            && let Some(client) = self.clients.get(fd)
            && !cluster.relay(client.name(), text)
        {
            let error = "* error: out of contact too long: the other servers miss this line";
            self.clients.queue_line(fd, error);
        }
        ControlFlow::Continue(())
    }

    /// `/nick NEW`, `/who`, `/help`, `/quit`; anything else is an unknown
    /// command.
    fn command(&mut self, fd: RawFd, command: &[u8]) -> ControlFlow<()> {
        let (word, arg) = match command.iter().position(|&b| b == b' ') {
            Some(space) => (&command[..space], command[space + 1..].trim_ascii()),
            None => (command, &b""[..]),
        };
        let reply = match word {
            b"nick" | b"who" if self.cluster.is_some() => {
                match self.cluster_wait(fd, (word == b"nick").then_some(arg)) {
                    Ok(()) => return ControlFlow::Continue(()), // it waits for Redis
                    Err(reply) => reply,
                }
            }
            b"nick" => match self.clients.rename(fd, arg) {
                Ok(old) => {
                    let new = String::from_utf8_lossy(arg);
                    self.clients
                        .broadcast(format!("* {old} is now {new}"), None);
                    return ControlFlow::Continue(());
                }
                Err(err) => err.reply(arg),
            },
            b"who" => format!("* online: {}", self.clients.names().join(", ")).into_bytes(),
            b"help" => {
                for line in HELP {
                    self.clients.queue_line(fd, line);
                }
                return ControlFlow::Continue(());
            }
            b"quit" => {
                self.clients.queue_line(fd, "* bye");
                self.end(fd, Why::Quit);
                return ControlFlow::Break(()); // nothing after /quit counts
            }
            _ => [
                b"* error: unknown command /",
                word,
                b" (/help lists the commands)",
            ]
            .concat(),
        };
        self.clients.queue_line(fd, reply);
        ControlFlow::Continue(())
    }

    /// The one way a client ends: out of the chat, the others told why
    /// (while few enough are online), and closed now if it is owed nothing
    /// more, or else once what it is owed is written (or at a deadline).
    fn end(&mut self, fd: RawFd, why: Why) {
        let online = self.clients.online_count();
        let deadline = Instant::now() + LINGER;
        let left = self.clients.leave(fd, why, deadline);
        let notice = left
            .as_ref()
            .and_then(|name| why.notice(name))
            .filter(|_| online <= self.args.announce_limit);
        if let Some(notice) = &notice {
            self.clients.broadcast(notice, None);
        }
        if let Some(cluster) = &mut self.cluster
            && let Some(name) = &left
            && let Some(client) = self.clients.get(fd)
        {
            // A server shutting down leaves the others' clients in the
            // chat: they are told its clients left.
            let notice = notice.or_else(|| Why::EndOfFile.notice(name));
            cluster.left(fd, client.id(), name, notice);
        }
        if !why.owes_output() {
            return self.close(fd);
        }
        self.finish(fd);
        if left.is_some() && self.clients.get(fd).is_some() {
            self.deadlines.push_back((deadline, fd)); // not closed yet: by then
        }
    }

    /// Close a client that has left once it is owed nothing. If it may
    /// still send, end our side first and wait for its end-of-file: closing
    /// with unread input makes the kernel send a reset, which can destroy
    /// the last line (`* bye`, the error) before the client reads it.
    fn finish(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get(fd) else {
            return;
        };
        let Phase::Leaving { why, .. } = client.phase() else {
            return;
        };
        if !client.is_flushed() {
            return;
        }
        if why == Why::EndOfFile {
            return self.close(fd); // it sends nothing more: no reset
        }
        // shutdown(SHUT_WR) sends FIN after the queued bytes: the client
        // reads everything, then end-of-file, and closes its side.
        if let Err(err) = shutdown(client.fd().as_raw_fd(), Shutdown::Write) {
            return self.end(fd, Why::Error(err));
        }
        self.clients.closing(fd);
    }

    /// Close the clients whose time to leave is up.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, fd)) = self.deadlines.front()
            && deadline <= now
        {
            self.deadlines.pop_front();
            // The fd may have been closed, and reused by a newer client.
            if let Some(client) = self.clients.get(fd)
                && let Phase::Leaving { deadline: at, .. } | Phase::Closing { deadline: at, .. } =
                    client.phase()
                && at <= now
            {
                self.close(fd);
            }
        }
    }

    /// `EPOLL_CTL_DEL` before `close(2)`: the interest list forgets the
    /// socket while its descriptor number is still ours. A free descriptor
    /// lets a paused listener accept again.
    fn close(&mut self, fd: RawFd) {
        let Some(client) = self.clients.remove(fd) else {
            return;
        };
        let _ = self.epoll.delete(client.fd());
        if let Phase::Leaving { why, .. } | Phase::Closing { why, .. } = client.phase() {
            self.log(format_args!("closed fd {fd} ({why})"));
        }
        drop(client); // close(2)
        self.resume_accepting();
    }

    /// Write every dirty client's queue. Closing a client can queue `left`
    /// notices for others, so this goes on until no client is dirty.
    fn flush_all(&mut self) {
        while let Some(fd) = self.clients.pop_dirty() {
            self.flush(fd);
        }
    }

    /// One client's write this round, then whatever it changed: `EPOLLOUT`
    /// in or out of the interest list, a drop for being too slow, or the
    /// close of a client that has left and is owed nothing more.
    fn flush(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        let registered = client.wants_epollout();
        if let Err(err) = client.write() {
            return self.end(fd, Why::Error(err));
        }
        // Ask for EPOLLOUT only while the socket is full, so the interest
        // list shows who is waiting to write (the checks read it).
        if client.wants_epollout() != registered {
            let mut flags = CLIENT_EVENTS;
            if client.wants_epollout() {
                flags |= EpollFlags::EPOLLOUT;
            }
            let interest = &mut EpollEvent::new(flags, fd as u64);
            if let Err(err) = self.epoll.modify(client.fd(), interest) {
                return self.end(fd, Why::Error(err));
            }
        }
        if self.clients.too_slow(fd) {
            return self.end(fd, Why::TooSlow);
        }
        self.finish(fd);
    }

    /// An event on Redis's sockets or the cluster's timer, and what the
    /// answers let the server do.
    fn cluster_event(&mut self, token: u64, events: EpollFlags, scratch: &mut [u8]) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let mut done = Vec::new();
        cluster.ready(
            token,
            events,
            &self.epoll,
            &mut self.clients,
            scratch,
            &mut done,
        );
        self.carry_out(done);
    }

    /// What Redis's answers let the server do.
    fn carry_out(&mut self, done: Vec<Done>) {
        if done.is_empty() {
            return;
        }
        for done in done {
            match done {
                Done::Join { fd, number } => {
                    let name = format!("client{number}").into();
                    let (fd, name) = self.clients.join_as(fd, name, Some(number));
                    if self.welcome(fd, &name)
                        && let Some(cluster) = &mut self.cluster
                    {
                        cluster.joined(&name);
                    }
                    if self.shutdown.is_some() {
                        // Its name came after SIGTERM: it leaves with the rest.
                        self.clients.queue_line(fd, "* server shutting down");
                        self.end(fd, Why::Shutdown);
                        continue;
                    }
                    // Its input may have come while it waited: no new edge
                    // would report it.
                    self.unread.push(fd);
                }
                Done::Resume { fd, input } => {
                    self.handle_input(fd, &input);
                    self.unread.push(fd);
                }
                Done::Refuse { fd, line } => {
                    let deadline = Instant::now() + LINGER;
                    let why = Why::Cluster("no name from the cluster");
                    let fd = self.clients.refuse(fd, why, deadline);
                    self.deadlines.push_back((deadline, fd));
                    self.clients.queue_line(fd, line);
                }
            }
        }
        // The joins to Redis now, before the welcomes go out at the end of
        // the round: a client that knows it is in is in the stream too.
        self.flush_cluster();
    }

    /// Write what the cluster queued for Redis; a connection lost on the
    /// way is told to the clients.
    fn flush_cluster(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let mut done = Vec::new();
        cluster.flush(&self.epoll, &mut self.clients, &mut done);
        self.carry_out(done);
    }

    /// `/nick` or `/who` in a cluster: the client waits for Redis, for the
    /// claim of a name checked here first, or for every name.
    fn cluster_wait(&mut self, fd: RawFd, nick: Option<&[u8]>) -> Result<(), Vec<u8>> {
        let Some(cluster) = &mut self.cluster else {
            return Ok(());
        };
        // Checked here first: a name a local client has needs no round trip.
        let check = |arg| self.clients.check_name(arg).map_err(|err| err.reply(arg));
        let name = nick.map(check).transpose()?;
        let number = self.clients.get(fd).map_or(0, Client::id);
        cluster
            .wait(fd, number, name)
            .map_err(|e| e.as_bytes().to_vec())
    }

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
        if let Some(signal) = signal {
            self.log(format_args!("{signal}: shutting down"));
        }
        self.shutdown = Some(Instant::now() + SHUTDOWN_FLUSH);
        if !matches!(self.accepting, Accepting::Paused { .. }) {
            let _ = self.epoll.delete(&self.listen_fd);
        }
        self.accepting = Accepting::Closed;
        self.clients.broadcast("* server shutting down", None);
        for fd in self.clients.online_fds() {
            self.end(fd, Why::Shutdown); // no `left` notice: everyone is leaving
        }
        false
    }

    /// One line of the connection log on stderr, unless `-q`.
    fn log(&self, line: std::fmt::Arguments<'_>) {
        if !self.args.quiet {
            log!("{line}");
        }
    }
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
        let listen_fd = listen_on("127.0.0.1:0".parse().unwrap(), false).unwrap();
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

    /// With `--reuseport` a second server binds the port the first one
    /// listens on; without it, the port is in use.
    #[test]
    fn reuseport_lets_two_listeners_share_a_port() {
        let first = listen_on("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let local: SockaddrIn = getsockname(first.as_raw_fd()).unwrap();
        let addr = SocketAddr::from(std::net::SocketAddrV4::from(local));
        assert!(listen_on(addr, true).is_ok());
        let err = listen_on(addr, false).unwrap_err();
        assert!(
            format!("{err:#}").contains("Address already in use"),
            "{err:#}"
        );
    }
}
