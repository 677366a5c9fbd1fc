//! The benchmark behind the book's Measuring chapter: start every server,
//! drive it with `tester`, and write results.json (every raw figure),
//! results.md (the tables the chapter includes) and the SVG charts into
//! `target/bench/`, and into the book only with `--update-book`.
//!
//! `scripts/bench` builds the release binaries and runs this; run it by hand
//! as `bench [--quick|--full|--smoke] [--bin-dir DIR] [--out DIR] [--update-book]`.

mod charts;
mod cluster;
mod cluster_faults;
mod idle;
mod machine;
mod measure;
mod noise;
mod pin;
mod plan;
mod process;
mod redis;
mod results;
mod summary;
mod syscalls;
mod table;
mod targets;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{ArgGroup, Parser};

use machine::{Commit, Machine};
use pin::Pinning;
use plan::{Part, Profile};
use results::{Results, Test};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Measure every server of the workbook with the tester; write results.json, results.md and SVG charts.",
    group(ArgGroup::new("profile").args(["quick", "full", "smoke"]))
)]
struct Cli {
    /// A short run (the default; see scripts/bench --help for how long)
    #[arg(long)]
    quick: bool,
    /// More rounds and more points per chart
    #[arg(long)]
    full: bool,
    /// Tiny numbers, only to prove the harness works (the test's profile)
    #[arg(long)]
    smoke: bool,
    /// Where the server binaries and `tester` are (default: beside this program)
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where to write results.json, results.md and the charts
    #[arg(long, value_name = "DIR", default_value = "target/bench")]
    out: PathBuf,
    /// Also write them into the book (BOOK_DIR, by default
    /// book/src/measuring), replacing the figures the chapter shows
    #[arg(long)]
    update_book: bool,
    /// The book's folder of figures, for --update-book
    #[arg(long, value_name = "DIR", default_value = "book/src/measuring")]
    book_dir: PathBuf,
    /// Measure nothing: redraw results.md and the charts from OUT/results.json,
    /// the targets judged again from its figures
    #[arg(long)]
    render_only: bool,
    /// Let the scheduler place the servers and the tester (by default each
    /// server runs on one CPU and the tester on another)
    #[arg(long)]
    no_pin: bool,
    /// Run this part alone and put its results in place of the same part's
    /// in OUT/results.json (and, with --update-book, the book's), keeping
    /// every other figure there
    #[arg(long, value_name = "PART", conflicts_with = "render_only")]
    only: Option<Part>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: no run gave a figure: nothing was measured");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Measure (or reload), then write everything; false when no run at all
/// gave a figure. A failed run is data (a server that crashed, a tester
/// that gave up): it is recorded, shown in the table and warned about, but
/// the figures of the other runs still stand.
fn run(cli: &Cli) -> Result<bool> {
    let results = if cli.render_only {
        let path = cli.out.join("results.json");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut results: Results = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse {}", path.display()))?;
        // Judged again from the figures, so that a target whose rule
        // changed is judged by the rule of this build; a target the run
        // did not judge (its part was not run) stays out.
        let judged: Vec<String> = results.targets.iter().map(|t| t.key.clone()).collect();
        results.targets = targets::evaluate(&results.measurements, &results.profile.numbers());
        results.targets.retain(|t| judged.contains(&t.key));
        results
    } else {
        measure(cli)?
    };
    let mut dirs = vec![&cli.out];
    if cli.update_book {
        dirs.push(&cli.book_dir);
    }
    for dir in dirs {
        match merged(&results, dir, cli.only)? {
            Some(whole) => write(&whole, dir)?,
            None => write(&results, dir)?,
        }
    }
    for m in results.measurements.iter().filter(|m| m.error.is_some()) {
        eprintln!(
            "warning: {} `{}` failed: {}",
            m.server,
            m.command,
            m.error.as_deref().unwrap_or_default()
        );
    }
    let mut written = vec![cli.out.join("results.md")];
    if cli.update_book {
        written.push(cli.book_dir.join("results.md"));
    }
    print!("{}", summary::render(&results, &written));
    Ok(results
        .measurements
        .iter()
        .any(|m| m.error.is_none() && !m.skipped()))
}

fn measure(cli: &Cli) -> Result<Results> {
    let profile = if cli.full {
        Profile::Full
    } else if cli.smoke {
        Profile::Smoke
    } else {
        Profile::Quick
    };
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's path")?
            .parent()
            .context("this program has no folder")?
            .to_path_buf(),
    };
    let tester = bin_dir.join("tester");
    if !tester.is_file() {
        bail!(
            "cannot find {}: build the workspace first (scripts/bench does)",
            tester.display()
        );
    }
    raise_fd_limit();
    let started = std::time::Instant::now();
    let mut machine = Machine::probe();
    if cli.no_pin {
        machine.pinning = Pinning::none(machine.pinning.allowed.clone());
    }
    let mut numbers = profile.numbers();
    numbers.fit_ports(machine.ephemeral_port_count());
    let commit = Commit::probe();
    eprintln!(
        "bench: {profile:?} profile, binaries from {}, commit {}; {}; load average {}",
        bin_dir.display(),
        commit.describe(),
        machine.pinning.describe(),
        machine.load_before.as_deref().unwrap_or("unknown"),
    );
    let bench = measure::Bench {
        numbers: &numbers,
        tester: &tester,
        pinning: &machine.pinning,
        out: &cli.out,
        only: cli.only,
    };
    let (servers, mut measurements) = measure::run_all(&bench, &bin_dir, machine.max_connections());
    let mut targets = targets::evaluate(&measurements, &numbers);
    let mut command = match profile {
        Profile::Smoke => "bench --smoke".to_string(),
        Profile::Quick => "scripts/bench --quick".to_string(),
        Profile::Full => "scripts/bench --full".to_string(),
    };
    if cli.no_pin {
        command += " --no-pin";
    }
    if let Some(part) = cli.only {
        command += &format!(" --only {}", part_name(part));
        targets.retain(|t| part_of(part, &t.key));
    }
    for m in &mut measurements {
        if let Some(run) = &mut m.run {
            run.bench_command = command.clone();
            run.commit = Some(commit.describe());
        }
    }
    Ok(Results {
        profile,
        command,
        machine,
        commit,
        servers,
        measurements,
        targets,
        elapsed_s: Some(started.elapsed().as_secs_f64()),
        load_after: machine::load_average(),
    })
}

