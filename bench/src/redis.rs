//! A `redis-server` of the benchmark's own for one cluster run: a free
//! loopback port, no persistence, killed by its PID when done; for the
//! fault run, also stopped, killed and started again empty on its port,
//! and told to refuse writes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pin::pin;
use crate::process::{cpu_split_of, rss_of};

/// The program, as Debian installs it (on the PATH).
pub const REDIS_SERVER: &str = "redis-server";

/// How long Redis may take to answer its first PING.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Whether `redis-server` can be run here.
pub fn installed() -> bool {
    Command::new(REDIS_SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running `redis-server`; killed (SIGKILL to its PID) and reaped on drop.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
    cpu: Option<usize>,
}

impl Redis {
    /// Start one on a free loopback port, on `cpu`, and wait until it
    /// answers PING.
    pub fn start(cpu: Option<usize>) -> Result<Redis> {
        Redis::on_port(free_port()?, cpu)
    }

    /// Start one on `port`, and wait until it answers PING.
    fn on_port(port: u16, cpu: Option<usize>) -> Result<Redis> {
        let mut command = Command::new(REDIS_SERVER);
        pin(&mut command, cpu);
        let child = command
            .args(args(&port.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {REDIS_SERVER}"))?;
        let mut redis = Redis {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            cpu,
        };
        let addr = redis.addr;
        wait_until_ready(addr, || {
            let status = redis.child.try_wait().ok().flatten()?;
            Some(status.to_string())
        })?;
        Ok(redis)
    }

    /// Send it a signal: `SIGSTOP` freezes it with its connections open,
    /// answering nothing, until `SIGCONT`.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("cannot send {signal} to redis-server"))
    }

    /// Kill it (everything it held is gone), wait `down`, and start a new,
    /// empty one on the same port.
    pub fn restart_empty(&mut self, down: Duration) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        thread::sleep(down);
        *self = Redis::on_port(self.addr.port(), self.cpu)?;
        Ok(())
    }

    /// Refuse every write that needs memory (`-OOM`), as a full Redis does,
    /// or (`refuse` false) lift that.
    pub fn refuse_writes(&self, refuse: bool) -> Result<()> {
        if refuse {
            self.expect_ok(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
        }
        self.expect_ok(&["CONFIG", "SET", "maxmemory", if refuse { "1" } else { "0" }])
    }

    /// One command on a connection of its own, its reply `+OK`.
    fn expect_ok(&self, args: &[&str]) -> Result<()> {
        let limit = Duration::from_secs(5);
        let mut stream = TcpStream::connect_timeout(&self.addr, limit)
            .with_context(|| format!("cannot connect to redis-server for {args:?}"))?;
        stream.set_read_timeout(Some(limit))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            stream
                .read_exact(&mut byte)
                .with_context(|| format!("no reply from redis-server to {args:?}"))?;
            reply.push(byte[0]);
        }
        if reply != b"+OK\r\n" {
            bail!(
                "redis-server answered {args:?} with {:?}",
                String::from_utf8_lossy(&reply)
            );
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory now (VmRSS), bytes.
    pub fn rss(&self) -> Option<u64> {
        rss_of(self.pid())
    }

    /// CPU time it has used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_split_of(self.pid()).map(|(user, system)| user + system)
    }
}

/// `redis-server`'s arguments: loopback only, nothing written to disk, and
/// room for as many clients as the holds ask for (Redis lowers
/// `maxclients` to what its descriptor limit allows, less 32 of its own).
pub fn args(port: &str) -> Vec<String> {
    [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--maxclients",
        "20000",
    ]
    .map(String::from)
    .to_vec()
}

/// Wait until the Redis at `addr` answers PING, at most `START_LIMIT`;
/// `exited` says how it ended, if it ended meanwhile.
pub fn wait_until_ready(
    addr: SocketAddr,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<()> {
    let started = Instant::now();
    while !answers(addr) {
        if let Some(how) = exited() {
            bail!("{REDIS_SERVER} exited before it answered PING: {how}");
        }
        if started.elapsed() > START_LIMIT {
            bail!("{REDIS_SERVER} on {addr} did not answer PING within 10 s");
        }
        // Polling a process that gives no other sign it is ready.
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether the Redis at `addr` answers PING with +PONG.
pub fn answers(addr: SocketAddr) -> bool {
    let limit = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(limit));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// A free loopback port, for a server that cannot be told port 0.
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("cannot find a free loopback port")
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
