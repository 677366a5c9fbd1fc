//! Where a chapter explains something: the section above a part of its
//! diff, the section that names a check, and the paragraph about a check.

use std::path::Path;

/// A chapter's text and the path it is cited by (`book/src/stage4.md`).
pub struct Chapter {
    pub cited: String,
    pub text: String,
}

impl Chapter {
    /// The chapter of stage `name`, or an empty one when it has none yet.
    pub fn of(root: &Path, name: &str) -> Chapter {
        let cited = format!("book/src/stage{name}.md");
        let text = std::fs::read_to_string(root.join(&cited)).unwrap_or_default();
        Chapter { cited, text }
    }

    /// `book/src/stage4.md, "Serving a connection"`.
    pub fn cite(&self, section: &str) -> String {
        format!("{}, \"{section}\"", self.cited)
    }

    /// Every heading outside code blocks, with the byte offset its section
    /// starts at: `(offset, level, title)`.
    fn headings(&self) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        let mut fenced = false;
        let mut at = 0;
        for line in self.text.split_inclusive('\n') {
            let t = line.trim_end();
            if t.trim_start().starts_with("```") {
                fenced = !fenced;
            } else if !fenced && t.starts_with('#') {
                let level = t.chars().take_while(|&c| c == '#').count();
                let title = t[level..].trim();
                if !title.is_empty() {
                    out.push((at, level, title.to_string()));
                }
            }
            at += line.len();
        }
        out
    }

    /// The title of the section an offset lies in.
    fn section_at(&self, offset: usize) -> Option<String> {
        self.headings()
            .into_iter()
            .rev()
            .find(|(at, _, _)| *at <= offset)
            .map(|(_, _, title)| title)
    }

    /// The section that shows part `part` of the stage's diff (the heading
    /// above its `{{#include diffs/stageN.diff:PART}}`), else the one that
    /// shows the whole diff.
    pub fn section_of_part(&self, stage: &str, part: &str) -> Option<String> {
        let include = bookgen::part_include(stage, part);
        let at = self
            .text
            .find(&include)
            .or_else(|| self.text.find(&bookgen::part_include(stage, "all")))?;
        self.section_at(at)
    }

    /// The section to read about a check: the one that names it in
    /// backticks, "What its checks prove" first, else that section alone.
    pub fn section_naming(&self, check: &str) -> Option<String> {
        let short = check.rsplit("::").next().unwrap_or(check);
        let named: Vec<usize> = [format!("`{check}`"), format!("`{short}`")]
            .iter()
            .flat_map(|n| self.text.match_indices(n.as_str()).map(|(i, _)| i))
            .collect();
        let sections: Vec<String> = named.iter().filter_map(|&i| self.section_at(i)).collect();
        let proves = |s: &&String| s.starts_with("What its checks prove");
        sections
            .iter()
            .find(proves)
            .or(sections.first())
            .cloned()
            .or_else(|| {
                self.headings()
                    .into_iter()
                    .map(|(_, _, t)| t)
                    .find(|t| t.starts_with("What its checks prove"))
            })
    }

    /// The chapter's bullet about a check (`- **`name`** ...`), joined into
    /// one paragraph.
    pub fn bullet(&self, check: &str) -> Option<String> {
        let short = check.rsplit("::").next().unwrap_or(check);
        let start = self.text.find(&format!("- **`{short}`**"))?;
        let mut out = Vec::new();
        for (i, line) in self.text[start..].lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || (i > 0 && t.starts_with("- ")) {
                break;
            }
            out.push(t.trim_start_matches("- "));
        }
        Some(out.join(" "))
    }
}

/// The `///` comment right above `fn NAME` in a Rust source, joined into
/// one paragraph.
pub fn doc_comment(source: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = source.lines().collect();
    let decl = lines.iter().position(|l| {
        let t = l.trim_start();
        let t = t.strip_prefix("pub ").unwrap_or(t);
        t.strip_prefix("fn ")
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with('(') || rest.starts_with('<'))
    })?;
    let mut docs = Vec::new();
    for line in lines[..decl].iter().rev() {
        let t = line.trim_start();
        if let Some(doc) = t.strip_prefix("///") {
            docs.push(doc.trim());
        } else if !t.starts_with("#[") {
            break;
        }
    }
    docs.reverse();
    (!docs.is_empty()).then(|| docs.join(" "))
}

/// What a check proves: the `///` comment above its test (in the test's
/// file, or in the module file of a check in a module, `tests/checks/x.rs`
/// for `checks::x::name`), or, for a check that a testkit macro writes
/// (`faults::log_reader_gone`), above the testkit function that the
/// macro's test calls.
pub fn what_it_proves(root: &Path, test_source: &Path, check: &str) -> Option<String> {
    let (module, name) = match check.rsplit_once("::") {
        Some((module, name)) => (Some(module), name),
        None => (None, check),
    };
    let read = |path: &Path| crate::checks::source_text(path);
    if let Some(doc) = doc_comment(&read(test_source), name) {
        return Some(doc);
    }
    let module = module?;
    if let Some(dir) = test_source.parent() {
        let file = dir.join(format!("{}.rs", module.replace("::", "/")));
        if let Some(doc) = doc_comment(&read(&file), name) {
            return Some(doc);
        }
    }
    let path = root.join(format!("testkit/src/{module}.rs"));
    let kit = std::fs::read_to_string(path).ok()?;
    // In the macro: `fn NAME() { m::CALLEE(...` (or `passes(m::CALLEE(`).
    let at = kit.find(&format!("fn {name}()"))?;
    let body = &kit[at..];
    let call = body.find("::")?;
    let callee: String = body[call + 2..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    doc_comment(&kit, &callee)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_section_above_a_part() {
        let chapter = Chapter {
            cited: "book/src/stage9.md".into(),
            text: "# Stage 9\n## The code\n### Serving\n```diff\n{{#include diffs/stage9.diff:main-serve}}\n```\n## What its checks prove\n- **`a_check`** proves it.\n  All of it.\n- **`b`** too.\n".into(),
        };
        assert_eq!(
            chapter.section_of_part("9", "main-serve").as_deref(),
            Some("Serving")
        );
        assert_eq!(
            chapter.section_naming("a_check").as_deref(),
            Some("What its checks prove")
        );
        assert_eq!(
            chapter.bullet("a_check").as_deref(),
            Some("**`a_check`** proves it. All of it.")
        );
    }
}
