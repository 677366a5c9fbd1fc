//! `tester chat`: `--clients` connections to a chat server, each sending
//! `--messages` lines at `--rate` lines per second in total. Every line
//! carries a token, `~t:SENDER:SEQ:NANOS~`, found anywhere in a received
//! line (so `client3: hello ~t:..~` from any line-relaying server works).
//! Each receiver checks it got every other client's lines exactly once and
//! in order, and the send time in the token gives the delivery latency.
//!
//! A run has three phases: connect every client (and wait for each one's
//! first line from the server), sync (client 1's sync line has reached
//! everyone, so the server relays to all of them), then send and check until
//! every line arrived or none has for `--drain-timeout`.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use memchr::{memchr, memmem};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use serde_json::json;

use crate::cli::{ChatArgs, show_duration};
use crate::net::{self, Deadlines, Failure, ReadEnd};
use crate::report::{Latency, Outcome, Progress, duration, per_second, plural, thousands};

/// Handshakes in flight while connecting the clients.
const CONNECT_CONCURRENCY: usize = 256;
/// A line longer than this without a newline is dropped unread: no chat
/// server relays such a thing, and the buffer must stay bounded.
const MAX_LINE: usize = 64 * 1024;
/// Below this share of the requested rate, the summary says it was not met.
const RATE_TOLERANCE: f64 = 0.9;
/// With --rate 0, the most bytes of lines in flight one receiver may be owed:
/// far below the 1 MiB after which the chat servers drop a slow client.
const MAX_OWED: usize = 256 * 1024;
/// The bytes one relayed line is counted as for `MAX_OWED`: ours are under
/// 50, and a server may put a name before them.
const LINE_BUDGET: usize = 80;

#[derive(PartialEq)]
enum State {
    Connecting,
    /// Connected, waiting for the server's first line.
    Greeting,
    Ready,
}

struct Client {
    /// 1-based; the SENDER in tokens.
    id: u32,
    fd: Option<OwnedFd>,
    state: State,
    serial: u64,
    /// Bytes not yet taken by the socket.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes received after the last newline.
    partial: Vec<u8>,
    /// Lines this client has sent (its last SEQ).
    sent: u32,
    /// Per sender (index id-1): the highest SEQ received from it; at this
    /// client's own index, the lines it sent (it has seen its own lines).
    highest: Vec<u32>,
    /// Distinct lines of other clients received.
    got: u64,
    /// Has received client 1's sync line (see phase 2 of `run`).
    synced: bool,
}

/// The line client 1 repeats until every other client has received it.
const SYNC: &[u8] = b"~sync~";
/// How often client 1 repeats it.
const SYNC_EVERY: Duration = Duration::from_millis(100);

/// One receiver's view of one sender's lines, kept only once a gap opened:
/// the sequence numbers skipped so far, that may still arrive late.
type Gaps = HashMap<(u32, u32), BTreeSet<u32>>;

/// The verdict: counts and the first example of each fault.
#[derive(Default)]
struct Check {
    duplicated: u64,
    reordered: u64,
    lost: u64,
    first_duplicate: Option<String>,
    first_reorder: Option<String>,
    first_loss: Option<String>,
    /// Clients the server disconnected during the run.
    dropped: Vec<u32>,
    /// Lines with a token that names no client or sequence of this run.
    foreign: u64,
}

