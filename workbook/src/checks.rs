//! A stage's checks run against any binary: the stage's test executables,
//! built once by cargo, run with the stage's variables (`STAGE4_BIN`)
//! pointing at the binary under test.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bookgen::Stage;
use serde_json::Value;

/// A variable through which a stage's tests take the binary under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// `STAGE4_BIN`.
    pub name: String,
    /// The binary it stands for: `stage4-edge-triggered`, `server`.
    pub bin: String,
    /// Whether it is one of the stage's own binaries (`testkit::bin`), not
    /// another stage's that its checks drive (`testkit::workspace_bin`).
    pub own: bool,
}

/// The variables a stage's tests read, from `testkit::bin("VAR",
/// env!("CARGO_BIN_EXE_name"))` (and `testkit::workspace_bin("VAR",
/// "name")`) in its `tests/*.rs`, in order of first use.
pub fn variables(root: &Path, stage: &Stage) -> Result<Vec<Variable>> {
    let mut found: Vec<Variable> = Vec::new();
    for source in test_sources(root, stage)? {
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("cannot read {}", source.display()))?;
        for call in ["testkit::bin(", "testkit::workspace_bin("] {
            for (at, _) in text.match_indices(call) {
                let args = &text[at + call.len()..];
                let args = &args[..args.find(')').unwrap_or(args.len())];
                let strings: Vec<&str> = args.split('"').skip(1).step_by(2).collect();
                let (Some(var), Some(bin)) = (strings.first(), strings.get(1)) else {
                    continue;
                };
                let bin = bin.strip_prefix("CARGO_BIN_EXE_").unwrap_or(bin);
                let variable = Variable {
                    name: var.to_string(),
                    bin: bin.to_string(),
                    own: call == "testkit::bin(",
                };
                if !found.iter().any(|v| v.name == variable.name) {
                    found.push(variable);
                }
            }
        }
    }
    Ok(found)
}

/// A test file's text, with the text of each file it `include!`s after it
/// (a stage whose checks another step runs too keeps them in a file both
/// include).
pub fn source_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut out = text.clone();
    for line in text.lines() {
        let included = line
            .trim()
            .strip_prefix("include!(\"")
            .and_then(|rest| rest.strip_suffix("\");"));
        if let Some(file) = included {
            out.push('\n');
            out.push_str(&std::fs::read_to_string(dir.join(file)).unwrap_or_default());
        }
    }
    out
}

/// The stage's `tests/*.rs`, sorted.
fn test_sources(root: &Path, stage: &Stage) -> Result<Vec<PathBuf>> {
    let dir = root.join(stage.dir).join("tests");
    let mut sources: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect(),
        Err(_) => Vec::new(),
    };
    sources.sort();
    Ok(sources)
}

/// One test executable of a stage, and the source it was built from.
#[derive(Debug, Clone)]
pub struct TestExe {
    pub path: PathBuf,
    pub source: PathBuf,
}

/// The artifacts of a cargo build run with `--message-format=json`:
/// `(target kind, target name, whether it is a test build, executable,
/// source)`.
fn artifacts(stdout: &str) -> Vec<(String, String, bool, PathBuf, PathBuf)> {
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| {
            let exe = v["executable"].as_str()?;
            let target = &v["target"];
            Some((
                target["kind"][0].as_str()?.to_string(),
                target["name"].as_str()?.to_string(),
                v["profile"]["test"].as_bool().unwrap_or(false),
                PathBuf::from(exe),
                PathBuf::from(target["src_path"].as_str()?),
            ))
        })
        .collect()
}

/// Run cargo with `args` in `dir`; its JSON messages on success.
fn cargo_json(dir: &Path, args: &[&str], envs: &[(&str, &OsStr)]) -> Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = command
        .output()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "`cargo {}` failed (in {}): its errors are above",
            args.join(" "),
            dir.display()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Build the stage's test executables (once: cargo rebuilds nothing that
