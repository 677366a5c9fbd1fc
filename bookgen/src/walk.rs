//! The checks of a chapter walked through hunk by hunk: every part of its
//! diff shown once and in order, every new file shown as a listing at its
//! anchors, every anchor of the crates used by some chapter, and no long
//! stretch of code without prose.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{MAX_CODE_STRETCH, REFRESH, STAGES, chapter_path, is_present, stage_diff};

/// Every `{{#include FILE:ANCHOR}}` of a page, in order: `(FILE, ANCHOR)`,
/// the anchor `None` for a whole file (or a line range).
pub fn includes(text: &str) -> Vec<(String, Option<String>)> {
    text.match_indices("{{#include ")
        .filter_map(|(at, _)| {
            let rest = &text[at + "{{#include ".len()..];
            let target = rest[..rest.find("}}")?].trim();
            Some(match target.split_once(':') {
                Some((file, anchor)) if !anchor.starts_with(|c: char| c.is_ascii_digit()) => {
                    (file.to_string(), Some(anchor.to_string()))
                }
                Some((file, _)) => (file.to_string(), None),
                None => (target.to_string(), None),
            })
        })
        .collect()
}

/// The problems with the order of `shown` (what a chapter includes, in
/// order) against `wanted` (every part, in order): each part missing,
/// repeated, or out of order, one sentence each. `what` names the parts'
/// file and `include` writes the line that shows a part.
fn sequence_problems(
    chapter: &str,
    what: &str,
    wanted: &[&str],
    shown: &[&str],
    include: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, part) in wanted.iter().enumerate() {
        let count = shown.iter().filter(|s| *s == part).count();
        if count == 0 {
            let after = match i {
                0 => "before every other part".to_string(),
                _ => format!("after part {}", wanted[i - 1]),
            };
            problems.push(format!(
                "{chapter}: part {part} of {what} is not shown: include it where the prose explains it, {after}:\n    {}",
                include(part)
            ));
        } else if count > 1 {
            problems.push(format!(
                "{chapter}: part {part} of {what} is shown {count} times: keep the one where the prose explains it"
            ));
        }
    }
    // Among the parts shown once, the chapter's order must be the diff's.
    let once: Vec<&str> = shown
        .iter()
        .copied()
        .filter(|s| wanted.contains(s) && shown.iter().filter(|t| *t == s).count() == 1)
        .collect();
    let position = |p: &str| wanted.iter().position(|w| *w == p);
    for pair in once.windows(2) {
        if position(pair[0]) > position(pair[1]) {
            problems.push(format!(
                "{chapter}: part {} of {what} comes before part {} but follows it in the code: move it after {}",
                pair[1], pair[0], pair[0]
            ));
        }
    }
    problems
}

/// How much of a new file its chapter must show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every line but the unit tests, each once: the regions cover the file
    /// down to its `#[cfg(test)]` module, which `cargo test` checks and
    /// the chapter leaves out.
    Whole,
    /// Only the regions, each once and in order: for a program too large to
    /// show whole (the tester), whose chapter picks what it explains.
    Excerpts,
}

/// The top-level `// ANCHOR:` regions of a source file, in order, and what
/// is wrong with them for a listing: a region inside another, or, for a
/// [`Listing::Whole`], a non-blank line outside every region above the
/// unit tests.
pub fn listing_regions(source: &str, listing: Listing) -> (Vec<String>, Vec<String>) {
    let mut regions = Vec::new();
    let mut problems = Vec::new();
    let mut open: Option<String> = None;
    let mut tests = false;
    for (n, line) in source.lines().enumerate() {
        let t = line.trim_start();
        if open.is_none() && line == "#[cfg(test)]" {
            tests = true;
        }
        if let Some(name) = t.strip_prefix("// ANCHOR: ") {
            match &open {
                Some(outer) => problems.push(format!(
                    "line {}: region {} is inside region {outer}: a listing shows each line once, so regions must not nest",
                    n + 1,
                    name.trim()
                )),
                None => {
                    open = Some(name.trim().to_string());
                    regions.push(name.trim().to_string());
                }
            }
        } else if let Some(name) = t.strip_prefix("// ANCHOR_END: ") {
            if open.as_deref() == Some(name.trim()) {
                open = None;
            }
        } else if open.is_none() && !t.is_empty() && !tests && listing == Listing::Whole {
            problems.push(format!(
                "line {} is in no region: put it inside an `// ANCHOR:` region so the chapter shows it",
                n + 1
            ));
        }
    }
    (regions, problems)
}

