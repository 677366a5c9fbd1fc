// ANCHOR: top
//! One node of a cluster of chat servers, joined through Redis: one more
//! connection and a timer in the server's epoll set. Every line a local
//! client sends is appended to one Redis stream (`XADD`), for the other
//! nodes to read.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::unistd::read;

use crate::redis::{self, Link, State, Value};
use crate::sanitize::sanitize;

/// The event data of the connection to Redis and of the timer.
pub const COMMANDS: u64 = u64::MAX - 2;
pub const TIMER: u64 = u64::MAX - 4;
// ANCHOR_END: top

// ANCHOR: keys
/// The stream every node appends to and reads.
const STREAM: &[u8] = b"chat:stream";
/// The stream is trimmed to about this many entries (`MAXLEN ~`: Redis
/// trims whole blocks, which is cheap), so a chat that runs for months
/// does not fill Redis's memory.
const STREAM_LENGTH: &[u8] = b"50000";
/// How often the timer fires: reconnects and deadlines.
const TICK: Duration = Duration::from_millis(100);
// ANCHOR_END: keys

// ANCHOR: for
/// What a request was for: the link keeps one per request, in order, and
/// hands it back with the reply.
#[derive(Debug)]
enum For {
    /// Requests whose reply tells nothing new (checked all the same: an
    /// error is a refusal).
    Nothing,
}
// ANCHOR_END: for

// ANCHOR: contact
/// Where the node is with the other servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contact {
    /// Never reached Redis yet.
    Starting,
    /// Connected: lines go to the stream.
    Ready,
    /// Lost it: lines stay on this node until it is back.
    Lost,
}

/// Why a connection to Redis is given up: logged.
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
// ANCHOR_END: contact

// ANCHOR: log
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
// ANCHOR_END: log

// ANCHOR: cluster
pub struct Cluster {
    node: String,
    commands: Link<For>,
    timer: TimerFd,
    contact: Contact,
    log: Log,
}
// ANCHOR_END: cluster

// ANCHOR: new
impl Cluster {
    /// A node that will connect to Redis at `addr`, with its timer in the
    /// epoll set. Its name is random enough to be unique among nodes.
    pub fn new(addr: SocketAddr, epoll: &Epoll, quiet: bool) -> std::io::Result<Cluster> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // timerfd_settime(2): readable every TICK, for the deadlines and
        // the reconnects.
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
            timer,
            contact: Contact::Starting,
            log: Log::new(quiet),
        };
        cluster.reconnect(epoll);
        Ok(cluster)
    }
    // ANCHOR_END: new

    // ANCHOR: helpers
    fn is_ready(&self) -> bool {
        self.contact == Contact::Ready
    }
    // ANCHOR_END: helpers

    // ANCHOR: ready
    /// A readiness event for one of the cluster's descriptors.
    pub fn ready(&mut self, token: u64, events: EpollFlags, epoll: &Epoll, scratch: &mut [u8]) {
        if token == TIMER {
            // Reading a timerfd returns how many times it fired, and
            // rearms its readiness.
            let _ = read(self.timer.as_fd(), &mut [0u8; 8]);
            self.tick(epoll, scratch);
        } else {
            self.serve(events, epoll, scratch);
        }
        self.flush(epoll);
    }
    // ANCHOR_END: ready

    // ANCHOR: serve
    /// Read what the connection has for us, and act on every reply. The
    /// first error reply ends the connection: what Redis refused did not
    /// happen, and a node that went on as if it had would be wrong
    /// without knowing it.
    fn serve(&mut self, events: EpollFlags, epoll: &Epoll, scratch: &mut [u8]) {
        let progress = self.commands.ready(events, scratch);
        if progress.connected {
            self.log.connected();
            self.log.line(format_args!("redis: connected"));
            self.in_contact();
        }
        let mut loss = progress.lost.map(Loss::Io);
        for (what, reply) in progress.replies {
            if loss.is_some() {
                break;
            } else if let Some(err) = refusal(&reply) {
                loss = Some(Loss::Refused(format!("{what:?}: {err}")));
            } else {
                self.reply(what, reply);
            }
        }
        if let Some(loss) = loss {
            self.lost(loss, epoll);
        }
    }

    fn reply(&mut self, what: For, _reply: Value) {
        match what {
            For::Nothing => {}
        }
    }
    // ANCHOR_END: serve

    // ANCHOR: tick
    /// Every tick: read what came (a node back from a pause may see its
    /// timer before its socket), give up a connection whose reply is
    /// late, and reconnect one that is down once its wait is over.
    fn tick(&mut self, epoll: &Epoll, scratch: &mut [u8]) {
        let now = Instant::now();
        if self.commands.is_up() {
            self.serve(EpollFlags::EPOLLIN, epoll, scratch);
        }
        if self.commands.overdue(now) {
            self.lost(Loss::Silent, epoll);
        }
        self.reconnect(epoll);
    }

    fn reconnect(&mut self, epoll: &Epoll) {
        if matches!(self.commands.state(), State::Down { .. })
            && let Err(err) = self.commands.connect(epoll)
        {
            self.log.unreachable(&err.to_string());
        }
    }
    // ANCHOR_END: tick

    // ANCHOR: lost
    /// The connection is gone, or given up: say so once, and retry after
    /// the backoff. What was asked and not answered is lost with it.
    fn lost(&mut self, why: Loss, epoll: &Epoll) {
        let was_up = self.commands.is_up();
        self.commands.drop_connection(epoll);
        let why = why.to_string();
        if !was_up {
            self.log.unreachable(&why);
        } else {
            self.log.lost(why);
        }
        if self.contact == Contact::Ready {
            self.contact = Contact::Lost;
        }
    }

    /// In contact: lines go to the stream again.
    fn in_contact(&mut self) {
        self.contact = Contact::Ready;
        self.log.in_contact();
        self.commands.healthy();
    }
    // ANCHOR_END: lost

    // ANCHOR: append
    /// A local client's chat line, for the other nodes. Out of contact it
    /// is not kept: the local clients have it, the others miss it.
    pub fn relay(&mut self, name: &str, text: &[u8]) {
        if !self.is_ready() {
            return;
        }
        let mut line = Vec::with_capacity(name.len() + 2 + text.len());
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(b": ");
        sanitize(text, &mut line);
        encode_append(&mut self.commands, &self.node, &line, For::Nothing);
    }

    /// Write what was queued this round.
    pub fn flush(&mut self, epoll: &Epoll) {
        if let Err(err) = self.commands.flush() {
            self.lost(Loss::Io(err), epoll);
        }
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

/// `XADD chat:stream MAXLEN ~ 50000 * n NODE t TEXT`: Redis gives the
/// entry its id (`*`), which orders it after every entry before it.
fn encode_append(link: &mut Link<For>, node: &str, text: &[u8], what: For) {
    let args: Vec<&[u8]> = vec![
        b"XADD",
        STREAM,
        b"MAXLEN",
        b"~",
        STREAM_LENGTH,
        b"*",
        b"n",
        node.as_bytes(),
        b"t",
        text,
    ];
    link.request(&args, what);
}
// ANCHOR_END: append

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
}
