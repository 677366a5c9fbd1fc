//! A small thread-per-client chat relay written inside the tests, so the
//! tester's verifier can be shown a server that is right and servers that
//! are wrong on purpose (one line dropped, two lines swapped, one line sent
//! twice).
//!
//! It greets each client (`* welcome clientN`), optionally takes the first
//! line as the client's name, and relays every other line to every other
//! client as `NAME: text`, like the stage 5 chat. A client it cannot write
//! to within `WRITE_TIMEOUT` (one that never reads, or is gone) is dropped,
//! so misbehaving clients cannot stall it; a client that sends a line over
//! `MAX_LINE` is reset, rudely, where stage 5 says why and closes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How long one write to one client may block before that client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// The longest line the relay takes; a longer one ends in a reset.
const MAX_LINE: usize = 4096;

/// What the relay does wrong, always to the 5th checked line (one with a
/// tester's token, `~t:`) relayed to the 2nd client.
#[derive(Clone, Copy, PartialEq)]
pub enum Fault {
    None,
    /// That line never goes out.
    DropOne,
    /// That line goes out after the one that follows it from the same sender.
    SwapTwo,
    /// That line goes out twice in a row, so the receiver sees a sequence
    /// number it has already seen.
    DuplicateOne,
}

#[derive(Default)]
struct Shared {
    clients: Vec<(u32, TcpStream)>,
    /// The last client number given out.
    last_id: u32,
    /// Checked lines relayed so far, per receiver.
    relayed: HashMap<u32, u32>,
    /// A line held back for `SwapTwo`: (receiver, sender, text).
    held: Option<(u32, u32, String)>,
}

/// Start a relay on 127.0.0.1:0; returns its address. `greet`: send a
/// welcome line first; `named`: the first line a client sends is its name.
pub fn start(fault: Fault, greet: bool, named: bool) -> SocketAddr {
    let shared = Arc::new(Mutex::new(Shared::default()));
    listen(&shared, fault, greet, named, Arc::default())
}

/// One relay listening on two addresses (one chat, as a server with two
/// nodes would be); the counters say how many clients came in on each.
pub fn start_pair(fault: Fault) -> ([SocketAddr; 2], [Arc<AtomicUsize>; 2]) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let counts = [Arc::<AtomicUsize>::default(), Arc::default()];
    let addrs = [0, 1].map(|i| listen(&shared, fault, true, false, Arc::clone(&counts[i])));
    (addrs, counts)
}

fn listen(
    shared: &Arc<Mutex<Shared>>,
    fault: Fault,
    greet: bool,
    named: bool,
    accepted: Arc<AtomicUsize>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
    let addr = listener.local_addr().unwrap();
    let shared = Arc::clone(shared);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            // Registered before the welcome goes out: a client that has
            // its welcome receives every line sent after it.
            let mut state = shared.lock().unwrap();
            state.last_id += 1;
            let id = state.last_id;
            let Ok(writer) = stream.try_clone() else {
                continue;
            };
            state.clients.push((id, writer));
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
    let control = stream.try_clone();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if line.len() > MAX_LINE {
            if let Ok(control) = &control {
                testkit::set_linger_zero(control);
            }
            break;
        }
        if first {
            name = line;
            first = false;
            continue;
        }
        let mut shared = shared.lock().unwrap();
        let shared = &mut *shared;
        let text = format!("{name}: {line}\n");
        let checked = line.contains("~t:");
        let mut unwritable = Vec::new();
        for (to, out) in &mut shared.clients {
            if *to == id {
                continue;
            }
            let count = shared.relayed.entry(*to).or_default();
            *count += u32::from(checked);
            let chosen = checked && *to == 2 && *count == 5;
            let mut copies = 1;
            match fault {
                Fault::DropOne if chosen => continue,
                Fault::SwapTwo if chosen => {
                    shared.held = Some((*to, id, text.clone()));
                    continue;
                }
                Fault::DuplicateOne if chosen => copies = 2,
                _ => {}
            }
            let mut ok = (0..copies).all(|_| out.write_all(text.as_bytes()).is_ok());
            if let Some((r, s, _)) = &shared.held
                && (*r, *s) == (*to, id)
            {
                let (_, _, late) = shared.held.take().unwrap();
                ok &= out.write_all(late.as_bytes()).is_ok();
            }
            if !ok {
                unwritable.push(*to);
            }
        }
        shared.clients.retain(|(to, _)| !unwritable.contains(to));
    }
    let mut shared = shared.lock().unwrap();
    shared.clients.retain(|(other, _)| *other != id);
}
