//! Test support for the workbook's exercise checks.
//!
//! Every stage's tests start the real binary, read its `listening on` line,
//! talk to it over loopback and kill it when the test ends. Every wait here
//! has a timeout, so a broken server fails a test instead of hanging it.

use std::net::TcpListener;
use std::time::Duration;

mod bins;
pub mod built;
mod client;
pub mod conventions;
pub mod faults;
mod interest;
pub mod redis;
mod server;
mod sock_diag;
mod words;

pub use bins::{bin, workspace_bin, workspace_root};
pub use client::{Client, ReadFailure, set_linger_zero};
pub use interest::{epoll_flags, interest_list};
pub use server::{Server, holds_within_timeout, wait_for_exit, wait_until};
pub(crate) use words::bytes;
pub use words::{count, duration};

/// How long any single wait may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh TCP socket, neither bound nor connected: a descriptor for
/// tests of data structures that own one per client.
pub fn tcp_socket() -> std::os::fd::OwnedFd {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket(2)")
}

/// A port on loopback where nothing listens (bound once, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe listener");
    listener.local_addr().expect("probe address").port()
}
