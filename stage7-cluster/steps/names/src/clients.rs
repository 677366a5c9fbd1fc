//! The client table: every connection, found by its fd in O(1), the names
//! of the clients in the chat, and where each client is in its life.
//!
//! The kernel hands out the lowest free descriptor number, so fds stay
//! dense and a `Vec` indexed by fd is both the fastest lookup and the
//! smallest table. Queuing a line here only queues it and marks the client
//! "dirty"; the server writes every dirty client's queue once per round.
//! The table also holds the chunk that this round's lines are formatted
//! into, and seals it before the first dirty client is written.

use std::collections::HashMap;
use std::fmt;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::uio::writev;

use crate::queue::{Chunks, Line, MAX_SLICES, OutQueue};

use crate::sanitize::sanitize;

/// Where a client is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// In the chat: named, counted, and sent what others say.
    Online,
    /// Out of the chat, being sent what it is still owed; closed once that
    /// is written, or at `deadline` whatever happens.
    Leaving { why: Why, deadline: Instant },
    /// Sent everything and our end-of-file (`shutdown(SHUT_WR)`): closed at
    /// its end-of-file, or at `deadline`.
    Closing { why: Why, deadline: Instant },
}

/// Why a client is dropped: the one reason its close is logged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It sent `/quit`.
    Quit,
    /// It sent end-of-file: no more input.
    EndOfFile,
    /// `read` or `write` failed (a reset is `ECONNRESET` or `EPIPE`).
    Error(Errno),
    /// Its queue passed `--max-queue`.
    TooSlow,
    /// It sent a line over `--max-line`.
    LineTooLong,
    /// It came when `--max-clients` were in.
    ServerFull,
    /// The server is shutting down.
    Shutdown,
    /// The cluster let it go, for the reason given (no name in time, with
    /// Redis out of reach or refusing). It is never announced: it never
    /// joined, or the other servers know of it from the cluster.
    Cluster(&'static str),
}

impl Why {
    /// Whether the client is still sent what it is owed: not after an error
    /// (the socket is broken) or once it is too slow (that is the problem).
    pub fn owes_output(self) -> bool {
        !matches!(self, Why::Error(_) | Why::TooSlow)
    }

    /// What the others are told, or nothing when everyone is leaving.
    pub fn notice(self, name: &str) -> Option<String> {
        match self {
            Why::Shutdown | Why::ServerFull | Why::Cluster(_) => None,
            Why::TooSlow => Some(format!("* {name} left (too slow)")),
            _ => Some(format!("* {name} left")),
        }
    }
}

impl fmt::Display for Why {
    /// As the log says it: `closed fd 7 (ECONNRESET)`, `(line too long)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Quit => f.write_str("quit"),
            Why::EndOfFile => f.write_str("end of file"),
            Why::Error(errno) => write!(f, "{errno:?}"), // the man pages' name
            Why::TooSlow => f.write_str("too slow"),
            Why::LineTooLong => f.write_str("line too long"),
            Why::ServerFull => f.write_str("server full"),
            Why::Shutdown => f.write_str("shutdown"),
            Why::Cluster(why) => f.write_str(why),
        }
    }
}

/// The client's socket as the last write left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendBuffer {
    /// Room to write; `EPOLLOUT` is not in the interest list.
    Room,
    /// Full: `EPOLLOUT` is in the interest list, and nothing is written
    /// until it fires.
    Full,
    /// `EPOLLOUT` fired: write again. A whole write takes `EPOLLOUT` out of
    /// the interest list; a short one makes it `Full` again.
    Freed,
}

/// What the server keeps per connection.
pub struct Client {
    fd: OwnedFd,
    /// Counts up for the server's lifetime: the order clients joined in.
    id: u64,
    /// `client<N>` until `/nick` changes it.
    name: Rc<str>,
    phase: Phase,
    /// The start of a line whose `\n` has not arrived yet.
    partial: Vec<u8>,
    queue: OutQueue,
    send_buffer: SendBuffer,
    /// In the dirty list: its queue is written at the end of this round.
    dirty: bool,
}

impl Client {
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn name(&self) -> &Rc<str> {
        &self.name
    }

    /// The order it joined in: in a cluster, its `client<N>` number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether `EPOLLOUT` belongs in its interest list.
    pub fn wants_epollout(&self) -> bool {
        self.send_buffer != SendBuffer::Room
    }

