//! The committed mistakes against the chapters: each patch, planted in the
//! project's own step, fails exactly the checks it lists; and each row of a
//! chapter's table of mistakes has its patch, which fails the checks the
//! row names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use workbook::checks;
use workbook::mistakes::{self, Mistake};

/// The stages whose chapters have a table of mistakes with patches.
const STAGES: &[&str] = &[
    "4", "4b", "5a", "5b", "5c", "5d", "5e", "5f", "5g", "5", "7a", "7b", "7c", "7d", "7e", "7f",
    "7g", "7",
];

/// The most one planted step's checks may run.
const LIMIT: Duration = Duration::from_secs(300);

/// Checks run at once against one planted step: most of a failing check's
/// time is spent waiting out a timeout, not on the processor.
const THREADS: usize = 6;

/// Planted steps checked at once, for the same reason: with four at once
/// (and the builds beside them) the two processors were busy less than
/// three quarters of the time, and six took an eighth less time than four.
const AT_ONCE: usize = 6;

fn root() -> PathBuf {
    bookgen::workspace_root()
}

/// The headers a table of mistakes opens with.
const HEADERS: &[&str] = &[
    "| mistake planted | the check that fails |",
    "| the mistake | the checks that fail |",
];

/// Where a chapter's table of mistakes starts.
fn table_at(chapter: &str) -> Option<usize> {
    HEADERS.iter().find_map(|h| chapter.find(h))
}

/// The rows of a chapter's table of mistakes: `(mistake, checks named)`.
/// A row that says "the same two" names the checks of the row above; a row
/// that says "none" is a mistake no check catches, so it has no patch.
/// Checks named after the words "library check" test the library in the
/// workspace, not the planted step's binary: a patch cannot fail them, and
/// a row that names only those has no patch.
fn table(chapter: &str) -> Vec<(String, Vec<String>)> {
    let Some(start) = table_at(chapter) else {
        return Vec::new();
    };
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for line in chapter[start..].lines().skip(2) {
        let Some(row) = line.strip_prefix('|').and_then(|l| l.strip_suffix('|')) else {
            break;
        };
        let cells: Vec<&str> = row.split(" | ").map(str::trim).collect();
        let [what, fails] = cells[..] else {
            panic!("a row of the table of mistakes is not two cells: {line}");
        };
        let (binary, library) = fails.split_once("library check").unwrap_or((fails, ""));
        // A check's name has an underscore; `accept` in prose has none.
        let names = |text: &str| -> Vec<String> {
            text.split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| w.contains('_') && !w.contains(' '))
                .map(str::to_string)
                .collect()
        };
        let mut named = names(binary);
        if named.is_empty() && !names(library).is_empty() {
            continue;
        }
        if named.is_empty() && fails.starts_with("the same") {
            named = rows.last().map(|(_, n)| n.clone()).unwrap_or_default();
        }
        if fails.starts_with("none") {
            continue;
        }
        rows.push((what.to_string(), named));
    }
    rows
}

