//! `tester chat`: `--clients` connections to a chat server, each sending
//! `--messages` lines at `--rate` lines per second in total. Every line
//! carries a token, `~t:SENDER:SEQ:NANOS~`, found anywhere in a received
//! line (so `client3: hello ~t:..~` from any line-relaying server works).
//! Each receiver checks it got every other client's lines exactly once and
//! in order, and the send time in the token gives the delivery latency.
//!
//! A run has three phases: connect every client (and wait for each one's
//! first line from the server), sync (client 1's sync line has reached
//! everyone, so the server relays to all of them), then send and check until
//! every line arrived or none has for `--drain-timeout`. The first two, and
//! the check, belong to `Group`, which `chaos` shares.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use memchr::{memchr, memmem};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use serde_json::json;

use crate::cli::{ChatArgs, addr_list, show_addrs, show_duration};
use crate::net::{self, Deadlines, Errors, Failure, ReadEnd};
use crate::report::{Latency, Outcome, Progress, duration, per_second, plural, thousands};

/// Handshakes in flight while connecting the clients.
const CONNECT_CONCURRENCY: usize = 256;
/// A line longer than this without a newline is dropped unread: no chat
/// server relays such a thing, and the buffer must stay bounded.
const MAX_LINE: usize = 64 * 1024;
/// Below this share of the requested rate, the summary says it was not met.
const RATE_TOLERANCE: f64 = 0.9;
/// With --rate 0, the most bytes of lines in flight one receiver may be owed:
/// far below the 1 MiB after which the chat servers drop a slow client.
const MAX_OWED: usize = 256 * 1024;
/// The bytes one relayed line is counted as for `MAX_OWED`: ours are under
/// 50, and a server may put a name before them.
const LINE_BUDGET: usize = 80;

#[derive(PartialEq)]
enum State {
    Connecting,
    /// Connected, waiting for the server's first line.
    Greeting,
    Ready,
    /// Could not connect, or was never greeted: counted in `Group::errors`,
    /// neither a sender nor a receiver of the check.
    Failed,
}

struct Client {
    /// 1-based; the SENDER in tokens.
    id: u32,
    fd: Option<OwnedFd>,
    state: State,
    /// The address it connects to: the run's addresses in turn.
    target: SocketAddr,
    /// Bytes not yet taken by the socket.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes received after the last newline.
    partial: Vec<u8>,
    /// Lines this client has sent (its last SEQ).
    sent: u32,
    /// Per sender (index id-1): the highest SEQ received from it; at this
    /// client's own index, the lines it sent (it has seen its own lines).
    highest: Vec<u32>,
    /// Distinct lines of other clients received.
    got: u64,
    /// Has received the sync line (see `Group::connect`).
    synced: bool,
    /// Server notices received (lines starting `* `), not checked.
    notices: u64,
}

/// How a line goes on the wire.
enum Framing {
    /// The line and a newline: the workbook's chat servers, and any server
    /// that relays lines.
    Lines,
    /// Redis pub/sub: each client sends `HELLO 3` and `SUBSCRIBE CHANNEL`
    /// first, then each line as `PUBLISH CHANNEL LINE`. What comes back
    /// is RESP3: the line is one line of a push frame, found like any other
    /// (the frame's other lines carry no token), and a publisher gets its
    /// own lines too, which the check leaves out.
    Publish(String),
}

impl Framing {
    /// What a client sends once connected, before its first line: the
    /// `--hello` line, or for pub/sub `HELLO 3` and the subscription.
    fn open(&self, out: &mut Vec<u8>, hello: Option<&str>) {
        match self {
            Framing::Lines => {
                if let Some(hello) = hello {
                    self.push(out, hello.as_bytes());
                }
            }
            Framing::Publish(channel) => {
                resp_command(out, &[b"HELLO", b"3"]);
                resp_command(out, &[b"SUBSCRIBE", channel.as_bytes()]);
            }
        }
    }

    /// Append `line`, without its newline, to `out`, framed.
    fn push(&self, out: &mut Vec<u8>, line: &[u8]) {
        match self {
            Framing::Lines => {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
            Framing::Publish(channel) => {
                resp_command(out, &[b"PUBLISH", channel.as_bytes(), line]);
            }
        }
    }
}

/// A command as a RESP array of bulk strings: `*2\r\n$5\r\nHELLO\r\n...`.
fn resp_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing to a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The line the first client repeats until every other client has received it.
const SYNC: &[u8] = b"~sync~";
/// How often it is repeated.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// One receiver's view of one sender's lines, kept only once a gap opened:
/// the sequence numbers skipped so far, that may still arrive late.
type Gaps = HashMap<(u32, u32), BTreeSet<u32>>;

/// The verdict: counts and the first example of each fault.
#[derive(Default)]
struct Check {
    duplicated: u64,
    reordered: u64,
    lost: u64,
    first_duplicate: Option<String>,
    first_reorder: Option<String>,
    first_loss: Option<String>,
    /// Clients the server disconnected during the run.
    dropped: Vec<u32>,
    /// Lines with a token that names no client or sequence of this run.
    foreign: u64,
}

/// How a group of checked clients connects.
pub struct Setup<'a> {
    pub targets: &'a [SocketAddr],
    pub clients: u32,
    /// The most lines any client will send: a token with a higher SEQ is
    /// foreign.
    pub max_seq: u32,
    pub hello: Option<&'a str>,
    /// Speak Redis pub/sub on this channel instead of lines.
    pub publish: Option<&'a str>,
    pub greeting: bool,
    pub timeout: Duration,
}

