//! `workbook`: work a stage instead of only reading it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bookgen::Stage;
use workbook::chapter::{self, Chapter};
use workbook::checks::{self, Outcome};
use workbook::{default_dir, mistakes, stage};

const USAGE: &str = "\
usage: cargo run -p workbook -- COMMAND

  start N [--dir DIR] [--force]
        write your own crate for stage N into DIR (default my/stageN): the
        stage before N, with every function N changes left as todo!() and a
        comment naming the chapter's section that explains it
  check N [--dir DIR | --bin PATH ...]
        build your crate (default my/stageN) and run stage N's checks against
        it, or against any binary: --bin PATH (or --bin VARIABLE=PATH, or
        --bin NAME=PATH, for a stage with a server and a client)
  break N NAME [--dir DIR] [--force]
        write the project's own stage N into DIR (default my/stageN-NAME)
        with the chapter's mistake NAME planted in it
  list  the stages, the variables their checks read, and their mistakes
  -h, --help  print this help";

/// The longest one test executable may run before its checks are stopped.
const LIMIT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let root = bookgen::workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("start") => start(&root, &args[1..]).map(|()| true),
        Some("check") => check(&root, &args[1..]),
        Some("break") => plant(&root, &args[1..]).map(|()| true),
        Some("list") if args.len() == 1 => list(&root).map(|()| true),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command's arguments: the words, `--force`, and each `--dir` and
/// `--bin` value.
struct Args {
    words: Vec<String>,
    dir: Option<PathBuf>,
    bins: Vec<String>,
    force: bool,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut out = Args {
        words: Vec::new(),
        dir: None,
        bins: Vec::new(),
        force: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--force" => out.force = true,
            "--dir" => {
                let dir = args.next().context("--dir needs a folder")?;
                out.dir = Some(std::path::absolute(dir).context("cannot read the current folder")?);
            }
            "--bin" => out
                .bins
                .push(args.next().context("--bin needs a path")?.clone()),
            flag if flag.starts_with('-') => bail!("unknown option {flag}\n\n{USAGE}"),
            word => out.words.push(word.to_string()),
        }
    }
    Ok(out)
}

