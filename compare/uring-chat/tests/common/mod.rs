//! What every check file here shares: the binary under test, and the skip
//! for a kernel without the io_uring this server needs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::thread;

/// The server under test (`URING_CHAT_BIN` names another build). On a
/// kernel that lacks what it needs, every check of the test binary is
/// skipped: the binary prints `skipped: REASON` and exits 0 before any
/// server starts, as testkit itself ends the run for a binary that cannot
/// be run.
pub fn server_bin() -> PathBuf {
    let bin = testkit::bin("URING_CHAT_BIN", env!("CARGO_BIN_EXE_uring-chat"));
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    if let Some(reason) = MISSING.get_or_init(|| missing_uring(&bin)) {
        // Straight to the descriptor: libtest captures `eprint!` per test.
        let _ = std::io::stderr().write_all(format!("skipped: {reason}\n").as_bytes());
        std::process::exit(0);
    }
    bin
}

/// Start the server once: the kernel lacks io_uring (or a part of it the
/// server needs) exactly when the server says so, `error: io_uring: ...`,
/// and exits instead of listening. Any other failure is the checks' to
/// report, not a reason to skip them.
fn missing_uring(bin: &Path) -> Option<String> {
    let mut child = Command::new(bin)
        .args(["-q", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = line_tx.send(line);
    });
    let line = line_rx.recv_timeout(testkit::TIMEOUT).unwrap_or_default();
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait for the server");
    if line.starts_with("listening on") {
        return None;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let error = stderr.lines().find(|l| l.starts_with("error: io_uring:"))?;
    Some(format!(
        "this kernel cannot run the io_uring server ({})",
        error.trim_start_matches("error: ")
    ))
}
