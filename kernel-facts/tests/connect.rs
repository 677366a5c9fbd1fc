//! What a non-blocking `connect` returns on loopback.

use kernel_facts::{accept_one, connect_nonblocking, listener, wait_for};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{Backlog, SockFlag, getsockopt, sockopt};

/// A non-blocking `connect`, even on loopback where the whole handshake
/// takes microseconds, returns `EINPROGRESS`: the kernel sends the SYN and
/// returns while it still holds the socket, so the answer cannot have been
/// processed yet. `EPOLLOUT` (here `POLLOUT`) then says it finished, and
/// `SO_ERROR` says how. The check tries 500 times.
///
/// Book: stage 6, "Connecting without waiting"; Appendix A, `EINPROGRESS`.
#[test]
fn nonblocking_connect_on_loopback_is_einprogress() {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    for attempt in 0..500 {
        let (fd, started) = connect_nonblocking(addr);
        assert_eq!(started, Err(Errno::EINPROGRESS), "attempt {attempt}");
        wait_for(&fd, PollFlags::POLLOUT);
        assert_eq!(
            getsockopt(&fd, sockopt::SocketError),
            Ok(0),
            "attempt {attempt}"
        );
        drop(accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC));
    }
}
