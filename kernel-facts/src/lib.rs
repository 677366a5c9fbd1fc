//! The few helpers the kernel-facts checks share: a loopback listener, a
//! connected client, a wait with a timeout, and a reset. Each check in
//! `tests/` shows one fact about the kernel that the book relies on; run
//! them with `cargo test -p kernel-facts`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, accept4, bind, connect, getsockname,
    getsockopt, listen, setsockopt, socket, sockopt,
};

/// How long any wait lasts before a check gives up: far longer than
/// anything on loopback takes, so only a kernel that behaves differently
/// (or a broken check) reaches it.
pub const TIMEOUT_MS: u16 = 5_000;

/// A TCP listener on 127.0.0.1 with a port the kernel picks.
pub fn listener(flags: SockFlag, backlog: Backlog) -> (OwnedFd, SocketAddrV4) {
    let listen_fd = socket(AddressFamily::Inet, SockType::Stream, flags, None).expect("socket");
    let any_port = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    bind(listen_fd.as_raw_fd(), &any_port).expect("bind");
    listen(&listen_fd, backlog).expect("listen");
    let local: SockaddrIn = getsockname(listen_fd.as_raw_fd()).expect("getsockname");
    (listen_fd, SocketAddrV4::from(local))
}

/// A blocking client connected to `addr`. The connect itself is made
/// non-blocking and waited for with [`TIMEOUT_MS`]: a blocking `connect`
/// whose SYN the kernel drops (a full accept queue) would wait for the SYN
/// retries, about two minutes, where this fails within seconds.
pub fn connect_to(addr: SocketAddrV4) -> OwnedFd {
    let (fd, started) = connect_nonblocking(addr);
    match started {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(err) => panic!("connect to {addr}: {err}"),
    }
    let revents = poll_for(&fd, PollFlags::POLLOUT, TIMEOUT_MS);
    assert!(
        !revents.is_empty(),
        "connect to {addr} neither completed nor failed within {TIMEOUT_MS} ms"
    );
    let error = getsockopt(&fd, sockopt::SocketError).expect("getsockopt(SO_ERROR)");
    assert_eq!(error, 0, "connect to {addr}: {}", Errno::from_raw(error));
    let status = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL).expect("F_GETFL"));
    fcntl(&fd, FcntlArg::F_SETFL(status - OFlag::O_NONBLOCK)).expect("F_SETFL");
    fd
}

/// A non-blocking socket and what `connect(2)` to `addr` said on it (on
/// Linux, `EINPROGRESS`).
pub fn connect_nonblocking(addr: SocketAddrV4) -> (OwnedFd, nix::Result<()>) {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let started = connect(fd.as_raw_fd(), &SockaddrIn::from(addr));
    (fd, started)
}

/// The local port of a socket.
pub fn local_port(fd: &OwnedFd) -> u16 {
    let local: SockaddrIn = getsockname(fd.as_raw_fd()).expect("getsockname");
    local.port()
}

/// `poll(2)` for `events` with [`TIMEOUT_MS`]; returns what was reported.
/// `POLLERR` and `POLLHUP` are always reported, so `PollFlags::empty()`
/// waits for an error or a hang-up alone.
pub fn wait_for(fd: impl AsFd, events: PollFlags) -> PollFlags {
    let revents = poll_for(fd, events, TIMEOUT_MS);
    assert!(
        !revents.is_empty(),
        "nothing reported within {TIMEOUT_MS} ms (waiting for {events:?})"
    );
    revents
}

/// `poll(2)` for `events` for at most `ms` milliseconds; empty if nothing
/// was reported in that time.
pub fn poll_for(fd: impl AsFd, events: PollFlags, ms: u16) -> PollFlags {
    let mut fds = [PollFd::new(fd.as_fd(), events)];
    loop {
        match poll(&mut fds, ms) {
            Ok(_) => return fds[0].revents().unwrap_or(PollFlags::empty()),
            Err(Errno::EINTR) => continue,
            Err(err) => panic!("poll: {err}"),
        }
    }
}

/// Wait until the listener has a connection queued, then take it with
/// `accept4(2)` and `flags`.
pub fn accept_one(listen_fd: &OwnedFd, flags: SockFlag) -> OwnedFd {
    wait_for(listen_fd, PollFlags::POLLIN);
    let fd = accept4(listen_fd.as_raw_fd(), flags).expect("accept4");
    // SAFETY: accept4(2) just returned this descriptor; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Close with a reset (RST) instead of a FIN: `SO_LINGER` with a zero
/// timeout, then `close(2)`.
pub fn reset(fd: OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&fd, sockopt::Linger, &linger).expect("SO_LINGER");
    drop(fd);
}

/// `getsockopt(TCP_INFO)`: the kernel's view of a TCP socket. For a
/// listener, `tcpi_unacked` is the accept queue's length and `tcpi_sacked`
/// its limit (what `ss -lt` shows as Recv-Q and Send-Q).
pub fn tcp_info(fd: &OwnedFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain old data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes and `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    Errno::result(rc).expect("getsockopt(TCP_INFO)");
    info
}