// ANCHOR: group
/// Chat clients whose every received line is checked: each line they send
/// carries a token, and each receiver checks that it got every other
/// client's lines exactly once and in order. `chat` is one such group
/// driven as fast as asked; `chaos` runs one among misbehaving clients.
/// Their epoll tokens are their indexes, `0..clients`.
pub struct Group {
    clients: Vec<Client>,
    gaps: Gaps,
    check: Check,
    pub latency: Latency,
    /// Clients that could not connect (or were never greeted), by kind.
    pub errors: Errors,
    max_seq: u32,
    framing: Framing,
    buf: Vec<u8>,
    tokens: Vec<(u32, u32, u64)>,
    /// Lines sent, and first deliveries, over all clients.
    pub sent: u64,
    pub delivered: u64,
    pub last_delivery: Instant,
    /// From the first connect until every client was in the chat.
    pub connected_in: Duration,
}
// ANCHOR_END: group

impl Group {
    /// Connect every client (and wait for each one's first line from the
    /// server), then sync: every client is in the chat before any counted
    /// line is sent. A client that cannot connect is counted in `errors`
    /// and left out; fewer than two left is an error for the whole run.
    pub fn connect(epoll: &Epoll, setup: &Setup) -> Result<Group> {
        let count = setup.clients as usize;
        let limit = net::raise_fd_limit();
        if u64::from(setup.clients) + 16 > limit {
            bail!(
                "--clients {} needs more descriptors than this process may open ({limit})",
                setup.clients
            );
        }
        let clients = (1..=setup.clients)
            .map(|id| Client {
                id,
                fd: None,
                state: State::Connecting,
                target: setup.targets[(id as usize - 1) % setup.targets.len()],
                out: Vec::new(),
                out_sent: 0,
                partial: Vec::new(),
                sent: 0,
                highest: vec![0; count],
                got: 0,
                synced: false,
                notices: 0,
            })
            .collect();
        let mut group = Group {
            clients,
            gaps: Gaps::new(),
            check: Check::default(),
            latency: Latency::default(),
            errors: Errors::default(),
            max_seq: setup.max_seq,
            framing: setup
                .publish
                .map_or(Framing::Lines, |c| Framing::Publish(c.into())),
            buf: vec![0u8; 64 * 1024],
            tokens: Vec::new(),
            sent: 0,
            delivered: 0,
            last_delivery: Instant::now(),
            connected_in: Duration::ZERO,
        };
        let start = Instant::now();
        group.connect_all(epoll, setup)?;
        group.sync(epoll, setup.timeout)?;
        group.connected_in = start.elapsed();
        group.last_delivery = Instant::now();
        Ok(group)
    }

    /// Phase 1: connect every client and wait for its greeting before any
    /// line is sent, so that no line goes out before its receivers exist.
    fn connect_all(&mut self, epoll: &Epoll, setup: &Setup) -> Result<()> {
        let count = self.clients.len();
        let mut ready = vec![EpollEvent::empty(); 1024];
        let mut progress = Progress::new();
        let mut deadlines = Deadlines::default();
        let (mut launched, mut connecting, mut settled) = (0usize, 0usize, 0usize);
        let mut never_greeted = 0u64;
        while settled < count {
            let now = Instant::now();
            while launched < count && connecting < CONNECT_CONCURRENCY {
                let index = launched;
                launched += 1;
                let client = &mut self.clients[index];
                // A socket that cannot be started or watched is this
                // client's failure, counted like a refused connect.
                let started = net::start_connect(client.target, None, true)
                    .and_then(|(fd, _)| {
                        net::watch(epoll, &fd, net::INTEREST, index as u64)?;
                        Ok(fd)
                    })
                    .map_err(Failure::Os);
                match started {
                    Ok(fd) => {
                        client.fd = Some(fd);
                        deadlines.push(now + setup.timeout, index, 0);
                        connecting += 1;
                    }
                    Err(failure) => {
                        self.errors.count_for(client.target, failure);
                        client.state = State::Failed;
                        settled += 1;
                    }
                }
            }
            let timeout = deadlines.next_in(now).unwrap_or(Duration::from_millis(200));
            let n = net::wait(epoll, &mut ready, timeout)?;
            for event in &ready[..n] {
                let index = event.data() as usize;
                let client = &mut self.clients[index];
                let mut failure = None;
                if client.state == State::Connecting {
                    if !event.events().intersects(
                        EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP,
                    ) {
                        continue;
                    }
                    let fd = client.fd.as_ref().expect("connecting client has a socket");
                    match net::connect_result(fd) {
                        Err(errno) => failure = Some(Failure::Os(errno)),
                        Ok(()) => {
                            connecting -= 1;
                            self.framing.open(&mut client.out, setup.hello);
                            if setup.greeting {
                                client.state = State::Greeting;
                                // The greeting has its own deadline, from now.
                                deadlines.push(Instant::now() + setup.timeout, index, 1);
                            } else {
                                client.state = State::Ready;
                                settled += 1;
                            }
                        }
                    }
                }
                if failure.is_none() && client.state != State::Failed {
                    match service(client, &mut self.buf, &mut self.tokens) {
                        Ok(lines) if client.state == State::Greeting && lines > 0 => {
                            client.state = State::Ready;
                            settled += 1;
                        }
                        Ok(_) => {}
                        Err(why) => failure = Some(why),
                    }
                }
                // Nobody has sent a token yet; whatever came was a notice.
                self.tokens.clear();
                if let Some(failure) = failure {
                    if client.state == State::Connecting {
                        connecting -= 1;
                    }
                    if client.state == State::Ready {
                        settled -= 1;
                    }
                    self.errors.count_for(client.target, failure);
                    fail(epoll, client);
                    settled += 1;
                }
            }
            for (index, phase) in deadlines.expired(Instant::now()) {
                let client = &mut self.clients[index];
                let expired = match (&client.state, phase) {
                    (State::Connecting, 0) => {
                        connecting -= 1;
                        true
                    }
                    (State::Greeting, 1) => {
                        never_greeted += 1;
                        true
                    }
                    _ => false,
                };
                if expired {
                    self.errors.count_for(client.target, Failure::Timeout);
                    fail(epoll, client);
                    settled += 1;
                }
            }
            progress.tick(|| format!("{settled} of {count} clients settled"));
        }
        let in_chat = self
            .clients
            .iter()
            .filter(|c| c.state == State::Ready)
            .count();
        if in_chat >= 2 {
            return Ok(());
        }
        let fallback = setup.targets[0];
        if never_greeted > 0 && self.errors.total() == never_greeted {
            bail!(
                "is {} a chat server? {} got no line from it within {} of connecting \
                 (a chat server greets; use --no-greeting for one that sends nothing first)",
                self.errors.first_target.unwrap_or(fallback),
                plural(never_greeted, "client"),
                show_duration(setup.timeout)
            );
        }
        Err(self.errors.cannot_connect(fallback))
    }

