//! The ring: one io_uring instance, checked for what the chat needs, and
//! the provided buffer ring that every client's receive takes its buffers
//! from.
//!
//! With epoll the server owns one read buffer and asks which socket to
//! read; here the kernel reads on its own, whenever data arrives, so it
//! needs buffers before anyone knows which client will send. A provided
//! buffer ring is a pool shared by all receives: each completion names the
//! buffer it filled, and the server hands the buffer back once the bytes
//! are framed.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use io_uring::types::{BufRingEntry, SubmitArgs, Timespec};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};

pub use crate::buffers::{BUF_SIZE, BUFFERS};

/// Submission queue entries: a round submits at most a few per client.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries: room for many rounds' worth, so that the
/// kernel rarely has to hold completions back (it does, without loss,
/// when this fills: `IORING_FEAT_NODROP`).
const CQ_ENTRIES: u32 = 16 * 1024;
/// The buffer group every receive takes its buffers from.
pub const BUF_GROUP: u16 = 0;

/// One completion, copied out of the queue so that handling it may submit.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

pub struct Ring {
    // Declared first, so dropped first: the kernel stops using the buffers
    // below before they are freed.
    uring: IoUring,
    buffers: BufRing,
}

impl Ring {
    /// Set up the ring, or say which part of io_uring this kernel lacks.
    pub fn new() -> Result<Ring> {
        let uring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .map_err(setup_error)?;
        check_features(&uring)?;
        let buffers = BufRing::new()?;
        // SAFETY: the ring of entries is page-aligned, `BUFFERS` long, and
        // lives in `buffers` until after `uring` is dropped (field order).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                BUFFERS,
                BUF_GROUP,
                0,
            )
        }
        .context("io_uring: provided buffer rings (IORING_REGISTER_PBUF_RING, Linux 5.19) are not supported")?;
        Ok(Ring { uring, buffers })
    }

    /// Queue `entry`; a full submission queue is submitted first.
    ///
    /// # Safety
    ///
    /// Whatever `entry` points to (buffers, `iovec`s) must stay valid and
    /// unchanged until its last completion is reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: the caller keeps what the entry points to alive.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.uring
                .submit()
                .context("io_uring_enter (submit) failed")?;
        }
    }

    /// Submit what is queued and wait for a completion, at most `timeout`
    /// (`None`: for ever). Completions already waiting return at once.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> Result<()> {
        let want = if self.uring.completion().is_empty() {
            1
        } else {
            0
        };
        let result = match timeout {
            None => self.uring.submit_and_wait(want),
            Some(timeout) => {
                let ts = Timespec::from(timeout);
                let args = SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(want, &args)
            }
        };
        match result {
            Ok(_) => Ok(()),
            // The timeout passed, a signal interrupted the wait, or the
            // kernel is short of room for completions: go round again.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err).context("io_uring_enter failed"),
        }
    }

    /// Move at most `max` completions into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>, max: usize) {
        out.extend(self.uring.completion().take(max).map(|cqe| Completion {
            user_data: cqe.user_data(),
            result: cqe.result(),
            flags: cqe.flags(),
        }));
    }

    /// The bytes a receive completion put in buffer `bid`.
    pub fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        self.buffers.get(bid, len)
    }

    /// Give buffer `bid` back to the kernel for the next receive.
    pub fn recycle(&mut self, bid: u16) {
        self.buffers.recycle(bid);
    }
}

/// Why `io_uring_setup(2)` failed, in the terms of what is missing.
fn setup_error(err: io::Error) -> anyhow::Error {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&n| n > 0);
    let what = match (err.raw_os_error(), disabled) {
        (Some(libc::ENOSYS), _) => "this kernel has no io_uring (io_uring_setup: ENOSYS)".into(),
        (Some(libc::EPERM), Some(2)) => {
            "disabled on this machine (/proc/sys/kernel/io_uring_disabled is 2)".into()
        }
        (Some(libc::EPERM), Some(_)) => "not allowed for this user \
            (/proc/sys/kernel/io_uring_disabled is 1: only members of kernel.io_uring_group)"
            .into(),
        (Some(libc::EPERM), None) => {
            "not allowed here (io_uring_setup: EPERM; a seccomp filter or a container may block it)"
                .into()
        }
        _ => format!("io_uring_setup failed: {err}"),
    };
    anyhow::anyhow!("io_uring: {what}")
}

