//! A file's diff cut into named parts, one per hunk, so a chapter can walk
//! through the change a piece at a time.
//!
//! A part is a hunk, or the piece of a hunk that touches one item (a hunk
//! that rewrites three functions is three parts, so no part grows into a
//! wall of code). Each part is a valid unified-diff fragment that starts
//! with its own `@@` line; the text after the second `@@` names the item the
//! part changes, as `git diff` names a hunk's function.
//!
//! A part is named `STEM-ITEM` after its file's stem and the item (function,
//! struct, enum, impl, const, ...) declared at or before its first changed
//! line, in the new file when the part adds lines, else in the old one:
//! `main-accept_clients`, `main-impl-Closed`. Changes above the first item
//! (module doc, `use` lines) are `STEM-top`. A name used twice in a file gets
//! `-2`, `-3`. The names depend on the code only, so regenerating after an
//! unrelated edit keeps them.

use similar::{Algorithm, DiffTag, TextDiff};

/// Lines of unchanged context around each change, as in `diff -u`.
const CONTEXT: usize = 3;

/// One named piece of a file's diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The anchor name: `main-run`.
    pub name: String,
    /// The fragment, from its `@@` line on, every line ending in `\n`.
    pub text: String,
}

/// One line of a hunk: its tag (`' '`, `'-'`, `'+'`), its place in the old
/// and the new file (0-based; for a line missing from one side, the index of
/// the line that follows it there), and its text with its newline.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    tag: char,
    old: usize,
    new: usize,
    text: &'a str,
}

