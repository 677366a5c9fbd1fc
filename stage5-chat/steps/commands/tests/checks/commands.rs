//! The checks of stage 5c, commands: the rows of the protocol table about
//! `/nick`, `/who`, `/help`, `/quit` and unknown commands, and relayed text
//! that cannot drive a terminal. Every later step runs them too (this file
//! is included by path), against its own binary: the test file that
//! includes it includes stage 5b's checks as `chat`, whose helpers these use.

use testkit::Client;

use super::chat::{expect_welcome, join, start};

#[test]
fn nick_renames_and_tells_everyone() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/nick alice\n");
    assert_eq!(c[0].recv_line(), "* client1 is now alice");
    assert_eq!(c[1].recv_line(), "* client1 is now alice");
    c[0].send(b"it is me\n");
    assert_eq!(c[1].recv_line(), "alice: it is me");
    c[0].send(b"/who\n");
    assert_eq!(c[0].recv_line(), "* online: alice, client2");
}

#[test]
fn nick_refuses_invalid_names_to_the_sender_only() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    let too_long = format!("/nick {}\n", "x".repeat(33));
    for bad in [
        "/nick\n",
        "/nick two words\n",
        "/nick caf\u{e9}\n",
        "/nick semi;colon\n",
        too_long.as_str(),
    ] {
        c[0].send(bad.as_bytes());
        let reply = c[0].recv_line();
        assert!(reply.starts_with("* error: "), "{bad:?} got {reply:?}");
    }
    // 32 characters of the allowed set is fine.
    let longest = "aZ09_-".repeat(6)[..32].to_string();
    c[0].send(format!("/nick {longest}\n").as_bytes());
    assert_eq!(c[0].recv_line(), format!("* client1 is now {longest}"));
    // The other client saw none of the errors: the rename is its next line.
    assert_eq!(c[1].recv_line(), format!("* client1 is now {longest}"));
}

#[test]
fn nick_refuses_a_name_that_is_taken() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/nick bob\n");
    assert_eq!(c[0].recv_line(), "* client1 is now bob");
    assert_eq!(c[1].recv_line(), "* client1 is now bob");
    c[1].send(b"/nick bob\n");
    // The protocol fixes `* error: ` and leaves the words after it free.
    let reply = c[1].recv_line();
    assert!(
        reply.starts_with("* error: "),
        "client2 asked for bob, which client1 holds, and got {reply:?} instead of a `* error: ...` line"
    );
    c[1].send(b"/who\n");
    assert_eq!(c[1].recv_line(), "* online: bob, client2");
    // A taken `client<N>` is skipped when numbering newcomers.
    c[0].send(b"/nick client3\n");
    assert_eq!(c[1].recv_line(), "* bob is now client3");
    let mut third = server.connect();
    expect_welcome(&mut third, "client4", 3);
}

#[test]
fn who_lists_everyone_online_in_the_order_they_joined() {
    let server = start(&[]);
    let mut c = join(&server, 3);
    c[1].send(b"/who\n");
    assert_eq!(c[1].recv_line(), "* online: client1, client2, client3");
    drop(c.remove(0));
    assert_eq!(c[0].recv_line(), "* client1 left");
    c[0].send(b"/who\n");
    assert_eq!(c[0].recv_line(), "* online: client2, client3");
}

#[test]
fn who_keeps_the_order_of_joining_when_descriptors_and_names_differ() {
    let server = start(&[]);
    let mut c = join(&server, 3);
    let before = server.open_fds();
    drop(c.remove(0));
    for client in &mut c {
        assert_eq!(client.recv_line(), "* client1 left");
    }
    // Once client1's socket is closed, its descriptor is the lowest free
    // one, and the kernel gives it to the next newcomer: the last to join
    // has the smallest descriptor.
    testkit::wait_until("the server closes client1's socket", || {
        server.open_fds() < before
    });
    let mut fourth = server.connect();
    expect_welcome(&mut fourth, "client4", 3);
    for client in &mut c {
        assert_eq!(client.recv_line(), "* client4 joined");
    }
    c.push(fourth);
    // Names sorted are in another order again: amy joined last.
    for (who, old, new) in [(0, "client2", "zed"), (2, "client4", "amy")] {
        c[who].send(format!("/nick {new}\n").as_bytes());
        for client in &mut c {
            assert_eq!(client.recv_line(), format!("* {old} is now {new}"));
        }
    }
    c[1].send(b"/who\n");
    assert_eq!(
        c[1].recv_line(),
        "* online: zed, client3, amy",
        "/who lists who is online in the order they joined; by descriptor it would be \
         amy, zed, client3 (amy has the descriptor client1 left free), by name amy, client3, zed"
    );
}

