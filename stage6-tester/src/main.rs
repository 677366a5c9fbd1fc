//! Stage 6: the load tester. `tester SUBCOMMAND [ADDR] [FLAGS]` drives the
//! workbook's servers (or any TCP echo or line-relaying chat server) with
//! non-blocking sockets in one epoll loop per process, measures them, and
//! checks what comes back.
//!
//! - `connect`: connections per second and connect latency (`connect.rs`)
//! - `hold`: many idle connections and the server's memory (`hold.rs`)
//! - `echo`: round trips with every byte checked (`echo.rs`)
//! - `chat`: lines relayed once, in order, to every other client (`chat.rs`)
//! - `chaos`: checked chat clients among misbehaving ones (`chaos.rs`)
//!
//! `net.rs` is the shared epoll machinery, `report.rs` turns measurements into
//! the summary or JSON, `worker.rs` spreads a run over processes.

use std::process::ExitCode;

use clap::Parser;

mod chaos;
mod chat;
mod cli;
mod connect;
mod echo;
mod hold;
mod net;
mod report;
mod worker;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every subcommand may want many sockets: take all the kernel allows.
    net::raise_fd_limit();
    let (json, result) = match &cli.command {
        Command::Connect(args) => (args.common.json, connect::run(args)),
        Command::Hold(args) => (args.common.json, hold::run(args)),
        Command::Echo(args) => (args.common.json, echo::run(args)),
        Command::Chat(args) => (args.common.json, chat::run(args)),
        Command::Chaos(args) => (args.common.json, chaos::run(args)),
        Command::Worker { job } => return worker::serve(job),
    };
    match result {
        Ok(mut outcome) => {
            outcome.json["tester_cpu"] = report::own_cpu();
            if json {
                println!("{}", outcome.json);
            } else {
                println!("{}", outcome.summary);
            }
            if outcome.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
