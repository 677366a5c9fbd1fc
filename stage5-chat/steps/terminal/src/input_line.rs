// ANCHOR: input_line_top
//! The input line of the client on a terminal: what has been typed and not
//! yet sent, the keys that edit it, and how it is drawn on the last row,
//! under the lines that arrive, in a window of a given width.
//!
//! It works on bytes alone: the keys and the received bytes come in, and
//! out come the bytes to write to the terminal. The client reads and
//! writes; the tests at the end check each drawing without a terminal.

/// What the keys read from the terminal ask of the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Keys {
    Typed,
    /// Ctrl-D on an empty line: the end of input, as at the end of a file.
    EndOfInput,
    /// Ctrl-C: quit now, sending nothing more.
    Interrupt,
}

/// Where the keys are in an escape sequence (an arrow key sends `ESC [ A`):
/// its bytes are skipped, not typed.
enum Escape {
    None,
    /// After `ESC`.
    Started,
    /// After `ESC [` or `ESC O`, until the final byte (`@` to `~`).
    Sequence,
}

/// Received bytes wait for their `\n` up to this much: a line longer than
/// any chat line is printed in pieces.
const MAX_PARTIAL: usize = 64 * 1024;
// ANCHOR_END: input_line_top

// ANCHOR: input_line_struct
/// The prompt and the line being typed, on the last row, and the received
/// bytes not yet printed above them.
pub struct InputLine {
    /// Our name, from `* welcome NAME ...` and `* OLD is now NEW`.
    name: String,
    /// What has been typed and not yet sent.
    typed: Vec<u8>,
    escape: Escape,
    /// Received bytes after the last `\n`: printed once their line is whole.
    partial: Vec<u8>,
    /// The prompt and input line are drawn (until the input or the
    /// connection ends).
    prompt: bool,
    /// The columns the last drawing of the prompt and input line took.
    drawn: usize,
    /// The server's line limit: a longer line is refused at Enter.
    max_line: usize,
}

impl InputLine {
    pub fn new(max_line: usize) -> InputLine {
        InputLine {
            name: "you".to_string(), // until the welcome names us
            typed: Vec::new(),
            escape: Escape::None,
            partial: Vec::new(),
            prompt: true,
            drawn: 0,
            max_line,
        }
    }

    /// The prompt and input line drawn again in a window `width` columns
    /// wide: the first time, and after `SIGWINCH`. Nothing once it is gone.
    pub fn redraw(&mut self, width: usize) -> Vec<u8> {
        if self.prompt {
            self.draw(b"", width)
        } else {
            Vec::new()
        }
    }
    // ANCHOR_END: input_line_struct

    // ANCHOR: input_line_keys
    /// Edit the line with the keys one `read` returned; Enter moves the line
    /// to `unsent`. Returns what the keys ask of the loop and what to write.
    pub fn keys(&mut self, keys: &[u8], unsent: &mut Vec<u8>, width: usize) -> (Keys, Vec<u8>) {
        let mut above = Vec::new(); // our own lines, printed above the prompt
        for &key in keys {
            match self.escape {
                Escape::Started if key == b'[' || key == b'O' => self.escape = Escape::Sequence,
                Escape::Sequence if !(0x40..=0x7e).contains(&key) => {}
                Escape::Started | Escape::Sequence => self.escape = Escape::None,
                Escape::None => match key {
                    b'\r' | b'\n' => self.enter(&mut above, unsent),
                    0x7f | 0x08 => {
                        // Backspace: one character, which in UTF-8 is one
                        // leading byte and the continuation bytes after it.
                        while self.typed.pop().is_some_and(is_continuation) {}
                    }
                    0x15 => self.typed.clear(), // Ctrl-U
                    0x03 => return (Keys::Interrupt, Vec::new()), // Ctrl-C
                    0x04 if self.typed.is_empty() => {
                        self.prompt = false; // Ctrl-D
                        return (Keys::EndOfInput, self.draw(&above, width));
                    }
                    0x1b => self.escape = Escape::Started,
                    b'\t' | b' '.. => self.typed.push(key),
                    _ => {} // other control keys do nothing
                },
            }
        }
        (Keys::Typed, self.draw(&above, width))
    }
    // ANCHOR_END: input_line_keys

    // ANCHOR: input_line_enter
    /// Enter: send the line and show it as the others will see it, or a
    /// command as it was typed. An empty line is not sent, nor one over the
    /// server's limit, which stays in the input line to be cut.
    fn enter(&mut self, above: &mut Vec<u8>, unsent: &mut Vec<u8>) {
        if self.typed.is_empty() {
            return;
        }
        if self.typed.len() > self.max_line {
            above.extend_from_slice(crate::too_long(self.max_line).as_bytes());
            above.push(b'\n');
            return;
        }
        if self.typed.starts_with(b"/") {
            above.extend_from_slice(self.prompt_text().as_bytes());
        } else {
            above.extend_from_slice(format!("{}: ", self.name).as_bytes());
        }
        above.extend_from_slice(&self.typed);
        above.push(b'\n');
        unsent.append(&mut self.typed);
        unsent.push(b'\n');
    }
    // ANCHOR_END: input_line_enter

