//! The command line: `tester SUBCOMMAND [ADDR] [FLAGS]`, declared with
//! clap's derive so every flag, its default and its help sit in one place.

use std::fmt::Display;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tester",
    version,
    about = "Load tester for the epoll workbook's servers: measures and verifies.",
    after_help = "ADDR is IP:PORT or HOST:PORT (default 127.0.0.1:8080; [::1]:PORT for IPv6),\n\
                  a name resolved once at start. Several ADDRs share the clients round-robin.\n\
                  Durations: 500ms, 5s, 2m (a bare number is seconds)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open and close connections as fast as possible: connections per second.
    Connect(ConnectArgs),
    /// Open N connections and keep them open: how many succeed, server memory.
    Hold(HoldArgs),
    /// Round trips to an echo server (stages 1-4), every byte checked.
    Echo(EchoArgs),
    /// Lines through a chat server, checked for loss, duplicates and order.
    Chat(ChatArgs),
    /// Checked chat clients among misbehaving ones: the faults cost them nothing?
    Chaos(ChaosArgs),
    /// Internal: one worker process of a run spread over several processes.
    #[command(hide = true)]
    Worker {
        /// The job, as JSON.
        job: String,
    },
}

/// Flags every subcommand has.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The server's address; with several, clients go to each in turn
    #[arg(default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse_addr)]
    pub addrs: Vec<SocketAddr>,
    /// Print one JSON object instead of the readable summary
    #[arg(long)]
    pub json: bool,
    /// Give up on a connection (or an awaited reply) after this long
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections in flight at once
    #[arg(long, default_value_t = 64, value_parser = |s: &str| in_range(s, 1u32, 10_000, ""))]
    pub concurrency: u32,
    /// Stop starting connections after this long (default 5s unless --count is given)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many connection attempts
    #[arg(long, value_parser = |s: &str| in_range(s, 1u64, u64::MAX, ""))]
    pub count: Option<u64>,
    /// Count a connection only once the server's first line arrived (for servers that greet)
    #[arg(long)]
    pub greeting: bool,
}

#[derive(Args, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold
    #[arg(long, default_value_t = 1000, value_parser = |s: &str| in_range(s, 1u64, 1_000_000, ""))]
    pub connections: u64,
    /// How long to hold them once all are open
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The server's process id: report its VmRSS before and after, and bytes per connection
    #[arg(long, value_name = "PID", value_parser = |s: &str| in_range(s, 1u32, u32::MAX, ""))]
    pub server_pid: Option<u32>,
    /// Connections in their handshake at once while ramping up
    #[arg(long, default_value_t = 500, value_parser = |s: &str| in_range(s, 1u32, 10_000, ""))]
    pub concurrency: u32,
    /// Worker processes to spread the connections over (default: as many as the fd limit needs)
    #[arg(long, value_parser = |s: &str| in_range(s, 1u32, 64, ""))]
    pub workers: Option<u32>,
    /// Connections per source address before moving to the next (default:
    /// the ephemeral port range less 1000); hidden, for the tests to reach
    /// 127.0.0.2 without 28,000 connections
    #[arg(long, hide = true, value_parser = |s: &str| in_range(s, 1u64, u64::MAX, ""))]
    pub per_source: Option<u64>,
    /// A line each connection sends once connected, ended by CRLF (`SUBSCRIBE chat`, to hold subscribed Redis clients); what the server answers is read and discarded
    #[arg(long, value_name = "LINE")]
    pub send: Option<String>,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients at once, each with one message outstanding
    #[arg(long, default_value_t = 10, value_parser = |s: &str| in_range(s, 1u32, u32::MAX, ""))]
    pub clients: u32,
    /// Messages each client sends
    #[arg(long, default_value_t = 1000, value_parser = |s: &str| in_range(s, 1u64, u64::MAX, ""))]
    pub messages: u64,
    /// Bytes per message
    #[arg(long, default_value_t = 64, value_parser = |s: &str| in_range(s, 1u64, 64 << 20, ""))]
    pub size: u64,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients (at least 2); every line goes to every other client
    #[arg(long, default_value_t = 10, value_parser = checked_clients)]
    pub clients: u32,
    /// Lines each client sends
    #[arg(long, default_value_t = 100, value_parser = |s: &str| in_range(s, 1u32, u32::MAX, ""))]
    pub messages: u32,
    /// Lines per second across all clients (0 = as fast as possible)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// With --rate 0: lines each client keeps in flight (sent, not yet seen by
    /// every other client), topped up with one write per turn; fewer when
    /// that many would owe one receiver more than 256 KiB
    #[arg(long, default_value_t = 32, value_parser = |s: &str| in_range(s, 1u32, 4096, ""))]
    pub batch: u32,
    /// A line each client sends first, for servers that want a name
    #[arg(long, value_name = "LINE")]
    pub hello: Option<String>,
    /// Measure Redis pub/sub as a chat: each client sends `HELLO 3` and
    /// `SUBSCRIBE CHANNEL`, then every line as `PUBLISH CHANNEL LINE`
    #[arg(long, value_name = "CHANNEL", conflicts_with = "hello")]
    pub publish: Option<String>,
    /// Do not wait for a first line from the server before sending (for servers that say nothing on connect)
    #[arg(long)]
    pub no_greeting: bool,
    /// After the last send, stop once no line has arrived for this long; lines still missing count as lost
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to inject faults and send checked lines
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Well-behaved clients (at least 2), every line they receive checked
    #[arg(long, default_value_t = 10, value_parser = checked_clients)]
    pub clients: u32,
    /// Lines per second the well-behaved clients send, in all
    #[arg(long, default_value_t = 100, value_parser = |s: &str| in_range(s, 1u64, 100_000, ""))]
    pub rate: u64,
    /// Misbehaving clients started per second
    #[arg(long, default_value_t = 50, value_parser = |s: &str| in_range(s, 1u64, 10_000, ""))]
    pub fault_rate: u64,
    /// Misbehaving clients alive at once, at most
    #[arg(long, default_value_t = 16, value_parser = |s: &str| in_range(s, 1u32, 1_000, ""))]
    pub concurrency: u32,
    /// The server's longest line: the over-long lines are longer than this
    #[arg(long, default_value_t = 4096, value_parser = |s: &str| in_range(s, 1usize, 1 << 20, ""))]
    pub max_line: usize,
    /// Seed for every random choice (default: from the clock; the summary prints it)
    #[arg(long, value_parser = |s: &str| in_range(s, 0u64, u64::MAX, ""))]
    pub seed: Option<u64>,
    /// The server's process id: its open descriptors and VmRSS before and after
    #[arg(long, value_name = "PID", value_parser = |s: &str| in_range(s, 1u32, u32::MAX, ""))]
    pub server_pid: Option<u32>,
    /// After the last send, stop once no line has arrived for this long
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `--clients` where every line is checked at the others: one client
/// would have nobody to check its lines, and the check would prove nothing.
fn checked_clients(text: &str) -> Result<u32, String> {
    in_range(
        text,
        2,
        u32::MAX,
        " (each line is checked at the other clients, so one client checks nothing)",
    )
}