#[test]
fn quit_says_bye_closes_and_tells_the_others() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    c[0].send(b"/quit\nthis line is never relayed\n");
    assert_eq!(c[0].recv_line(), "* bye");
    assert_eq!(c[0].recv_to_eof(), b"", "the server closes after the bye");
    assert_eq!(c[1].recv_line(), "* client1 left");
    // Whatever came after `/quit` in the same read is dropped: the next line
    // client2 gets is the answer to its own `/who`.
    c[1].send(b"/who\n");
    assert_eq!(
        c[1].recv_line(),
        "* online: client2",
        "a line sent after /quit was relayed"
    );
    let mut third = server.connect();
    expect_welcome(&mut third, "client3", 2);
}

#[test]
fn help_lists_every_command_one_line_each_to_the_sender_only() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // `/who` after `/help`: its answer marks the end of the list.
    c[0].send(b"/help\n/who\n");
    let mut listed = Vec::new();
    loop {
        let line = c[0].recv_line();
        if line.starts_with("* online: ") {
            break;
        }
        assert!(line.starts_with("* "), "a notice, got {line:?}");
        listed.push(line);
    }
    for command in ["/nick", "/who", "/help", "/quit"] {
        let lines = listed.iter().filter(|l| l.contains(command)).count();
        assert_eq!(lines, 1, "{command} on one line of {listed:?}");
    }
    c[0].send(b"after\n");
    assert_eq!(
        c[1].recv_line(),
        "client1: after",
        "the list went to the sender only"
    );
}

#[test]
fn an_unknown_command_is_an_error_to_the_sender() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // The protocol fixes the start; a server may add how to get help.
    c[0].send(b"/dance wildly\n");
    let reply = c[0].recv_line();
    assert!(
        reply.starts_with("* error: unknown command /dance"),
        "got {reply:?}"
    );
    c[0].send(b"/\n");
    let reply = c[0].recv_line();
    assert!(
        reply.starts_with("* error: unknown command /"),
        "got {reply:?}"
    );
    c[0].send(b"after\n");
    assert_eq!(c[1].recv_line(), "client1: after", "no command was relayed");
}

#[test]
fn control_bytes_become_question_marks_and_other_bytes_pass() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // Invalid UTF-8, valid UTF-8, a terminal escape, BEL, TAB, DEL.
    c[0].send(b"\xff\xfe caf\xc3\xa9 \x1b[2J\x07bell\ttab\x7f\x00end\n");
    let expected: &[u8] = b"client1: \xff\xfe caf\xc3\xa9 ?[2J?bell\ttab??end\n";
    assert_eq!(c[1].recv_exact(expected.len()), expected);
}

#[test]
fn c1_controls_become_question_marks_in_utf8_and_as_lone_bytes() {
    let server = start(&[]);
    let mut c = join(&server, 2);
    // U+009B (CSI) in UTF-8, then a lone byte 0x9B: on a terminal that
    // honours 8-bit controls each is `ESC [`. Around them, UTF-8 that must
    // pass: `é`, a no-break space (C2 A0, just past the C1 range), an emoji.
    c[0].send(b"caf\xc3\xa9 \xc2\x9b31mred \x9b2J \xc2\xa0\xf0\x9f\x98\x80 end\n");
    let line = recv_raw_line(&mut c[1]);
    let expected: &[u8] = b"client1: caf\xc3\xa9 ?31mred ?2J \xc2\xa0\xf0\x9f\x98\x80 end";
    // The failure says which way the line is wrong: a C1 control that
    // came through, or else UTF-8 around them that did not pass unchanged.
    let why = match first_c1_control(&line) {
        Some(c1) => format!("relayed a C1 control, {c1}"),
        None => "each C1 control must become `?` and the UTF-8 around it pass unchanged".into(),
    };
    assert_eq!(line, expected, "{why}: {line:x?}");
}

/// One line as bytes, without its `\n`, whether or not it is UTF-8.
fn recv_raw_line(client: &mut Client) -> Vec<u8> {
    let mut line = Vec::new();
    loop {
        match client.recv_exact(1)[0] {
            b'\n' => return line,
            b => line.push(b),
        }
        assert!(line.len() <= 4096, "no newline in {line:x?}");
    }
}

/// Where `bytes` hold a C1 control: U+0080-U+009F in valid UTF-8, or a
/// byte 0x80-0x9F outside a valid sequence, which some terminals obey too.
fn first_c1_control(bytes: &[u8]) -> Option<String> {
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        for (i, c) in chunk.valid().char_indices() {
            if ('\u{80}'..='\u{9f}').contains(&c) {
                return Some(format!("U+{:04X} at byte {}", c as u32, at + i));
            }
        }
        at += chunk.valid().len();
        for (i, &b) in chunk.invalid().iter().enumerate() {
            if (0x80..=0x9f).contains(&b) {
                return Some(format!("lone byte {b:#04x} at byte {}", at + i));
            }
        }
        at += chunk.invalid().len();
    }
    None
}