    // ANCHOR: input_line_received
    /// What to write for the bytes the server sent: their whole lines above
    /// the input line, drawn again under them. Once the connection has
    /// `closed`, the rest too, and no prompt after it.
    pub fn received(&mut self, received: &[u8], closed: bool, width: usize) -> Vec<u8> {
        self.partial.extend_from_slice(received);
        let end = match self.partial.iter().rposition(|&b| b == b'\n') {
            _ if closed => self.partial.len(),
            None if self.partial.len() >= MAX_PARTIAL => self.partial.len(),
            None => return Vec::new(),
            Some(newline) => newline + 1,
        };
        let mut lines: Vec<u8> = self.partial.drain(..end).collect();
        if lines.last().is_some_and(|&b| b != b'\n') {
            lines.push(b'\n');
        }
        for line in lines.split(|&b| b == b'\n') {
            self.learn_name(line);
        }
        if closed {
            self.prompt = false;
        }
        self.draw(&lines, width)
    }

    /// Follow our name: the server gives it in the welcome and announces
    /// every change.
    fn learn_name(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        if let Some(rest) = line.strip_prefix("* welcome ") {
            self.name = rest.split(' ').next().unwrap_or_default().to_string();
        } else if let Some((old, new)) = line
            .strip_prefix("* ")
            .and_then(|notice| notice.split_once(" is now "))
            && old == self.name
        {
            self.name = new.to_string();
        }
    }
    // ANCHOR_END: input_line_received

    // ANCHOR: input_line_draw
    /// Erase the input line, print `above` (whole lines), then draw the
    /// prompt and what has been typed under them again.
    fn draw(&mut self, above: &[u8], width: usize) -> Vec<u8> {
        let width = width.max(1);
        // `\r` goes to the start of the row, `ESC [ 2K` erases all of it.
        let mut screen = b"\r\x1b[2K".to_vec();
        // The last drawing fitted on one row, but a window made narrower
        // since rewraps it onto several, with the cursor after its end:
        // each row above is erased too, going up (`ESC [ A`) to the first.
        // (`ESC [ J` from the first would erase them all at once, but from
        // the top row it clears the screen, which tmux keeps in its
        // history, one copy of the input line at a time.)
        for _ in 0..self.drawn.saturating_sub(1) / width {
            screen.extend_from_slice(b"\x1b[A\x1b[2K");
        }
        screen.extend_from_slice(above);
        let mut drawn = 0;
        if self.prompt {
            let prompt = self.prompt_text();
            let prompt_width = prompt.chars().count();
            let visible = self.visible(prompt_width, width);
            screen.extend_from_slice(prompt.as_bytes());
            screen.extend_from_slice(visible);
            drawn = prompt_width + visible.iter().filter(|&&b| !is_continuation(b)).count();
        }
        self.drawn = drawn;
        screen
    }

    fn prompt_text(&self) -> String {
        format!("{}> ", self.name)
    }
    // ANCHOR_END: input_line_draw

    // ANCHOR: input_line_visible
    /// The end of the typed line that fits on the row after the prompt, in
    /// a terminal `width` columns wide: a line wrapped onto more rows than
    /// the screen has could not be erased, as the cursor cannot go above
    /// the top row.
    fn visible(&self, prompt_width: usize, width: usize) -> &[u8] {
        let room = width.saturating_sub(prompt_width + 1).max(1);
        let starts: Vec<usize> = (0..self.typed.len())
            .filter(|&i| !is_continuation(self.typed[i]))
            .collect();
        let first = starts.len().saturating_sub(room);
        &self.typed[starts.get(first).copied().unwrap_or(0)..]
    }
}

/// A UTF-8 continuation byte (`10xxxxxx`): part of the character before it.
fn is_continuation(byte: u8) -> bool {
    byte & 0xc0 == 0x80
}
// ANCHOR_END: input_line_visible

#[cfg(test)]
mod tests {
    use super::*;

    /// `ESC [ 2K` after `\r`: the row erased, to be drawn again.
    const ERASE: &[u8] = b"\r\x1b[2K";
    /// One row up, erased: a row the last drawing wrapped onto.
    const UP: &[u8] = b"\x1b[A\x1b[2K";

    fn cat(pieces: &[&[u8]]) -> Vec<u8> {
        pieces.concat()
    }

