//! Facts about epoll itself: level- and edge-triggered reporting, what a
//! registration belongs to, EPOLLEXCLUSIVE and EPOLLPRI.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use kernel_facts::{TIMEOUT_MS, accept_one, connect_to, listener, wait_for};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, recv, send, socketpair,
};
use nix::unistd::{pipe, read, write};

fn new_epoll() -> Epoll {
    Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create1")
}

/// The events `epoll_wait` reports right now, without waiting.
fn ready_now(epoll: &Epoll) -> Vec<(EpollFlags, u64)> {
    let mut events = [EpollEvent::empty(); 8];
    let n = epoll
        .wait(&mut events, EpollTimeout::ZERO)
        .expect("epoll_wait");
    events[..n].iter().map(|e| (e.events(), e.data())).collect()
}

/// How many times `epoll_wait` reports a pipe's read end with 2 KB written
/// and 1 KB read, in the mode `flags` sets.
fn reports_of_2k_written_1k_read(flags: EpollFlags) -> usize {
    let (read_end, write_end) = pipe().expect("pipe");
    let epoll = new_epoll();
    epoll
        .add(&read_end, EpollEvent::new(EpollFlags::EPOLLIN | flags, 1))
        .expect("EPOLL_CTL_ADD");
    assert_eq!(write(&write_end, &[b'x'; 2048]), Ok(2048));
    let first = ready_now(&epoll).len();
    assert_eq!(read(&read_end, &mut [0u8; 1024]), Ok(1024));
    let second = ready_now(&epoll).len();
    first + second
}

/// The pipe example: 2 KB written, 1 KB read. Level-triggered epoll reports
/// the read end at both waits (1 KB is still there); edge-triggered reports
/// it once, and not again until new data arrives.
///
/// Book: stage 4, "The picture to keep in mind"; Appendix B, "Level-triggered
/// and edge-triggered".
#[test]
fn et_reports_a_half_read_pipe_once_lt_twice() {
    assert_eq!(reports_of_2k_written_1k_read(EpollFlags::empty()), 2);
    assert_eq!(reports_of_2k_written_1k_read(EpollFlags::EPOLLET), 1);
}

/// Put a duplicate of `fd` at descriptor number `number` (`dup2(2)`). The
/// checks use numbers far above the ones the test process hands out, so
/// no other test can be given them meanwhile.
fn dup_onto(fd: impl AsFd, number: RawFd) -> OwnedFd {
    // SAFETY: dup2 is called with an open descriptor; `number` is reserved
    // for this check, so no other OwnedFd owns it.
    let got = unsafe { libc::dup2(fd.as_fd().as_raw_fd(), number) };
    assert_eq!(Errno::result(got), Ok(number), "dup2");
    // SAFETY: dup2 just made `number` a descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(number) }
}

/// `EPOLL_CTL_DEL` for a descriptor number, open or not (nix's
/// `Epoll::delete` needs an open descriptor).
fn delete_number(epoll: &Epoll, number: RawFd) -> Result<(), Errno> {
    // SAFETY: EPOLL_CTL_DEL ignores the event pointer, which may be null.
    let rc = unsafe {
        libc::epoll_ctl(
            epoll.0.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            number,
            std::ptr::null_mut(),
        )
    };
    Errno::result(rc).map(drop)
}

