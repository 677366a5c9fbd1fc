//! `syn_schedule [SECONDS]`: when does the kernel send the SYNs of a connect
//! that gets no answer, and when does it give up? `scripts/syn-schedule`
//! runs this in a throwaway network namespace (it needs root for the
//! packet socket).
//!
//! A listener with backlog 0 has its queue filled by one connection, so it
//! drops every further SYN; a non-blocking connect to it then retries until
//! `tcp_syn_retries` (plus `tcp_syn_linear_timeouts` since Linux 6.5) runs
//! out. A packet socket on `lo` timestamps each SYN as it leaves. It stops at
//! the connect's failure, or after SECONDS (default 200).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kernel_facts::{connect_nonblocking, connect_to, listener};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{Backlog, SockFlag, SockaddrIn, getsockname, getsockopt, sockopt};

fn sysctl(name: &str) -> String {
    let path = format!("/proc/sys/net/ipv4/{name}");
    std::fs::read_to_string(path).map_or_else(|_| "(absent)".to_string(), |v| v.trim().to_string())
}

/// A packet socket that sees every packet on `lo`.
fn capture_lo() -> Result<OwnedFd> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    let fd = Errno::result(fd).context("cannot open a packet socket (run as root)")?;
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    // SAFETY: the name is a NUL-terminated C string.
    addr.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    Errno::result(rc).context("cannot bind the packet socket to lo")?;
    Ok(fd)
}

/// Is this captured frame a SYN (without ACK) from `src` to `dst`, seen
/// leaving (so each packet counts once on loopback)?
fn is_syn(frame: &[u8], outgoing: bool, src: u16, dst: u16) -> bool {
    const ETH: usize = 14;
    if !outgoing || frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[9] != 6 || ip.len() < ihl + 14 {
        return false;
    }
    let tcp = &ip[ihl..];
    let port = |at: usize| u16::from_be_bytes([tcp[at], tcp[at + 1]]);
    let flags = tcp[13];
    port(0) == src && port(2) == dst && flags & 0x02 != 0 && flags & 0x10 == 0
}

fn main() -> Result<()> {
    let limit = match std::env::args().nth(1) {
        Some(s) => Duration::from_secs(s.parse().context("SECONDS must be a number")?),
        None => Duration::from_secs(200),
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!(
        "kernel {}, tcp_syn_retries {}, tcp_syn_linear_timeouts {}",
        release.trim(),
        sysctl("tcp_syn_retries"),
        sysctl("tcp_syn_linear_timeouts")
    );

    let capture = capture_lo()?;
    let (_listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::new(0)?);
    let _filler = connect_to(addr); // the queue (backlog + 1 = 1) is now full
    let start = Instant::now();
    let (client, started) = connect_nonblocking(addr);
    if started != Err(Errno::EINPROGRESS) {
        bail!("expected EINPROGRESS from connect, got {started:?}");
    }
    let client_port = getsockname::<SockaddrIn>(client.as_raw_fd())?.port();

    let mut syns: u32 = 0;
    let mut frame = [0u8; 2048];
    loop {
        if start.elapsed() > limit {
            println!("stopped after {limit:?}; the connect was still waiting");
            return Ok(());
        }
        let mut fds = [
            PollFd::new(capture.as_fd(), PollFlags::POLLIN),
            PollFd::new(client.as_fd(), PollFlags::POLLOUT),
        ];
        match poll(&mut fds, PollTimeout::from(1000u16)) {
            Err(Errno::EINTR) => continue,
            other => other?,
        };
        let packet_ready = fds[0].any().unwrap_or(false);
        let connect_done = fds[1].any().unwrap_or(false);
        if packet_ready {
            // SAFETY: sockaddr_ll is plain data; recvfrom fills it in.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `frame`, `from` and `len` are valid for writes.
            let n = unsafe {
                libc::recvfrom(
                    capture.as_raw_fd(),
                    frame.as_mut_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            let n = Errno::result(n)? as usize;
            let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
            if is_syn(&frame[..n], outgoing, client_port, addr.port()) {
                let label = if syns == 0 { "SYN" } else { "retry" };
                println!(
                    "{label:5} {syns:2} at {:6.2} s",
                    start.elapsed().as_secs_f64()
                );
                std::io::stdout().flush()?;
                syns += 1;
            }
        }
        if connect_done && !packet_ready {
            let error = Errno::from_raw(getsockopt(&client, sockopt::SocketError)?);
            println!(
                "connect failed after {:.1} s with {error} ({} SYNs: 1 + {} retries)",
                start.elapsed().as_secs_f64(),
                syns,
                syns.saturating_sub(1)
            );
            return Ok(());
        }
    }
}
