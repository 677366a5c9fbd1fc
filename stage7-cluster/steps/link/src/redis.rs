// ANCHOR: resp_top
//! Redis as one more pair of descriptors in the server's epoll set.
//!
//! A [`Link`] is one connection to Redis, driven by the event loop like a
//! client socket: a non-blocking `connect(2)` that finishes when the socket
//! becomes writable (its result read with `getsockopt(SO_ERROR)`), requests
//! written back to back without waiting for replies (pipelining), and
//! replies read whenever they come. Redis answers a connection's requests in
//! the order it got them, so the link keeps a FIFO of what each outstanding
//! request is for and pairs every reply with the front of it. Nothing here
//! ever blocks: a reply that is not whole yet waits in the input buffer.
//!
//! RESP, the wire format, is framed by [`parse`]: a request is an array of
//! bulk strings; a reply is one of five types, told apart by its first byte.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, connect, getsockopt, socket, sockopt,
};
use nix::unistd::{read, write};

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK\r\n`
    Simple(Vec<u8>),
    /// `-ERR wrong type\r\n`
    Error(Vec<u8>),
    /// `:42\r\n`
    Integer(i64),
    /// `$5\r\nhello\r\n`, or `$-1\r\n` for nil.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`, or `*-1\r\n` for nil.
    Array(Option<Vec<Value>>),
}

/// Bytes that are not RESP: the connection cannot be trusted any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed;
// ANCHOR_END: resp_top

// ANCHOR: parse
/// The first whole reply at the start of `input` and how many bytes it
/// took, or `None` when more bytes are needed.
pub fn parse(input: &[u8]) -> Result<Option<(Value, usize)>, Malformed> {
    let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (kind, header) = input.split_first().ok_or(Malformed)?;
    let header = &header[..end - 1];
    let after = end + 2;
    let number = || -> Result<i64, Malformed> {
        std::str::from_utf8(header)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(Malformed)
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(header.to_vec()), after))),
        b'-' => Ok(Some((Value::Error(header.to_vec()), after))),
        b':' => Ok(Some((Value::Integer(number()?), after))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = len as usize;
            if input.len() < after + len + 2 {
                return Ok(None);
            }
            if &input[after + len..after + len + 2] != b"\r\n" {
                return Err(Malformed);
            }
            let bytes = input[after..after + len].to_vec();
            Ok(Some((Value::Bulk(Some(bytes)), after + len + 2)))
        }
        b'*' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Value::Array(None), after)));
            }
            let mut items = Vec::with_capacity(count.min(1024) as usize);
            let mut used = after;
            for _ in 0..count {
                let Some((item, n)) = parse(&input[used..])? else {
                    return Ok(None);
                };
                items.push(item);
                used += n;
            }
            Ok(Some((Value::Array(Some(items)), used)))
        }
        _ => Err(Malformed),
    }
}
// ANCHOR_END: parse

// ANCHOR: encode
/// Append the request `args` to `out`: an array of bulk strings, which is
/// how every client speaks to Redis.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

impl Value {
    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }

    /// The items of an array (none for nil).
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(Some(items)) => items,
            _ => &[],
        }
    }
}
// ANCHOR_END: encode

// ANCHOR: state
/// Where a connection to Redis is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection: try again at `retry`.
    Down { retry: Instant },
    /// `connect` returned `EINPROGRESS`: writable means it finished; not
    /// finished by `due`, it has failed.
    Connecting { due: Instant },
    /// Connected: requests go out, replies come in.
    Up,
}

/// The first wait after a lost connection, and the longest: doubling
/// from one to the other, so a Redis that is away is not hammered, and one
/// that is back is found within half a second.
const FIRST_RETRY: Duration = Duration::from_millis(20);
const LAST_RETRY: Duration = Duration::from_millis(500);

/// How long Redis may take to answer a request (or to accept a connect)
/// before the connection counts as lost: a Redis that is stopped or hung
/// keeps its connections open and answers nothing, and only a deadline
/// tells that from one that is slow.
pub const REPLY_WAIT: Duration = Duration::from_secs(3);

