//! Baseline: the stage 5 chat written with tokio.
//!
//! Design: one task per connection, and a shared registry of clients behind a
//! `std::sync::Mutex` (never held across an `.await`). Each client has an
//! unbounded `mpsc` channel; a broadcast formats its line once into an
//! `Arc<[u8]>` and pushes a clone of the pointer into every receiver's
//! channel, while the receiver's own task drains its channel into its socket,
//! several queued lines per `write`. A `tokio::sync::broadcast` channel would
//! be shorter, but it counts messages, not bytes, and a lagging receiver
//! silently loses lines; the chat's protocol says "no line lost, and a client
//! whose queue passes `--max-queue` bytes is dropped", which a per-client
//! byte count in the registry expresses directly.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};

use stage5_chat::sanitize::sanitize;

/// `eprintln!`, except that a line which cannot be written is lost instead
/// of ending the program: `eprintln!` panics when the write fails, and
/// stderr piped into a program that has quit fails every write with `EPIPE`.
macro_rules! log {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

const USAGE: &str = "\
usage: tokio-chat [-q] [--max-clients N] [--max-queue BYTES] [--max-line BYTES]
                  [--announce-limit N] [ADDR]

The stage 5 chat protocol written with tokio (a baseline for the benchmark).

  ADDR                  HOST:PORT to listen on (default 127.0.0.1:8080; port 0 picks a free port)
  --max-clients N       clients online at once; the next one is told the server is full (default 100000)
  --max-queue BYTES     output queued for one client before it is dropped as too slow (default 1048576)
  --max-line BYTES      longest line a client may send (default 4096)
  --announce-limit N    send join/leave notices only while at most N clients are online (default 1000)
  -q                    do not log connections to stderr
  -h, --help            print this help";

/// How long shutdown waits for the goodbye notices to reach the clients.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// How long a connection closed after an error waits for the client to close.
const LINGER: Duration = Duration::from_secs(1);

/// At most this many queued bytes go into one `write`.
const BATCH: usize = 64 * 1024;

struct Args {
    addr: SocketAddr,
    quiet: bool,
    max_clients: usize,
    max_queue: usize,
    max_line: usize,
    announce_limit: usize,
}

fn main() -> ExitCode {
    let args = parse_args();
    // The default multi-threaded runtime: one worker thread per core.
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            log!("error: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(Arc::new(args)));
    // Tasks of clients that did not take their goodbye in time are dropped
    // here instead of being waited for.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `BIN [-q] [FLAGS] [ADDR]`; exits 0 after `--help` and 2 after a bad argument.
fn parse_args() -> Args {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        quiet: false,
        max_clients: 100_000,
        max_queue: 1 << 20,
        max_line: 4096,
        announce_limit: 1000,
    };
    let mut addr_given = false;
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let mut number = |flag: &str| -> usize {
            match argv.next().map(|v| v.parse::<usize>()) {
                Some(Ok(n)) if n > 0 => n,
                _ => usage_error(&format!("{flag} needs a positive number")),
            }
        };
        match arg.as_str() {
            "-h" | "--help" => {
                let _ = writeln!(io::stdout(), "{USAGE}");
                std::process::exit(0);
            }
            "-q" => args.quiet = true,
            "--max-clients" => args.max_clients = number(&arg),
            "--max-queue" => args.max_queue = number(&arg),
            "--max-line" => args.max_line = number(&arg),
            "--announce-limit" => args.announce_limit = number(&arg),
            // A host name is resolved once, here, to its first address.
            _ if !addr_given && !arg.starts_with('-') => match arg.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(addr) => (args.addr, addr_given) = (addr, true),
                    None => usage_error(&format!("{arg:?} has no address")),
                },
                Err(_) => usage_error(&format!("cannot resolve {arg:?} (expected HOST:PORT)")),
            },
            _ => usage_error(&format!("unexpected argument {arg:?}")),
        }
    }
    args
}

fn usage_error(msg: &str) -> ! {
    log!("error: {msg}\n\n{USAGE}");
    std::process::exit(2);
}

/// A listener with the `SOMAXCONN` backlog (`TcpListener::bind` asks for
/// only 1024), so a burst of connects waits in the kernel.
fn listen_on(addr: SocketAddr) -> Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .context("cannot create a socket")?;
    // Lets a restarted server bind while old connections sit in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .context("cannot set SO_REUSEADDR")?;
    socket
        .bind(addr)
        .with_context(|| format!("cannot bind {addr}"))?;
    socket
        .listen(libc::SOMAXCONN as u32)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, as stage 5 does, so
/// both servers can hold as many connections as the machine allows.
fn raise_fd_limit() -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit")?;
    Ok(())
}

