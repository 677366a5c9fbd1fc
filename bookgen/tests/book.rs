//! The book builds with the mdBook library, exactly as `mdbook build book`
//! does, without a warning, and its HTML holds no unexpanded include, no
//! empty code block and no missing picture.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mdbook_driver::MDBook;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Collects every warning and error mdBook logs (it reports a missing
/// include file or anchor only this way, and carries on).
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // In tracing, a less verbose level compares smaller: WARN and ERROR.
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = format!(
            "{} {}: ",
            event.metadata().level(),
            event.metadata().target()
        );
        event.record(&mut Message(&mut text));
        self.0.lock().unwrap().push(text);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Message<'a>(&'a mut String);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?} "));
        } else {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }
}

/// Build the book at `book_root` into a temporary folder and return every
/// problem found: build errors, logged warnings, and faults in the HTML.
fn build_and_check(book_root: &Path) -> Vec<String> {
    build(book_root).1
}

/// Build the book at `book_root` into a temporary folder: the folder, and
/// every problem found.
fn build(book_root: &Path) -> (tempfile::TempDir, Vec<String>) {
    let out = tempfile::tempdir().expect("a temporary folder");
    let warnings = Warnings::default();
    let built = tracing::subscriber::with_default(warnings.clone(), || {
        let mut book = MDBook::load(book_root)?;
        // Never into book/book: the reader's own `mdbook build` lives there.
        book.config.build.build_dir = out.path().to_path_buf();
        book.build()
    });

    let mut problems = bookgen::check_includes(&book_root.join("src")).expect("read the book");
    problems.extend(warnings.0.lock().unwrap().iter().cloned());
    if let Err(err) = built {
        problems.push(format!("the book does not build: {err:#}"));
        return (out, problems);
    }
    let mut pages = Vec::new();
    html_files(out.path(), &mut pages);
    if pages.is_empty() {
        problems.push("the build wrote no HTML".to_string());
    }
    for page in &pages {
        let html = fs::read_to_string(page).unwrap();
        let name = page.strip_prefix(out.path()).unwrap().display().to_string();
        if html.contains("{{#") {
            problems.push(format!(
                "{name}: an mdBook directive was not expanded (`{{{{#`)"
            ));
        }
        if has_empty_code(&html) {
            problems.push(format!("{name}: an empty code block"));
        }
        for href in attribute_values(&html, "<a ", "href") {
            if let Some(problem) = broken_link(page, &href) {
                problems.push(format!("{name}: {problem}"));
            }
        }
        for src in attribute_values(&html, "<img", "src") {
            if !src.contains("://") && !page.parent().unwrap().join(&src).is_file() {
                problems.push(format!("{name}: the picture {src} is missing"));
            }
        }
    }
    for stage in &bookgen::STAGES {
        let page = format!("stage{}.html", stage.name);
        if !out.path().join(&page).is_file() {
            problems.push(format!("{page} was not built"));
        }
    }
    (out, problems)
}

fn html_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            html_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") {
            out.push(path);
        }
    }
}

/// A `<code>` element with nothing visible in it: a missing anchor makes
/// mdBook include nothing, silently. Lines mdBook hides (`class="boring"`,
/// such as the `fn main` it wraps around Rust snippets) do not count.
fn has_empty_code(html: &str) -> bool {
    html.match_indices("<code").any(|(at, _)| {
        let rest = &html[at..];
        let (Some(open), Some(close)) = (rest.find('>'), rest.find("</code>")) else {
            return false;
        };
        bookgen::visible_text(&rest[open + 1..close])
            .trim()
            .is_empty()
    })
}

/// The value of `attr` in every tag of the page that starts with `tag`.
fn attribute_values(html: &str, tag: &str, attr: &str) -> Vec<String> {
    let key = format!("{attr}=\"");
    html.match_indices(tag)
        .filter_map(|(at, _)| {
            let tag = &html[at..at + html[at..].find('>')?];
            let start = tag.find(&key)? + key.len();
            Some(tag[start..start + tag[start..].find('"')?].to_string())
        })
        .collect()
}

