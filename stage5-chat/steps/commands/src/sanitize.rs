// ANCHOR: sanitize
//! What a client may send another: text with every control character made
//! harmless, so no client can drive another's terminal.

/// Append `text` to `out` with every control character but TAB made `?`,
/// so no client can drive another's terminal. That is the C0 controls
/// (ESC included) and DEL, and the C1 controls U+0080-U+009F: `C2 9B` is
/// CSI, like `ESC [`, on terminals that honour 8-bit controls, and so is a
/// lone byte 0x9B outside a valid UTF-8 sequence. Other UTF-8 passes
/// unchanged, and so do other invalid bytes.
pub fn sanitize(text: &[u8], out: &mut Vec<u8>) {
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                out.push(b'?');
            } else {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
        }
        for &b in chunk.invalid() {
            out.push(if (0x80..=0x9f).contains(&b) { b'?' } else { b });
        }
    }
}
// ANCHOR_END: sanitize

#[cfg(test)]
mod tests {
    use super::*;

    fn sanitized(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        sanitize(text, &mut out);
        out
    }

    #[test]
    fn sanitize_replaces_c0_and_del_but_not_tab() {
        assert_eq!(sanitized(b"a\x1b[2J\x07\x00\x7f\tb"), b"a?[2J???\tb");
    }

    #[test]
    fn sanitize_replaces_a_c1_control_whole_and_a_lone_c1_byte() {
        // U+009B (CSI) encoded as UTF-8 is one `?`, not two.
        assert_eq!(sanitized(b"\xc2\x9b31m"), b"?31m");
        assert_eq!(sanitized(b"\xc2\x80 \xc2\x9f"), b"? ?");
        assert_eq!(sanitized(b"\x9b31m \x80"), b"?31m ?");
    }

    #[test]
    fn sanitize_passes_other_utf8_and_other_invalid_bytes() {
        let text = "caf\u{e9} \u{a0}\u{1f600} \u{2028}".as_bytes();
        assert_eq!(sanitized(text), text);
        assert_eq!(sanitized(b"\xff\xfe \xc0\xaf"), b"\xff\xfe \xc0\xaf");
    }

    #[test]
    fn sanitize_sees_a_sequence_cut_by_the_end_of_a_line_as_invalid() {
        // The framer hands over whole lines, so a sequence the line ends
        // in the middle of is cut for good, not waiting for the next read:
        // its lead byte passes as any invalid byte, and a continuation
        // byte 0x80-0x9F, in this line or starting the next, is a lone C1.
        assert_eq!(sanitized(b"caf\xc3"), b"caf\xc3");
        assert_eq!(sanitized(b"x\xc2"), b"x\xc2");
        assert_eq!(sanitized(b"\xe2\x82"), b"\xe2?");
        assert_eq!(sanitized(b"\x9b31m"), b"?31m");
    }
}
