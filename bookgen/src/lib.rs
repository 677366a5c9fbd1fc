//! The book's diffs, generated from the crates, and the checks that keep the
//! book in step with them.
//!
//! Every stage chapter shows what changed since the stage it grew from, as a
//! unified diff of the two crates' `src/` folders. The diffs are written to
//! `book/src/diffs/stageN.diff` by `cargo run -p bookgen -- diffs` and included in the
//! chapter; the tests in this crate fail when a committed diff no longer
//! matches the crates, or when a stage has no chapter.
//!
//! Which files are compared (the mapping, also told in each chapter):
//!
//! | stage | compared with | files |
//! | --- | --- | --- |
//! | 2 | stage 1 | `src/main.rs` → `src/main.rs` (the client grows from the server) |
//! | 3 | stage 1 | `src/main.rs` → `src/main.rs` (stage 2 is a client; stage 3 grows from the last server) |
//! | 4 | stage 3 | `src/main.rs` → `src/main.rs` |
//! | 4b server | stage 4 | `src/main.rs` → `src/main.rs` (the same program, as one `Server` with methods) |
//! | 5a lines | 4b | `src/main.rs` → `src/bin/server.rs`; the framer and the lib are new, shown as listings |
//! | 5b chat | 5a | same paths; the client table is new |
//! | 5c commands | 5b | same paths |
//! | 5d client | 5c | the client program is new; the server is 5c's, carried on unchanged |
//! | 5e running | 5d | same paths |
//! | 5f terminal | 5e | the client changes; the server is 5e's, carried on unchanged |
//! | 5g limits | 5f | the server changes; the client is 5f's, carried on unchanged |
//! | 5 (5h) | 5g | same paths; the client is 5f's, used by path |
//! | 6 | none | the tester is a new program, so its chapter shows its code, not a diff |
//! | 7a link | stage 5 | `src/bin/server.rs` → `src/main.rs`; stage 5's client carried on unchanged (its readers use stage 5's); the framer, the queue and the sanitizer are stage 5's, used by path; the RESP link and the cluster are new |
//! | 7b stream | 7a | same paths; the client table and the connection to Redis are 7a's, used by path |
//! | 7c lossless | 7b | same paths; the client table and the connection to Redis are 7a's, used by path; the outbox and the senders (`src/delivery.rs`) are new |
//! | 7d numbers | 7c | same paths; the client table grows again from 7a's; what a node keeps is 7c's and the connection to Redis 7a's, used by path |
//! | 7e names | 7d | same paths; the connection to Redis is 7a's, used by path |
//! | 7f counts | 7e | same paths; the client table is 7e's, used by path |
//! | 7g leases | 7f | same paths; the client table (7e's) and what a node keeps (7f's) are used by path |
//! | 7 | 7g | same paths; the client table is 7e's and the connection to Redis 7a's, used by path |
//!
//! A stage is every file of the stage it grows from, with its own in their
//! place ([`effective_files`]): a step that changes only the client carries
//! the server on unchanged, and nothing is shown as removed.
//! A file a stage uses from an earlier one by path (a `[[bin]]` whose `path`
//! leaves the crate's `src/`, a module with `#[path]`) is read where it is and
//! compared under its own name, so an unchanged shared file shows no change;
//! a file copied unchanged instead fails a check ([`check_copies`]).
//!
//! Within a pair of stages, a file is compared with the file of the same path
//! unless the table renames it; a file with no counterpart is shown as added
//! (or removed). Lines that hold only an mdBook anchor (`// ANCHOR: name`,
//! `// ANCHOR_END: name`) are left out, so the diff is the lesson alone.
//!
//! Each `.diff` file holds the whole diff inside the anchor `all` (for the
//! folded view at the end of a chapter), each file inside an anchor of its
//! stem when there are several, and each hunk inside an anchor of its own
//! ([`hunks`] says how parts are cut and named: `main-run`). A chapter
//! listed in [`HUNK_BY_HUNK`] includes every part once, in order, where its
//! prose explains it, and shows a file new in its stage as a listing cut at
//! the file's own anchors ([`walk`] checks both).

pub mod hunks;
pub mod walk;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The command that rewrites the diffs; every failure message names it.
pub const REFRESH: &str = "cargo run -p bookgen -- diffs";

