//! Facts about the write calls themselves: what `/proc/PID/io` counts, and
//! how many buffers one `writev` takes.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use kernel_facts::{accept_one, connect_to, listener};
use nix::errno::Errno;
use nix::sys::socket::{Backlog, MsgFlags, SockFlag, send, sendmsg};
use nix::sys::uio::writev;
use nix::unistd::write;

/// A connected loopback pair: (client, the server's accepted socket).
fn tcp_pair() -> (OwnedFd, OwnedFd) {
    let (listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::MAXCONN);
    let client = connect_to(addr);
    let server = accept_one(&listen_fd, SockFlag::SOCK_CLOEXEC);
    (client, server)
}

/// `syscw` of the calling thread. The tests of this file run in parallel
/// threads of one process, so `/proc/self/io` (the sum over all threads)
/// would count the other tests' writes too; `/proc/thread-self/io` counts
/// this thread's alone. Reading it makes `read` calls, which `syscw` does
/// not count.
fn syscw_of_this_thread() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("read /proc/thread-self/io");
    let line = io
        .lines()
        .find(|l| l.starts_with("syscw:"))
        .expect("a syscw line in /proc/thread-self/io");
    line["syscw:".len()..]
        .trim()
        .parse()
        .expect("syscw is a number")
}

/// How much one call to `call` raises this thread's `syscw`.
fn syscw_for(call: impl FnOnce()) -> u64 {
    let before = syscw_of_this_thread();
    call();
    syscw_of_this_thread() - before
}

/// `syscw` in `/proc/PID/io` counts `write` and `writev` calls, one each,
/// and not `send` or `sendmsg` on the same socket: a count of a server's
/// write calls from it leaves out everything it sends with `send`. (Here
/// measured per thread, `/proc/thread-self/io`; `/proc/PID/io` is the sum
/// over the process's threads.)
///
/// Book: stage 5c, "Measure first" and "What its checks prove".
#[test]
fn syscw_counts_write_and_writev_not_send() {
    let (_client, server) = tcp_pair();
    let fd = server.as_raw_fd();
    assert_eq!(
        syscw_for(|| assert_eq!(write(&server, b"write"), Ok(5))),
        1,
        "write"
    );
    assert_eq!(
        syscw_for(|| assert_eq!(
            writev(&server, &[IoSlice::new(b"write"), IoSlice::new(b"v")]),
            Ok(6)
        )),
        1,
        "writev"
    );
    assert_eq!(
        syscw_for(|| assert_eq!(send(fd, b"send", MsgFlags::MSG_NOSIGNAL), Ok(4))),
        0,
        "send"
    );
    assert_eq!(
        syscw_for(|| {
            let iov = [IoSlice::new(b"send"), IoSlice::new(b"msg")];
            let sent = sendmsg::<()>(fd, &iov, &[], MsgFlags::MSG_NOSIGNAL, None);
            assert_eq!(sent, Ok(7));
        }),
        0,
        "sendmsg"
    );
}

/// One `writev` takes at most `IOV_MAX` buffers, 1,024 on Linux: 1,024 are
/// accepted (and here written whole), 1,025 fail with `EINVAL` and write
/// nothing.
///
/// Book: stage 5c, "The new calls and flags" and "One `writev` per client
/// per round".
#[test]
fn iov_max_is_1024_buffers_per_writev() {
    let (_client, server) = tcp_pair();
    let bytes = [b'x'; 1_025];
    let buffers: Vec<IoSlice> = bytes.chunks(1).map(IoSlice::new).collect();
    assert_eq!(
        writev(&server, &buffers[..1_024]),
        Ok(1_024),
        "1,024 buffers"
    );
    assert_eq!(
        writev(&server, &buffers[..1_025]),
        Err(Errno::EINVAL),
        "1,025 buffers"
    );
}
