//! The client table: every connection, found by its fd in O(1), and the
//! names of the clients in the chat.
//!
//! The kernel hands out the lowest free descriptor number, so fds stay
//! dense and a `Vec` indexed by fd is both the fastest lookup and the
//! smallest table. Sending a line here only queues it and marks the client
//! "dirty"; the server writes every dirty client's queue once per round.
//! The table also holds the chunk that this round's lines are formatted
//! into, and seals it before the first dirty client is written.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use crate::queue::{Chunks, Line, OutQueue};

// ANCHOR: client
/// What the server keeps per connection.
pub struct Client {
    pub fd: OwnedFd,
    /// Unique for the server's lifetime: tells a client from a later one
    /// that got the same fd number.
    pub id: u64,
    /// `client<N>` until `/nick` changes it.
    pub name: Rc<str>,
    /// In the chat: named, counted, and sent what others say. False once it
    /// has left (`/quit`, an error, end-of-file, a full server), while the
    /// server finishes sending what it owes before closing.
    pub online: bool,
    /// The start of a line whose `\n` has not arrived yet.
    pub partial: Vec<u8>,
    pub queue: OutQueue,
    /// The last write found the socket full: wait for `EPOLLOUT`.
    pub blocked: bool,
    /// `EPOLLOUT` is in the interest list (only while `blocked`).
    pub want_write: bool,
    /// In the dirty list: its queue is written at the end of this round.
    pub dirty: bool,
    /// The client sent end-of-file.
    pub read_closed: bool,
    /// We sent ours (`shutdown(SHUT_WR)`) after the last queued line.
    pub write_closed: bool,
}
// ANCHOR_END: client

/// Why `/nick` was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum NickError {
    Invalid,
    Taken,
}

/// Every connection, by fd.
#[derive(Default)]
pub struct Clients {
    by_fd: Vec<Option<Client>>,
    /// Who has which name, so `/nick` checks "taken" without a scan.
    names: HashMap<Rc<str>, RawFd>,
    /// Clients in the chat (`online`).
    online: usize,
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

    /// Add a connection, not yet in the chat; returns its fd.
    pub fn add(&mut self, fd: OwnedFd) -> RawFd {
        let raw = fd.as_raw_fd();
        let slot = raw as usize;
        if self.by_fd.len() <= slot {
            self.by_fd.resize_with(slot + 1, || None);
        }
        self.next_id += 1;
        self.by_fd[slot] = Some(Client {
            fd,
            id: self.next_id,
            name: Rc::from(""),
            online: false,
            partial: Vec::new(),
            queue: OutQueue::default(),
            blocked: false,
            want_write: false,
            dirty: false,
            read_closed: false,
            write_closed: false,
        });
        self.len += 1;
        raw
    }

    /// Put the connection `fd` in the chat as `client<N>`; returns the name.
    pub fn join(&mut self, fd: RawFd) -> Rc<str> {
        // Someone may have taken a `client<N>` name with /nick: skip it.
        let name: Rc<str> = loop {
            let name = format!("client{}", self.next_number);
            self.next_number += 1;
            if !self.names.contains_key(name.as_str()) {
                break name.into();
            }
        };
        if let Some(client) = self.get_mut(fd) {
            client.name = Rc::clone(&name);
            client.online = true;
            self.names.insert(Rc::clone(&name), fd);
            self.online += 1;
        }
        name
    }

    /// Take the client out of the chat (it stays in the table until it is
    /// removed); returns its name if it was in.
    pub fn leave(&mut self, fd: RawFd) -> Option<Rc<str>> {
        let client = self.get_mut(fd).filter(|c| c.online)?;
        client.online = false;
        let name = Rc::clone(&client.name);
        self.names.remove(&name);
        self.online -= 1;
        Some(name)
    }

    /// Remove the connection from the table (taking it out of the chat
    /// first); dropping the returned client closes its fd.
    pub fn remove(&mut self, fd: RawFd) -> Option<Client> {
        self.leave(fd);
        let client = self.by_fd.get_mut(fd as usize)?.take()?;
        self.len -= 1;
        Some(client)
    }

