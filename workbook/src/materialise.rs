//! A stage's files written out as a crate of its own, outside the
//! workspace: every file it is made of (those it shares with earlier stages
//! by path copied in at the path the stage sees them), a manifest that
//! builds alone, and the workspace's `Cargo.lock`, so it builds with the
//! versions already downloaded.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use bookgen::Stage;

/// One file of a written-out crate.
#[derive(Debug, Clone)]
pub struct CrateFile {
    /// Its path in the crate: `src/main.rs`.
    pub path: String,
    /// Where it came from, in the workspace.
    pub real: PathBuf,
    /// Its text, without the book's anchor lines.
    pub text: String,
}

/// The files of stage `from`, placed as `stage` sees them: `from` is
/// `stage` itself or the stage it grows from, whose files move where
/// `stage`'s diff renames them (5a's `src/main.rs` is its
/// `src/bin/server.rs`). `#[path]` attributes point at the copies.
pub fn stage_files(root: &Path, stage: &Stage, from: &Stage) -> Result<Vec<CrateFile>> {
    stage_files_patched(root, stage, from, None)
}

/// [`stage_files`], with `diff` (a diff of the workspace's files as they
/// are, anchor lines and all: an exercise's solution) applied before the
/// anchors are taken out.
pub fn stage_files_patched(
    root: &Path,
    stage: &Stage,
    from: &Stage,
    diff: Option<&str>,
) -> Result<Vec<CrateFile>> {
    let renames = match stage.diff {
        Some(spec) if spec.base == from.name => spec.renames,
        _ => &[],
    };
    let mut files = Vec::new();
    for (name, real) in bookgen::effective_files(root, from)? {
        let text =
            fs::read_to_string(&real).with_context(|| format!("cannot read {}", real.display()))?;
        let path = renames
            .iter()
            .find(|(old, _)| *old == name)
            .map_or(name, |(_, new)| new.to_string());
        files.push(CrateFile { path, real, text });
    }
    if let Some(diff) = diff {
        crate::mistakes::apply(&mut files, diff)?;
    }
    for file in &mut files {
        file.text = bookgen::strip_anchors(&file.text);
    }
    fix_path_attributes(&mut files);
    if files.iter().any(|f| f.path == "src/lib.rs") {
        let (package, _) = targets(root, stage)?;
        rename_libraries(root, &mut files, &package.replace('-', "_"))?;
    }
    Ok(files)
}

/// Make a path into another stage's library (`stage5a_lines::framer`, in a
/// file that stage wrote) a path into this crate's own (`stage5b_chat::`):
/// the written crate is one package, named as the stage.
fn rename_libraries(root: &Path, files: &mut [CrateFile], own: &str) -> Result<()> {
    let mut others = Vec::new();
    for stage in bookgen::STAGES
        .iter()
        .filter(|s| bookgen::is_present(root, s))
    {
        let lib = targets(root, stage)?.0.replace('-', "_");
        if lib != own && !others.contains(&lib) {
            others.push(lib);
        }
    }
    for file in files.iter_mut() {
        for lib in &others {
            let from = format!("{lib}::");
            let mut out = String::new();
            let mut rest = file.text.as_str();
            while let Some(at) = rest.find(&from) {
                // Only the whole word: not the tail of a longer name.
                let before = rest[..at].chars().next_back();
                let whole = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
                out.push_str(&rest[..at]);
                out.push_str(if whole { own } else { lib });
                out.push_str("::");
                rest = &rest[at + from.len()..];
            }
            out.push_str(rest);
            file.text = out;
        }
    }
    Ok(())
}

/// Point every `#[path = "..."]` at the copy of the file it names, from the
/// declaring file's own folder.
fn fix_path_attributes(files: &mut [CrateFile]) {
    let places: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| (f.real.clone(), f.path.clone()))
        .collect();
    for file in files.iter_mut() {
        let dir = file
            .real
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut out = String::new();
        for line in file.text.split_inclusive('\n') {
            let target = line
                .trim()
                .strip_prefix("#[path = \"")
                .and_then(|rest| rest.strip_suffix("\"]"));
            let copy = target.and_then(|t| {
                let real = normalize(&dir.join(t));
                places.iter().find(|(r, _)| *r == real).map(|(_, p)| p)
            });
            match (target, copy) {
                (Some(target), Some(copy)) => {
                    let from = Path::new(&file.path).parent().unwrap_or(Path::new(""));
                    let rel = relative(from, Path::new(copy));
                    out.push_str(&line.replacen(target, &rel, 1));
                }
                _ => out.push_str(line),
            }
        }
        file.text = out;
    }
}

/// `a/b/../c` as `a/c`, without asking the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The path of `to` from the folder `from` (both relative to one root).
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// A binary target of a stage: its name and its path in the written crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinTarget {
    pub name: String,
    pub path: String,
}

/// The sections of a manifest: `(header, lines)`, the lines before the
/// first header under `""`.
fn sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            out.push((t.to_string(), Vec::new()));
        } else if let Some((_, lines)) = out.last_mut() {
            lines.push(line.to_string());
        }
    }
    out
}

/// `key = "value"` in a section's lines.
fn value<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The path a stage's manifest gives a target, as the written crate has it:
/// a file used from another crate by path is copied to its own `src/...`.
fn crate_path(path: &str) -> String {
    match path.find("src/") {
        Some(i) if !path.starts_with("src/") => path[i..].to_string(),
        _ => path.to_string(),
    }
}

