//! `tester hold`: open `--connections N`, keep them open for `--duration`
//! while reading and discarding whatever the server sends, and report how
//! many succeeded, how long reaching N took and, with `--server-pid`, what
//! each connection costs the server in memory.
//!
//! Two limits sit on the tester's side, and both are moved out of the way so
//! that the server is what gets measured: one source address has only the
//! ephemeral port range (about 28,000 ports), so past that connections are
//! bound to 127.0.0.2, 127.0.0.3, ...; and one process may open only
//! `RLIMIT_NOFILE` descriptors, so past that the connections are spread over
//! worker processes (`worker.rs`).

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::{HoldArgs, addr_list, show_addrs, show_duration};
use crate::net::{self, Deadlines, Errors, Failure, ReadEnd, Slots};
use crate::report::{Latency, LatencyCounts, Outcome, Progress, duration, per_second, thousands};
use crate::worker;

/// Descriptors a process keeps for itself (stdio, epoll, pipes): the rest
/// may be connections.
const RESERVED_FDS: u64 = 64;
/// Ports of the ephemeral range left for everything else on the machine.
const SPARE_PORTS: u64 = 1000;

/// One process's share of a hold run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldJob {
    /// The run's addresses; connection i goes to `targets[i % len]`.
    pub targets: Vec<SocketAddr>,
    /// The run-wide number of this share's first connection: it decides
    /// the source address, so two processes never crowd one address.
    pub first: u64,
    pub count: u64,
    /// Connections per source address.
    pub per_source: u64,
    pub concurrency: u32,
    pub timeout: Duration,
    /// What each connection sends once connected (`--send`, with its CRLF).
    pub send: Option<Vec<u8>>,
}

/// How the ramp-up to N went (one process's share).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Ramp {
    pub open: u64,
    pub errors: Errors,
    pub reach: Duration,
    pub latency: LatencyCounts,
}

/// How the holding went (one process's share).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Held {
    pub open_at_end: u64,
    pub closed_by_server: u64,
    pub bytes_discarded: u64,
}

/// When a share stops holding.
pub enum Stop {
    /// This long after the ramp ended (a single-process run).
    After(Duration),
    /// When standard input reaches end-of-file: the parent's signal to a worker.
    StdinClosed,
}

struct Conn {
    fd: OwnedFd,
    target: SocketAddr,
    serial: u64,
    started: Instant,
    open: bool,
}

/// The epoll token for standard input; connection tokens are slot indexes.
const STDIN_TOKEN: u64 = u64::MAX;

