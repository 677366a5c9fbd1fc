//! The server on a machine without io_uring: started under a seccomp
//! filter that makes `io_uring_setup(2)` fail with `ENOSYS`, as a kernel
//! built without io_uring does, it must say so and exit, not hang, not
//! listen, not exit 0. Run it against another build with
//! `URING_CHAT_BIN=/path/to/server cargo test -p compare-uring-chat`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;

/// `AUDIT_ARCH_*` of the architecture the server runs on (from
/// `linux/audit.h`: the ELF machine, 64-bit, little-endian); libc has none.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// Offsets into `struct seccomp_data`: the call's number, then its arch.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;

fn statement(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The filter: `io_uring_setup` of this architecture fails with ENOSYS;
/// every other call (and any call of another architecture) is allowed.
fn no_io_uring_filter() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    vec![
        statement(BPF_LD | BPF_W | BPF_ABS, ARCH_OFFSET),
        // Another architecture's numbers mean other calls: let them be.
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 3),
        statement(BPF_LD | BPF_W | BPF_ABS, NR_OFFSET),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        statement(
            BPF_RET | BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        statement(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Start the server with the filter installed, and wait (bounded) for it
/// to exit; a server still running at the timeout is killed and fails.
fn run_without_io_uring() -> Output {
    let bin = testkit::bin("URING_CHAT_BIN", env!("CARGO_BIN_EXE_uring-chat"));
    // Built before the fork: the child may not allocate between fork and exec.
    let mut filter = no_io_uring_filter();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    let prog_addr = &prog as *const libc::sock_fprog as usize;
    let mut command = Command::new(&bin);
    command
        .args(["127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec, and
    // makes only two `prctl` calls, which are async-signal-safe; `prog`
    // and `filter` live in this frame until after `spawn` returns, and the
    // child's copy of them is what the kernel reads.
    unsafe {
        command.pre_exec(move || {
            // A process without CAP_SYS_ADMIN may install a filter only
            // once it can gain no privileges.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let prog = prog_addr as *const libc::sock_fprog;
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} under seccomp: {e}", bin.display()));
    drop(filter);
    let pid = child.id();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        // Both pipes end when the server exits; stdout holds little, so
        // reading it first cannot block the server on a full stderr.
        let _ = stdout.read_to_end(&mut out);
        let _ = stderr.read_to_end(&mut err);
        let status = child.wait().expect("wait for the server");
        let _ = done_tx.send(());
        Output {
            status,
            stdout: out,
            stderr: err,
        }
    });
    if done_rx.recv_timeout(testkit::TIMEOUT).is_err() {
        // SAFETY: kill(2) on the child we started, not yet reaped (the
        // waiter has not returned), so the pid is still ours.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let output = waiter.join().expect("the waiter");
        panic!(
            "without io_uring the server was still running after {:?}; stderr:\n{}",
            testkit::TIMEOUT,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    waiter.join().expect("the waiter")
}

#[test]
fn without_io_uring_the_server_says_so_and_exits_non_zero() {
    let output = run_without_io_uring();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "exited with {} without io_uring; stderr:\n{stderr}",
        output.status
    );
    assert!(
        !stdout.contains("listening on"),
        "listened without io_uring: {stdout}"
    );
    // The contract, not the wording: an `error:` line that names io_uring
    // and says what of it is missing (more than the two words).
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: io_uring"))
        .unwrap_or_else(|| panic!("no `error: io_uring...` line in stderr:\n{stderr}"));
    assert!(
        error.trim_end().len() > "error: io_uring:".len() + 8,
        "the error does not say what is missing: {error:?}"
    );
}
