//! What a node keeps so that nothing is lost silently through the stream:
//! its **outbox**, the writes it owes Redis, each kept until Redis confirms
//! it; and its **senders**, the last sequence number it has read from every
//! other node, so that a repeat is dropped and a gap is counted and told.

use std::collections::{HashMap, VecDeque};

/// Writes waiting for Redis; past it, lines are not forwarded, counted,
/// and their senders told. The stream is trimmed to ten times this, so
/// that ten nodes emptying full backlogs at once trim nothing unread.
pub const MAX_BACKLOG: usize = 5000;
/// Entries kept after Redis took them, appended again if Redis restarts
/// and forgets them before every node read them.
pub const RETAIN: usize = 1000;

/// One entry for the stream: what the other nodes deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// How many of this node's entries carried a line, this one included:
    /// a reader that misses entries knows how many lines it missed.
    pub lines: u64,
    /// A line for every client: `NAME: text` or a notice.
    pub text: Option<Vec<u8>>,
    /// `+N NAME` joined, `-N` left, `#COUNT` all of its clients (when
    /// Redis forgot them, or the others took this node for dead).
    pub roster: Option<String>,
}

/// A write Redis must confirm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// An entry of the stream.
    Append(Entry),
    /// Free `name` if `owner` still holds it: a client that left, or a
    /// name that may have been taken for a client that never got it.
    Free { name: String, owner: String },
}

/// The writes Redis has not confirmed, oldest first, each with an id its
/// reply is matched by; the first `sent` are written on this connection.
#[derive(Default)]
pub struct Outbox {
    seq: u64,
    lines: u64,
    next_id: u64,
    queue: VecDeque<(u64, Write)>,
    sent: usize,
    retained: VecDeque<Entry>,
    not_forwarded: u64,
}

impl Outbox {
    /// The sequence number of the last entry queued.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Queue an entry, or, when the outbox is full, count it as not
    /// forwarded and return how many have not been.
    pub fn append(&mut self, text: Option<Vec<u8>>, roster: Option<String>) -> Result<(), u64> {
        if self.queue.len() >= MAX_BACKLOG {
            self.not_forwarded += 1;
            return Err(self.not_forwarded);
        }
        self.seq += 1;
        self.lines += u64::from(text.is_some());
        let entry = Entry {
            seq: self.seq,
            lines: self.lines,
            text,
            roster,
        };
        self.push(Write::Append(entry));
        Ok(())
    }

    /// Queue a name to free. Never refused: it is small, and a name left
    /// taken would be a ghost in every `/who`.
    pub fn free(&mut self, name: &str, owner: String) {
        let name = name.to_string();
        self.push(Write::Free { name, owner });
    }

    fn push(&mut self, write: Write) {
        self.next_id += 1;
        self.queue.push_back((self.next_id, write));
    }

    /// The writes not yet sent on this connection, now counted as sent.
    pub fn unsent(&mut self) -> impl Iterator<Item = &(u64, Write)> {
        let from = self.sent;
        self.sent = self.queue.len();
        self.queue.range(from..)
    }

    /// Redis confirmed the write `id`. Replies come in order, so it is the
    /// oldest; an id that is not (a reply from before a reconnect that
    /// sent it again) is ignored.
    pub fn confirmed(&mut self, id: u64) {
        if self.queue.front().is_none_or(|(front, _)| *front != id) {
            return;
        }
        let (_, write) = self.queue.pop_front().expect("front");
        self.sent = self.sent.saturating_sub(1);
        if let Write::Append(entry) = write {
            if self.retained.len() == RETAIN {
                self.retained.pop_front();
            }
            self.retained.push_back(entry);
        }
    }

    /// The connection is gone: whether its writes were carried out is not
    /// known, so all of them are sent again, in order, on the next one.
    pub fn send_again(&mut self) {
        self.sent = 0;
    }

    /// The newest entries Redis confirmed.
    pub fn retained(&self) -> impl Iterator<Item = &Entry> {
        self.retained.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Give back what a burst made the queue grow to.
    pub fn shrink(&mut self) {
        crate::redis::shrink(&mut self.queue);
    }
}

/// What has been read from one other node.
#[derive(Debug, Clone, Copy)]
struct Seen {
    seq: u64,
    lines: u64,
}

/// The last entry read from every other node.
#[derive(Default)]
pub struct Senders {
    seen: HashMap<String, Seen>,
}

/// What an entry read from the stream is to its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Read before: appended again after a lost reply, or a restart.
    Repeat,
    /// New, with `missed` lines of that node before it that never came
    /// (trimmed from the stream, or lost when Redis restarted).
    New { missed: u64 },
}