/// What the probe and the setup parameters must show. The probe lists
/// opcodes, but multishot accept is a flag on the ordinary accept opcode,
/// so an opcode added in the same release stands witness for it: `SOCKET`
/// came with multishot accept (5.19), as did provided buffer rings.
fn check_features(uring: &IoUring) -> Result<()> {
    if !uring.params().is_feature_ext_arg() {
        bail!("io_uring: waits with a timeout (IORING_FEAT_EXT_ARG, Linux 5.11) are not supported");
    }
    let mut probe = Probe::new();
    uring.submitter().register_probe(&mut probe).context(
        "io_uring: the opcode probe (IORING_REGISTER_PROBE, Linux 5.6) is not supported",
    )?;
    let needed = [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::RecvMulti::CODE, "recv"),
        (opcode::Writev::CODE, "writev"),
        (opcode::Read::CODE, "read"),
        (opcode::AsyncCancel2::CODE, "async cancel"),
        (opcode::Socket::CODE, "multishot accept (Linux 5.19)"),
    ];
    for (code, what) in needed {
        if !probe.is_supported(code) {
            bail!("io_uring: {what} is not supported by this kernel");
        }
    }
    Ok(())
}

/// The provided buffers: a ring of `BUFFERS` entries the kernel takes
/// buffers from, and the memory they point into.
struct BufRing {
    entries: NonNull<BufRingEntry>,
    /// `BUFFERS * BUF_SIZE` bytes; the kernel writes into them between a
    /// buffer's hand-over and its completion, so they are reached only
    /// through this pointer, never through a Rust reference to the whole.
    memory: NonNull<u8>,
    /// The next entry to fill; the kernel sees it once it is published.
    tail: u16,
}

impl BufRing {
    fn entries_layout() -> Layout {
        // The kernel maps the ring by pages: it must start on one.
        Layout::from_size_align(usize::from(BUFFERS) * size_of::<BufRingEntry>(), 4096)
            .expect("a valid layout")
    }

    fn memory_layout() -> Layout {
        Layout::from_size_align(usize::from(BUFFERS) * BUF_SIZE, 64).expect("a valid layout")
    }

    fn new() -> Result<BufRing> {
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                alloc_zeroed(Self::entries_layout()),
                alloc_zeroed(Self::memory_layout()),
            )
        };
        let (Some(entries), Some(memory)) = (NonNull::new(entries), NonNull::new(memory)) else {
            bail!("cannot allocate the receive buffers");
        };
        let mut ring = BufRing {
            entries: entries.cast(),
            memory,
            tail: 0,
        };
        for bid in 0..BUFFERS {
            ring.add(bid);
        }
        ring.publish();
        Ok(ring)
    }

    fn get(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < BUFFERS && len <= BUF_SIZE,
            "buffer {bid}, {len} bytes"
        );
        // SAFETY: in bounds (checked above); the kernel filled this buffer
        // and does not touch it again until it is recycled, which needs
        // `&mut self`, so not while this slice lives.
        unsafe {
            std::slice::from_raw_parts(self.memory.as_ptr().add(usize::from(bid) * BUF_SIZE), len)
        }
    }

    fn recycle(&mut self, bid: u16) {
        self.add(bid);
        self.publish();
    }

    /// Fill the entry at the tail with buffer `bid` (not yet visible).
    fn add(&mut self, bid: u16) {
        let index = usize::from(self.tail % BUFFERS);
        // SAFETY: `index < BUFFERS`, inside the allocation; the kernel only
        // reads entries between its head and the published tail, and this
        // one is past the tail. (Entry 0 also holds the tail, which these
        // setters leave alone.)
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(index);
            let addr = self.memory.as_ptr().add(usize::from(bid) * BUF_SIZE);
            entry.set_addr(addr as u64);
            entry.set_len(BUF_SIZE as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Let the kernel see every entry added so far.
    fn publish(&self) {
        // SAFETY: the tail is the `resv` field of entry 0, inside the
        // allocation and aligned for a u16; the kernel only reads it, so a
        // release store is the one write it races with nothing.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts, freed once; the
        // ring that used them is dropped before (see `Ring`).
        unsafe {
            dealloc(self.entries.as_ptr().cast(), Self::entries_layout());
            dealloc(self.memory.as_ptr(), Self::memory_layout());
        }
    }
}

/// The buffer a receive completion filled, if it filled one.
pub fn buffer_id(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}

/// Whether a multishot operation goes on after this completion (never,
/// for a single-shot one).
pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}
