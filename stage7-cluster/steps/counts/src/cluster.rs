//! One node of a cluster of chat servers, joined through Redis: two more
//! connections and a timer in the server's epoll set. Lines and notices go
//! through one Redis stream (`XADD`, and `XREAD BLOCK` on a connection of
//! its own), names through a Redis hash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::unistd::read;

use crate::clients::{Clients, NickError};
use crate::delivery::{Arrival, Entry, Outbox, Senders, Write, lost_notice};
use crate::redis::{self, Link, State, Value};
use crate::sanitize::sanitize;

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
/// trims whole blocks, which is cheap). It must hold at least what every
/// node's outbox may append at once after an outage, or a reader that is
/// behind loses entries (and says so): ten nodes of `MAX_BACKLOG`.
const STREAM_LENGTH: &[u8] = b"50000";
/// The stream's last entry: where it ends at that instant.
const LAST_ENTRY: [&[u8]; 6] = [b"XREVRANGE", STREAM, b"+", b"-", b"COUNT", b"1"];
/// Entries per `XREAD`, and how long one waits for the first: well below
/// the wait for a reply, which counts from the end of the block.
const READ_COUNT: &[u8] = b"100";
const READ_BLOCK: &[u8] = b"1000";
const READ_BLOCK_TIME: Duration = Duration::from_secs(1);
/// A request is out on the commands connection at least this often, so a
/// Redis that stops answering is noticed within `REPLY_WAIT` of it.
const RENEW: Duration = Duration::from_secs(1);
/// How often the timer fires: reconnects and deadlines.
const TICK: Duration = Duration::from_millis(100);
/// How long a new connection may wait for its name before it is told the
/// cluster cannot take it now, and closed.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Frees a name only if it is still the one this owner claimed.
const FREE_NAME: &[u8] = b"if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
    return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// What a request was for: the link keeps one per request, in order, and
/// hands it back with the reply.
#[derive(Debug)]
enum For {
    /// `MULTI` and the `QUEUED`s, and requests whose reply tells nothing
    /// new (checked all the same: an error is a refusal).
    Nothing,
    /// `EXEC`: where the stream ends and every name, seen at one instant.
    Snapshot,
    /// The write with this id in the outbox.
    Write(u64),
    /// `INCR` for the client waiting with this ticket.
    Number(u64),
    /// `HGET` after `HSETNX`: whether the name is now ours.
    Owner(Claim),
    /// `XREVRANGE` after a client's name is claimed: the last entry
    /// before it joins, which this node reads before it lets it in.
    Position(u64),
    /// `HGETALL` of the names for a client's `/who`.
    Who { fd: RawFd, ticket: u64 },
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

/// Where the node is with the other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    /// Never reached Redis yet: new clients wait for it.
    Starting,
    /// Connected, and Redis has answered since: lines go to the stream.
    Ready,
    /// Lost it; the clients were told once.
    Lost,
}

/// Why a connection to Redis is given up: logged, and for the commands
/// connection, the clients told once.
#[derive(Debug)]
enum Loss {
    /// The socket failed, or Redis closed it.
    Io(std::io::Error),
    /// Redis answered with an error: it did not do what was asked
    /// (`-OOM` when it refuses writes).
    Refused(String),
    /// No reply within the deadline: Redis is stopped or hung.
    Silent,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loss::Io(err) => write!(f, "{err}"),
            Loss::Refused(err) => write!(f, "refused: {err}"),
            Loss::Silent => write!(f, "no reply for {:?}", redis::REPLY_WAIT),
        }
    }
}

