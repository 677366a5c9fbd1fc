//! Keeping the tester and the server apart: each measured server runs on one
//! CPU and the tester (with any worker processes it starts, which inherit
//! its affinity) on another, so neither steals the other's core and a run
//! measures the server rather than how the scheduler happened to mix them.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Which CPU runs what; both None on a machine with a single CPU.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pinning {
    /// The CPUs this benchmark may use (`sched_getaffinity`).
    pub allowed: Vec<usize>,
    /// The CPU every measured server is pinned to.
    pub server_cpu: Option<usize>,
    /// The CPU the tester and its worker processes are pinned to.
    pub tester_cpu: Option<usize>,
}

impl Pinning {
    /// The tester on the first CPU this process may use, the server on the
    /// second; no pinning when there is only one.
    pub fn probe() -> Pinning {
        let allowed: Vec<usize> = sched_getaffinity(Pid::from_raw(0))
            .map(|set| {
                (0..CpuSet::count())
                    .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
                    .collect()
            })
            .unwrap_or_default();
        let (tester_cpu, server_cpu) = match allowed[..] {
            [first, second, ..] => (Some(first), Some(second)),
            _ => (None, None),
        };
        Pinning {
            allowed,
            server_cpu,
            tester_cpu,
        }
    }

    /// No pinning (`bench --no-pin`): the scheduler places everything.
    pub fn none(allowed: Vec<usize>) -> Pinning {
        Pinning {
            allowed,
            server_cpu: None,
            tester_cpu: None,
        }
    }

    /// One sentence for the results: which CPU ran what.
    pub fn describe(&self) -> String {
        match (self.server_cpu, self.tester_cpu) {
            (Some(server), Some(tester)) => format!(
                "each server pinned to CPU {server}, the tester and its worker processes to CPU {tester}"
            ),
            _ if self.allowed.len() > 1 => format!(
                "no pinning (`--no-pin`): the scheduler placed the server and the tester on {} CPUs",
                self.allowed.len()
            ),
            _ => format!(
                "no pinning: only {} CPU available, so the server and the tester share it",
                self.allowed.len().max(1)
            ),
        }
    }
}

/// Make `cmd`'s process run only on `cpu` (nothing when `cpu` is None).
pub fn pin(cmd: &mut Command, cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = CpuSet::new();
    if set.set(cpu).is_err() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed; it makes one system call,
    // sched_setaffinity(2), on a set built before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs a child started through `pin` may run on, as the kernel
    /// reports them (`Cpus_allowed_list` in its /proc status).
    fn allowed_in_child(cpu: Option<usize>) -> String {
        let mut cmd = Command::new("grep");
        cmd.args(["Cpus_allowed_list", "/proc/self/status"]);
        pin(&mut cmd, cpu);
        let out = cmd.output().expect("run grep");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.split(':').nth(1).unwrap().trim().to_string()
    }

    #[test]
    fn a_pinned_child_runs_on_its_cpu_only() {
        let pinning = Pinning::probe();
        let last = *pinning.allowed.last().expect("at least one CPU");
        assert_eq!(allowed_in_child(Some(last)), last.to_string());
        // Without a CPU the child keeps what it inherited.
        assert_ne!(allowed_in_child(None), "");
    }

    #[test]
    fn two_cpus_or_more_put_server_and_tester_apart() {
        let pinning = Pinning::probe();
        match pinning.allowed.len() {
            0 | 1 => assert_eq!((pinning.server_cpu, pinning.tester_cpu), (None, None)),
            _ => {
                let (server, tester) = (pinning.server_cpu.unwrap(), pinning.tester_cpu.unwrap());
                assert_ne!(server, tester);
                assert!(pinning.allowed.contains(&server) && pinning.allowed.contains(&tester));
            }
        }
    }
}
