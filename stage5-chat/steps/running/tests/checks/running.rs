//! The checks of stage 5e, a server you can leave running: the lingering
//! close, and signals. Every later step runs them too (this file is
//! included by path), against its own binary.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use testkit::Client;

use super::chat::{expect_welcome, join, start};

// ---------------------------------------------------------------------
// The lingering close: the last line is not lost.

#[test]
fn the_error_line_survives_a_flood_the_server_never_reads_as_lines() {
    let server = start(&["--max-line", "100"]);
    let mut c = join(&server, 1);
    // 256 KiB with no newline: the server must stop at the limit, send the
    // error, and close without a reset that would destroy the error line.
    c[0].send(&vec![b'z'; 256 * 1024]);
    assert_eq!(c[0].recv_line(), "* error: line too long (max 100 bytes)");
    assert_eq!(c[0].recv_to_eof(), b"");
}

#[test]
fn the_error_line_reaches_a_client_that_has_not_read_yet() {
    /// 450 KiB: far more than the client's kernel takes in before it
    /// stops (up to 90 KiB was seen, for all its small receive buffer),
    /// and less than the send buffer a loopback connection starts with
    /// (over a megabyte) and the server's `--max-queue`.
    const LINES: usize = 5000;
    let server = start(&["--max-line", "100"]);
    let mut talker = join(&server, 1).remove(0);
    // A small window, and lines it does not read yet: more than its
    // window, so some wait in the server's socket buffer (and none in the
    // server's queue, which it must empty before it can end its side).
    let mut slow = Client::connect_small_window(server.addr);
    expect_welcome(&mut slow, "client2", 2);
    assert_eq!(talker.recv_line(), "* client2 joined");
    let chat = format!("{}\n", "c".repeat(90)).repeat(LINES);
    talker.send(chat.as_bytes());
    talker.send(b"/who\n");
    assert_eq!(talker.recv_line(), "* online: client1, client2");
    // Now a line far over the limit, still arriving when the server gives
    // up on it, and until it has ended its side. Closing with that input
    // unread, or with more of it on the way, makes the kernel reset the
    // connection and throw away everything not yet delivered: the chat
    // lines and the error with them.
    let mut writer = slow.stream.try_clone().unwrap();
    let ended = Arc::new(AtomicBool::new(false));
    let flood = thread::spawn({
        let ended = Arc::clone(&ended);
        move || {
            let chunk = vec![b'z'; 16 * 1024];
            while !ended.load(Ordering::Relaxed) {
                if writer.write_all(&chunk).is_err() {
                    return; // reset: the check below says what was lost
                }
            }
            // One more piece once the server has ended its side, so input
            // arrives after its end however the threads were scheduled: a
            // server that closed instead of draining answers it with a reset.
            if writer.write_all(&chunk).is_err() {
                return;
            }
            let _ = writer.shutdown(std::net::Shutdown::Write);
        }
    });
    // Read nothing until the server has ended its side (sent its FIN, or
    // reset): whatever it did to the bytes in flight is done by then.
    testkit::wait_until("the server ends its side of the connection", || {
        server.has_ended_its_side(&slow)
    });
    ended.store(true, Ordering::Relaxed);
    for n in 0..LINES {
        assert_eq!(
            slow.recv_line(),
            format!("client1: {}", "c".repeat(90)),
            "chat line {n} of {LINES}, owed to a client that had not read yet: a server \
             that closes while the client's input still arrives resets the connection, \
             and the kernel throws away all it had not sent"
        );
    }
    let error = slow.recv_line();
    assert!(
        error.starts_with("* error: "),
        "got {error:?} where the line-too-long error was due"
    );
    // End-of-file, not a reset: a reset at the end means the server
    // closed while input was still arriving, and only luck (all it owed
    // already in this client's kernel) saved the lines above.
    assert_eq!(slow.recv_to_fin(), b"");
    flood.join().unwrap();
    assert_eq!(talker.recv_line(), "* client2 left");
}

// ---------------------------------------------------------------------
// Signals.

#[test]
fn sigterm_and_sigint_tell_everyone_and_exit_zero() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut server = start(&[]);
        let mut c = join(&server, 3);
        c[0].send(b"/quit\n"); // one client already leaving
        assert_eq!(c[0].recv_line(), "* bye");
        for client in &mut c[1..] {
            assert_eq!(client.recv_line(), "* client1 left");
        }
        server.signal(signal);
        for client in &mut c[1..] {
            assert_eq!(client.recv_line(), "* server shutting down");
            assert_eq!(client.recv_to_eof(), b"");
        }
        drop(c);
        let status = server.wait_exit();
        assert_eq!(status.code(), Some(0), "after signal {signal}");
    }
}

#[test]
fn shutdown_is_bounded_when_a_client_never_reads_or_closes() {
    let mut server = start(&[]);
    let mut c = join(&server, 1);
    let _stuck = Client::connect_small_window(server.addr);
    assert!(c[0].recv_line().ends_with(" joined"));
    server.signal(libc::SIGTERM);
    assert_eq!(c[0].recv_line(), "* server shutting down");
    assert_eq!(server.wait_exit().code(), Some(0));
}