/// What a stale diff means, for the two readers who meet one: a learner
/// trying an exercise, and a maintainer who changed a stage for good.
pub fn stale_diffs_advice() -> String {
    format!(
        "The book's diffs no longer match the crates: a stage's code changed.\n\
         - Trying an exercise? This check only says the book no longer shows your code. \
         Undo the change when you are done (`git stash`, or switch back to your branch), \
         and meanwhile run the stage's own checks (`cargo test -p STAGE`) or leave this one out \
         (`cargo test --workspace -- --skip committed_diffs_match_the_crates`).\n\
         - Changed a stage for good? Regenerate the diffs with `{REFRESH}`, \
         explain the change in its chapter, and commit book/src/diffs with it."
    )
}

/// One stage crate of the workbook, or one step of stage 5.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    /// `1`..`7`, or a step (`4b`, `5a`, `5b`; `5` is stage 5's last step):
    /// the chapter is `book/src/stage<name>.md`.
    pub name: &'static str,
    /// The crate's folder, from the top of the workspace.
    pub dir: &'static str,
    /// What its chapter's diff compares, or `None` for a stage without one.
    pub diff: Option<DiffSpec>,
}

/// How a stage's diff is made.
#[derive(Debug, Clone, Copy)]
pub struct DiffSpec {
    /// The stage it is compared with.
    pub base: &'static str,
    /// `(path in the base, path in this stage)`: files that moved.
    pub renames: &'static [(&'static str, &'static str)],
    /// Files left out of the diff, in both stages (a new program that the
    /// chapter shows in its own section).
    pub omit: &'static [&'static str],
    /// Parts shown together with the part after them (two small hunks of
    /// one function), by name: `main-parse_args`.
    pub join: &'static [&'static str],
}

/// The chapters already walked through hunk by hunk: each part of the diff
/// included once, in order, with prose around it, the whole diff folded at
/// the end, new files shown as listings at their anchors, and no stretch of
/// more than [`MAX_CODE_STRETCH`] code lines without prose. The list grows
/// as chapters are reworked; the checks apply to these chapters only.
pub const HUNK_BY_HUNK: &[&str] = &[
    "1", "2", "3", "4", "4b", "5a", "5b", "5c", "5d", "5e", "5f", "5g", "5", "6", "7a", "7b", "7c",
    "7d", "7e", "7f", "7g", "7",
];

/// The stages whose new files are shown in excerpts, not whole: the tester
/// is a program of thousands of lines, and its chapter shows the parts it
/// explains (see [`walk::Listing`]).
pub const EXCERPTS: &[&str] = &["6"];

/// The most code lines a reworked chapter may show without prose between.
pub const MAX_CODE_STRETCH: usize = 60;

/// Whether the chapter of stage `name` is walked through hunk by hunk.
pub fn is_reworked(name: &str) -> bool {
    HUNK_BY_HUNK.contains(&name)
}

