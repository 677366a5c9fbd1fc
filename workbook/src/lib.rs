//! The workbook command's parts: a stage written out as a crate of the
//! reader's own (`start`), a stage's checks run against any binary
//! (`check`), and the chapters' mistakes planted in the project's own step
//! (`break`).

pub mod chapter;
pub mod checks;
pub mod exercises;
pub mod materialise;
pub mod mistakes;
pub mod source;
pub mod stub;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bookgen::Stage;

/// The stage named `name`, or an error that lists the names there are.
pub fn stage(name: &str) -> Result<&'static Stage> {
    bookgen::stage(name).with_context(|| {
        let names: Vec<&str> = bookgen::STAGES.iter().map(|s| s.name).collect();
        format!(
            "there is no stage {name:?}: the stages are {}",
            names.join(", ")
        )
    })
}

/// Where `start N` writes the reader's crate by default: `my/stageN`.
pub fn default_dir(root: &Path, stage: &Stage) -> PathBuf {
    root.join("my").join(format!("stage{}", stage.name))
}

/// The first lines of a written crate's manifest: what it is and how to
/// check it.
fn heading(root: &Path, stage: &Stage, what: &str, dir: &Path) -> String {
    let dir = dir.strip_prefix(root).unwrap_or(dir);
    format!(
        "{what}\nIt is a workspace of its own, outside the workbook's. Check it from the workbook with\n`cargo run -p workbook -- check {} --dir {}`.",
        stage.name,
        dir.display()
    )
}

/// Write the crate a reader starts stage `stage` from into `dir`.
pub fn start(root: &Path, stage: &Stage, dir: &Path, force: bool) -> Result<()> {
    let files = stub::start_files(root, stage)?;
    let manifest = materialise::manifest(
        root,
        stage,
        &heading(
            root,
            stage,
            &format!(
                "Your stage {}: the stage before it, with what this stage changes left for you to write.",
                stage.name
            ),
            dir,
        ),
    )?;
    materialise::write_crate(root, dir, &files, &manifest, force)
}

/// Write the project's own stage `stage`, whole, into `dir`, with the
/// committed mistake `mistake` (if any) planted in it.
pub fn write_step(
    root: &Path,
    stage: &Stage,
    mistake: Option<&mistakes::Mistake>,
    dir: &Path,
    force: bool,
) -> Result<()> {
    if !bookgen::is_present(root, stage) {
        bail!("stage {} has no crate yet", stage.name);
    }
    let mut files = materialise::stage_files(root, stage, stage)?;
    let what = match mistake {
        Some(m) => {
            mistakes::apply(&mut files, &m.diff)
                .with_context(|| format!("cannot plant {}", m.path.display()))?;
            format!(
                "The project's stage {}, with a mistake planted: {}.",
                stage.name, m.what
            )
        }
        None => format!("The project's stage {}, whole.", stage.name),
    };
    let manifest = materialise::manifest(root, stage, &heading(root, stage, &what, dir))?;
    materialise::write_crate(root, dir, &files, &manifest, force)
}

/// Write the project's own stage `stage` into `dir` with the solution of
/// the exercise `exercise` applied.
pub fn write_solved(
    root: &Path,
    stage: &Stage,
    exercise: &exercises::Exercise,
    dir: &Path,
    force: bool,
) -> Result<()> {
    let what = format!(
        "The project's stage {}, with the solution of an exercise: {}.",
        stage.name, exercise.what
    );
    // The solution is a diff of the workspace's files, anchors and all.
    let files = materialise::stage_files_patched(root, stage, stage, Some(&exercise.diff))
        .with_context(|| format!("cannot apply {}", exercise.path.display()))?;
    let manifest = materialise::manifest(root, stage, &heading(root, stage, &what, dir))?;
    materialise::write_crate(root, dir, &files, &manifest, force)
}
