//! The crate a reader starts a stage from: the stage it grows from, with
//! every function the stage's diff changes or removes emptied to `todo!()`,
//! and a comment above everything else the diff touches, each naming the
//! chapter's section that explains the change.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bookgen::Stage;

use crate::chapter::Chapter;
use crate::materialise::{CrateFile, stage_files, targets};
use crate::source::{self, Item, Kind};

/// What one part of the diff does to the old file: the old lines it
/// deletes, and where it inserts lines (before old line `n`), with the
/// items those insertions declare.
#[derive(Debug, Default)]
struct Touches {
    deleted: Vec<usize>,
    inserted: Vec<usize>,
    /// `(before old line, "fn flush")` for each item the part adds.
    adds: Vec<(usize, String)>,
}

/// Read a part's fragment: `@@ -a,b +c,d @@` lines, then its lines.
fn touches(fragment: &str) -> Touches {
    let mut out = Touches::default();
    let mut old = 0usize;
    for line in fragment.lines() {
        if let Some(header) = line.strip_prefix("@@ -") {
            let range = header.split(' ').next().unwrap_or_default();
            let (start, len) = range.split_once(',').unwrap_or((range, "1"));
            let start: usize = start.parse().unwrap_or(1);
            // An empty range names the line before it.
            old = if len == "0" {
                start
            } else {
                start.saturating_sub(1)
            };
            continue;
        }
        match line.as_bytes().first() {
            Some(b' ') => old += 1,
            Some(b'-') => {
                out.deleted.push(old);
                old += 1;
            }
            Some(b'+') => {
                out.inserted.push(old);
                let text = &line[1..];
                let indent = text.len() - text.trim_start().len();
                if indent == 0
                    && let Some((name, decl)) = bookgen::hunks::item_decl(text)
                {
                    let what = match name.strip_prefix("impl-") {
                        Some(ty) => format!("impl {ty}"),
                        None => format!("{} {name}", keyword(&decl)),
                    };
                    out.adds.push((old, what));
                }
            }
            _ => {}
        }
    }
    out
}

/// The keyword that says what a declaration declares: `fn`, `struct`.
fn keyword(decl: &str) -> &'static str {
    const WORDS: [&str; 11] = [
        "fn",
        "struct",
        "enum",
        "const",
        "static",
        "type",
        "trait",
        "impl",
        "mod",
        "use",
        "macro_rules!",
    ];
    decl.split(|c: char| c.is_whitespace() || c == '<')
        .find_map(|w| WORDS.iter().find(|k| **k == w).copied())
        .unwrap_or("item")
}

/// The files a reader starts stage `stage` from.
pub fn start_files(root: &Path, stage: &Stage) -> Result<Vec<CrateFile>> {
    let Some(spec) = stage.diff else {
        bail!(
            "stage {} grows from no earlier stage: its chapter builds it from nothing, so there is nothing to start from. \
             Write it in a crate of your own and run `workbook check {}` against it",
            stage.name,
            stage.name
        );
    };
    let base = bookgen::stage(spec.base).context("the base stage is not in STAGES")?;
    let mut files = stage_files(root, stage, base)?;
    let diff = bookgen::stage_diff(root, stage, bookgen::is_reworked(stage.name))?
        .with_context(|| format!("stage {} or its base has no crate yet", stage.name))?;
    let chapter = Chapter::of(root, stage.name);
    let who = format!("Stage {}", stage.name);

    for file_diff in &diff.files {
        let mut lines = file_diff.header.lines();
        let old = lines.next().and_then(|l| l.strip_prefix("--- "));
        let new = lines.next().and_then(|l| l.strip_prefix("+++ "));
        let (Some(old), Some(new)) = (old, new) else {
            continue;
        };
        let Some(file) = files
            .iter_mut()
            .find(|f| f.real.strip_prefix(root).is_ok_and(|p| p == Path::new(old)))
        else {
            continue; // a file new in this stage: nothing of the base to stub
        };
        let new_names: Vec<String> = std::fs::read_to_string(root.join(new))
            .map(|t| flatten(&source::items(&bookgen::strip_anchors(&t))))
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.name)
            .collect();
        let parts: Vec<(String, Touches)> = file_diff
            .parts
            .iter()
            .map(|p| {
                let section = chapter
                    .section_of_part(stage.name, &p.name)
                    .unwrap_or_else(|| "The code, change by change".to_string());
                (section, touches(&p.text))
            })
            .collect();
        file.text = stub_file(&file.text, &parts, &new_names, &who, &chapter);
    }

    // The stubs leave code unused until the reader writes them: say so
    // once per crate root instead of in a screen of warnings.
    let (_, bins) = targets(root, stage)?;
    let roots: Vec<&str> = bins
        .iter()
        .map(|b| b.path.as_str())
        .chain(["src/lib.rs"])
        .collect();
    for file in files
        .iter_mut()
        .filter(|f| roots.contains(&f.path.as_str()))
    {
        let lead: usize = file
            .text
            .split_inclusive('\n')
            .take_while(|l| l.trim_start().starts_with("//") || l.trim().is_empty())
            .map(str::len)
            .sum();
        file.text.insert_str(
            lead,
            "// Until every `todo!()` is written, some code is unused: delete the line below then.\n#![allow(unused)]\n\n",
        );
    }

    // A program the stage adds has no file in the base: an empty `main`.
    for bin in bins {
        if files.iter().any(|f| f.path == bin.path) {
            continue;
        }
        files.push(CrateFile {
            path: bin.path.clone(),
            real: root.join(stage.dir).join(&bin.path),
            text: format!(
                "//! {who} adds this program, `{}`: {} shows it.\n\nfn main() {{\n    todo!()\n}}\n",
                bin.name, chapter.cited
            ),
        });
    }
    Ok(files)
}