    // ANCHOR: sync
    /// Phase 2: a connected (even a greeted) client is not proof that the
    /// server relays to it yet. The first client sends a sync line, again
    /// every 100ms, until every other client has received one: then every
    /// connection has been accepted and registered, and no counted line can
    /// be lost to a late registration.
    fn sync(&mut self, epoll: &Epoll, timeout: Duration) -> Result<()> {
        let mut ready = vec![EpollEvent::empty(); 1024];
        let sync_deadline = Instant::now() + timeout;
        let mut next_sync = Instant::now();
        let first = self.live().next().expect("two clients are in the chat");
        self.clients[first].synced = true;
        loop {
            let Some(waiting) = self.live().find(|&i| !self.clients[i].synced) else {
                break;
            };
            let now = Instant::now();
            if now >= sync_deadline {
                bail!(
                    "is {} a chat server? it relayed no line from client {} to client {} within {}",
                    self.clients[waiting].target,
                    first + 1,
                    waiting + 1,
                    show_duration(timeout)
                );
            }
            if now >= next_sync {
                let syncer = &mut self.clients[first];
                self.framing.push(&mut syncer.out, SYNC);
                next_sync = now + SYNC_EVERY;
            }
            // Sending happens in service(); the first client may have no
            // event coming, so it is served before the wait.
            self.serve_sync(epoll, first)?;
            let n = net::wait(epoll, &mut ready, next_sync.saturating_duration_since(now))?;
            let woken: Vec<usize> = ready[..n].iter().map(|e| e.data() as usize).collect();
            for index in woken {
                self.serve_sync(epoll, index)?;
            }
            self.tokens.clear();
        }
        Ok(())
    }
    // ANCHOR_END: sync

    /// One client during the sync: a client the server lets go of now is
    /// disconnected (a fault), and fewer than two left ends the run.
    fn serve_sync(&mut self, epoll: &Epoll, index: usize) -> Result<()> {
        let client = &mut self.clients[index];
        if client.fd.is_none() {
            return Ok(());
        }
        if service(client, &mut self.buf, &mut self.tokens).is_err() {
            self.check.dropped.push(client.id);
            net::close(epoll, client.fd.take().expect("checked above"));
            if self.live().count() < 2 {
                bail!(
                    "the server disconnected client {} before the test began",
                    index + 1
                );
            }
        }
        Ok(())
    }

