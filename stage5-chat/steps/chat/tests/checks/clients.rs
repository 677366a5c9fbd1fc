//! The client table's checks: names, queuing, leaving, the queue limit.
//! Every later step with a client table of its own runs them too (this file
//! is included by path): the test file that includes it names its crate
//! `step`.

use nix::errno::Errno;
use testkit::tcp_socket as socket;

use super::step::clients::{Clients, Phase, Why};

#[test]
fn names_count_up_from_one() {
    let mut clients = Clients::new(1024);
    let (a, name) = clients.join(socket());
    assert_eq!(&*name, "client1");
    let (_, name) = clients.join(socket());
    assert_eq!(&*name, "client2");
    clients.leave(a, Why::EndOfFile);
    clients.remove(a);
    let (_, name) = clients.join(socket());
    assert_eq!(&*name, "client3", "a name is never given twice");
    assert_eq!(clients.online_count(), 2);
}

#[test]
fn a_broadcast_skips_the_sender_and_clients_not_in_the_chat() {
    let mut clients = Clients::new(1024);
    let (a, _) = clients.join(socket());
    let (b, _) = clients.join(socket());
    let (gone, _) = clients.join(socket());
    clients.leave(gone, Why::EndOfFile);
    clients.broadcast("hi", Some(a));
    assert!(clients.get(a).unwrap().is_flushed());
    assert!(!clients.get(b).unwrap().is_flushed());
    assert!(clients.get(gone).unwrap().is_flushed());
    assert_eq!(clients.pop_dirty(), Some(b));
    assert_eq!(clients.pop_dirty(), None);
}

#[test]
fn reasons_read_as_the_man_pages_name_them() {
    assert_eq!(Why::Error(Errno::ECONNRESET).to_string(), "ECONNRESET");
    assert_eq!(Why::LineTooLong.to_string(), "line too long");
    assert_eq!(Why::EndOfFile.to_string(), "end of file");
    assert_eq!(Why::TooSlow.notice("bob").unwrap(), "* bob left (too slow)");
}

#[test]
fn leaving_frees_the_name_and_removing_the_slot() {
    let mut clients = Clients::new(1024);
    let (a, name) = clients.join(socket());
    assert_eq!(clients.leave(a, Why::LineTooLong), Some(name));
    assert_eq!(clients.leave(a, Why::EndOfFile), None, "leaves once");
    assert_eq!(
        clients.get(a).unwrap().phase(),
        Phase::Leaving {
            why: Why::LineTooLong
        },
        "the first reason stays"
    );
    assert_eq!(clients.online_count(), 0);
    assert_eq!(clients.len(), 1);
    assert!(clients.remove(a).is_some());
    assert!(clients.get(a).is_none());
    assert!(clients.is_empty());
}

#[test]
fn a_queue_past_the_limit_is_too_slow() {
    let mut clients = Clients::new(4);
    let (a, _) = clients.join(socket());
    clients.queue_line(a, "abc");
    assert!(!clients.too_slow(a));
    clients.queue_line(a, "d");
    assert!(clients.too_slow(a));
}
