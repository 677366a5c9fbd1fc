//! The chapters' feature exercises, each with a solution committed as a
//! patch: `exercises/stage<N>/<name>.patch`, a unified diff of the project's
//! own step (paths relative to the written crate, `a/src/main.rs`), after a
//! preamble that says the exercise and the checks its solution passes:
//!
//! ```text
//! exercise: **A limit on clients.** `--max-clients N`: ...
//! passes: a_client_beyond_the_limit_is_closed_at_once_and_the_others_served
//!
//! --- a/src/main.rs
//! +++ b/src/main.rs
//! ```
//!
//! The checks are the step's `#[ignore = "exercise ..."]` ones: each fails
//! against the step as it is and passes once the solution is applied.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One exercise and its solution.
#[derive(Debug, Clone)]
pub struct Exercise {
    /// The stage it belongs to (`5c`), from its folder's name.
    pub stage: String,
    /// The patch's name: `msg`.
    pub name: String,
    pub path: PathBuf,
    /// The exercise in the chapter's words.
    pub what: String,
    /// The checks the solution passes, and the step as it is fails.
    pub passes: Vec<String>,
    /// The solution, a unified diff.
    pub diff: String,
}

/// Every committed exercise, by stage and name.
pub fn all(root: &Path) -> Result<Vec<Exercise>> {
    let dir = root.join("exercises");
    let mut found = Vec::new();
    for stage in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let stage = stage?.path();
        for entry in fs::read_dir(&stage)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "patch") {
                found.push(parse(&path)?);
            }
        }
    }
    found.sort_by(|a, b| (&a.stage, &a.name).cmp(&(&b.stage, &b.name)));
    Ok(found)
}

/// Read one patch file.
pub fn parse(path: &Path) -> Result<Exercise> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = |p: Option<&Path>| {
        p.and_then(Path::file_stem)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let folder = name(path.parent());
    let Some(stage) = folder.strip_prefix("stage") else {
        bail!("{}: its folder is not named stageN", path.display());
    };
    let diff_at = text
        .find("\n--- ")
        .map(|i| i + 1)
        .with_context(|| format!("{} holds no diff", path.display()))?;
    let field = |key: &str| {
        text[..diff_at]
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let Some(what) = field("exercise:") else {
        bail!("{} has no `exercise:` line", path.display());
    };
    let passes: Vec<String> = field("passes:")
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if passes.is_empty() {
        bail!("{} names no check (`passes: a, b`)", path.display());
    }
    Ok(Exercise {
        stage: stage.to_string(),
        name: name(Some(path)),
        path: path.to_path_buf(),
        what: what.to_string(),
        passes,
        diff: text[diff_at..].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_committed_exercise_parses_and_names_a_stage_there_is() {
        let root = bookgen::workspace_root();
        let found = all(&root).unwrap();
        assert!(!found.is_empty());
        for e in found {
            assert!(
                bookgen::stage(&e.stage).is_some(),
                "{}: no stage {}",
                e.path.display(),
                e.stage
            );
        }
    }
}