impl Senders {
    /// Entry `seq` of `node`, the `lines`-th with a line (`has_line` says
    /// whether it is one of them).
    pub fn arrive(&mut self, node: &str, seq: u64, lines: u64, has_line: bool) -> Arrival {
        let Some(seen) = self.seen.get_mut(node) else {
            // The first from a node: what came before is not ours to miss.
            self.seen.insert(node.to_string(), Seen { seq, lines });
            return Arrival::New { missed: 0 };
        };
        if seq <= seen.seq {
            return Arrival::Repeat;
        }
        let before = lines.saturating_sub(u64::from(has_line));
        let missed = before.saturating_sub(seen.lines);
        *seen = Seen { seq, lines };
        Arrival::New { missed }
    }

    /// The last sequence number read from `node`.
    pub fn last(&self, node: &str) -> Option<u64> {
        self.seen.get(node).map(|seen| seen.seq)
    }
}

/// What the clients are told of lines that never came:
/// `* 1,287 lines from server NODE were lost`.
pub fn lost_notice(missed: u64, node: &str) -> String {
    let digits = missed.to_string();
    let mut count = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            count.push(',');
        }
        count.push(digit);
    }
    if missed == 1 {
        format!("* 1 line from server {node} was lost")
    } else {
        format!("* {count} lines from server {node} were lost")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(outbox: &mut Outbox, text: &str) {
        outbox.append(Some(text.as_bytes().to_vec()), None).unwrap();
    }

    #[test]
    fn a_write_stays_until_confirmed_and_is_sent_again_after_a_drop() {
        let mut outbox = Outbox::default();
        line(&mut outbox, "a");
        line(&mut outbox, "b");
        let ids: Vec<u64> = outbox.unsent().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(outbox.unsent().count(), 0, "sent once per connection");
        outbox.confirmed(2); // not the oldest: a stale reply
        outbox.confirmed(1);
        outbox.send_again();
        let left: Vec<u64> = outbox.unsent().map(|(id, _)| *id).collect();
        assert_eq!(left, [2], "only what Redis did not confirm");
        assert_eq!(outbox.retained().count(), 1);
    }

    #[test]
    fn a_full_outbox_refuses_lines_and_counts_them_but_keeps_frees() {
        let mut outbox = Outbox::default();
        for n in 0..MAX_BACKLOG {
            line(&mut outbox, &n.to_string());
        }
        assert_eq!(outbox.append(Some(b"x".to_vec()), None), Err(1));
        assert_eq!(outbox.append(None, Some("-1".into())), Err(2));
        outbox.free("alice", "node 1".into());
        assert_eq!(outbox.unsent().count(), MAX_BACKLOG + 1);
        assert_eq!(
            outbox.seq(),
            MAX_BACKLOG as u64,
            "no number for a refused entry"
        );
    }

    #[test]
    fn entries_count_their_lines() {
        let mut outbox = Outbox::default();
        line(&mut outbox, "a");
        outbox.append(None, Some("+1 client1".into())).unwrap();
        line(&mut outbox, "b");
        let lines: Vec<(u64, u64)> = outbox
            .unsent()
            .filter_map(|(_, w)| match w {
                Write::Append(e) => Some((e.seq, e.lines)),
                Write::Free { .. } => None,
            })
            .collect();
        assert_eq!(lines, [(1, 1), (2, 1), (3, 2)]);
    }

    #[test]
    fn repeats_are_dropped_and_gaps_counted_in_lines() {
        let mut senders = Senders::default();
        assert_eq!(senders.arrive("a", 5, 3, true), Arrival::New { missed: 0 });
        assert_eq!(senders.arrive("a", 5, 3, true), Arrival::Repeat);
        assert_eq!(senders.arrive("a", 4, 2, true), Arrival::Repeat);
        // Entries 6 to 10 (lines 4 to 8) were trimmed; 11 is line 9.
        assert_eq!(senders.arrive("a", 11, 9, true), Arrival::New { missed: 5 });
        // A gap of entries without lines loses no line.
        assert_eq!(
            senders.arrive("a", 14, 9, false),
            Arrival::New { missed: 0 }
        );
        assert_eq!(senders.arrive("b", 1, 0, false), Arrival::New { missed: 0 });
        assert_eq!(senders.last("a"), Some(14));
    }

    #[test]
    fn the_notice_says_how_many_and_from_where() {
        assert_eq!(
            lost_notice(1287, "n1"),
            "* 1,287 lines from server n1 were lost"
        );
        assert_eq!(lost_notice(1, "n1"), "* 1 line from server n1 was lost");
        assert_eq!(
            lost_notice(999, "n1"),
            "* 999 lines from server n1 were lost"
        );
        assert_eq!(
            lost_notice(1_000_000, "n1"),
            "* 1,000,000 lines from server n1 were lost"
        );
    }
}