    /// The indexes of the clients still connected.
    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.clients.len()).filter(|&i| self.clients[i].fd.is_some())
    }

    /// How many clients the group has (its epoll tokens are `0..len`).
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// How many clients are still connected.
    pub fn connected(&self) -> usize {
        self.live().count()
    }

    /// The indexes of the clients that got into the chat: the senders.
    pub fn members(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| self.clients[i].state == State::Ready)
            .collect()
    }

    /// Server notices the clients received and left unchecked.
    pub fn notices(&self) -> u64 {
        self.clients.iter().map(|c| c.notices).sum()
    }

    /// How many got into the chat (connected and greeted).
    pub fn joined(&self) -> usize {
        self.clients
            .iter()
            .filter(|c| c.state == State::Ready)
            .count()
    }

    /// Has every connected client received every line sent to it?
    pub fn all_delivered(&self) -> bool {
        let expected: u64 = self
            .live()
            .map(|i| self.sent - u64::from(self.clients[i].sent))
            .sum();
        let got: u64 = self.live().map(|i| self.clients[i].got).sum();
        got >= expected
    }

    /// Queue the next `lines` lines of client `index` and send them; a
    /// client the send finds gone counts as disconnected. Returns the
    /// lines queued.
    pub fn send(&mut self, index: usize, lines: u32, epoll: &Epoll) -> u64 {
        let client = &mut self.clients[index];
        let queued = send_lines(client, lines, &self.framing, epoll, &mut self.check);
        self.sent += queued;
        queued
    }

    /// A readiness event for client `index`: send what is queued, read
    /// until `EAGAIN`, check every token. A client the server closed
    /// counts as disconnected.
    pub fn receive(&mut self, index: usize, epoll: &Epoll) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        if client.fd.is_none() {
            return;
        }
        let result = service(client, &mut self.buf, &mut self.tokens);
        let now_ns = net::monotonic_ns();
        let before = self.delivered;
        // The lines of one write share a send time, and the burst one
        // receive time: their latencies go into the histogram together.
        let mut same = (0, 0);
        for &(sender, seq, sent_ns) in &self.tokens {
            if record(
                client,
                sender,
                seq,
                self.max_seq,
                &mut self.gaps,
                &mut self.check,
            ) {
                if same.0 != sent_ns && same.1 > 0 {
                    self.latency
                        .record_ns_n(now_ns.saturating_sub(same.0), same.1);
                    same.1 = 0;
                }
                same = (sent_ns, same.1 + 1);
                self.delivered += 1;
            }
        }
        if same.1 > 0 {
            self.latency
                .record_ns_n(now_ns.saturating_sub(same.0), same.1);
        }
        // One clock read per read burst, not per line: at millions of
        // lines a second the clock would be the tester's hot spot.
        if self.delivered > before {
            self.last_delivery = Instant::now();
        }
        self.tokens.clear();
        if result.is_err() {
            self.check.dropped.push(client.id);
            net::close(epoll, client.fd.take().expect("checked above"));
        }
    }

    /// Close every client and count what never arrived.
    pub fn finish(&mut self, epoll: &Epoll) {
        for client in &mut self.clients {
            if let Some(fd) = client.fd.take() {
                net::close(epoll, fd);
            }
        }
        count_losses(&self.clients, &self.gaps, &mut self.check);
    }

    /// The deliveries expected: every line sent, at every other client
    /// that joined.
    pub fn expected(&self) -> u64 {
        self.clients
            .iter()
            .filter(|c| c.state == State::Ready)
            .map(|c| self.sent - u64::from(c.sent))
            .sum()
    }

    pub fn lost(&self) -> u64 {
        self.check.lost
    }

    pub fn duplicated(&self) -> u64 {
        self.check.duplicated
    }

    pub fn reordered(&self) -> u64 {
        self.check.reordered
    }

    /// The clients the server disconnected, by id.
    pub fn disconnected(&self) -> &[u32] {
        &self.check.dropped
    }

    /// Lines whose token named no line of this run (ignored).
    pub fn foreign(&self) -> u64 {
        self.check.foreign
    }

    /// Each fault the check found, with its first example: empty when
    /// every line reached every other client once and in order.
    pub fn faults(&self) -> Vec<String> {
        let check = &self.check;
        let mut faults = Vec::new();
        if check.lost > 0 {
            faults.push(format!(
                "lost {} ({})",
                plural(check.lost, "line"),
                check.first_loss.as_deref().unwrap_or("")
            ));
        }
        if check.duplicated > 0 {
            faults.push(format!(
                "duplicated {} ({})",
                plural(check.duplicated, "line"),
                check.first_duplicate.as_deref().unwrap_or("")
            ));
        }
        if check.reordered > 0 {
            faults.push(format!(
                "reordered {} ({})",
                plural(check.reordered, "line"),
                check.first_reorder.as_deref().unwrap_or("")
            ));
        }
        if !check.dropped.is_empty() {
            let ids: Vec<String> = check
                .dropped
                .iter()
                .map(|id| format!("client {id}"))
                .collect();
            faults.push(format!("the server disconnected {}", ids.join(", ")));
        }
        faults
    }
}

/// A client that could not connect or was never greeted: out of the run.
fn fail(epoll: &Epoll, client: &mut Client) {
    client.state = State::Failed;
    if let Some(fd) = client.fd.take() {
        net::close(epoll, fd);
    }
}