/// A buffer or queue gives back what a burst made it grow to once it is
/// mostly empty again: a node holding tens of thousands of idle clients
/// should not also hold the high-water mark of its Redis traffic.
const KEPT: usize = 1024;

fn release(buffer: &mut Vec<u8>) {
    if buffer.capacity() > 4 * buffer.len() + 16 * KEPT {
        buffer.shrink_to(2 * buffer.len());
    }
}

pub fn shrink<T>(queue: &mut VecDeque<T>) {
    if queue.capacity() > 4 * queue.len() + KEPT {
        queue.shrink_to(2 * queue.len());
    }
}
// ANCHOR_END: state

// ANCHOR: link
/// A request written or queued, and when its reply is due.
struct Pending<T> {
    what: T,
    due: Instant,
}

/// Pair every whole reply in the input with the oldest request.
fn take_replies<T>(
    input: &mut Vec<u8>,
    pending: &mut VecDeque<Pending<T>>,
    replies: &mut Vec<(T, Value)>,
) -> io::Result<()> {
    let mut used = 0;
    let result = loop {
        match parse(&input[used..]) {
            Ok(Some((value, n))) => {
                used += n;
                match pending.pop_front() {
                    Some(request) => replies.push((request.what, value)),
                    None => break Err(io::Error::other("a reply to no request")),
                }
            }
            Ok(None) => break Ok(()),
            Err(Malformed) => break Err(io::Error::other("a reply that is not RESP")),
        }
    };
    input.drain(..used);
    result
}

/// One connection to Redis; `T` says what a request is for.
pub struct Link<T> {
    addr: SocketAddr,
    /// The event data its socket is registered with.
    token: u64,
    socket: Option<OwnedFd>,
    state: State,
    backoff: Duration,
    /// Requests not yet written.
    out: Vec<u8>,
    /// Bytes read and not yet a whole reply.
    input: Vec<u8>,
    /// What each request written or queued is for, oldest first.
    pending: VecDeque<Pending<T>>,
}

/// What one readiness event on the link came to.
pub struct Progress<T> {
    /// The connect just finished.
    pub connected: bool,
    /// Replies, each with what its request was for, in order.
    pub replies: Vec<(T, Value)>,
    /// The connection is gone, and why; `replies` holds what came before.
    pub lost: Option<io::Error>,
}
// ANCHOR_END: link

