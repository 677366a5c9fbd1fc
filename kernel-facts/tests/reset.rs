//! What writing to a reset connection does: which call fails with which
//! error, and which one raises `SIGPIPE`.

use std::os::fd::{AsRawFd, OwnedFd};

use kernel_facts::{accept_one, connect_to, listener, reset, wait_for};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{Backlog, MsgFlags, SockFlag, recv, send};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

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
fn only_the_epipe_send_after_reset_raises_sigpipe() {
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

/// The server's socket once the client has closed normally (its FIN, read
/// here as end-of-file) and then answered one more `send` with a reset: the
/// peer is gone, so its kernel refuses the bytes. The `send` that draws the
/// reset succeeds; the next one is the first to fail.
fn reset_after_the_peers_fin() -> OwnedFd {
    let (client, server) = pair();
    drop(client); // a normal close: FIN
    wait_for(&server, PollFlags::POLLIN);
    let mut buf = [0u8; 8];
    assert_eq!(recv(server.as_raw_fd(), &mut buf, MsgFlags::empty()), Ok(0));
    assert_eq!(
        send(server.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL),
        Ok(1),
        "the send that draws the reset"
    );
    let revents = wait_for(&server, PollFlags::empty());
    assert!(
        revents.contains(PollFlags::POLLERR),
        "the reset is reported: {revents:?}"
    );
    server
}

/// When the peer's FIN came **before** its reset (it closed, and its kernel
/// answered our next bytes with RST), the very first failing `send` is
/// `EPIPE`, not `ECONNRESET`: the kernel records a reset in `CLOSE_WAIT`
/// as `EPIPE`. With `MSG_NOSIGNAL` the error is all that happens.
///
/// Book: stage 1, "The echo"; stage 5c, "One `writev` per client per
/// round"; Appendix A, "The end of a connection"; Appendix C, "One peer
/// must not end the server".
#[test]
fn a_reset_after_the_peers_fin_is_epipe_at_once() {
    let server = reset_after_the_peers_fin();
    assert_eq!(
        send(server.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL),
        Err(Errno::EPIPE)
    );
}

/// The same sequence without `MSG_NOSIGNAL` (peer's FIN, a `send` that
/// draws its reset, then the next `send`) raises `SIGPIPE` at that first
/// failing `send`, and with the signal's default action the process dies
/// of it (a shell shows exit status 141, 128 + 13).
///
/// The failing `send` runs in a forked child whose `SIGPIPE` is set back
/// to the default action (Rust starts every program, this test binary
/// too, with it ignored), so the check sees what a C server would suffer:
/// the child is killed by the signal, and the test process is not. (The
/// check before this one sees the error alone, with `MSG_NOSIGNAL`.)
///
/// Book: stage 1, "The echo"; stage 5c, "One `writev` per client per
/// round"; Appendix A, "The end of a connection"; Appendix C, "One peer
/// must not end the server".
#[test]
fn a_reset_after_the_peers_fin_kills_with_sigpipe_at_once() {
    let server = reset_after_the_peers_fin();
    // SAFETY: the child makes only raw system calls (sigaction,
    // sigprocmask, send) and then _exit, so forking a process with other
    // threads is sound.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // SAFETY: as above; every pointer is to a local or null.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGPIPE);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                let sent = libc::send(server.as_raw_fd(), b"x".as_ptr().cast(), 1, 0);
                // Still alive: say what the send did instead (1: it
                // succeeded; 2: it failed without killing).
                libc::_exit(if sent >= 0 { 1 } else { 2 })
            }
        }
        ForkResult::Parent { child } => {
            assert_eq!(
                waitpid(child, None),
                Ok(WaitStatus::Signaled(child, Signal::SIGPIPE, false)),
                "the first send after the reset kills with SIGPIPE \
                 (exit 1: the send succeeded; exit 2: it failed with no signal)"
            );
        }
    }
}