pub fn run(args: &ChatArgs) -> Result<Outcome> {
    if let Some(hello) = &args.hello
        && hello.contains('\n')
    {
        bail!("--hello must be a single line");
    }
    let epoll = net::epoll_create()?;
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut group = Group::connect(
        &epoll,
        &Setup {
            targets: &args.common.addrs,
            clients: args.clients,
            max_seq: args.messages,
            hello: args.hello.as_deref(),
            publish: args.publish.as_deref(),
            greeting: !args.no_greeting,
            timeout: args.common.timeout,
        },
    )?;
    let count = group.len();
    let mut progress = Progress::new();

    // Phase 3: send on schedule, receive and check, until every line has
    // arrived or none has arrived for --drain-timeout after the last send.
    let joined = group.joined() as u64;
    let total = joined * u64::from(args.messages);
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let send_start = Instant::now();
    // The k-th line overall goes from the k-th joined client (in turn).
    let senders: Vec<usize> = (0..count)
        .filter(|&i| group.clients[i].state == State::Ready)
        .collect();
    let mut next_line = 0u64;
    let mut last_send = send_start;
    let window = in_flight_limit(args);
    let mut slowest = vec![0u32; count];
    let mut stalled = false;
    loop {
        let now = Instant::now();
        // Send what is due. With --rate 0, each client tops up its window:
        // at most `window` of its lines not yet seen by its slowest receiver,
        // all written at once. The tester never races ahead of its own
        // receiving, and the server always has lines to relay.
        match interval {
            Some(interval) => {
                while next_line < total && send_start + interval.mul_f64(next_line as f64) <= now {
                    let index = senders[(next_line % joined) as usize];
                    next_line += 1;
                    if group.send(index, 1, &epoll) > 0 {
                        last_send = now;
                    }
                }
            }
            None => {
                slowest_receivers(&group.clients, &mut slowest);
                for (index, &seen) in slowest.iter().enumerate() {
                    let client = &group.clients[index];
                    let in_flight = client.sent.saturating_sub(seen);
                    let room = window
                        .saturating_sub(in_flight)
                        .min(args.messages - client.sent);
                    if room > 0 && group.send(index, room, &epoll) > 0 {
                        last_send = now;
                    }
                }
                next_line = group
                    .clients
                    .iter()
                    .filter(|c| c.state == State::Ready)
                    .map(|c| {
                        if c.fd.is_some() {
                            u64::from(c.sent)
                        } else {
                            u64::from(args.messages)
                        }
                    })
                    .sum();
            }
        }
        let all_sent = next_line >= total;
        let quiet_since = last_send.max(group.last_delivery);
        if all_sent {
            if group.all_delivered() || now - quiet_since >= args.drain_timeout {
                break;
            }
        } else if interval.is_none() && now - quiet_since >= args.drain_timeout {
            // Every window is full and nothing arrives: the server stopped
            // relaying, and sending more would only queue it up.
            stalled = true;
            break;
        }

        // Unpaced, every window is full after the sends above: wait for
        // lines to arrive, which is what opens them again.
        let timeout = match interval {
            Some(interval) if !all_sent => (send_start + interval.mul_f64(next_line as f64))
                .saturating_duration_since(now)
                .min(Duration::from_millis(100)),
            _ => Duration::from_millis(100),
        };
        let n = net::wait(&epoll, &mut ready, timeout)?;
        for event in &ready[..n] {
            group.receive(event.data() as usize, &epoll);
        }
        progress.tick(|| {
            format!(
                "{} lines sent, {} delivered, {} clients",
                thousands(group.sent as f64),
                thousands(group.delivered as f64),
                group.connected()
            )
        });
    }
    progress.finish();
    group.finish(&epoll);
    let send_time = last_send - send_start;
    let delivery_time = group.last_delivery.saturating_duration_since(send_start);
    report(args, window, stalled, &group, send_time, delivery_time)
}

/// The lines in flight per client with --rate 0: `--batch`, or fewer if
/// that many from every other client would owe a receiver over `MAX_OWED`.
fn in_flight_limit(args: &ChatArgs) -> u32 {
    let others = (args.clients as usize).saturating_sub(1).max(1);
    let fits = (MAX_OWED / (others * LINE_BUDGET)).max(1);
    args.batch.min(u32::try_from(fits).unwrap_or(u32::MAX))
}

/// For each sender, the highest SEQ its slowest connected receiver has
/// seen: the lines after it are still in flight.
fn slowest_receivers(clients: &[Client], slowest: &mut [u32]) {
    slowest.fill(u32::MAX);
    // Row by row, so the loop runs along each receiver's own vector; a
    // client's own entry is what it sent, which never holds it back.
    for receiver in clients.iter().filter(|c| c.fd.is_some()) {
        for (low, &seen) in slowest.iter_mut().zip(&receiver.highest) {
            *low = (*low).min(seen);
        }
    }
}

/// Queue this client's next `lines` lines (tokens all carrying the same
/// send time, since they go in one write) and try to send them. Returns
/// the number of lines queued.
fn send_lines(
    client: &mut Client,
    lines: u32,
    framing: &Framing,
    epoll: &Epoll,
    check: &mut Check,
) -> u64 {
    let Some(fd) = client.fd.take() else {
        return 0;
    };
    let now_ns = net::monotonic_ns();
    let mut line = Vec::with_capacity(64);
    for _ in 0..lines {
        client.sent += 1;
        let seq = client.sent;
        // Writing to a Vec cannot fail. The send time 16 digits wide (115
        // days of uptime fit), so the receiver reads it in two words.
        let _ = write!(line, "line {seq} ~t:{}:{seq}:{now_ns:016}~", client.id);
        framing.push(&mut client.out, &line);
        line.clear();
    }
    client.highest[client.id as usize - 1] = client.sent;
    match flush(&fd, client) {
        Ok(()) => client.fd = Some(fd),
        Err(_) => {
            check.dropped.push(client.id);
            net::close(epoll, fd);
        }
    }
    u64::from(lines)
}

/// Write the client's queued bytes until the socket is full.
fn flush(fd: &OwnedFd, client: &mut Client) -> Result<(), Errno> {
    if client.out_sent < client.out.len() {
        client.out_sent += net::send_some(fd, &client.out[client.out_sent..])?;
        if client.out_sent == client.out.len() {
            client.out.clear();
            client.out_sent = 0;
        }
    }
    Ok(())
}