// ANCHOR: link_new
impl<T> Link<T> {
    pub fn new(addr: SocketAddr, token: u64) -> Link<T> {
        Link {
            addr,
            token,
            socket: None,
            state: State::Down {
                retry: Instant::now(),
            },
            backoff: FIRST_RETRY,
            out: Vec::new(),
            input: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Requests whose replies have not come yet.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether Redis is late: a connect or the oldest reply past its due.
    pub fn overdue(&self, now: Instant) -> bool {
        match self.state {
            State::Down { .. } => false,
            State::Connecting { due } => due <= now,
            State::Up => self.pending.front().is_some_and(|p| p.due <= now),
        }
    }

    /// Redis answered as it should: the next reconnect waits the least
    /// again. Not at connect: a Redis that accepts connections and refuses
    /// every request would otherwise be retried at the shortest interval.
    pub fn healthy(&mut self) {
        self.backoff = FIRST_RETRY;
    }
    // ANCHOR_END: link_new

    // ANCHOR: connect
    /// A non-blocking `connect(2)`, if the link is down and its wait is
    /// over. `EINPROGRESS` is the usual answer: the socket is registered for
    /// `EPOLLOUT`, which fires when the handshake ends, well or badly.
    pub fn connect(&mut self, epoll: &Epoll) -> io::Result<()> {
        match self.state {
            State::Down { retry } if retry <= Instant::now() => {}
            _ => return Ok(()),
        }
        let family = match self.addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
        let fd = socket(family, SockType::Stream, flags, None)?;
        // Requests are small and the replies are waited for: no Nagle.
        setsockopt_nodelay(&fd)?;
        match connect(fd.as_raw_fd(), &SockaddrStorage::from(self.addr)) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(err) => {
                self.wait_to_retry();
                return Err(err.into());
            }
        }
        // Edge-triggered, and EPOLLOUT for good: it fires once when the
        // connect ends, and again only when a full socket has room.
        let interest = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        epoll.add(&fd, EpollEvent::new(interest, self.token))?;
        self.socket = Some(fd);
        self.state = State::Connecting {
            due: Instant::now() + REPLY_WAIT,
        };
        Ok(())
    }

    /// Queue a request; it goes out with the next [`Link::flush`], and
    /// its reply is due within [`REPLY_WAIT`]. Only while connected: a
    /// request queued on a connection that is lost before its reply is
    /// handed back by [`Link::drop_connection`].
    pub fn request(&mut self, args: &[&[u8]], what: T) {
        self.request_blocking(args, what, Duration::ZERO);
    }

    /// A request that Redis itself holds for up to `block` (`XREAD
    /// BLOCK`): its reply is due `REPLY_WAIT` after the block ends.
    pub fn request_blocking(&mut self, args: &[&[u8]], what: T, block: Duration) {
        debug_assert_eq!(self.state, State::Up, "a request on a link that is not up");
        encode(&mut self.out, args);
        let due = Instant::now() + block + REPLY_WAIT;
        self.pending.push_back(Pending { what, due });
    }
    // ANCHOR_END: connect

    // ANCHOR: flush
    /// Write what is queued, until the socket is full (then `EPOLLOUT`
    /// says when to go on).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.state != State::Up {
            return Ok(());
        }
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let mut written = 0;
        while written < self.out.len() {
            match write(socket, &self.out[written..]) {
                Ok(n) => written += n,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(err) => {
                    self.out.drain(..written);
                    return Err(err.into());
                }
            }
        }
        self.out.drain(..written);
        release(&mut self.out);
        shrink(&mut self.pending);
        Ok(())
    }
    // ANCHOR_END: flush

    // ANCHOR: ready
    /// A readiness event on the link's socket: finish the connect, read
    /// every reply there is, write what is queued.
    pub fn ready(&mut self, events: EpollFlags, scratch: &mut [u8]) -> Progress<T> {
        let mut progress = Progress {
            connected: false,
            replies: Vec::new(),
            lost: None,
        };
        let Some(socket) = &self.socket else {
            return progress;
        };
        if matches!(self.state, State::Connecting { .. }) {
            // SO_ERROR holds the result of the non-blocking connect: 0, or
            // why it failed (ECONNREFUSED when nothing listens).
            match getsockopt(socket, sockopt::SocketError) {
                Ok(0) if events.contains(EpollFlags::EPOLLOUT) => {}
                Ok(0) => return progress, // not finished yet
                Ok(errno) => {
                    progress.lost = Some(io::Error::from_raw_os_error(errno));
                    return progress;
                }
                Err(err) => {
                    progress.lost = Some(err.into());
                    return progress;
                }
            }
            self.state = State::Up;
            progress.connected = true;
        }
        // Replies are taken out after every read, so the input buffer holds
        // one read and a partial reply, however much Redis has sent.
        while progress.lost.is_none() {
            match read(socket, scratch) {
                Ok(0) => progress.lost = Some(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    let replies = &mut progress.replies;
                    progress.lost = take_replies(&mut self.input, &mut self.pending, replies).err();
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(err) => progress.lost = Some(err.into()),
            }
        }
        release(&mut self.input);
        if progress.lost.is_none()
            && let Err(err) = self.flush()
        {
            progress.lost = Some(err);
        }
        progress
    }
    // ANCHOR_END: ready

    // ANCHOR: drop_connection
    /// Close the connection (taking it out of the epoll set first) and
    /// wait before the next try. Returns what the requests without a reply
    /// were for: whether they were carried out, the caller cannot know.
    pub fn drop_connection(&mut self, epoll: &Epoll) -> Vec<T> {
        if let Some(socket) = self.socket.take() {
            let _ = epoll.delete(&socket);
        }
        self.out.clear();
        self.input.clear();
        self.wait_to_retry();
        self.pending.drain(..).map(|p| p.what).collect()
    }

    fn wait_to_retry(&mut self) {
        self.socket = None;
        self.state = State::Down {
            retry: Instant::now() + self.backoff,
        };
        self.backoff = (self.backoff * 2).min(LAST_RETRY);
    }
}

