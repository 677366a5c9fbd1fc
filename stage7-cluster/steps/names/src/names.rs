// ANCHOR: top
//! The cluster's names, kept in a Redis hash from each name to its owner,
//! `NODE NUMBER`: a new connection waits for its `client<N>` before it
//! joins, and a client's `/nick` or `/who` waits for Redis's answer with
//! its input held. Plain data, like the outbox: this says what to ask
//! Redis and what each answer means; the cluster sends the requests and
//! hands back the replies.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::clients::{Clients, NickError};
use crate::cluster::Done;
use crate::delivery::Outbox;
use crate::redis::Value;

/// Every name in the cluster: name -> "NODE NUMBER".
pub const NAMES: &[u8] = b"chat:names";
/// The last `client<N>` number handed out.
pub const NEXT: &[u8] = b"chat:next";
/// Frees a name only if it is still the one this owner claimed.
pub const FREE_NAME: &[u8] = b"if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
    return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// What a client waiting for Redis is told when it cannot be answered.
pub const OUT_OF_CONTACT: &str = "* error: out of contact with the other servers; try again soon";
// ANCHOR_END: top

// ANCHOR: Ask
/// What a request about names was for: handed back with its reply.
#[derive(Debug, PartialEq)]
pub enum Ask {
    /// `INCR` of the counter, for the connection waiting with this ticket.
    Number(u64),
    /// `HGET` after `HSETNX` of that connection's `client<N>`.
    Join(u64),
    /// `HGET` after `HSETNX` of the name a client asked for with `/nick`.
    Nick {
        fd: RawFd,
        ticket: u64,
        number: u64,
        name: String,
    },
    /// `HGETALL` of the names, for a client's `/who`.
    Who { fd: RawFd, ticket: u64 },
}
// ANCHOR_END: Ask

// ANCHOR: Joining
/// Where a waiting connection is on its way to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its number comes from the counter.
    Numbering,
    /// `client<N>` is claimed for it.
    Claiming(u64),
}

/// A connection waiting for its name before it joins.
struct Joining {
    fd: OwnedFd,
    phase: Phase,
    /// Whether this phase's request is out.
    asked: bool,
    /// When it came: it waits a bounded time.
    since: Instant,
}
// ANCHOR_END: Joining

// ANCHOR: Hold
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

/// A `/nick` Redis granted: the cluster tells the other nodes, then frees
/// the old name, in that order.
pub struct Renamed {
    pub notice: String,
    pub old: String,
    pub owner: String,
}
// ANCHOR_END: Hold

// ANCHOR: Names
/// The connections waiting for a name and the clients waiting for an
/// answer. A ticket tells an answer for the one that asked from one for
/// a newer client with the same fd.
#[derive(Default)]
pub struct Names {
    joining: BTreeMap<u64, Joining>,
    holds: HashMap<RawFd, Hold>,
    next_ticket: u64,
}

impl Names {
    // ANCHOR_END: Names
    // ANCHOR: join
    /// A new connection waits for a cluster-wide name.
    pub fn join(&mut self, fd: OwnedFd, now: Instant) {
        self.next_ticket += 1;
        let (phase, asked, since) = (Phase::Numbering, false, now);
        let joining = Joining {
            fd,
            phase,
            asked,
            since,
        };
        self.joining.insert(self.next_ticket, joining);
    }

    /// Connections waiting for a name.
    pub fn waiting(&self) -> usize {
        self.joining.len()
    }

