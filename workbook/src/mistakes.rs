//! The chapters' mistakes, committed as patches: `mistakes/<stage>/<name>.patch`,
//! a unified diff of the project's own step (paths relative to the written
//! crate, `a/src/main.rs`), after a preamble that says the mistake in the
//! chapter's words and the checks it must fail:
//!
//! ```text
//! mistake: one `accept` per event, not until `EAGAIN`
//! fails: accepts_a_whole_burst_reported_by_one_edge, faults::connect_close_churn
//! may fail: faults::log_reader_gone
//!
//! Any lines of explanation.
//!
//! --- a/src/main.rs
//! +++ b/src/main.rs
//! @@ ...
//! ```
//!
//! `may fail` lists checks the mistake fails in some runs only (a race it
//! opens that a run may not hit). Every run fails at least one check: a
//! mistake whose checks all race lists them all under `may fail`, with an
//! empty `fails:`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::materialise::CrateFile;

/// One committed mistake.
#[derive(Debug, Clone)]
pub struct Mistake {
    /// The patch's name: `one-accept-per-event`.
    pub name: String,
    pub path: PathBuf,
    /// The mistake in the chapter's words (the first cell of its row).
    pub what: String,
    /// The checks it fails in every run.
    pub fails: Vec<String>,
    /// The checks it fails in some runs.
    pub may_fail: Vec<String>,
    /// The unified diff.
    pub diff: String,
}

/// Where a stage's mistakes are kept.
pub fn dir(root: &Path, stage: &str) -> PathBuf {
    root.join("mistakes").join(stage)
}

/// A stage's committed mistakes, by name.
pub fn of_stage(root: &Path, stage: &str) -> Result<Vec<Mistake>> {
    let dir = dir(root, stage);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "patch") {
            found.push(parse(&path)?);
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Read one patch file.
pub fn parse(path: &Path) -> Result<Mistake> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let diff_at = text
        .find("\n--- ")
        .map(|i| i + 1)
        .with_context(|| format!("{} holds no diff", path.display()))?;
    let preamble = &text[..diff_at];
    let field = |key: &str| {
        preamble
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let list = |key: &str| -> Vec<String> {
        field(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let Some(what) = field("mistake:") else {
        bail!("{} has no `mistake:` line", path.display());
    };
    let fails = list("fails:");
    let may_fail = list("may fail:");
    if fails.is_empty() && may_fail.is_empty() {
        bail!("{} lists no check it fails (`fails: a, b`)", path.display());
    }
    Ok(Mistake {
        name,
        path: path.to_path_buf(),
        what: what.to_string(),
        fails,
        may_fail,
        diff: text[diff_at..].to_string(),
    })
}

/// Apply a unified diff to the crate's files.
pub fn apply(files: &mut [CrateFile], diff: &str) -> Result<()> {
    let mut target: Option<usize> = None;
    let mut hunks = String::new();
    let flush = |target: Option<usize>, hunks: &mut String, files: &mut [CrateFile]| {
        if let Some(i) = target {
            files[i].text = bookgen::hunks::apply(&files[i].text, &[hunks.as_str()])
                .map_err(|e| anyhow::anyhow!("{}: {e}", files[i].path))?;
        }
        hunks.clear();
        anyhow::Ok(())
    };
    for line in diff.split_inclusive('\n') {
        if line.starts_with("--- ") {
            flush(target, &mut hunks, files)?;
            target = None;
        } else if let Some(path) = line.strip_prefix("+++ ") {
            let path = path.trim_end();
            let path = path.split('\t').next().unwrap_or(path);
            let path = path.split_once('/').map_or(path, |(_, rest)| rest);
            target =
                Some(files.iter().position(|f| f.path == path).with_context(|| {
                    format!("the patch changes {path}, which the crate has not")
                })?);
        } else if target.is_some() {
            hunks.push_str(line);
        }
    }
    flush(target, &mut hunks, files)
}