pub fn run(args: &HoldArgs) -> Result<Outcome> {
    let targets = &args.common.addrs;
    // ANCHOR: split
    let fd_limit = net::raise_fd_limit();
    let per_process = fd_limit.saturating_sub(RESERVED_FDS).max(1);
    let per_source = args.per_source.unwrap_or_else(|| {
        u64::from(net::ephemeral_ports())
            .saturating_sub(SPARE_PORTS)
            .max(1)
    });
    let mut notes = Vec::new();

    // Only 127.0.0.0/8 offers more source addresses; elsewhere (::1) one
    // address's port range (to each target) is the ceiling.
    let spreads = targets
        .iter()
        .all(|t| matches!(t.ip(), std::net::IpAddr::V4(ip) if ip.is_loopback()));
    let mut count = args.connections;
    let ceiling = per_source.saturating_mul(targets.len() as u64);
    if !spreads && count > ceiling {
        notes.push(format!(
            "asked for {}, capped at {}: {} is the only source address for this target, \
             and one address has only the ephemeral port range",
            thousands(count as f64),
            thousands(ceiling as f64),
            if targets.iter().any(SocketAddr::is_ipv6) {
                "::1"
            } else {
                "the default"
            },
        ));
        count = ceiling;
    }
    let workers = u64::from(args.workers.unwrap_or(0))
        .max(count.div_ceil(per_process))
        .min(count);
    if let Some(asked) = args.workers
        && u64::from(asked) < workers
    {
        notes.push(format!(
            "used {workers} worker processes, not {asked}: one process may open {fd_limit} descriptors"
        ));
    }

    let rss_before = args.server_pid.map(vm_rss).transpose()?;
    let jobs: Vec<HoldJob> = (0..workers)
        .map(|w| {
            let first = count * w / workers;
            HoldJob {
                targets: targets.clone(),
                first,
                count: count * (w + 1) / workers - first,
                per_source,
                concurrency: (args.concurrency as u64).div_ceil(workers).max(1) as u32,
                timeout: args.common.timeout,
                send: args
                    .send
                    .as_ref()
                    .map(|line| format!("{line}\r\n").into_bytes()),
            }
        })
        .collect();
    // ANCHOR_END: split

    let mut rss_after = None;
    let (ramps, helds) = if workers == 1 {
        let mut ramp_copy = Ramp::default();
        let mut progress = Progress::new();
        let held = run_part(
            &jobs[0],
            Stop::After(args.duration),
            &mut |ramp| ramp_copy = ramp.clone(),
            &mut |open| progress.tick(|| format!("{} connections open", thousands(open as f64))),
            &mut || rss_after = args.server_pid.map(vm_rss),
        )?;
        progress.finish();
        (vec![ramp_copy], vec![held])
    } else {
        worker::hold(&jobs, args.duration, &mut || {
            rss_after = args.server_pid.map(vm_rss)
        })?
    };
    // A server that died under the load still leaves the tester's figures.
    let rss_after = rss_after.transpose().unwrap_or_else(|err| {
        notes.push(format!(
            "no server memory figure after: {err:#} (did it exit?)"
        ));
        None
    });

    let mut errors = Errors::default();
    let mut latency = Latency::default();
    let (mut open, mut reach) = (0, Duration::ZERO);
    for ramp in &ramps {
        open += ramp.open;
        reach = reach.max(ramp.reach);
        errors.merge(&ramp.errors);
        latency.merge(&ramp.latency);
    }
    let mut held = Held::default();
    for part in &helds {
        held.open_at_end += part.open_at_end;
        held.closed_by_server += part.closed_by_server;
        held.bytes_discarded += part.bytes_discarded;
    }
    if open == 0 {
        return Err(errors.cannot_connect(targets[0]));
    }

    let mut settings = format!(
        "tester hold {} --connections {} --duration {} --concurrency {} --timeout {}",
        show_addrs(targets),
        args.connections,
        show_duration(args.duration),
        args.concurrency,
        show_duration(args.common.timeout)
    );
    if let Some(pid) = args.server_pid {
        settings += &format!(" --server-pid {pid}");
    }
    if let Some(w) = args.workers {
        settings += &format!(" --workers {w}");
    }
    if let Some(line) = &args.send {
        settings += &format!(" --send {line:?}");
    }
    let sources = count.div_ceil(ceiling);
    let mut spread = Vec::new();
    if workers > 1 {
        spread.push(format!("{workers} worker processes"));
    }
    if sources > 1 {
        spread.push(format!("source addresses 127.0.0.1-127.0.0.{sources}"));
    }
    let spread = if spread.is_empty() {
        String::new()
    } else {
        format!(" ({})", spread.join(", "))
    };
    let mut summary = format!(
        "{settings}\n\
         connections  {} of {} open in {}{spread}\n\
         held         {} still open after {} ({} closed by the server, {} bytes read and discarded)\n\
         latency      {}  (connect)\n\
         errors       {}",
        thousands(open as f64),
        thousands(count as f64),
        duration(reach),
        thousands(held.open_at_end as f64),
        show_duration(args.duration),
        held.closed_by_server,
        thousands(held.bytes_discarded as f64),
        latency.describe(&[50.0, 99.0]),
        errors.describe(),
    );
    let per_connection = match (rss_before, rss_after) {
        (Some(before), Some(after)) if held.open_at_end > 0 => {
            Some(after.saturating_sub(before) as f64 / held.open_at_end as f64)
        }
        _ => None,
    };
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        summary += &format!(
            "\nserver       VmRSS {} before, {} with the connections open",
            mib(before),
            mib(after)
        );
        if let Some(bytes) = per_connection {
            summary += &format!(": {} bytes per connection", thousands(bytes));
        }
    }
    for note in &notes {
        summary += &format!("\nnote         {note}");
    }
    let json = json!({
        "command": "hold",
        "settings": {
            "addr": targets[0].to_string(),
            "addrs": addr_list(targets),
            "connections": args.connections,
            "duration_s": args.duration.as_secs_f64(),
            "concurrency": args.concurrency,
            "timeout_s": args.common.timeout.as_secs_f64(),
            "server_pid": args.server_pid,
            "workers": workers,
            "send": args.send,
        },
        "attempted": count,
        "open": open,
        "reach_s": reach.as_secs_f64(),
        "connections_per_s": per_second(open, reach),
        "open_at_end": held.open_at_end,
        "closed_by_server": held.closed_by_server,
        "latency": latency.json(&[50.0, 99.0]),
        "errors": errors,
        "server_rss_before": rss_before,
        "server_rss_after": rss_after,
        "server_bytes_per_connection": per_connection,
        "notes": notes,
    });
    Ok(Outcome {
        summary,
        json,
        failed: false,
    })
}

