//! `tester echo`: `--clients` connections, each sending `--messages` of
//! `--size` bytes with one message outstanding at a time, to an echo server.
//! Every byte that comes back is compared with what was sent.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::epoll::{EpollEvent, EpollFlags};
use serde_json::json;

use crate::cli::{EchoArgs, addr_list, show_addrs, show_duration};
use crate::net::{self, Errors, Failure, ReadEnd, Slots};
use crate::report::{Latency, Outcome, Progress, duration, per_second, plural, thousands};

struct Client {
    /// 1-based, as the summary names it.
    id: u32,
    fd: OwnedFd,
    /// The address it talks to: the run's addresses in turn.
    target: SocketAddr,
    connected: bool,
    /// Messages whose echo came back whole.
    done: u64,
    /// The message in flight: bytes sent so far, bytes back so far.
    message: Vec<u8>,
    sent: usize,
    received: usize,
    sent_at: Instant,
    /// When this client last saw progress; `--timeout` counts from here.
    last_progress: Instant,
}

/// What went wrong, for the first fault the summary names.
enum Fault {
    Corrupt {
        at: u64,
        got: u8,
        want: u8,
    },
    /// The very first bytes that came back were not ours: the server
    /// says something of its own first (these bytes, up to a newline).
    SpokeFirst(Vec<u8>),
    Extra,
    Closed,
    Failed(Failure),
}

pub fn run(args: &EchoArgs) -> Result<Outcome> {
    let targets = &args.common.addrs;
    let limit = net::raise_fd_limit();
    if u64::from(args.clients) + 16 > limit {
        bail!(
            "--clients {} needs more descriptors than this process may open ({limit})",
            args.clients
        );
    }
    let epoll = net::epoll_create()?;
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut clients: Slots<Client> = Slots::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut latency = Latency::default();
    let mut faults: Vec<String> = Vec::new();
    let mut progress = Progress::new();
    let mut errors = Errors::default();
    let mut connected = 0u64;
    let size = args.size as usize;

    let start = Instant::now();
    for id in 1..=args.clients {
        let target = targets[(id as usize - 1) % targets.len()];
        let fd = match net::start_connect(target, None, true) {
            Ok((fd, _)) => fd,
            Err(errno) => {
                errors.count_for(target, Failure::Os(errno));
                continue;
            }
        };
        let slot = clients.insert(Client {
            id,
            fd,
            target,
            connected: false,
            done: 0,
            message: Vec::with_capacity(size),
            sent: 0,
            received: 0,
            sent_at: start,
            last_progress: start,
        });
        let client = clients.get_mut(slot).expect("inserted");
        if let Err(errno) = net::watch(&epoll, &client.fd, net::INTEREST, slot as u64) {
            errors.count_for(target, Failure::Os(errno));
            drop(clients.remove(slot));
        }
    }

    let mut round_trips = 0u64;
    let mut end = start;
    let mut last_scan = start;
    while !clients.is_empty() {
        let n = net::wait(&epoll, &mut ready, Duration::from_millis(100))?;
        let now = Instant::now();
        for event in &ready[..n] {
            let slot = event.data() as usize;
            let Some(client) = clients.get_mut(slot) else {
                continue;
            };
            let was_connected = client.connected;
            let result = step(client, event.events(), &mut buf, &mut latency, args, now);
            connected += u64::from(!was_connected && client.connected);
            match result {
                Ok(finished_now) => {
                    round_trips += finished_now;
                    if client.done == args.messages {
                        end = now;
                        net::close(&epoll, clients.remove(slot).expect("in use").fd);
                    }
                }
                Err(Fault::Failed(failure)) if !client.connected => {
                    errors.count_for(client.target, failure);
                    net::close(&epoll, clients.remove(slot).expect("in use").fd);
                }
                // Not one client's fault but the wrong kind of server:
                // one clear error instead of a fault per client.
                Err(Fault::SpokeFirst(bytes)) => bail!(
                    "is {} a chat server? it spoke first ({:?}) instead of echoing: \
                     an echo server sends back only what it is sent",
                    client.target,
                    String::from_utf8_lossy(&bytes)
                ),
                Err(fault) => {
                    faults.push(describe(client, &fault, size));
                    end = now;
                    net::close(&epoll, clients.remove(slot).expect("in use").fd);
                }
            }
        }
        // Every client must see progress within --timeout: look a few times
        // a second rather than after every event.
        if now - last_scan >= Duration::from_millis(100) {
            last_scan = now;
            let mut stuck = Vec::new();
            for slot in 0..clients.capacity() {
                if let Some(c) = clients.get_mut(slot)
                    && now - c.last_progress > args.common.timeout
                {
                    stuck.push(slot);
                }
            }
            for slot in stuck {
                let client = clients.remove(slot).expect("in use");
                if !client.connected {
                    errors.count_for(client.target, Failure::Timeout);
                    net::close(&epoll, client.fd);
                    continue;
                }
                faults.push(format!(
                    "client {}: no echo within {} (message {}, {} of {size} bytes back)",
                    client.id,
                    show_duration(args.common.timeout),
                    client.done + 1,
                    client.received
                ));
                end = now;
                net::close(&epoll, client.fd);
            }
        }
        progress.tick(|| {
            let rate = per_second(round_trips, start.elapsed());
            format!(
                "{} round trips, {}/s",
                thousands(round_trips as f64),
                thousands(rate)
            )
        });
    }
    progress.finish();
    if connected == 0 {
        return Err(errors.cannot_connect(targets[0]));
    }
    if errors.total() > 0 {
        faults.push(format!(
            "{} could not connect ({}; first: {})",
            plural(errors.total(), "client"),
            errors.describe(),
            errors.first.as_deref().unwrap_or("")
        ));
    }

    let elapsed = end - start;
    let rate = per_second(round_trips, elapsed);
    let expected = u64::from(args.clients) * args.messages;
    let checked = round_trips * args.size;
    let settings = format!(
        "tester echo {} --clients {} --messages {} --size {} --timeout {}",
        show_addrs(targets),
        args.clients,
        args.messages,
        args.size,
        show_duration(args.common.timeout)
    );
    let verdict = if faults.is_empty() {
        format!(
            "every byte came back ({} checked)",
            thousands(checked as f64)
        )
    } else {
        format!(
            "FAILED: {} ({})",
            plural(faults.len() as u64, "client"),
            faults.join("; ")
        )
    };
    let summary = format!(
        "{settings}\n\
         round trips  {} of {} in {}: {}/s\n\
         latency      {}\n\
         check        {verdict}",
        thousands(round_trips as f64),
        thousands(expected as f64),
        duration(elapsed),
        thousands(rate),
        latency.describe(&[50.0, 90.0, 99.0]),
    );
    let json = json!({
        "command": "echo",
        "settings": {
            "addr": targets[0].to_string(),
            "addrs": addr_list(targets),
            "clients": args.clients,
            "messages": args.messages,
            "size": args.size,
            "timeout_s": args.common.timeout.as_secs_f64(),
        },
        "round_trips": round_trips,
        "expected": expected,
        "elapsed_s": elapsed.as_secs_f64(),
        "round_trips_per_s": rate,
        "bytes_checked": checked,
        "latency": latency.json(&[50.0, 90.0, 99.0]),
        "faults": faults,
        "errors": errors,
    });
    Ok(Outcome {
        summary,
        json,
        failed: !faults.is_empty(),
    })
}

