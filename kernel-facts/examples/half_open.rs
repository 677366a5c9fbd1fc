//! `half_open SYNS`: how many half-open connections (`SYN_RECV`) does a
//! listener keep? `scripts/syncookies` runs this in a throwaway network
//! namespace, once with `net.ipv4.tcp_syncookies` 1 and once with 0, and a
//! small `net.ipv4.tcp_max_syn_backlog`.
//!
//! It sends SYNS handcrafted SYNs (a raw socket, so it needs root) to a
//! listener with backlog 64, from 10.9.9.9, an address the namespace routes
//! to `lo` but does not own: the SYN-ACKs go nowhere, so every connection
//! stays half-open. Then it counts the `SYN_RECV` entries in /proc/net/tcp.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kernel_facts::listener;
use nix::errno::Errno;
use nix::sys::socket::{Backlog, SockFlag};

const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);

/// The ones' complement sum of 16-bit words, as IP and TCP checksums use.
fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet carrying a TCP SYN from SOURCE:`sport` to 127.0.0.1:`dport`.
fn syn_packet(sport: u16, dport: u16) -> Vec<u8> {
    let dest = Ipv4Addr::LOCALHOST;
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&u32::from(sport).wrapping_mul(7919).to_be_bytes());
    tcp[12] = 5 << 4; // header length: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&SOURCE.octets());
    pseudo.extend_from_slice(&dest.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0u8; 20];
    ip[0] = 0x45; // IPv4, 5 words
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64; // TTL
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&SOURCE.octets());
    ip[16..20].copy_from_slice(&dest.octets());
    // The kernel fills in the IP checksum (and the id) for IPPROTO_RAW.
    ip.extend_from_slice(&tcp);
    ip
}

/// How many connections to `port` are in state SYN_RECV (03).
fn half_open(port: u16) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let local = format!("0100007F:{port:04X}");
    Ok(table
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1] == local && fields[3] == "03"
        })
        .count())
}

fn main() -> Result<()> {
    let syns: u16 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("SYNS must be a number")?,
        None => 100,
    };
    let (_listen_fd, addr) = listener(SockFlag::SOCK_CLOEXEC, Backlog::new(64)?);
    // SAFETY: plain socket(2) call; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    let raw = Errno::result(raw).context("cannot open a raw socket (run as root)")?;
    // SAFETY: socket(2) just returned this descriptor; nothing else owns it.
    let raw = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid start.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
    for i in 0..syns {
        let packet = syn_packet(20_000 + i, addr.port());
        // SAFETY: `packet` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                raw.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        Errno::result(sent).context("sendto")?;
    }
    // Loopback delivers in microseconds; look until the count is steady.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut count = half_open(addr.port())?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100)); // /proc has no notification
        let now = half_open(addr.port())?;
        if now == count {
            break;
        }
        count = now;
    }
    println!("{syns} SYNs sent, {count} half-open (SYN_RECV), listen backlog 64");
    Ok(())
}