/// Run one process's share: ramp up to `job.count` connections with
/// `job.concurrency` handshakes in flight, report the ramp, hold until
/// `stop`, call `before_close`, close everything.
pub fn run_part(
    job: &HoldJob,
    stop: Stop,
    on_ramped: &mut dyn FnMut(&Ramp),
    on_tick: &mut dyn FnMut(u64),
    before_close: &mut dyn FnMut(),
) -> Result<Held> {
    let epoll = net::epoll_create()?;
    if let Stop::StdinClosed = stop {
        // Level-triggered: one read per event is enough for a pipe that only
        // ever says "stop" by closing.
        let stdin = std::io::stdin();
        epoll
            .add(
                stdin.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, STDIN_TOKEN),
            )
            .map_err(std::io::Error::from)
            .context("cannot watch standard input")?;
    }
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut conns: Slots<Conn> = Slots::default();
    let mut deadlines = Deadlines::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut ramp = Ramp::default();
    let mut latency = Latency::default();
    let mut held = Held::default();
    let (mut next, mut connecting) = (0u64, 0u64);
    let start = Instant::now();
    let mut hold_until: Option<Instant> = None;
    let mut stopped = false;

    while !stopped {
        let now = Instant::now();
        let first_wave = job.count.min(u64::from(job.concurrency));
        if ramp.open == 0 && ramp.errors.total() >= first_wave {
            return Err(ramp.errors.cannot_connect(job.targets[0]));
        }
        while next < job.count && connecting < u64::from(job.concurrency) {
            // The run-wide number decides the target, and among that
            // target's connections, the source address.
            let number = job.first + next;
            let spread = job.targets.len() as u64;
            let target = job.targets[(number % spread) as usize];
            let source = net::source_for(target, number / spread, job.per_source);
            next += 1;
            match net::start_connect(target, source, false) {
                Ok((fd, _)) => {
                    let slot = conns.insert(Conn {
                        fd,
                        target,
                        serial: next,
                        started: now,
                        open: false,
                    });
                    let conn = conns.get_mut(slot).expect("inserted");
                    if let Err(errno) = net::watch(&epoll, &conn.fd, net::INTEREST, slot as u64) {
                        ramp.errors.count_for(target, Failure::Os(errno));
                        drop(conns.remove(slot));
                        continue;
                    }
                    deadlines.push(now + job.timeout, slot, next);
                    connecting += 1;
                }
                Err(errno @ (Errno::EMFILE | Errno::ENFILE)) => bail!(
                    "cannot create a socket after {} connections: {}",
                    ramp.open,
                    std::io::Error::from(errno)
                ),
                Err(errno) => ramp.errors.count_for(target, Failure::Os(errno)),
            }
        }
        if hold_until.is_none() && next == job.count && connecting == 0 {
            ramp.reach = now - start;
            ramp.latency = latency.to_counts();
            on_ramped(&ramp);
            hold_until = Some(match stop {
                Stop::After(d) => now + d,
                // The parent decides; this only bounds a worker whose parent
                // vanished without closing the pipe.
                Stop::StdinClosed => now + Duration::from_secs(24 * 3600),
            });
        }
        if let Some(t) = hold_until
            && now >= t
        {
            break;
        }

        let mut timeout = Duration::from_millis(200);
        if let Some(next_deadline) = deadlines.next_in(now) {
            timeout = timeout.min(next_deadline);
        }
        if let Some(t) = hold_until {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        let n = net::wait(&epoll, &mut ready, timeout)?;
        let now = Instant::now();
        for event in &ready[..n] {
            if event.data() == STDIN_TOKEN {
                stopped = true;
                continue;
            }
            let slot = event.data() as usize;
            let Some(conn) = conns.get_mut(slot) else {
                continue;
            };
            if !conn.open {
                if !event
                    .events()
                    .intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
                {
                    continue;
                }
                connecting -= 1;
                let sent = match (&job.send, net::connect_result(&conn.fd)) {
                    (_, Err(errno)) => Err(errno),
                    (None, Ok(())) => Ok(()),
                    // A fresh socket's buffer takes a short line whole.
                    (Some(line), Ok(())) => match nix::unistd::write(&conn.fd, line) {
                        Ok(n) if n == line.len() => Ok(()),
                        Ok(_) => Err(Errno::EAGAIN),
                        Err(errno) => Err(errno),
                    },
                };
                if let Err(errno) = sent {
                    ramp.errors.count_for(conn.target, Failure::Os(errno));
                    net::close(&epoll, conns.remove(slot).expect("in use").fd);
                    continue;
                }
                conn.open = true;
                ramp.open += 1;
                latency.record(now - conn.started);
            }
            // Read and discard until EAGAIN; an end means the server let go.
            let end = net::read_all(&conn.fd, &mut buf, |chunk| {
                held.bytes_discarded += chunk.len() as u64
            });
            if end != ReadEnd::WouldBlock {
                held.closed_by_server += 1;
                net::close(&epoll, conns.remove(slot).expect("in use").fd);
            }
        }
        for (slot, serial) in deadlines.expired(now) {
            if let Some(conn) = conns.get_mut(slot)
                && conn.serial == serial
                && !conn.open
            {
                ramp.errors.count_for(conn.target, Failure::Timeout);
                connecting -= 1;
                net::close(&epoll, conns.remove(slot).expect("in use").fd);
            }
        }
        on_tick(conns.len() as u64);
    }
    if hold_until.is_none() {
        // Told to stop before the ramp ended: still report how far it got.
        ramp.reach = start.elapsed();
        ramp.latency = latency.to_counts();
        on_ramped(&ramp);
    }
    held.open_at_end = conns.len() as u64 - connecting;
    before_close();
    for conn in conns.drain() {
        drop(conn.fd); // close(2); the epoll instance goes with it below
    }
    Ok(held)
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
pub fn vm_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("no VmRSS line in {path} (has the process exited?)"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