/// What is wrong with the reworked chapters (`reworked`, stage names): one
/// sentence per problem, naming the chapter, the part and what to do.
pub fn check_walkthrough(root: &Path, reworked: &[&str]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for stage in STAGES
        .iter()
        .filter(|s| reworked.contains(&s.name) && is_present(root, s))
    {
        let path = chapter_path(root, stage.name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // check_chapters reports a missing chapter
        };
        let chapter = format!("stage{}.md", stage.name);
        let Some(diff) = stage_diff(root, stage, true)? else {
            continue;
        };
        let shown = includes(&text);

        if stage.diff.is_some() && !diff.files.is_empty() {
            let file = format!("diffs/stage{}.diff", stage.name);
            let parts = diff.part_names();
            let of_diff: Vec<&str> = shown
                .iter()
                .filter(|(f, _)| *f == file)
                .filter_map(|(_, a)| a.as_deref())
                .filter(|a| *a != "all" && !diff.files.iter().any(|f| f.stem == *a))
                .collect();
            let include = |part: &str| {
                format!(
                    "```diff\n    {}\n    ```",
                    crate::part_include(stage.name, part)
                )
            };
            problems.extend(sequence_problems(
                &chapter, &file, &parts, &of_diff, &include,
            ));
            if shown.iter().any(|(f, a)| *f == file && a.is_none()) {
                problems.push(format!(
                    "{chapter}: includes {file} whole, with its anchor lines: show its parts one by one and the whole diff through its anchor `all`"
                ));
            }
            problems.extend(folded_whole_diff(&chapter, &text, stage.name));
        }

        for new in &diff.new_files {
            let source_path = root.join(stage.dir).join(new);
            let source = fs::read_to_string(&source_path)
                .with_context(|| format!("cannot read {}", source_path.display()))?;
            let shown_file = format!("{}/{new}", stage.dir);
            let listing = if crate::EXCERPTS.contains(&stage.name) {
                Listing::Excerpts
            } else {
                Listing::Whole
            };
            let (regions, region_problems) = listing_regions(&source, listing);
            for problem in region_problems {
                problems.push(format!("{shown_file}, a new file of {chapter}: {problem}"));
            }
            if regions.is_empty() {
                continue;
            }
            let target = format!("../../{shown_file}");
            let of_file: Vec<&str> = shown
                .iter()
                .filter(|(f, _)| *f == target)
                .filter_map(|(_, a)| a.as_deref())
                .collect();
            let wanted: Vec<&str> = regions.iter().map(String::as_str).collect();
            let include = |region: &str| {
                format!("```rust,noplayground\n    {{{{#include {target}:{region}}}}}\n    ```")
            };
            problems.extend(sequence_problems(
                &chapter,
                &format!("the new file {shown_file}"),
                &wanted,
                &of_file,
                &include,
            ));
        }
    }
    if !problems.is_empty() {
        problems.push(format!(
            "(after changing the code, run `{REFRESH}` so the parts' names are current)"
        ));
    }
    Ok(problems)
}

/// The whole diff, through its anchor `all`, once, folded in a
/// `<details>` block, so a reader can see it at a glance without reading
/// every line twice.
fn folded_whole_diff(chapter: &str, text: &str, name: &str) -> Vec<String> {
    let include = crate::part_include(name, "all");
    let fold = format!(
        "<details>\n<summary>The whole diff</summary>\n\n```diff\n{include}\n```\n\n</details>"
    );
    let at: Vec<usize> = text.match_indices(&include).map(|(i, _)| i).collect();
    match at[..] {
        [] => vec![format!(
            "{chapter}: the whole diff is not shown: fold it at the end of the walk-through:\n{fold}"
        )],
        [i] => {
            let before = &text[..i];
            let inside = before.rfind("<details>") > before.rfind("</details>")
                && text[i..].contains("</details>");
            if inside {
                Vec::new()
            } else {
                vec![format!(
                    "{chapter}: the whole diff is shown unfolded, so every line appears twice: fold it:\n{fold}"
                )]
            }
        }
        _ => vec![format!(
            "{chapter}: the whole diff is shown {} times: keep one, folded",
            at.len()
        )],
    }
}

