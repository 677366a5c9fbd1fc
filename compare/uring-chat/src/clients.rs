//! The client table: stage 5's, by fd, with each client's output an
//! [`Output`] (the queue the kernel is sending from stays still) and what
//! it has in flight in the ring.
//!
//! Stage 5's table writes each client with `writev(2)` itself, and keeps
//! its queue private to that; here the write is an operation in the ring,
//! so the table is rebuilt around the same pieces: stage 5's phases and
//! reasons, its shared chunks and queues, its name rules.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use stage5_chat::clients::{NickError, Phase, Why};
use stage5_chat::queue::{Chunks, Line};
use stage5_chat::sanitize::sanitize;

use crate::output::Output;

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
    pub out: Output,
    /// In the dirty list: its output is looked at at the end of the round.
    dirty: bool,
    /// Its receive is in flight.
    pub receiving: bool,
    /// It sent end-of-file: there will be no more input, nor another one.
    pub eof: bool,
    /// Closed as far as the chat goes: its operations are being cancelled,
    /// and its descriptor is closed once none is in flight.
    closed: bool,
}

impl Client {
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// An operation of its is in flight: its descriptor must stay open.
    pub fn has_ops(&self) -> bool {
        self.receiving || self.out.in_flight()
    }

    /// Take the line's partial start, to frame new input after it.
    pub fn take_partial(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    /// Keep the start of a line (only while in the chat).
    pub fn keep_partial(&mut self, partial: Vec<u8>) {
        if self.phase == Phase::Online {
            self.partial = partial;
        }
    }
}

/// Every connection, by fd: the kernel hands out the lowest free number,
/// so a `Vec` indexed by fd stays dense.
#[derive(Default)]
pub struct Clients {
    by_fd: Vec<Option<Client>>,
    /// Who has which name, so `/nick` checks "taken" without a scan.
    names: HashMap<Rc<str>, RawFd>,
    online_count: usize,
    len: usize,
    next_id: u64,
    /// N of the next `client<N>`.
    next_number: u64,
    /// Clients with new output (or a finished send) this round.
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

    /// Add a connection to the chat as `client<N>`; returns its fd and name.
    pub fn join(&mut self, fd: OwnedFd) -> (RawFd, Rc<str>) {
        // Someone may have taken a `client<N>` name with /nick: skip it.
        let name: Rc<str> = loop {
            let name = format!("client{}", self.next_number);
            self.next_number += 1;
            if !self.names.contains_key(name.as_str()) {
                break name.into();
            }
        };
        let raw = self.insert(fd, Rc::clone(&name), Phase::Online);
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
            out: Output::default(),
            dirty: false,
            receiving: false,
            eof: false,
            closed: false,
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

    /// Done with the client: nothing more is sent to it or read from it.
    /// Its descriptor is closed by [`Clients::remove`], once no operation
    /// of its is in flight.
    pub fn close(&mut self, fd: RawFd) {
        let Some(client) = self.get_mut(fd) else {
            return;
        };
        client.closed = true;
        if client.phase == Phase::Online {
            let name = Rc::clone(&client.name);
            client.phase = Phase::Leaving {
                why: Why::Shutdown,
                deadline: Instant::now(),
            };
            self.names.remove(&name);
            self.online_count -= 1;
        }
    }

    /// Remove the connection; dropping the returned client closes its fd.
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

    pub fn online_count(&self) -> usize {
        self.online_count
    }

    /// Connections in the table, in the chat, leaving or being closed.
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

    /// `/nick`: rename the client `fd` to `new`; returns the old name.
    pub fn rename(&mut self, fd: RawFd, new: &[u8]) -> Result<Rc<str>, NickError> {
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
        let new: Rc<str> = new.into();
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
        if client.closed {
            return;
        }
        client.out.push(&self.chunks, &line);
        self.mark_dirty(fd);
    }

    /// Queue `text` and a newline for every client in the chat but `except`.
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
        // Formatted once, straight into the round's chunk.
        let line = self.chunks.write(|out| {
            out.extend_from_slice(sender.name.as_bytes());
            out.extend_from_slice(b": ");
            sanitize(text, out);
        });
        self.queue_for_all(&line, Some(fd));
    }

    fn queue_for_all(&mut self, line: &Line, except: Option<RawFd>) {
        for client in self.by_fd.iter_mut().flatten() {
            let fd = client.fd.as_raw_fd();
            if client.phase != Phase::Online || Some(fd) == except {
                continue;
            }
            client.out.push(&self.chunks, line);
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(fd);
            }
        }
    }

    /// Put the client `fd` in the dirty list (looked at at the end of the
    /// round).
    pub fn mark_dirty(&mut self, fd: RawFd) {
        if let Some(client) = self.by_fd.get_mut(fd as usize).and_then(Option::as_mut)
            && !client.dirty
        {
            client.dirty = true;
            self.dirty.push(fd);
        }
    }

    /// The next dirty client. Sealing the chunk first makes every line
    /// queued so far final, so a `writev` may be pointed at it.
    pub fn pop_dirty(&mut self) -> Option<RawFd> {
        self.chunks.seal();
        let fd = self.dirty.pop()?;
        if let Some(client) = self.get_mut(fd) {
            client.dirty = false;
        }
        Some(fd)
    }

    /// Whether the client `fd` owes more than `--max-queue`.
    pub fn too_slow(&self, fd: RawFd) -> bool {
        self.get(fd)
            .is_some_and(|c| c.phase == Phase::Online && c.out.bytes() > self.max_queue)
    }
}
