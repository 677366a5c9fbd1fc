//! A test client over loopback whose every read has a timeout, and whose
//! failures say which client, what it waited for and what came.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::TIMEOUT;
use crate::words::{bytes, count, duration, shown};

/// A test client over loopback: every read has a timeout.
///
/// Its failures name it ("the client", or the name a test gives it with
/// [`Client::named`]) and say what it waited for, how long, and what came.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
    name: String,
}

/// What a client waited for and did not get, in words: which client, what
/// it expected, within what time, and what arrived instead.
#[derive(Debug)]
pub struct ReadFailure(String);

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReadFailure {}

/// What a read was waiting for.
enum Wanted<'a> {
    Bytes(usize),
    Echo(&'a [u8]),
    Line,
    Eof,
}

/// How a read that fell short ended.
enum End {
    /// The wait, this long in all, was over before the read was done.
    Quiet(Duration),
    /// The server closed the connection (end-of-file).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Any other error, as the system says it.
    Error(io::Error),
}

/// Whether a reset ends a read to end-of-file, or fails it.
#[derive(Clone, Copy, PartialEq)]
enum Reset {
    Ends,
    Fails,
}

impl End {
    fn of(error: io::Error) -> End {
        match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Quiet(TIMEOUT),
            io::ErrorKind::ConnectionReset => End::Reset,
            _ => End::Error(error),
        }
    }

    /// The same end, for a read that waited `wait` in all.
    fn after(self, wait: Duration) -> End {
        match self {
            End::Quiet(_) => End::Quiet(wait),
            end => end,
        }
    }

    /// What happened, as a clause of its own.
    fn what(&self) -> String {
        match self {
            End::Quiet(wait) => format!("nothing came for {}", duration(*wait)),
            End::Closed => "the server closed the connection".to_string(),
            End::Reset => "the server reset the connection (ECONNRESET)".to_string(),
            End::Error(e) => format!("reading failed: {e}"),
        }
    }

    /// The end of a sentence that starts with what arrived (`got` bytes).
    fn words(&self, got: usize) -> String {
        match self {
            End::Quiet(wait) if got == 0 => format!(" within {}", duration(*wait)),
            End::Quiet(wait) => format!(" in {} of waiting", duration(*wait)),
            _ if got == 0 => format!(": {}", self.what()),
            _ => format!(", then {}", self.what()),
        }
    }
}

/// What a write error means for the client that got it.
fn send_words(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "nothing drained for {}: is the server reading?",
            duration(TIMEOUT)
        ),
        io::ErrorKind::BrokenPipe => "the server closed the connection (EPIPE)".to_string(),
        io::ErrorKind::ConnectionReset => {
            "the server reset the connection (ECONNRESET)".to_string()
        }
        _ => error.to_string(),
    }
}

