//! The chapters walked through hunk by hunk: the parts of each diff add up
//! to the stage's code, each is shown once and in order, new files are
//! shown at their anchors, and every anchor of the crates is used. The
//! checks are tried on small fake inputs too, failing cases included.

use std::fs;
use std::path::Path;

use bookgen::hunks::{apply, item_decl, split};
use bookgen::walk::{
    Listing, Stretch, check_anchors, check_walkthrough, listing_regions, longest_stretch,
};
use bookgen::{HUNK_BY_HUNK, STAGES, stage, stage_diff, strip_anchors, workspace_root};

#[test]
fn the_parts_of_every_diff_add_up_to_the_new_code() {
    let root = workspace_root();
    for stage in &STAGES {
        let Some(diff) = stage_diff(&root, stage, bookgen::is_reworked(stage.name)).unwrap() else {
            continue;
        };
        for file in &diff.files {
            let path = |prefix: &str| {
                let line = file.header.lines().find(|l| l.starts_with(prefix)).unwrap();
                let path = &line[prefix.len()..];
                match path {
                    "/dev/null" => String::new(),
                    _ => strip_anchors(&fs::read_to_string(root.join(path)).unwrap()),
                }
            };
            let (old, new) = (path("--- "), path("+++ "));
            let parts: Vec<&str> = file.parts.iter().map(|p| p.text.as_str()).collect();
            let applied = apply(&old, &parts);
            assert!(
                applied.as_deref() == Ok(new.as_str()),
                "stage {}, {}: the parts do not add up to the new file: {:?}",
                stage.name,
                file.stem,
                applied.err()
            );
        }
    }
}

