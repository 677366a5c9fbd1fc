//! The facts a reader needs to weigh the figures: the machine they came from
//! and the commit that was measured.

use std::fs;
use std::process::Command;

use nix::sys::resource::{Resource, getrlimit};
use serde::{Deserialize, Serialize};

use crate::pin::Pinning;

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
    /// `net.ipv4.tcp_max_tw_buckets`: TIME_WAIT sockets the machine keeps;
    /// past it a closed connection skips TIME_WAIT, which is cheaper.
    #[serde(default)]
    pub max_time_wait: Option<u64>,
    /// `/proc/loadavg` when the benchmark started: other work on the machine.
    #[serde(default)]
    pub load_before: Option<String>,
    /// Which CPU ran the servers and which the tester.
    #[serde(default)]
    pub pinning: Pinning,
}

#[derive(Serialize, Deserialize)]
pub struct Commit {
    /// `git rev-parse HEAD`, or "unknown" outside a git checkout.
    pub hash: String,
    /// Tracked files differed from the commit when the run started.
    pub dirty: bool,
    /// The last commit that changed stage5-chat/src, `hash subject`.
    #[serde(default)]
    pub stage5: Option<String>,
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
            max_time_wait: read_trimmed("/proc/sys/net/ipv4/tcp_max_tw_buckets")
                .and_then(|v| v.parse().ok()),
            load_before: load_average(),
            pinning: Pinning::probe(),
        }
    }

    /// How many ports `ephemeral_ports` spans.
    pub fn ephemeral_port_count(&self) -> Option<u64> {
        let (low, high) = self.ephemeral_ports.split_once('-')?;
        let (low, high): (u64, u64) = (low.parse().ok()?, high.parse().ok()?);
        Some(high.saturating_sub(low) + 1)
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
        // The benchmark's own output folder is left out: a run that rewrote
        // the last results has not changed what it measures.
        let dirty = git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)book/src/measuring",
        ])
        .is_some_and(|changes| !changes.is_empty());
        let stage5 = git(&["log", "-1", "--format=%h %s", "--", "stage5-chat/src"])
            .filter(|line| !line.is_empty());
        Commit {
            hash,
            dirty,
            stage5,
        }
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

/// TIME_WAIT sockets on the whole machine now (`tw` in /proc/net/sockstat).
pub fn time_wait_sockets() -> Option<u64> {
    let text = fs::read_to_string("/proc/net/sockstat").ok()?;
    let tcp = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    words.find(|&w| w == "tw")?;
    words.next()?.parse().ok()
}

/// The 1, 5 and 15 minute load averages, `0.99 3.95 15.04`.
pub fn load_average() -> Option<String> {
    read_trimmed("/proc/loadavg")
        .map(|v| v.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
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