async fn run(args: Arc<Args>) -> Result<()> {
    raise_fd_limit()?;
    let listener = listen_on(args.addr)?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    // Scripts and tests wait for this line, so it goes out at once.
    writeln!(io::stdout(), "listening on {}", listener.local_addr()?)
        .context("cannot write to stdout")?;
    io::stdout().flush()?;

    let chat = Arc::new(Mutex::new(Registry::new(&args)));
    // Every connection task holds a clone; when all are gone, `recv` ends.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (chat, args, alive) = (Arc::clone(&chat), Arc::clone(&args), alive.clone());
                    tokio::spawn(async move {
                        connection(stream, peer, chat, &args).await;
                        drop(alive);
                    });
                }
                Err(err) if is_out_of_fds(&err) => {
                    // Nothing can be accepted until a client leaves;
                    // retrying at once would spin, so wait a little.
                    if !args.quiet {
                        log!("accept: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // The client gave up before we got to it (ECONNABORTED, ...).
                Err(_) => {}
            },
        }
    }

    // Tell everyone, then close every channel: each task writes what it
    // still has queued and closes its connection.
    chat.lock().unwrap().shut_down();
    drop(alive);
    let _ = tokio::time::timeout(SHUTDOWN_FLUSH, all_done.recv()).await;
    Ok(())
}

/// `EMFILE`/`ENFILE`: this process, or the whole system, is out of descriptors.
fn is_out_of_fds(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A line formatted once and shared by every receiver's queue.
type Line = Arc<[u8]>;

/// One online client, as the other tasks see it.
struct Peer {
    name: String,
    queue: mpsc::UnboundedSender<Line>,
    /// Bytes sent into `queue` and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    /// Woken when the client is dropped as too slow.
    kicked: Arc<Notify>,
}

/// Who is online; every task locks it briefly to send or look up.
struct Registry {
    peers: HashMap<u64, Peer>,
    /// The id of each name, so `/nick` checks "taken" without a scan.
    names: HashMap<String, u64>,
    next_id: u64,
    max_queue: usize,
    announce_limit: usize,
}

/// What a connection task keeps for itself once registered.
struct Me {
    id: u64,
    queue: mpsc::UnboundedReceiver<Line>,
    queued: Arc<AtomicUsize>,
    kicked: Arc<Notify>,
}

impl Registry {
    fn new(args: &Args) -> Registry {
        Registry {
            peers: HashMap::new(),
            names: HashMap::new(),
            next_id: 1,
            max_queue: args.max_queue,
            announce_limit: args.announce_limit,
        }
    }

    /// Add a client as `client<N>` and tell the others; returns its welcome.
    fn join(&mut self) -> (Me, Line) {
        // A client may have taken a `clientN` name with /nick: skip it.
        let (id, name) = loop {
            let id = self.next_id;
            self.next_id += 1;
            let name = format!("client{id}");
            if !self.names.contains_key(&name) {
                break (id, name);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Me {
            id,
            queue: rx,
            queued: Arc::default(),
            kicked: Arc::default(),
        };
        self.names.insert(name.clone(), id);
        self.peers.insert(
            id,
            Peer {
                name: name.clone(),
                queue: tx,
                queued: Arc::clone(&me.queued),
                kicked: Arc::clone(&me.kicked),
            },
        );
        let online = self.peers.len();
        if online <= self.announce_limit {
            self.broadcast(&format!("* {name} joined"), Some(id));
        }
        (me, line(format!("* welcome {name} ({online} online)")))
    }

    /// Remove a client and, unless too many are online, tell the others.
    fn leave(&mut self, id: u64, why: &str) {
        if let Some(peer) = self.peers.remove(&id) {
            self.names.remove(&peer.name);
            if self.peers.len() < self.announce_limit {
                self.broadcast(&format!("* {} left{why}", peer.name), None);
            }
        }
    }

    /// Queue `text` for every client but `except`. Clients whose queue
    /// passes the limit are dropped (and announced) afterwards.
    fn broadcast(&mut self, text: &str, except: Option<u64>) {
        self.broadcast_line(line(text), except);
    }

    fn broadcast_line(&mut self, msg: Line, except: Option<u64>) {
        let mut too_slow = Vec::new();
        for (&id, peer) in &self.peers {
            if Some(id) == except {
                continue;
            }
            let queued = peer.queued.fetch_add(msg.len(), Ordering::Relaxed) + msg.len();
            if queued > self.max_queue {
                too_slow.push(id);
            } else {
                // Fails only if the task has just ended; it is leaving anyway.
                let _ = peer.queue.send(Arc::clone(&msg));
            }
        }
        for id in too_slow {
            if let Some(peer) = self.peers.get(&id) {
                peer.kicked.notify_one();
            }
            self.leave(id, " (too slow)");
        }
    }

    /// The client's name, or `None` once it has been dropped (a client
    /// dropped as too slow may still be reading its last input).
    fn name(&self, id: u64) -> Option<&str> {
        self.peers.get(&id).map(|peer| peer.name.as_str())
    }

    /// `/nick NEW`: rename and tell everyone, or say why not.
    fn rename(&mut self, id: u64, new: &str) -> Option<Line> {
        let valid = (1..=32).contains(&new.len())
            && new
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Some(line(
                "* error: a name is 1-32 of the characters A-Z a-z 0-9 _ -",
            ));
        }
        if self.names.contains_key(new) {
            return Some(line(format!("* error: the name {new} is taken")));
        }
        let peer = self.peers.get_mut(&id)?;
        let old = std::mem::replace(&mut peer.name, new.to_string());
        self.names.remove(&old);
        self.names.insert(new.to_string(), id);
        self.broadcast(&format!("* {old} is now {new}"), None);
        None
    }

    /// `/who`: everyone online, in the order they joined.
    fn who(&self) -> Line {
        let mut ids: Vec<&u64> = self.peers.keys().collect();
        ids.sort();
        let names: Vec<&str> = ids.iter().map(|id| self.peers[id].name.as_str()).collect();
        line(format!("* online: {}", names.join(", ")))
    }

    /// SIGINT/SIGTERM: the last notice, then every channel closes.
    fn shut_down(&mut self) {
        self.broadcast("* server shutting down", None);
        self.peers.clear();
        self.names.clear();
    }
}

/// `text` plus its newline, ready to queue.
fn line(text: impl AsRef<[u8]>) -> Line {
    let text = text.as_ref();
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text);
    bytes.push(b'\n');
    bytes.into()
}

/// Why a connection ended: what its `closed fd N (...)` line says.
enum Closed {
    /// The client closed its sending side.
    EndOfFile,
    /// The client sent `/quit`.
    Quit,
    /// The client sent a line over `--max-line`.
    LineTooLong,
    /// Its queue passed `--max-queue`: dropped as too slow.
    TooSlow,
    /// `--max-clients` were online already.
    ServerFull,
    /// SIGINT or SIGTERM.
    ShuttingDown,
    /// A read or write failed (`ECONNRESET`, `EPIPE`, ...).
    Failed(io::Error),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Closed::EndOfFile => "end of file",
            Closed::Quit => "quit",
            Closed::LineTooLong => "line too long",
            Closed::TooSlow => "too slow",
            Closed::ServerFull => "server full",
            Closed::ShuttingDown => "shutting down",
            // The errno as the man pages name it (`ECONNRESET`), when it has one.
            Closed::Failed(err) => match err.raw_os_error() {
                Some(code) => return write!(f, "{:?}", nix::errno::Errno::from_raw(code)),
                None => return write!(f, "{err}"),
            },
        })
    }
}