    /// Whether it is owed nothing: every queued byte written.
    pub fn is_flushed(&self) -> bool {
        self.queue.is_empty()
    }

    /// `EPOLLOUT` fired: there is room in the socket again.
    pub fn freed(&mut self) {
        if self.send_buffer == SendBuffer::Full {
            self.send_buffer = SendBuffer::Freed;
        }
    }

    /// Take the line's partial start, to frame new input after it.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// Keep the start of a line (only while in the chat: a client that
    /// has left keeps nothing).
    pub fn keep_partial(&mut self, partial: Vec<u8>) {
        if self.phase == Phase::Online {
            self.partial = partial;
        }
    }

    /// At most one `writev(2)`: every queued line in one system call.
    /// `writev` has no `MSG_NOSIGNAL` flag: the first write after a reset
    /// fails with `ECONNRESET`, a later one raises SIGPIPE, which Rust
    /// programs start with ignored, so it fails with `EPIPE` here.
    pub fn write(&mut self) -> Result<(), Errno> {
        // While full, the socket is known to have no room: wait for EPOLLOUT.
        if self.send_buffer == SendBuffer::Full {
            return Ok(());
        }
        if self.queue.is_empty() {
            self.send_buffer = SendBuffer::Room; // EPOLLOUT is no longer needed
            return Ok(());
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let filled = self.queue.slices(&mut slices);
        let slices = &slices[..filled];
        let offered: usize = slices.iter().map(|s| s.len()).sum();
        match writev(&self.fd, slices) {
            Ok(n) => {
                self.queue.consume(n);
                self.send_buffer = if n < offered {
                    SendBuffer::Full // a short write: the socket is full
                } else {
                    SendBuffer::Room
                };
                Ok(())
            }
            Err(Errno::EAGAIN) => {
                self.send_buffer = SendBuffer::Full;
                Ok(())
            }
            Err(Errno::EINTR) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Why `/nick` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum NickError {
    Invalid,
    Taken,
}

impl NickError {
    /// What the client that asked for `name` is told, whether this node or
    /// Redis refused it.
    pub fn reply(&self, name: &[u8]) -> Vec<u8> {
        match self {
            NickError::Invalid => {
                b"* error: a name is 1-32 of the characters A-Z a-z 0-9 _ -".to_vec()
            }
            NickError::Taken => [b"* error: the name ", name, b" is taken"].concat(),
        }
    }
}

/// Every connection, by fd.
#[derive(Default)]
pub struct Clients {
    by_fd: Vec<Option<Client>>,
    /// Who has which name, so `/nick` checks "taken" without a scan.
    names: HashMap<Rc<str>, RawFd>,
    /// How many clients are `Online`.
    online_count: usize,
    /// Connections in the table.
    len: usize,
    next_id: u64,
    /// N of the next `client<N>`.
    next_number: u64,
    /// Clients with new output this round.
    dirty: Vec<RawFd>,
    /// Where this round's lines are formatted, once each.
    chunks: Chunks,
    max_queue: usize,
}

impl Clients {
    pub fn new(max_queue: usize) -> Clients {
        Clients {
            next_number: 1,
            max_queue,
            ..Clients::default()
        }
    }

    /// Add a connection to the chat as `client<N>`; returns its fd and
    /// name.
    pub fn join(&mut self, fd: OwnedFd) -> (RawFd, Rc<str>) {
        // Someone may have taken a `client<N>` name with /nick: skip it.
        let name: Rc<str> = loop {
            let name = format!("client{}", self.next_number);
            self.next_number += 1;
            if !self.names.contains_key(name.as_str()) {
                break name.into();
            }
        };
        self.join_as(fd, name, None)
    }

    /// Add a connection to the chat under a name given elsewhere, and
    /// with the number that orders it among every node's clients (by the
    /// cluster, which makes both unique across nodes).
    pub fn join_as(&mut self, fd: OwnedFd, name: Rc<str>, id: Option<u64>) -> (RawFd, Rc<str>) {
        let raw = self.insert(fd, Rc::clone(&name), Phase::Online);
        if let (Some(id), Some(client)) = (id, self.get_mut(raw)) {
            client.id = id;
        }
        self.names.insert(Rc::clone(&name), raw);
        self.online_count += 1;
        (raw, name)
    }

    /// Add a connection that is never in the chat, only told why.
    pub fn refuse(&mut self, fd: OwnedFd, why: Why, deadline: Instant) -> RawFd {
        self.insert(fd, Rc::from(""), Phase::Leaving { why, deadline })
    }

    fn insert(&mut self, fd: OwnedFd, name: Rc<str>, phase: Phase) -> RawFd {
        let raw = fd.as_raw_fd();
        let slot = raw as usize;
        if self.by_fd.len() <= slot {
            self.by_fd.resize_with(slot + 1, || None);
        }
        self.next_id += 1;
        self.by_fd[slot] = Some(Client {
            fd,
            id: self.next_id,
            name,
            phase,
            partial: Vec::new(),
            queue: OutQueue::default(),
            send_buffer: SendBuffer::Room,
            dirty: false,
        });
        self.len += 1;
        raw
    }

    /// Take the client out of the chat, for `why`, to be closed by
    /// `deadline`; returns its name if it was in.
    pub fn leave(&mut self, fd: RawFd, why: Why, deadline: Instant) -> Option<Rc<str>> {
        let client = self.get_mut(fd).filter(|c| c.phase == Phase::Online)?;
        client.phase = Phase::Leaving { why, deadline };
        client.partial = Vec::new();
        let name = Rc::clone(&client.name);
        self.names.remove(&name);
        self.online_count -= 1;
        Some(name)
    }

    /// Our end-of-file is sent: wait for the client's.
    pub fn closing(&mut self, fd: RawFd) {
        if let Some(client) = self.get_mut(fd)
            && let Phase::Leaving { why, deadline } = client.phase
        {
            client.phase = Phase::Closing { why, deadline };
        }
    }

    /// Remove the connection from the table; dropping the returned client
    /// closes its fd.
    pub fn remove(&mut self, fd: RawFd) -> Option<Client> {
        let client = self.by_fd.get_mut(fd as usize)?.take()?;
        if client.phase == Phase::Online {
            self.names.remove(&client.name);
            self.online_count -= 1;
        }
        self.len -= 1;
        Some(client)
    }

    pub fn get(&self, fd: RawFd) -> Option<&Client> {
        self.by_fd.get(fd as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut Client> {
        self.by_fd.get_mut(fd as usize)?.as_mut()
    }

    /// How many clients are in the chat.
    pub fn online_count(&self) -> usize {
        self.online_count
    }

    /// Connections in the table, in the chat or leaving.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fds of the clients in the chat.
    pub fn online_fds(&self) -> Vec<RawFd> {
        self.by_fd
            .iter()
            .flatten()
            .filter(|c| c.phase == Phase::Online)
            .map(|c| c.fd.as_raw_fd())
            .collect()
    }

    /// The names in the chat, in the order they joined.
    pub fn names(&self) -> Vec<Rc<str>> {
        let mut online: Vec<&Client> = self
            .by_fd
            .iter()
            .flatten()
            .filter(|c| c.phase == Phase::Online)
            .collect();
        online.sort_by_key(|c| c.id);
        online.iter().map(|c| Rc::clone(&c.name)).collect()
    }

    /// `new` as a `&str` if a client may take it as its name here: 1-32
    /// of `A-Za-z0-9_-`, and no client in the chat has it.
    pub fn check_name<'a>(&self, new: &'a [u8]) -> Result<&'a str, NickError> {
        let valid = (1..=32).contains(&new.len())
            && new
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        // Valid names are ASCII, so this cannot fail.
        let new = std::str::from_utf8(new)
            .ok()
            .filter(|_| valid)
            .ok_or(NickError::Invalid)?;
        if self.names.contains_key(new) {
            return Err(NickError::Taken);
        }
        Ok(new)
    }

    /// `/nick`: rename the client `fd` to `new`; returns the old name.
    pub fn rename(&mut self, fd: RawFd, new: &[u8]) -> Result<Rc<str>, NickError> {
        let new: Rc<str> = self.check_name(new)?.into();
        let client = self
            .get_mut(fd)
            .filter(|c| c.phase == Phase::Online)
            .ok_or(NickError::Invalid)?;
        let old = std::mem::replace(&mut client.name, Rc::clone(&new));
        self.names.remove(&old);
        self.names.insert(new, fd);
        Ok(old)
    }

    /// Queue `text` and a newline for the client `fd`, and mark it dirty.
    pub fn queue_line(&mut self, fd: RawFd, text: impl AsRef<[u8]>) {
        let line = self
            .chunks
            .write(|out| out.extend_from_slice(text.as_ref()));
        let Some(client) = self.by_fd.get_mut(fd as usize).and_then(Option::as_mut) else {
            return;
        };
        client.queue.push(&self.chunks, &line);
        self.mark_dirty(fd);
    }

    /// Queue `text` and a newline for every client in the chat but
    /// `except`.
    pub fn broadcast(&mut self, text: impl AsRef<[u8]>, except: Option<RawFd>) {
        let line = self
            .chunks
            .write(|out| out.extend_from_slice(text.as_ref()));
        self.queue_for_all(&line, except);
    }

    /// Relay a chat line from the client `fd` to every other client in the
    /// chat, as `NAME: text`, with control bytes made harmless.
    pub fn relay(&mut self, fd: RawFd, text: &[u8]) {
        let Some(sender) = self.by_fd.get(fd as usize).and_then(Option::as_ref) else {
            return;
        };
        // Formatted once, straight into the round's chunk, whatever the
        // number of receivers.
        let line = self.chunks.write(|out| {
            out.extend_from_slice(sender.name.as_bytes());
            out.extend_from_slice(b": ");
            sanitize(text, out);
        });
        self.queue_for_all(&line, Some(fd));
    }

    /// One shared copy of the bytes; per receiver a range of the chunk, or
    /// just a longer one when the line follows the last one it was sent.
    fn queue_for_all(&mut self, line: &Line, except: Option<RawFd>) {
        for client in self.by_fd.iter_mut().flatten() {
            let fd = client.fd.as_raw_fd();
            if client.phase != Phase::Online || Some(fd) == except {
                continue;
            }
            client.queue.push(&self.chunks, line);
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(fd);
            }
        }
    }

    /// Put the client `fd` in the dirty list (its queue is written at the
    /// end of the round).
    pub fn mark_dirty(&mut self, fd: RawFd) {
        if let Some(client) = self.by_fd.get_mut(fd as usize).and_then(Option::as_mut)
            && !client.dirty
        {
            client.dirty = true;
            self.dirty.push(fd);
        }
    }

    /// The next client with output to write this round, out of the dirty
    /// list. Sealing the chunk first makes every line queued so far final,
    /// and writable.
    pub fn pop_dirty(&mut self) -> Option<RawFd> {
        self.chunks.seal();
        let fd = self.dirty.pop()?;
        if let Some(client) = self.get_mut(fd) {
            client.dirty = false;
        }
        Some(fd)
    }

    /// Whether the client `fd`'s queue passed `--max-queue`.
    pub fn too_slow(&self, fd: RawFd) -> bool {
        self.get(fd)
            .is_some_and(|c| c.phase == Phase::Online && c.queue.bytes() > self.max_queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::tcp_socket as socket;

    #[test]
    fn a_round_of_lines_reaches_each_receiver_in_few_slices() {
        let mut clients = Clients::new(1 << 20);
        let (a, _) = clients.join(socket());
        let (b, _) = clients.join(socket());
        for text in ["1", "2", "3"] {
            clients.relay(a, text.as_bytes());
        }
        clients.relay(b, b"from b");
        for text in ["4", "5"] {
            clients.relay(a, text.as_bytes());
        }
        // Writing starts: the chunk is sealed, and every queue is readable.
        let mut dirty = [clients.pop_dirty(), clients.pop_dirty()];
        dirty.sort();
        assert_eq!(dirty, [Some(a), Some(b)]);
        let unwritten = |fd| {
            let mut slices = [std::io::IoSlice::new(&[]); 8];
            let n = clients.get(fd).unwrap().queue.slices(&mut slices);
            let bytes: Vec<u8> = slices[..n].iter().flat_map(|s| s.to_vec()).collect();
            (n, String::from_utf8(bytes).unwrap())
        };
        assert_eq!(unwritten(a), (1, "client2: from b\n".to_string()));
        assert_eq!(
            unwritten(b),
            (
                2,
                "client1: 1\nclient1: 2\nclient1: 3\nclient1: 4\nclient1: 5\n".to_string()
            ),
            "b's own line splits its range in two"
        );
    }
}