/// Handle readiness on one client: send what is queued, read until EAGAIN,
/// split complete lines and collect their tokens. Returns the number of
/// complete lines, or why the connection ended.
fn service(
    client: &mut Client,
    buf: &mut [u8],
    tokens: &mut Vec<(u32, u32, u64)>,
) -> Result<usize, Failure> {
    let fd = client.fd.take().expect("service needs a socket");
    let result = service_fd(&fd, client, buf, tokens);
    client.fd = Some(fd);
    result
}

fn service_fd(
    fd: &OwnedFd,
    client: &mut Client,
    buf: &mut [u8],
    tokens: &mut Vec<(u32, u32, u64)>,
) -> Result<usize, Failure> {
    flush(fd, client).map_err(Failure::Os)?;
    let mut lines = 0;
    let end = net::read_all(fd, buf, |mut chunk| {
        // memchr scans a word at a time (SIMD where the CPU has it): a
        // byte-by-byte search was the hot spot at millions of lines a second.
        while let Some(newline) = memchr(b'\n', chunk) {
            let (piece, rest) = chunk.split_at(newline + 1);
            chunk = rest;
            let line: &[u8] = if client.partial.is_empty() {
                piece
            } else {
                client.partial.extend_from_slice(piece);
                &client.partial
            };
            // ANCHOR: notices
            // A server's notice (`* client7 left`) is never a chat line,
            // however many the misbehaving clients of a chaos run cause.
            if line.starts_with(b"* ") {
                client.notices += 1;
            } else if let Some(token) = find_token(line) {
                tokens.push(token);
            } else if line.windows(SYNC.len()).any(|w| w == SYNC) {
                client.synced = true;
            }
            // ANCHOR_END: notices
            lines += 1;
            client.partial.clear();
        }
        if client.partial.len() + chunk.len() <= MAX_LINE {
            client.partial.extend_from_slice(chunk);
        }
    });
    match end {
        ReadEnd::WouldBlock => Ok(lines),
        ReadEnd::Eof => Err(Failure::Closed),
        ReadEnd::Failed(errno) => Err(Failure::Os(errno)),
    }
}

// ANCHOR: token
/// The `~t:SENDER:SEQ:NANOS~` token anywhere in a line; the last one if
/// there are several, since relays put their own prefix before the text.
/// Parsed by hand, since it runs for every line received: millions a
/// second.
pub fn find_token(line: &[u8]) -> Option<(u32, u32, u64)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    token_at_end(line).or_else(|| {
        let start = memmem::rfind(line, b"~t:")?;
        // Where a later `~` ends it.
        let end = start + 3 + line[start + 3..].iter().position(|&b| b == b'~')?;
        token_at_end(&line[start..=end])
    })
}

/// A token that ends `text`: our own lines, whose token is last. The send
/// time is read as two 8-byte words when it is 16 digits wide, as the
/// tester writes it, and a digit at a time otherwise.
fn token_at_end(text: &[u8]) -> Option<(u32, u32, u64)> {
    let rest = text.strip_suffix(b"~")?;
    let (sent_ns, rest) = sixteen_digits_at_end(rest).or_else(|| number_at_end(rest))?;
    let (seq, rest) = number_at_end(rest.strip_suffix(b":")?)?;
    let (sender, rest) = number_at_end(rest.strip_suffix(b":")?)?;
    rest.strip_suffix(b":")?.ends_with(b"~t").then_some(())?;
    Some((sender.try_into().ok()?, seq.try_into().ok()?, sent_ns))
}

/// The number whose digits end `text`, read from the last: 19 digits
/// always fit a u64, more are refused. Returns it and what comes before.
fn number_at_end(mut text: &[u8]) -> Option<(u64, &[u8])> {
    let (mut value, mut place, mut digits) = (0u64, 1u64, 0);
    while let Some((&digit, head)) = text.split_last()
        && digit.is_ascii_digit()
    {
        if digits == 19 {
            return None;
        }
        value += u64::from(digit - b'0') * place;
        place = place.wrapping_mul(10);
        digits += 1;
        text = head;
    }
    (digits > 0).then_some((value, text))
}
// ANCHOR_END: token

// ANCHOR: digits
/// Exactly 16 digits ending `text`, read eight at a time: at millions of
/// lines a second, a digit at a time was the tester's hot spot.
fn sixteen_digits_at_end(text: &[u8]) -> Option<(u64, &[u8])> {
    let (head, digits) = text.split_at_checked(text.len().checked_sub(16)?)?;
    let (high, low) = digits.split_at(8);
    let high = u64::from_le_bytes(high.try_into().ok()?);
    let low = u64::from_le_bytes(low.try_into().ok()?);
    let longer = head.last().is_some_and(u8::is_ascii_digit);
    ((not_digits(high) | not_digits(low)) == 0 && !longer)
        .then(|| (eight_digits(high) * 100_000_000 + eight_digits(low), head))
}

const EVERY_BYTE: u64 = 0x0101_0101_0101_0101;

/// The top bit of each byte of `word` that is not an ASCII digit. A byte
/// is a digit when `byte ^ b'0'` is below 10; adding 0x76 to its low seven
/// bits sets the top bit from 10 up, and never carries into the next byte.
fn not_digits(word: u64) -> u64 {
    let x = word ^ (EVERY_BYTE * u64::from(b'0'));
    let from_ten = (x & (EVERY_BYTE * 0x7f)) + EVERY_BYTE * 0x76;
    (from_ten | x) & (EVERY_BYTE * 0x80)
}

