//! Facts about `listen` and `accept` that the book's chapters lean on.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use kernel_facts::{
    accept_one, connect_nonblocking, connect_to, listener, local_port, poll_for, reset, tcp_info,
    wait_for,
};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;
use nix::sys::socket::{
    Backlog, MsgFlags, SockFlag, SockaddrIn, getpeername, getsockopt, recv, send, setsockopt,
    sockopt,
};

/// Is the loopback connection from `remote_port` to `local_port` in the
/// kernel's table of IPv4 TCP connections (`/proc/net/tcp`, where
/// 127.0.0.1:8080 reads `0100007F:1F90`)?
fn listed(local_port: u16, remote_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.contains(&format!(
        "0100007F:{local_port:04X} 0100007F:{remote_port:04X}"
    ))
}

/// A listener on loopback with one connection in its accept queue that the
/// client has reset after sending `hello`.
fn listener_with_a_reset_connection_queued() -> (OwnedFd, u16) {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let client = connect_to(addr);
    send(client.as_raw_fd(), b"hello", MsgFlags::MSG_NOSIGNAL).expect("send");
    let client_port = local_port(&client);
    assert!(listed(addr.port(), client_port), "queued, and in the table");
    reset(client);
    // The reset has reached the queued socket once the kernel has taken the
    // connection out of its table; /proc has no notification, so poll it.
    testkit::wait_until("the reset reaches the queued connection", || {
        !listed(addr.port(), client_port)
    });
    (listen_fd, client_port)
}

/// A connection reset while it waits in the accept queue is **still
/// accepted** on Linux: `accept` succeeds (no `ECONNABORTED`) and returns a
/// socket that is already dead. (This check calls it as `nix` does, without
/// an address buffer; the next one asks for the address.)
/// `getpeername` on it fails with `ENOTCONN`; `poll` (like `epoll_wait`)
/// reports it with `POLLHUP` and `POLLERR`; the bytes the client sent before
/// its reset are still there to read, and only then does `recv` fail with
/// `ECONNRESET`. So a server must treat a failed `getpeername` or `recv` on
/// a fresh socket as that one client's error.
///
/// Book: stage 1, "The accept loop"; Appendix A, `accept4`'s errors.
#[test]
fn reset_while_queued_is_still_accepted() {
    let (listen_fd, _) = listener_with_a_reset_connection_queued();
    let fd = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    assert_eq!(
        getpeername::<SockaddrIn>(fd.as_raw_fd()).err(),
        Some(Errno::ENOTCONN),
        "getpeername on an accepted socket that was reset while queued"
    );
    let revents = poll_for(&fd, PollFlags::POLLIN, 0);
    assert!(
        revents.contains(PollFlags::POLLHUP | PollFlags::POLLERR),
        "reported as hung up and failed: {revents:?}"
    );
    let mut buf = [0u8; 16];
    let n =
        recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("the bytes sent before the reset");
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(
        recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()),
        Err(Errno::ECONNRESET),
        "the read after the data"
    );
}

/// An `accept` that **does** ask for the peer's address (as C servers often
/// do, and Rust's `TcpListener::accept` does) succeeds too, and even fills
/// in the address: the kernel reads it for `accept` without the state check
/// that makes `getpeername` on the same socket fail with `ENOTCONN` a moment
/// later. So a server that logs peers can take the address from `accept`.
///
/// Book: stage 1, "The accept loop"; Appendix A, `accept4`'s errors.
#[test]
fn reset_while_queued_still_gives_accept_the_address() {
    let (listen_fd, client_port) = listener_with_a_reset_connection_queued();
    wait_for(&listen_fd, PollFlags::POLLIN);
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut peer: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `peer` and `len` are valid for writes and `len` is its size.
    let rc = unsafe {
        libc::accept4(
            listen_fd.as_raw_fd(),
            (&raw mut peer).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    let fd = Errno::result(rc).expect("accept4 with an address buffer");
    // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    assert_eq!(u16::from_be(peer.sin_port), client_port, "the peer's port");
    assert_eq!(
        getpeername::<SockaddrIn>(fd.as_raw_fd()).err(),
        Some(Errno::ENOTCONN)
    );
}

/// `accept4` without `SOCK_NONBLOCK` returns a **blocking** socket even
/// when the listener is non-blocking: the file status flag `O_NONBLOCK` is
/// not inherited. Socket options such as `TCP_NODELAY` are: the new socket
/// is a copy of the listener's.
///
/// Book: stage 4, "The new calls and flags"; Appendix A, `accept4`.
#[test]
fn accept4_inherits_nodelay_but_not_nonblock() {
    let (listen_fd, addr) = listener(
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        Backlog::MAXCONN,
    );
    setsockopt(&listen_fd, sockopt::TcpNoDelay, &true).expect("TCP_NODELAY");
    let _client = connect_to(addr);
    let fd = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    let status = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).expect("F_GETFL"));
    assert!(
        !status.contains(OFlag::O_NONBLOCK),
        "the accepted socket is blocking"
    );
    assert!(
        getsockopt(&fd, sockopt::TcpNoDelay).expect("TCP_NODELAY"),
        "the accepted socket has the listener's TCP_NODELAY"
    );

    // The control: from a listener without TCP_NODELAY, it is off.
    let (plain_fd, plain_addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let _other = connect_to(plain_addr);
    let fd = accept_one(&plain_fd, SockFlag::SOCK_CLOEXEC);
    assert!(!getsockopt(&fd, sockopt::TcpNoDelay).expect("TCP_NODELAY"));
}

/// The accept queue holds `backlog + 1` connections, and when it is full
/// the kernel **drops** a new SYN without a word: the client is not
/// refused, its connect just waits (for the SYN retry a second later).
/// The backlog a program asks for is capped by `net.core.somaxconn`, whose
/// default equals the `SOMAXCONN` constant (4096 since Linux 5.4).
///
/// Book: stage 1, "Making a listening socket"; the introduction's
/// conventions; Appendix D, "Limits that appear at scale".
#[test]
fn listen_backlog_holds_one_more_and_is_capped_by_somaxconn() {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::new(2).unwrap());
    let queued: Vec<OwnedFd> = (0..3).map(|_| connect_to(addr)).collect();
    let info = tcp_info(&listen_fd);
    assert_eq!(info.tcpi_sacked, 2, "the queue's limit is the backlog");
    assert_eq!(info.tcpi_unacked, 3, "the queue holds backlog + 1");

    let (fourth, started) = connect_nonblocking(addr);
    assert_eq!(started, Err(Errno::EINPROGRESS));
    // Neither connected nor refused: its SYN was dropped, and the retry
    // comes after about one second.
    assert_eq!(
        poll_for(&fourth, PollFlags::POLLOUT, 300),
        PollFlags::empty(),
        "a connect to a full queue neither completes nor fails at once"
    );
    const TCP_SYN_SENT: u8 = 2; // include/net/tcp_states.h
    assert_eq!(tcp_info(&fourth).tcpi_state, TCP_SYN_SENT);
    drop(queued);

    // Any larger backlog is silently lowered to net.core.somaxconn.
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read somaxconn")
        .trim()
        .parse()
        .expect("a number");
    let (big_fd, _) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXALLOWABLE);
    assert_eq!(tcp_info(&big_fd).tcpi_sacked, somaxconn);
    assert_eq!(libc::SOMAXCONN, 4096, "the constant SOMAXCONN");
}
