//! Stage 2: a blocking TCP client for the echo servers.
//!
//! `socket` and `connect`, then for each line on stdin: send it, wait for
//! the reply line, print it. At the end of stdin it exits.

use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, connect, send, socket,
};
use nix::unistd::read;

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: stage2-tcp-client [ADDR]

Sends each line of stdin to an echo server and prints each reply.

  ADDR        HOST:PORT of the server (default 127.0.0.1:8080)
  -h, --help  print this help";

struct Args {
    addr: SocketAddr,
}

fn main() -> ExitCode {
    let args = parse_args();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let mut addr_given = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "-h" | "--help" => {
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            // A host name is resolved once, here, to its first address.
            _ if !addr_given && !arg.starts_with('-') => match arg.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => (args.addr, addr_given) = (addr, true),
                    None => usage_error(&format!("{arg:?} has no address")),
                },
                Err(_) => usage_error(&format!("cannot resolve {arg:?} (expected HOST:PORT)")),
            },
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}

fn usage_error(msg: &str) -> ! {
    log!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

/// `socket(2)` and `connect(2)`: the client's side of the handshake.
fn connect_to(addr: SocketAddr) -> Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let socket_fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(io::Error::from)
        .context("cannot create a socket")?;
    // connect(2) blocks until the server's kernel completes the handshake.
    connect(socket_fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(io::Error::from)
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(socket_fd)
}

fn run(args: &Args) -> Result<()> {
    let socket_fd = connect_to(args.addr)?;
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut received = Vec::new(); // bytes from the server not yet printed
    let mut line = Vec::new();
    loop {
        line.clear();
        if stdin
            .read_until(b'\n', &mut line)
            .context("cannot read stdin")?
            == 0
        {
            return Ok(()); // end of stdin: every reply has been printed
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n'); // the last line of a file may lack its newline
        }
        send_all(&socket_fd, &line).context("cannot send to the server")?;
        let reply = read_line(&socket_fd, &mut received)?;
        stdout
            .write_all(&reply)
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
}

/// Send every byte: `send(2)` may take only part of a buffer.
fn send_all(socket_fd: &OwnedFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match send(socket_fd.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(sent) => bytes = &bytes[sent..],
            Err(Errno::EINTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Read until `received` holds a whole line, then take it out. TCP is a
/// byte stream: one `read(2)` may return half a line or several.
fn read_line(socket_fd: &OwnedFd, received: &mut Vec<u8>) -> Result<Vec<u8>> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = received.iter().position(|&b| b == b'\n') {
            return Ok(received.drain(..=end).collect());
        }
        match read(socket_fd, &mut buf) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => {}
            Err(err) => return Err(io::Error::from(err)).context("cannot read from the server"),
        }
    }
}