/// A number from `min` to `max`; the error says which range, and `why`.
pub fn in_range<T>(text: &str, min: T, max: T, why: &str) -> Result<T, String>
where
    T: FromStr + PartialOrd + Display + Copy + Bounded,
{
    let value: T = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number{why}"))?;
    if value < min {
        return Err(if max == T::MAX {
            format!("must be at least {min}{why}")
        } else {
            format!("must be from {min} to {max}{why}")
        });
    }
    if value > max {
        return Err(format!("must be from {min} to {max}{why}"));
    }
    Ok(value)
}

/// The largest value of an integer type, for "at least N" without a bound.
pub trait Bounded {
    const MAX: Self;
}

impl Bounded for u32 {
    const MAX: u32 = u32::MAX;
}
impl Bounded for u64 {
    const MAX: u64 = u64::MAX;
}
impl Bounded for usize {
    const MAX: usize = usize::MAX;
}

/// `IP:PORT`, or `HOST:PORT` resolved here, once, at start: the first
/// address the resolver gives is the one every connection uses.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("expected IP:PORT or HOST:PORT".to_string());
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected IP:PORT or HOST:PORT".to_string());
    }
    let mut found = text
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host}: {err}"))?;
    found
        .next()
        .ok_or_else(|| format!("cannot resolve {host}: no address"))
}

/// `500ms`, `5s`, `2m`, or a bare number of seconds (`1.5`); more than 0,
/// since a run or a wait of no time at all would measure nothing.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (try 500ms, 5s or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit in {text:?} (use ms, s or m)")),
    };
    let d =
        Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text:?}"))?;
    if d.is_zero() {
        return Err("must be more than 0 (try 500ms, 5s or 2m)".to_string());
    }
    Ok(d)
}

/// The addresses as a command line gives them: `127.0.0.1:8080 [::1]:8080`.
pub fn show_addrs(addrs: &[SocketAddr]) -> String {
    addr_list(addrs).join(" ")
}

/// The addresses as strings, for `--json`.
pub fn addr_list(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(SocketAddr::to_string).collect()
}

/// A duration as it is typed on a command line: `5s`, `250ms`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
