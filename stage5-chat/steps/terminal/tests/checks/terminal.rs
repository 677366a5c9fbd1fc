//! The checks of the chat client on a terminal, through a pseudo-terminal:
//! raw mode, an input line that incoming lines never split, a line over the
//! limit refused and kept, a redraw when the window is resized, and the
//! terminal restored on every way out. Every later step runs them too (this
//! file is included by path), beside the pipe checks (`client`), whose
//! `start_server` and `is_refusal` it uses: the test file that includes both
//! defines `server_bin()` and `client_bin()`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::pty::{Winsize, openpty};
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{LocalFlags, Termios, tcgetattr};
use nix::unistd::Pid;
use testkit::{Client, Server, TIMEOUT};

use super::client::{is_refusal, start_server};
use super::client_bin;

/// A server, a client on a socket (`client1`) and the client on a terminal
/// (`client2`), showing its prompt.
fn chat_on_a_terminal() -> (Server, Client, PtyClient) {
    let server = start_server();
    let mut other = server.connect();
    assert!(
        other
            .recv_line()
            .starts_with("* welcome client1 (1 online)")
    );
    let mut client = PtyClient::start(&server);
    client.wait_for_prompt("client2> ");
    assert_eq!(other.recv_line(), "* client2 joined");
    (server, other, client)
}

#[test]
fn on_a_terminal_an_incoming_line_does_not_split_a_half_typed_one() {
    let (_server, mut other, mut client) = chat_on_a_terminal();
    let raw = client.modes();
    assert!(
        !raw.local_flags
            .intersects(LocalFlags::ICANON | LocalFlags::ECHO),
        "the client must draw the input line itself (no ICANON, no ECHO)"
    );

    // Longer than the line that arrives, so that a row not erased before
    // it is overwritten shows.
    client.type_keys(b"half-typed line, longer than the one that comes");
    client.wait_for_prompt("client2> half-typed line, longer than the one that comes");
    other.send(b"interrupting\n");
    let rows = client.wait_for_screen("the incoming line", |rows| {
        rows.iter().any(|r| r.contains("interrupting"))
            && rows.last().is_some_and(|r| r.ends_with("comes"))
    });
    // The line arrived whole on its own row, and the half line is intact
    // under it, once.
    assert_eq!(
        rows[rows.len() - 2..],
        [
            "client1: interrupting",
            "client2> half-typed line, longer than the one that comes"
        ],
        "screen: {rows:#?}"
    );
    assert_eq!(rows.iter().filter(|r| r.contains("half-typed")).count(), 1);

    // Our own line reads as the others see it, and the prompt is empty again.
    client.type_keys(b" now\r");
    let sent = "client2: half-typed line, longer than the one that comes now";
    assert_eq!(other.recv_line(), sent);
    let rows = client.wait_for_prompt("client2> ");
    assert_eq!(rows[rows.len() - 2], sent);

    // Ctrl-D on an empty line ends the input, as the end of a file does.
    client.type_keys(b"\x04");
    assert_eq!(client.wait_exit_restored(), Some(0));
    assert_eq!(other.recv_line(), "* client2 left");
}

#[test]
fn on_a_terminal_keys_edit_the_line_and_ctrl_c_quits() {
    let (_server, mut other, mut client) = chat_on_a_terminal();

    // Ctrl-U clears the line; Backspace (DEL or BS) removes one character,
    // two bytes for `ï`; an arrow key (`ESC [ D`) types nothing.
    client.type_keys("oops\x15naïf\x7f\x08\x1b[Dive".as_bytes());
    client.wait_for_prompt("client2> naive");
    client.type_keys(b"\r");
    assert_eq!(other.recv_line(), "client2: naive");

    // The prompt follows a new name.
    client.type_keys(b"/nick alice\r");
    assert_eq!(other.recv_line(), "* client2 is now alice");
    client.wait_for_prompt("alice> ");

    // Ctrl-C quits at once: the half line is not sent.
    client.type_keys(b"never sent\x03");
    assert_eq!(client.wait_exit_restored(), Some(128 + libc::SIGINT));
    assert_eq!(other.recv_line(), "* alice left");
}