/// One client from accept to close.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    chat: Arc<Mutex<Registry>>,
    args: &Args,
) {
    let fd = stream.as_raw_fd();
    if !args.quiet {
        log!("accepted fd {fd} from {peer}");
    }
    // Chat lines are small: send each batch at once instead of waiting to
    // coalesce it with the next one (Nagle's algorithm).
    let _ = stream.set_nodelay(true);
    let why = session(&mut stream, &chat, args)
        .await
        .unwrap_or_else(Closed::Failed);
    // Logged before the close, so a new connection that reuses the fd
    // number is always logged after this one's end.
    if !args.quiet {
        log!("closed fd {fd} ({why})");
    }
    drop(stream); // close(2)
}

/// Register the client, serve it, and unregister it.
async fn session(
    stream: &mut TcpStream,
    chat: &Mutex<Registry>,
    args: &Args,
) -> io::Result<Closed> {
    // Borrowed halves: both stay in this one task.
    let (reader, mut writer) = stream.split();
    let joined = {
        let mut chat = chat.lock().unwrap();
        (chat.peers.len() < args.max_clients).then(|| chat.join())
    };
    let Some((mut me, welcome)) = joined else {
        writer.write_all(b"* error: server full\n").await?;
        return Ok(Closed::ServerFull);
    };
    let kicked = Arc::clone(&me.kicked);
    let result = tokio::select! {
        // Dropped as too slow: the registry has already announced it, and
        // the pending write (if any) is abandoned with the connection.
        _ = kicked.notified() => Ok(Closed::TooSlow),
        result = serve(reader, &mut writer, &mut me, welcome, chat, args) => result,
    };
    // A no-op if the client was dropped or the server is shutting down.
    chat.lock().unwrap().leave(me.id, "");
    result
}

/// What to do after a line from the client.
enum Next {
    Continue,
    Close(Closed),
}