/// epoll watches the open **file**, not the number: closing a descriptor
/// whose file is still open under another one (a `dup`) leaves the
/// registration in place, and events keep arriving for the closed number.
/// `EPOLL_CTL_DEL` with that number then fails with `EBADF` while it is
/// closed, and with `ENOENT` once the number is reused for another file;
/// putting a duplicate of the **same** file back at that number (`dup2`)
/// lets `EPOLL_CTL_DEL` find and remove it.
///
/// Book: stage 3, "Closing"; Appendix B, "`close` and the file"; Appendix
/// C, "Duplicated descriptors".
#[test]
fn a_duplicate_keeps_a_closed_numbers_registration() {
    const NUMBER: RawFd = 901;
    let (read_end, write_end) = pipe().expect("pipe");
    let watched = dup_onto(&read_end, NUMBER);
    let epoll = new_epoll();
    epoll
        .add(
            &watched,
            EpollEvent::new(EpollFlags::EPOLLIN, NUMBER as u64),
        )
        .expect("EPOLL_CTL_ADD");
    drop(watched); // close(901); read_end is the same open file

    write(&write_end, b"x").expect("write");
    assert_eq!(
        ready_now(&epoll),
        vec![(EpollFlags::EPOLLIN, NUMBER as u64)],
        "an event for the closed number"
    );
    assert_eq!(
        delete_number(&epoll, NUMBER),
        Err(Errno::EBADF),
        "while closed"
    );

    let stranger = dup_onto(&write_end, NUMBER); // the number reused
    assert_eq!(
        delete_number(&epoll, NUMBER),
        Err(Errno::ENOENT),
        "once reused"
    );
    assert_eq!(ready_now(&epoll).len(), 1, "still registered");

    // Back to the same file under that number: now it can be removed.
    let _ = stranger.into_raw_fd(); // dup2 below replaces it in place
    let again = dup_onto(&read_end, NUMBER);
    assert_eq!(delete_number(&epoll, NUMBER), Ok(()));
    assert_eq!(
        ready_now(&epoll),
        vec![],
        "the pipe is readable, but no longer watched"
    );
    drop(again);
}

/// A registration made with `EPOLLEXCLUSIVE` can never be modified:
/// `EPOLL_CTL_MOD` fails with `EINVAL` whatever the new events are, so such
/// a registration cannot add or drop `EPOLLOUT` as stage 4 does. Only
/// `EPOLL_CTL_DEL` and a new `ADD` change it.
///
/// Book: Appendix A, event flags; Appendix C, "The thundering herd".
#[test]
fn epollexclusive_cannot_be_modified() {
    let (one, _other) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let epoll = new_epoll();
    let exclusive = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
    epoll
        .add(&one, EpollEvent::new(exclusive, 1))
        .expect("EPOLL_CTL_ADD with EPOLLEXCLUSIVE");
    for events in [
        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT,
        EpollFlags::EPOLLIN,
        exclusive,
    ] {
        assert_eq!(
            epoll.modify(&one, &mut EpollEvent::new(events, 1)),
            Err(Errno::EINVAL),
            "EPOLL_CTL_MOD to {events:?}"
        );
    }
    assert_eq!(epoll.delete(&one), Ok(()));
}

/// `EPOLLPRI` (TCP urgent data) is level-triggered like `EPOLLIN`, but it
/// is cleared once an ordinary `read` has passed the urgent byte: a handler
/// that reads the stream (and never calls `recv(MSG_OOB)`) sees it stop.
/// The ordinary reads skip the urgent byte.
///
/// Book: stage 3, exercise 3; Appendix A, event flags.
#[test]
fn epollpri_clears_once_a_read_passes_the_urgent_byte() {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let client = connect_to(addr);
    let server = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    let epoll = new_epoll();
    let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLPRI;
    epoll
        .add(&server, EpollEvent::new(interest, 1))
        .expect("EPOLL_CTL_ADD");

    let c = client.as_raw_fd();
    send(c, b"ab", MsgFlags::empty()).expect("send");
    send(c, b"c", MsgFlags::MSG_OOB).expect("send MSG_OOB");
    send(c, b"de", MsgFlags::empty()).expect("send");

    let mut events = [EpollEvent::empty(); 1];
    let n = epoll.wait(&mut events, TIMEOUT_MS).expect("epoll_wait");
    assert_eq!(n, 1);
    assert!(events[0].events().contains(EpollFlags::EPOLLPRI));
    assert!(
        ready_now(&epoll)[0].0.contains(EpollFlags::EPOLLPRI),
        "reported again at the next wait: level-triggered"
    );

    let mut stream = Vec::new();
    while stream.len() < 4 {
        wait_for(&server, PollFlags::POLLIN);
        let mut buf = [0u8; 16];
        let n = recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
        stream.extend_from_slice(&buf[..n]);
    }
    assert_eq!(stream, b"abde", "the ordinary reads skip the urgent byte");
    assert_eq!(
        ready_now(&epoll),
        vec![],
        "EPOLLPRI is gone once the reads passed it"
    );
}