/// Eight ASCII digits, the first in the lowest byte (as they lie in
/// memory), as a number: pairs, then fours, then all eight, three
/// multiplications in all.
fn eight_digits(word: u64) -> u64 {
    let pairs = (word & 0x0f0f_0f0f_0f0f_0f0f).wrapping_mul(10 << 8 | 1) >> 8;
    let fours = (pairs & 0x00ff_00ff_00ff_00ff).wrapping_mul(100 << 16 | 1) >> 16;
    (fours & 0x0000_ffff_0000_ffff).wrapping_mul(10_000 << 32 | 1) >> 32
}
// ANCHOR_END: digits

// ANCHOR: record
/// Check one received token; returns true for a first delivery (the only
/// kind whose latency counts).
fn record(
    receiver: &mut Client,
    sender: u32,
    seq: u32,
    max_seq: u32,
    gaps: &mut Gaps,
    check: &mut Check,
) -> bool {
    let clients = receiver.highest.len() as u32;
    if sender == 0 || sender > clients || seq == 0 || seq > max_seq {
        check.foreign += 1;
        return false;
    }
    if sender == receiver.id {
        return false; // a server that echoes to the sender: not our concern
    }
    let highest = &mut receiver.highest[sender as usize - 1];
    let pair = (receiver.id, sender);
    if seq > *highest {
        if seq > *highest + 1 {
            // Lines skipped: lost, or late (reordered); the end decides.
            gaps.entry(pair).or_default().extend(*highest + 1..seq);
        }
        *highest = seq;
        receiver.got += 1;
        return true;
    }
    let late = gaps
        .get_mut(&pair)
        .is_some_and(|skipped| skipped.remove(&seq));
    if late {
        check.reordered += 1;
        check.first_reorder.get_or_insert_with(|| {
            format!(
                "client {sender} seq {seq} reached client {} after seq {highest}",
                receiver.id
            )
        });
        receiver.got += 1;
        true
    } else {
        check.duplicated += 1;
        check.first_duplicate.get_or_insert_with(|| {
            format!(
                "client {sender} seq {seq} reached client {} twice",
                receiver.id
            )
        });
        false
    }
}
// ANCHOR_END: record

// ANCHOR: losses
/// Whatever never arrived: skipped lines that never came late, and every
/// line after the highest one a receiver saw.
fn count_losses(clients: &[Client], gaps: &Gaps, check: &mut Check) {
    // A client that never got into the chat neither sent nor was owed.
    for receiver in clients.iter().filter(|c| c.state == State::Ready) {
        for sender in clients {
            if sender.id == receiver.id {
                continue;
            }
            let highest = receiver.highest[sender.id as usize - 1];
            let skipped = gaps.get(&(receiver.id, sender.id));
            let missing_tail = sender.sent.saturating_sub(highest);
            let missing = u64::from(missing_tail) + skipped.map_or(0, |s| s.len() as u64);
            if missing == 0 {
                continue;
            }
            check.lost += missing;
            let first = skipped
                .and_then(|s| s.first().copied())
                .unwrap_or(highest + 1);
            check.first_loss.get_or_insert_with(|| {
                format!(
                    "client {} seq {first} never reached client {}",
                    sender.id, receiver.id
                )
            });
        }
    }
}
// ANCHOR_END: losses

