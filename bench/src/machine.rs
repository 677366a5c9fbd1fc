//! The facts a reader needs to weigh the figures: the machine they came from
//! and the commit that was measured.

use std::fs;
use std::process::Command;

use nix::sys::resource::{Resource, getrlimit};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may run on (`nproc`).
    pub cores: usize,
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    pub memory_bytes: Option<u64>,
    /// RLIMIT_NOFILE, soft and hard: the most descriptors one process may open.
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    /// `vm.max_map_count`: memory mappings per process (every thread's
    /// stack takes some, which caps thread-per-connection servers).
    pub max_map_count: Option<u64>,
    /// `net.ipv4.ip_local_port_range`: the ephemeral ports of one source address.
    pub ephemeral_ports: String,
}

#[derive(Serialize, Deserialize)]
pub struct Commit {
    /// `git rev-parse HEAD`, or "unknown" outside a git checkout.
    pub hash: String,
    /// Tracked files differed from the commit when the run started.
    pub dirty: bool,
}

impl Machine {
    pub fn probe() -> Machine {
        let (nofile_soft, nofile_hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: proc_field("/proc/cpuinfo", "model name")
                .unwrap_or_else(|| "unknown".into()),
            kernel: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            memory_bytes: proc_field("/proc/meminfo", "MemTotal").and_then(|v| kib(&v)),
            nofile_soft,
            nofile_hard,
            max_map_count: read_trimmed("/proc/sys/vm/max_map_count").and_then(|v| v.parse().ok()),
            ephemeral_ports: read_trimmed("/proc/sys/net/ipv4/ip_local_port_range")
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join("-"))
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// The most connections a server here can hold: its descriptor limit
    /// (it raises its soft limit to the hard one) less a margin for the
    /// listener, stdio and epoll.
    pub fn max_connections(&self) -> u64 {
        self.nofile_hard.saturating_sub(500).max(1)
    }
}

impl Commit {
    pub fn probe() -> Commit {
        let hash = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|changes| !changes.is_empty());
        Commit { hash, dirty }
    }

    /// `1a2b3c4d` or `1a2b3c4d (with uncommitted changes)`.
    pub fn describe(&self) -> String {
        let short = &self.hash[..self.hash.len().min(12)];
        if self.dirty {
            format!("{short} (with uncommitted changes)")
        } else {
            short.to_string()
        }
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The value of the first `key : value` (or `key: value`) line of a /proc file.
pub fn proc_field(path: &str, key: &str) -> Option<String> {
    fs::read_to_string(path).ok()?.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// `12345 kB` as bytes.
pub fn kib(value: &str) -> Option<u64> {
    let number: u64 = value.trim_end_matches("kB").trim().parse().ok()?;
    Some(number * 1024)
}