    /// Type `keys` in a window 80 columns wide; what is sent is dropped.
    fn type_keys(line: &mut InputLine, keys: &[u8]) -> Vec<u8> {
        let (result, screen) = line.keys(keys, &mut Vec::new(), 80);
        assert_eq!(result, Keys::Typed);
        screen
    }

    #[test]
    fn an_incoming_line_goes_above_the_input_line_and_never_into_it() {
        let mut line = InputLine::new(4096);
        assert_eq!(line.redraw(80), cat(&[ERASE, b"you> "]));
        type_keys(&mut line, b"half-typed");
        // Half a line from the server waits for its `\n`: printed now, it
        // would put the prompt on its row.
        assert_eq!(line.received(b"bob: h", false, 80), b"");
        assert_eq!(
            line.received(b"i\n", false, 80),
            cat(&[ERASE, b"bob: hi\n", b"you> half-typed"])
        );
    }

    #[test]
    fn a_wrapped_input_line_is_redrawn_whole_after_a_resize() {
        let mut line = InputLine::new(4096);
        let (_, screen) = line.keys(&[b'x'; 100], &mut Vec::new(), 120);
        assert_eq!(screen, cat(&[ERASE, b"you> ", &[b'x'; 100]]));
        // 105 columns, rewrapped at 40 onto three rows: the two above the
        // cursor's are erased too, and the line drawn on one row, its end.
        let x34 = [b'x'; 34];
        assert_eq!(line.redraw(40), cat(&[ERASE, UP, UP, b"you> ", &x34]));
        assert_eq!(line.redraw(40), cat(&[ERASE, b"you> ", &x34]));
    }

    #[test]
    fn backspace_removes_a_whole_multi_byte_character() {
        let mut line = InputLine::new(4096);
        type_keys(&mut line, "naï".as_bytes());
        assert_eq!(type_keys(&mut line, b"\x7f"), cat(&[ERASE, b"you> na"]));
        type_keys(&mut line, b"\x08");
        assert_eq!(line.typed, b"n");
    }

    #[test]
    fn ctrl_u_clears_and_an_arrow_key_types_nothing() {
        let mut line = InputLine::new(4096);
        type_keys(&mut line, b"ab\x1b[Dc\x1bOA");
        assert_eq!(line.typed, b"abc");
        type_keys(&mut line, b"\x15d");
        assert_eq!(line.typed, b"d");
    }

    #[test]
    fn enter_sends_the_line_and_shows_it_as_the_others_see_it() {
        let mut line = InputLine::new(4096);
        line.received(b"* welcome alice (1 online)\n", false, 80);
        let mut unsent = Vec::new();
        let (_, screen) = line.keys(b"hi\r/nick bob\r", &mut unsent, 80);
        assert_eq!(unsent, b"hi\n/nick bob\n");
        let above: &[u8] = b"alice: hi\nalice> /nick bob\n";
        assert_eq!(screen, cat(&[ERASE, above, b"alice> "]));
        let screen = line.received(b"* alice is now bob\n", false, 80);
        assert!(screen.ends_with(b"\nbob> "));
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_kept() {
        let mut line = InputLine::new(4);
        let mut unsent = Vec::new();
        let (_, screen) = line.keys(b"hello\r", &mut unsent, 80);
        assert_eq!(unsent, b"");
        let refused = format!("{}\n", crate::too_long(4));
        assert_eq!(screen, cat(&[ERASE, refused.as_bytes(), b"you> hello"]));
        line.keys(b"\x7f\r", &mut unsent, 80);
        assert_eq!(unsent, b"hell\n");
    }

    #[test]
    fn ctrl_d_ends_the_input_only_on_an_empty_line() {
        let mut line = InputLine::new(4096);
        type_keys(&mut line, b"a\x04");
        assert_eq!(line.typed, b"a");
        let (result, screen) = line.keys(b"\x15\x04", &mut Vec::new(), 80);
        assert_eq!((result, screen), (Keys::EndOfInput, ERASE.to_vec()));
        assert_eq!(line.redraw(80), b"", "no prompt after the end of input");
        let (result, _) = line.keys(b"\x03", &mut Vec::new(), 80);
        assert_eq!(result, Keys::Interrupt);
    }

    #[test]
    fn a_long_line_shows_the_end_that_fits_on_the_row() {
        let mut line = InputLine::new(4096);
        type_keys(&mut line, "é".repeat(30).as_bytes());
        // 20 columns: 5 for the prompt, 14 characters, the last column free
        // (and the 35 columns drawn at 80 erased from the two rows they take).
        let end = "é".repeat(14);
        assert_eq!(line.redraw(20), cat(&[ERASE, UP, b"you> ", end.as_bytes()]));
    }
}
