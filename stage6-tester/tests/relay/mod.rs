//! A small thread-per-client chat relay written inside the tests, so the
//! tester's verifier can be shown a server that is right and servers that
//! are wrong on purpose (one line dropped, two lines swapped, one line sent
//! twice).
//!
//! It greets each client (`* welcome clientN`), optionally takes the first
//! line as the client's name, and relays every other line to every other
//! client as `NAME: text`, like the chat of §5.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the relay does wrong.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// The 5th line relayed to the 2nd client never goes out.
    DropOne,
    /// The 5th line relayed to the 2nd client goes out after the one that
    /// follows it from the same sender.
    SwapTwo,
    /// The 5th line relayed to the 2nd client goes out twice in a row, so
    /// the receiver sees a sequence number it has already seen.
    DuplicateOne,
}

#[derive(Default)]
struct Shared {
    clients: Vec<(u32, TcpStream)>,
    /// Lines relayed so far, per receiver.
    relayed: HashMap<u32, u32>,
    /// A line held back for `SwapTwo`: (receiver, sender, text).
    held: Option<(u32, u32, String)>,
}

/// Start a relay on 127.0.0.1:0; returns its address. `greet`: send a
/// welcome line first; `named`: the first line a client sends is its name.
pub fn start(fault: Fault, greet: bool, named: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(Mutex::new(Shared::default()));
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let id = n as u32 + 1;
            // Registered before the welcome goes out: a client that has
            // its welcome receives every line sent after it.
            let mut state = shared.lock().unwrap();
            state.clients.push((id, stream.try_clone().unwrap()));
            if greet {
                let _ = writeln!(stream, "* welcome client{id}");
            }
            drop(state);
            let shared = Arc::clone(&shared);
            thread::spawn(move || serve(id, stream, shared, fault, named));
        }
    });
    addr
}

fn serve(id: u32, stream: TcpStream, shared: Arc<Mutex<Shared>>, fault: Fault, named: bool) {
    let mut name = format!("client{id}");
    let mut first = named;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if first {
            name = line;
            first = false;
            continue;
        }
        let mut shared = shared.lock().unwrap();
        let shared = &mut *shared;
        let text = format!("{name}: {line}\n");
        for (to, out) in &mut shared.clients {
            if *to == id {
                continue;
            }
            let count = shared.relayed.entry(*to).or_default();
            *count += 1;
            let chosen = *to == 2 && *count == 5;
            match fault {
                Fault::DropOne if chosen => continue,
                Fault::SwapTwo if chosen => {
                    shared.held = Some((*to, id, text.clone()));
                    continue;
                }
                Fault::DuplicateOne if chosen => {
                    let _ = out.write_all(text.as_bytes());
                }
                _ => {}
            }
            let _ = out.write_all(text.as_bytes());
            if let Some((r, s, _)) = &shared.held
                && (*r, *s) == (*to, id)
            {
                let (_, _, late) = shared.held.take().unwrap();
                let _ = out.write_all(late.as_bytes());
            }
        }
    }
    let mut shared = shared.lock().unwrap();
    shared.clients.retain(|(other, _)| *other != id);
}