/// A link to a page of the book that does not exist, or to a heading that
/// the page does not have.
fn broken_link(page: &Path, href: &str) -> Option<String> {
    if href.contains("://") || href.starts_with("mailto:") {
        return None;
    }
    let (file, fragment) = href.split_once('#').unwrap_or((href, ""));
    let target = if file.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().unwrap().join(file)
    };
    if target.is_dir() || (file.is_empty() && fragment.is_empty()) {
        return None;
    }
    let Ok(html) = fs::read_to_string(&target) else {
        return Some(format!("the link {href} leads nowhere"));
    };
    if !fragment.is_empty() && !html.contains(&format!("id=\"{fragment}\"")) {
        return Some(format!(
            "the link {href} names a heading that does not exist"
        ));
    }
    None
}

#[test]
fn the_book_builds_without_a_warning() {
    let root = bookgen::workspace_root();
    let problems = build_and_check(&bookgen::book_root(&root));
    assert!(
        problems.is_empty(),
        "the book has problems:\n{}",
        problems.join("\n")
    );
}

/// A reworked chapter reads as code and prose in turn: no more than
/// `MAX_CODE_STRETCH` code lines without a sentence between, measured on
/// the built page. Every chapter's longest stretch is printed.
#[test]
fn reworked_chapters_have_no_long_stretch_of_code() {
    let root = bookgen::workspace_root();
    let (out, problems) = build(&bookgen::book_root(&root));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut too_long = Vec::new();
    // Every chapter of the book: the stages' (held to the rule once they are
    // reworked) and the others (introduction, Measuring, the appendices),
    // which are held to it always.
    let summary = fs::read_to_string(root.join("book/src/SUMMARY.md")).unwrap();
    for chapter in summary
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
    {
        let page = chapter.replace(".md", ".html");
        let html = fs::read_to_string(out.path().join(&page)).expect("the chapter was built");
        let stretch = bookgen::walk::longest_stretch(&html);
        let stage = bookgen::STAGES
            .iter()
            .find(|s| format!("stage{}.md", s.name) == chapter);
        let held = stage.is_none_or(|s| bookgen::is_reworked(s.name));
        println!(
            "{chapter}: longest stretch {} code lines{}",
            stretch.lines,
            if held { "" } else { " (not yet reworked)" }
        );
        if held {
            too_long.extend(bookgen::walk::stretch_problem(chapter, &stretch));
        }
    }
    assert!(too_long.is_empty(), "{}", too_long.join("\n"));
}

/// Copy `from` into `to`, leaving out build output.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == "book" && from.ends_with("book") {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(&name));
        } else {
            fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// The check above can fail: a copy of the book with a broken anchor, a
/// missing include, an empty code block and broken links is caught on each
/// count.
#[test]
fn a_broken_include_fails_the_check() {
    let root = bookgen::workspace_root();
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&root.join("book"), &copy.path().join("book"));
    copy_tree(
        &root.join("stage1-tcp-server/src"),
        &copy.path().join("stage1-tcp-server/src"),
    );
    let chapter = copy.path().join("book/src/stage1.md");
    let mut text = fs::read_to_string(&chapter).unwrap();
    text.push_str(concat!(
        "\n```rust\n{{#include ../../stage1-tcp-server/src/main.rs:no_such_anchor}}\n```\n",
        "\n```rust\n{{#include ../../no-such-file.rs}}\n```\n",
        "\nSee [a heading](pitfalls.md#no-such-heading) and [a page](no-such-page.md).\n",
    ));
    fs::write(&chapter, text).unwrap();

    let problems = build_and_check(&copy.path().join("book")).join("\n");
    assert!(problems.contains("no_such_anchor"), "{problems}");
    assert!(problems.contains("no-such-file.rs"), "{problems}");
    // mdBook's own log line, caught by the subscriber, not only our checks.
    assert!(problems.contains("ERROR mdbook"), "{problems}");
    assert!(problems.contains("was not expanded"), "{problems}");
    assert!(problems.contains("empty code block"), "{problems}");
    assert!(
        problems.contains("pitfalls.html#no-such-heading names a heading that does not exist"),
        "{problems}"
    );
    assert!(
        problems.contains("no-such-page.html leads nowhere"),
        "{problems}"
    );
}
