//! One node of a cluster of chat servers, joined through Redis: two more
//! connections and a timer in the server's epoll set. Lines and notices go
//! through one Redis stream (`XADD`, and `XREAD BLOCK` on a connection of
//! its own), names through a Redis hash, and each node holds a lease that
//! the others watch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::unistd::read;

use crate::clients::{Clients, NickError, sanitize};
use crate::redis::{self, Link, State, Value};

/// The event data of the two Redis connections and the timer.
pub const COMMANDS: u64 = u64::MAX - 2;
pub const READER: u64 = u64::MAX - 3;
pub const TIMER: u64 = u64::MAX - 4;

/// The stream every node appends to and reads.
const STREAM: &[u8] = b"chat:stream";
/// Every name in the cluster: name -> "NODE NUMBER".
const NAMES: &[u8] = b"chat:names";
/// The last `client<N>` number handed out.
const NEXT: &[u8] = b"chat:next";
/// The stream is trimmed to about this many entries (`MAXLEN ~`: Redis
/// trims whole blocks, which is cheap): a node that falls further behind
/// than this loses entries, and says so.
const STREAM_LENGTH: &[u8] = b"10000";
/// The stream's last entry: where it ends at that instant.
const LAST_ENTRY: [&[u8]; 6] = [b"XREVRANGE", STREAM, b"+", b"-", b"COUNT", b"1"];
/// Entries per `XREAD`, and how long one waits for the first (ms).
const READ_COUNT: &[u8] = b"100";
const READ_BLOCK: &[u8] = b"1000";
/// A lease lives this long unless renewed; it is renewed every second, so
/// a node can lose Redis for five seconds and still be alive to the others.
const LEASE_MS: &[u8] = b"6000";
/// How often the timer fires; the lease and the others' are seen to every
/// `RENEW_TICKS` ticks.
const TICK: Duration = Duration::from_millis(100);
const RENEW_TICKS: u32 = 10;
/// A node judges others only after this long in contact itself: after a
/// Redis restart every lease is gone until its node reconnects.
const GRACE: Duration = Duration::from_secs(2);
/// Entries waiting to be appended while Redis is away; past it, lines are
/// not forwarded, counted, and their senders told.
const MAX_BACKLOG: usize = 10_000;
/// Entries kept after Redis took them, appended again if Redis restarts
/// and forgets them before every node read them.
const RETAIN: usize = 1000;

/// Frees a name only if it is still the one this owner claimed.
const FREE_NAME: &[u8] = b"if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
    return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";
/// Raises the `client<N>` counter to at least ARGV[1] (after a restart).
const RAISE_NEXT: &[u8] = b"if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) \
    then redis.call('SET', KEYS[1], ARGV[1]) end return 0";

// ANCHOR: for
/// What a request was for: the link keeps one per request, in order, and
/// hands it back with the reply.
#[derive(Debug)]
enum For {
    /// `SET lease NX` when connected: `OK` means Redis did not know us.
    Claim,
    /// `MULTI`, `XREVRANGE`, `HGETALL` and their `QUEUED`s: nothing to do.
    Nothing,
    /// `EXEC`: where the stream ends and every name, seen at one instant.
    Snapshot,
    /// `XADD` of the entry with this sequence number.
    Append(u64),
    /// `INCR` for the client waiting with this ticket.
    Number(u64),
    /// `HGET` after `HSETNX`: whether the name is now ours.
    Owner(Claim),
    /// `XREVRANGE` after a client's name is claimed: the last entry
    /// before it joins, which this node reads before it lets it in.
    Position(u64),
    /// `GET` of another node's lease: alive, and its count.
    Alive(String),
    /// `HGETALL` of the names for a client's `/who`.
    Who { fd: RawFd, ticket: u64 },
    /// `HGETALL` of the names, to tell who left with a node that is gone.
    Gone(String),
    /// `XREAD` of the stream.
    Read,
}

#[derive(Debug)]
enum Claim {
    Join {
        ticket: u64,
    },
    Nick {
        ticket: u64,
        fd: RawFd,
        number: u64,
        name: String,
    },
}
// ANCHOR_END: for

/// One entry for the stream: what the other nodes deliver, and how their
/// count of who is online changes.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    /// A line for every client: `NAME: text` or a notice.
    text: Option<Vec<u8>>,
    /// `+N NAME` joined, `-N` left, `#COUNT` all of its clients (when
    /// Redis forgot them).
    roster: Option<String>,
}