pub fn run(args: &ChatArgs) -> Result<Outcome> {
    let target = args.common.addr;
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let limit = net::raise_fd_limit();
    if u64::from(args.clients) + 16 > limit {
        bail!(
            "--clients {} needs more descriptors than this process may open ({limit})",
            args.clients
        );
    }
    if let Some(hello) = &args.hello
        && hello.contains('\n')
    {
        bail!("--hello must be a single line");
    }
    let count = args.clients as usize;
    let epoll = net::epoll_create()?;
    let mut ready = vec![EpollEvent::empty(); 1024];
    let mut clients: Vec<Client> = (1..=args.clients)
        .map(|id| Client {
            id,
            fd: None,
            state: State::Connecting,
            serial: 0,
            out: Vec::new(),
            out_sent: 0,
            partial: Vec::new(),
            sent: 0,
            highest: vec![0; count],
            got: 0,
            synced: false,
        })
        .collect();
    let mut gaps = Gaps::new();
    let mut check = Check::default();
    let mut latency = Latency::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut tokens = Vec::new();
    let mut progress = Progress::new();

    // Phase 1: connect every client (and wait for its greeting) before any
    // line is sent, so that no line goes out before its receivers exist.
    let start = Instant::now();
    let mut deadlines = Deadlines::default();
    let (mut launched, mut connecting, mut ready_clients) = (0usize, 0usize, 0usize);
    while ready_clients < count {
        let now = Instant::now();
        while launched < count && connecting < CONNECT_CONCURRENCY {
            let client = &mut clients[launched];
            let (fd, _) = net::start_connect(target, None, true).map_err(|e| {
                anyhow::anyhow!("cannot connect to {target}: {}", Failure::Os(e).message())
            })?;
            net::watch(&epoll, &fd, launched as u64)?;
            client.fd = Some(fd);
            client.serial = launched as u64;
            deadlines.push(now + args.common.timeout, launched, launched as u64);
            launched += 1;
            connecting += 1;
        }
        let timeout = deadlines.next_in(now).unwrap_or(Duration::from_millis(200));
        let n = net::wait(&epoll, &mut ready, timeout)?;
        for event in &ready[..n] {
            let index = event.data() as usize;
            let client = &mut clients[index];
            if client.state == State::Connecting {
                if !event
                    .events()
                    .intersects(EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP)
                {
                    continue;
                }
                let fd = client.fd.as_ref().expect("connecting client has a socket");
                if let Err(errno) = net::connect_result(fd) {
                    bail!(
                        "cannot connect to {target}: {}",
                        Failure::Os(errno).message()
                    );
                }
                connecting -= 1;
                if let Some(hello) = &args.hello {
                    client.out.extend_from_slice(hello.as_bytes());
                    client.out.push(b'\n');
                }
                if args.no_greeting {
                    client.state = State::Ready;
                    ready_clients += 1;
                } else {
                    client.state = State::Greeting;
                    // The greeting has its own deadline, from now.
                    deadlines.push(Instant::now() + args.common.timeout, index, client.serial);
                }
            }
            let lines = service(client, &mut buf, &mut tokens).map_err(|why| {
                anyhow::anyhow!("client {}: {why} before the test began", index + 1)
            })?;
            if client.state == State::Greeting && lines > 0 {
                client.state = State::Ready;
                ready_clients += 1;
            }
            // Nobody has sent a token yet; whatever came was a notice.
            tokens.clear();
        }
        for (index, _) in deadlines.expired(Instant::now()) {
            match clients[index].state {
                State::Connecting => bail!("cannot connect to {target}: timed out"),
                State::Greeting => bail!(
                    "client {}: no line from the server within {} of connecting \
                     (use --no-greeting for a server that sends nothing first)",
                    index + 1,
                    show_duration(args.common.timeout)
                ),
                State::Ready => {}
            }
        }
        progress.tick(|| format!("{ready_clients} of {count} clients connected"));
    }

    // ANCHOR: sync
    // Phase 2: a connected (even a greeted) client is not proof that the
    // server relays to it yet. Client 1 sends a sync line, again every
    // 100ms, until every other client has received one: then every
    // connection has been accepted and registered, and no counted line can
    // be lost to a late registration.
    let sync_deadline = Instant::now() + args.common.timeout;
    let mut next_sync = Instant::now();
    clients[0].synced = true;
    while let Some(waiting) = clients.iter().position(|c| !c.synced) {
        let now = Instant::now();
        if now >= sync_deadline {
            bail!(
                "the server relayed no line from client 1 to client {} within {} \
                 (is it a chat server?)",
                waiting + 1,
                show_duration(args.common.timeout)
            );
        }
        if now >= next_sync {
            let first = &mut clients[0];
            first.out.extend_from_slice(SYNC);
            first.out.push(b'\n');
            next_sync = now + SYNC_EVERY;
        }
        // Sending happens in service(); client 1 may have no event coming.
        let first_ok = service(&mut clients[0], &mut buf, &mut tokens);
        first_ok.map_err(|why| anyhow::anyhow!("client 1: {why} before the test began"))?;
        let n = net::wait(&epoll, &mut ready, next_sync.saturating_duration_since(now))?;
        for event in &ready[..n] {
            let index = event.data() as usize;
            service(&mut clients[index], &mut buf, &mut tokens).map_err(|why| {
                anyhow::anyhow!("client {}: {why} before the test began", index + 1)
            })?;
        }
        tokens.clear();
    }
    // ANCHOR_END: sync
    let connected_in = start.elapsed();

    // Phase 3: send on schedule, receive and check, until every line has
    // arrived or none has arrived for --drain-timeout after the last send.
    let total = u64::from(args.clients) * u64::from(args.messages);
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let send_start = Instant::now();
    let mut next_line = 0u64; // the k-th line overall: client k % C, seq k / C + 1
    let (mut sent_total, mut delivered) = (0u64, 0u64);
    let mut last_send = send_start;
    let mut last_delivery = send_start;
    let window = in_flight_limit(args);
    let mut slowest = vec![0u32; count];
    let mut stalled = false;
    loop {
        let now = Instant::now();
        // Send what is due. With --rate 0, each client tops up its window:
        // at most `window` of its lines not yet seen by its slowest receiver,
        // all written at once. The tester never races ahead of its own
        // receiving, and the server always has lines to relay.
        match interval {
            Some(interval) => {
                while next_line < total && send_start + interval.mul_f64(next_line as f64) <= now {
                    let index = (next_line % count as u64) as usize;
                    next_line += 1;
                    if send_lines(&mut clients[index], 1, &epoll, &mut check) > 0 {
                        sent_total += 1;
                        last_send = now;
                    }
                }
            }
            None => {
                slowest_receivers(&clients, &mut slowest);
                for (client, &seen) in clients.iter_mut().zip(&slowest) {
                    let in_flight = client.sent.saturating_sub(seen);
                    let room = window
                        .saturating_sub(in_flight)
                        .min(args.messages - client.sent);
                    if room > 0 {
                        let lines = send_lines(client, room, &epoll, &mut check);
                        if lines > 0 {
                            sent_total += lines;
                            last_send = now;
                        }
                    }
                }
                next_line = clients
                    .iter()
                    .map(|c| {
                        if c.fd.is_some() {
                            u64::from(c.sent)
                        } else {
                            u64::from(args.messages)
                        }
                    })
                    .sum();
            }
        }
        let all_sent = next_line >= total;
        if all_sent {
            let expected: u64 = clients
                .iter()
                .filter(|c| c.fd.is_some())
                .map(|c| sent_total - u64::from(c.sent))
                .sum();
            let got: u64 = clients
                .iter()
                .filter(|c| c.fd.is_some())
                .map(|c| c.got)
                .sum();
            let quiet_since = last_send.max(last_delivery);
            if got >= expected || now - quiet_since >= args.drain_timeout {
                break;
            }
        } else if interval.is_none() && now - last_send.max(last_delivery) >= args.drain_timeout {
            // Every window is full and nothing arrives: the server stopped
            // relaying, and sending more would only queue it up.
            stalled = true;
            break;
        }

        // Unpaced, every window is full after the sends above: wait for
        // lines to arrive, which is what opens them again.
        let timeout = match interval {
            Some(interval) if !all_sent => (send_start + interval.mul_f64(next_line as f64))
                .saturating_duration_since(now)
                .min(Duration::from_millis(100)),
            _ => Duration::from_millis(100),
        };
        let n = net::wait(&epoll, &mut ready, timeout)?;
        let now_ns = net::monotonic_ns();
        for event in &ready[..n] {
            let index = event.data() as usize;
            let client = &mut clients[index];
            if client.fd.is_none() {
                continue;
            }
            let result = service(client, &mut buf, &mut tokens);
            let before = delivered;
            for &(sender, seq, sent_ns) in &tokens {
                if record(client, sender, seq, args, &mut gaps, &mut check) {
                    latency.record_ns(now_ns.saturating_sub(sent_ns));
                    delivered += 1;
                }
            }
            // One clock read per read burst, not per line: at millions of
            // lines a second the clock would be the tester's hot spot.
            if delivered > before {
                last_delivery = Instant::now();
            }
            tokens.clear();
            if result.is_err() {
                check.dropped.push(client.id);
                net::close(&epoll, client.fd.take().expect("checked above"));
            }
        }
        progress.tick(|| {
            let alive = clients.iter().filter(|c| c.fd.is_some()).count();
            format!(
                "{} lines sent, {} delivered, {alive} clients",
                thousands(sent_total as f64),
                thousands(delivered as f64)
            )
        });
    }
    progress.finish();
    let finished = last_delivery;
    for client in &mut clients {
        if let Some(fd) = client.fd.take() {
            net::close(&epoll, fd);
        }
    }

    count_losses(&clients, &gaps, &mut check);
    report(
        args,
        window,
        stalled,
        &check,
        &latency,
        connected_in,
        sent_total,
        last_send - send_start,
        delivered,
        finished.saturating_duration_since(send_start),
    )
}