fn report(
    args: &ChatArgs,
    window: u32,
    stalled: bool,
    group: &Group,
    send_time: Duration,
    delivery_time: Duration,
) -> Result<Outcome> {
    let (sent, delivered) = (group.sent, group.delivered);
    let mut settings = format!(
        "tester chat {} --clients {} --messages {} --rate {} --drain-timeout {} --timeout {}",
        show_addrs(&args.common.addrs),
        args.clients,
        args.messages,
        args.rate,
        show_duration(args.drain_timeout),
        show_duration(args.common.timeout)
    );
    if let Some(channel) = &args.publish {
        settings += &format!(" --publish {channel:?}");
    }
    if let Some(hello) = &args.hello {
        settings += &format!(" --hello {hello:?}");
    }
    if args.no_greeting {
        settings += " --no-greeting";
    }
    if args.rate == 0 {
        settings += &format!(" --batch {}", args.batch);
    }
    // n lines are n-1 intervals apart.
    let achieved = if sent > 1 {
        per_second(sent - 1, send_time)
    } else {
        0.0
    };
    let mut notes = Vec::new();
    if args.rate == 0 && window < args.batch {
        notes.push(format!(
            "{} in flight per client, not --batch {}: more would owe a receiver over {} KiB",
            plural(u64::from(window), "line"),
            args.batch,
            MAX_OWED / 1024
        ));
    }
    if stalled {
        notes.push(format!(
            "stopped sending: no line arrived for {}; the lines never sent are not counted",
            show_duration(args.drain_timeout)
        ));
    }
    let requested = if args.rate == 0 {
        "as fast as possible".to_string()
    } else {
        if sent > 1 && achieved < args.rate as f64 * RATE_TOLERANCE {
            notes.push(format!(
                "rate not met: sent {} lines/s of the {} requested; the figures describe the lower rate",
                thousands(achieved),
                thousands(args.rate as f64)
            ));
        }
        format!("{} requested", thousands(args.rate as f64))
    };
    let mut faults = group.faults();
    if group.errors.total() > 0 {
        faults.push(format!(
            "{} of {} could not join ({}; first: {})",
            group.errors.total(),
            plural(u64::from(args.clients), "client"),
            group.errors.describe(),
            group.errors.first.as_deref().unwrap_or("")
        ));
    }
    let verdict = if faults.is_empty() {
        "every line reached every other client once and in order".to_string()
    } else {
        format!("FAILED: {}", faults.join("; "))
    };
    let expected = group.expected();
    let (latency, connected_in) = (&group.latency, group.connected_in);
    let greeting = if args.no_greeting {
        ""
    } else {
        " (each after the server's first line)"
    };
    let mut summary = format!(
        "{settings}\n\
         connected    {} in {}{greeting}\n\
         sent         {} in {}: {} lines/s ({requested})\n\
         delivered    {} of {} in {}: {} lines/s\n\
         latency      {}\n\
         check        {verdict}",
        plural(group.joined() as u64, "client"),
        duration(connected_in),
        thousands(sent as f64),
        duration(send_time),
        thousands(achieved),
        thousands(delivered as f64),
        thousands(expected as f64),
        duration(delivery_time),
        thousands(per_second(delivered, delivery_time)),
        latency.describe(&[50.0, 90.0, 99.0]),
    );
    if group.foreign() > 0 {
        notes.push(format!(
            "{} carried a token of no line this run sent (ignored)",
            plural(group.foreign(), "line")
        ));
    }
    for note in &notes {
        summary += &format!("\nnote         {note}");
    }
    let json = json!({
        "command": "chat",
        "settings": {
            "addr": args.common.addrs[0].to_string(),
            "addrs": addr_list(&args.common.addrs),
            "clients": args.clients,
            "messages": args.messages,
            "rate": args.rate,
            "hello": args.hello,
            "publish": args.publish,
            "greeting": !args.no_greeting,
            "drain_timeout_s": args.drain_timeout.as_secs_f64(),
            "batch": args.batch,
            "timeout_s": args.common.timeout.as_secs_f64(),
        },
        "connect_s": connected_in.as_secs_f64(),
        "sent": sent,
        "send_s": send_time.as_secs_f64(),
        "send_rate": achieved,
        "in_flight": (args.rate == 0).then_some(window),
        "stalled": stalled,
        "rate_met": args.rate == 0 || sent <= 1 || achieved >= args.rate as f64 * RATE_TOLERANCE,
        "expected": expected,
        "delivered": delivered,
        "delivery_s": delivery_time.as_secs_f64(),
        "deliveries_per_s": per_second(delivered, delivery_time),
        "latency": latency.json(&[50.0, 90.0, 99.0]),
        "lost": group.lost(),
        "duplicated": group.duplicated(),
        "reordered": group.reordered(),
        "disconnected": group.disconnected(),
        "errors": group.errors,
        "faults": faults,
        "notes": notes,
    });
    Ok(Outcome {
        summary,
        json,
        failed: !faults.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::find_token;

    #[test]
    fn finds_a_token_anywhere_in_a_line() {
        assert_eq!(
            find_token(b"client3: line 1 ~t:3:17:99~\n"),
            Some((3, 17, 99))
        );
        assert_eq!(find_token(b"~t:1:2:3~"), Some((1, 2, 3)));
        assert_eq!(find_token(b"~t:1:1:5~: ~t:1:2:6~"), Some((1, 2, 6)));
        assert_eq!(find_token(b"* client3 joined\n"), None);
        assert_eq!(find_token(b"~t:1:2~"), None);
        assert_eq!(find_token(b"~t:1:x:3~"), None);
        assert_eq!(find_token(b"~t:1:2:3:4~"), None);
        assert_eq!(find_token(b"~t:1:2:3"), None);
        assert_eq!(find_token(b"1:2:3~"), None);
        assert_eq!(find_token(b"x ~t:1:2:3~ after"), Some((1, 2, 3)));
        assert_eq!(find_token(b"~t:1:2:3~ then ~t:1:x~"), None);
        assert_eq!(find_token(b"~t:4294967296:2:3~"), None);
        assert_eq!(find_token(b"~t:1:2:99999999999999999999~"), None);
    }

    #[test]
    fn reads_a_send_time_of_any_width() {
        // 16 digits, read as two words, and every other width around it.
        for ns in [0, 5, 12_345_678, 49_680_123_456_789, 9_999_999_999_999_999] {
            for width in [1, 15, 16, 17, 19] {
                let line = format!("c9: line 4 ~t:9:4:{ns:0width$}~\n");
                assert_eq!(find_token(line.as_bytes()), Some((9, 4, ns)), "{line}");
            }
        }
        let max = format!("~t:1:2:{}~", u64::MAX);
        assert_eq!(find_token(max.as_bytes()), None, "20 digits");
        // A non-digit anywhere in the 16, in either word.
        for at in [0, 7, 8, 15] {
            let mut digits = *b"1234567812345678";
            for bad in [b'/', b':', b'A', 0x80 | b'1'] {
                digits[at] = bad;
                let line = [b"~t:1:2:".as_slice(), &digits, b"~"].concat();
                assert_eq!(
                    find_token(&line),
                    None,
                    "{:?}",
                    String::from_utf8_lossy(&line)
                );
            }
        }
    }
}