#[test]
fn reworked_chapters_walk_through_their_diffs() {
    let problems = check_walkthrough(&workspace_root(), HUNK_BY_HUNK).unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_anchor_of_the_crates_is_included_by_a_chapter() {
    let problems = check_anchors(&workspace_root()).unwrap();
    assert!(
        problems.is_empty(),
        "{} unused anchors:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Not a failure: the chapters that still show their diff in one block.
#[test]
fn chapters_still_to_rework() {
    let left: Vec<String> = STAGES
        .iter()
        .filter(|s| !HUNK_BY_HUNK.contains(&s.name))
        .map(|s| format!("stage{}.md", s.name))
        .collect();
    if !left.is_empty() {
        println!(
            "note: still to walk through hunk by hunk (then add to HUNK_BY_HUNK): {}",
            left.join(", ")
        );
    }
}

const OLD: &str = "\
//! Old.

use std::io;

fn one() {
    a();
}

fn two() {
    b();
}
";

const NEW: &str = "\
//! New.

use std::io;

fn one() {
    a2();
}

fn two() {
    b2();
}
";

#[test]
fn a_diff_is_cut_into_parts_named_after_their_items() {
    let parts = split("main", OLD, NEW, &[]);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    // One hunk touches three items: three parts.
    assert_eq!(names, ["main-top", "main-one", "main-two"], "{parts:#?}");
    for part in &parts {
        assert!(part.text.starts_with("@@ -"), "{}", part.text);
        assert!(!part.text.contains("--- "), "{}", part.text);
    }
    assert!(
        parts[1].text.starts_with("@@ -5,4 +5,4 @@ fn one()\n"),
        "{}",
        parts[1].text
    );
    // Every line once: the parts add up to the new file.
    let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(apply(OLD, &texts).unwrap(), NEW);

    // The names depend on the items, not on where the hunks are: an
    // unrelated line added at the top keeps them.
    let shifted = |s: &str| s.replacen("use std::io;\n", "use std::io;\nuse std::fs;\n", 1);
    let again = split("main", &shifted(OLD), &shifted(NEW), &[]);
    let again: Vec<&str> = again.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(again, names);
}

#[test]
fn a_second_hunk_of_an_item_is_numbered_and_can_be_joined() {
    let body = |x: &str, y: &str| {
        let filler: String = (0..10).map(|i| format!("    f{i}();\n")).collect();
        format!("fn one() {{\n    {x}();\n{filler}    {y}();\n}}\n")
    };
    let (old, new) = (body("a", "b"), body("a2", "b2"));
    let parts = split("main", &old, &new, &[]);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["main-one", "main-one-2"]);
    let joined = split("main", &old, &new, &["main-one"]);
    assert_eq!(joined.len(), 1);
    assert_eq!(
        joined[0].text.matches("@@ -").count(),
        2,
        "{}",
        joined[0].text
    );
    assert_eq!(apply(&old, &[&joined[0].text]).unwrap(), new);
}

#[test]
fn a_long_piece_of_one_item_is_cut_between_its_changes() {
    let body = |x: &str| {
        let lines: String = (0..30)
            .map(|i| format!("    {x}{i}();\n    keep{i}();\n"))
            .collect();
        format!("fn big() {{\n{lines}}}\n")
    };
    let (old, new) = (body("a"), body("b"));
    let parts = split("main", &old, &new, &[]);
    assert!(parts.len() > 1, "{parts:#?}");
    for part in &parts {
        assert!(part.text.lines().count() <= 41, "{}", part.text);
    }
    let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(apply(&old, &texts).unwrap(), new);
}

#[test]
fn items_are_found_by_their_declaration() {
    let name = |line: &str| item_decl(line).map(|(name, _)| name);
    assert_eq!(
        name("pub(crate) fn run(args: &Args) -> Result<()> {").as_deref(),
        Some("run")
    );
    assert_eq!(
        name("impl fmt::Display for Closed {").as_deref(),
        Some("impl-Closed")
    );
    assert_eq!(
        name("impl<T: Copy> Queue<T> {").as_deref(),
        Some("impl-Queue")
    );
    assert_eq!(name("const USAGE: &str = \"\\").as_deref(), Some("USAGE"));
    assert_eq!(name("    let fn_name = 1;"), None);
    // A doc comment leads to the function it documents.
    let parts = split(
        "main",
        "fn a() {}\n",
        "fn a() {}\n\n/// Doc.\nfn b() {}\n",
        &[],
    );
    assert_eq!(parts[0].name, "main-b");
}

/// A small workspace of fake stages in a temporary folder.
fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Stage 3 and stage 4 with [`OLD`] and [`NEW`] (and the stage 3 is
/// compared with), the diffs written.
fn fake_workspace(root: &Path) {
    write(root, "stage1-tcp-server/Cargo.toml", "");
    write(root, "stage1-tcp-server/src/main.rs", OLD);
    write(root, "stage3-epoll/Cargo.toml", "");
    write(root, "stage3-epoll/src/main.rs", OLD);
    write(root, "stage4-edge-triggered/Cargo.toml", "");
    write(root, "stage4-edge-triggered/src/main.rs", NEW);
    bookgen::write_diffs(root).unwrap();
}

fn diff_block(part: &str) -> String {
    format!("```diff\n{{{{#include diffs/stage4.diff:{part}}}}}\n```\n")
}

const FOLD: &str = "<details>\n<summary>The whole diff</summary>\n\n```diff\n{{#include diffs/stage4.diff:all}}\n```\n\n</details>\n";

#[test]
fn a_part_missing_repeated_or_out_of_order_fails() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    fake_workspace(root);
    let chapter = |body: &str| {
        write(root, "book/src/stage4.md", body);
        check_walkthrough(root, &["4"]).unwrap().join("\n")
    };
    let prose = "Some prose that explains the part above it.\n\n";
    let good = [
        diff_block("main-top"),
        prose.into(),
        diff_block("main-one"),
        prose.into(),
        diff_block("main-two"),
        FOLD.into(),
    ]
    .concat();
    assert_eq!(chapter(&good), "");

    let missing = good.replace(&diff_block("main-one"), "");
    let problems = chapter(&missing);
    assert!(
        problems.contains("stage4.md: part main-one of diffs/stage4.diff is not shown")
            && problems.contains("after part main-top"),
        "{problems}"
    );

    let twice = format!("{good}{}", diff_block("main-two"));
    assert!(
        chapter(&twice).contains("part main-two of diffs/stage4.diff is shown 2 times"),
        "{}",
        chapter(&twice)
    );

    let swapped = [
        diff_block("main-top"),
        diff_block("main-two"),
        diff_block("main-one"),
        FOLD.into(),
    ]
    .concat();
    assert!(
        chapter(&swapped).contains("part main-one of diffs/stage4.diff comes before part main-two"),
        "{}",
        chapter(&swapped)
    );

    let unfolded = good.replace("<details>", "").replace("</details>", "");
    assert!(
        chapter(&unfolded).contains("the whole diff is shown unfolded"),
        "{}",
        chapter(&unfolded)
    );
    let no_whole = good.replace(FOLD, "");
    assert!(
        chapter(&no_whole).contains("the whole diff is not shown"),
        "{}",
        chapter(&no_whole)
    );
}

#[test]
fn a_new_file_is_shown_at_its_regions_once_and_in_order() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let source = "// ANCHOR: head\nuse std::io;\n// ANCHOR_END: head\n\n// ANCHOR: main\nfn main() {}\n// ANCHOR_END: main\n";
    write(root, "stage1-tcp-server/Cargo.toml", "");
    write(root, "stage1-tcp-server/src/main.rs", source);
    let include = |r: &str| {
        format!("```rust\n{{{{#include ../../stage1-tcp-server/src/main.rs:{r}}}}}\n```\n")
    };
    let chapter = |body: &str| {
        write(root, "book/src/stage1.md", body);
        check_walkthrough(root, &["1"]).unwrap().join("\n")
    };
    assert_eq!(chapter(&[include("head"), include("main")].concat()), "");
    let problems = chapter(&include("main"));
    assert!(
        problems.contains("part head of the new file stage1-tcp-server/src/main.rs is not shown"),
        "{problems}"
    );
    let problems = chapter(&[include("main"), include("head")].concat());
    assert!(problems.contains("comes before part main"), "{problems}");

    // A line outside every region, and a region inside another.
    let (regions, problems) = listing_regions(
        "use std::io;\n// ANCHOR: a\n// ANCHOR: b\nfn b() {}\n// ANCHOR_END: b\n// ANCHOR_END: a\n",
        Listing::Whole,
    );
    assert_eq!(regions, ["a"]);
    assert!(
        problems[0].contains("line 1 is in no region"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("region b is inside region a"),
        "{problems:?}"
    );
}

#[test]
fn a_long_run_of_changes_is_cut_where_an_added_item_starts() {
    // One function replaced by two, 70 changed lines in one run: too long to
    // show at once, so it is cut where the second function's doc comment
    // starts, and each piece is named after its own function.
    let body = |name: &str, n: usize| {
        let mut text = format!("/// {name} does its part.\nfn {name}() {{\n");
        for i in 0..n {
            text.push_str(&format!("    step_{name}({i});\n"));
        }
        text.push_str("}\n");
        text
    };
    let old = format!("fn main() {{}}\n\n{}", body("old", 8));
    let new = format!(
        "fn main() {{}}\n\n{}{}",
        body("first", 28),
        body("second", 28)
    );
    let parts = bookgen::hunks::split("main", &old, &new, &[]);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["main-first", "main-second"], "{parts:#?}");
    assert!(
        parts[1]
            .text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("+/// second")
    );
    let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(bookgen::hunks::apply(&old, &texts).unwrap(), new);
}

#[test]
fn a_listing_leaves_out_the_unit_tests_and_excerpts_leave_out_the_rest() {
    let source =
        "// ANCHOR: a\nfn a() {}\n// ANCHOR_END: a\nfn b() {}\n\n#[cfg(test)]\nmod tests {}\n";
    let (regions, problems) = listing_regions(source, Listing::Whole);
    assert_eq!(regions, ["a"]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("line 4 is in no region"),
        "{problems:?}"
    );
    let (regions, problems) = listing_regions(source, Listing::Excerpts);
    assert_eq!(regions, ["a"]);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn an_anchor_no_chapter_includes_fails() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    write(root, "stage1-tcp-server/Cargo.toml", "");
    write(
        root,
        "stage1-tcp-server/src/main.rs",
        "// ANCHOR: used\nfn a() {}\n// ANCHOR_END: used\n// ANCHOR: unused\nfn b() {}\n// ANCHOR_END: unused\n",
    );
    write(
        root,
        "book/src/stage1.md",
        "```rust\n{{#include ../../stage1-tcp-server/src/main.rs:used}}\n```\n",
    );
    let problems = check_anchors(root).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "stage1-tcp-server/src/main.rs:4: anchor unused is included by no chapter"
        ),
        "{problems:?}"
    );
    // And the real stage 5 step folders count as crates too.
    assert!(stage("5a").unwrap().dir.contains("steps"));
}