/// Cut the diff of `old` to `new` into parts named after `stem`; `join`
/// names parts to be shown together with the part after them. Empty when
/// nothing changed.
pub fn split(stem: &str, old: &str, new: &str, join: &[&str]) -> Vec<Part> {
    // Patience keeps whole functions together, which reads better than the
    // shortest edit script when a function is rewritten.
    let diff = TextDiff::configure()
        .algorithm(Algorithm::Patience)
        .diff_lines(old, new);
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let new_lines: Vec<&str> = new.split_inclusive('\n').collect();

    let mut pieces: Vec<(Item, Vec<Line>)> = Vec::new();
    for ops in diff.grouped_ops(CONTEXT) {
        let mut lines = Vec::new();
        for op in &ops {
            let (tag, o, n) = op.as_tag_tuple();
            match tag {
                DiffTag::Equal => lines.extend((0..o.len()).map(|k| Line {
                    tag: ' ',
                    old: o.start + k,
                    new: n.start + k,
                    text: old_lines[o.start + k],
                })),
                DiffTag::Delete | DiffTag::Insert | DiffTag::Replace => {
                    lines.extend(o.clone().map(|k| Line {
                        tag: '-',
                        old: k,
                        new: n.start,
                        text: old_lines[k],
                    }));
                    lines.extend(n.clone().map(|k| Line {
                        tag: '+',
                        old: o.end,
                        new: k,
                        text: new_lines[k],
                    }));
                }
            }
        }
        pieces.extend(split_hunk(&lines, &old_lines, &new_lines));
    }

    // Name each piece, `-2` for a second use of a name.
    let mut parts: Vec<Part> = Vec::new();
    for ((item, decl), lines) in &pieces {
        let base = format!("{stem}-{item}");
        let mut name = base.clone();
        let mut n = 2;
        while parts.iter().any(|p| p.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        parts.push(Part {
            name,
            text: render(lines, decl),
        });
    }

    // A part the chapter wants shown with the next one absorbs it.
    let mut joined: Vec<Part> = Vec::new();
    let mut absorb = false;
    for part in parts {
        let wants = join.contains(&part.name.as_str());
        match joined.last_mut() {
            Some(last) if absorb => last.text.push_str(&part.text),
            _ => joined.push(part),
        }
        absorb = wants;
    }
    joined
}

/// An item's name and its declaration line (`run`, `fn run(args: &Args) ->
/// Result<()>`); `("top", "")` above the first item.
type Item = (String, String);

/// Cut one hunk where the item changes: `(item, lines)` per piece.
fn split_hunk<'a>(
    lines: &[Line<'a>],
    old_lines: &[&str],
    new_lines: &[&str],
) -> Vec<(Item, Vec<Line<'a>>)> {
    // The runs of changed lines, as index ranges into `lines`.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.tag == ' ' {
            continue;
        }
        match groups.last_mut() {
            Some((_, end)) if *end == i => *end = i + 1,
            _ => groups.push((i, i + 1)),
        }
    }
    // A run of changed lines longer than a chapter may show at once
    // ([`MAX_RUN`]), which adds more than one item (a function replaced by
    // several), is cut where an added item starts (its doc comment,
    // attributes, then its declaration): as few cuts as keep each piece
    // within the bound, each as late as it can be.
    let groups: Vec<(usize, usize)> = groups
        .into_iter()
        .flat_map(|(start, end)| {
            let starts: Vec<usize> = (start + 1..end)
                .filter(|&i| starts_item(lines, i))
                .collect();
            let mut pieces = Vec::new();
            let mut from = start;
            while end - from > MAX_RUN {
                let within = starts
                    .iter()
                    .rev()
                    .find(|&&c| c > from && c - from <= MAX_RUN);
                let Some(&cut) = within.or_else(|| starts.iter().find(|&&c| c > from)) else {
                    break;
                };
                pieces.push((from, cut));
                from = cut;
            }
            pieces.push((from, end));
            pieces
        })
        .collect();
    let items: Vec<Item> = groups
        .iter()
        .map(|&(start, end)| {
            let group = &lines[start..end];
            match group.iter().find(|l| l.tag == '+') {
                Some(first) => item_at(new_lines, first.new),
                None => item_at(old_lines, group[0].old),
            }
        })
        .collect();

    // Where the context between groups `g - 1` and `g` is cut: after its
    // last blank line, so the next piece opens on code, not on a gap.
    let cut_at = |g: usize| {
        let (gap_start, gap_end) = (groups[g - 1].1, groups[g].0);
        (gap_start..gap_end)
            .rev()
            .find(|&i| lines[i].text.trim().is_empty())
            .map_or((gap_start + gap_end).div_ceil(2), |i| i + 1)
    };
    // A cut wherever the item changes; then a piece too long to read in
    // one go is cut again between two of its groups, near its middle.
    let mut cuts: Vec<usize> = (1..groups.len())
        .filter(|&g| items[g] != items[g - 1])
        .collect();
    let mut extra = Vec::new();
    let mut a = 0;
    for &b in cuts.iter().chain(std::iter::once(&groups.len())) {
        let span = Span {
            groups: groups.len(),
            lines: lines.len(),
            cut_at: &cut_at,
        };
        span.long_piece_cuts(a, b, &mut extra);
        a = b;
    }
    cuts.extend(extra);
    cuts.sort_unstable();

    let mut pieces = Vec::new();
    let mut from = 0;
    let mut item = 0;
    for g in cuts {
        let cut = cut_at(g);
        pieces.push((items[item].clone(), lines[from..cut].to_vec()));
        from = cut;
        item = g;
    }
    if !groups.is_empty() {
        pieces.push((items[item].clone(), lines[from..].to_vec()));
    }
    pieces
}

/// Whether an added item starts at `lines[i]`: an added line that opens its
/// doc comment or attributes (or, without them, declares it), right after
/// a line that is not part of the same lead.
fn starts_item(lines: &[Line], i: usize) -> bool {
    let lead = |l: &Line| {
        let t = l.text.trim_start();
        l.tag == '+' && (t.starts_with("///") || t.starts_with("#["))
    };
    if lines[i].tag != '+' || lead(&lines[i - 1]) {
        return false;
    }
    let decl = (i..lines.len()).find(|&j| !lead(&lines[j]));
    decl.is_some_and(|j| lines[j].tag == '+' && item_decl(lines[j].text).is_some())
}

