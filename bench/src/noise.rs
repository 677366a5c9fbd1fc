//! How much of the machine a run did not have: CPU time that neither the
//! server, the tester nor the benchmark used while the run went on (other
//! processes on the machine), and time the hypervisor took away (steal).
//! A run with much of either measured the neighbours as well as the server.

use std::fs;
use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};
use nix::sys::time::TimeValLike;
use nix::unistd::{SysconfVar, sysconf};
use serde::{Deserialize, Serialize};

/// The machine's and this process's CPU counters at one moment.
pub struct Snapshot {
    at: Instant,
    /// Busy time of all CPUs (user, nice, system), seconds. Interrupt and
    /// softirq time are left out: the kernel may count the loopback
    /// traffic's own softirq work there rather than in the processes' time.
    busy_s: f64,
    /// Time the hypervisor ran something else on these CPUs, seconds.
    steal_s: f64,
    /// This process and its reaped children (the tester), seconds.
    ours_s: f64,
}

/// What a run shared the machine with, in CPUs' worth (1.0 = one whole CPU).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Noise {
    /// Busy CPU time of other processes during the run, per second of run.
    pub other_cpus: f64,
    /// Steal time during the run, per second of run.
    pub steal_cpus: f64,
}

impl Snapshot {
    pub fn take() -> Option<Snapshot> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<f64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let per_second = sysconf(SysconfVar::CLK_TCK).ok()?? as f64;
        // user nice system idle iowait irq softirq steal ...
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0.0) / per_second;
        let seconds = |who| {
            let usage = getrusage(who).ok()?;
            let micros =
                usage.user_time().num_microseconds() + usage.system_time().num_microseconds();
            Some(micros as f64 / 1e6)
        };
        Some(Snapshot {
            at: Instant::now(),
            busy_s: field(0) + field(1) + field(2),
            steal_s: field(7),
            ours_s: seconds(UsageWho::RUSAGE_SELF)? + seconds(UsageWho::RUSAGE_CHILDREN)?,
        })
    }

    /// The noise between `self` and `after`, given the server's CPU time
    /// over the same stretch (which /proc/stat counts as busy too).
    pub fn noise(&self, after: &Snapshot, server_s: f64) -> Option<Noise> {
        let wall = after.at.duration_since(self.at).as_secs_f64();
        if wall <= 0.0 {
            return None;
        }
        let ours = (after.ours_s - self.ours_s) + server_s;
        let other = (after.busy_s - self.busy_s - ours).max(0.0);
        Some(Noise {
            other_cpus: other / wall,
            steal_cpus: (after.steal_s - self.steal_s).max(0.0) / wall,
        })
    }
}