/// Every `// ANCHOR: name` in the stage crates' `src/` that no page of the
/// book includes: one sentence each.
pub fn check_anchors(root: &Path) -> Result<Vec<String>> {
    let book_src = root.join("book/src");
    let mut used: BTreeSet<(PathBuf, String)> = BTreeSet::new();
    let mut pages = Vec::new();
    crate::markdown_files(&book_src, &mut pages)?;
    for page in &pages {
        let text = fs::read_to_string(page)?;
        let dir = page.parent().unwrap_or(&book_src);
        for (file, anchor) in includes(&text) {
            if let (Ok(path), Some(anchor)) = (fs::canonicalize(dir.join(&file)), anchor) {
                used.insert((path, anchor));
            }
        }
    }
    let mut problems = Vec::new();
    for stage in STAGES.iter().filter(|s| is_present(root, s)) {
        for file in crate::source_files(&root.join(stage.dir))? {
            let path = root.join(stage.dir).join(&file);
            let source = fs::read_to_string(&path)?;
            let canonical = fs::canonicalize(&path)?;
            for (n, line) in source.lines().enumerate() {
                let Some(name) = line.trim_start().strip_prefix("// ANCHOR: ") else {
                    continue;
                };
                let name = name.trim();
                if !used.contains(&(canonical.clone(), name.to_string())) {
                    problems.push(format!(
                        "{}/{file}:{}: anchor {name} is included by no chapter: include it where a chapter explains that code, or delete its `// ANCHOR: {name}` and `// ANCHOR_END: {name}` lines",
                        stage.dir,
                        n + 1
                    ));
                }
            }
        }
    }
    Ok(problems)
}

/// The longest run of code in a built page without prose between.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stretch {
    /// Its code lines, over every block of the run.
    pub lines: usize,
    /// The first line of its first block, to find it by.
    pub starts_with: String,
}

/// The longest stretch of code in an mdBook page's HTML: the lines of
/// consecutive `<pre>` blocks, ended by a paragraph, list item, heading or
/// table cell with at least [`PROSE`] characters of text. Blocks inside
/// `<details>` are folded away and do not count.
pub fn longest_stretch(html: &str) -> Stretch {
    let main = match (html.find("<main"), html.rfind("</main>")) {
        (Some(start), Some(end)) if start < end => &html[start..end],
        _ => html,
    };
    let mut best = Stretch::default();
    let mut run = Stretch::default();
    let mut rest = main;
    let mut folded = 0usize;
    while let Some(at) = rest.find('<') {
        rest = &rest[at..];
        let tag_end = rest.find('>').map_or(rest.len(), |e| e + 1);
        let tag = &rest[..tag_end];
        let name: String = tag[1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect();
        match name.as_str() {
            "details" => folded += 1,
            "/details" => folded = folded.saturating_sub(1),
            "pre" => {
                let end = rest.find("</pre>").unwrap_or(rest.len());
                if folded == 0 {
                    let code = crate::visible_text(&rest[tag_end..end]);
                    let code = code.trim_end_matches('\n');
                    if run.lines == 0 {
                        run.starts_with = code.lines().next().unwrap_or_default().to_string();
                    }
                    run.lines += code.lines().count();
                }
                rest = &rest[end..];
                continue;
            }
            "p" | "li" | "td" | "th" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" if folded == 0 => {
                // The element's own text: up to its end, or to a block
                // nested in it (a list inside a list item, code in it).
                let body = &rest[tag_end..];
                let stop = [
                    "</p>", "</li>", "</h", "</td>", "</th>", "<pre", "<ul", "<ol", "<li", "<p>",
                    "<div", "<table",
                ]
                .iter()
                .filter_map(|t| body.find(t))
                .min()
                .unwrap_or(body.len());
                let text = crate::visible_text(&body[..stop]);
                if text
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .count()
                    >= PROSE
                {
                    if run.lines > best.lines {
                        best = run.clone();
                    }
                    run = Stretch::default();
                }
            }
            _ => {}
        }
        rest = &rest[tag_end..];
    }
    if run.lines > best.lines {
        best = run;
    }
    best
}

/// The characters of text a paragraph needs to count as prose between two
/// code blocks: a sentence, not a label.
pub const PROSE: usize = 40;

/// A sentence for a chapter whose longest stretch is over the limit.
pub fn stretch_problem(chapter: &str, stretch: &Stretch) -> Option<String> {
    (stretch.lines > MAX_CODE_STRETCH).then(|| {
        format!(
            "{chapter}: {} code lines without prose, from the block starting {:?}; the most is {MAX_CODE_STRETCH}: explain the code between its parts",
            stretch.lines, stretch.starts_with
        )
    })
}
