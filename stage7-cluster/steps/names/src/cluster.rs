//! One node of a cluster of chat servers, joined through Redis: two more
//! connections and a timer in the server's epoll set. Lines and notices go
//! through one Redis stream (`XADD`, and `XREAD BLOCK` on a connection of
//! its own), names through a Redis hash (`src/names.rs`).

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::unistd::read;

use crate::clients::Clients;
use crate::delivery::{Arrival, Entry, Outbox, Senders, Write, lost_notice};
use crate::names::{Ask, FREE_NAME, NAMES, Names, OUT_OF_CONTACT, owner};
use crate::redis::{self, Link, State, Value};
use crate::sanitize::sanitize;

/// The event data of the two Redis connections and the timer.
pub const COMMANDS: u64 = u64::MAX - 2;
pub const READER: u64 = u64::MAX - 3;
pub const TIMER: u64 = u64::MAX - 4;

/// The stream every node appends to and reads.
const STREAM: &[u8] = b"chat:stream";
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

/// What a request was for: the link keeps one per request, in order, and
/// hands it back with the reply.
#[derive(Debug)]
enum For {
    /// Requests whose reply tells nothing new (checked all the same: an
    /// error is a refusal).
    Nothing,
    /// `XREVRANGE` at the first connect: where the stream ends, which is
    /// where this node starts to read.
    Snapshot,
    /// The write with this id in the outbox.
    Write(u64),
    /// A request about names (`src/names.rs`).
    Names(Ask),
    /// `XREAD` of the stream.
    Read,
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

/// The log: a line for each change in the node's contact with Redis,
/// none with `-q`. A state that lasts (Redis away, Redis refusing) is
/// said once, not at every retry.
struct Log {
    quiet: bool,
    /// A connect failed and was said: not again until one succeeds.
    said_unreachable: bool,
    /// The last loss said since contact was last ready.
    said_lost: Option<String>,
}

impl Log {
    fn new(quiet: bool) -> Log {
        Log {
            quiet,
            said_unreachable: false,
            said_lost: None,
        }
    }

    /// A line of the log, unless `-q`; lost, not fatal, if stderr is gone.
    fn line(&self, line: fmt::Arguments<'_>) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
    }

    /// A connect failed: said once until a connect succeeds, as it is
    /// tried again every half second while Redis is away.
    fn unreachable(&mut self, why: &str) {
        if !self.said_unreachable {
            self.said_unreachable = true;
            self.line(format_args!("redis: cannot connect ({why}); retrying"));
        }
    }

    /// A connect succeeded: the next failure is news.
    fn connected(&mut self) {
        self.said_unreachable = false;
    }

    /// A connection was lost: said unless it is the loss said last.
    fn lost(&mut self, why: String) {
        if self.said_lost.as_ref() != Some(&why) {
            self.line(format_args!("redis: connection lost ({why})"));
            self.said_lost = Some(why);
        }
    }

    /// In contact again: the next loss is news.
    fn in_contact(&mut self) {
        self.said_lost = None;
    }
}

/// The connection every request goes on, and what waits to go on it.
struct Commands {
    link: Link<For>,
    /// What this node owes Redis: writes not confirmed yet.
    outbox: Outbox,
    /// When the next request to show Redis still answers is due.
    next_renewal: Instant,
}

/// The connection that reads the stream, and how far it has read.
struct Reader {
    link: Link<For>,
    /// The last entry read, or `None` until the snapshot says where to
    /// start.
    last_id: Option<Vec<u8>>,
    /// What it has read from every other node.
    senders: Senders,
}

/// What the server must do once Redis has answered.
pub enum Done {
    /// A waiting connection has its name: it joins the chat as
    /// `client<number>`.
    Join { fd: OwnedFd, number: u64 },
    /// A `/nick` or `/who` is answered: go on with the input that waited.
    Resume { fd: RawFd, input: Vec<u8> },
    /// A waiting connection gets no name: tell it `line`, and close it.
    Refuse { fd: OwnedFd, line: &'static str },
}

pub struct Cluster {
    node: String,
    commands: Commands,
    reader: Reader,
    timer: TimerFd,
    contact: Contact,
    log: Log,
    names: Names,
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
            commands: Commands {
                link: Link::new(addr, COMMANDS),
                outbox: Outbox::default(),
                next_renewal: Instant::now(),
            },
            reader: Reader {
                link: Link::new(addr, READER),
                last_id: None,
                senders: Senders::default(),
            },
            timer,
            contact: Contact::Starting,
            log: Log::new(quiet),
            names: Names::default(),
        };
        cluster.reconnect(epoll);
        Ok(cluster)
    }

