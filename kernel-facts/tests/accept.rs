//! Facts about `listen` and `accept` that the book's chapters lean on.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use kernel_facts::{
    TIMEOUT_MS, accept_one, connect_nonblocking, connect_to, listener, local_port, poll_for, reset,
    tcp_info, wait_for,
};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::PollFlags;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    AddressFamily, Backlog, MsgFlags, SockFlag, SockType, SockaddrIn, bind, getpeername,
    getsockopt, recv, send, setsockopt, socket, sockopt,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

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

/// The backlog limit of a new loopback listener made with
/// `listen(fd, backlog)` called directly (nix's `Backlog` refuses values
/// above `SOMAXCONN`), as the kernel reports it.
fn limit_after_listen(backlog: i32) -> u32 {
    let listen_fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let any_port = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
    bind(listen_fd.as_raw_fd(), &any_port).expect("bind");
    // SAFETY: plain listen(2) on a socket this function owns.
    let rc = unsafe { libc::listen(listen_fd.as_raw_fd(), backlog) };
    Errno::result(rc).unwrap_or_else(|err| panic!("listen(fd, {backlog}): {err}"));
    tcp_info(&listen_fd).tcpi_sacked
}

/// The accept queue holds `backlog + 1` connections, and when it is full
/// the kernel **drops** a new SYN without a word: the client is not
/// refused, its connect just waits (for the SYN retry a second later).
/// The check connects without blocking and waits at most a few seconds, so
/// a kernel whose queue holds fewer fails it instead of hanging in the
/// retries.
///
/// The backlog a program asks for is capped by `net.core.somaxconn`: a
/// server's `listen(fd, SOMAXCONN)` gets `SOMAXCONN` (4096) when the sysctl
/// is at its default of 4096 (in general the smaller of the two), and any
/// larger backlog, or -1, is lowered to the sysctl without an error. The
/// limit is read back from the kernel (`TCP_INFO`, what `ss -lnt` shows as
/// the listener's Send-Q), and the small queue shows that this limit is the
/// one the kernel applies.
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

    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read /proc/sys/net/core/somaxconn")
        .trim()
        .parse()
        .expect("net.core.somaxconn is a number");
    let somaxconn_constant = libc::SOMAXCONN as u32;
    let (server_fd, _) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    assert_eq!(
        tcp_info(&server_fd).tcpi_sacked,
        somaxconn_constant.min(somaxconn),
        "listen(fd, SOMAXCONN = {somaxconn_constant}) with net.core.somaxconn = {somaxconn}"
    );
    let larger = i32::try_from(somaxconn).map_or(i32::MAX, |n| n.saturating_add(1000));
    assert_eq!(
        limit_after_listen(larger),
        somaxconn,
        "listen(fd, {larger}) is lowered to net.core.somaxconn"
    );
    assert_eq!(
        limit_after_listen(-1),
        somaxconn,
        "listen(fd, -1) asks for net.core.somaxconn"
    );
}

/// What the child of [`emfile_leaves_the_connection_queued`] found, by its
/// exit status (0: everything the check expects).
const EMFILE_STEPS: [&str; 9] = [
    "everything as expected",
    "F_DUPFD for the spare descriptor failed",
    "getrlimit or setrlimit(RLIMIT_NOFILE) failed",
    "accept4 succeeded although no descriptor was left",
    "accept4 failed, but not with EMFILE",
    "after EMFILE, poll no longer reports the listener readable: the connection left the queue",
    "after EMFILE, the edge-triggered registration reported the listener again",
    "after the spare was closed, accept4 still failed",
    "the connection accepted after EMFILE is not the one that was queued",
];

/// The child's side of [`emfile_leaves_the_connection_queued`]: run out of
/// descriptors, try to accept, free one, accept again. It returns the index
/// of the first step that went otherwise in [`EMFILE_STEPS`]. Only raw
/// system calls: the child of a multi-threaded process may not allocate.
fn emfile_child(listen_fd: RawFd, epoll_fd: RawFd, client_port: u16) -> i32 {
    // SAFETY: each call below is a plain system call on descriptors this
    // process holds, with pointers to locals valid for the call.
    unsafe {
        // The spare takes the lowest free number; with the soft limit just
        // above it, no descriptor is left.
        let spare = libc::fcntl(listen_fd, libc::F_DUPFD_CLOEXEC, 0);
        if spare < 0 {
            return 1;
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 2;
        }
        limit.rlim_cur = spare as libc::rlim_t + 1;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return 2;
        }
        let fd = libc::accept4(
            listen_fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        );
        if fd >= 0 {
            return 3;
        }
        if Errno::last() != Errno::EMFILE {
            return 4;
        }
        let mut pollfd = libc::pollfd {
            fd: listen_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut pollfd, 1, 0) != 1 || pollfd.revents & libc::POLLIN == 0 {
            return 5;
        }
        let mut event: libc::epoll_event = std::mem::zeroed();
        if libc::epoll_wait(epoll_fd, &mut event, 1, 0) != 0 {
            return 6;
        }
        libc::close(spare);
        let mut peer: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let fd = libc::accept4(
            listen_fd,
            (&raw mut peer).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        );
        if fd < 0 {
            return 7;
        }
        if u16::from_be(peer.sin_port) != client_port {
            return 8;
        }
        0
    }
}

/// When `accept4` fails with `EMFILE` (the process has no descriptor left),
/// the connection **stays in the queue**: the listener is still reported
/// readable (level-triggered, so a server that retries at once spins), an
/// edge-triggered registration does not report it again, and once a
/// descriptor is freed (the spare, closed) the next `accept4` takes that
/// same connection.
///
/// The limit is lowered in a forked child (the soft `RLIMIT_NOFILE`, just
/// above a spare descriptor), never in the test process, whose other tests
/// run in parallel and need descriptors.
///
/// Book: stage 3, "What it still cannot do"; stage 4, the `EMFILE`
/// recovery in "End-of-file: flush, then close"; stage 5b, "Accepting:
/// fair, limited, and out of descriptors"; Appendix A, "`EMFILE` and
/// `ENFILE`"; Appendix C, "Busy loops".
#[test]
fn emfile_leaves_the_connection_queued() {
    let (listen_fd, addr) = listener(
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        Backlog::MAXCONN,
    );
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll_create1");
    let edge = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 1);
    epoll.add(&listen_fd, edge).expect("EPOLL_CTL_ADD");
    let client = connect_to(addr);
    let client_port = local_port(&client);
    // The edge for this connection is taken here, before the child runs.
    let mut events = [EpollEvent::empty(); 1];
    assert_eq!(epoll.wait(&mut events, TIMEOUT_MS), Ok(1), "the edge");
    assert_eq!(
        tcp_info(&listen_fd).tcpi_unacked,
        1,
        "one connection queued"
    );

    // SAFETY: the child makes only raw system calls and then _exit, so
    // forking a process with other threads is sound.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let step = emfile_child(listen_fd.as_raw_fd(), epoll.0.as_raw_fd(), client_port);
            // SAFETY: _exit ends the child without running the parent's
            // destructors or flushing its buffers.
            unsafe { libc::_exit(step) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).expect("waitpid");
            let WaitStatus::Exited(_, step) = status else {
                panic!("the child did not exit normally: {status:?}");
            };
            assert_eq!(step, 0, "{}", EMFILE_STEPS[step as usize]);
        }
    }
    assert_eq!(
        tcp_info(&listen_fd).tcpi_unacked,
        0,
        "the child accepted the one queued connection"
    );
}
