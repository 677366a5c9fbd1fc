//! The framer's checks: every way a stream can be cut gives the same lines.
//! Every later step runs them too (this file is included by path) on its own
//! framer: the test file that includes it names its crate `step`.

use std::ops::ControlFlow;

use super::step::framer::{LineTooLong, split_lines};

/// Every line from feeding `chunks` in order, and whether it ended in
/// an error; also what is left in `partial`.
fn feed(chunks: &[&[u8]], max_line: usize) -> (Vec<Vec<u8>>, Result<(), LineTooLong>, Vec<u8>) {
    let mut partial = Vec::new();
    let mut lines = Vec::new();
    for chunk in chunks {
        let result = split_lines(&mut partial, chunk, max_line, |line| {
            lines.push(line.to_vec());
            ControlFlow::Continue(())
        });
        if let Err(err) = result {
            return (lines, Err(err), partial);
        }
    }
    (lines, Ok(()), partial)
}

fn owned(lines: &[&str]) -> Vec<Vec<u8>> {
    lines.iter().map(|l| l.as_bytes().to_vec()).collect()
}

#[test]
fn several_lines_in_one_read() {
    let (lines, result, partial) = feed(&[b"one\ntwo\nthree\n"], 100);
    assert_eq!(lines, owned(&["one", "two", "three"]));
    assert_eq!(result, Ok(()));
    assert!(partial.is_empty());
}

#[test]
fn a_line_split_across_reads_is_joined() {
    let (lines, _, partial) = feed(&[b"hel", b"lo\nwor", b"ld"], 100);
    assert_eq!(lines, owned(&["hello"]));
    assert_eq!(partial, b"world", "the unfinished line is kept");
}

#[test]
fn one_byte_at_a_time() {
    let text = b"hi there\nsecond\n";
    let chunks: Vec<&[u8]> = text.chunks(1).collect();
    let (lines, _, _) = feed(&chunks, 100);
    assert_eq!(lines, owned(&["hi there", "second"]));
}

#[test]
fn crlf_endings_lose_their_cr_even_when_split() {
    let (lines, _, _) = feed(&[b"dos\r\nsplit\r", b"\nbare\rcr\n"], 100);
    assert_eq!(lines, owned(&["dos", "split", "bare\rcr"]));
}

#[test]
fn empty_lines_are_reported_as_empty() {
    let (lines, _, _) = feed(&[b"\n\r\na\n"], 100);
    assert_eq!(lines, owned(&["", "", "a"]));
}

#[test]
fn a_line_of_exactly_the_limit_passes_and_one_more_byte_fails() {
    let (lines, result, _) = feed(&[b"abcd\n", b"abcd\r\n"], 4);
    assert_eq!(lines, owned(&["abcd", "abcd"]));
    assert_eq!(result, Ok(()));
    let (lines, result, _) = feed(&[b"ok\nabcde\nnever\n"], 4);
    assert_eq!(
        lines,
        owned(&["ok"]),
        "lines before the long one still count"
    );
    assert_eq!(result, Err(LineTooLong));
}

#[test]
fn a_flood_without_newline_fails_before_it_is_buffered() {
    let mut partial = Vec::new();
    let flood = vec![b'x'; 1 << 20];
    let result = split_lines(&mut partial, &flood, 4096, |_| ControlFlow::Continue(()));
    assert_eq!(result, Err(LineTooLong));
    assert!(partial.is_empty(), "nothing of the flood was kept");
    // A partial line grows only up to the limit (+1 for a pending `\r`).
    let (_, result, partial) = feed(&[b"abc", b"d\r"], 4);
    assert_eq!((result, partial), (Ok(()), b"abcd\r".to_vec()));
    let (_, result, _) = feed(&[b"abc", b"de"], 4);
    assert_eq!(result, Err(LineTooLong));
}

#[test]
fn break_stops_at_that_line() {
    let mut partial = Vec::new();
    let mut seen = Vec::new();
    let flow = split_lines(&mut partial, b"a\n/quit\nb\nc", 100, |line| {
        seen.push(line.to_vec());
        if line == b"/quit" {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(flow, Ok(ControlFlow::Break(())));
    assert_eq!(seen, owned(&["a", "/quit"]));
}

#[test]
fn a_finished_line_gives_its_buffer_back() {
    let mut partial = Vec::new();
    let _ = split_lines(&mut partial, b"half", 100, |_| ControlFlow::Continue(()));
    assert!(partial.capacity() > 0);
    let _ = split_lines(&mut partial, b" a line\n", 100, |_| {
        ControlFlow::Continue(())
    });
    assert_eq!(partial.capacity(), 0, "an idle client keeps no read buffer");
}

mod property {
    use proptest::prelude::*;

    use super::*;

    // ANCHOR: property
    proptest! {
        /// However the stream is cut into reads, the same lines come
        /// out, the same error (if any), and the same bytes are left.
        #[test]
        fn any_split_gives_the_same_lines(
            stream in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(0usize..200, 0..20),
            max_line in 1usize..12,
        ) {
            let whole = feed(&[&stream], max_line);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            chunks.push(&stream[start..]);
            let split = feed(&chunks, max_line);
            prop_assert_eq!(&split.0, &whole.0);
            prop_assert_eq!(&split.1, &whole.1);
            if whole.1.is_ok() {
                prop_assert_eq!(&split.2, &whole.2);
            }
        }
    }
    // ANCHOR_END: property
}
