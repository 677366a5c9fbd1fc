//! A real Redis for the checks of the servers that use one: a
//! `redis-server` of the test's own, on a free loopback port, with
//! persistence off, killed by its PID when dropped.
//!
//! On a machine without `redis-server`, [`Redis::start`] says the check is
//! skipped (and how to install it) and returns `None`; with
//! `REQUIRE_REDIS=1` in the environment (as CI sets it) it fails instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

use crate::{TIMEOUT, closed_port};

/// The environment variable that makes a missing Redis a failure.
pub const REQUIRE: &str = "REQUIRE_REDIS";

/// A running `redis-server`.
pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
}

impl Redis {
    /// Start one on a free port, or `None` (the check is skipped) when
    /// `redis-server` is not installed.
    pub fn start() -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            let required = std::env::var(REQUIRE).is_ok_and(|v| v == "1");
            assert!(
                !required,
                "redis-server is not installed and {REQUIRE}=1: apt-get install redis-server"
            );
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        Some(Redis::on_port(closed_port()))
    }

    /// Start one on `port`, and wait until it says it is ready.
    fn on_port(port: u16) -> Redis {
        let port_arg = port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &port_arg, "--loglevel", "notice"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, is_ready) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                    break;
                }
            }
            for _ in lines {} // keep draining, so it never blocks on stdout
        });
        if is_ready.recv_timeout(TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} never said it was ready");
        }
        Redis {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Send it a signal: `SIGSTOP` makes a Redis that holds its
    /// connections and answers nothing, until `SIGCONT`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Make it refuse every write that needs memory (`-OOM`), as a full
    /// Redis does, until [`Redis::accept_writes`]: reads still work.
    pub fn refuse_writes(&self) {
        let policy = self.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        let limit = self.command(&["CONFIG", "SET", "maxmemory", "1"]);
        assert_eq!(
            (policy.as_str(), limit.as_str()),
            ("+OK", "+OK"),
            "CONFIG SET"
        );
    }

    /// Lift [`Redis::refuse_writes`].
    pub fn accept_writes(&self) {
        assert_eq!(self.command(&["CONFIG", "SET", "maxmemory", "0"]), "+OK");
    }

    /// `HOST:PORT`, as a server's `--redis` takes it.
    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    /// Kill it (SIGKILL: everything it held is gone, and its clients'
    /// connections with it).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start a new, empty one on the same port, after [`Redis::stop`].
    pub fn start_again(&mut self) {
        *self = Redis::on_port(self.addr.port());
    }

    /// Send one command and return its reply's first line (`+OK`, `:3`).
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect_timeout(&self.addr, TIMEOUT).expect("connect to redis");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => reply.push(byte[0]),
                other => panic!("no reply from redis to {args:?}: {other:?}"),
            }
        }
        String::from_utf8_lossy(&reply).trim_end().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