fn pre(lines: usize) -> String {
    let code: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    format!("<pre><code class=\"language-diff\">{code}</code></pre>\n")
}

#[test]
fn a_long_stretch_of_code_without_prose_is_measured() {
    let long = "<p>A paragraph with <code>code</code> in it, long enough to count as prose.</p>\n";
    let short = "<p>Then:</p>\n";
    let html = format!(
        "<nav><li>a table of contents entry that is long enough</li></nav><main>{}{short}{}{long}{}<details><summary>The whole diff</summary>{}</details>{}</main>",
        pre(30),
        pre(35),
        pre(10),
        pre(500),
        pre(5)
    );
    // The short label does not end the stretch; the long paragraph does;
    // the folded block does not count.
    assert_eq!(
        longest_stretch(&html),
        Stretch {
            lines: 65,
            starts_with: "line 0".to_string()
        }
    );
    assert!(bookgen::walk::stretch_problem("stage3.md", &longest_stretch(&html)).is_some());
    let html = format!("<main>{}{long}{}</main>", pre(30), pre(35));
    assert_eq!(longest_stretch(&html).lines, 35);
    assert!(bookgen::walk::stretch_problem("stage3.md", &longest_stretch(&html)).is_none());
    // A list item's own text counts as prose; a heading too.
    let html = format!(
        "<main>{}<ul><li>An item of a list that explains the code.</li></ul>{}<h3 id=\"x\"><a href=\"#x\">A heading that is long enough to count as prose</a></h3>{}</main>",
        pre(30),
        pre(31),
        pre(32)
    );
    assert_eq!(longest_stretch(&html).lines, 32);
}
