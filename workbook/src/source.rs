//! Rust source read just enough to find its items and their bodies: where
//! each item starts (its doc comment and attributes), where it ends, and the
//! braces of a function's body, with strings, raw strings, character
//! literals and comments never taken for code.

use std::ops::Range;

/// `text` with every comment and every string or character literal replaced
/// by spaces (newlines kept), so the same byte offsets hold only code:
/// a brace in a string or a comment is no brace.
pub fn blank(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = bytes.to_vec();
    let wipe = |range: Range<usize>, out: &mut Vec<u8>| {
        for b in &mut out[range] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        if rest.starts_with(b"//") {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |n| i + n);
            wipe(i..end, &mut out);
            i = end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest in Rust.
            let (mut depth, mut j) = (0usize, i);
            while j < bytes.len() {
                if bytes[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if bytes[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            wipe(i..j, &mut out);
            i = j;
        } else if let Some(end) = raw_string_end(bytes, i, ident) {
            wipe(i..end, &mut out);
            i = end;
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(bytes.len());
            wipe(i..end, &mut out);
            i = end;
        } else if bytes[i] == b'\'' {
            // A character literal ('a', '\n', '\u{1F600}', 'é') or a
            // lifetime or label ('a, 'static), which has no closing quote
            // right after its first character.
            if rest.get(1) == Some(&b'\\') {
                // Past the backslash and the character it escapes (`'\''`).
                let mut j = i + 3;
                while j < bytes.len() && bytes[j] != b'\'' {
                    j += 1;
                }
                let end = (j + 1).min(bytes.len());
                wipe(i..end, &mut out);
                i = end;
            } else {
                let width = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                if width > 0 && bytes.get(i + 1 + width) == Some(&b'\'') {
                    wipe(i..i + 2 + width, &mut out);
                    i += 2 + width;
                } else {
                    i += 1;
                }
            }
        } else if ident(bytes[i]) {
            // Skip the whole word, so the `r` of `for` or the `b` of `sub`
            // never starts a literal.
            let mut j = i;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            // A literal's prefix (`b"`, `c"`, `b'`) leaves the literal
            // itself to the next turn; raw strings were caught above.
            i = j;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("only ASCII spaces were written over whole characters")
}

/// Where the raw string starting at `i` ends (`r"..."`, `r#"..."#`,
/// `br##"..."##`, `cr"..."`), if one starts there.
fn raw_string_end(bytes: &[u8], i: usize, ident: impl Fn(u8) -> bool) -> Option<usize> {
    if i > 0 && ident(bytes[i - 1]) {
        return None;
    }
    let mut j = i;
    if matches!(bytes.get(j), Some(b'b' | b'c')) {
        j += 1;
    }
    if bytes.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = bytes[j..].iter().take_while(|&&b| b == b'#').count();
    j += hashes;
    if bytes.get(j) != Some(&b'"') {
        return None;
    }
    j += 1;
    let close: Vec<u8> = std::iter::once(b'"')
        .chain(std::iter::repeat_n(b'#', hashes))
        .collect();
    let end = bytes[j..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(bytes.len(), |n| j + n + close.len());
    Some(end)
}

/// What an item is, as far as stubbing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A free function or a method: its body can become `todo!()`.
    Fn,
    /// An `impl` or `trait` block, whose methods are items of their own.
    Block,
    /// Anything else: struct, enum, const, static, type, `use`, macro.
    Other,
}

/// One item of a file.
#[derive(Debug, Clone)]
pub struct Item {
    pub kind: Kind,
    /// `run`, `impl-Closed`, `use`.
    pub name: String,
    /// Its first line (its doc comment or attributes), 0-based.
    pub first_line: usize,
    /// The line that declares it.
    pub decl_line: usize,
    /// Its last line.
    pub last_line: usize,
    /// The signature, from the declaration to the body's brace.
    pub signature: String,
    /// A function's body, from `{` to `}` inclusive, as byte offsets.
    pub body: Option<Range<usize>>,
    /// The methods of an `impl` or `trait` block.
    pub children: Vec<Item>,
}

/// The byte offset at which each line starts, and one past the end.
pub fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    if *starts.last().unwrap_or(&0) != text.len() {
        starts.push(text.len());
    }
    starts
}

/// The items of a whole file, in order.
pub fn items(text: &str) -> Vec<Item> {
    let code = blank(text);
    let starts = line_starts(text);
    items_in(text, &code, &starts, 0..text.len())
}

/// The line a byte offset is on.
fn line_of(starts: &[usize], at: usize) -> usize {
    starts.partition_point(|&s| s <= at).saturating_sub(1)
}

/// The items between two byte offsets, at one level of nesting.
fn items_in(text: &str, code: &str, starts: &[usize], range: Range<usize>) -> Vec<Item> {
    let mut found = Vec::new();
    let mut line = line_of(starts, range.start);
    let last = line_of(starts, range.end.saturating_sub(1).max(range.start));
    while line <= last && line + 1 < starts.len() {
        let from = starts[line].max(range.start);
        let to = starts[line + 1].min(range.end);
        let code_line = &code[from..to];
        let Some(col) = code_line.find(|c: char| !c.is_whitespace()) else {
            line += 1;
            continue;
        };
        let at = from + col;
        // The item runs to its `;` or to the brace that closes its body.
        let Some((end, open)) = statement_end(code, at, range.end) else {
            break;
        };
        let end_line = line_of(starts, end.saturating_sub(1));
        let original = &text[starts[line]..starts[line + 1]];
        if let Some((kind, name)) = declares(original) {
            let signature = code[at..open.unwrap_or(end)].to_string();
            let signature = signature.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut first_line = line;
            while first_line > 0 {
                let above = text[starts[first_line - 1]..starts[first_line]].trim_start();
                let lead = above.starts_with("///")
                    || above.starts_with("#[")
                    || (above.starts_with("//") && !above.starts_with("//!"));
                if !lead || first_line - 1 < line_of(starts, range.start) {
                    break;
                }
                first_line -= 1;
            }
            let body = open.filter(|_| kind == Kind::Fn).map(|o| o..end);
            let children = match (kind, open) {
                (Kind::Block, Some(o)) => items_in(text, code, starts, o + 1..end - 1),
                _ => Vec::new(),
            };
            // An item also ends the line its `}` or `;` is on.
            found.push(Item {
                kind,
                name,
                first_line,
                decl_line: line,
                last_line: end_line,
                signature,
                body,
                children,
            });
        }
        line = end_line + 1;
    }
    found
}

/// The end of the item or statement that starts at `at` (one past its `;`
/// or its closing `}`), and where its body's `{` is, if it has one.
fn statement_end(code: &str, at: usize, limit: usize) -> Option<(usize, Option<usize>)> {
    let bytes = code.as_bytes();
    let word = code[at..limit]
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .find(|w| !["pub", "crate", "super", "unsafe", "async", "extern", ""].contains(w))
        .unwrap_or("");
    // A `const` or `static` may hold a struct literal: only its `;` ends it.
    let semicolon_only = matches!(word, "const" | "static" | "use" | "type" | "let");
    let mut depth = 0i32;
    let mut open = None;
    for (i, &b) in bytes.iter().enumerate().take(limit).skip(at) {
        match b {
            b'(' | b'[' => depth += 1,
            b'{' => {
                if depth == 0 && open.is_none() && !semicolon_only {
                    open = Some(i);
                }
                depth += 1;
            }
            b')' | b']' => depth -= 1,
            b'}' => {
                depth -= 1;
                if depth == 0 && open.is_some() {
                    return Some((i + 1, open));
                }
                if depth < 0 {
                    return Some((i, None));
                }
            }
            b';' if depth == 0 => return Some((i + 1, None)),
            _ => {}
        }
    }
    (at < limit).then_some((limit, open))
}

/// What the line declares, if it opens an item.
fn declares(line: &str) -> Option<(Kind, String)> {
    let t = line.trim_start();
    let bare = ["pub(crate) ", "pub(super) ", "pub "]
        .iter()
        .find_map(|p| t.strip_prefix(p))
        .unwrap_or(t);
    if bare.starts_with("use ") || bare.starts_with("extern crate ") {
        return Some((Kind::Other, "use".to_string()));
    }
    let (name, _) = bookgen::hunks::item_decl(line)?;
    let kind = if name.starts_with("impl-") || bare.starts_with("trait ") {
        Kind::Block
    } else if bare
        .split("fn ")
        .next()
        .is_some_and(|before| before.split_whitespace().all(is_fn_qualifier))
        && bare.contains("fn ")
    {
        Kind::Fn
    } else {
        Kind::Other
    };
    Some((kind, name))
}

fn is_fn_qualifier(word: &str) -> bool {
    matches!(word, "const" | "async" | "unsafe" | "extern" | "\"C\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blanks_strings_chars_and_comments_but_not_lifetimes() {
        let text = "fn a<'x>(s: &'x str) -> char { let _ = \"}\\\"\"; let _ = r#\"{\"#; '\\''; '{' } // }\n/* { /* } */ */";
        let code = blank(text);
        assert_eq!(code.len(), text.len());
        assert_eq!(code.matches('{').count(), 1, "{code}");
        assert_eq!(code.matches('}').count(), 1, "{code}");
        assert!(code.contains("<'x>"), "{code}");
    }

    #[test]
    fn finds_functions_methods_and_their_bodies() {
        let text = "\
//! doc
use std::fmt;

/// The usage.
const USAGE: &str = \"{\";

/// A thing.
struct A {
    b: u8,
}

impl fmt::Display for A {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, \"}}\")
    }
}

fn main() {
    let c = '}';
}
";
        let found = items(text);
        let names: Vec<&str> = found.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["use", "USAGE", "A", "impl-A", "main"]);
        assert_eq!(found[1].first_line, 3);
        assert_eq!(found[2].last_line, 9);
        let main = &found[4];
        assert_eq!(main.kind, Kind::Fn);
        assert_eq!(&text[main.body.clone().unwrap()], "{\n    let c = '}';\n}");
        let fmt = &found[3].children[0];
        assert_eq!(fmt.name, "fmt");
        assert_eq!(fmt.kind, Kind::Fn);
        assert!(
            fmt.signature.ends_with("-> fmt::Result"),
            "{}",
            fmt.signature
        );
    }
}