/// A connection waiting for its name before it joins.
struct Joining {
    fd: OwnedFd,
    number: Option<u64>,
    asked: bool,
    /// Its name is claimed: it waits for the stream to be read this far.
    claimed: bool,
    /// When it came: it waits at most `JOIN_WAIT`.
    since: Instant,
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
    /// A `/nick` or `/who` was answered (the reply is queued): go on with
    /// the input that waited.
    Resume { fd: RawFd, input: Vec<u8> },
    /// A waiting connection gets no name: tell it `line`, and close it.
    Refuse { fd: OwnedFd, line: &'static str },
}

pub struct Cluster {
    node: String,
    commands: Link<For>,
    reader: Link<For>,
    timer: TimerFd,
    /// When the next request to show Redis still answers is due.
    next_renewal: Instant,
    contact: Contact,
    /// The last loss logged since contact was last ready: a Redis that
    /// keeps refusing is logged once, not at every retry.
    said_lost: Option<String>,
    /// The last entry read, or `None` until the snapshot says where to
    /// start.
    last_id: Option<Vec<u8>>,
    /// Clients with a name, waiting until this node has read the stream
    /// up to where they joined, so that they are welcomed with the right
    /// count and never told of someone who came before them.
    catching_up: VecDeque<(StreamId, u64)>,
    /// What this node owes the stream and the names.
    outbox: Outbox,
    /// What it has read from every other node.
    senders: Senders,
    /// How many clients each other node has, from the `+` and `-` of its
    /// entries: the welcome's count needs no round trip.
    others: HashMap<String, usize>,
    joining: BTreeMap<u64, Joining>,
    holds: HashMap<RawFd, Hold>,
    next_ticket: u64,
    quiet: bool,
    said_unreachable: bool,
}

impl Cluster {
    /// A node that will connect to Redis at `addr`, with its timer in the
    /// epoll set. Its name is random enough to be unique among nodes.
    pub fn new(addr: SocketAddr, epoll: &Epoll, quiet: bool) -> std::io::Result<Cluster> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // timerfd_settime(2): readable every TICK, for the deadlines and
        // the reconnects of both connections.
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
            next_renewal: Instant::now(),
            contact: Contact::Starting,
            said_lost: None,
            last_id: None,
            catching_up: VecDeque::new(),
            outbox: Outbox::default(),
            senders: Senders::default(),
            others: HashMap::new(),
            joining: BTreeMap::new(),
            holds: HashMap::new(),
            next_ticket: 0,
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

    fn link(&mut self, token: u64) -> &mut Link<For> {
        if token == COMMANDS {
            &mut self.commands
        } else {
            &mut self.reader
        }
    }

    fn is_ready(&self) -> bool {
        self.contact == Contact::Ready
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
            self.tick(epoll, clients, scratch, done);
        } else {
            self.serve(token, events, epoll, clients, scratch, done);
        }
        self.read_stream();
        self.flush(epoll, clients, done);
    }

    /// Read what one connection has for us, and act on every reply. The
    /// first error reply ends the connection: what Redis refused did not
    /// happen, and neither, as far as this node can tell, did what came
    /// after it, so all of it is asked again. A reply without error on
    /// the commands connection is what puts the node back in contact.
    fn serve(
        &mut self,
        token: u64,
        events: EpollFlags,
        epoll: &Epoll,
        clients: &mut Clients,
        scratch: &mut [u8],
        done: &mut Vec<Done>,
    ) {
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
        let mut loss = progress.lost.map(Loss::Io);
        let answered = !progress.replies.is_empty();
        let mut unanswered = Vec::new();
        for (what, reply) in progress.replies {
            if loss.is_some() {
                unanswered.push(what);
            } else if let Some(err) = refusal(&reply) {
                loss = Some(Loss::Refused(format!("{what:?}: {err}")));
                unanswered.push(what);
            } else {
                self.reply(what, reply, clients, done);
            }
        }
        if let Some(loss) = loss {
            self.lost(token, loss, unanswered, epoll, clients, done);
        } else if token == COMMANDS && answered && !self.is_ready() {
            self.in_contact(clients);
        }
    }