fn part_name(part: Part) -> &'static str {
    match part {
        Part::Chaos => "chaos",
        Part::Cluster => "cluster",
        Part::ClusterFaults => "cluster-faults",
    }
}

/// Whether a target is judged on `part`'s runs.
fn part_of(part: Part, target_key: &str) -> bool {
    match part {
        Part::Chaos => target_key == targets::CHAOS,
        Part::Cluster => targets::CLUSTER_TARGETS.contains(&target_key),
        Part::ClusterFaults => target_key == targets::CLUSTER_FAULTS,
    }
}

/// Whether a run belongs to `part`.
fn in_part(part: Part, test: &Test) -> bool {
    match part {
        Part::Chaos => matches!(test, Test::Chaos { .. }),
        Part::Cluster => matches!(test, Test::ClusterHold { .. } | Test::ClusterChat { .. }),
        Part::ClusterFaults => matches!(test, Test::ClusterFaults { .. }),
    }
}

/// With `--only`, the results already in `dir` with that part's runs and
/// targets replaced by the new ones; None when `results` is what to write
/// (no `--only`, or nothing there yet).
fn merged(results: &Results, dir: &Path, only: Option<Part>) -> Result<Option<Results>> {
    let path = dir.join("results.json");
    let Some(part) = only else {
        return Ok(None);
    };
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut earlier: Results =
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    earlier.measurements.retain(|m| !in_part(part, &m.test));
    earlier
        .measurements
        .extend(results.measurements.iter().cloned());
    // Each target in its place, so the list keeps the order of a whole run.
    for target in &results.targets {
        match earlier.targets.iter_mut().find(|t| t.key == target.key) {
            Some(old) => *old = target.clone(),
            None => earlier.targets.push(target.clone()),
        }
    }
    Ok(Some(earlier))
}

/// The ping-pong driver holds thousands of connections itself: raise the
/// soft descriptor limit to the hard one, as the servers and the tester do.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn write(results: &Results, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(results)? + "\n";
    let path = out.join("results.json");
    fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
    let path = out.join("results.md");
    fs::write(&path, table::render(results))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let charts = charts::draw_all(results, out)?;
    eprintln!(
        "bench: wrote results.json, results.md, {} in {}",
        charts.join(", "),
        out.display()
    );
    Ok(())
}
