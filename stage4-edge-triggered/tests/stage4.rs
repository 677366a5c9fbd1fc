//! Exercise checks for stage 4. Run them against your own server with
//! `STAGE4_BIN=/path/to/your/server cargo test -p stage4-edge-triggered`.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::thread;

use nix::poll::{PollFd, PollFlags, poll};

use testkit::conventions::echo_probe;
use testkit::{Client, Server};

fn bin() -> PathBuf {
    testkit::bin("STAGE4_BIN", env!("CARGO_BIN_EXE_stage4-edge-triggered"))
}

testkit::server_conventions!(bin(), echo_probe);
testkit::fault_checks!(bin(), echo_probe);

const MIB: usize = 1 << 20;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;

/// 1 MiB of bytes that differ from their neighbours, so a lost or repeated
/// chunk shows up as a mismatch.
fn one_mib() -> Vec<u8> {
    (0..MIB as u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn returns_a_one_mib_burst_whole() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let mut client = server.connect();
    let data = one_mib();
    // Nothing is read until everything is sent: the server's writes hit
    // EAGAIN and it must keep the rest until EPOLLOUT.
    client.send(&data);
    assert!(
        client.recv_exact(MIB) == data,
        "the echo differs from the burst"
    );
}

#[test]
fn flushes_everything_before_closing_after_end_of_file() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    // A small window keeps most of the echo in the server when the client's
    // end-of-file arrives, so closing at once would lose it.
    let mut client = Client::connect_small_window(server.addr);
    let data: Vec<u8> = (0..8 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let mut writer = client.stream.try_clone().unwrap();
    let to_send = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&to_send)?;
        // Like `nc -N`: no more input, but the client still wants its echo.
        writer.shutdown(std::net::Shutdown::Write)
    });
    let echo = client.recv_to_eof();
    sender.join().unwrap().unwrap();
    assert_eq!(echo.len(), data.len(), "the server closed before flushing");
    assert!(echo == data, "the echo differs from what was sent");
}

#[test]
fn accepts_a_whole_burst_reported_by_one_edge() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    // Stop the server so all 300 connections wait in its accept queue: when it
    // resumes, the listener becomes ready once, and a server that accepts one
    // connection per event never hears about the other 299.
    server.signal(libc::SIGSTOP);
    let mut clients: Vec<Client> = (0..300).map(|_| server.connect()).collect();
    server.signal(libc::SIGCONT);
    for client in &mut clients {
        echo_probe(client);
    }
}

#[test]
fn keeps_what_the_socket_cannot_take_until_epollout() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut client = Client::connect_small_window(server.addr);
    let fd = server.fd_of(&client);
    // 8 MiB is more than the kernel's buffers hold, so the server's send(2)
    // must hit EAGAIN: it then keeps the rest and asks for EPOLLOUT.
    let data: Vec<u8> = (0..8 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let mut writer = client.stream.try_clone().unwrap();
    let to_send = data.clone();
    let sender = thread::spawn(move || writer.write_all(&to_send));
    testkit::wait_until("the server registers EPOLLOUT", || {
        let interest = server.epoll_interest();
        interest
            .iter()
            .any(|&(watched, events)| watched == fd && events & EPOLLOUT != 0)
    });
    assert!(client.recv_exact(data.len()) == data, "the echo differs");
    sender.join().unwrap().unwrap();
}

#[test]
fn a_client_that_never_reads_stalls_no_one() {
    let server = Server::start(bin(), &["-q", "127.0.0.1:0"]);
    let hog = Client::connect_small_window(server.addr);
    // The hog sends without reading until every buffer between it and the
    // server is full: its socket stays unwritable. A server that blocks in
    // send(2) to the hog is stuck from then on.
    let mut stream = &hog.stream;
    stream.set_nonblocking(true).unwrap();
    let chunk = vec![b'h'; 64 * 1024];
    let mut sent = 0;
    while sent < 256 * MIB {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fds = [PollFd::new(hog.stream.as_fd(), PollFlags::POLLOUT)];
                if poll(&mut fds, 500u16).unwrap() == 0 {
                    break; // jammed: nothing drained for half a second
                }
            }
            Err(e) => panic!("hog: {e}"),
        }
    }
    let mut other = server.connect();
    for _ in 0..20 {
        echo_probe(&mut other);
    }
}

#[test]
fn a_client_that_resets_before_reading_stops_nothing() {
    let server = Server::start(bin(), &["127.0.0.1:0"]);
    let mut stays = server.connect();
    echo_probe(&mut stays);
    let mut leaves = server.connect();
    leaves.send(&one_mib());
    let peer = leaves.stream.local_addr().unwrap();
    server.wait_stderr(&format!("from {peer}\n"));
    leaves.reset();
    server.wait_stderr("closed fd");
    echo_probe(&mut stays);
    echo_probe(&mut server.connect());
}

#[test]
fn running_out_of_descriptors_does_not_stop_the_server() {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["127.0.0.1:0"]);
    // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 16,
                rlim_max: 16,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::spawn(cmd);
    // Sixteen descriptors cannot hold thirty clients: accept4 fails with EMFILE.
    let mut clients: Vec<Client> = (0..30).map(|_| server.connect()).collect();
    server.wait_stderr("cannot accept: EMFILE");
    echo_probe(&mut clients[0]);
    // When clients leave, the server goes back to the queue it could not drain.
    clients.truncate(1);
    echo_probe(&mut clients[0]);
    echo_probe(&mut server.connect());
}