/// A stage's package name and binaries (a package without `[[bin]]` has
/// one, named as the package, at `src/main.rs`).
pub fn targets(root: &Path, stage: &Stage) -> Result<(String, Vec<BinTarget>)> {
    let path = root.join(stage.dir).join("Cargo.toml");
    let text =
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let sections = sections(&text);
    let package = sections
        .iter()
        .find(|(h, _)| h == "[package]")
        .and_then(|(_, lines)| value(lines, "name"))
        .with_context(|| format!("{} names no package", path.display()))?
        .to_string();
    let mut bins: Vec<BinTarget> = sections
        .iter()
        .filter(|(h, _)| h == "[[bin]]")
        .filter_map(|(_, lines)| {
            Some(BinTarget {
                name: value(lines, "name")?.to_string(),
                path: crate_path(value(lines, "path").unwrap_or("src/main.rs")),
            })
        })
        .collect();
    if bins.is_empty() && root.join(stage.dir).join("src/main.rs").is_file() {
        bins.push(BinTarget {
            name: package.clone(),
            path: "src/main.rs".to_string(),
        });
    }
    Ok((package, bins))
}

/// `path = "..."` inside a dependency's value made absolute from `base`, so
/// the written crate finds a path dependency wherever it is.
fn absolute_paths(value: &str, base: &Path) -> String {
    let Some(at) = value.find("path = \"") else {
        return value.to_string();
    };
    let start = at + "path = \"".len();
    let Some(len) = value[start..].find('"') else {
        return value.to_string();
    };
    let path = normalize(&base.join(&value[start..start + len]));
    format!(
        "{}{}{}",
        &value[..start],
        path.display(),
        &value[start + len..]
    )
}

/// The manifest of the written crate for `stage`: its own `[workspace]`,
/// the stage's package and binaries, and its `[dependencies]` with the
/// workspace's versions and features written out.
pub fn manifest(root: &Path, stage: &Stage, heading: &str) -> Result<String> {
    let root_text =
        fs::read_to_string(root.join("Cargo.toml")).context("cannot read Cargo.toml")?;
    let root_sections = sections(&root_text);
    let workspace_deps: Vec<(String, String)> = root_sections
        .iter()
        .filter(|(h, _)| h == "[workspace.dependencies]")
        .flat_map(|(_, lines)| lines.iter())
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim().to_string(), absolute_paths(v.trim(), root)))
        })
        .collect();
    let edition = root_sections
        .iter()
        .find(|(h, _)| h == "[workspace.package]")
        .and_then(|(_, lines)| value(lines, "edition"))
        .unwrap_or("2024");

    let stage_dir = root.join(stage.dir);
    let stage_text = fs::read_to_string(stage_dir.join("Cargo.toml"))
        .with_context(|| format!("cannot read {}/Cargo.toml", stage.dir))?;
    let (package, bins) = targets(root, stage)?;
    let mut out = String::new();
    for line in heading.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    out.push_str(&format!(
        "[package]\nname = \"{package}\"\nversion = \"0.1.0\"\nedition = \"{edition}\"\npublish = false\n\
         # Only the binaries listed below, named as the stage's.\nautobins = false\n\n\
         # A workspace of its own: the workbook's workspace does not claim it.\n[workspace]\n"
    ));
    for bin in &bins {
        out.push_str(&format!(
            "\n[[bin]]\nname = \"{}\"\npath = \"{}\"\n",
            bin.name, bin.path
        ));
    }
    out.push_str("\n[dependencies]\n");
    for (header, lines) in sections(&stage_text) {
        if header != "[dependencies]" {
            continue;
        }
        for line in lines {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let Some((key, val)) = t.split_once('=') else {
                continue;
            };
            let (key, val) = (key.trim(), val.trim());
            if let Some(name) = key.strip_suffix(".workspace") {
                let (_, spec) = workspace_deps
                    .iter()
                    .find(|(k, _)| k == name)
                    .with_context(|| format!("{name} is not in [workspace.dependencies]"))?;
                out.push_str(&format!("{name} = {spec}\n"));
            } else if val.contains("workspace = true") {
                let (_, spec) = workspace_deps
                    .iter()
                    .find(|(k, _)| k == key)
                    .with_context(|| format!("{key} is not in [workspace.dependencies]"))?;
                let inner = match spec.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(table) => table.trim().to_string(),
                    None => format!("version = {spec}"),
                };
                out.push_str(&format!(
                    "{key} = {}\n",
                    val.replacen("workspace = true", &inner, 1)
                ));
            } else {
                out.push_str(&format!("{key} = {}\n", absolute_paths(val, &stage_dir)));
            }
        }
    }
    Ok(out)
}

/// Write the crate into `dir`: its files, `Cargo.toml`, and the
/// workspace's `Cargo.lock`. An existing `dir` is refused unless `force`.
pub fn write_crate(
    root: &Path,
    dir: &Path,
    files: &[CrateFile],
    manifest: &str,
    force: bool,
) -> Result<()> {
    if dir.exists() {
        if !force {
            bail!(
                "{} already exists: it may hold your work. Pass --force to overwrite it, or move it away",
                dir.display()
            );
        }
        // Only what this command writes is replaced: the crate's sources
        // and manifest (its target folder is kept, so it rebuilds fast).
        let src = dir.join("src");
        if src.exists() {
            fs::remove_dir_all(&src).with_context(|| format!("cannot remove {}", src.display()))?;
        }
    }
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&path, &file.text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    fs::write(dir.join("Cargo.toml"), manifest)
        .with_context(|| format!("cannot write {}/Cargo.toml", dir.display()))?;
    fs::copy(root.join("Cargo.lock"), dir.join("Cargo.lock"))
        .with_context(|| format!("cannot copy Cargo.lock into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_crate_files() {
        assert_eq!(
            relative(Path::new("src/bin"), Path::new("src/framer.rs")),
            "../framer.rs"
        );
        assert_eq!(
            relative(Path::new("src"), Path::new("src/framer.rs")),
            "framer.rs"
        );
    }
}