impl Client {
    /// Connect to `addr` as "the client".
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_named(addr, "the client")
    }

    /// Connect to `addr` as `name` ("client 2 of 300"), which its failures,
    /// the connect's among them, name.
    pub fn connect_named(addr: SocketAddr, name: impl Into<String>) -> Client {
        let name = name.into();
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap_or_else(|e| {
            let why = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                    "no answer within {}: is the accept queue full?",
                    duration(TIMEOUT)
                ),
                _ => e.to_string(),
            };
            panic!("{name} cannot connect to {addr}: {why}")
        });
        Client::from_stream(stream).named(name)
    }

    /// Connect with a small receive buffer (set before `connect`, so the
    /// window is small from the handshake on): the server's writes to this
    /// client hit `EAGAIN` after a few kilobytes.
    pub fn connect_small_window(addr: SocketAddr) -> Client {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket,
            sockopt,
        };
        use std::os::fd::AsRawFd;
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
        connect(fd.as_raw_fd(), &SockaddrStorage::from(addr))
            .unwrap_or_else(|e| panic!("the client cannot connect to {addr}: {e}"));
        Client::from_stream(TcpStream::from(fd))
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client {
            stream,
            reader,
            name: "the client".to_string(),
        }
    }

    /// The same client under a name for its failure messages
    /// (`client 2 of 300`, `the reader`).
    pub fn named(mut self, name: impl Into<String>) -> Client {
        self.name = name.into();
        self
    }

    /// The name its failure messages use.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Write all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!(
                "{} could not send {}: {}",
                self.name,
                self::bytes(bytes.len()),
                send_words(&e)
            );
        }
    }

    /// A read that fell short, in words.
    fn failure(&self, wanted: Wanted, got: &[u8], end: End) -> ReadFailure {
        let name = &self.name;
        let ending = end.words(got.len());
        ReadFailure(match wanted {
            Wanted::Bytes(n) if got.is_empty() => {
                format!("{name} got none of the {} it waited for{ending}", bytes(n))
            }
            Wanted::Bytes(n) => format!(
                "{name} got {} of {} ({}){ending}",
                count(got.len()),
                bytes(n),
                shown(got)
            ),
            Wanted::Echo(sent) if got.is_empty() && sent.len() <= 40 => {
                format!("{name} got no echo of {}{ending}", shown(sent))
            }
            Wanted::Echo(sent) if got.is_empty() => {
                format!("{name} got no echo of its {}{ending}", bytes(sent.len()))
            }
            Wanted::Echo(sent) => format!(
                "{name} got {} of {} back{ending}",
                count(got.len()),
                bytes(sent.len())
            ),
            Wanted::Line if got.is_empty() => format!("{name} got no line{ending}"),
            Wanted::Line => format!("{name} got {} but no end of line{ending}", shown(got)),
            Wanted::Eof => match end {
                End::Quiet(wait) => format!(
                    "{name} waited {} for the server to close the connection, and it is still \
                     open ({} arrived meanwhile)",
                    duration(wait),
                    bytes(got.len())
                ),
                _ => format!(
                    "{name} waited for the server to close the connection, got {}{ending}",
                    bytes(got.len())
                ),
            },
        })
    }

    /// Make the socket's read timeout what is left until `deadline`, so
    /// that a server that trickles bytes cannot stretch a wait past it; a
    /// `TimedOut` error once it has passed.
    fn timeout_until(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))
    }

    /// Put back the read timeout that [`Client::timeout_until`] changed.
    fn restore_timeout(&self) {
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    }

    /// Read exactly `n` bytes within `wait` in all, or return what came
    /// and how the read ended.
    fn read_n(&mut self, n: usize, wait: Duration) -> Result<Vec<u8>, (Vec<u8>, End)> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0; n];
        let mut got = 0;
        let end = loop {
            if got == n {
                break None;
            }
            let read = self
                .timeout_until(deadline)
                .and_then(|()| self.reader.read(&mut buf[got..]));
            match read {
                Ok(0) => break Some(End::Closed),
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(End::of(e).after(wait)),
            }
        };
        self.restore_timeout();
        match end {
            None => Ok(buf),
            Some(end) => Err((buf[..got].to_vec(), end)),
        }
    }

    /// Read exactly `n` bytes, or say what came instead within the timeout.
    pub fn try_recv_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadFailure> {
        self.read_n(n, TIMEOUT)
            .map_err(|(got, end)| self.failure(Wanted::Bytes(n), &got, end))
    }

    /// Read exactly `n` bytes, or fail after the timeout.
    pub fn recv_exact(&mut self, n: usize) -> Vec<u8> {
        self.try_recv_exact(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Read back `sent`, the echo of what this client sent: the failure
    /// says how much came back, or from which byte on it differs.
    pub fn try_recv_echo(&mut self, sent: &[u8]) -> Result<(), ReadFailure> {
        let got = self
            .read_n(sent.len(), TIMEOUT)
            .map_err(|(got, end)| self.failure(Wanted::Echo(sent), &got, end))?;
        match got.iter().zip(sent).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(at) => {
                let upto = (at + 16).min(sent.len());
                Err(ReadFailure(format!(
                    "{} got {} back, but from byte {} on they differ from what it sent: \
                     sent {}, got {}",
                    self.name,
                    bytes(sent.len()),
                    count(at),
                    shown(&sent[at..upto]),
                    shown(&got[at..upto])
                )))
            }
        }
    }

    /// Read back `sent`, or fail saying how much came back.
    pub fn recv_echo(&mut self, sent: &[u8]) {
        self.try_recv_echo(sent).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Read one line (without its `\n`), or say what came instead.
    /// A last line without `\n` before end-of-file counts as a line.
    pub fn try_recv_line(&mut self) -> Result<String, ReadFailure> {
        self.line_within(TIMEOUT)
    }

    /// [`Client::try_recv_line`], waiting `wait` in all.
    fn line_within(&mut self, wait: Duration) -> Result<String, ReadFailure> {
        let deadline = Instant::now() + wait;
        let mut line = Vec::new();
        let end = loop {
            if let Err(e) = self.timeout_until(deadline) {
                break Some(End::of(e).after(wait));
            }
            // A last line without `\n` before end-of-file counts as a line.
            let (used, done) = match self.reader.fill_buf() {
                Ok([]) => break line.is_empty().then_some(End::Closed),
                Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        line.extend_from_slice(&buf[..=at]);
                        (at + 1, true)
                    }
                    None => {
                        line.extend_from_slice(buf);
                        (buf.len(), false)
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, false),
                Err(e) => break Some(End::of(e).after(wait)),
            };
            self.reader.consume(used);
            if done {
                break None;
            }
        };
        self.restore_timeout();
        if let Some(end) = end {
            return Err(self.failure(Wanted::Line, &line, end));
        }
        match String::from_utf8(line) {
            Ok(text) => Ok(text.trim_end_matches('\n').to_string()),
            Err(e) => Err(ReadFailure(format!(
                "{} got a line that is not UTF-8: {}",
                self.name,
                shown(e.as_bytes())
            ))),
        }
    }

    /// Read one line (without its `\n`), or fail after the timeout.
    pub fn recv_line(&mut self) -> String {
        self.try_recv_line().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Read lines until one satisfies `pred`; returns it.
    pub fn recv_line_until(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut skipped: Vec<String> = Vec::new();
        let seen = |skipped: &[String]| match skipped {
            [] => "no other line before".to_string(),
            _ => {
                let last = &skipped[skipped.len().saturating_sub(5)..];
                format!("{} other lines before, the last: {last:?}", skipped.len())
            }
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "{} got no line it was waiting for within {} ({})",
                self.name,
                duration(TIMEOUT),
                seen(&skipped)
            );
            // Each line gets only what is left of the whole wait, so a
            // server that trickles lines cannot stretch it.
            match self.line_within(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if pred(&line) => return line,
                Ok(line) => skipped.push(line),
                Err(e) => panic!("{e} ({})", seen(&skipped)),
            }
        }
    }

    /// Check that nothing arrives for `wait`, or say what did.
    pub fn try_expect_silence(&mut self, wait: Duration) -> Result<(), ReadFailure> {
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let got = self.reader.read(&mut byte);
        self.reader
            .get_ref()
            .set_read_timeout(Some(TIMEOUT))
            .unwrap();
        let what = match got {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(());
            }
            Ok(0) => "the server closed the connection".to_string(),
            Ok(_) => format!("{} arrived", shown(&byte)),
            Err(e) => End::of(e).what(),
        };
        Err(ReadFailure(format!(
            "{} expected nothing for {}, but {what}",
            self.name,
            duration(wait)
        )))
    }

    /// Assert that nothing arrives for `wait`: the server must stay silent.
    pub fn expect_silence(&mut self, wait: Duration) {
        self.try_expect_silence(wait)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Read until the server closes the connection (end-of-file, or a
    /// reset: a server that closes with unread input sends one); returns
    /// what came first, or says what came and that the connection is open.
    pub fn try_recv_to_eof(&mut self) -> Result<Vec<u8>, ReadFailure> {
        self.eof_within(TIMEOUT, Reset::Ends)
    }

    /// Read until the server's FIN, its end-of-file, and fail on a reset:
    /// for a check that the server closed gracefully, since a reset throws
    /// away whatever the server's kernel had not yet sent, and what the
    /// client's own kernel happened to hold first proves nothing.
    pub fn recv_to_fin(&mut self) -> Vec<u8> {
        self.eof_within(TIMEOUT, Reset::Fails)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Client::try_recv_to_eof`], waiting `wait` in all.
    fn eof_within(&mut self, wait: Duration, reset: Reset) -> Result<Vec<u8>, ReadFailure> {
        let deadline = Instant::now() + wait;
        let mut rest = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            let read = self
                .timeout_until(deadline)
                .and_then(|()| self.reader.read(&mut buf));
            match read {
                Ok(0) => break None,
                Ok(k) => rest.extend_from_slice(&buf[..k]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset && reset == Reset::Ends => {
                    break None;
                }
                Err(e) => break Some(End::of(e).after(wait)),
            }
        };
        self.restore_timeout();
        match end {
            None => Ok(rest),
            Some(end) => Err(self.failure(Wanted::Eof, &rest, end)),
        }
    }

    /// Read until the server closes the connection; returns what came first.
    pub fn recv_to_eof(&mut self) -> Vec<u8> {
        self.try_recv_to_eof().unwrap_or_else(|e| panic!("{e}"))
    }

    /// TCP segments with data that this connection has received
    /// (`tcpi_data_segs_in` of `TCP_INFO`): one per `write` of the peer's,
    /// at least, when the peer sends with `TCP_NODELAY`.
    pub fn segments_received(&self) -> u32 {
        self.tcp_info().tcpi_data_segs_in
    }

    /// The window the peer's kernel last offered: how much more it takes
    /// before it waits for the peer to read (`tcpi_snd_wnd`).
    pub fn send_window(&self) -> usize {
        self.tcp_info().tcpi_snd_wnd as usize
    }

    /// Whether every byte written so far is in the peer's kernel: sent and
    /// acknowledged, nothing left in our socket.
    pub fn all_delivered(&self) -> bool {
        let info = self.tcp_info();
        info.tcpi_unacked == 0 && info.tcpi_notsent_bytes == 0
    }

    /// `getsockopt(TCP_INFO)` on this connection.
    fn tcp_info(&self) -> libc::tcp_info {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero tcp_info is valid (integers only).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which
        // is that large; a kernel older than the struct writes fewer.
        let rc = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info
    }

    /// Close our sending side (`shutdown(SHUT_WR)`): the server reads EOF.
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).unwrap();
    }

    /// Close with a reset instead of a FIN: `SO_LINGER` with a zero timeout.
    pub fn reset(self) {
        set_linger_zero(&self.stream);
    }
}

/// Make `close` send a reset (RST) instead of a FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream, sockopt::Linger, &linger).expect("SO_LINGER");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A client named `name` on a loopback connection, and the server's side.
    fn pair(name: &str) -> (Client, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = Client::connect(listener.local_addr().unwrap()).named(name);
        let (server_side, _) = listener.accept().unwrap();
        (client, server_side)
    }

    #[test]
    fn a_short_read_says_which_client_what_it_expected_and_what_came() {
        let (client, _server) = pair("client 2 of 300");
        let cases = [
            (
                client.failure(Wanted::Echo(b"ping\n"), b"", End::Quiet(TIMEOUT)),
                "client 2 of 300 got no echo of \"ping\\n\" within 10 s",
            ),
            (
                client.failure(
                    Wanted::Echo(&[0; 1 << 20]),
                    &[0; 524_288],
                    End::Quiet(TIMEOUT),
                ),
                "client 2 of 300 got 524,288 of 1,048,576 bytes back in 10 s of waiting",
            ),
            (
                client.failure(Wanted::Bytes(5), b"pin", End::Closed),
                "client 2 of 300 got 3 of 5 bytes (\"pin\"), then the server closed the connection",
            ),
            (
                client.failure(Wanted::Line, b"", End::Reset),
                "client 2 of 300 got no line: the server reset the connection (ECONNRESET)",
            ),
            (
                client.failure(Wanted::Line, b"* wel", End::Quiet(TIMEOUT)),
                "client 2 of 300 got \"* wel\" but no end of line in 10 s of waiting",
            ),
            (
                client.failure(Wanted::Eof, b"ab", End::Quiet(TIMEOUT)),
                "client 2 of 300 waited 10 s for the server to close the connection, and it is \
                 still open (2 bytes arrived meanwhile)",
            ),
        ];
        for (failure, words) in cases {
            assert_eq!(failure.to_string(), words);
            assert!(!words.contains("os error"));
        }
    }

    #[test]
    fn an_echo_that_differs_says_from_where() {
        let (mut client, mut server) = pair("the client");
        server.write_all(b"hellO world").unwrap();
        let failure = client.try_recv_echo(b"hello world").unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the client got 11 bytes back, but from byte 4 on they differ from what it sent: \
             sent \"o world\", got \"O world\""
        );
    }

    #[test]
    fn a_closed_connection_ends_a_read_at_once() {
        let (mut client, server) = pair("the reader");
        drop(server);
        let failure = client.try_recv_exact(5).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "the reader got none of the 5 bytes it waited for: the server closed the connection"
        );
        assert!(client.try_recv_to_eof().unwrap().is_empty());
    }

    /// Write one byte every 50 ms until the client's side is gone, or for
    /// [`TIMEOUT`] at most: a server that never stops for a whole timeout.
    fn trickle(mut server: TcpStream) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let until = Instant::now() + TIMEOUT;
            while Instant::now() < until && server.write_all(b"x").is_ok() {
                // The trickle's pace is what is tested, not a wait for anything.
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    }

    #[test]
    fn a_trickle_of_bytes_does_not_stretch_the_wait_for_a_line() {
        let (mut client, server) = pair("the client");
        let trickler = trickle(server);
        let start = Instant::now();
        let failure = client
            .line_within(Duration::from_millis(300))
            .expect_err("the trickle never ends a line, yet the read returned one");
        let waited = start.elapsed();
        drop(client);
        trickler.join().unwrap();
        assert!(waited < TIMEOUT / 2, "gave up only after {waited:?}");
        let words = failure.to_string();
        assert!(
            words.starts_with("the client got \"x")
                && words.ends_with("x\" but no end of line in 300 ms of waiting"),
            "{words}"
        );
    }

    #[test]
    fn a_trickle_of_bytes_does_not_stretch_the_wait_for_the_end() {
        let (mut client, server) = pair("the client");
        let trickler = trickle(server);
        let start = Instant::now();
        let failure = client
            .eof_within(Duration::from_millis(300), Reset::Ends)
            .expect_err("the trickle never closes, yet the read saw the end");
        let waited = start.elapsed();
        drop(client);
        trickler.join().unwrap();
        assert!(waited < TIMEOUT / 2, "gave up only after {waited:?}");
        let words = failure.to_string();
        assert!(
            words.starts_with(
                "the client waited 300 ms for the server to close the connection, and it is \
                 still open ("
            ),
            "{words}"
        );
    }

    #[test]
    fn silence_that_breaks_says_what_came() {
        let (mut client, mut server) = pair("B");
        server.write_all(b"h").unwrap();
        let failure = client
            .try_expect_silence(Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(
            failure.to_string(),
            "B expected nothing for 300 ms, but \"h\" arrived"
        );
    }
}
