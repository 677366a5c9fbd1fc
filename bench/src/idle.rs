//! The ping-pong among idle connections: the benchmark's own driver, since
//! the claim it tests needs one client busy while thousands sit silent.
//!
//! `poll(2)` is handed every watched descriptor on every call and checks
//! each one; `epoll_wait(2)` hands back only the ready ones. So with N idle
//! connections open, one client's round trip costs a poll server O(N) and an
//! epoll server O(1). The driver opens N connections (each proven served by
//! one echoed byte), then one more client sends `size` bytes and waits for
//! them, again and again for a fixed time, while the benchmark reads the
//! server's CPU time around that stretch. Blocking sockets, each with a
//! timeout, on one thread pinned to the tester's CPU.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::socket::{setsockopt, sockopt};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// How long any one connect, read or write may take.
const IO_LIMIT: Duration = Duration::from_secs(10);

/// Connections opened before their echoes are read: far below the accept
/// queue (`net.core.somaxconn`, 4,096 by default), so no SYN is dropped
/// while a server that accepts one connection per wake-up catches up.
const BATCH: usize = 256;

/// The server's CPU time so far (user, system), from the benchmark's side.
pub type CpuNow<'a> = &'a (dyn Fn() -> Option<(f64, f64)> + Sync);

/// One run; returns the figures as the tester would print them (JSON) and
/// the server's CPU seconds (user, system) over the ping-pong stretch. Gives up with an
/// error past `limit`.
pub fn ping_pong(
    addr: SocketAddr,
    idle: u64,
    size: u64,
    ping_for: Duration,
    limit: Duration,
    cpu: Option<usize>,
    server_cpu: CpuNow,
) -> Result<(Value, Option<(f64, f64)>)> {
    // A thread of its own, pinned like the tester; the scope joins it.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(cpu) = cpu {
                    let mut set = CpuSet::new();
                    set.set(cpu).context("no such CPU")?;
                    // Pid 0 is the calling thread.
                    sched_setaffinity(Pid::from_raw(0), &set).context("cannot pin the driver")?;
                }
                drive(addr, idle, size, ping_for, limit, server_cpu)
            })
            .join()
            .unwrap_or_else(|_| bail!("the ping-pong driver panicked"))
    })
}

fn drive(
    addr: SocketAddr,
    idle: u64,
    size: u64,
    ping_for: Duration,
    limit: Duration,
    server_cpu: CpuNow,
) -> Result<(Value, Option<(f64, f64)>)> {
    let start = Instant::now();
    let deadline = start + limit;
    let mut held: Vec<TcpStream> = Vec::with_capacity(idle as usize);
    while (held.len() as u64) < idle {
        if Instant::now() > deadline {
            bail!(
                "held {} of {idle} idle connections after {}s",
                held.len(),
                limit.as_secs()
            );
        }
        let batch = BATCH.min((idle - held.len() as u64) as usize);
        let first = held.len();
        for _ in 0..batch {
            held.push(
                open(addr)
                    .with_context(|| format!("idle connection {} of {idle}", held.len() + 1))?,
            );
        }
        // One byte each, echoed: the server has accepted and watches them all.
        for stream in &mut held[first..] {
            stream
                .write_all(b".")
                .context("cannot write to an idle connection")?;
        }
        let mut byte = [0u8; 1];
        for stream in &mut held[first..] {
            stream
                .read_exact(&mut byte)
                .context("an idle connection's byte did not come back")?;
        }
    }
    let setup_s = start.elapsed().as_secs_f64();

    let mut active = open(addr).context("the ping-pong connection")?;
    setsockopt(&active, sockopt::TcpNoDelay, &true).context("cannot set TCP_NODELAY")?;
    let message = vec![b'x'; size as usize];
    let mut echo = vec![0u8; size as usize];
    // One warm-up round trip, so the stretch starts with a served client.
    round_trip(&mut active, &message, &mut echo)?;
    let cpu_before = server_cpu();
    let began = Instant::now();
    let mut round_trips = 0u64;
    while began.elapsed() < ping_for {
        round_trip(&mut active, &message, &mut echo)
            .with_context(|| format!("after {round_trips} round trips"))?;
        round_trips += 1;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let cpu_after = server_cpu();
    let server_cpu_s = cpu_before
        .zip(cpu_after)
        .map(|(b, a)| (a.0 - b.0, a.1 - b.1));

    // Resets rather than FINs: no TIME_WAIT left behind for the next run.
    for stream in held.iter().chain([&active]) {
        let _ = setsockopt(
            stream,
            sockopt::Linger,
            &nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        );
    }
    let figures = json!({
        "idle": idle,
        "held": held.len(),
        "size": size,
        "round_trips": round_trips,
        "elapsed_s": elapsed,
        "round_trips_per_s": round_trips as f64 / elapsed,
        "setup_s": setup_s,
    });
    Ok((figures, server_cpu_s))
}

fn open(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_LIMIT)?;
    stream.set_read_timeout(Some(IO_LIMIT))?;
    stream.set_write_timeout(Some(IO_LIMIT))?;
    Ok(stream)
}

fn round_trip(stream: &mut TcpStream, message: &[u8], echo: &mut [u8]) -> Result<()> {
    stream.write_all(message).context("ping-pong write")?;
    stream.read_exact(echo).context("ping-pong read")?;
    if echo != message {
        bail!("the echo differs from what was sent");
    }
    Ok(())
}