/// A connected loopback pair: (client, the server's accepted socket).
fn tcp_pair() -> (OwnedFd, OwnedFd) {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let client = connect_to(addr);
    let server = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    (client, server)
}

/// `EPOLL_CTL_ADD` and `EPOLL_CTL_MOD` both ask the socket for its
/// readiness at once: a socket with data already waiting, added
/// edge-triggered, is reported at the next `epoll_wait` without any new
/// data, and so it is again after each `MOD` (adding `EPOLLOUT`, then
/// dropping it as stage 4 does), although nothing arrived and nothing was
/// read in between. So no event is lost between accepting a connection and
/// registering it, and a `MOD` re-reports input a handler left unread.
///
/// Book: stage 4, "What its checks prove" (the `EPOLL_CTL_MOD` that removes
/// `EPOLLOUT`); stage 6, "Connecting without waiting"; Appendix B,
/// "`EPOLL_CTL_ADD`: hooking the callback".
#[test]
fn epoll_ctl_add_and_mod_recheck_readiness_at_once() {
    let (client, server) = tcp_pair();
    send(client.as_raw_fd(), b"hello", MsgFlags::MSG_NOSIGNAL).expect("send");
    wait_for(&server, PollFlags::POLLIN); // the data is there before the ADD

    let epoll = new_epoll();
    let edge = EpollFlags::EPOLLIN | EpollFlags::EPOLLET;
    epoll
        .add(&server, EpollEvent::new(edge, 7))
        .expect("EPOLL_CTL_ADD");
    assert_eq!(
        ready_now(&epoll),
        vec![(EpollFlags::EPOLLIN, 7)],
        "ADD reports the data already waiting"
    );
    assert_eq!(ready_now(&epoll), vec![], "edge-triggered: reported once");

    let with_out = edge | EpollFlags::EPOLLOUT;
    epoll
        .modify(&server, &mut EpollEvent::new(with_out, 7))
        .expect("EPOLL_CTL_MOD adding EPOLLOUT");
    assert_eq!(
        ready_now(&epoll),
        vec![(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, 7)],
        "MOD adding EPOLLOUT reports the socket again, input and room"
    );
    assert_eq!(ready_now(&epoll), vec![]);

    epoll
        .modify(&server, &mut EpollEvent::new(edge, 7))
        .expect("EPOLL_CTL_MOD dropping EPOLLOUT");
    assert_eq!(
        ready_now(&epoll),
        vec![(EpollFlags::EPOLLIN, 7)],
        "MOD dropping EPOLLOUT reports the unread input again"
    );
    assert_eq!(ready_now(&epoll), vec![]);
}

/// How many times `epoll_wait` reports `EPOLLOUT` (in the mode `flags`
/// sets) over 1,000 sends of 10 bytes, one wait after each, on a fresh
/// connection whose peer never reads: 10,000 bytes, far less than the send
/// and receive buffers hold. The report for the registration itself is not
/// counted.
fn epollout_reports_over_1000_small_sends(flags: EpollFlags) -> usize {
    let (_client, server) = tcp_pair();
    let epoll = new_epoll();
    epoll
        .add(&server, EpollEvent::new(EpollFlags::EPOLLOUT | flags, 1))
        .expect("EPOLL_CTL_ADD");
    assert_eq!(ready_now(&epoll).len(), 1, "a fresh socket is writable");
    let mut reports = 0;
    for _ in 0..1_000 {
        assert_eq!(
            send(server.as_raw_fd(), b"0123456789", MsgFlags::MSG_NOSIGNAL),
            Ok(10)
        );
        reports += ready_now(&epoll).len();
    }
    reports
}

