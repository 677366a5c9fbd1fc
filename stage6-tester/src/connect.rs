//! `tester connect`: open and close connections as fast as the server
//! accepts them, with `--concurrency` handshakes in flight, and measure
//! connections per second (seChat's figure) and connect latency.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use nix::unistd::read;
use serde_json::json;

use crate::cli::{ConnectArgs, addr_list, show_addrs, show_duration};
use crate::net::{self, Deadlines, Errors, Failure, Slots};
use crate::report::{Latency, Outcome, Progress, duration, per_second, thousands};

/// Without `--duration` or `--count`, a run lasts this long.
const DEFAULT_DURATION: Duration = Duration::from_secs(5);

/// One connection on its way to being counted.
struct Attempt {
    fd: OwnedFd,
    target: SocketAddr,
    /// Tells a reused slot's new attempt from the one a deadline was set for.
    serial: u64,
    started: Instant,
}

/// What one readiness event did to an attempt.
enum Step {
    Pending,
    Counted,
    Failed(Failure),
}

pub fn run(args: &ConnectArgs) -> Result<Outcome> {
    let targets = &args.common.addrs;
    let run_for = match (args.duration, args.count) {
        (None, None) => Some(DEFAULT_DURATION),
        (duration, _) => duration,
    };
    let epoll = net::epoll_create()?;
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut attempts: Slots<Attempt> = Slots::default();
    let mut deadlines = Deadlines::default();
    let mut latency = Latency::default();
    let mut errors = Errors::default();
    let mut buf = vec![0u8; 16 * 1024];
    let (mut started, mut counted) = (0u64, 0u64);
    let mut progress = Progress::new();

    let start = Instant::now();
    let stop_at = run_for.map(|d| start + d);
    let mut end = start;
    loop {
        let now = Instant::now();
        // A server that refuses (or drops) the whole first wave is not there:
        // one clear error instead of a report of nothing but errors.
        if counted == 0 && errors.total() >= u64::from(args.concurrency) {
            return Err(errors.cannot_connect(targets[0]));
        }
        let launching =
            stop_at.is_none_or(|t| now < t) && args.count.is_none_or(|count| started < count);
        while launching
            && attempts.len() < args.concurrency as usize
            && args.count.is_none_or(|count| started < count)
        {
            // The run's addresses in turn.
            let target = targets[(started % targets.len() as u64) as usize];
            started += 1;
            // Nothing is sent, so Nagle's algorithm cannot matter here.
            match net::start_connect(target, None, false) {
                // Connected at once or in progress: either way an event
                // reports it (EPOLLOUT, or with --greeting the line's
                // EPOLLIN), since registering a ready socket reports an edge.
                Ok((fd, _)) => {
                    let slot = attempts.insert(Attempt {
                        fd,
                        target,
                        serial: started,
                        started: now,
                    });
                    let attempt = attempts.get_mut(slot).expect("just inserted");
                    let interest = if args.greeting {
                        net::INPUT
                    } else {
                        net::INTEREST
                    };
                    if let Err(errno) = net::watch(&epoll, &attempt.fd, interest, slot as u64) {
                        errors.count_for(target, Failure::Os(errno));
                        drop(attempts.remove(slot));
                        continue;
                    }
                    deadlines.push(now + args.common.timeout, slot, started);
                }
                Err(errno @ (Errno::EMFILE | Errno::ENFILE)) => {
                    bail!(
                        "cannot create a socket: {} (lower --concurrency)",
                        std::io::Error::from(errno)
                    )
                }
                Err(errno) => errors.count_for(target, Failure::Os(errno)),
            }
        }
        if !launching && attempts.is_empty() {
            break;
        }

        let mut timeout = Duration::from_millis(200);
        if let Some(next) = deadlines.next_in(now) {
            timeout = timeout.min(next);
        }
        if launching && let Some(t) = stop_at {
            timeout = timeout.min(t.saturating_duration_since(now));
        }
        let n = net::wait(&epoll, &mut ready, timeout)?;
        let now = Instant::now();
        for event in &ready[..n] {
            let slot = event.data() as usize;
            let Some(attempt) = attempts.get_mut(slot) else {
                continue;
            };
            match step(attempt, event.events(), args.greeting, &mut buf) {
                Step::Pending => continue,
                Step::Counted => {
                    latency.record(now - attempt.started);
                    counted += 1;
                }
                Step::Failed(failure) => errors.count_for(attempt.target, failure),
            }
            net::close(&epoll, attempts.remove(slot).expect("slot is in use").fd);
            end = now;
        }
        for (slot, serial) in deadlines.expired(now) {
            if let Some(attempt) = attempts.get_mut(slot)
                && attempt.serial == serial
            {
                errors.count_for(attempt.target, Failure::Timeout);
                net::close(&epoll, attempts.remove(slot).expect("slot is in use").fd);
                end = now;
            }
        }
        progress.tick(|| {
            let rate = per_second(counted, start.elapsed());
            format!(
                "{} connections, {}/s, {} errors",
                thousands(counted as f64),
                thousands(rate),
                errors.total()
            )
        });
    }
    progress.finish();
    if counted == 0 {
        return Err(errors.cannot_connect(targets[0]));
    }

    let elapsed = end - start;
    let rate = per_second(counted, elapsed);
    let mut settings = format!(
        "tester connect {} --concurrency {} --timeout {}",
        show_addrs(targets),
        args.concurrency,
        show_duration(args.common.timeout)
    );
    if let Some(d) = run_for {
        settings += &format!(" --duration {}", show_duration(d));
    }
    if let Some(count) = args.count {
        settings += &format!(" --count {count}");
    }
    if args.greeting {
        settings += " --greeting";
    }
    let counts_when = if args.greeting {
        "connect to first line"
    } else {
        "connect to handshake done"
    };
    let summary = format!(
        "{settings}\n\
         connections  {} of {} attempts in {}: {}/s\n\
         latency      {}  ({counts_when})\n\
         errors       {}",
        thousands(counted as f64),
        thousands(started as f64),
        duration(elapsed),
        thousands(rate),
        latency.describe(&[50.0, 99.0]),
        errors.describe(),
    );
    let json = json!({
        "command": "connect",
        "settings": {
            "addr": targets[0].to_string(),
            "addrs": addr_list(targets),
            "concurrency": args.concurrency,
            "duration_s": run_for.map(|d| d.as_secs_f64()),
            "count": args.count,
            "greeting": args.greeting,
            "timeout_s": args.common.timeout.as_secs_f64(),
        },
        "attempts": started,
        "connections": counted,
        "elapsed_s": elapsed.as_secs_f64(),
        "connections_per_s": rate,
        "latency": latency.json(&[50.0, 99.0]),
        "errors": errors,
    });
    Ok(Outcome {
        summary,
        json,
        failed: false,
    })
}

// ANCHOR: step
/// Advance one attempt on a readiness event.
fn step(attempt: &Attempt, events: EpollFlags, greeting: bool, buf: &mut [u8]) -> Step {
    if !greeting {
        // EPOLLOUT (or EPOLLERR/EPOLLHUP) ends the handshake; SO_ERROR says how.
        if !events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            return Step::Pending;
        }
        return match net::connect_result(&attempt.fd) {
            Ok(()) => Step::Counted,
            Err(errno) => Step::Failed(Failure::Os(errno)),
        };
    }
    // With --greeting the socket waits for input only (`net::INPUT`), so
    // this event is the line arriving, or a failed connect, whose error the
    // read returns. Read until the newline, not on to EAGAIN: the attempt
    // is closed right after, and in a connect run the tester's own time
    // often sets the pace.
    loop {
        match read(&attempt.fd, buf) {
            Ok(0) => return Step::Failed(Failure::Closed),
            Ok(n) if buf[..n].contains(&b'\n') => return Step::Counted,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Step::Pending,
            Err(errno) => return Step::Failed(Failure::Os(errno)),
        }
    }
}
// ANCHOR_END: step