/// The longest run of changed lines left whole; a chapter may show at most
/// 60 code lines without prose between them, and a part shows its `@@`
/// line and up to three lines of context too.
const MAX_RUN: usize = 56;

/// The most lines a piece of one item may have before it is cut again.
const MAX_PIECE: usize = 40;

/// What [`Span::long_piece_cuts`] needs to know of a hunk.
struct Span<'c> {
    groups: usize,
    lines: usize,
    cut_at: &'c dyn Fn(usize) -> usize,
}

impl Span<'_> {
    /// Cuts for the piece made of groups `a..b` (a cut `g` falls between
    /// groups `g - 1` and `g`), so no piece is longer than [`MAX_PIECE`]
    /// lines where a cut is possible.
    fn long_piece_cuts(&self, a: usize, b: usize, out: &mut Vec<usize>) {
        let start = if a == 0 { 0 } else { (self.cut_at)(a) };
        let stop = if b == self.groups {
            self.lines
        } else {
            (self.cut_at)(b)
        };
        if stop - start <= MAX_PIECE || b - a < 2 {
            return;
        }
        let middle = (start + stop) / 2;
        let Some(g) = (a + 1..b).min_by_key(|&g| (self.cut_at)(g).abs_diff(middle)) else {
            return;
        };
        out.push(g);
        self.long_piece_cuts(a, g, out);
        self.long_piece_cuts(g, b, out);
    }
}

/// A fragment's text: its `@@` line, then its lines.
fn render(lines: &[Line], decl: &str) -> String {
    let range = |start: usize, len: usize| match len {
        1 => format!("{}", start + 1),
        // An empty range names the line just before it.
        0 => format!("{start},0"),
        _ => format!("{},{len}", start + 1),
    };
    let first = lines[0];
    let old_len = lines.iter().filter(|l| l.tag != '+').count();
    let new_len = lines.iter().filter(|l| l.tag != '-').count();
    let mut out = format!(
        "@@ -{} +{} @@",
        range(first.old, old_len),
        range(first.new, new_len)
    );
    if !decl.is_empty() {
        out.push(' ');
        out.push_str(decl);
    }
    out.push('\n');
    for line in lines {
        out.push(line.tag);
        out.push_str(line.text);
        if !line.text.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    }
    out
}

/// The item a change at line `at` of `lines` belongs to:
/// the item that a doc comment, attribute or blank line at `at` leads to,
/// else the nearest item declared above `at` that encloses it (by
/// indentation); `top` above the first item.
fn item_at(lines: &[&str], at: usize) -> Item {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let blank = |line: &str| line.trim().is_empty();
    let at = at.min(lines.len().saturating_sub(1));
    let Some(here) = lines.get(at) else {
        return top();
    };
    // Forward over what comes before an item: its docs and attributes.
    let mut j = at;
    while let Some(line) = lines.get(j) {
        let t = line.trim_start();
        let lead =
            blank(line) || t.starts_with("#[") || (t.starts_with("//") && !t.starts_with("//!"));
        if !lead {
            break;
        }
        j += 1;
    }
    if let Some(line) = lines.get(j)
        && let Some(item) = item_decl(line)
        && (blank(here) || indent(line) <= indent(here))
    {
        return item;
    }
    // Backward to the enclosing item: one indented less, or, for a line
    // at the margin or a closing brace, the nearest one at its level.
    let level = indent(here);
    let t = here.trim_start();
    let same_level = level == 0 || t.starts_with(['}', ')', ']']);
    for line in lines[..=at].iter().rev() {
        if blank(line) {
            continue;
        }
        if let Some(item) = item_decl(line)
            && (indent(line) < level || (same_level && indent(line) <= level))
        {
            return item;
        }
    }
    top()
}

