//! The chat on top of the loop: joining, lines and commands, as stage 5
//! has them (its log and protocol lines, word for word). Only where the
//! bytes come from differs: a receive completion, not a `read`.

use std::ops::ControlFlow;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use stage5_chat::clients::{NickError, Phase, Why};
use stage5_chat::framer::{LineTooLong, split_lines};
use stage5_chat::sanitize::sanitize;

use super::{LINGER, Server};

/// What `/help` sends: the commands, one short line each.
const HELP: [&str; 4] = [
    "* /nick NAME  take the name NAME (1-32 of A-Z a-z 0-9 _ -)",
    "* /who        list who is online",
    "* /help       this list",
    "* /quit       leave the chat",
];

impl Server {
    /// A new connection joins the chat, or is told the server is full.
    /// Either way its receive starts: a refused client's end-of-file (or
    /// input, thrown away) is read like anyone's.
    pub(super) fn admit(&mut self, client_fd: OwnedFd) {
        let fd = if self.clients.online_count() >= self.args.max_clients {
            let deadline = Instant::now() + LINGER;
            let fd = self.clients.refuse(client_fd, Why::ServerFull, deadline);
            self.deadlines.push_back((deadline, fd));
            self.clients.queue_line(fd, "* error: server full");
            fd
        } else {
            let (fd, name) = self.clients.join(client_fd);
            let online = self.clients.online_count();
            let welcome = format!("* welcome {name} ({online} online); /help lists the commands");
            self.clients.queue_line(fd, welcome);
            // Past the limit, N clients joining would cost N² notices.
            if online <= self.args.announce_limit {
                self.clients.broadcast(format!("* {name} joined"), Some(fd));
            }
            fd
        };
        self.arm_recv(fd);
    }

    /// Frame what was received into lines and act on each.
    pub(super) fn handle_input(&mut self, fd: RawFd, input: &[u8]) {
        let max_line = self.args.max_line;
        let Some(client) = self.clients.get_mut(fd) else {
            return;
        };
        if client.phase() != Phase::Online {
            return; // it has left: its input is read only to be thrown away
        }
        let mut partial = client.take_partial();
        let framed = split_lines(&mut partial, input, max_line, |text| {
            self.handle_line(fd, text)
        });
        match framed {
            Ok(_) => {
                if let Some(client) = self.clients.get_mut(fd) {
                    client.keep_partial(partial);
                }
            }
            Err(LineTooLong) => {
                let error = format!("* error: line too long (max {max_line} bytes)");
                self.clients.queue_line(fd, error);
                self.end(fd, Why::LineTooLong);
            }
        }
    }

    /// One line from the client `fd`: a command or chat for the others.
    fn handle_line(&mut self, fd: RawFd, text: &[u8]) -> ControlFlow<()> {
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        if let Some(command) = text.strip_prefix(b"/") {
            let mut clean = Vec::with_capacity(command.len());
            sanitize(command, &mut clean);
            return self.command(fd, &clean);
        }
        self.clients.relay(fd, text);
        ControlFlow::Continue(())
    }

    /// `/nick NEW`, `/who`, `/help`, `/quit`; anything else is an unknown
    /// command.
    fn command(&mut self, fd: RawFd, command: &[u8]) -> ControlFlow<()> {
        let (word, arg) = match command.iter().position(|&b| b == b' ') {
            Some(space) => (&command[..space], command[space + 1..].trim_ascii()),
            None => (command, &b""[..]),
        };
        let reply = match word {
            b"nick" => match self.clients.rename(fd, arg) {
                Ok(old) => {
                    let new = String::from_utf8_lossy(arg);
                    self.clients
                        .broadcast(format!("* {old} is now {new}"), None);
                    return ControlFlow::Continue(());
                }
                Err(NickError::Invalid) => {
                    b"* error: a name is 1-32 of the characters A-Z a-z 0-9 _ -".to_vec()
                }
                Err(NickError::Taken) => [b"* error: the name ", arg, b" is taken"].concat(),
            },
            b"who" => format!("* online: {}", self.clients.names().join(", ")).into_bytes(),
            b"help" => {
                for line in HELP {
                    self.clients.queue_line(fd, line);
                }
                return ControlFlow::Continue(());
            }
            b"quit" => {
                self.clients.queue_line(fd, "* bye");
                self.end(fd, Why::Quit);
                return ControlFlow::Break(()); // nothing after /quit counts
            }
            _ => [
                b"* error: unknown command /",
                word,
                b" (/help lists the commands)",
            ]
            .concat(),
        };
        self.clients.queue_line(fd, reply);
        ControlFlow::Continue(())
    }
}