#[test]
fn on_a_terminal_sigterm_restores_the_terminal() {
    let server = start_server();
    let mut client = PtyClient::start(&server);
    client.wait_for_prompt("client1> ");
    client.type_keys(b"half a line");
    client.wait_for_prompt("client1> half a line");
    let pid = Pid::from_raw(client.child.id() as i32);
    kill(pid, Signal::SIGTERM).expect("kill the client");
    assert_eq!(client.wait_exit_restored(), Some(128 + libc::SIGTERM));
}

#[test]
fn on_a_terminal_a_line_over_the_limit_is_refused_and_kept() {
    // A terminal in its usual (canonical) mode cuts a typed line at 4095
    // bytes without a word; the client's own input line does not. The
    // server closes a client whose line is over its limit, 4096 bytes, so
    // the client refuses such a line itself and stays connected.
    let (_server, mut other, mut client) = chat_on_a_terminal();
    let mut line = vec![b'x'; 4990];
    line.extend_from_slice(b"0123456789");
    client.type_keys(&line);
    // The input line shows its end and stays on one row, so that it can
    // be erased and redrawn.
    let rows = client.wait_for_screen("the end of the typed line", |rows| {
        rows.last().is_some_and(|r| r.ends_with("x0123456789"))
    });
    let prompt_row = rows.last().unwrap();
    assert!(prompt_row.starts_with("client2> x") && prompt_row.chars().count() < 80);
    client.type_keys(b"\r");
    let rows = client.wait_for_screen("the refusal, over the line still typed", |rows| {
        rows.len() >= 2 && is_refusal(&rows[rows.len() - 2]) && rows[rows.len() - 1] == *prompt_row
    });
    assert!(
        !rows.iter().any(|r| r.contains("error")),
        "the line reached the server: {rows:#?}"
    );

    // Still connected: a line of exactly the limit goes through, and so
    // does a short one after it.
    client.type_keys(b"\x15");
    client.type_keys(&[b'y'; 4096]);
    client.type_keys(b"\r");
    let line = other
        .try_recv_line()
        .unwrap_or_else(|e| panic!("a line of 4096 bytes, the server's limit, must be sent: {e}"));
    assert_eq!(line, format!("client2: {}", "y".repeat(4096)));
    client.type_keys(b"still here\r");
    assert_eq!(other.recv_line(), "client2: still here");
    client.type_keys(b"\x04");
    assert_eq!(client.wait_exit_restored(), Some(0));
    assert_eq!(other.recv_line(), "* client2 left");
}

#[test]
fn on_a_terminal_a_resize_redraws_the_input_line() {
    let (_server, mut other, mut client) = chat_on_a_terminal();
    client.resize(120);
    let half: String = (0..10).map(|n| format!("{n}-half-row")).collect();
    client.type_keys(half.as_bytes());
    client.wait_for_prompt(&format!("client2> {half}"));
    // Narrower than the prompt and the half line (109 columns): the
    // terminal rewraps the row onto three, the cursor after their end, and
    // the kernel sends the client SIGWINCH.
    client.resize(40);
    let redrawn = |rows: &[String]| {
        rows.last()
            .is_some_and(|r| r.starts_with("client2> ") && r.ends_with("9-half-row"))
            && !rows[..rows.len() - 1]
                .iter()
                .any(|r| r.contains("half-row"))
    };
    client.wait_for_screen(
        "the input line drawn again on one row, with no row left of the old one",
        redrawn,
    );
    // Drawn for 40 columns, the next redraw erases one row, as before.
    other.send(b"after the resize\n");
    let rows = client.wait_for_screen("the incoming line", |rows| {
        rows.iter().any(|r| r == "client1: after the resize") && redrawn(rows)
    });
    assert_eq!(
        rows[rows.len() - 2],
        "client1: after the resize",
        "screen: {rows:#?}"
    );
    client.type_keys(b"\r");
    assert_eq!(other.recv_line(), format!("client2: {half}"));
}