/// `EPOLLOUT` on a socket whose send buffer never fills: level-triggered,
/// every one of 1,000 waits reports it (the socket is writable, so a loop
/// that keeps `EPOLLOUT` registered spins); edge-triggered, none does after
/// the first report, because writes that fit change nothing epoll is told
/// about.
///
/// Book: stage 4, "`EPOLLOUT` only while something is pending" and exercise
/// 4; stage 6, "One registration, edge-triggered, for both directions";
/// Appendix C, "Busy loops".
#[test]
fn epollout_lt_reports_at_every_wait_et_not_while_writes_fit() {
    assert_eq!(
        epollout_reports_over_1000_small_sends(EpollFlags::empty()),
        1_000
    );
    assert_eq!(
        epollout_reports_over_1000_small_sends(EpollFlags::EPOLLET),
        0
    );
}

/// Edge-triggered `EPOLLOUT` comes back once the send buffer has been full
/// (`send` said `EAGAIN`) and the peer's reads have made room again: that
/// is the edge a server waiting to flush is woken by. While the buffer is
/// full nothing is reported, and the room is reported once.
///
/// Book: stage 4, "Serving a connection: read and write until `EAGAIN`" and
/// "`EPOLLOUT` only while something is pending"; stage 6, "Reading and
/// writing until `EAGAIN`".
#[test]
fn epollout_et_fires_again_once_a_full_send_buffer_drains() {
    let (client, server) = tcp_pair();
    let status = OFlag::from_bits_truncate(fcntl(&server, FcntlArg::F_GETFL).expect("F_GETFL"));
    fcntl(&server, FcntlArg::F_SETFL(status | OFlag::O_NONBLOCK)).expect("F_SETFL");
    let epoll = new_epoll();
    let edge = EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
    epoll
        .add(&server, EpollEvent::new(edge, 1))
        .expect("EPOLL_CTL_ADD");
    assert_eq!(ready_now(&epoll).len(), 1, "a fresh socket is writable");

    let chunk = [b'x'; 65_536];
    let mut sent = 0;
    loop {
        match send(server.as_raw_fd(), &chunk, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::EAGAIN) => break,
            Err(err) => panic!("send: {err}"),
        }
    }
    assert_eq!(
        ready_now(&epoll),
        vec![],
        "nothing while the buffer is full"
    );

    let mut received = 0;
    let mut buf = vec![0u8; 65_536];
    while received < sent {
        wait_for(&client, PollFlags::POLLIN);
        received += recv(client.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
    }
    let mut events = [EpollEvent::empty(); 1];
    assert_eq!(
        epoll.wait(&mut events, TIMEOUT_MS),
        Ok(1),
        "room again after the peer read all {sent} bytes"
    );
    assert_eq!(events[0].events(), EpollFlags::EPOLLOUT);
    assert_eq!(ready_now(&epoll), vec![], "reported once");
}

/// An event reports the socket's whole state within its mask: with one
/// edge-triggered `EPOLLIN | EPOLLOUT` registration (stage 6's), every
/// arrival of input on a writable socket is reported with `EPOLLOUT` set
/// too, although the room did not change; small sends in between are
/// reported not at all. A loop that dispatches on the bits must not take
/// that `EPOLLOUT` for news.
///
/// Book: stage 4, "`EPOLLOUT` only while something is pending"; stage 6,
/// "One registration, edge-triggered, for both directions".
#[test]
fn et_epollin_events_of_a_writable_socket_carry_epollout() {
    let (client, server) = tcp_pair();
    let epoll = new_epoll();
    let both = EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET;
    epoll
        .add(&server, EpollEvent::new(both, 1))
        .expect("EPOLL_CTL_ADD");
    assert_eq!(ready_now(&epoll), vec![(EpollFlags::EPOLLOUT, 1)]);
    let mut buf = [0u8; 16];
    for round in 0..100 {
        assert_eq!(
            send(server.as_raw_fd(), b"0123456789", MsgFlags::MSG_NOSIGNAL),
            Ok(10)
        );
        assert_eq!(ready_now(&epoll), vec![], "round {round}: after a send");
        send(client.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL).expect("send");
        wait_for(&server, PollFlags::POLLIN);
        assert_eq!(
            ready_now(&epoll),
            vec![(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, 1)],
            "round {round}: input arrived"
        );
        assert_eq!(recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()), Ok(1));
    }
}