/// Where the node is with the other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    /// Never reached Redis yet: new clients wait for it.
    Starting,
    /// Connected; the lease claim (and, the first time, the snapshot) not
    /// answered yet.
    Claiming { first: bool },
    /// In contact since `since`.
    Ready { since: Instant },
    /// Lost it; the clients were told once.
    Lost,
}

/// A connection waiting for its name before it joins.
struct Joining {
    fd: OwnedFd,
    number: Option<u64>,
    asked: bool,
    /// Its name is claimed: it waits for the stream to be read this far.
    claimed: bool,
}

/// A client whose `/nick` or `/who` waits for Redis: its input waits
/// with it.
struct Hold {
    ticket: u64,
    /// The client's `client<N>` number.
    number: u64,
    /// The name it asked for with `/nick`, or `None` for `/who`.
    name: Option<String>,
    asked: bool,
    /// Input read after the command, handled once the answer is in.
    input: Vec<u8>,
}

/// What the server must do once Redis has answered.
pub enum Done {
    /// A waiting connection has its name: it joins the chat as
    /// `client<number>`.
    Join { fd: OwnedFd, number: u64 },
    /// A `/nick` was answered (the reply is queued): go on with the input
    /// that waited.
    Resume { fd: RawFd, input: Vec<u8> },
}

pub struct Cluster {
    node: String,
    commands: Link<For>,
    reader: Link<For>,
    timer: TimerFd,
    ticks: u32,
    contact: Contact,
    /// The last entry read, or `None` until the snapshot says where to
    /// start.
    last_id: Option<Vec<u8>>,
    /// Clients with a name, waiting until this node has read the stream
    /// up to where they joined, so that they are welcomed with the right
    /// count and never told of someone who came before them.
    catching_up: VecDeque<(StreamId, u64)>,
    /// The last sequence number appended.
    seq: u64,
    /// Entries Redis has not confirmed, oldest first; the first `sent`
    /// of them are written on this connection.
    backlog: VecDeque<Entry>,
    sent: usize,
    /// Entries Redis confirmed, the newest `RETAIN`.
    retained: VecDeque<Entry>,
    /// Lines not forwarded because the backlog was full.
    not_forwarded: u64,
    /// The last sequence number seen from each other node.
    seen: HashMap<String, u64>,
    /// How many clients each other node has, from the `+`, `-` and `#`
    /// of its entries: the welcome's count needs no round trip, and a
    /// node with clients is one whose lease is watched.
    others: HashMap<String, usize>,
    /// When a node's lease was first seen missing.
    missing: HashMap<String, Instant>,
    joining: BTreeMap<u64, Joining>,
    holds: HashMap<RawFd, Hold>,
    next_ticket: u64,
    announce_limit: usize,
    quiet: bool,
    said_unreachable: bool,
}