/// Handle one readiness event; returns how many round trips completed.
fn step(
    client: &mut Client,
    events: EpollFlags,
    buf: &mut [u8],
    latency: &mut Latency,
    args: &EchoArgs,
    now: Instant,
) -> Result<u64, Fault> {
    if !client.connected {
        if !events.intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            return Ok(0);
        }
        net::connect_result(&client.fd).map_err(|e| Fault::Failed(Failure::Os(e)))?;
        client.connected = true;
        start_message(client, args.size as usize, now);
    }
    let mut finished = 0;
    let mut moved = false;
    loop {
        // Send what the socket takes; EPOLLOUT (edge) brings us back for more.
        if client.sent < client.message.len() {
            let n = net::send_some(&client.fd, &client.message[client.sent..])
                .map_err(|e| Fault::Failed(Failure::Os(e)))?;
            client.sent += n;
            moved |= n > 0;
        }
        // Read until EAGAIN, comparing as we go.
        let mut fault = None;
        let end = net::read_all(&client.fd, buf, |chunk| {
            if fault.is_some() {
                return;
            }
            let want = &client.message[client.received..];
            let mismatch = chunk.iter().zip(want).position(|(a, b)| a != b);
            if client.done == 0 && client.received == 0 && mismatch.is_some() {
                let line = chunk.split(|&b| b == b'\n').next().unwrap_or(chunk);
                fault = Some(Fault::SpokeFirst(line[..line.len().min(80)].to_vec()));
                return;
            }
            if chunk.len() > want.len() {
                fault = Some(Fault::Extra);
                return;
            }
            if let Some(i) = mismatch {
                fault = Some(Fault::Corrupt {
                    at: (client.received + i) as u64,
                    got: chunk[i],
                    want: want[i],
                });
                return;
            }
            client.received += chunk.len();
            moved = true;
        });
        if let Some(fault) = fault {
            return Err(fault);
        }
        if moved {
            client.last_progress = now;
        }
        if client.received == client.message.len() {
            // A fresh clock reading: on loopback a whole round trip can
            // finish within this one call.
            let now = Instant::now();
            latency.record(now - client.sent_at);
            client.done += 1;
            finished += 1;
            if client.done == args.messages {
                return Ok(finished);
            }
            start_message(client, args.size as usize, now);
            continue; // send the next message at once
        }
        return match end {
            ReadEnd::WouldBlock => Ok(finished),
            ReadEnd::Eof => Err(Fault::Closed),
            ReadEnd::Failed(errno) => Err(Fault::Failed(Failure::Os(errno))),
        };
    }
}

/// Fill the next message with bytes that depend on the client and the
/// message number, so a byte from the wrong place cannot pass the check.
fn start_message(client: &mut Client, size: usize, now: Instant) {
    let mut state = (u64::from(client.id) << 32 | client.done) ^ 0x9e37_79b9_7f4a_7c15;
    client.message.clear();
    client.message.extend((0..size).map(|_| {
        // xorshift64: cheap, and every byte value appears.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    }));
    client.sent = 0;
    client.received = 0;
    client.sent_at = now;
    client.last_progress = now;
}

fn describe(client: &Client, fault: &Fault, size: usize) -> String {
    let (id, message) = (client.id, client.done + 1);
    match fault {
        Fault::Corrupt { at, got, want } => format!(
            "client {id} message {message}: byte {at} came back as {got:#04x}, sent {want:#04x}"
        ),
        Fault::Extra => format!("client {id} message {message}: more bytes came back than sent"),
        Fault::SpokeFirst(_) => format!("client {id}: the server spoke first"),
        Fault::Closed => format!(
            "client {id}: server closed the connection during message {message} ({} of {size} bytes back)",
            client.received
        ),
        Fault::Failed(failure) => {
            format!(
                "client {id}: {} during message {message}",
                failure.message()
            )
        }
    }
}
