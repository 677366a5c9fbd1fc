//! The workbook command as a reader runs it: `start` writes a crate that
//! builds, `check` fails it and names a check, passes the project's own
//! binary, and `break` and `list` name the committed mistakes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use workbook::checks;

fn root() -> PathBuf {
    bookgen::workspace_root()
}

/// One build folder for the crates these tests build themselves, so their
/// dependencies are built once.
fn target_dir() -> PathBuf {
    root().join("target/workbook-tests")
}

/// Run the workbook command with `args`; every wait inside it is bounded.
fn workbook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_workbook"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the workbook command")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[test]
fn start_writes_a_crate_that_builds_and_check_fails_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stage4");
    let out = workbook(&["start", "4", "--dir", path_str(&dir)]);
    assert!(out.status.success(), "start 4 failed:\n{}", text(&out));
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(
        main.contains("todo!()")
            && main.contains("book/src/stage4.md, \"Accepting until `EAGAIN`\""),
        "start 4 left no todo!() with its section:\n{main}"
    );
    let again = workbook(&["start", "4", "--dir", path_str(&dir)]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "start 4 overwrote an existing crate without --force:\n{}",
        text(&again)
    );

    // `check` builds the crate first (in its own target folder), so a
    // failing check also proves that the crate builds.
    let out = workbook(&["check", "4", "--dir", path_str(&dir)]);
    let said = text(&out);
    assert!(
        !out.status.success(),
        "check 4 passed a crate of todo!()s:\n{said}"
    );
    assert!(
        !said.contains("failed (in"),
        "start 4's crate does not build:\n{said}"
    );
    assert!(
        said.contains("FAILED")
            && said.contains("The first: ")
            && said.contains("Read: book/src/stage4.md"),
        "check 4 named no failing check and no section:\n{said}"
    );
}

#[test]
fn start_3_builds_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stage3");
    let out = workbook(&["start", "3", "--dir", path_str(&dir)]);
    assert!(out.status.success(), "start 3 failed:\n{}", text(&out));
    let built = checks::build_crate(&dir, Some(&target_dir()));
    assert!(built.is_ok(), "start 3's crate does not build: {built:?}");
}

#[test]
fn start_refuses_a_stage_without_a_base() {
    for stage in ["1", "6"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = workbook(&["start", stage, "--dir", path_str(&tmp.path().join("x"))]);
        assert!(
            !out.status.success() && text(&out).contains("grows from no earlier stage"),
            "start {stage} did not refuse clearly:\n{}",
            text(&out)
        );
    }
}

#[test]
fn check_passes_the_projects_own_stage_4() {
    let stage = bookgen::stage("4").unwrap();
    let built = checks::build_crate(&root().join(stage.dir), None).unwrap();
    let (_, bin) = built
        .iter()
        .find(|(name, _)| name == "stage4-edge-triggered")
        .expect("stage 4 builds its binary");
    let out = workbook(&["check", "4", "--bin", path_str(bin)]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "check 4 failed stage 4 itself:\n{said}"
    );
    assert!(
        said.contains("all ") && said.contains(" checks of stage 4 pass"),
        "{said}"
    );
    assert!(said.contains("[1/"), "check 4 showed no progress:\n{said}");
}

#[test]
fn break_writes_the_step_with_its_mistake_and_says_how_to_check_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("broken");
    let out = workbook(&["break", "4", "no-limit", "--dir", path_str(&dir)]);
    let said = text(&out);
    assert!(out.status.success(), "break 4 no-limit failed:\n{said}");
    assert!(
        said.contains("workbook -- check 4 --dir") && said.contains("holds_a_bounded_amount"),
        "break said neither how to check it nor what must fail:\n{said}"
    );
    let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
    assert!(main.contains("usize::MAX"), "the mistake was not planted");

    let unknown = workbook(&["break", "4", "no-such-mistake", "--dir", path_str(&dir)]);
    assert!(
        !unknown.status.success() && text(&unknown).contains("its mistakes are"),
        "{}",
        text(&unknown)
    );
    let list = workbook(&["list"]);
    assert!(
        list.status.success()
            && text(&list).contains("STAGE4_BIN")
            && text(&list).contains("break 4 no-limit"),
        "list names neither the variable nor the mistakes:\n{}",
        text(&list)
    );
}