    fn link(&mut self, token: u64) -> &mut Link<For> {
        if token == COMMANDS {
            &mut self.commands.link
        } else {
            &mut self.reader.link
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
            self.log.connected();
            let which = if token == COMMANDS {
                "commands"
            } else {
                "stream"
            };
            self.log.line(format_args!("redis: connected ({which})"));
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

    fn reply(&mut self, what: For, reply: Value, clients: &mut Clients, done: &mut Vec<Done>) {
        match what {
            For::Nothing => {}
            For::Snapshot => {
                self.snapshot(&reply);
                self.log.line(format_args!("redis: in the cluster"));
            }
            For::Write(id) => self.commands.outbox.confirmed(id),
            For::Names(ask) => {
                let (names, outbox) = (&mut self.names, &mut self.commands.outbox);
                let renamed = names.answer(ask, &reply, &self.node, clients, outbox, done);
                if let Some(renamed) = renamed {
                    self.append(Some(renamed.notice.into_bytes()));
                    self.commands.outbox.free(&renamed.old, renamed.owner);
                }
                self.ask_names();
                self.send_outbox();
            }
            For::Read => {
                self.reader.link.healthy();
                self.entries(&reply, clients);
            }
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
        if now < self.commands.next_renewal || !self.is_ready() {
            return;
        }
        self.commands.next_renewal = now + RENEW;
        self.commands.link.request(&[b"PING"], For::Nothing);
    }

    fn reconnect(&mut self, epoll: &Epoll) {
        for token in [COMMANDS, READER] {
            let link = self.link(token);
            if matches!(link.state(), State::Down { .. })
                && let Err(err) = link.connect(epoll)
            {
                self.log.unreachable(&err.to_string());
            }
        }
    }

    /// The commands connection is up: the first time, ask where the
    /// stream ends, to read from there on; then send what waited, or a
    /// `PING`. Contact is back with the first answer, not with the
    /// connect: a frozen Redis's kernel still accepts connections, and a
    /// Redis that refuses writes answers the oldest with an error.
    fn on_connected(&mut self) {
        if self.contact == Contact::Starting {
            self.commands.link.request(&LAST_ENTRY, For::Snapshot);
        }
        if self.commands.outbox.is_empty() {
            self.commands.link.request(&[b"PING"], For::Nothing);
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
            self.log.unreachable(&why);
        } else {
            self.log.lost(why);
        }
        if token != COMMANDS {
            return;
        }
        self.commands.outbox.send_again(); // in order, once back
        let unanswered = unanswered.into_iter().filter_map(|what| match what {
            For::Names(ask) => Some(ask),
            _ => None,
        });
        let (names, outbox) = (&mut self.names, &mut self.commands.outbox);
        names.lost(unanswered, &self.node, clients, outbox, done);
        if self.contact == Contact::Ready {
            self.contact = Contact::Lost;
            clients.broadcast("* lost contact with the other servers", None);
        }
    }

    /// Connections that waited too long for a name are told so and
    /// closed: their slot and their descriptor are not held for ever.
    fn expire_joins(&mut self, done: &mut Vec<Done>) {
        let (names, outbox) = (&mut self.names, &mut self.commands.outbox);
        names.expire(Instant::now(), JOIN_WAIT, &self.node, outbox, done);
        // Names freed go now: until they do, /who lists clients not there.
        self.send_outbox();
    }

    /// Back in contact: say so (once), the backoff starts again from its
    /// shortest, and the waiting clients' names are asked for.
    fn in_contact(&mut self, clients: &mut Clients) {
        if self.contact == Contact::Lost {
            clients.broadcast("* back in contact", None);
        }
        self.contact = Contact::Ready;
        self.log.in_contact();
        self.commands.link.healthy();
        self.ask_names();
    }

    /// `XREVRANGE`'s reply: the stream's last entry, read from the one
    /// after (from the start if there is none).
    fn snapshot(&mut self, reply: &Value) {
        let id = reply
            .items()
            .first()
            .and_then(|entry| entry.items().first())
            .and_then(Value::bytes)
            .unwrap_or(b"0-0");
        self.reader.last_id = Some(id.to_vec());
    }

    /// Write the writes Redis has not confirmed, oldest first: whenever
    /// the connection is up, so that the first of them, after a reconnect,
    /// is what tells whether Redis takes writes again.
    fn send_outbox(&mut self) {
        if !self.commands.link.is_up() {
            return;
        }
        for (id, write) in self.commands.outbox.unsent() {
            let what = For::Write(*id);
            match write {
                Write::Append(entry) => {
                    encode_append(&mut self.commands.link, &self.node, entry, what)
                }
                Write::Free { name, owner } => {
                    let (name, owner) = (name.as_bytes(), owner.as_bytes());
                    let args: [&[u8]; 6] = [b"EVAL", FREE_NAME, b"1", NAMES, name, owner];
                    self.commands.link.request(&args, what);
                }
            }
        }
    }

    /// Append an entry for the other nodes. Returns false when it cannot
    /// even wait: the outbox is full.
    fn append(&mut self, text: Option<Vec<u8>>) -> bool {
        if let Err(not_forwarded) = self.commands.outbox.append(text) {
            if not_forwarded == 1 || not_forwarded.is_multiple_of(1000) {
                self.log.line(format_args!(
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
        self.append(Some(line))
    }

    /// A new connection waits for a cluster-wide name.
    pub fn join(&mut self, fd: OwnedFd) {
        self.names.join(fd, Instant::now());
        self.ask_names();
    }

    /// Connections waiting for a name, counted against `--max-clients`.
    pub fn waiting(&self) -> usize {
        self.names.waiting()
    }

    /// Ask Redis for what the waiting connections and clients need next.
    fn ask_names(&mut self) {
        if !self.is_ready() {
            return;
        }
        let commands = &mut self.commands.link;
        self.names.ask(&self.node, |args, ask| {
            commands.request(args, ask.map_or(For::Nothing, For::Names));
        });
    }

    /// `/nick NAME`, or `/who` without a name: refused at once while out
    /// of contact; otherwise the client waits, alone, for Redis's answer.
    pub fn wait(&mut self, fd: RawFd, number: u64, nick: Option<&str>) -> Result<(), &'static str> {
        if !self.is_ready() {
            return Err(OUT_OF_CONTACT);
        }
        self.names.wait(fd, number, nick.map(str::to_string));
        self.ask_names();
        Ok(())
    }

    /// Whether the client's input waits for an answer from Redis.
    pub fn holds(&self, fd: RawFd) -> bool {
        self.names.holds(fd)
    }

    /// Keep a waiting client's input for after the answer; false if none.
    pub fn hold(&mut self, fd: RawFd, input: &[&[u8]]) -> bool {
        self.names.hold(fd, input)
    }

    /// A local client joined, and was announced: the others are told.
    pub fn joined(&mut self, name: &str) {
        self.append(Some(format!("* {name} joined").into_bytes()));
    }

    /// A local client left: the others are told, and its name is freed
    /// after (both kept until Redis confirms them).
    pub fn left(&mut self, fd: RawFd, number: u64, name: &str, notice: Option<String>) {
        self.names.left(fd);
        if let Some(notice) = notice {
            self.append(Some(notice.into_bytes()));
        }
        self.commands.outbox.free(name, owner(&self.node, number));
        self.send_outbox();
    }

    /// Keep one `XREAD BLOCK` waiting on the reader connection.
    fn read_stream(&mut self) {
        let Some(last_id) = &self.reader.last_id else {
            return;
        };
        if !self.reader.link.is_up() || self.reader.link.in_flight() > 0 {
            return;
        }
        let last_id = last_id.clone();
        self.reader.link.request_blocking(
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
                    self.reader.last_id = Some(id.to_vec());
                }
                let fields = Fields::parse(fields.items());
                self.deliver(fields, clients);
            }
        }
    }

    /// One entry: skipped if it is ours (our clients had it at once) or
    /// seen, else delivered, after the count of what was missed before
    /// it, if anything was.
    fn deliver(&mut self, entry: Fields, clients: &mut Clients) {
        let Some(node) = entry.node.filter(|n| *n != self.node) else {
            return;
        };
        let text = entry.text.as_deref();
        let arrival = self
            .reader
            .senders
            .arrive(&node, entry.seq, entry.lines, text.is_some());
        let Arrival::New { missed } = arrival else {
            return; // appended again after a lost reply
        };
        if missed > 0 {
            self.log.line(format_args!(
                "redis: {missed} lines of node {node} were lost"
            ));
            clients.broadcast(lost_notice(missed, &node), None);
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
        self.commands.outbox.shrink();
    }

    /// Whether every entry is appended (for a shutdown that waits for it).
    pub fn is_drained(&self) -> bool {
        self.commands.outbox.is_empty() || !self.is_ready()
    }
}

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
                _ => {}
            }
        }
        entry
    }
}

/// `XADD chat:stream MAXLEN ~ 50000 * n NODE s SEQ l LINES [t TEXT]`:
/// Redis gives the entry its id (`*`), which orders it after every entry
/// before it.
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
    link.request(&args, what);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_anywhere_in_a_reply_is_a_refusal() {
        assert_eq!(refusal(&Value::Integer(1)), None);
        assert_eq!(refusal(&Value::Bulk(None)), None);
        let oom = Value::Error(b"OOM command not allowed".to_vec());
        assert_eq!(refusal(&oom).as_deref(), Some("OOM command not allowed"));
        let exec = Value::Array(Some(vec![Value::Integer(0), oom]));
        assert!(refusal(&exec).is_some(), "an error inside EXEC's reply");
    }

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn an_entry_names_its_fields() {
        let fields = [
            bulk("n"),
            bulk("a-1"),
            bulk("s"),
            bulk("7"),
            bulk("x"),
            bulk("a field of a later step"),
            bulk("t"),
            bulk("client1: hi"),
        ];
        let entry = Fields::parse(&fields);
        assert_eq!(entry.node.as_deref(), Some("a-1"));
        assert_eq!(entry.seq, 7);
        assert_eq!(entry.text.as_deref(), Some(&b"client1: hi"[..]));
        let notext = Fields::parse(&[bulk("n"), bulk("b")]);
        assert_eq!(notext.text, None);
    }
}