fn setsockopt_nodelay(fd: &OwnedFd) -> nix::Result<()> {
    nix::sys::socket::setsockopt(fd, sockopt::TcpNoDelay, &true)
}
// ANCHOR_END: drop_connection

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(input: &[u8]) -> Value {
        let (value, used) = parse(input).unwrap().unwrap();
        assert_eq!(used, input.len());
        value
    }

    #[test]
    fn every_reply_type_is_framed() {
        assert_eq!(whole(b"+OK\r\n"), Value::Simple(b"OK".to_vec()));
        assert_eq!(whole(b"-ERR no\r\n"), Value::Error(b"ERR no".to_vec()));
        assert_eq!(whole(b":-42\r\n"), Value::Integer(-42));
        assert_eq!(whole(b"$2\r\na\n\r\n"), Value::Bulk(Some(b"a\n".to_vec())));
        assert_eq!(whole(b"$-1\r\n"), Value::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Value::Array(None));
        assert_eq!(
            whole(b"*2\r\n$1\r\nx\r\n*1\r\n:1\r\n"),
            Value::Array(Some(vec![
                Value::Bulk(Some(b"x".to_vec())),
                Value::Array(Some(vec![Value::Integer(1)])),
            ]))
        );
    }

    #[test]
    fn half_a_reply_is_not_yet_one() {
        let reply = b"*2\r\n$5\r\nhello\r\n$3\r\nbye\r\n";
        for cut in 0..reply.len() {
            assert_eq!(parse(&reply[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = reply.to_vec();
        two.extend_from_slice(b":7\r\n");
        let (_, used) = parse(&two).unwrap().unwrap();
        assert_eq!(parse(&two[used..]), Ok(Some((Value::Integer(7), 4))));
    }

    #[test]
    fn bytes_that_are_not_resp_are_refused() {
        assert_eq!(parse(b"hello\r\n"), Err(Malformed));
        assert_eq!(parse(b":x\r\n"), Err(Malformed));
        assert_eq!(parse(b"$1\r\nab\r\n"), Err(Malformed));
    }

    #[test]
    fn a_request_unanswered_past_its_due_makes_the_link_overdue() {
        let mut link: Link<&str> = Link::new("127.0.0.1:1".parse().unwrap(), 0);
        link.state = State::Up;
        let start = Instant::now();
        assert!(!link.overdue(start + REPLY_WAIT * 10), "nothing asked");
        link.request_blocking(&[b"XREAD"], "read", Duration::from_secs(1));
        link.request(&[b"GET", b"k"], "get");
        // The oldest is the blocking read: due a second later than a GET.
        assert!(!link.overdue(start + REPLY_WAIT));
        assert!(link.overdue(start + REPLY_WAIT + Duration::from_millis(1100)));
        let mut replies = Vec::new();
        let mut input = b"*-1\r\n".to_vec();
        take_replies(&mut input, &mut link.pending, &mut replies).unwrap();
        assert_eq!(replies, [("read", Value::Array(None))]);
        assert!(link.overdue(start + REPLY_WAIT + Duration::from_millis(100)));
        link.state = State::Connecting { due: start };
        assert!(link.overdue(start), "a connect has a deadline too");
    }

    #[test]
    fn a_request_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"a b"]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n");
        // What a client sends is what Redis would frame back the same way.
        let Value::Array(Some(items)) = whole(&out) else {
            panic!("not an array");
        };
        assert_eq!(items[2], Value::Bulk(Some(b"a b".to_vec())));
    }
}