/// The lines in flight per client with --rate 0: `--batch`, or fewer if
/// that many from every other client would owe a receiver over `MAX_OWED`.
fn in_flight_limit(args: &ChatArgs) -> u32 {
    let others = (args.clients as usize).saturating_sub(1).max(1);
    let fits = (MAX_OWED / (others * LINE_BUDGET)).max(1);
    args.batch.min(u32::try_from(fits).unwrap_or(u32::MAX))
}

/// For each sender, the highest SEQ its slowest connected receiver has
/// seen: the lines after it are still in flight.
fn slowest_receivers(clients: &[Client], slowest: &mut [u32]) {
    slowest.fill(u32::MAX);
    // Row by row, so the loop runs along each receiver's own vector; a
    // client's own entry is what it sent, which never holds it back.
    for receiver in clients.iter().filter(|c| c.fd.is_some()) {
        for (low, &seen) in slowest.iter_mut().zip(&receiver.highest) {
            *low = (*low).min(seen);
        }
    }
}

/// Queue this client's next `lines` lines (tokens all carrying the same
/// send time, since they go in one write) and try to send them. Returns
/// the number of lines queued.
fn send_lines(client: &mut Client, lines: u32, epoll: &Epoll, check: &mut Check) -> u64 {
    let Some(fd) = client.fd.take() else {
        return 0;
    };
    let now_ns = net::monotonic_ns();
    for _ in 0..lines {
        client.sent += 1;
        let seq = client.sent;
        // Writing to a Vec cannot fail.
        let _ = writeln!(client.out, "line {seq} ~t:{}:{seq}:{now_ns}~", client.id);
    }
    client.highest[client.id as usize - 1] = client.sent;
    match flush(&fd, client) {
        Ok(()) => client.fd = Some(fd),
        Err(_) => {
            check.dropped.push(client.id);
            net::close(epoll, fd);
        }
    }
    u64::from(lines)
}

