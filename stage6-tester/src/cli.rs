//! The command line: `tester SUBCOMMAND [ADDR] [FLAGS]`, declared with
//! clap's derive so every flag, its default and its help sit in one place.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tester",
    version,
    about = "Load tester for the epoll workbook's servers: measures and verifies.",
    after_help = "ADDR is IP:PORT (default 127.0.0.1:8080; [::1]:PORT for IPv6).\n\
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
    /// The server's address
    #[arg(default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub addr: SocketAddr,
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
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Stop starting connections after this long (default 5s unless --count is given)
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many connection attempts
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
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
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections: u64,
    /// How long to hold them once all are open
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The server's process id: report its VmRSS before and after, and bytes per connection
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Connections in their handshake at once while ramping up
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Worker processes to spread the connections over (default: as many as the fd limit needs)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: Option<u32>,
    /// Connections per source address before moving to the next (default:
    /// the ephemeral port range less 1000); hidden, for the tests to reach
    /// 127.0.0.2 without 28,000 connections
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub per_source: Option<u64>,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients at once, each with one message outstanding
    #[arg(long, default_value_t = 10)]
    pub clients: u32,
    /// Messages each client sends
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Bytes per message
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    pub size: u64,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients; every line goes to every other client
    #[arg(long, default_value_t = 10)]
    pub clients: u32,
    /// Lines each client sends
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub messages: u32,
    /// Lines per second across all clients (0 = as fast as possible)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// With --rate 0: lines each client keeps in flight (sent, not yet seen by
    /// every other client), topped up with one write per turn; fewer when
    /// that many would owe one receiver more than 256 KiB
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// A line each client sends first, for servers that want a name
    #[arg(long, value_name = "LINE")]
    pub hello: Option<String>,
    /// Do not wait for a first line from the server before sending (for servers that say nothing on connect)
    #[arg(long)]
    pub no_greeting: bool,
    /// After the last send, stop once no line has arrived for this long; lines still missing count as lost
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// `500ms`, `5s`, `2m`, or a bare number of seconds (`1.5`).
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
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("invalid duration {text:?}"))
}

/// A duration as it is typed on a command line: `5s`, `250ms`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
