//! Spreading a run over processes. One process may open only
//! `RLIMIT_NOFILE` descriptors (20,000 here, and the hard limit cannot be
//! raised without privileges), so a run that needs more starts copies of
//! itself: `tester worker JOB` with the job as JSON. Each worker runs its
//! share in its own epoll loop and talks to the parent in JSON lines on
//! stdout; the parent says "stop" by closing the worker's stdin.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::hold::{self, Held, HoldJob, Ramp, Stop};
use crate::report::{Progress, thousands};

/// What a worker is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub enum Job {
    Hold(HoldJob),
}

// ANCHOR: reports
/// One line a worker writes to the parent.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// The ramp-up is over; the connections are held until stdin closes.
    Ramped(Ramp),
    /// Stdin closed, the connections are closed: the final figures.
    Done(Held),
    /// The worker failed; it exits 1 after this line.
    Error(String),
}
// ANCHOR_END: reports

/// The hidden `worker` subcommand: run the job, report in JSON lines.
pub fn serve(job: &str) -> ExitCode {
    let result = serde_json::from_str::<Job>(job)
        .context("invalid worker job")
        .and_then(|job| match job {
            Job::Hold(job) => hold::run_part(
                &job,
                Stop::StdinClosed,
                &mut |ramp| send(&Report::Ramped(ramp.clone())),
                &mut |_| {},
                &mut || {},
            ),
        });
    match result {
        Ok(held) => {
            send(&Report::Done(held));
            ExitCode::SUCCESS
        }
        Err(err) => {
            send(&Report::Error(format!("{err:#}")));
            ExitCode::FAILURE
        }
    }
}

fn send(report: &Report) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, report);
    let _ = writeln!(out);
    let _ = out.flush();
}

/// A worker process as the parent sees it.
struct Worker {
    child: Child,
    /// Dropping it closes the pipe: the worker's signal to stop.
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Normally the worker has exited already; after an error it is ours
        // to end (by its own pid, through the Child we started).
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Run a hold over one worker per job: wait until every worker has ramped
/// up, hold for `hold_for`, call `while_held` (the server's memory is read
/// then), stop them and collect their figures.
pub fn hold(
    jobs: &[HoldJob],
    hold_for: Duration,
    while_held: &mut dyn FnMut(),
) -> Result<(Vec<Ramp>, Vec<Held>)> {
    let exe = std::env::current_exe().context("cannot find the tester's own binary")?;
    let (tx, rx) = mpsc::channel::<(usize, Result<Report>)>();
    let mut workers = Vec::new();
    for (index, job) in jobs.iter().enumerate() {
        let job = serde_json::to_string(&Job::Hold(job.clone()))?;
        let mut command = Command::new(&exe);
        command
            .arg("worker")
            .arg(job)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl(2) is async-signal-safe, as pre_exec requires. A
        // worker must not outlive a tester that was killed mid-run.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start worker process {}", index + 1))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        workers.push(Worker { child, stdin });
        // One reader thread per worker process (a handful), not per connection.
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let report = line
                    .context("reading a worker's report")
                    .and_then(|l| serde_json::from_str(&l).context("bad worker report"));
                let last = matches!(report, Ok(Report::Done(_) | Report::Error(_)));
                if tx.send((index, report)).is_err() || last {
                    return;
                }
            }
            let _ = tx.send((index, Err(anyhow!("exited without a report"))));
        });
    }
    drop(tx);

    let mut ramps: Vec<Option<Ramp>> = vec![None; jobs.len()];
    let mut helds: Vec<Option<Held>> = vec![None; jobs.len()];
    let mut progress = Progress::new();
    // Every worker bounds its own ramp with its connect timeout, so this
    // wait ends: with a Ramped line, or with the pipe closing.
    while ramps.iter().any(Option::is_none) {
        let (index, report) = rx.recv().context("worker processes vanished")?;
        match report {
            Ok(Report::Ramped(ramp)) => ramps[index] = Some(ramp),
            Ok(Report::Error(err)) => bail!("{err}"),
            Ok(Report::Done(_)) => bail!("worker process {} stopped early", index + 1),
            Err(err) => bail!("worker process {}: {err:#}", index + 1),
        }
        progress.tick(|| {
            let open: u64 = ramps.iter().flatten().map(|r| r.open).sum();
            format!(
                "{} connections open (workers still ramping)",
                thousands(open as f64)
            )
        });
    }
    let held_since = Instant::now();
    while held_since.elapsed() < hold_for {
        // The parent has nothing to react to while the workers hold: it
        // only keeps time (and the progress line).
        thread::sleep((hold_for - held_since.elapsed()).min(Duration::from_millis(200)));
        progress.tick(|| {
            let open: u64 = ramps.iter().flatten().map(|r| r.open).sum();
            format!("holding {} connections", thousands(open as f64))
        });
    }
    progress.finish();
    while_held();
    for worker in &mut workers {
        drop(worker.stdin.take());
    }
    while helds.iter().any(Option::is_none) {
        let (index, report) = rx.recv().context("worker processes vanished")?;
        match report {
            Ok(Report::Done(held)) => helds[index] = Some(held),
            Ok(Report::Error(err)) => bail!("{err}"),
            Ok(Report::Ramped(_)) => {}
            Err(err) => bail!("worker process {}: {err:#}", index + 1),
        }
    }
    drop(workers); // reap them
    Ok((
        ramps.into_iter().flatten().collect(),
        helds.into_iter().flatten().collect(),
    ))
}
