//! Receiving: one single-shot receive in flight per client, its bytes in
//! a buffer of the shared buffer ring, handed back as soon as they are
//! copied out, then the receive submitted again.

use std::os::fd::RawFd;

use io_uring::opcode;
use io_uring::squeue;
use io_uring::types::Fd;
use nix::errno::Errno;

use stage5_chat::clients::Why;

use crate::op::Op;
use crate::ring::{self, BUF_GROUP, Completion};

use super::Server;

impl Server {
    /// Start the client's one receive, its buffer picked by the kernel.
    pub(super) fn arm_recv(&mut self, fd: RawFd) {
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        client.receiving = true;
        // One receive at a time, re-armed at each completion, rather than
        // a multishot one: on this workbook's kernel (6.18) a multishot
        // receive submitted again after `ENOBUFS` was seen to miss the
        // client's later reset, under load, and the client was never closed.
        let entry = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), ring::BUF_SIZE as u32)
            .buf_group(BUF_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(Op::Recv(fd).encode());
        // SAFETY: the buffers come from the buffer ring, which lives as
        // long as the ring; the descriptor stays open while `receiving`.
        unsafe { self.push(entry) };
    }

    /// Bytes (or the end) from a client's receive.
    pub(super) fn received(&mut self, fd: RawFd, completion: Completion) {
        let mut input = std::mem::take(&mut self.scratch);
        input.clear();
        if let Some(bid) = ring::buffer_id(completion.flags) {
            let len = usize::try_from(completion.result).unwrap_or(0);
            input.extend_from_slice(self.ring.buffer(bid, len));
            // Back in the pool at once: the bytes are ours now.
            self.ring.recycle(bid);
        }
        self.serve(fd, completion, &input);
        self.scratch = input;
    }

    fn serve(&mut self, fd: RawFd, completion: Completion, input: &[u8]) {
        let more = ring::more(completion.flags);
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        if !more {
            client.receiving = false;
        }
        if client.is_closed() {
            return self.release_if_idle(fd);
        }
        match completion.result {
            0 => {
                client.eof = true;
                self.end_of_file(fd);
            }
            n if n > 0 => {
                self.handle_input(fd, input);
                if !more {
                    self.rearm_recv(fd);
                }
            }
            err => match Errno::from_raw(-err) {
                // The pool ran dry for a moment; buffers are back by now.
                Errno::ENOBUFS | Errno::EINTR | Errno::EAGAIN => self.rearm_recv(fd),
                err => self.end(fd, Why::Error(err)),
            },
        }
    }

    /// Receive again, if the client is still there to receive from.
    fn rearm_recv(&mut self, fd: RawFd) {
        if let Some(client) = self.clients.get(fd)
            && !client.is_closed()
            && !client.receiving
            && !client.eof
        {
            self.arm_recv(fd);
        }
    }
}
