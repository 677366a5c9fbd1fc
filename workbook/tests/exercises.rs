//! The rule of the feature exercises: each check an exercise's solution
//! names (an `#[ignore = "exercise ..."]` check of its step) fails against
//! the project's own step and passes once the solution is applied.

use std::path::{Path, PathBuf};
use std::time::Duration;

use workbook::checks;
use workbook::exercises::{self, Exercise};

/// The most one exercise check may run.
const LIMIT: Duration = Duration::from_secs(120);

/// Write the project's own step (with the solution, if given) into `dir`,
/// build it in the shared folder `target`, and return the variables that
/// point the checks at its binaries (copied out, since the next crate's
/// build replaces them).
fn built(
    root: &Path,
    e: &Exercise,
    solved: bool,
    out: &Path,
    target: &Path,
) -> Vec<(String, PathBuf)> {
    let stage = workbook::stage(&e.stage).unwrap();
    let which = if solved { e.name.as_str() } else { "as-it-is" };
    let dir = out.join(format!("stage{}-{which}", e.stage));
    // Written just before it is built: its sources are newer than the last
    // build in the shared folder, so cargo rebuilds it.
    if solved {
        workbook::write_solved(root, stage, e, &dir, true).unwrap();
    } else {
        workbook::write_step(root, stage, None, &dir, true).unwrap();
    }
    let bins = checks::build_crate(&dir, Some(target))
        .unwrap_or_else(|err| panic!("{} ({which}) does not build: {err:#}", e.path.display()));
    let copies = out.join("bin").join(format!("stage{}-{which}", e.stage));
    std::fs::create_dir_all(&copies).unwrap();
    let mut envs = Vec::new();
    for var in checks::variables(root, stage).unwrap() {
        if let Some((_, path)) = bins.iter().find(|(n, _)| *n == var.bin) {
            let copy = copies.join(&var.bin);
            std::fs::copy(path, &copy).unwrap();
            envs.push((var.name.clone(), copy));
        }
    }
    envs
}

#[test]
#[ignore = "slow: run by .ci/run"]
fn each_exercise_fails_without_its_solution_and_passes_with_it() {
    let root = bookgen::workspace_root();
    let out = root.join("target/exercises");
    let target = out.join("target");
    let all = exercises::all(&root).unwrap();
    assert!(!all.is_empty(), "no exercise is committed under exercises/");
    let mut problems = Vec::new();
    for e in &all {
        let stage = workbook::stage(&e.stage).unwrap();
        let exes = checks::build_tests(&root, stage).unwrap();
        let as_it_is = built(&root, e, false, &out, &target);
        let solved = built(&root, e, true, &out, &target);
        for check in &e.passes {
            match checks::passes_alone(&exes, check, &as_it_is, LIMIT, true) {
                None => {
                    problems.push(format!(
                        "{}: stage {} has no exercise check {check}",
                        e.path.display(),
                        e.stage
                    ));
                    continue;
                }
                Some(true) => problems.push(format!(
                    "{}: {check} passes without the solution",
                    e.path.display()
                )),
                Some(false) => {}
            }
            if checks::passes_alone(&exes, check, &solved, LIMIT, true) != Some(true) {
                problems.push(format!(
                    "{}: {check} fails with the solution",
                    e.path.display()
                ));
            }
        }
        eprintln!(
            "stage {}, {}: {} fail without the solution and pass with it",
            e.stage,
            e.name,
            e.passes.join(", ")
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
