//! What writing to a reset connection does: which call fails with which
//! error, and which one raises `SIGPIPE`.

use std::os::fd::{AsRawFd, OwnedFd};

use kernel_facts::{accept_one, connect_to, listener, reset, wait_for};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{Backlog, MsgFlags, SockFlag, recv, send};

/// A connected pair over loopback: (client, the server's accepted socket).
fn pair() -> (OwnedFd, OwnedFd) {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let client = connect_to(addr);
    let server = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    (client, server)
}

/// The server's socket once the client has reset the connection.
fn reset_by_peer() -> OwnedFd {
    let (client, server) = pair();
    reset(client);
    let revents = wait_for(&server, PollFlags::empty());
    assert!(
        revents.contains(PollFlags::POLLERR),
        "the reset is reported: {revents:?}"
    );
    server
}

/// Is `SIGPIPE` pending for this thread (`sigpending(2)`)?
fn sigpipe_pending() -> bool {
    // SAFETY: sigset_t is plain data; sigpending fills it in.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes.
    Errno::result(unsafe { libc::sigpending(&mut set) }).expect("sigpending");
    // SAFETY: `set` was filled in by sigpending.
    unsafe { libc::sigismember(&set, libc::SIGPIPE) == 1 }
}

/// After the peer resets a connection, the **first** `send` fails with
/// `ECONNRESET` (the pending error, which the call consumes); only the
/// **second** fails with `EPIPE`.
///
/// Book: stage 1, "The echo" and exercise 4; stage 4, exercise 5;
/// Appendix A, "The end of a connection".
#[test]
fn first_send_after_reset_is_econnreset_then_epipe() {
    let server = reset_by_peer();
    let fd = server.as_raw_fd();
    assert_eq!(
        send(fd, b"x", MsgFlags::MSG_NOSIGNAL),
        Err(Errno::ECONNRESET)
    );
    assert_eq!(send(fd, b"x", MsgFlags::MSG_NOSIGNAL), Err(Errno::EPIPE));
}

/// Without `MSG_NOSIGNAL`, `SIGPIPE` comes only with the `EPIPE`: the first
/// `send` after a reset (`ECONNRESET`) raises no signal, the second does.
/// (The signal is blocked in this thread, so it waits as pending instead of
/// acting, and the check can see it.)
///
/// Book: stage 1, exercise 4; stage 4, exercise 5; Appendix C, "One peer
/// must not end the server".
#[test]
fn only_the_epipe_send_raises_sigpipe() {
    let server = reset_by_peer();
    let fd = server.as_raw_fd();
    let mut sigpipe = SigSet::empty();
    sigpipe.add(Signal::SIGPIPE);
    sigpipe.thread_block().expect("block SIGPIPE");

    assert_eq!(send(fd, b"x", MsgFlags::empty()), Err(Errno::ECONNRESET));
    assert!(!sigpipe_pending(), "the ECONNRESET send raised SIGPIPE");
    assert_eq!(send(fd, b"x", MsgFlags::empty()), Err(Errno::EPIPE));
    assert!(sigpipe_pending(), "the EPIPE send raised no SIGPIPE");
    assert_eq!(sigpipe.wait(), Ok(Signal::SIGPIPE)); // take it, so it never acts
    sigpipe.thread_unblock().expect("unblock SIGPIPE");
}

/// When the peer's FIN came **before** its reset (it closed, and its kernel
/// answered our next bytes with RST), the very first failing `send` is
/// `EPIPE` (with `SIGPIPE`, unless `MSG_NOSIGNAL`): the kernel records a
/// reset in `CLOSE_WAIT` as `EPIPE`, not `ECONNRESET`.
///
/// Book: stage 1, "The echo"; Appendix A, "The end of a connection".
#[test]
fn a_reset_after_the_peers_fin_is_epipe_at_once() {
    let (client, server) = pair();
    drop(client); // a normal close: FIN
    wait_for(&server, PollFlags::POLLIN);
    let mut buf = [0u8; 8];
    assert_eq!(recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()), Ok(0));
    // The peer is gone; its kernel answers these bytes with a reset.
    assert_eq!(
        send(server.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL),
        Ok(1)
    );
    wait_for(&server, PollFlags::empty());
    assert_eq!(
        send(server.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL),
        Err(Errno::EPIPE)
    );
}