/// The client's loop: lines from the socket and lines from the others,
/// whichever comes first.
async fn serve(
    reader: ReadHalf<'_>,
    writer: &mut WriteHalf<'_>,
    me: &mut Me,
    welcome: Line,
    chat: &Mutex<Registry>,
    args: &Args,
) -> io::Result<Closed> {
    writer.write_all(&welcome).await?;
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            // Cancel-safe: a partly read line stays in `buf` for next time.
            read = read_line(&mut reader, &mut buf, args.max_line) => {
                match read? {
                    Framed::Line => {}
                    Framed::Eof => return Ok(Closed::EndOfFile),
                    Framed::TooLong => {
                        let msg = format!("* error: line too long (max {} bytes)\n", args.max_line);
                        writer.write_all(msg.as_bytes()).await?;
                        linger(reader, writer).await?;
                        return Ok(Closed::LineTooLong);
                    }
                }
                let next = handle_line(&buf, me.id, chat, writer).await?;
                buf.clear();
                if let Next::Close(why) = next {
                    return Ok(why);
                }
            }
            queued = me.queue.recv() => {
                // `None`: the server is shutting down and everything queued
                // has been written.
                let Some(first) = queued else { return Ok(Closed::ShuttingDown) };
                // Whatever else is already queued goes out in the same write;
                // the batch is freed after it, so an idle client holds no
                // output buffer.
                let mut batch = Vec::new();
                while batch.len() < BATCH && let Ok(more) = me.queue.try_recv() {
                    if batch.is_empty() {
                        batch.extend_from_slice(&first);
                    }
                    batch.extend_from_slice(&more);
                }
                let bytes: &[u8] = if batch.is_empty() { &first } else { &batch };
                writer.write_all(bytes).await?;
                me.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
            }
        }
    }
}

/// Close politely after an error: closing with unread input would send a
/// reset, which can destroy the error line before the client reads it. So
/// send FIN, then discard input until the client closes too (bounded).
async fn linger(mut reader: BufReader<ReadHalf<'_>>, writer: &mut WriteHalf<'_>) -> io::Result<()> {
    writer.shutdown().await?;
    // `io::copy` keeps its buffer on the heap: a buffer array here would be
    // part of every connection's task, idle or not.
    let mut sink = tokio::io::sink();
    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut reader, &mut sink)).await;
    Ok(())
}

/// The outcome of reading one line.
enum Framed {
    /// `buf` holds a whole line, `\n` included.
    Line,
    /// The client closed its side; a last line without `\n` is dropped.
    Eof,
    /// The line is longer than the limit.
    TooLong,
}

/// Read up to and including the next `\n` into `buf`, never holding more
/// than `max_line` bytes of text (plus the `\r\n`).
async fn read_line(
    reader: &mut BufReader<ReadHalf<'_>>,
    buf: &mut Vec<u8>,
    max_line: usize,
) -> io::Result<Framed> {
    loop {
        if buf.last() == Some(&b'\n') {
            let text = buf.strip_suffix(b"\n").unwrap();
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            return Ok(if text.len() > max_line {
                Framed::TooLong
            } else {
                Framed::Line
            });
        }
        let room = (max_line + 2).saturating_sub(buf.len());
        if room == 0 {
            return Ok(Framed::TooLong);
        }
        // `take` bounds how much one client can make us buffer.
        if (&mut *reader)
            .take(room as u64)
            .read_until(b'\n', buf)
            .await?
            == 0
        {
            return Ok(Framed::Eof);
        }
    }
}

/// Act on one line from the client (`buf` ends with `\n`).
async fn handle_line(
    buf: &[u8],
    id: u64,
    chat: &Mutex<Registry>,
    writer: &mut WriteHalf<'_>,
) -> io::Result<Next> {
    let text = buf.strip_suffix(b"\n").unwrap_or(buf);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.is_empty() {
        return Ok(Next::Continue);
    }
    // No client may send another's terminal control sequences.
    let mut clean = Vec::with_capacity(text.len());
    sanitize(text, &mut clean);
    let text = clean;

    let reply = if let Some(command) = text.strip_prefix(b"/") {
        let command = String::from_utf8_lossy(command);
        let (word, arg) = command.split_once(' ').unwrap_or((&command, ""));
        let mut chat = chat.lock().unwrap();
        match word {
            "nick" => chat.rename(id, arg.trim()),
            "who" => Some(chat.who()),
            "quit" => {
                drop(chat);
                writer.write_all(b"* bye\n").await?;
                return Ok(Next::Close(Closed::Quit));
            }
            _ => Some(line(format!("* error: unknown command /{word}"))),
        }
    } else {
        let mut chat = chat.lock().unwrap();
        let Some(name) = chat.name(id) else {
            // Dropped as too slow meanwhile: say nothing more.
            return Ok(Next::Close(Closed::TooSlow));
        };
        let msg = line([name.as_bytes(), b": ", &text].concat());
        chat.broadcast_line(msg, Some(id));
        None
    };
    if let Some(reply) = reply {
        writer.write_all(&reply).await?;
    }
    Ok(Next::Continue)
}