/// The client on a pseudo-terminal, as a user runs it in a terminal window:
/// the test holds the terminal's side (the pty master), types into it and
/// reads what the client draws. Killed when dropped.
struct PtyClient {
    child: Child,
    master: OwnedFd,
    /// The client's side, kept open to read its modes with `tcgetattr`.
    slave: OwnedFd,
    /// The terminal's modes before the client started.
    before: Termios,
    /// Everything the client has written to the terminal.
    output: Vec<u8>,
    /// The window's width as the client started.
    width: u16,
    /// Each change of width since: the length of `output` when it came,
    /// and the new width.
    resizes: Vec<(usize, u16)>,
}

impl PtyClient {
    fn start(server: &Server) -> PtyClient {
        let size = Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).expect("openpty");
        // Other tests start processes meanwhile: they must not inherit these.
        for fd in [&pty.master, &pty.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
        }
        let before = tcgetattr(&pty.slave).unwrap();
        let on_slave = || Stdio::from(pty.slave.try_clone().unwrap());
        let mut command = Command::new(client_bin());
        command
            .arg(server.addr.to_string())
            .stdin(on_slave())
            .stdout(on_slave())
            .stderr(on_slave());
        // As a terminal window starts its shell: a new session whose
        // controlling terminal is the pty, so the kernel sends it SIGWINCH
        // when the window's size changes.
        // SAFETY: between fork and exec the child only makes two system
        // calls, which are async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid()?;
                if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start the client");
        PtyClient {
            child,
            master: pty.master,
            slave: pty.slave,
            before,
            output: Vec::new(),
            width: size.ws_col,
            resizes: Vec::new(),
        }
    }

    /// Make the window `cols` wide, as a user dragging its edge does. The
    /// screen model rewraps what it has read so far; the client must have
    /// drawn everything before the resize by then (the caller waited for
    /// it), or the model would rewrap too little.
    fn resize(&mut self, cols: u16) {
        let size = libc::winsize {
            ws_row: 24,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which
        // points to a `winsize` that lives through the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
        self.resizes.push((self.output.len(), cols));
    }

    /// The rows the terminal shows now.
    fn screen(&self) -> Vec<String> {
        let mut screen = Screen::new(self.width);
        let mut at = 0;
        for &(end, cols) in &self.resizes {
            screen.feed(&self.output[at..end]);
            screen.resize(cols);
            at = end;
        }
        screen.feed(&self.output[at..]);
        screen.rows()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        let mut rest = keys;
        while !rest.is_empty() {
            let n = nix::unistd::write(&self.master, rest).expect("write to the pty");
            rest = &rest[n..];
        }
    }

    /// Read what the client draws until the screen satisfies `done`;
    /// fails after the timeout, showing the screen.
    fn wait_for_screen(&mut self, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let rows = self.screen();
            if done(&rows) {
                return rows;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the screen never showed {what}:\n{rows:#?}"
            );
            let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(left).unwrap();
            if poll(&mut fds, timeout).expect("poll the pty") > 0 {
                let mut buf = [0u8; 4096];
                let n = nix::unistd::read(&self.master, &mut buf).expect("read the pty");
                self.output.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Wait until the cursor's row (the last) is exactly `row`.
    fn wait_for_prompt(&mut self, row: &str) -> Vec<String> {
        self.wait_for_screen(&format!("the prompt {row:?}"), |rows| {
            rows.last().is_some_and(|last| last == row)
        })
    }

    fn modes(&self) -> Termios {
        tcgetattr(&self.slave).unwrap()
    }

    /// Wait for the exit; the terminal must be as the client found it.
    fn wait_exit_restored(&mut self) -> Option<i32> {
        let code = testkit::wait_for_exit(&mut self.child).code();
        assert_eq!(
            self.modes(),
            self.before,
            "the terminal's modes after the exit differ from before"
        );
        code
    }
}

impl Drop for PtyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A terminal, for the controls a line editor uses: `\r`, `\n`, backspace,
/// `ESC [ K` (erase to the end of the row), `ESC [ 2K` (erase the row),
/// `ESC [ nA` (up n rows) and `ESC [ J` (erase to the end of the screen).
/// A row is `width` columns: a character past the last column goes to the
/// start of the next row, as the terminal wraps it. Rows are never
/// dropped, so the screen is also what scrolled off it.
struct Screen {
    width: usize,
    /// Each row's characters, and whether it wraps into the next (its
    /// line goes on there).
    rows: Vec<(Vec<char>, bool)>,
    row: usize,
    col: usize,
}

impl Screen {
    fn new(width: u16) -> Screen {
        Screen {
            width: usize::from(width),
            rows: vec![(Vec::new(), false)],
            row: 0,
            col: 0,
        }
    }

    /// The rows it shows, down to the cursor's or to the last that is not
    /// blank: the last is the cursor's unless something is left below it.
    fn rows(&self) -> Vec<String> {
        let last = (self.row + 1..self.rows.len())
            .rev()
            .find(|&row| !self.rows[row].0.iter().all(|&c| c == ' '))
            .unwrap_or(self.row);
        self.rows[..=last]
            .iter()
            .map(|(cells, _)| cells.iter().collect())
            .collect()
    }

    fn down(&mut self) {
        self.row += 1;
        if self.row == self.rows.len() {
            self.rows.push((Vec::new(), false));
        }
    }

    fn feed(&mut self, output: &[u8]) {
        let text = String::from_utf8_lossy(output);
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\r' => self.col = 0,
                '\n' => {
                    self.down();
                    self.col = self.col.min(self.width - 1);
                }
                '\x08' => self.col = self.col.min(self.width - 1).saturating_sub(1),
                '\x1b' => {
                    let mut sequence = String::new();
                    for c in chars.by_ref() {
                        sequence.push(c);
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                    self.control(&sequence);
                }
                c => {
                    if self.col >= self.width {
                        self.rows[self.row].1 = true;
                        self.down();
                        self.col = 0;
                    }
                    let cells = &mut self.rows[self.row].0;
                    if cells.len() < self.col {
                        cells.resize(self.col, ' ');
                    }
                    if self.col < cells.len() {
                        cells[self.col] = c;
                    } else {
                        cells.push(c);
                    }
                    self.col += 1;
                }
            }
        }
    }

    fn control(&mut self, sequence: &str) {
        let col = self.col.min(self.width);
        match sequence {
            "[K" | "[0K" => self.rows[self.row].0.truncate(col),
            "[2K" => self.rows[self.row] = (Vec::new(), false),
            "[J" | "[0J" => {
                self.rows.truncate(self.row + 1);
                self.rows[self.row].0.truncate(col);
                self.rows[self.row].1 = false;
            }
            up if up.starts_with('[') && up.ends_with('A') => {
                let n: usize = match &up[1..up.len() - 1] {
                    "" => 1,
                    n => n.parse().expect("a number of rows"),
                };
                self.row = self.row.saturating_sub(n);
                self.col = self.col.min(self.width - 1);
            }
            other => panic!("the screen model knows no ESC {other:?}"),
        }
    }

    /// A new width: each line (a row and the rows it wraps into) is wrapped
    /// again at the new width, and the cursor stays on the same character,
    /// as most terminals do today.
    fn resize(&mut self, cols: u16) {
        let width = usize::from(cols);
        let mut rows = Vec::new();
        let (mut row, mut col) = (0, 0);
        let mut line: Vec<char> = Vec::new();
        let mut cursor = None;
        for (index, (cells, wraps)) in std::mem::take(&mut self.rows).into_iter().enumerate() {
            if index == self.row {
                cursor = Some(line.len() + self.col);
            }
            line.extend_from_slice(&cells);
            if wraps {
                line.resize(line.len().div_ceil(self.width) * self.width, ' ');
                continue;
            }
            let count = line.len().div_ceil(width).max(1);
            if let Some(at) = cursor.take() {
                row = rows.len() + (at / width).min(count - 1);
                col = at - (at / width).min(count - 1) * width;
            }
            let mut chunks: Vec<(Vec<char>, bool)> =
                line.chunks(width).map(|c| (c.to_vec(), true)).collect();
            if chunks.is_empty() {
                chunks.push((Vec::new(), true));
            }
            chunks.last_mut().unwrap().1 = false;
            rows.extend(chunks);
            line.clear();
        }
        self.rows = rows;
        (self.width, self.row, self.col) = (width, row, col);
    }
}
