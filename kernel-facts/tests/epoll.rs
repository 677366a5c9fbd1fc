//! Facts about epoll itself: level- and edge-triggered reporting, what a
//! registration belongs to, EPOLLEXCLUSIVE and EPOLLPRI.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use kernel_facts::{TIMEOUT_MS, accept_one, connect_to, listener, wait_for};
use nix::errno::Errno;
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