/// Items and the methods of their blocks, in one list.
fn flatten(items: &[Item]) -> Vec<Item> {
    let mut out = Vec::new();
    for item in items {
        out.push(item.clone());
        out.extend(flatten(&item.children));
    }
    out
}

/// One edit of a file: replace `range` by `with` (an insertion when the
/// range is empty).
struct Edit {
    range: std::ops::Range<usize>,
    with: String,
}

/// The file with its changed functions emptied and its other changed items
/// marked, each with the sections that explain the change.
fn stub_file(
    text: &str,
    parts: &[(String, Touches)],
    new_names: &[String],
    who: &str,
    chapter: &Chapter,
) -> String {
    let starts = source::line_starts(text);
    let items = source::items(text);
    let mut edits: Vec<Edit> = Vec::new();
    let sections_for = |first: usize, last: usize, skip: &[(usize, usize)]| -> Vec<&str> {
        let mut found: Vec<&str> = Vec::new();
        for (section, t) in parts {
            // Lines of the item that belong to a method are the method's.
            let own = |l: usize| !skip.iter().any(|&(a, b)| (a..=b).contains(&l));
            let hit = t
                .deleted
                .iter()
                .any(|&l| (first..=last).contains(&l) && own(l))
                || t.inserted
                    .iter()
                    .any(|&l| l > first && l <= last && own(l) && own(l.saturating_sub(1)));
            if hit && !found.contains(&section.as_str()) {
                found.push(section);
            }
        }
        found
    };
    let cite = |sections: &[&str]| {
        sections
            .iter()
            .map(|s| chapter.cite(s))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let indent_of = |line: usize| {
        let l = &text[starts[line]..starts[line + 1]];
        l[..l.len() - l.trim_start().len()].to_string()
    };
    let mut covered: Vec<(usize, usize)> = Vec::new();
    let mut visit = |item: &Item, edits: &mut Vec<Edit>| {
        let methods: Vec<(usize, usize)> = item
            .children
            .iter()
            .map(|c| (c.first_line, c.last_line))
            .collect();
        let sections = sections_for(item.first_line, item.last_line, &methods);
        covered.push((item.first_line, item.last_line));
        if sections.is_empty() {
            return;
        }
        let indent = indent_of(item.decl_line);
        let verb = if new_names.contains(&item.name) {
            "changes"
        } else {
            "replaces"
        };
        let returns_impl = item
            .signature
            .split_once("->")
            .is_some_and(|(_, ret)| ret.contains("impl "));
        match (&item.body, item.kind, returns_impl) {
            (Some(body), Kind::Fn, false) => edits.push(Edit {
                range: body.clone(),
                with: format!(
                    "{{\n{indent}    // {who} {verb} this function: {}.\n{indent}    todo!()\n{indent}}}",
                    cite(&sections)
                ),
            }),
            (_, kind, _) => {
                let what = match kind {
                    Kind::Fn => "this function (its body is kept: `todo!()` cannot stand for an `impl Trait`)".to_string(),
                    _ => format!("this {}", keyword(&item.signature)),
                };
                let at = starts[item.first_line];
                edits.push(Edit {
                    range: at..at,
                    with: format!("{indent}// {who} {verb} {what}: {}.\n", cite(&sections)),
                });
            }
        }
    };
    for item in &items {
        visit(item, &mut edits);
        for child in &item.children {
            visit(child, &mut edits);
        }
    }

    // What the parts change above the first item (the module's comment),
    // and the items they add between the base's items.
    let first_item = items.first().map_or(starts.len(), |i| i.first_line);
    let top = if first_item > 0 {
        sections_for(0, first_item - 1, &[])
    } else {
        Vec::new()
    };
    let mut adds: BTreeMap<usize, (Vec<String>, Vec<&str>)> = BTreeMap::new();
    for (section, t) in parts {
        for (before, what) in &t.adds {
            // Added inside an item the reader rewrites: said above that item.
            let at = covered
                .iter()
                .find(|&&(a, b)| *before > a && *before <= b)
                .map_or(*before, |&(a, _)| a);
            let entry = adds.entry(at).or_default();
            if !entry.0.contains(what) {
                entry.0.push(what.clone());
            }
            if !entry.1.contains(&section.as_str()) {
                entry.1.push(section);
            }
        }
    }
    for (before, (what, sections)) in adds {
        let at = starts[before.min(starts.len() - 1)];
        let names: Vec<String> = what.iter().map(|w| format!("`{w}`")).collect();
        // Before the comments on the item that follows.
        edits.insert(
            0,
            Edit {
                range: at..at,
                with: format!(
                    "// {who} adds {} here: {}.\n",
                    names.join(", "),
                    cite(&sections)
                ),
            },
        );
    }
    if !top.is_empty() {
        edits.push(Edit {
            range: 0..0,
            with: format!("// {who} changes the top of this file: {}.\n", cite(&top)),
        });
    }

    // From the end, so earlier offsets stay valid; insertions at one place
    // keep the order they were made in.
    edits.sort_by_key(|e| std::cmp::Reverse(e.range.start));
    let mut out = text.to_string();
    let mut i = 0;
    while i < edits.len() {
        let mut j = i;
        let mut with = String::new();
        while j < edits.len() && edits[j].range.start == edits[i].range.start {
            with.push_str(&edits[j].with);
            j += 1;
        }
        let end = edits[i..j]
            .iter()
            .map(|e| e.range.end)
            .max()
            .unwrap_or(edits[i].range.end);
        out.replace_range(edits[i].range.start..end, &with);
        i = j;
    }
    out
}