fn top() -> Item {
    ("top".to_string(), String::new())
}

/// The item `line` declares, if any: `fn run(args: &Args) -> Result<()> {`
/// is `run`, with that line, trimmed and without its brace.
pub fn item_decl(line: &str) -> Option<Item> {
    let decl = line.trim().trim_end_matches('{').trim_end();
    let mut rest = decl;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "async ",
        "unsafe ",
        "extern \"C\" ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    if let Some(after) = rest.strip_prefix("const fn ") {
        rest = after.trim_start();
        return ident(rest).map(|name| (name.to_string(), decl.to_string()));
    }
    for keyword in [
        "fn ", "struct ", "enum ", "trait ", "mod ", "const ", "static ", "type ", "union ",
    ] {
        if let Some(after) = rest.strip_prefix(keyword) {
            return ident(after).map(|name| (name.to_string(), decl.to_string()));
        }
    }
    if let Some(after) = rest.strip_prefix("macro_rules! ") {
        return ident(after).map(|name| (name.to_string(), decl.to_string()));
    }
    if rest.starts_with("impl ") || rest.starts_with("impl<") {
        // `impl<T> fmt::Display for Closed<T> where ...`: the type after `for`.
        let mut body = &rest["impl".len()..];
        if body.starts_with('<') {
            let mut depth = 0;
            let end = body
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '<' => 1,
                        '>' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(body.len(), |(i, _)| i + 1);
            body = &body[end..];
        }
        let body = body.split(" where").next().unwrap_or(body).trim();
        let ty = body.rsplit(" for ").next().unwrap_or(body);
        let ty = ty.split('<').next().unwrap_or(ty);
        let ty = ty.rsplit("::").next().unwrap_or(ty).trim_start_matches('&');
        return ident(ty).map(|name| (format!("impl-{name}"), decl.to_string()));
    }
    None
}

/// The identifier at the start of `text`.
fn ident(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// `old` with the parts applied in order: the new file, if the parts are
/// well-formed fragments of a diff of `old`. A reader's snippets add up to
/// the chapter's code exactly when this returns the new file.
pub fn apply(old: &str, parts: &[&str]) -> Result<String, String> {
    let old_lines: Vec<&str> = old.split_inclusive('\n').collect();
    let mut out = String::new();
    let mut next = 0; // the first old line not yet copied or consumed
    for text in parts {
        for line in text.split_inclusive('\n') {
            if let Some(header) = line.strip_prefix("@@ -") {
                let range = header.split(' ').next().unwrap_or_default();
                let (start, len) = range.split_once(',').unwrap_or((range, "1"));
                let start: usize = start.parse().map_err(|_| format!("bad header {line:?}"))?;
                let len: usize = len.parse().map_err(|_| format!("bad header {line:?}"))?;
                // An empty range names the line before it.
                let first = if len == 0 { start } else { start - 1 };
                if first < next || first > old_lines.len() {
                    return Err(format!("{line:?} overlaps the part before it"));
                }
                old_lines[next..first].iter().for_each(|l| out.push_str(l));
                next = first;
                continue;
            }
            if line.starts_with('\\') {
                // `\ No newline at end of file`: the line before has none.
                if out.ends_with('\n') {
                    out.pop();
                }
                continue;
            }
            let (tag, body) = line.split_at(1);
            match tag {
                " " | "-" => {
                    let Some(have) = old_lines.get(next) else {
                        return Err(format!("{line:?} is past the end of the old file"));
                    };
                    if have.trim_end_matches('\n') != body.trim_end_matches('\n') {
                        return Err(format!("{line:?} is not line {} of the old file", next + 1));
                    }
                    if tag == " " {
                        out.push_str(body);
                    }
                    next += 1;
                }
                "+" => out.push_str(body),
                _ => return Err(format!("{line:?} is no diff line")),
            }
        }
    }
    old_lines[next..].iter().for_each(|l| out.push_str(l));
    Ok(out)
}
