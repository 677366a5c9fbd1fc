// ANCHOR: framer_top
//! Splitting a byte stream into lines.
//!
//! TCP delivers bytes, not messages: one `read(2)` may return half a line,
//! or several lines and the start of the next. The framer joins and splits
//! them, so the server sees whole lines whatever the reads looked like.

use std::ops::ControlFlow;

/// A line longer than the limit: the server answers with an error and
/// closes the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineTooLong;
// ANCHOR_END: framer_top

// ANCHOR: split_lines
/// Split `input`, the next bytes of a stream, into lines.
///
/// `partial` holds the unfinished line that earlier input left; the first
/// line of `input` continues it. Every whole line goes to `on_line` without
/// its `\n` (or `\r\n`); the bytes after the last `\n` stay in `partial`.
/// `on_line` returns `ControlFlow::Break` to stop early (the rest of
/// `input` is then dropped). A line of more than `max_line` bytes is an
/// error as soon as it is sure to be one, so `partial` never holds more than
/// `max_line + 1` bytes (the `+ 1` for a `\r` whose `\n` has not come yet).
pub fn split_lines(
    partial: &mut Vec<u8>,
    input: &[u8],
    max_line: usize,
    mut on_line: impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, LineTooLong> {
    let mut rest = input;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let piece = &rest[..end];
        rest = &rest[end + 1..];
        let flow = if partial.is_empty() {
            // The common case: the whole line is in `input`, so no copy.
            emit(piece, max_line, &mut on_line)?
        } else {
            if partial.len() + piece.len() > max_line + 1 {
                return Err(LineTooLong);
            }
            partial.extend_from_slice(piece);
            // `take` leaves an empty Vec, which owns no memory: a client
            // holds a buffer only while it has half a line.
            let line = std::mem::take(partial);
            emit(&line, max_line, &mut on_line)?
        };
        if flow.is_break() {
            return Ok(flow);
        }
    }
    // Checked before copying, so a flood without `\n` is never buffered:
    // past `max_line` bytes only a `\r` (of a `\r\n` to come) may wait.
    let kept = partial.len() + rest.len();
    let last = rest.last().or(partial.last());
    if kept > max_line + 1 || (kept == max_line + 1 && last != Some(&b'\r')) {
        return Err(LineTooLong);
    }
    partial.extend_from_slice(rest);
    Ok(ControlFlow::Continue(()))
}
// ANCHOR_END: split_lines

// ANCHOR: emit
/// Hand one line, without its `\r` if it had one, to `on_line`.
fn emit(
    line: &[u8],
    max_line: usize,
    on_line: &mut impl FnMut(&[u8]) -> ControlFlow<()>,
) -> Result<ControlFlow<()>, LineTooLong> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > max_line {
        return Err(LineTooLong);
    }
    Ok(on_line(line))
}
// ANCHOR_END: emit
