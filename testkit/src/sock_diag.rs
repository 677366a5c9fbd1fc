//! One TCP connection's state, looked up by its two addresses with
//! `sock_diag(7)`, the interface `ss` uses. `/proc/net/tcp` would do, but
//! it prints every socket in the network namespace: with the checks' own
//! hundreds of connections and their `TIME_WAIT`s around, one read of it
//! took 0.4 to 0.6 s, most of the second a server lingers for, and a check
//! that waited on it lost its race with the server it was watching.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// `TCP_ESTABLISHED`, the first of the kernel's TCP states.
pub(crate) const TCP_ESTABLISHED: u8 = 1;

/// `SOCK_DIAG_BY_FAMILY`: the request, and the type of a reply that found
/// the socket (one that did not is an `NLMSG_ERROR`).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST` alone, without `NLM_F_DUMP`: one socket, not a list.
const NLM_F_REQUEST: u16 = 1;
/// `struct nlmsghdr`: length, type, flags, sequence number, port ID.
const HEADER: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, extensions, padding,
/// states, then the 48-byte `struct inet_diag_sockid`.
const REQUEST: usize = 56;

/// The state of the TCP socket bound to `local` and connected to `remote`,
/// or `None` when there is none.
pub(crate) fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .expect("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
    let kernel = NetlinkAddr::new(0, 0);
    sendto(
        fd.as_raw_fd(),
        &request(local, remote),
        &kernel,
        MsgFlags::empty(),
    )
    .expect("sendto(NETLINK_SOCK_DIAG)");
    let mut reply = [0u8; 1024];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty()).expect("recv(NETLINK_SOCK_DIAG)");
    state(&reply[..n])
}

/// A request for the one socket with these addresses, in any state.
fn request(local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
    let family = match local.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let mut m = Vec::with_capacity(HEADER + REQUEST);
    m.extend(((HEADER + REQUEST) as u32).to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend(NLM_F_REQUEST.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence number: one request per socket
    m.extend(0u32.to_ne_bytes()); // port ID 0: the kernel fills it in
    m.extend([family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend(u32::MAX.to_ne_bytes()); // every state
    // `struct inet_diag_sockid`: ports and addresses in network order.
    m.extend(local.port().to_be_bytes());
    m.extend(remote.port().to_be_bytes());
    m.extend(address(local.ip()));
    m.extend(address(remote.ip()));
    m.extend(0u32.to_ne_bytes()); // any interface
    m.extend([0xff; 8]); // INET_DIAG_NOCOOKIE: found by addresses alone
    m
}

/// An address as `inet_diag_sockid` holds it: 16 bytes, IPv4 in the first 4.
fn address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(ip) => {
            let mut a = [0; 16];
            a[..4].copy_from_slice(&ip.octets());
            a
        }
        IpAddr::V6(ip) => ip.octets(),
    }
}

/// The state in a reply (`struct inet_diag_msg` begins family, state), or
/// `None` for an error reply: `ENOENT` when there is no such socket.
fn state(reply: &[u8]) -> Option<u8> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    reply.get(HEADER + 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener, TcpStream};

    /// `TCP_FIN_WAIT2`: our FIN acknowledged, the peer's not yet come.
    const TCP_FIN_WAIT2: u8 = 5;
    /// `TCP_CLOSE_WAIT`: the peer's FIN read, ours not yet sent.
    const TCP_CLOSE_WAIT: u8 = 8;

    fn pair(host: &str) -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind((host, 0)).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn state_of(s: &TcpStream) -> Option<u8> {
        tcp_state(s.local_addr().unwrap(), s.peer_addr().unwrap())
    }

    #[test]
    fn each_side_of_a_connection_is_found_in_its_state() {
        for host in ["127.0.0.1", "::1"] {
            let (client, server) = pair(host);
            assert_eq!(state_of(&client), Some(TCP_ESTABLISHED), "{host}");
            assert_eq!(state_of(&server), Some(TCP_ESTABLISHED), "{host}");
            client.shutdown(Shutdown::Write).unwrap();
            let ended = crate::server::holds_within_timeout(|| {
                state_of(&client) == Some(TCP_FIN_WAIT2)
                    && state_of(&server) == Some(TCP_CLOSE_WAIT)
            });
            assert!(
                ended,
                "{host}: {:?} and {:?}",
                state_of(&client),
                state_of(&server)
            );
        }
    }

    #[test]
    fn a_connection_that_is_not_there_has_no_state() {
        let (client, _server) = pair("127.0.0.1");
        let local = client.local_addr().unwrap();
        let mut elsewhere = client.peer_addr().unwrap();
        elsewhere.set_port(elsewhere.port().wrapping_add(1));
        assert_eq!(tcp_state(local, elsewhere), None);
    }
}
