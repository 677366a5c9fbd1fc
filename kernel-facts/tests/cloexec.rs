//! What `SOCK_CLOEXEC` (and `EPOLL_CLOEXEC`) do, and what they do not.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

fn tcp_socket(flags: SockFlag) -> OwnedFd {
    socket(AddressFamily::Inet, SockType::Stream, flags, None).expect("socket")
}

/// Does a program started with `exec` have descriptor `fd` open?
fn open_after_exec(fd: &OwnedFd) -> bool {
    Command::new("test")
        .arg("-e")
        .arg(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .status()
        .expect("run test(1)")
        .success()
}

/// `SOCK_CLOEXEC` acts at `exec` only: a child made by `fork` still has the
/// descriptor (and so still holds the socket open, and its epoll
/// registrations alive, until it exits or calls `exec`); a program the
/// child `exec`s does not. A descriptor without the flag survives both.
///
/// Book: stage 1, "The new calls"; Appendix B, "`close` and the file";
/// Appendix C, "Duplicated descriptors".
#[test]
fn cloexec_closes_at_exec_not_at_fork() {
    let marked = tcp_socket(SockFlag::SOCK_CLOEXEC);
    let plain = tcp_socket(SockFlag::empty());

    // SAFETY: the child only calls fcntl and _exit, both async-signal-safe,
    // so forking a process with other threads is sound.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let open = fcntl(&marked, FcntlArg::F_GETFD).is_ok();
            // SAFETY: _exit ends the child without running the parent's
            // destructors or flushing its buffers.
            unsafe { libc::_exit(if open { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => {
            assert_eq!(
                waitpid(child, None),
                Ok(WaitStatus::Exited(child, 0)),
                "the forked child still has the SOCK_CLOEXEC descriptor"
            );
        }
    }
    assert!(!open_after_exec(&marked), "closed at exec");
    assert!(open_after_exec(&plain), "without the flag it survives exec");
}
