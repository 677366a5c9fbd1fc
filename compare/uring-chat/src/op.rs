//! What an operation in flight is for, carried in its `user_data`.
//!
//! Every submission carries 64 bits that come back untouched in its
//! completions: epoll's event data, in effect. Here they say which kind of
//! operation completed and, for a client's, on which descriptor. The
//! server never closes a client's descriptor while one of its operations
//! is in flight, so the number cannot have been reused by a newer client
//! by the time a completion names it.

use std::os::fd::RawFd;

/// An operation the server has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The listener's multishot accept: one completion per connection.
    Accept,
    /// A read of the `signalfd`: SIGINT or SIGTERM.
    Signal,
    /// A client's receive, into a buffer of the provided buffer ring.
    Recv(RawFd),
    /// A client's one `writev` of its queued output.
    Send(RawFd),
    /// The cancellation of a client's operations, before its close; its
    /// own completion says nothing the others do not.
    Cancel(RawFd),
}

/// The low byte says the kind; the high 32 bits, the descriptor.
const ACCEPT: u64 = 1;
const SIGNAL: u64 = 2;
const RECV: u64 = 3;
const SEND: u64 = 4;
const CANCEL: u64 = 5;

impl Op {
    pub fn encode(self) -> u64 {
        let (kind, fd) = match self {
            Op::Accept => (ACCEPT, 0),
            Op::Signal => (SIGNAL, 0),
            Op::Recv(fd) => (RECV, fd),
            Op::Send(fd) => (SEND, fd),
            Op::Cancel(fd) => (CANCEL, fd),
        };
        // A descriptor is never negative: `as u32` keeps it whole.
        (u64::from(fd as u32) << 32) | kind
    }

    /// `None` for a value the server never submitted.
    pub fn decode(user_data: u64) -> Option<Op> {
        let fd = (user_data >> 32) as u32;
        let fd = RawFd::try_from(fd).ok()?;
        let op = match user_data & 0xff {
            ACCEPT => Op::Accept,
            SIGNAL => Op::Signal,
            RECV => Op::Recv(fd),
            SEND => Op::Send(fd),
            CANCEL => Op::Cancel(fd),
            _ => return None,
        };
        // Only what `encode` makes: no stray bits between kind and fd.
        (op.encode() == user_data).then_some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_survives_the_round_trip() {
        let ops = [
            Op::Accept,
            Op::Signal,
            Op::Recv(0),
            Op::Recv(7),
            Op::Send(7),
            Op::Cancel(7),
            Op::Send(RawFd::MAX),
        ];
        for op in ops {
            assert_eq!(Op::decode(op.encode()), Some(op), "{op:?}");
        }
    }

    #[test]
    fn the_same_fd_in_different_ops_gives_different_values() {
        let values = [Op::Recv(5), Op::Send(5), Op::Cancel(5)].map(Op::encode);
        assert_ne!(values[0], values[1]);
        assert_ne!(values[1], values[2]);
        assert_ne!(values[0], values[2]);
    }

    #[test]
    fn values_never_submitted_decode_to_none() {
        assert_eq!(Op::decode(0), None, "no kind");
        assert_eq!(Op::decode(0xff), None, "an unknown kind");
        assert_eq!(Op::decode(RECV | 0x100), None, "stray bits");
        assert_eq!(
            Op::decode((u64::from(u32::MAX) << 32) | RECV),
            None,
            "fd -1"
        );
        assert_eq!(
            Op::decode((7 << 32) | ACCEPT),
            None,
            "the listener has no fd"
        );
    }
}