#[test]
fn every_row_of_the_table_of_mistakes_has_its_patch_and_every_patch_its_row() {
    let root = root();
    for stage in STAGES {
        let chapter = std::fs::read_to_string(bookgen::chapter_path(&root, stage)).unwrap();
        let rows = table(&chapter);
        assert!(!rows.is_empty(), "stage{stage}.md has no table of mistakes");
        let patches = mistakes::of_stage(&root, stage).unwrap();
        let mut problems = Vec::new();
        for (what, named) in &rows {
            let Some(patch) = patches.iter().find(|m| m.what == *what) else {
                problems.push(format!(
                    "the row \"{what}\" of stage{stage}.md has no patch in mistakes/{stage}/ (one whose `mistake:` line is the row's first cell)"
                ));
                continue;
            };
            for check in named {
                // A check the mistake fails in some runs only is listed
                // under `may fail:`, and still counts as the row's.
                // A name cut short with `...` stands for any it begins.
                let listed = |c: &String| {
                    let name = c.rsplit("::").next().unwrap_or(c);
                    match check.strip_suffix("...") {
                        Some(start) => name.starts_with(start) || c.starts_with(start),
                        None => c == check || name == check,
                    }
                };
                if !patch.fails.iter().chain(&patch.may_fail).any(listed) {
                    problems.push(format!(
                        "the row \"{what}\" names `{check}`, which {} lists neither in `fails:` nor in `may fail:`",
                        patch.path.display()
                    ));
                }
            }
        }
        for patch in &patches {
            if !rows.iter().any(|(what, _)| *what == patch.what) {
                problems.push(format!(
                    "{} is in no row of stage{stage}.md's table of mistakes: its `mistake:` line is \"{}\"",
                    patch.path.display(),
                    patch.what
                ));
            }
        }
        let table_at = table_at(&chapter).unwrap();
        let opened = chapter[..table_at].rfind("<details>");
        let closed = chapter[..table_at].rfind("</details>");
        if opened.is_none() || closed > opened {
            problems.push(format!(
                "the table of mistakes of stage{stage}.md is not inside <details>: a reader trying the exercises should not see the answers at once"
            ));
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

/// What a planted step failed that its patch does not allow, what it
/// passed that its patch says it fails, or that it failed nothing.
fn disagreement(m: &Mistake, failed: &BTreeSet<String>) -> Option<String> {
    let must: BTreeSet<&String> = m.fails.iter().collect();
    let may: BTreeSet<&String> = m.may_fail.iter().collect();
    let passed: Vec<&&String> = must.iter().filter(|c| !failed.contains(**c)).collect();
    let extra: Vec<&String> = failed
        .iter()
        .filter(|c| !must.contains(c) && !may.contains(c))
        .collect();
    if failed.is_empty() {
        return Some(format!(
            "{}: every check passed: no check catches the mistake",
            m.path.display()
        ));
    }
    if passed.is_empty() && extra.is_empty() {
        return None;
    }
    Some(format!(
        "{}: passed {passed:?}, which it must fail; failed {extra:?}, which it does not list (it failed {failed:?})",
        m.path.display()
    ))
}

/// How many more times a disputed check runs, alone.
const RETRIES: usize = 2;

/// Run each check the first run disputes again, alone, so the other
/// checks' load cannot decide it: a check the patch says it fails counts
/// as failed if it fails in any run (the mistake opens a race a run may
/// miss), and a check the patch does not list counts as failed only if it
/// fails every time it runs alone (once it passes alone, the first failure
/// came from the load of the checks around it, not from the mistake).
fn second_look(
    m: &Mistake,
    exes: &[checks::TestExe],
    envs: &[(String, PathBuf)],
    failed: &mut BTreeSet<String>,
) {
    // A patch that lists only checks it fails in some runs, and failed
    // none, has those checks looked at again too.
    let must = if m.fails.is_empty() && failed.is_empty() {
        &m.may_fail
    } else {
        &m.fails
    };
    let passed: Vec<String> = must
        .iter()
        .filter(|c| !failed.contains(*c))
        .cloned()
        .collect();
    let extra: Vec<String> = failed
        .iter()
        .filter(|c| !m.fails.contains(c) && !m.may_fail.contains(c))
        .cloned()
        .collect();
    let alone = |name: &str| checks::passes_alone(exes, name, envs, LIMIT, false);
    for name in passed {
        if (0..RETRIES).any(|_| alone(&name) == Some(false)) {
            failed.insert(name);
        }
    }
    for name in extra {
        if (0..RETRIES).any(|_| alone(&name) == Some(true)) {
            eprintln!(
                "{}: {name} failed among the others and passed alone: the load, not the mistake",
                m.path.display()
            );
            failed.remove(&name);
        }
    }
}

/// A planted step, built, with the checks to run against it.
struct Planted {
    mistake: Mistake,
    exes: Vec<checks::TestExe>,
    envs: Vec<(String, PathBuf)>,
}

/// Build every committed mistake's planted step, one after another (they
/// share one build folder, so only each planted crate is compiled), and
/// hand each over as soon as it is built. The later stages' checks take
/// longest: they are built first, so their checks start first and the
/// quick ones fill in at the end.
fn plant_all(root: &Path, send: mpsc::Sender<Planted>) {
    let out = root.join("target/mistakes");
    let target = out.join("target");
    for name in STAGES.iter().rev() {
        let stage = bookgen::stage(name).unwrap();
        let exes = checks::build_tests(root, stage).unwrap();
        let names: BTreeSet<String> = exes
            .iter()
            .flat_map(|exe| checks::list(exe).unwrap())
            .collect();
        let vars = checks::variables(root, stage).unwrap();
        for m in mistakes::of_stage(root, name).unwrap() {
            // Written just before it is built: its sources are newer than
            // the last build in the shared folder, so cargo rebuilds it.
            let dir = out.join(format!("stage{name}-{}", m.name));
            workbook::write_step(root, stage, Some(&m), &dir, true).unwrap();
            let built = checks::build_crate(&dir, Some(&target))
                .unwrap_or_else(|e| panic!("{} does not build: {e:#}", m.path.display()));
            // The shared folder's binary is the next crate's after its build.
            let bins = out.join("bin").join(format!("stage{name}-{}", m.name));
            std::fs::create_dir_all(&bins).unwrap();
            let mut envs = Vec::new();
            for var in &vars {
                if let Some((_, path)) = built.iter().find(|(n, _)| *n == var.bin) {
                    let copy = bins.join(&var.bin);
                    std::fs::copy(path, &copy).unwrap();
                    envs.push((var.name.clone(), copy));
                }
            }
            // A name that is none of the step's checks is a unit test of
            // the planted crate's own: only then are they built and run.
            let mut exes = exes.clone();
            if m.fails
                .iter()
                .chain(&m.may_fail)
                .any(|c| !names.contains(c))
            {
                let units = checks::build_unit_tests(&dir, &target).unwrap_or_else(|e| {
                    panic!("{}: its unit tests do not build: {e:#}", m.path.display())
                });
                for (i, unit) in units.into_iter().enumerate() {
                    let copy = bins.join(format!("unit-{i}"));
                    std::fs::copy(&unit.path, &copy).unwrap();
                    exes.push(checks::TestExe {
                        path: copy,
                        source: unit.source,
                    });
                }
            }
            let planted = Planted {
                mistake: m,
                exes,
                envs,
            };
            if send.send(planted).is_err() {
                return; // every checker has stopped: a panic there says why
            }
        }
    }
}

/// Run every check of a planted step, and say where it disagrees with
/// its patch.
fn check(p: &Planted) -> Option<String> {
    let mut failed = BTreeSet::new();
    for exe in &p.exes {
        let how = checks::Run {
            limit: LIMIT,
            threads: Some(THREADS),
            ignored: false,
        };
        let outcomes = checks::run(exe, &[], &p.envs, how, &mut |_| {}).unwrap();
        failed.extend(outcomes.into_iter().filter(|o| !o.passed).map(|o| o.name));
    }
    if disagreement(&p.mistake, &failed).is_some() {
        second_look(&p.mistake, &p.exes, &p.envs, &mut failed);
    }
    disagreement(&p.mistake, &failed)
}

#[test]
#[ignore = "slow: run by .ci/run"]
fn each_committed_mistake_fails_exactly_its_checks() {
    let root = root();
    let started = Instant::now();
    // Most of a check's time is spent waiting, and most of a build's on
    // the processor: the planted steps are checked while the next build.
    let (send, planted) = mpsc::channel();
    let planted = Mutex::new(planted);
    let problems = Mutex::new(Vec::new());
    let slowest = Mutex::new((Duration::ZERO, String::new()));
    thread::scope(|s| {
        s.spawn(|| plant_all(&root, send));
        for _ in 0..AT_ONCE {
            s.spawn(|| {
                loop {
                    let Ok(p) = planted.lock().unwrap().recv() else {
                        break; // every planted step is built and taken
                    };
                    let began = Instant::now();
                    if let Some(problem) = check(&p) {
                        problems.lock().unwrap().push(problem);
                    }
                    let took = began.elapsed();
                    let mut slowest = slowest.lock().unwrap();
                    if took > slowest.0 {
                        *slowest = (took, p.mistake.path.display().to_string());
                    }
                }
            });
        }
    });
    let problems = problems.into_inner().unwrap();
    let (took, which) = slowest.into_inner().unwrap();
    eprintln!(
        "built and checked every planted step in {} s; the slowest, {which}, took {} s",
        started.elapsed().as_secs(),
        took.as_secs()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