/// is up to date).
pub fn build_tests(root: &Path, stage: &Stage) -> Result<Vec<TestExe>> {
    let (package, _) = crate::materialise::targets(root, stage)?;
    let out = cargo_json(
        root,
        &[
            "test",
            "-p",
            &package,
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
        &[],
    )?;
    let exes: Vec<TestExe> = artifacts(&out)
        .into_iter()
        .filter(|(kind, _, test, _, _)| kind == "test" && *test)
        .map(|(_, _, _, path, source)| TestExe { path, source })
        .collect();
    if exes.is_empty() {
        bail!("stage {} has no checks (no tests/*.rs)", stage.name);
    }
    Ok(exes)
}

/// What builds a crate in a folder shared by many crates, each built
/// once (the planted copies): incremental data and debug information
/// would only be written, never used, and without them a build takes
/// half the time.
fn once_in(shared: &Path) -> Vec<(&'static str, &OsStr)> {
    vec![
        ("CARGO_TARGET_DIR", shared.as_os_str()),
        ("CARGO_INCREMENTAL", OsStr::new("0")),
        ("CARGO_PROFILE_DEV_DEBUG", OsStr::new("0")),
        ("CARGO_PROFILE_TEST_DEBUG", OsStr::new("0")),
    ]
}

/// Build a crate of the reader's (or a planted copy) and return its
/// binaries by name; `target_dir` shares one build folder between crates.
pub fn build_crate(dir: &Path, target_dir: Option<&Path>) -> Result<Vec<(String, PathBuf)>> {
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.to_string_lossy();
    // A crate of its own (a `[workspace]` table: the reader's, or a
    // planted copy) builds in its own folder unless told: a
    // CARGO_TARGET_DIR inherited from the reader's shell would put it
    // beside the workspace's step of the same name, and cargo could take
    // the step's binary, built later, for the crate's.
    let own = dir.join("target");
    let standalone = std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"));
    let mut envs = match target_dir {
        Some(shared) => once_in(shared),
        None => Vec::new(),
    };
    if target_dir.is_none() && standalone {
        envs.push(("CARGO_TARGET_DIR", own.as_os_str()));
    }
    let out = cargo_json(
        dir,
        &[
            "build",
            "--manifest-path",
            &manifest,
            "--bins",
            "--message-format=json-render-diagnostics",
        ],
        &envs,
    )?;
    Ok(artifacts(&out)
        .into_iter()
        .filter(|(kind, _, test, _, _)| kind == "bin" && !test)
        .map(|(_, name, _, path, _)| (name, path))
        .collect())
}

/// Build the unit tests of a crate's binaries (`cargo test --bins
/// --no-run`) in `target_dir`: for a planted copy whose mistake only its
/// own unit tests catch.
pub fn build_unit_tests(dir: &Path, target_dir: &Path) -> Result<Vec<TestExe>> {
    let manifest = dir.join("Cargo.toml");
    let manifest = manifest.to_string_lossy();
    let out = cargo_json(
        dir,
        &[
            "test",
            "--manifest-path",
            &manifest,
            "--bins",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ],
        &once_in(target_dir),
    )?;
    Ok(artifacts(&out)
        .into_iter()
        .filter(|(kind, _, test, _, _)| kind == "bin" && *test)
        .map(|(_, _, _, path, source)| TestExe { path, source })
        .collect())
}

/// The checks of a test executable that run by default (not `#[ignore]`d).
pub fn list(exe: &TestExe) -> Result<Vec<String>> {
    let ignored = listed(exe, true)?;
    Ok(listed(exe, false)?
        .into_iter()
        .filter(|n| !ignored.contains(n))
        .collect())
}

/// The `#[ignore]`d checks of a test executable (an exercise's).
pub fn list_ignored(exe: &TestExe) -> Result<Vec<String>> {
    listed(exe, true)
}

/// What `--list` names: every check, or only the ignored ones.
fn listed(exe: &TestExe, ignored: bool) -> Result<Vec<String>> {
    let mut command = Command::new(&exe.path);
    command.args(["--list", "--format", "terse"]);
    if ignored {
        command.arg("--ignored");
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", exe.path.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

/// How one check ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    /// What the check printed when it failed: its panic message.
    pub message: String,
}

/// How to run a test executable's checks.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// The longest the executable may run.
    pub limit: Duration,
    /// How many checks run at once (the test harness's default, one per
    /// processor, when `None`): a failing check mostly waits out its
    /// timeouts, so more threads than processors finish failures sooner.
    pub threads: Option<usize>,
    /// Run the `#[ignore]`d checks (an exercise's) instead of the others.
    pub ignored: bool,
}

/// Whether the check `name` passed, run alone (one thread) in whichever of
/// a stage's test executables has it; `None` when none has it, or it could
/// not be run.
pub fn passes_alone(
    exes: &[TestExe],
    name: &str,
    envs: &[(String, PathBuf)],
    limit: Duration,
    ignored: bool,
) -> Option<bool> {
    let how = Run {
        limit,
        threads: Some(1),
        ignored,
    };
    exes.iter().find_map(|exe| {
        let outcomes = run(exe, &[name.to_string()], envs, how, &mut |_| {}).ok()?;
        outcomes
            .into_iter()
            .find(|o| o.name == name)
            .map(|o| o.passed)
    })
}

/// Run the checks `names` of `exe` (all of them when empty; a name it has no
/// check of is left out) with `envs` set, in one process, for at most
/// `how.limit`; `done` hears of each check as it finishes. A check still
/// running at the limit fails, and the process and everything it started
/// (its process group) are killed.
pub fn run(
    exe: &TestExe,
    names: &[String],
    envs: &[(String, PathBuf)],
    how: Run,
    done: &mut dyn FnMut(&Outcome),
) -> Result<Vec<Outcome>> {
    use std::os::unix::process::CommandExt;
    let limit = how.limit;
    let mut command = Command::new(&exe.path);
    command.args(names);
    if !names.is_empty() {
        command.arg("--exact");
    }
    if how.ignored {
        command.arg("--ignored");
    }
    if let Some(threads) = how.threads {
        command.arg(format!("--test-threads={threads}"));
    }
    command
        .args(["--color", "never"])
        // The failure message is what the reader needs, not a backtrace.
        .env("RUST_BACKTRACE", "0")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a kill at the limit reaches the servers it runs.
        .process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", exe.path.display()))?;
    let pid = child.id() as i32;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + limit;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut all = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("test ")
                    && let Some((name, result)) = rest.rsplit_once(" ... ")
                    && (result == "ok" || result == "FAILED")
                {
                    let outcome = Outcome {
                        name: name.to_string(),
                        passed: result == "ok",
                        message: String::new(),
                    };
                    done(&outcome);
                    outcomes.push(outcome);
                }
                all.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                // SAFETY: kill(2) on our child's own process group, by id.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
                break;
            }
        }
    }
    let status = child.wait().context("cannot wait for the checks")?;
    // The group is gone, so every pipe it held is closed.
    let _ = reader.join();
    let errors = errors.join().unwrap_or_default();
    for line in lines.try_iter() {
        all.push(line);
    }

    // The failures' messages: `---- NAME stdout ----` up to the next such
    // line or the list of failures.
    let mut current: Option<usize> = None;
    for line in &all {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            current = outcomes.iter().position(|o| o.name == name);
            continue;
        }
        if line == "failures:" {
            current = None;
        }
        if let Some(i) = current {
            outcomes[i].message.push_str(line);
            outcomes[i].message.push('\n');
        }
    }
    // A check that never reported ran out of time, or the executable ended
    // before it (a binary that cannot be run ends it at once).
    // Only the names this executable has: a stage's checks are spread
    // over several, and the others' names are not this one's to fail.
    let held = if how.ignored {
        list_ignored(exe)?
    } else {
        list(exe)?
    };
    let wanted: Vec<String> = if names.is_empty() {
        held
    } else {
        names.iter().filter(|n| held.contains(n)).cloned().collect()
    };
    for name in wanted {
        if outcomes.iter().any(|o| o.name == name) {
            continue;
        }
        let message = if timed_out {
            format!(
                "still running after {} s: the checks were stopped",
                limit.as_secs()
            )
        } else {
            format!("the checks ended ({status}) before this one reported:\n{errors}")
        };
        let outcome = Outcome {
            name,
            passed: false,
            message,
        };
        done(&outcome);
        outcomes.push(outcome);
    }
    for outcome in &mut outcomes {
        outcome.message = outcome.message.trim_matches('\n').trim_end().to_string();
    }
    Ok(outcomes)
}