/// Write the client's queued bytes until the socket is full.
fn flush(fd: &OwnedFd, client: &mut Client) -> Result<(), Errno> {
    if client.out_sent < client.out.len() {
        client.out_sent += net::send_some(fd, &client.out[client.out_sent..])?;
        if client.out_sent == client.out.len() {
            client.out.clear();
            client.out_sent = 0;
        }
    }
    Ok(())
}

/// Handle readiness on one client: send what is queued, read until EAGAIN,
/// split complete lines and collect their tokens. Returns the number of
/// complete lines, or why the connection ended.
fn service(
    client: &mut Client,
    buf: &mut [u8],
    tokens: &mut Vec<(u32, u32, u64)>,
) -> Result<usize, String> {
    let fd = client.fd.take().expect("service needs a socket");
    let result = service_fd(&fd, client, buf, tokens);
    client.fd = Some(fd);
    result
}

fn service_fd(
    fd: &OwnedFd,
    client: &mut Client,
    buf: &mut [u8],
    tokens: &mut Vec<(u32, u32, u64)>,
) -> Result<usize, String> {
    flush(fd, client).map_err(|e| format!("send failed: {}", Failure::Os(e).message()))?;
    let mut lines = 0;
    let end = net::read_all(fd, buf, |mut chunk| {
        // memchr scans a word at a time (SIMD where the CPU has it): a
        // byte-by-byte search was the hot spot at millions of lines a second.
        while let Some(newline) = memchr(b'\n', chunk) {
            let (piece, rest) = chunk.split_at(newline + 1);
            chunk = rest;
            let line: &[u8] = if client.partial.is_empty() {
                piece
            } else {
                client.partial.extend_from_slice(piece);
                &client.partial
            };
            if let Some(token) = find_token(line) {
                tokens.push(token);
            } else if line.windows(SYNC.len()).any(|w| w == SYNC) {
                client.synced = true;
            }
            lines += 1;
            client.partial.clear();
        }
        if client.partial.len() + chunk.len() <= MAX_LINE {
            client.partial.extend_from_slice(chunk);
        }
    });
    match end {
        ReadEnd::WouldBlock => Ok(lines),
        ReadEnd::Eof => Err("the server closed the connection".to_string()),
        ReadEnd::Failed(errno) => Err(Failure::Os(errno).message()),
    }
}