    /// The client `fd` waits for a claim of `name`, or for `/who` if
    /// `None`.
    pub fn wait(&mut self, fd: RawFd, number: u64, name: Option<String>) {
        self.next_ticket += 1;
        let hold = Hold {
            ticket: self.next_ticket,
            number,
            name,
            asked: false,
            input: Vec::new(),
        };
        self.holds.insert(fd, hold);
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

    /// The client `fd` left: an answer for it is not for whoever gets
    /// its fd next.
    pub fn left(&mut self, fd: RawFd) {
        self.holds.remove(&fd);
    }
    // ANCHOR_END: join

    // ANCHOR: ask
    /// Pass `request` what each waiting connection and client needs next,
    /// once each: a request without an `Ask` has no answer worth reading.
    pub fn ask(&mut self, node: &str, mut request: impl FnMut(&[&[u8]], Option<Ask>)) {
        for (&ticket, joining) in self.joining.iter_mut().filter(|(_, j)| !j.asked) {
            joining.asked = true;
            match joining.phase {
                Phase::Numbering => request(&[b"INCR", NEXT], Some(Ask::Number(ticket))),
                Phase::Claiming(number) => {
                    let name = format!("client{number}");
                    claim(&owner(node, number), &name, Ask::Join(ticket), &mut request);
                }
            }
        }
        for (&fd, hold) in self.holds.iter_mut().filter(|(_, h)| !h.asked) {
            hold.asked = true;
            let (ticket, number) = (hold.ticket, hold.number);
            let Some(name) = hold.name.clone() else {
                request(&[b"HGETALL", NAMES], Some(Ask::Who { fd, ticket }));
                continue;
            };
            let owner = owner(node, number);
            let ask = Ask::Nick {
                fd,
                ticket,
                number,
                name: name.clone(),
            };
            claim(&owner, &name, ask, &mut request);
        }
    }
    // ANCHOR_END: ask

    // ANCHOR: answer
    /// Redis's reply to `ask`: a connection gets its number, then its
    /// name; a held client gets its answer, and its input back.
    pub fn answer(
        &mut self,
        ask: Ask,
        reply: &Value,
        node: &str,
        clients: &mut Clients,
        outbox: &mut Outbox,
        done: &mut Vec<Done>,
    ) -> Option<Renamed> {
        let ours = |number: u64| reply.bytes() == Some(owner(node, number).as_bytes());
        match ask {
            Ask::Number(ticket) => {
                let (Value::Integer(n), Some(joining)) = (reply, self.joining.get_mut(&ticket))
                else {
                    return None;
                };
                (joining.phase, joining.asked) = (Phase::Claiming(*n as u64), false);
            }
            Ask::Join(ticket) => {
                let joining = self.joining.get_mut(&ticket)?;
                let Phase::Claiming(number) = joining.phase else {
                    return None;
                };
                if !ours(number) {
                    // Someone took `client<N>` with /nick: the next number.
                    (joining.phase, joining.asked) = (Phase::Numbering, false);
                    return None;
                }
                let fd = self.joining.remove(&ticket)?.fd;
                done.push(Done::Join { fd, number });
            }
            // ANCHOR_END: answer
            // ANCHOR: answer-nick
            Ask::Nick {
                fd,
                ticket,
                number,
                name,
            } => {
                let taken = !ours(number);
                let Some(hold) = self.answered(fd, ticket) else {
                    if !taken {
                        outbox.free(&name, owner(node, number));
                    }
                    return None;
                };
                let input = hold.input;
                done.push(Done::Resume { fd, input });
                if taken {
                    clients.queue_line(fd, NickError::Taken.reply(name.as_bytes()));
                } else if let Ok(old) = clients.rename(fd, name.as_bytes()) {
                    let notice = format!("* {old} is now {name}");
                    clients.broadcast(&notice, None);
                    let (old, owner) = (old.to_string(), owner(node, number));
                    return Some(Renamed { notice, old, owner });
                }
            }
            Ask::Who { fd, ticket } => {
                let input = self.answered(fd, ticket)?.input;
                let names: Vec<_> = names_by_number(reply).into_iter().map(|n| n.1).collect();
                clients.queue_line(fd, format!("* online: {}", names.join(", ")));
                done.push(Done::Resume { fd, input });
            }
        }
        None
    }

    /// The hold an answer is for, taken out; `None` if its client left
    /// meanwhile (the fd may be a newer client's by now).
    fn answered(&mut self, fd: RawFd, ticket: u64) -> Option<Hold> {
        if self.holds.get(&fd).is_none_or(|h| h.ticket != ticket) {
            return None;
        }
        self.holds.remove(&fd)
    }
    // ANCHOR_END: answer-nick

    // ANCHOR: lost
    /// The connection to Redis is gone with the replies to `unanswered`:
    /// a waiting connection asks again once it is back, and a held client
    /// is answered now, not when Redis is back: it may never be.
    pub fn lost(
        &mut self,
        unanswered: impl IntoIterator<Item = Ask>,
        node: &str,
        clients: &mut Clients,
        outbox: &mut Outbox,
        done: &mut Vec<Done>,
    ) {
        for ask in unanswered {
            if let Ask::Number(ticket) | Ask::Join(ticket) = ask
                && let Some(joining) = self.joining.get_mut(&ticket)
            {
                joining.asked = false;
            }
        }
        for (fd, hold) in std::mem::take(&mut self.holds) {
            if let Some(name) = &hold.name
                && hold.asked
            {
                // Its claim may have taken the name: free it if so.
                outbox.free(name, owner(node, hold.number));
            }
            clients.queue_line(fd, OUT_OF_CONTACT);
            let input = hold.input;
            done.push(Done::Resume { fd, input });
        }
    }
    // ANCHOR_END: lost

    // ANCHOR: expire
    /// Connections that waited `wait` for a name are told so and closed:
    /// their slot and their descriptor are not held for ever. A
    /// `client<N>` claimed for one is freed.
    pub fn expire(
        &mut self,
        now: Instant,
        wait: Duration,
        node: &str,
        outbox: &mut Outbox,
        done: &mut Vec<Done>,
    ) {
        while let Some(entry) = self.joining.first_entry()
            && now.duration_since(entry.get().since) >= wait
        {
            let joining = entry.remove();
            if let Phase::Claiming(number) = joining.phase {
                outbox.free(&format!("client{number}"), owner(node, number));
            }
            let line = "* error: the other servers cannot take a new client now; try again soon";
            done.push(Done::Refuse {
                fd: joining.fd,
                line,
            });
        }
    }
}
// ANCHOR_END: expire

// ANCHOR: owner
/// Who holds a name in Redis: a node's client `number`.
pub fn owner(node: &str, number: u64) -> String {
    format!("{node} {number}")
}

/// Take `name` for `owner` if it is free (`HSETNX`), and ask who has it
/// (`HGET`), which is right even when an earlier `HSETNX` of ours took it
/// and its reply was lost with the connection.
pub fn claim<T>(owner: &str, name: &str, ask: T, request: &mut impl FnMut(&[&[u8]], Option<T>)) {
    request(&[b"HSETNX", NAMES, name.as_bytes(), owner.as_bytes()], None);
    request(&[b"HGET", NAMES, name.as_bytes()], Some(ask));
}

/// `(number, name, node)` for every name in an `HGETALL` of the names,
/// in the order of the numbers.
pub fn names_by_number(reply: &Value) -> Vec<(u64, String, String)> {
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
// ANCHOR_END: owner

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Write;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    /// The requests `ask` makes, as text.
    fn asked(names: &mut Names) -> Vec<(String, Option<Ask>)> {
        let mut out = Vec::new();
        names.ask("n", |args, ask| {
            let args: Vec<_> = args.iter().map(|a| String::from_utf8_lossy(a)).collect();
            out.push((args.join(" "), ask));
        });
        out
    }

    fn frees(outbox: &mut Outbox) -> Vec<(String, String)> {
        outbox
            .unsent()
            .filter_map(|(_, w)| match w {
                Write::Free { name, owner } => Some((name.clone(), owner.clone())),
                Write::Append(_) => None,
            })
            .collect()
    }

    #[test]
    fn a_connection_gets_a_number_then_claims_its_name_then_joins() {
        let (mut names, mut clients, mut outbox) =
            (Names::default(), Clients::new(1 << 16), Outbox::default());
        let mut done = Vec::new();
        names.join(fd(), Instant::now());
        assert_eq!(
            asked(&mut names),
            [("INCR chat:next".into(), Some(Ask::Number(1)))]
        );
        assert!(asked(&mut names).is_empty(), "asked once");
        let mut answer = |names: &mut Names, ask, reply: Value, done: &mut Vec<Done>| {
            names.answer(ask, &reply, "n", &mut clients, &mut outbox, done)
        };
        answer(&mut names, Ask::Number(1), Value::Integer(7), &mut done);
        assert_eq!(
            asked(&mut names),
            [
                ("HSETNX chat:names client7 n 7".into(), None),
                ("HGET chat:names client7".into(), Some(Ask::Join(1))),
            ]
        );
        // Another client took `client7` with /nick: a new number.
        answer(&mut names, Ask::Join(1), bulk("m 3"), &mut done);
        assert!(done.is_empty());
        assert_eq!(asked(&mut names)[0].1, Some(Ask::Number(1)));
        answer(&mut names, Ask::Number(1), Value::Integer(8), &mut done);
        asked(&mut names);
        answer(&mut names, Ask::Join(1), bulk("n 8"), &mut done);
        assert!(matches!(done[..], [Done::Join { number: 8, .. }]));
        assert_eq!(names.waiting(), 0);
    }

    #[test]
    fn a_connection_that_waits_too_long_is_refused_and_its_name_freed() {
        const WAIT: Duration = Duration::from_secs(5);
        let (mut names, mut outbox, mut done) = (Names::default(), Outbox::default(), Vec::new());
        let start = Instant::now();
        names.join(fd(), start);
        names.join(fd(), start + Duration::from_secs(1));
        asked(&mut names);
        let mut clients = Clients::new(1 << 16);
        names.answer(
            Ask::Number(1),
            &Value::Integer(4),
            "n",
            &mut clients,
            &mut outbox,
            &mut done,
        );
        names.expire(start + WAIT, WAIT, "n", &mut outbox, &mut done);
        assert!(matches!(done[..], [Done::Refuse { .. }]), "the first only");
        assert_eq!(names.waiting(), 1);
        assert_eq!(frees(&mut outbox), [("client4".into(), "n 4".into())]);
    }

    #[test]
    fn a_held_client_gets_its_answer_and_its_input_back() {
        let (mut names, mut clients, mut outbox) =
            (Names::default(), Clients::new(1 << 16), Outbox::default());
        let (alice, _) = clients.join_as(fd(), "client1".into(), Some(1));
        names.wait(alice, 1, Some("alice".into()));
        assert!(names.holds(alice));
        assert!(names.hold(alice, &[b"hi", b"\n"]));
        let asks = asked(&mut names);
        assert_eq!(asks[0].0, "HSETNX chat:names alice n 1");
        let ask = asks.into_iter().find_map(|(_, ask)| ask).unwrap();
        let mut done = Vec::new();
        let renamed = names.answer(ask, &bulk("n 1"), "n", &mut clients, &mut outbox, &mut done);
        let renamed = renamed.expect("the name is ours");
        assert_eq!(
            (renamed.old.as_str(), renamed.owner.as_str()),
            ("client1", "n 1")
        );
        assert_eq!(renamed.notice, "* client1 is now alice");
        assert_eq!(&**clients.get(alice).unwrap().name(), "alice");
        assert!(matches!(&done[..], [Done::Resume { input, .. }] if input == b"hi\n"));
        assert!(!names.holds(alice));
    }

    #[test]
    fn a_name_taken_elsewhere_is_refused_and_one_won_for_a_gone_client_freed() {
        let (mut names, mut clients, mut outbox) =
            (Names::default(), Clients::new(1 << 16), Outbox::default());
        let (bob, _) = clients.join_as(fd(), "client2".into(), Some(2));
        let mut done = Vec::new();
        let nick = |ticket| Ask::Nick {
            fd: bob,
            ticket,
            number: 2,
            name: "alice".into(),
        };
        names.wait(bob, 2, Some("alice".into()));
        let taken = names.answer(
            nick(1),
            &bulk("m 1"),
            "n",
            &mut clients,
            &mut outbox,
            &mut done,
        );
        assert!(taken.is_none());
        assert_eq!(&**clients.get(bob).unwrap().name(), "client2");
        assert_eq!(done.len(), 1, "answered");
        // Bob left before Redis answered, and the claim won: freed.
        names.wait(bob, 2, Some("alice".into()));
        names.left(bob);
        names.answer(
            nick(2),
            &bulk("n 2"),
            "n",
            &mut clients,
            &mut outbox,
            &mut done,
        );
        assert_eq!(done.len(), 1, "nobody to answer");
        assert_eq!(frees(&mut outbox), [("alice".into(), "n 2".into())]);
    }

    #[test]
    fn an_answer_for_a_client_that_left_is_not_given_to_the_next_with_its_fd() {
        let (mut names, mut clients, mut outbox) =
            (Names::default(), Clients::new(1 << 16), Outbox::default());
        let (carol, _) = clients.join_as(fd(), "client3".into(), Some(3));
        names.wait(carol, 3, None);
        let old = Ask::Who {
            fd: carol,
            ticket: 1,
        };
        names.left(carol);
        names.wait(carol, 4, None); // a new client, the same fd
        let mut done = Vec::new();
        names.answer(
            old,
            &Value::Array(Some(vec![])),
            "n",
            &mut clients,
            &mut outbox,
            &mut done,
        );
        assert!(done.is_empty() && names.holds(carol));
    }

    #[test]
    fn a_lost_connection_answers_every_held_client_and_asks_the_joins_again() {
        let (mut names, mut clients, mut outbox) =
            (Names::default(), Clients::new(1 << 16), Outbox::default());
        let (dave, _) = clients.join_as(fd(), "client5".into(), Some(5));
        names.join(fd(), Instant::now());
        names.wait(dave, 5, Some("dave".into()));
        names.hold(dave, &[b"after\n"]);
        let asks: Vec<Ask> = asked(&mut names).into_iter().filter_map(|a| a.1).collect();
        let mut done = Vec::new();
        names.lost(asks, "n", &mut clients, &mut outbox, &mut done);
        assert!(
            matches!(&done[..], [Done::Resume { fd, input }] if *fd == dave && input == b"after\n")
        );
        assert_eq!(
            frees(&mut outbox),
            [("dave".into(), "n 5".into())],
            "its claim may have won"
        );
        assert_eq!(asked(&mut names)[0].1, Some(Ask::Number(1)), "asked again");
        assert_eq!(names.waiting(), 1);
    }

    #[test]
    fn who_lists_names_in_the_order_of_their_numbers() {
        let reply = Value::Array(Some(vec![
            bulk("bob"),
            bulk("b 10"),
            bulk("alice"),
            bulk("a 9"),
            bulk("junk"),
            bulk("no-number"),
        ]));
        let names = names_by_number(&reply);
        assert_eq!(
            names,
            [
                (9, "alice".into(), "a".into()),
                (10, "bob".into(), "b".into())
            ]
        );
    }
}
