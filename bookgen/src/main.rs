//! `bookgen [diffs|check]`: rewrite the book's stage diffs from the crates
//! (the default), or only report what is out of date.

use std::process::ExitCode;

use bookgen::walk::{check_anchors, check_walkthrough};
use bookgen::{HUNK_BY_HUNK, check_chapters, check_diffs, workspace_root, write_diffs};

const USAGE: &str = "\
usage: bookgen [diffs|check]

  diffs       rewrite book/src/diffs/stageN.diff from the stage crates (default)
  check       report stale diffs, stages without a chapter, parts a reworked
              chapter does not show once and in order, and unused anchors;
              exit 1 if any
  -h, --help  print this help";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["diffs"] => write_diffs(&root).map(|changed| {
            for path in &changed {
                println!("wrote {}", path.display());
            }
            if changed.is_empty() {
                println!("every diff is up to date");
            }
            true
        }),
        ["check"] => check_diffs(&root).and_then(|mut problems| {
            let stale = !problems.is_empty();
            problems.extend(check_chapters(&root)?);
            problems.extend(check_walkthrough(&root, HUNK_BY_HUNK)?);
            problems.extend(check_anchors(&root)?);
            for problem in &problems {
                eprintln!("{problem}");
            }
            if stale {
                eprintln!("{}", bookgen::stale_diffs_advice());
            }
            Ok(problems.is_empty())
        }),
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
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