    /// Every tick: read what came (a node back from a pause may see its
    /// timer before its sockets), give up a connection whose reply is
    /// late, reconnect what is down, and every second ask Redis something,
    /// so that its silence is noticed even when no client talks.
    fn tick(
        &mut self,
        epoll: &Epoll,
        clients: &mut Clients,
        scratch: &mut [u8],
        done: &mut Vec<Done>,
    ) {
        let now = Instant::now();
        for token in [COMMANDS, READER] {
            if self.link(token).is_up() {
                self.serve(token, EpollFlags::EPOLLIN, epoll, clients, scratch, done);
            }
            if self.link(token).overdue(now) {
                self.lost(token, Loss::Silent, Vec::new(), epoll, clients, done);
            }
        }
        self.expire_joins(done);
        self.reconnect(epoll);
        if now < self.next_renewal || !self.is_ready() {
            return;
        }
        self.next_renewal = now + RENEW;
        self.commands.request(&[b"PING"], For::Nothing);
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

    /// The commands connection is up: the first time, ask where the
    /// stream ends and every name, to read from there on; then send what
    /// waited, or a `PING`. Contact is back with the first answer, not
    /// with the connect: a frozen Redis's kernel still accepts
    /// connections, and a Redis that refuses writes answers the oldest
    /// with an error.
    fn on_connected(&mut self) {
        if self.contact == Contact::Starting {
            // One transaction: the end of the stream and every name, with
            // no other client's command between them.
            self.commands.request(&[b"MULTI"], For::Nothing);
            self.commands.request(&LAST_ENTRY, For::Nothing);
            self.commands.request(&[b"HGETALL", NAMES], For::Nothing);
            self.commands.request(&[b"EXEC"], For::Snapshot);
        }
        if self.outbox.is_empty() {
            self.commands.request(&[b"PING"], For::Nothing);
        }
        self.send_outbox();
    }

    /// A connection is gone, or given up: say so once, hand back what
    /// waited on it, and retry after the backoff.
    fn lost(
        &mut self,
        token: u64,
        why: Loss,
        mut unanswered: Vec<For>,
        epoll: &Epoll,
        clients: &mut Clients,
        done: &mut Vec<Done>,
    ) {
        let link = self.link(token);
        let was_up = link.is_up();
        unanswered.extend(link.drop_connection(epoll));
        let why = why.to_string();
        if !was_up {
            self.unreachable(&why);
        } else if self.said_lost.as_ref() != Some(&why) {
            self.log(format_args!("redis: connection lost ({why})"));
            self.said_lost = Some(why);
        }
        if token != COMMANDS {
            return;
        }
        self.outbox.send_again(); // in order, once back
        for what in unanswered {
            match what {
                For::Number(ticket)
                | For::Owner(Claim::Join { ticket, .. })
                | For::Position(ticket) => {
                    if let Some(joining) = self.joining.get_mut(&ticket) {
                        (joining.asked, joining.claimed) = (false, false);
                    }
                }
                _ => {}
            }
        }
        // A client waiting for `/nick` or `/who` is answered now, not
        // when Redis is back: it may never be.
        for (fd, hold) in std::mem::take(&mut self.holds) {
            if let Some(name) = &hold.name
                && hold.asked
            {
                // Its claim may have taken the name: free it if so.
                self.outbox.free(name, owner(&self.node, hold.number));
            }
            clients.queue_line(fd, OUT_OF_CONTACT);
            let input = hold.input;
            done.push(Done::Resume { fd, input });
        }
        if self.contact == Contact::Ready {
            self.contact = Contact::Lost;
            clients.broadcast("* lost contact with the other servers", None);
        }
    }

    /// Connections that waited too long for a name are told so and
    /// closed: their slot and their descriptor are not held for ever.
    fn expire_joins(&mut self, done: &mut Vec<Done>) {
        let mut freed = false;
        while let Some(entry) = self.joining.first_entry()
            && entry.get().since.elapsed() >= JOIN_WAIT
        {
            let joining = entry.remove();
            if let Some(number) = joining.number {
                let name = format!("client{number}");
                self.outbox.free(&name, owner(&self.node, number));
                freed = true;
            }
            let line = "* error: the other servers cannot take a new client now; try again soon";
            done.push(Done::Refuse {
                fd: joining.fd,
                line,
            });
        }
        // The names freed above go now, not with the next write: until they
        // do, /who would list a client that is not there.
        if freed {
            self.send_outbox();
        }
    }

    fn reply(&mut self, what: For, reply: Value, clients: &mut Clients, done: &mut Vec<Done>) {
        match what {
            For::Nothing => {}
            For::Snapshot => {
                self.snapshot(&reply);
                let others: usize = self.others.values().sum();
                self.log(format_args!(
                    "redis: in the cluster ({others} clients on other nodes)"
                ));
            }
            For::Write(id) => self.outbox.confirmed(id),
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
            For::Read => {
                self.reader.healthy();
                self.entries(&reply, clients);
            }
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
        }
    }

    /// Back in contact: say so (once), the backoff starts again from its
    /// shortest, and the waiting clients' names are asked for.
    fn in_contact(&mut self, clients: &mut Clients) {
        if self.contact == Contact::Lost {
            clients.broadcast("* back in contact", None);
        }
        self.contact = Contact::Ready;
        self.said_lost = None;
        self.commands.healthy();
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

    /// Write the writes Redis has not confirmed, oldest first: whenever
    /// the connection is up, so that the first of them, after a reconnect,
    /// is what tells whether Redis takes writes again.
    fn send_outbox(&mut self) {
        if !self.commands.is_up() {
            return;
        }
        for (id, write) in self.outbox.unsent() {
            let what = For::Write(*id);
            match write {
                Write::Append(entry) => encode_append(&mut self.commands, &self.node, entry, what),
                Write::Free { name, owner } => {
                    let args: [&[u8]; 6] = [
                        b"EVAL",
                        FREE_NAME,
                        b"1",
                        NAMES,
                        name.as_bytes(),
                        owner.as_bytes(),
                    ];
                    self.commands.request(&args, what);
                }
            }
        }
    }

    /// Append an entry for the other nodes. Returns false when it cannot
    /// even wait: the outbox is full.
    fn append(&mut self, text: Option<Vec<u8>>, roster: Option<String>) -> bool {
        if let Err(not_forwarded) = self.outbox.append(text, roster) {
            if not_forwarded == 1 || not_forwarded.is_multiple_of(1000) {
                self.log(format_args!(
                    "redis: backlog full: {not_forwarded} lines not forwarded"
                ));
            }
            return false;
        }
        self.send_outbox();
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
                since: Instant::now(),
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
                        self.outbox.free(&name, self::owner(&self.node, number));
                        self.send_outbox();
                    }
                    return;
                };
                if taken {
                    clients.queue_line(fd, NickError::Taken.reply(name.as_bytes()));
                } else if let Ok(old) = clients.rename(fd, name.as_bytes()) {
                    let notice = format!("* {old} is now {name}");
                    clients.broadcast(&notice, None);
                    self.append(Some(notice.into_bytes()), None);
                    self.outbox.free(&old, self::owner(&self.node, number));
                    self.send_outbox();
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
            return Err(OUT_OF_CONTACT);
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

    /// A local client left: the others are told, and its name is freed
    /// after (both kept until Redis confirms them).
    pub fn left(&mut self, fd: RawFd, number: u64, name: &str, notice: Option<String>) {
        self.holds.remove(&fd);
        self.append(notice.map(String::into_bytes), Some(format!("-{number}")));
        self.outbox.free(name, owner(&self.node, number));
        self.send_outbox();
    }

    /// Clients on every node.
    pub fn online(&self, clients: &Clients) -> usize {
        clients.online_count() + self.others.values().sum::<usize>()
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
        self.reader.request_blocking(
            &[
                b"XREAD", b"COUNT", READ_COUNT, b"BLOCK", READ_BLOCK, b"STREAMS", STREAM, &last_id,
            ],
            For::Read,
            READ_BLOCK_TIME,
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
                let fields = Fields::parse(fields.items());
                self.deliver(fields, clients);
            }
        }
    }

    /// One entry: skipped if it is ours (our clients had it at once) or
    /// seen, else applied and delivered, after the count of what was
    /// missed before it, if anything was.
    fn deliver(&mut self, entry: Fields, clients: &mut Clients) {
        let Some(node) = entry.node.filter(|n| *n != self.node) else {
            return;
        };
        let text = entry.text.as_deref();
        let arrival = self
            .senders
            .arrive(&node, entry.seq, entry.lines, text.is_some());
        let Arrival::New { missed } = arrival else {
            return; // appended again after a lost reply
        };
        let roster = entry.roster.as_deref().unwrap_or_default();
        if missed > 0 {
            self.log(format_args!(
                "redis: {missed} lines of node {node} were lost"
            ));
            clients.broadcast(lost_notice(missed, &node), None);
        }
        let count = self.others.entry(node.clone()).or_default();
        match roster.as_bytes().first() {
            Some(b'+') => *count += 1,
            Some(b'-') => *count = count.saturating_sub(1),
            _ => {}
        }
        if *count == 0 {
            self.others.remove(&node);
        }
        if let Some(text) = text {
            clients.broadcast(text, None);
        }
    }

    /// Write what was queued on either connection this round.
    pub fn flush(&mut self, epoll: &Epoll, clients: &mut Clients, done: &mut Vec<Done>) {
        for token in [COMMANDS, READER] {
            let link = self.link(token);
            if let Err(err) = link.flush() {
                self.lost(token, Loss::Io(err), Vec::new(), epoll, clients, done);
            }
        }
        self.outbox.shrink();
        redis::shrink(&mut self.catching_up);
    }

    /// Whether every entry is appended (for a shutdown that waits for it).
    pub fn is_drained(&self) -> bool {
        self.outbox.is_empty() || !self.is_ready()
    }
}

/// What a client waiting for Redis is told when it cannot be answered.
const OUT_OF_CONTACT: &str = "* error: out of contact with the other servers; try again soon";

/// Whether a reply says Redis did not do what was asked: an error, or a
/// transaction with an error inside.
fn refusal(reply: &Value) -> Option<String> {
    match reply {
        Value::Error(err) => Some(String::from_utf8_lossy(err).into_owned()),
        Value::Array(Some(items)) => items.iter().find_map(|item| match item {
            Value::Error(err) => Some(String::from_utf8_lossy(err).into_owned()),
            _ => None,
        }),
        _ => None,
    }
}

/// The fields of one entry of the stream.
#[derive(Default)]
struct Fields {
    /// `n`: the node that appended it.
    node: Option<String>,
    /// `s` and `l`: its sequence number, and how many of its entries so
    /// far carried a line.
    seq: u64,
    lines: u64,
    /// `t`: a line for every client.
    text: Option<Vec<u8>>,
    /// `r`: how its node's count changes.
    roster: Option<String>,
}

impl Fields {
    fn parse(fields: &[Value]) -> Fields {
        let mut entry = Fields::default();
        for pair in fields.chunks(2) {
            let [key, value] = pair else { continue };
            let value = value.bytes().unwrap_or_default();
            let string = || String::from_utf8_lossy(value).into_owned();
            let number = || string().parse().unwrap_or(0);
            match key.bytes() {
                Some(b"n") => entry.node = Some(string()),
                Some(b"s") => entry.seq = number(),
                Some(b"l") => entry.lines = number(),
                Some(b"t") => entry.text = Some(value.to_vec()),
                Some(b"r") => entry.roster = Some(string()),
                _ => {}
            }
        }
        entry
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

/// `XADD chat:stream MAXLEN ~ 50000 * n NODE s SEQ l LINES [t TEXT] [r OP]`.
fn encode_append(link: &mut Link<For>, node: &str, entry: &Entry, what: For) {
    let (seq, lines) = (entry.seq.to_string(), entry.lines.to_string());
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
        b"l",
        lines.as_bytes(),
    ];
    if let Some(text) = &entry.text {
        args.extend([&b"t"[..], text]);
    }
    if let Some(roster) = &entry.roster {
        args.extend([&b"r"[..], roster.as_bytes()]);
    }
    link.request(&args, what);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn an_error_anywhere_in_a_reply_is_a_refusal() {
        assert_eq!(refusal(&Value::Integer(1)), None);
        assert_eq!(refusal(&Value::Bulk(None)), None);
        let oom = Value::Error(b"OOM command not allowed".to_vec());
        assert_eq!(refusal(&oom).as_deref(), Some("OOM command not allowed"));
        let exec = Value::Array(Some(vec![Value::Integer(0), oom]));
        assert!(refusal(&exec).is_some(), "an error inside EXEC's reply");
    }

    #[test]
    fn an_entry_names_its_fields() {
        let fields = [
            bulk("n"),
            bulk("a-1"),
            bulk("s"),
            bulk("7"),
            bulk("l"),
            bulk("3"),
            bulk("t"),
            bulk("client1: hi"),
        ];
        let entry = Fields::parse(&fields);
        assert_eq!(entry.node.as_deref(), Some("a-1"));
        assert_eq!((entry.seq, entry.lines), (7, 3));
        assert_eq!(entry.text.as_deref(), Some(&b"client1: hi"[..]));
        let joined = Fields::parse(&[bulk("n"), bulk("b"), bulk("r"), bulk("+2 client2")]);
        assert_eq!(
            (joined.text, joined.roster.as_deref()),
            (None, Some("+2 client2"))
        );
    }
}