    pub fn get(&self, fd: RawFd) -> Option<&Client> {
        self.by_fd.get(fd as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, fd: RawFd) -> Option<&mut Client> {
        self.by_fd.get_mut(fd as usize)?.as_mut()
    }

    /// Clients in the chat.
    pub fn online(&self) -> usize {
        self.online
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
            .filter(|c| c.online)
            .map(|c| c.fd.as_raw_fd())
            .collect()
    }

    /// The names in the chat, in the order they joined.
    pub fn names(&self) -> Vec<Rc<str>> {
        let mut online: Vec<&Client> = self.by_fd.iter().flatten().filter(|c| c.online).collect();
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
            .filter(|c| c.online)
            .ok_or(NickError::Invalid)?;
        let old = std::mem::replace(&mut client.name, Rc::clone(&new));
        self.names.remove(&old);
        self.names.insert(new, fd);
        Ok(old)
    }

    // ANCHOR: enqueue
    /// Queue `text` and a newline for the client `fd`, and mark it dirty.
    pub fn send(&mut self, fd: RawFd, text: impl AsRef<[u8]>) {
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
            out.extend(text.iter().map(|&b| sanitize(b)));
        });
        self.queue_for_all(&line, Some(fd));
    }

    /// One shared copy of the bytes; per receiver a range of the chunk, or
    /// just a longer one when the line follows the last one it was sent.
    fn queue_for_all(&mut self, line: &Line, except: Option<RawFd>) {
        for client in self.by_fd.iter_mut().flatten() {
            let fd = client.fd.as_raw_fd();
            if !client.online || Some(fd) == except {
                continue;
            }
            client.queue.push(&self.chunks, line);
            if !client.dirty {
                client.dirty = true;
                self.dirty.push(fd);
            }
        }
    }
    // ANCHOR_END: enqueue

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

    /// The next client with output to write this round. Sealing the
    /// chunk first makes every line queued so far final, and writable.
    pub fn pop_dirty(&mut self) -> Option<RawFd> {
        self.chunks.seal();
        self.dirty.pop()
    }

    /// Whether the client `fd`'s queue passed `--max-queue`.
    pub fn too_slow(&self, fd: RawFd) -> bool {
        self.get(fd)
            .is_some_and(|c| c.online && c.queue.bytes() > self.max_queue)
    }
}

// ANCHOR: sanitize
/// Control bytes other than TAB (ESC included) become `?`, so no client can
/// drive another's terminal; bytes from 0x80 up (UTF-8) pass unchanged.
pub fn sanitize(b: u8) -> u8 {
    if b.is_ascii_control() && b != b'\t' {
        b'?'
    } else {
        b
    }
}
// ANCHOR_END: sanitize

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> OwnedFd {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap()
    }

    #[test]
    fn names_count_up_and_skip_taken_ones() {
        let mut clients = Clients::new(1024);
        let a = clients.add(socket());
        assert_eq!(&*clients.join(a), "client1");
        clients.rename(a, b"client2").unwrap();
        let b = clients.add(socket());
        assert_eq!(&*clients.join(b), "client3", "client2 is taken");
        assert_eq!(clients.online(), 2);
        assert_eq!(clients.rename(b, b"client2"), Err(NickError::Taken));
        assert_eq!(clients.rename(b, b"no spaces"), Err(NickError::Invalid));
        assert_eq!(clients.rename(b, b""), Err(NickError::Invalid));
        assert_eq!(clients.rename(b, &[b'x'; 33]), Err(NickError::Invalid));
        assert_eq!(clients.rename(b, "é".as_bytes()), Err(NickError::Invalid));
        let names: Vec<String> = clients.names().iter().map(|n| n.to_string()).collect();
        assert_eq!(names, ["client2", "client3"]);
    }

    #[test]
    fn a_broadcast_skips_the_sender_and_clients_not_in_the_chat() {
        let mut clients = Clients::new(1024);
        let a = clients.add(socket());
        let b = clients.add(socket());
        let outsider = clients.add(socket());
        clients.join(a);
        clients.join(b);
        clients.broadcast("hi", Some(a));
        assert!(clients.get(a).unwrap().queue.is_empty());
        assert_eq!(clients.get(b).unwrap().queue.bytes(), 3);
        assert!(clients.get(outsider).unwrap().queue.is_empty());
        assert_eq!(clients.pop_dirty(), Some(b));
        assert_eq!(clients.pop_dirty(), None);
    }

    #[test]
    fn a_round_of_lines_reaches_each_receiver_in_few_slices() {
        let mut clients = Clients::new(1 << 20);
        let a = clients.add(socket());
        let b = clients.add(socket());
        clients.join(a);
        clients.join(b);
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

    #[test]
    fn leaving_frees_the_name_and_removing_the_slot() {
        let mut clients = Clients::new(1024);
        let a = clients.add(socket());
        let name = clients.join(a);
        assert_eq!(clients.leave(a), Some(name));
        assert_eq!(clients.leave(a), None, "leaves once");
        assert_eq!(clients.online(), 0);
        assert_eq!(clients.len(), 1);
        assert!(clients.remove(a).is_some());
        assert!(clients.get(a).is_none());
        assert!(clients.is_empty());
    }

    #[test]
    fn a_queue_past_the_limit_is_too_slow() {
        let mut clients = Clients::new(4);
        let a = clients.add(socket());
        clients.join(a);
        clients.send(a, "abc");
        assert!(!clients.too_slow(a));
        clients.send(a, "d");
        assert!(clients.too_slow(a));
    }
}