impl Cluster {
    /// A node that will connect to Redis at `addr`, with its timer in the
    /// epoll set. Its name is random enough to be unique among nodes.
    pub fn new(
        addr: SocketAddr,
        epoll: &Epoll,
        announce_limit: usize,
        quiet: bool,
    ) -> std::io::Result<Cluster> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // timerfd_settime(2): readable every TICK, for the lease, the
        // checks of the other nodes and the reconnect backoff.
        timer.set(
            Expiration::Interval(TimeSpec::from_duration(TICK)),
            TimerSetTimeFlags::empty(),
        )?;
        epoll.add(&timer, EpollEvent::new(EpollFlags::EPOLLIN, TIMER))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let node = format!("{:x}-{}", nanos & 0xffff_ffff_ffff, std::process::id());
        let mut cluster = Cluster {
            node,
            commands: Link::new(addr, COMMANDS),
            reader: Link::new(addr, READER),
            timer,
            ticks: 0,
            contact: Contact::Starting,
            last_id: None,
            catching_up: VecDeque::new(),
            seq: 0,
            backlog: VecDeque::new(),
            sent: 0,
            retained: VecDeque::new(),
            not_forwarded: 0,
            seen: HashMap::new(),
            others: HashMap::new(),
            missing: HashMap::new(),
            joining: BTreeMap::new(),
            holds: HashMap::new(),
            next_ticket: 0,
            announce_limit,
            quiet,
            said_unreachable: false,
        };
        cluster.reconnect(epoll);
        Ok(cluster)
    }

    /// A line of the log, unless `-q`; lost, not fatal, if stderr is gone.
    fn log(&self, line: fmt::Arguments<'_>) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// A connect failed: logged once until a connect succeeds, as it is
    /// tried again every half second while Redis is away.
    fn unreachable(&mut self, why: &str) {
        if !self.said_unreachable {
            self.said_unreachable = true;
            self.log(format_args!("redis: cannot connect ({why}); retrying"));
        }
    }

    fn lease_key(node: &str) -> Vec<u8> {
        format!("chat:lease:{node}").into_bytes()
    }

    fn link(&mut self, token: u64) -> &mut Link<For> {
        if token == COMMANDS {
            &mut self.commands
        } else {
            &mut self.reader
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.contact, Contact::Ready { .. })
    }

    /// A readiness event for one of the cluster's descriptors.
    pub fn ready(
        &mut self,
        token: u64,
        events: EpollFlags,
        epoll: &Epoll,
        clients: &mut Clients,
        scratch: &mut [u8],
        done: &mut Vec<Done>,
    ) {
        if token == TIMER {
            // Reading a timerfd returns how many times it fired, and
            // rearms its readiness.
            let _ = read(self.timer.as_fd(), &mut [0u8; 8]);
            return self.tick(epoll, clients);
        }
        let link = self.link(token);
        let progress = link.ready(events, scratch);
        if progress.connected {
            self.said_unreachable = false;
            let which = if token == COMMANDS {
                "commands"
            } else {
                "stream"
            };
            self.log(format_args!("redis: connected ({which})"));
            if token == COMMANDS {
                self.on_connected();
            }
        }
        for (what, reply) in progress.replies {
            self.reply(what, reply, clients, done);
        }
        if let Some(err) = progress.lost {
            self.lost(token, &err.to_string(), epoll, clients);
        }
        self.read_stream();
        self.flush(epoll, clients);
    }

    /// Every tick: reconnect what is down; every second: renew the lease
    /// and look at the other nodes' leases.
    fn tick(&mut self, epoll: &Epoll, clients: &mut Clients) {
        self.reconnect(epoll);
        self.ticks += 1;
        if !self.ticks.is_multiple_of(RENEW_TICKS) || !self.is_ready() {
            return;
        }
        // The lease says how many clients this node has, as of its last
        // entry: the others correct their count with it.
        let lease = Self::lease_key(&self.node);
        let value = format!("{} {}", self.seq, clients.online_count());
        self.commands.request(
            &[b"SET", &lease, value.as_bytes(), b"PX", LEASE_MS],
            For::Nothing,
        );
        let nodes: Vec<String> = self.others.keys().cloned().collect();
        for node in nodes {
            let key = Self::lease_key(&node);
            self.commands.request(&[b"GET", &key], For::Alive(node));
        }
        self.flush(epoll, clients);
    }

    fn reconnect(&mut self, epoll: &Epoll) {
        for token in [COMMANDS, READER] {
            let link = self.link(token);
            if matches!(link.state(), State::Down { .. })
                && let Err(err) = link.connect(epoll)
            {
                self.unreachable(&err.to_string());
            }
        }
    }

    /// The commands connection is up: claim the lease first. Its answer
    /// says whether Redis still knows this node, and nothing is appended
    /// before it, so appends stay in order.
    fn on_connected(&mut self) {
        let first = self.contact == Contact::Starting;
        self.contact = Contact::Claiming { first };
        let lease = Self::lease_key(&self.node);
        self.commands.request(
            &[b"SET", &lease, b"0 0", b"PX", LEASE_MS, b"NX"],
            For::Claim,
        );
        if first {
            // One transaction: the end of the stream and every name, with
            // no other client's command between them.
            self.commands.request(&[b"MULTI"], For::Nothing);
            self.commands.request(&LAST_ENTRY, For::Nothing);
            self.commands.request(&[b"HGETALL", NAMES], For::Nothing);
            self.commands.request(&[b"EXEC"], For::Snapshot);
        }
    }

    /// A connection is gone: say so once, hand back what waited on it, and
    /// retry after the backoff.
    fn lost(&mut self, token: u64, why: &str, epoll: &Epoll, clients: &mut Clients) {
        let link = self.link(token);
        let was_up = link.is_up();
        let unanswered = link.drop_connection(epoll);
        if was_up {
            self.log(format_args!("redis: connection lost ({why})"));
        } else {
            self.unreachable(why);
        }
        if token != COMMANDS {
            return;
        }
        self.sent = 0; // appended again, in order, once back
        for what in unanswered {
            match what {
                For::Number(ticket)
                | For::Owner(Claim::Join { ticket, .. })
                | For::Position(ticket) => {
                    if let Some(joining) = self.joining.get_mut(&ticket) {
                        (joining.asked, joining.claimed) = (false, false);
                    }
                }
                For::Owner(Claim::Nick { fd, ticket, .. }) | For::Who { fd, ticket } => {
                    if let Some(hold) = self.holds.get_mut(&fd)
                        && hold.ticket == ticket
                    {
                        hold.asked = false;
                    }
                }
                _ => {}
            }
        }
        match self.contact {
            Contact::Claiming { first: true } => self.contact = Contact::Starting,
            Contact::Ready { .. } => {
                self.contact = Contact::Lost;
                clients.broadcast("* lost contact with the other servers", None);
            }
            // Claiming again comes after Lost: the clients were told.
            Contact::Claiming { first: false } => self.contact = Contact::Lost,
            _ => {}
        }
    }

    fn reply(&mut self, what: For, reply: Value, clients: &mut Clients, done: &mut Vec<Done>) {
        if let Value::Error(err) = &reply {
            self.log(format_args!(
                "redis: {what:?}: {}",
                String::from_utf8_lossy(err)
            ));
        }
        match what {
            For::Nothing => {}
            For::Claim => {
                let forgot = reply == Value::Simple(b"OK".to_vec());
                let first = self.contact == Contact::Claiming { first: true };
                if forgot && !first {
                    self.log(format_args!("redis: it forgot this node; putting it back"));
                    self.restore(clients);
                }
                if !first {
                    self.in_contact(clients);
                }
            }
            For::Snapshot => {
                self.snapshot(&reply);
                let others: usize = self.others.values().sum();
                self.log(format_args!(
                    "redis: in the cluster ({others} clients on other nodes)"
                ));
                self.in_contact(clients);
            }
            For::Append(seq) => {
                if let Some(front) = self.backlog.front()
                    && front.seq == seq
                {
                    let entry = self.backlog.pop_front().unwrap();
                    self.sent = self.sent.saturating_sub(1);
                    if self.retained.len() == RETAIN {
                        self.retained.pop_front();
                    }
                    self.retained.push_back(entry);
                }
            }
            For::Number(ticket) => {
                let Value::Integer(n) = reply else { return };
                let Some(joining) = self.joining.get_mut(&ticket) else {
                    return;
                };
                joining.number = Some(n as u64);
                joining.asked = false;
                self.ask_names();
            }
            For::Owner(claim) => self.claimed(claim, &reply, clients, done),
            For::Position(ticket) => {
                if self.joining.get(&ticket).is_some_and(|j| j.claimed) {
                    let last = reply.items().first().and_then(|e| e.items().first());
                    let at = last
                        .and_then(Value::bytes)
                        .map_or(StreamId(0, 0), StreamId::parse);
                    self.catching_up.push_back((at, ticket));
                }
            }
            For::Alive(node) => {
                if let Some(lease) = reply.bytes() {
                    self.missing.remove(&node);
                    return self.recount(&node, lease);
                }
                let Contact::Ready { since } = self.contact else {
                    return;
                };
                let first_missing = *self.missing.entry(node.clone()).or_insert(Instant::now());
                if since.elapsed() >= GRACE && first_missing.elapsed() >= TICK {
                    self.node_lost(&node);
                }
            }
            For::Read => self.entries(&reply, clients),
            For::Who { fd, ticket } => {
                let Some(hold) = self.answered(fd, ticket) else {
                    return;
                };
                let names: Vec<_> = names_by_number(&reply).into_iter().map(|n| n.1).collect();
                clients.queue_line(fd, format!("* online: {}", names.join(", ")));
                done.push(Done::Resume {
                    fd,
                    input: hold.input,
                });
            }
            For::Gone(node) => {
                let mut members = names_by_number(&reply);
                members.retain(|(_, _, owner)| *owner == node);
                let announce = self.online(clients) + members.len() <= self.announce_limit;
                for (number, name, _) in members {
                    if announce {
                        clients.broadcast(format!("* {name} left (server lost)"), None);
                    }
                    self.free_name(&node, number, &name);
                }
            }
        }
    }

    /// Back in contact: say so (once), then send what waited.
    fn in_contact(&mut self, clients: &mut Clients) {
        if self.contact == (Contact::Claiming { first: false }) {
            clients.broadcast("* back in contact", None);
        }
        self.contact = Contact::Ready {
            since: Instant::now(),
        };
        self.send_backlog();
        self.ask_names();
    }

    /// `EXEC`'s reply: the stream's last entry (read from the one after)
    /// and every name there is.
    fn snapshot(&mut self, reply: &Value) {
        let [last, names] = reply.items() else {
            self.last_id = Some(b"0-0".to_vec());
            return;
        };
        let id = last
            .items()
            .first()
            .and_then(|entry| entry.items().first())
            .and_then(Value::bytes)
            .unwrap_or(b"0-0");
        self.last_id = Some(id.to_vec());
        for (_, _, node) in names_by_number(names) {
            if node != self.node {
                *self.others.entry(node).or_default() += 1;
            }
        }
    }

    /// Redis restarted (or this node was away past its lease): claim our
    /// names again, raise the counter past our numbers, append again the
    /// last entries it may have lost, and say again who is here.
    fn restore(&mut self, clients: &Clients) {
        let mut locals: Vec<(u64, String)> = clients
            .online_fds()
            .into_iter()
            .filter_map(|fd| clients.get(fd))
            .map(|client| (client.id(), client.name().to_string()))
            .collect();
        locals.sort();
        for (number, name) in &locals {
            claim(
                &mut self.commands,
                &owner(&self.node, *number),
                name,
                For::Nothing,
            );
        }
        if let Some((highest, _)) = locals.last() {
            let highest = highest.to_string();
            self.commands.request(
                &[b"EVAL", RAISE_NEXT, b"1", NEXT, highest.as_bytes()],
                For::Nothing,
            );
        }
        for entry in &self.retained {
            encode_append(&mut self.commands, &self.node, entry, For::Nothing);
        }
        // Nodes that took this one for dead have forgotten its clients.
        self.seq += 1;
        self.backlog.push_back(Entry {
            seq: self.seq,
            text: None,
            roster: Some(format!("#{}", locals.len())),
        });
    }

    /// Write the entries Redis has not confirmed, oldest first.
    fn send_backlog(&mut self) {
        if !self.is_ready() {
            return;
        }
        for entry in self.backlog.iter().skip(self.sent) {
            encode_append(
                &mut self.commands,
                &self.node,
                entry,
                For::Append(entry.seq),
            );
        }
        self.sent = self.backlog.len();
    }

    // ANCHOR: append
    /// Append an entry for the other nodes. Returns false when it cannot
    /// even wait: the backlog is full.
    fn append(&mut self, text: Option<Vec<u8>>, roster: Option<String>) -> bool {
        if self.backlog.len() >= MAX_BACKLOG {
            self.not_forwarded += 1;
            if self.not_forwarded == 1 || self.not_forwarded.is_multiple_of(1000) {
                self.log(format_args!(
                    "redis: backlog full: {} lines not forwarded",
                    self.not_forwarded
                ));
            }
            return false;
        }
        self.seq += 1;
        self.backlog.push_back(Entry {
            seq: self.seq,
            text,
            roster,
        });
        self.send_backlog();
        true
    }

    /// A local client's chat line, for the other nodes; false if it could
    /// not be kept for them.
    pub fn relay(&mut self, name: &str, text: &[u8]) -> bool {
        let mut line = Vec::with_capacity(name.len() + 2 + text.len());
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
        sanitize(text, &mut line);
        self.append(Some(line), None)
    }
    // ANCHOR_END: append

    /// A new connection waits for a cluster-wide name.
    pub fn join(&mut self, fd: OwnedFd) {
        self.next_ticket += 1;
        self.joining.insert(
            self.next_ticket,
            Joining {
                fd,
                number: None,
                asked: false,
                claimed: false,
            },
        );
        self.ask_names();
    }

    /// Connections waiting for a name, counted against `--max-clients`.
    pub fn waiting(&self) -> usize {
        self.joining.len()
    }

    /// Ask Redis for what the waiting connections and `/nick`s need.
    fn ask_names(&mut self) {
        if !self.is_ready() {
            return;
        }
        let (commands, node) = (&mut self.commands, &self.node);
        for (&ticket, joining) in self.joining.iter_mut().filter(|(_, j)| !j.asked) {
            joining.asked = true;
            let Some(number) = joining.number else {
                commands.request(&[b"INCR", NEXT], For::Number(ticket));
                continue;
            };
            let name = format!("client{number}");
            claim(
                commands,
                &owner(node, number),
                &name,
                For::Owner(Claim::Join { ticket }),
            );
            commands.request(&LAST_ENTRY, For::Position(ticket));
        }
        for (&fd, hold) in self.holds.iter_mut().filter(|(_, h)| !h.asked) {
            hold.asked = true;
            let (ticket, number) = (hold.ticket, hold.number);
            let Some(name) = hold.name.clone() else {
                commands.request(&[b"HGETALL", NAMES], For::Who { fd, ticket });
                continue;
            };
            let owner = owner(node, number);
            let what = For::Owner(Claim::Nick {
                ticket,
                fd,
                number,
                name: name.clone(),
            });
            claim(commands, &owner, &name, what);
        }
    }

    /// The answer to a claim of a name.
    fn claimed(
        &mut self,
        claim: Claim,
        owner: &Value,
        clients: &mut Clients,
        done: &mut Vec<Done>,
    ) {
        let ours = |number: u64| owner.bytes() == Some(self::owner(&self.node, number).as_bytes());
        match claim {
            Claim::Join { ticket } => {
                let Some(joining) = self.joining.get_mut(&ticket) else {
                    return;
                };
                let number = joining.number.unwrap_or(0);
                if !ours(number) {
                    // Someone took `client<N>` with /nick: the next number.
                    joining.number = None;
                    joining.asked = false;
                    return self.ask_names();
                }
                joining.claimed = true;
            }
            Claim::Nick {
                ticket,
                fd,
                number,
                name,
            } => {
                let taken = !ours(number);
                let Some(hold) = self.answered(fd, ticket) else {
                    if !taken {
                        self.free_name(&self.node.clone(), number, &name);
                    }
                    return;
                };
                if taken {
                    clients.queue_line(fd, NickError::Taken.reply(name.as_bytes()));
                } else if let Ok(old) = clients.rename(fd, name.as_bytes()) {
                    self.free_name(&self.node.clone(), number, &old);
                    let notice = format!("* {old} is now {name}");
                    clients.broadcast(&notice, None);
                    self.append(Some(notice.into_bytes()), None);
                }
                done.push(Done::Resume {
                    fd,
                    input: hold.input,
                });
            }
        }
    }

    /// Let in at most `max` of the clients whose place in the stream this
    /// node has read. Replies come in the order of the requests, so their
    /// places grow: only the front can be next.
    pub fn let_in(&mut self, max: usize, done: &mut Vec<Done>) {
        for _ in 0..max {
            if !self.can_let_in() {
                return;
            }
            let (_, ticket) = self.catching_up.pop_front().expect("can_let_in");
            let Some(joining) = self.joining.remove(&ticket) else {
                continue;
            };
            done.push(Done::Join {
                fd: joining.fd,
                number: joining.number.unwrap_or(0),
            });
        }
    }

    /// Whether a client with a name can be let in now.
    pub fn can_let_in(&self) -> bool {
        let read = self
            .last_id
            .as_deref()
            .map_or(StreamId(0, 0), StreamId::parse);
        self.catching_up.front().is_some_and(|&(at, _)| at <= read)
    }

    /// Free `name` in Redis if `node`'s client `number` still holds it.
    fn free_name(&mut self, node: &str, number: u64, name: &str) {
        let owner = owner(node, number);
        self.commands.request(
            &[
                b"EVAL",
                FREE_NAME,
                b"1",
                NAMES,
                name.as_bytes(),
                owner.as_bytes(),
            ],
            For::Nothing,
        );
    }

    /// `/nick NEW` for a client: refused at once while out of contact,
    /// otherwise the client waits, alone, for Redis's answer.
    pub fn nick(&mut self, fd: RawFd, number: u64, name: &str) -> Result<(), &'static str> {
        self.wait(fd, number, Some(name.to_string()))
    }

    /// `/who` for a client: every name in Redis, in the order of their
    /// numbers; the client waits for it as for `/nick`.
    pub fn who(&mut self, fd: RawFd, number: u64) -> Result<(), &'static str> {
        self.wait(fd, number, None)
    }

    fn wait(&mut self, fd: RawFd, number: u64, name: Option<String>) -> Result<(), &'static str> {
        if !self.is_ready() {
            return Err("* error: out of contact with the other servers; try again soon");
        }
        self.next_ticket += 1;
        let hold = Hold {
            ticket: self.next_ticket,
            number,
            name,
            asked: false,
            input: Vec::new(),
        };
        self.holds.insert(fd, hold);
        self.ask_names();
        Ok(())
    }

    /// The hold an answer is for, taken out; `None` if its client left
    /// meanwhile (the fd may be a newer client's by now).
    fn answered(&mut self, fd: RawFd, ticket: u64) -> Option<Hold> {
        if self.holds.get(&fd).is_none_or(|h| h.ticket != ticket) {
            return None;
        }
        self.holds.remove(&fd)
    }

    /// Whether the client's input waits for an answer from Redis.
    pub fn holds(&self, fd: RawFd) -> bool {
        self.holds.contains_key(&fd)
    }

    /// Keep the input of a client that waits, to be handled after the
    /// answer; false if it does not wait.
    pub fn hold(&mut self, fd: RawFd, input: &[&[u8]]) -> bool {
        let Some(hold) = self.holds.get_mut(&fd) else {
            return false;
        };
        for part in input {
            hold.input.extend_from_slice(part);
        }
        true
    }

    /// A local client joined as `client<number>`: the others are told.
    pub fn joined(&mut self, name: &str, number: u64, announce: bool) {
        let notice = announce.then(|| format!("* {name} joined").into_bytes());
        self.append(notice, Some(format!("+{number} {name}")));
    }

    /// A local client left: its name is freed and the others are told.
    pub fn left(&mut self, fd: RawFd, number: u64, name: &str, notice: Option<String>) {
        self.holds.remove(&fd);
        self.free_name(&self.node.clone(), number, name);
        self.append(notice.map(String::into_bytes), Some(format!("-{number}")));
    }

    /// Clients on every node.
    pub fn online(&self, clients: &Clients) -> usize {
        clients.online_count() + self.others.values().sum::<usize>()
    }

    /// A lease says how many clients its node had as of its entry `seq`:
    /// exact when this node has read just that far, and a count that
    /// drifted (an entry read twice in a race with the snapshot) is set
    /// right.
    fn recount(&mut self, node: &str, lease: &[u8]) {
        let lease = String::from_utf8_lossy(lease);
        let Some((seq, count)) = lease.split_once(' ') else {
            return;
        };
        if let (Ok(seq), Ok(count)) = (seq.parse::<u64>(), count.parse::<usize>())
            && self.seen.get(node) == Some(&seq)
        {
            self.others.insert(node.to_string(), count);
        }
    }

    /// Keep one `XREAD BLOCK` waiting on the reader connection.
    fn read_stream(&mut self) {
        let Some(last_id) = &self.last_id else {
            return;
        };
        if !self.reader.is_up() || self.reader.in_flight() > 0 {
            return;
        }
        let last_id = last_id.clone();
        self.reader.request(
            &[
                b"XREAD", b"COUNT", READ_COUNT, b"BLOCK", READ_BLOCK, b"STREAMS", STREAM, &last_id,
            ],
            For::Read,
        );
    }

    /// The entries of an `XREAD` reply: [[stream, [[id, [field, value, ...]], ...]]].
    fn entries(&mut self, reply: &Value, clients: &mut Clients) {
        for stream in reply.items() {
            let Some(entries) = stream.items().get(1) else {
                continue;
            };
            for entry in entries.items() {
                let [id, fields] = entry.items() else {
                    continue;
                };
                if let Some(id) = id.bytes() {
                    self.last_id = Some(id.to_vec());
                }
                self.deliver(fields.items(), clients);
            }
        }
    }

    /// One entry: skipped if it is ours or seen, else applied and delivered.
    fn deliver(&mut self, fields: &[Value], clients: &mut Clients) {
        let (mut node, mut seq, mut text, mut roster) = (None, 0, None, None);
        for pair in fields.chunks(2) {
            let [key, value] = pair else { continue };
            let value = value.bytes().unwrap_or_default();
            match key.bytes() {
                Some(b"n") => node = Some(String::from_utf8_lossy(value).into_owned()),
                Some(b"s") => {
                    seq = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                }
                Some(b"t") => text = Some(value),
                Some(b"r") => roster = Some(String::from_utf8_lossy(value).into_owned()),
                _ => {}
            }
        }
        let Some(node) = node.filter(|n| *n != self.node) else {
            return;
        };
        let seen = self.seen.entry(node.clone()).or_insert(0);
        if seq <= *seen {
            return; // appended again after a lost reply, or a restart
        }
        let missed = if *seen > 0 { seq - *seen - 1 } else { 0 };
        *seen = seq;
        if missed > 0 {
            self.log(format_args!(
                "redis: {missed} entries of node {node} were lost"
            ));
        }
        if let Some(op) = roster {
            let count = self.others.entry(node.clone()).or_default();
            match op.as_bytes().first() {
                Some(b'+') => *count += 1,
                Some(b'-') => *count = count.saturating_sub(1),
                Some(b'#') => *count = op[1..].parse().unwrap_or(*count),
                _ => {}
            }
            if *count == 0 {
                self.others.remove(&node);
            }
        }
        if let Some(text) = text {
            clients.broadcast(text, None);
        }
    }

    /// Another node's lease is gone: its clients left with it. Who they
    /// were, Redis's names say.
    fn node_lost(&mut self, node: &str) {
        self.missing.remove(node);
        let Some(count) = self.others.remove(node) else {
            return;
        };
        self.log(format_args!("redis: node {node} is gone ({count} clients)"));
        self.commands
            .request(&[b"HGETALL", NAMES], For::Gone(node.to_string()));
    }

    /// Write what was queued on either connection this round.
    pub fn flush(&mut self, epoll: &Epoll, clients: &mut Clients) {
        for token in [COMMANDS, READER] {
            let link = self.link(token);
            if let Err(err) = link.flush() {
                self.lost(token, &err.to_string(), epoll, clients);
            }
        }
        redis::shrink(&mut self.backlog);
        redis::shrink(&mut self.catching_up);
    }

    /// Whether every entry is appended (for a shutdown that waits for it).
    pub fn is_drained(&self) -> bool {
        self.backlog.is_empty() || !self.is_ready()
    }
}