/// Every stage, in order. A new stage folder must be added here (a test
/// fails until it is).
pub const STAGES: [Stage; 22] = [
    Stage {
        name: "1",
        dir: "stage1-tcp-server",
        diff: None,
    },
    Stage {
        name: "2",
        dir: "stage2-tcp-client",
        diff: Some(DiffSpec {
            base: "1",
            renames: &[],
            omit: &[],
            // The second `parse_args` hunk only drops `-q`; the last hunk
            // only deletes the tail of stage 1's functions.
            join: &["main-parse_args", "main-read_line"],
        }),
    },
    Stage {
        name: "3",
        dir: "stage3-epoll",
        diff: Some(DiffSpec {
            base: "1",
            renames: &[],
            omit: &[],
            // Both hunks above the first item only add `use` lines.
            join: &["main-top"],
        }),
    },
    Stage {
        name: "4",
        dir: "stage4-edge-triggered",
        diff: Some(DiffSpec {
            base: "3",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "4b",
        dir: "stage4-edge-triggered/steps/server",
        diff: Some(DiffSpec {
            base: "4",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5a",
        dir: "stage5-chat/steps/lines",
        diff: Some(DiffSpec {
            base: "4b",
            renames: &[("src/main.rs", "src/bin/server.rs")],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5b",
        dir: "stage5-chat/steps/chat",
        diff: Some(DiffSpec {
            base: "5a",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5c",
        dir: "stage5-chat/steps/commands",
        diff: Some(DiffSpec {
            base: "5b",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5d",
        dir: "stage5-chat/steps/client",
        diff: Some(DiffSpec {
            base: "5c",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5e",
        dir: "stage5-chat/steps/running",
        diff: Some(DiffSpec {
            base: "5d",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5f",
        dir: "stage5-chat/steps/terminal",
        diff: Some(DiffSpec {
            base: "5e",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5g",
        dir: "stage5-chat/steps/limits",
        diff: Some(DiffSpec {
            base: "5f",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "5",
        dir: "stage5-chat",
        diff: Some(DiffSpec {
            base: "5g",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "6",
        dir: "stage6-tester",
        diff: None,
    },
    Stage {
        name: "7a",
        dir: "stage7-cluster/steps/link",
        diff: Some(DiffSpec {
            base: "5",
            renames: &[("src/bin/server.rs", "src/main.rs")],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7b",
        dir: "stage7-cluster/steps/stream",
        diff: Some(DiffSpec {
            base: "7a",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7c",
        dir: "stage7-cluster/steps/lossless",
        diff: Some(DiffSpec {
            base: "7b",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7d",
        dir: "stage7-cluster/steps/numbers",
        diff: Some(DiffSpec {
            base: "7c",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7e",
        dir: "stage7-cluster/steps/names",
        diff: Some(DiffSpec {
            base: "7d",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7f",
        dir: "stage7-cluster/steps/counts",
        diff: Some(DiffSpec {
            base: "7e",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7g",
        dir: "stage7-cluster/steps/leases",
        diff: Some(DiffSpec {
            base: "7f",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
    Stage {
        name: "7",
        dir: "stage7-cluster",
        diff: Some(DiffSpec {
            base: "7g",
            renames: &[],
            omit: &[],
            join: &[],
        }),
    },
];

/// The stage with this name (`"4"`, `"5a"`).
pub fn stage(name: &str) -> Option<&'static Stage> {
    STAGES.iter().find(|s| s.name == name)
}

/// The workspace root (the folder above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bookgen lives inside the workspace")
        .to_path_buf()
}

/// The book's root folder (the one with `book.toml`).
pub fn book_root(root: &Path) -> PathBuf {
    root.join("book")
}

/// Where a stage's chapter lives.
pub fn chapter_path(root: &Path, name: &str) -> PathBuf {
    root.join(format!("book/src/stage{name}.md"))
}

/// Where a stage's generated diff lives.
pub fn diff_path(root: &Path, name: &str) -> PathBuf {
    root.join(format!("book/src/diffs/stage{name}.diff"))
}

/// The text a chapter must contain to show a one-file diff whole (the
/// `all` anchor holds the diff without its part anchors).
pub fn diff_include(name: &str) -> String {
    format!("```diff\n{{{{#include diffs/stage{name}.diff:all}}}}\n```")
}

/// The include line of one anchor of a stage's diff.
pub fn part_include(name: &str, anchor: &str) -> String {
    format!("{{{{#include diffs/stage{name}.diff:{anchor}}}}}")
}

/// One file's share of a stage's diff.
#[derive(Debug, Clone)]
pub struct FileDiff {
    /// The file's stem, its anchor when the diff spans several files.
    pub stem: String,
    /// `--- old\n+++ new\n`.
    pub header: String,
    /// Its hunks, named.
    pub parts: Vec<hunks::Part>,
}

/// A stage's diff, cut into files and parts, and the files it leaves to be
/// shown as listings.
#[derive(Debug, Clone, Default)]
pub struct StageDiff {
    /// The changed files, in order.
    pub files: Vec<FileDiff>,
    /// Files with no counterpart in the base stage (every file of a stage
    /// without a base), as paths from the stage's folder: a reworked
    /// chapter shows them as listings split at their own anchors, not as an
    /// all-green diff.
    pub new_files: Vec<String>,
}

impl StageDiff {
    /// Every part's anchor name, in the order of the diff.
    pub fn part_names(&self) -> Vec<&str> {
        self.files
            .iter()
            .flat_map(|f| f.parts.iter().map(|p| p.name.as_str()))
            .collect()
    }

    /// The `.diff` file: everything inside the anchor `all`, each file
    /// inside an anchor of its stem when there are several, each part inside
    /// an anchor of its name. A part starts at its `@@` line, so only the
    /// whole view shows the `---`/`+++` header.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "// ANCHOR: all");
        let anchored = self.files.len() > 1;
        for file in &self.files {
            if anchored {
                let _ = writeln!(out, "// ANCHOR: {}", file.stem);
            }
            out.push_str(&file.header);
            for part in &file.parts {
                let _ = writeln!(out, "// ANCHOR: {}", part.name);
                out.push_str(&part.text);
                let _ = writeln!(out, "// ANCHOR_END: {}", part.name);
            }
            if anchored {
                let _ = writeln!(out, "// ANCHOR_END: {}", file.stem);
            }
        }
        let _ = writeln!(out, "// ANCHOR_END: all");
        out
    }
}

/// The per-file anchors of a diff that spans several files, in the order
/// of the diff (`server` for `src/bin/server.rs`): a chapter not yet walked
/// hunk by hunk shows such a diff a file at a time.
pub fn diff_anchors(diff: &StageDiff) -> Vec<&str> {
    if diff.files.len() < 2 {
        return Vec::new();
    }
    diff.files.iter().map(|f| f.stem.as_str()).collect()
}

/// What a chapter not yet walked hunk by hunk must contain to show its
/// stage's diff: the whole diff, or, when it spans several files, a block
/// for each.
pub fn diff_includes(name: &str, diff: &StageDiff) -> Vec<String> {
    let anchors = diff_anchors(diff);
    if anchors.is_empty() {
        return vec![diff_include(name)];
    }
    anchors
        .iter()
        .map(|anchor| format!("```diff\n{}\n```", part_include(name, anchor)))
        .collect()
}

/// Whether a stage's crate exists yet (stages land one at a time).
pub fn is_present(root: &Path, stage: &Stage) -> bool {
    root.join(stage.dir).join("Cargo.toml").is_file()
}

/// Every `stage*` folder in the workspace, and every step folder of a
/// stage (`stage*/steps/*`), as paths from the top.
pub fn stage_dirs(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() || !name.starts_with("stage") {
            continue;
        }
        if let Ok(steps) = fs::read_dir(entry.path().join("steps")) {
            for step in steps {
                let step = step?;
                if step.file_type()?.is_dir() {
                    found.push(format!(
                        "{name}/steps/{}",
                        step.file_name().to_string_lossy()
                    ));
                }
            }
        }
        found.push(name);
    }
    found.sort();
    Ok(found)
}

/// The diff a stage's chapter shows, from the crates as they are now, or
/// `None` when the stage has no diff or has not landed yet.
pub fn generate(root: &Path, stage: &Stage) -> Result<Option<String>> {
    Ok(stage_diff(root, stage, is_reworked(stage.name))?
        .filter(|_| stage.diff.is_some())
        .map(|diff| {
            if diff.files.is_empty() {
                let base = stage.diff.and_then(|d| self::stage(d.base));
                format!(
                    "# {} has the same source as {}\n",
                    stage.dir,
                    base.map_or("its base", |b| b.dir)
                )
            } else {
                diff.render()
            }
        }))
}

/// A stage's diff cut into parts, or `None` when the stage has not landed.
/// A stage without a base has no diff, and all its files are new. With
/// `reworked`, new files are left out of the diff (the chapter shows them
/// as listings); otherwise they are diffed against nothing, all green.
pub fn stage_diff(root: &Path, stage: &Stage, reworked: bool) -> Result<Option<StageDiff>> {
    if !is_present(root, stage) {
        return Ok(None);
    }
    let new_paths = effective_files(root, stage)?;
    let mut new_files: Vec<String> = new_paths.iter().map(|(name, _)| name.clone()).collect();
    let Some(spec) = stage.diff else {
        return Ok(Some(StageDiff {
            files: Vec::new(),
            new_files,
        }));
    };
    let base = self::stage(spec.base).context("the base stage is not in STAGES")?;
    if !is_present(root, base) {
        return Ok(None); // its diff waits for the stage it grows from
    }
    let old_paths = effective_files(root, base)?;
    let all_old: Vec<String> = old_paths.iter().map(|(name, _)| name.clone()).collect();
    let counterpart = |new: &str| -> Option<String> {
        match spec.renames.iter().find(|(_, to)| *to == new) {
            Some((from, _)) => all_old.iter().find(|f| f == from).cloned(),
            None => all_old
                .iter()
                .find(|f| *f == new && !spec.renames.iter().any(|(from, _)| from == f))
                .cloned(),
        }
    };
    let created: Vec<String> = new_files
        .iter()
        .filter(|f| counterpart(f).is_none())
        .cloned()
        .collect();
    // Pair each new file with its old counterpart: renamed, same path, or none.
    let mut pairs: Vec<(Option<String>, Option<String>)> = Vec::new();
    for new in &new_files {
        if spec.omit.contains(&new.as_str()) {
            continue;
        }
        let old = counterpart(new);
        if old.is_none() && reworked {
            continue;
        }
        pairs.push((old, Some(new.clone())));
    }
    for old in all_old.iter().filter(|f| !spec.omit.contains(&f.as_str())) {
        let paired = new_files
            .iter()
            .any(|n| counterpart(n).as_ref() == Some(old));
        if !paired {
            pairs.push((Some(old.clone()), None));
        }
    }

    // Each file's diff, named by its file's stem (`server`, `clients`).
    let mut files: Vec<FileDiff> = Vec::new();
    for (old, new) in pairs {
        // A file is read where it really is: a shared one in the crate it
        // belongs to.
        let read = |paths: &[(String, PathBuf)], file: Option<&str>| -> Result<(String, String)> {
            let Some(path) = file.and_then(|f| paths.iter().find(|(name, _)| name == f)) else {
                return Ok(("/dev/null".to_string(), String::new()));
            };
            let path = &path.1;
            let text = fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let shown = path.strip_prefix(root).unwrap_or(path);
            Ok((shown.display().to_string(), strip_anchors(&text)))
        };
        let (old_name, old_text) = read(&old_paths, old.as_deref())?;
        let (new_name, new_text) = read(&new_paths, new.as_deref())?;
        let file = new.or(old).unwrap_or_default();
        let stem = Path::new(&file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parts = hunks::split(&stem, &old_text, &new_text, spec.join);
        if parts.is_empty() {
            continue;
        }
        if files.iter().any(|f| f.stem == stem) {
            bail!(
                "two files of stage {}'s diff are both named {stem}",
                stage.name
            );
        }
        files.push(FileDiff {
            stem,
            header: format!("--- {old_name}\n+++ {new_name}\n"),
            parts,
        });
    }
    new_files.retain(|f| created.contains(f));
    Ok(Some(StageDiff { files, new_files }))
}

/// The source without the lines that only hold an mdBook anchor.
pub fn strip_anchors(text: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| {
            let line = line.trim_start();
            !(line.starts_with("// ANCHOR:") || line.starts_with("// ANCHOR_END:"))
        })
        .collect()
}

/// The crate's `.rs` files under `src/`, as sorted paths relative to `dir`.
/// The files a crate uses from another crate by path, as `(path as this
/// crate names it, real path)`: a `[[bin]]` or `[lib]` whose `path` lies
/// outside this crate's `src/` (`path = "../commands/src/bin/client.rs"`), and
/// a module declared with `#[path = "../../commands/src/framer.rs"]`. The name is
/// the shared file's own path from its crate's `src/` on (`src/framer.rs`),
/// so the diff pairs it with the base's file of that name, and an unchanged
/// file shows no change.
pub fn shared_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    fn name_of(path: &str) -> Option<String> {
        path.rfind("src/").map(|i| path[i..].to_string())
    }
    let mut shared = Vec::new();
    let manifest = dir.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    for line in text.lines() {
        let Some(path) = line
            .trim()
            .strip_prefix("path = \"")
            .and_then(|rest| rest.strip_suffix('"'))
        else {
            continue;
        };
        if !path.starts_with("src/")
            && let Some(name) = name_of(path)
        {
            shared.push((name, normalize(&dir.join(path))));
        }
    }
    for file in source_files(dir)? {
        let path = dir.join(&file);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        for line in text.lines() {
            let Some(target) = line
                .trim()
                .strip_prefix("#[path = \"")
                .and_then(|rest| rest.strip_suffix("\"]"))
            else {
                continue;
            };
            let real = normalize(&path.parent().unwrap_or(dir).join(target));
            if let Some(name) = name_of(target) {
                shared.push((name, real));
            }
        }
    }
    shared.sort();
    Ok(shared)
}

/// `a/b/../c` as `a/c`, without asking the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every source file a crate builds from, as `(name, real path)`: its own
/// files under `src/`, and the files it shares by path.
pub fn crate_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = source_files(dir)?
        .into_iter()
        .map(|f| {
            let path = dir.join(&f);
            (f, path)
        })
        .collect();
    files.extend(shared_files(dir)?);
    files.sort();
    Ok(files)
}

/// The files a stage is made of, as `(name, real path)`: every file of the
/// stage it grows from, with its own files (and those it uses by path) in
/// their place. A step that changes only the client carries the server on
/// unchanged, and a file it does not have is not taken for removed.
pub fn effective_files(root: &Path, stage: &Stage) -> Result<Vec<(String, PathBuf)>> {
    let own = crate_files(&root.join(stage.dir))?;
    let Some(spec) = stage.diff else {
        return Ok(own);
    };
    let Some(base) = self::stage(spec.base).filter(|b| is_present(root, b)) else {
        return Ok(own);
    };
    let mut files: Vec<(String, PathBuf)> = effective_files(root, base)?
        .into_iter()
        .filter(|(name, _)| {
            !spec.renames.iter().any(|(from, _)| from == name)
                && !own.iter().any(|(mine, _)| mine == name)
        })
        .collect();
    files.extend(own);
    files.sort();
    Ok(files)
}

/// The files a stage copies unchanged from the stage before (its anchors
/// aside) instead of using the earlier file by path: a copy can drift from
/// the file it repeats, and a reader cannot tell it is the same.
pub fn check_copies(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for stage in STAGES.iter().filter(|s| is_present(root, s)) {
        let Some(spec) = stage.diff else { continue };
        let Some(base) = self::stage(spec.base).filter(|b| is_present(root, b)) else {
            continue;
        };
        let old = effective_files(root, base)?;
        for file in source_files(&root.join(stage.dir))? {
            let Some((_, old_path)) = old.iter().find(|(name, _)| *name == file) else {
                continue;
            };
            let new_text = fs::read_to_string(root.join(stage.dir).join(&file))?;
            let old_text = fs::read_to_string(old_path)?;
            if strip_anchors(&new_text) == strip_anchors(&old_text) {
                let shared = old_path.strip_prefix(root).unwrap_or(old_path);
                problems.push(format!(
                    "{}/{file} is a copy of {}: use that file by path (`#[path = \"...\"]` on the module, or `path = \"...\"` in the [[bin]]), so the two cannot drift",
                    stage.dir,
                    shared.display()
                ));
            }
        }
    }
    Ok(problems)
}

pub(crate) fn source_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = format!("{rel}/{name}");
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &rel, out)?;
            } else if name.ends_with(".rs") {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(&dir.join("src"), "src", &mut files)?;
    files.sort();
    Ok(files)
}

/// Every diff the book should hold now: `(path, text)`.
pub fn expected_diffs(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut diffs = Vec::new();
    for stage in &STAGES {
        if let Some(text) = generate(root, stage)? {
            diffs.push((diff_path(root, stage.name), text));
        }
    }
    Ok(diffs)
}

/// Rewrite every diff from the crates; returns the files that changed.
pub fn write_diffs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (path, text) in expected_diffs(root)? {
        if fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        changed.push(path);
    }
    Ok(changed)
}

/// What is wrong with the committed diffs: one sentence per problem.
pub fn check_diffs(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let expected = expected_diffs(root)?;
    for (path, text) in &expected {
        match fs::read_to_string(path) {
            Ok(committed) if committed == *text => {}
            Ok(_) => problems.push(format!(
                "{} differs from the crates as they are now",
                path.display()
            )),
            Err(_) => problems.push(format!("{} is missing", path.display())),
        }
    }
    // A diff left behind for a stage that has none (or not yet) is stale.
    if let Ok(entries) = fs::read_dir(root.join("book/src/diffs")) {
        for entry in entries {
            let path = entry?.path();
            if !expected.iter().any(|(p, _)| *p == path) {
                problems.push(format!(
                    "{} belongs to no stage that has a diff: delete it",
                    path.display()
                ));
            }
        }
    }
    Ok(problems)
}

/// What is missing from the book's stage chapters: one sentence per problem.
pub fn check_chapters(root: &Path) -> Result<Vec<String>> {
    check_chapters_for(root, HUNK_BY_HUNK)
}

/// [`check_chapters`], with `reworked` as the chapters walked hunk by hunk
/// (their diffs are checked part by part by [`walk::check_walkthrough`]).
pub fn check_chapters_for(root: &Path, reworked: &[&str]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let summary_path = root.join("book/src/SUMMARY.md");
    let summary = fs::read_to_string(&summary_path)
        .with_context(|| format!("cannot read {}", summary_path.display()))?;
    for dir in stage_dirs(root)? {
        if !STAGES.iter().any(|s| s.dir == dir) {
            problems.push(format!(
                "{dir} is not a stage bookgen knows: add it to STAGES in bookgen/src/lib.rs"
            ));
        }
    }
    for stage in STAGES.iter().filter(|s| is_present(root, s)) {
        let dir = stage.dir;
        let chapter = chapter_path(root, stage.name);
        let Ok(text) = fs::read_to_string(&chapter) else {
            problems.push(format!("{dir} has no chapter: write {}", chapter.display()));
            continue;
        };
        let file = format!("stage{}.md", stage.name);
        if !summary.contains(&format!("({file})")) {
            problems.push(format!("{file} is not listed in book/src/SUMMARY.md"));
        }
        let walked = reworked.contains(&stage.name);
        let diff = stage_diff(root, stage, walked)?;
        if let Some(diff) = diff.filter(|d| stage.diff.is_some() && !walked && !d.files.is_empty())
        {
            let missing: Vec<String> = diff_includes(stage.name, &diff)
                .into_iter()
                .filter(|include| !text.contains(include.as_str()))
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{} does not show its diff: add\n{}\nthen run `{REFRESH}`",
                    chapter.display(),
                    missing.join("\n")
                ));
            }
        }
    }
    Ok(problems)
}

/// Every `{{#include FILE:ANCHOR}}` in the book's Markdown names a file that
/// exists and an anchor that file has (mdBook itself includes nothing, and
/// says nothing, for a missing anchor).
pub fn check_includes(book_src: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut pages = Vec::new();
    markdown_files(book_src, &mut pages)?;
    for page in pages {
        let text = fs::read_to_string(&page)?;
        let dir = page.parent().unwrap_or(book_src);
        for (at, _) in text.match_indices("{{#include ") {
            let rest = &text[at + "{{#include ".len()..];
            let Some(end) = rest.find("}}") else {
                problems.push(format!("{}: an unclosed include", page.display()));
                continue;
            };
            let target = rest[..end].trim();
            let (file, anchor) = match target.split_once(':') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target, None),
            };
            let path = dir.join(file);
            let Ok(source) = fs::read_to_string(&path) else {
                problems.push(format!(
                    "{}: includes {file}, which does not exist",
                    page.display()
                ));
                continue;
            };
            // Line ranges (`file:10:20`) are not anchors.
            let Some(anchor) = anchor.filter(|a| !a.starts_with(|c: char| c.is_ascii_digit()))
            else {
                continue;
            };
            let has = |marker: &str| {
                source.lines().any(|l| {
                    l.trim_start()
                        .starts_with(&format!("// {marker}: {anchor}"))
                        && l.trim_end().ends_with(anchor)
                })
            };
            if !has("ANCHOR") || !has("ANCHOR_END") {
                problems.push(format!(
                    "{}: includes anchor {anchor:?} of {file}, which has no `// ANCHOR: {anchor}` ... `// ANCHOR_END: {anchor}`",
                    page.display()
                ));
            }
        }
    }
    Ok(problems)
}

pub(crate) fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            markdown_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// The text of an HTML fragment without its tags and the lines mdBook
/// hides (`class="boring"`, such as the `fn main` it wraps around Rust
/// snippets).
pub fn visible_text(mut html: &str) -> String {
    let mut text = String::new();
    while let Some(tag) = html.find('<') {
        text.push_str(&html[..tag]);
        html = &html[tag..];
        if html.starts_with("<span class=\"boring\">") {
            html = html.find("</span>").map_or("", |end| &html[end..]);
        }
        html = html.find('>').map_or("", |end| &html[end + 1..]);
    }
    text.push_str(html);
    text
}
