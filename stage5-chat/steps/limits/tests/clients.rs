//! The client table's checks: names, queuing, leaving, the queue limit.

use std::time::Instant;

use nix::errno::Errno;
use stage5g_limits::clients::{Clients, NickError, Phase, Why};
use testkit::tcp_socket as socket;

#[test]
fn names_count_up_and_skip_taken_ones() {
    let mut clients = Clients::new(1024);
    let (a, name) = clients.join(socket());
    assert_eq!(&*name, "client1");
    clients.rename(a, b"client2").unwrap();
    let (b, name) = clients.join(socket());
    assert_eq!(&*name, "client3", "client2 is taken");
    assert_eq!(clients.online_count(), 2);
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
    let (a, _) = clients.join(socket());
    let (b, _) = clients.join(socket());
    let outsider = clients.refuse(socket(), Why::ServerFull, Instant::now());
    clients.broadcast("hi", Some(a));
    assert!(clients.get(a).unwrap().is_flushed());
    assert!(!clients.get(b).unwrap().is_flushed());
    assert!(clients.get(outsider).unwrap().is_flushed());
    assert_eq!(clients.pop_dirty(), Some(b));
    assert_eq!(clients.pop_dirty(), None);
}

#[test]
fn reasons_read_as_the_man_pages_name_them() {
    assert_eq!(Why::Error(Errno::ECONNRESET).to_string(), "ECONNRESET");
    assert_eq!(Why::LineTooLong.to_string(), "line too long");
    assert_eq!(Why::EndOfFile.to_string(), "end of file");
    assert_eq!(Why::TooSlow.notice("bob").unwrap(), "* bob left (too slow)");
    assert_eq!(Why::Shutdown.notice("bob"), None);
}

#[test]
fn leaving_frees_the_name_and_removing_the_slot() {
    let mut clients = Clients::new(1024);
    let (a, name) = clients.join(socket());
    let deadline = Instant::now();
    assert_eq!(clients.leave(a, Why::Quit, deadline), Some(name));
    assert_eq!(
        clients.leave(a, Why::EndOfFile, deadline),
        None,
        "leaves once"
    );
    assert_eq!(
        clients.get(a).unwrap().phase(),
        Phase::Leaving {
            why: Why::Quit,
            deadline
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