/// Who holds a name in Redis: a node's client `number`.
fn owner(node: &str, number: u64) -> String {
    format!("{node} {number}")
}

/// Take `name` for `owner` if it is free (`HSETNX`), and ask who has it
/// (`HGET`), which is right even when an earlier `HSETNX` of ours took it
/// and its reply was lost with the connection.
fn claim(commands: &mut Link<For>, owner: &str, name: &str, what: For) {
    let hsetnx: [&[u8]; 4] = [b"HSETNX", NAMES, name.as_bytes(), owner.as_bytes()];
    commands.request(&hsetnx, For::Nothing);
    commands.request(&[b"HGET", NAMES, name.as_bytes()], what);
}

/// `(number, name, node)` for every name in an `HGETALL` of the names,
/// in the order of the numbers.
fn names_by_number(reply: &Value) -> Vec<(u64, String, String)> {
    let mut names: Vec<_> = reply
        .items()
        .chunks(2)
        .filter_map(|pair| {
            let [name, owner] = pair else { return None };
            let owner = std::str::from_utf8(owner.bytes()?).ok()?;
            let (node, number) = owner.split_once(' ')?;
            let name = String::from_utf8_lossy(name.bytes()?).into_owned();
            Some((number.parse().ok()?, name, node.to_string()))
        })
        .collect();
    names.sort();
    names
}

/// A stream entry's id, `MILLISECONDS-SEQUENCE`, in the order Redis gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(id: &[u8]) -> StreamId {
        let id = String::from_utf8_lossy(id);
        let (ms, seq) = id.split_once('-').unwrap_or((&id, "0"));
        StreamId(ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
}

/// `XADD chat:stream MAXLEN ~ 10000 * n NODE s SEQ [t TEXT] [r OP]`.
fn encode_append(link: &mut Link<For>, node: &str, entry: &Entry, what: For) {
    let seq = entry.seq.to_string();
    let mut args: Vec<&[u8]> = vec![
        b"XADD",
        STREAM,
        b"MAXLEN",
        b"~",
        STREAM_LENGTH,
        b"*",
        b"n",
        node.as_bytes(),
        b"s",
        seq.as_bytes(),
    ];
    if let Some(text) = &entry.text {
        args.extend([&b"t"[..], text]);
    }
    if let Some(roster) = &entry.roster {
        args.extend([&b"r"[..], roster.as_bytes()]);
    }
    link.request(&args, what);
}