// ANCHOR: token
/// The `~t:SENDER:SEQ:NANOS~` token anywhere in a line; the last one if
/// there are several, since relays put their own prefix before the text.
/// Parsed by hand, since it runs for every line received: millions a
/// second.
pub fn find_token(line: &[u8]) -> Option<(u32, u32, u64)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    token_at_end(line).or_else(|| {
        let start = memmem::rfind(line, b"~t:")?;
        // Where a later `~` ends it.
        let end = start + 3 + line[start + 3..].iter().position(|&b| b == b'~')?;
        token_at_end(&line[start..=end])
    })
}

/// A token that ends `text`, read backwards from its last `~`: one pass
/// over the bytes for the usual case, our own lines, whose token is last.
fn token_at_end(text: &[u8]) -> Option<(u32, u32, u64)> {
    let mut rest = text.strip_suffix(b"~")?;
    let mut fields = [0u64; 3];
    for field in fields.iter_mut().rev() {
        // Digits from the last: 19 of them always fit a u64, more are refused.
        let mut place = 1u64;
        let mut digits = 0;
        while let Some((&digit, head)) = rest.split_last()
            && digit.is_ascii_digit()
        {
            if digits == 19 {
                return None;
            }
            *field += u64::from(digit - b'0') * place;
            place = place.wrapping_mul(10);
            digits += 1;
            rest = head;
        }
        if digits == 0 {
            return None;
        }
        rest = rest.strip_suffix(b":")?;
    }
    let [sender, seq, sent_ns] = fields;
    rest.ends_with(b"~t").then_some(())?;
    Some((sender.try_into().ok()?, seq.try_into().ok()?, sent_ns))
}
// ANCHOR_END: token

// ANCHOR: record
/// Check one received token; returns true for a first delivery (the only
/// kind whose latency counts).
fn record(
    receiver: &mut Client,
    sender: u32,
    seq: u32,
    args: &ChatArgs,
    gaps: &mut Gaps,
    check: &mut Check,
) -> bool {
    if sender == 0 || sender > args.clients || seq == 0 || seq > args.messages {
        check.foreign += 1;
        return false;
    }
    if sender == receiver.id {
        return false; // a server that echoes to the sender: not our concern
    }
    let highest = &mut receiver.highest[sender as usize - 1];
    let pair = (receiver.id, sender);
    if seq > *highest {
        if seq > *highest + 1 {
            // Lines skipped: lost, or late (reordered); the end decides.
            gaps.entry(pair).or_default().extend(*highest + 1..seq);
        }
        *highest = seq;
        receiver.got += 1;
        return true;
    }
    let late = gaps
        .get_mut(&pair)
        .is_some_and(|skipped| skipped.remove(&seq));
    if late {
        check.reordered += 1;
        check.first_reorder.get_or_insert_with(|| {
            format!(
                "client {sender} seq {seq} reached client {} after seq {highest}",
                receiver.id
            )
        });
        receiver.got += 1;
        true
    } else {
        check.duplicated += 1;
        check.first_duplicate.get_or_insert_with(|| {
            format!(
                "client {sender} seq {seq} reached client {} twice",
                receiver.id
            )
        });
        false
    }
}
// ANCHOR_END: record