/// The path as the reader sees it: from the workspace's top when inside it.
fn shown(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn start(root: &Path, args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let [name] = &args.words[..] else {
        bail!("usage: start N [--dir DIR] [--force]");
    };
    let stage = stage(name)?;
    let dir = args.dir.unwrap_or_else(|| default_dir(root, stage));
    workbook::start(root, stage, &dir, args.force)?;
    let base = stage.diff.map_or("", |d| d.base);
    let dir = shown(root, &dir);
    println!(
        "wrote {dir}: stage {base}, with what stage {} changes left as `todo!()`.\n\
         Read book/src/stage{}.md and fill in each `todo!()` where its comment says;\n\
         `cargo build --manifest-path {dir}/Cargo.toml` builds it, and\n\
         `cargo run -p workbook -- check {}{}` runs the stage's checks against it.",
        stage.name,
        stage.name,
        stage.name,
        if dir == format!("my/stage{}", stage.name) {
            String::new()
        } else {
            format!(" --dir {dir}")
        }
    );
    Ok(())
}

fn plant(root: &Path, args: &[String]) -> Result<()> {
    let args = parse(args)?;
    let [name, mistake] = &args.words[..] else {
        bail!("usage: break N NAME [--dir DIR] [--force]");
    };
    let stage = stage(name)?;
    let known = mistakes::of_stage(root, stage.name)?;
    let Some(m) = known.iter().find(|m| m.name == *mistake) else {
        let names: Vec<&str> = known.iter().map(|m| m.name.as_str()).collect();
        bail!(
            "stage {} has no mistake {mistake:?}{}",
            stage.name,
            if names.is_empty() {
                String::new()
            } else {
                format!(": its mistakes are {}", names.join(", "))
            }
        );
    };
    let dir = args.dir.unwrap_or_else(|| {
        root.join("my")
            .join(format!("stage{}-{}", stage.name, m.name))
    });
    workbook::write_step(root, stage, Some(m), &dir, args.force)?;
    let dir = shown(root, &dir);
    println!(
        "wrote {dir}: the project's stage {} with a mistake planted: {}.\n\
         Check it with `cargo run -p workbook -- check {} --dir {dir}`.",
        stage.name, m.what, stage.name,
    );
    if !m.fails.is_empty() {
        println!("It must fail {}.", m.fails.join(", "));
    }
    if !m.may_fail.is_empty() {
        println!(
            "It {} {} (in some runs, not all).",
            if m.fails.is_empty() {
                "fails at least one of"
            } else {
                "may also fail"
            },
            m.may_fail.join(", ")
        );
    }
    Ok(())
}

fn list(root: &Path) -> Result<()> {
    for stage in &bookgen::STAGES {
        let present = bookgen::is_present(root, stage);
        let base = stage
            .diff
            .map_or("no base: start it from nothing".to_string(), |d| {
                format!("grows from {}", d.base)
            });
        println!(
            "stage {:<3} {}{} ({base})",
            stage.name,
            stage.dir,
            if present { "" } else { " (not yet written)" }
        );
        if !present {
            continue;
        }
        let vars = checks::variables(root, stage)?;
        if !vars.is_empty() {
            let vars: Vec<String> = vars
                .iter()
                .map(|v| format!("{} ({})", v.name, v.bin))
                .collect();
            println!("          checks read {}", vars.join(", "));
        }
        for m in mistakes::of_stage(root, stage.name)? {
            println!("          break {} {}: {}", stage.name, m.name, m.what);
        }
    }
    Ok(())
}

/// The variables to set for the binaries under test: the reader's built
/// crate, or the `--bin` values.
fn binaries(
    root: &Path,
    stage: &Stage,
    args: &Args,
    vars: &[checks::Variable],
) -> Result<Vec<(String, PathBuf)>> {
    if args.bins.is_empty() {
        let dir = args.dir.clone().unwrap_or_else(|| default_dir(root, stage));
        if !dir.join("Cargo.toml").is_file() {
            bail!(
                "{} has no Cargo.toml: write one with `cargo run -p workbook -- start {}`, or name your crate with --dir, or any binary with --bin",
                shown(root, &dir),
                stage.name
            );
        }
        println!("building {}", shown(root, &dir));
        let built = checks::build_crate(&dir, None)?;
        let mut envs = Vec::new();
        for var in vars {
            if let Some((_, path)) = built.iter().find(|(name, _)| *name == var.bin) {
                envs.push((var.name.clone(), path.clone()));
            }
        }
        if envs.is_empty() {
            let names: Vec<&str> = vars.iter().map(|v| v.bin.as_str()).collect();
            bail!(
                "{} builds no binary the checks run (they want {})",
                shown(root, &dir),
                names.join(" or ")
            );
        }
        return Ok(envs);
    }
    let mut envs = Vec::new();
    for bin in &args.bins {
        let (var, path) = match bin.split_once('=') {
            Some((key, path)) => {
                let var = vars
                    .iter()
                    .find(|v| v.name == key || v.bin == key)
                    .with_context(|| {
                        let names: Vec<String> = vars
                            .iter()
                            .map(|v| format!("{} ({})", v.bin, v.name))
                            .collect();
                        format!(
                            "stage {}'s checks read no {key}: they read {}",
                            stage.name,
                            names.join(", ")
                        )
                    })?;
                (var, path)
            }
            None if vars.iter().filter(|v| v.own).count() == 1 => {
                (vars.iter().find(|v| v.own).unwrap(), bin.as_str())
            }
            None => {
                let names: Vec<String> = vars
                    .iter()
                    .filter(|v| v.own)
                    .map(|v| format!("{}=PATH", v.bin))
                    .collect();
                bail!(
                    "stage {}'s checks run more than one binary: say which with --bin {}",
                    stage.name,
                    names.join(" --bin ")
                );
            }
        };
        let path = std::path::absolute(path).context("cannot read the current folder")?;
        if !path.is_file() {
            bail!("{} is not a file", path.display());
        }
        envs.push((var.name.clone(), path));
    }
    Ok(envs)
}

fn check(root: &Path, args: &[String]) -> Result<bool> {
    let args = parse(args)?;
    let [name] = &args.words[..] else {
        bail!("usage: check N [--dir DIR | --bin PATH ...]");
    };
    if args.dir.is_some() && !args.bins.is_empty() {
        bail!("give --dir or --bin, not both");
    }
    let stage = stage(name)?;
    if !bookgen::is_present(root, stage) {
        bail!("stage {} has no crate yet, so no checks", stage.name);
    }
    let vars = checks::variables(root, stage)?;
    if vars.is_empty() {
        bail!(
            "stage {}'s checks take no binary of yours (no testkit::bin in its tests)",
            stage.name
        );
    }
    let envs = binaries(root, stage, &args, &vars)?;
    let (package, _) = workbook::materialise::targets(root, stage)?;
    println!(
        "building the checks of stage {} (cargo test -p {package} --no-run)",
        stage.name
    );
    let exes = checks::build_tests(root, stage)?;
    for (var, path) in &envs {
        println!("testing {} as {var}", shown(root, path));
    }
    let mut lists = Vec::new();
    for exe in &exes {
        lists.push(checks::list(exe)?);
    }
    let total: usize = lists.iter().map(Vec::len).sum();
    let mut finished = 0;
    let mut failures: Vec<(usize, Outcome)> = Vec::new();
    for (i, exe) in exes.iter().enumerate() {
        let mut progress = |o: &Outcome| {
            finished += 1;
            let mark = if o.passed { "ok" } else { "FAILED" };
            println!("[{finished}/{total}] {mark} {}", o.name);
        };
        let how = checks::Run {
            limit: LIMIT,
            threads: None,
            ignored: false,
        };
        let outcomes = checks::run(exe, &[], &envs, how, &mut progress)?;
        failures.extend(outcomes.into_iter().filter(|o| !o.passed).map(|o| (i, o)));
    }
    println!();
    if failures.is_empty() {
        println!("all {total} checks of stage {} pass", stage.name);
        return Ok(true);
    }
    // The first failure as the test file reads: the stage's own checks in
    // their order, then those that testkit writes for every stage.
    let sources: Vec<String> = exes
        .iter()
        .map(|e| checks::source_text(&e.source))
        .collect();
    failures.sort_by_key(|(i, o)| {
        let at = sources[*i]
            .find(&format!("fn {}(", o.name))
            .unwrap_or(usize::MAX);
        (o.name.contains("::"), *i, at, o.name.clone())
    });
    let names: Vec<&str> = failures.iter().map(|(_, o)| o.name.as_str()).collect();
    println!(
        "{} of {total} checks failed: {}",
        failures.len(),
        names.join(", ")
    );
    let (i, first) = &failures[0];
    let chapter = Chapter::of(root, stage.name);
    println!(
        "\nThe first: {} ({})",
        first.name,
        shown(root, &exes[*i].source)
    );
    if let Some(proves) = chapter::what_it_proves(root, &exes[*i].source, &first.name)
        .or_else(|| chapter.bullet(&first.name))
    {
        println!("What it proves: {}", proves.replace("**", ""));
    }
    println!("How it failed:");
    for line in first.message.lines() {
        if line.starts_with("note: run with `RUST_BACKTRACE") {
            continue;
        }
        println!("    {line}");
    }
    if let Some(section) = chapter.section_naming(&first.name) {
        println!("Read: {}", chapter.cite(&section));
    }
    Ok(false)
}