// ANCHOR: losses
/// Whatever never arrived: skipped lines that never came late, and every
/// line after the highest one a receiver saw.
fn count_losses(clients: &[Client], gaps: &Gaps, check: &mut Check) {
    for receiver in clients {
        for sender in clients {
            if sender.id == receiver.id {
                continue;
            }
            let highest = receiver.highest[sender.id as usize - 1];
            let skipped = gaps.get(&(receiver.id, sender.id));
            let missing_tail = sender.sent.saturating_sub(highest);
            let missing = u64::from(missing_tail) + skipped.map_or(0, |s| s.len() as u64);
            if missing == 0 {
                continue;
            }
            check.lost += missing;
            let first = skipped
                .and_then(|s| s.first().copied())
                .unwrap_or(highest + 1);
            check.first_loss.get_or_insert_with(|| {
                format!(
                    "client {} seq {first} never reached client {}",
                    sender.id, receiver.id
                )
            });
        }
    }
}
// ANCHOR_END: losses

#[allow(clippy::too_many_arguments)]
fn report(
    args: &ChatArgs,
    window: u32,
    stalled: bool,
    check: &Check,
    latency: &Latency,
    connected_in: Duration,
    sent: u64,
    send_time: Duration,
    delivered: u64,
    delivery_time: Duration,
) -> Result<Outcome> {
    let target = args.common.addr;
    let mut settings = format!(
        "tester chat {target} --clients {} --messages {} --rate {} --drain-timeout {} --timeout {}",
        args.clients,
        args.messages,
        args.rate,
        show_duration(args.drain_timeout),
        show_duration(args.common.timeout)
    );
    if let Some(hello) = &args.hello {
        settings += &format!(" --hello {hello:?}");
    }
    if args.no_greeting {
        settings += " --no-greeting";
    }
    if args.rate == 0 {
        settings += &format!(" --batch {}", args.batch);
    }
    // n lines are n-1 intervals apart.
    let achieved = if sent > 1 {
        per_second(sent - 1, send_time)
    } else {
        0.0
    };
    let mut notes = Vec::new();
    if args.rate == 0 && window < args.batch {
        notes.push(format!(
            "{} in flight per client, not --batch {}: more would owe a receiver over {} KiB",
            plural(u64::from(window), "line"),
            args.batch,
            MAX_OWED / 1024
        ));
    }
    if stalled {
        notes.push(format!(
            "stopped sending: no line arrived for {}; the lines never sent are not counted",
            show_duration(args.drain_timeout)
        ));
    }
    let requested = if args.rate == 0 {
        "as fast as possible".to_string()
    } else {
        if sent > 1 && achieved < args.rate as f64 * RATE_TOLERANCE {
            notes.push(format!(
                "rate not met: sent {} lines/s of the {} requested; the figures describe the lower rate",
                thousands(achieved),
                thousands(args.rate as f64)
            ));
        }
        format!("{} requested", thousands(args.rate as f64))
    };
    let mut faults = Vec::new();
    if check.lost > 0 {
        faults.push(format!(
            "lost {} ({})",
            plural(check.lost, "line"),
            check.first_loss.as_deref().unwrap_or("")
        ));
    }
    if check.duplicated > 0 {
        faults.push(format!(
            "duplicated {} ({})",
            plural(check.duplicated, "line"),
            check.first_duplicate.as_deref().unwrap_or("")
        ));
    }
    if check.reordered > 0 {
        faults.push(format!(
            "reordered {} ({})",
            plural(check.reordered, "line"),
            check.first_reorder.as_deref().unwrap_or("")
        ));
    }
    if !check.dropped.is_empty() {
        let ids: Vec<String> = check
            .dropped
            .iter()
            .map(|id| format!("client {id}"))
            .collect();
        faults.push(format!("the server disconnected {}", ids.join(", ")));
    }
    let verdict = if faults.is_empty() {
        "every line reached every other client once and in order".to_string()
    } else {
        format!("FAILED: {}", faults.join("; "))
    };
    let expected = sent * (u64::from(args.clients) - 1);
    let greeting = if args.no_greeting {
        ""
    } else {
        " (each after the server's first line)"
    };
    let mut summary = format!(
        "{settings}\n\
         connected    {} in {}{greeting}\n\
         sent         {} in {}: {} lines/s ({requested})\n\
         delivered    {} of {} in {}: {} lines/s\n\
         latency      {}\n\
         check        {verdict}",
        plural(u64::from(args.clients), "client"),
        duration(connected_in),
        thousands(sent as f64),
        duration(send_time),
        thousands(achieved),
        thousands(delivered as f64),
        thousands(expected as f64),
        duration(delivery_time),
        thousands(per_second(delivered, delivery_time)),
        latency.describe(&[50.0, 90.0, 99.0]),
    );
    if check.foreign > 0 {
        notes.push(format!(
            "{} carried a token of no line this run sent (ignored)",
            plural(check.foreign, "line")
        ));
    }
    for note in &notes {
        summary += &format!("\nnote         {note}");
    }
    let json = json!({
        "command": "chat",
        "settings": {
            "addr": target.to_string(),
            "clients": args.clients,
            "messages": args.messages,
            "rate": args.rate,
            "hello": args.hello,
            "greeting": !args.no_greeting,
            "drain_timeout_s": args.drain_timeout.as_secs_f64(),
            "batch": args.batch,
            "timeout_s": args.common.timeout.as_secs_f64(),
        },
        "connect_s": connected_in.as_secs_f64(),
        "sent": sent,
        "send_s": send_time.as_secs_f64(),
        "send_rate": achieved,
        "in_flight": (args.rate == 0).then_some(window),
        "stalled": stalled,
        "rate_met": args.rate == 0 || sent <= 1 || achieved >= args.rate as f64 * RATE_TOLERANCE,
        "expected": expected,
        "delivered": delivered,
        "delivery_s": delivery_time.as_secs_f64(),
        "deliveries_per_s": per_second(delivered, delivery_time),
        "latency": latency.json(&[50.0, 90.0, 99.0]),
        "lost": check.lost,
        "duplicated": check.duplicated,
        "reordered": check.reordered,
        "disconnected": check.dropped,
        "faults": faults,
        "notes": notes,
    });
    Ok(Outcome {
        summary,
        json,
        failed: !faults.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::find_token;

    #[test]
    fn finds_a_token_anywhere_in_a_line() {
        assert_eq!(
            find_token(b"client3: line 1 ~t:3:17:99~\n"),
            Some((3, 17, 99))
        );
        assert_eq!(find_token(b"~t:1:2:3~"), Some((1, 2, 3)));
        assert_eq!(find_token(b"~t:1:1:5~: ~t:1:2:6~"), Some((1, 2, 6)));
        assert_eq!(find_token(b"* client3 joined\n"), None);
        assert_eq!(find_token(b"~t:1:2~"), None);
        assert_eq!(find_token(b"~t:1:x:3~"), None);
        assert_eq!(find_token(b"~t:1:2:3:4~"), None);
        assert_eq!(find_token(b"~t:1:2:3"), None);
        assert_eq!(find_token(b"1:2:3~"), None);
        assert_eq!(find_token(b"x ~t:1:2:3~ after"), Some((1, 2, 3)));
        assert_eq!(find_token(b"~t:1:2:3~ then ~t:1:x~"), None);
        assert_eq!(find_token(b"~t:4294967296:2:3~"), None);
        assert_eq!(find_token(b"~t:1:2:99999999999999999999~"), None);
    }
}
