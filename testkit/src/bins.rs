//! Which binary a check tests: the workspace's own build, or the reader's,
//! named by a variable.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The binary under test: the path in `$var` when it is set (a reader's own
/// implementation), otherwise the workspace's own build (`default`, which a
/// test passes as `env!("CARGO_BIN_EXE_<name>")`).
///
/// A path from `$var` is announced once per test binary; one that cannot be
/// run ends the test binary with one line, instead of every test failing.
pub fn bin(var: &str, default: &str) -> PathBuf {
    from_var(var).unwrap_or_else(|| PathBuf::from(default))
}

/// Another workspace crate's binary (for tests that drive one stage with
/// another, like the tester against the servers), or `$var` when set.
/// Cargo passes `CARGO_BIN_EXE_*` only for a package's own binaries, so this
/// looks beside the test executable: `cargo test --workspace` builds every
/// binary before it runs any test.
pub fn workspace_bin(var: &str, name: &str) -> PathBuf {
    if let Some(path) = from_var(var) {
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// The workspace's root folder, from which a relative path in a variable is
/// read: cargo runs each test in its own crate's folder, and a reader types
/// the path from wherever they ran `cargo test`, most often the root.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is a folder of the workspace")
}

/// The binary named by `$var`, announced on its first use, or `None` when
/// `$var` is unset or empty. A binary that cannot be run ends the process.
fn from_var(var: &str) -> Option<PathBuf> {
    let value = PathBuf::from(std::env::var_os(var).filter(|v| !v.is_empty())?);
    let root = workspace_root();
    let path = resolve(&value, root);
    // Held while the line is written (and while exiting), so the tests that
    // start at once print one line between them.
    static ANNOUNCED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut announced = ANNOUNCED.lock().unwrap_or_else(|e| e.into_inner());
    if !announced.iter().any(|v| v == var) {
        // Straight to the descriptor: libtest captures `eprint!` per test
        // and shows it only for a failure, and this line is for the whole run.
        let mut stderr = io::stderr();
        if let Some(error) = unrunnable(var, &value, &path, root) {
            let _ = stderr.write_all(format!("error: {error}\n").as_bytes());
            std::process::exit(1);
        }
        let line = format!("testing {} (from {var})\n", path.display());
        let _ = stderr.write_all(line.as_bytes());
        announced.push(var.to_string());
    }
    Some(path)
}

/// `value` read from `root` when it is relative, without `.` components.
fn resolve(value: &Path, root: &Path) -> PathBuf {
    root.join(value).components().collect()
}

/// Why `path` (given as `$var=value`) cannot be run, in a sentence, or
/// `None` when it is an executable file.
fn unrunnable(var: &str, value: &Path, path: &Path, root: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let whence = if value.is_relative() {
                format!(" (relative paths are read from {})", root.display())
            } else {
                String::new()
            };
            format!("no such file{whence}")
        }
        Err(e) => format!("cannot read {}: {e}", path.display()),
        Ok(meta) if meta.is_dir() => format!("{} is a directory, not a program", path.display()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            format!("not executable (chmod +x {})", path.display())
        }
        Ok(_) => return None,
    };
    Some(format!("{var}={}: {problem}", value.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_read_from_the_root() {
        let root = Path::new("/work/main");
        assert_eq!(
            resolve(Path::new("target/debug/stage3-epoll"), root),
            Path::new("/work/main/target/debug/stage3-epoll")
        );
        assert_eq!(
            resolve(Path::new("./mine"), root),
            Path::new("/work/main/mine")
        );
        assert_eq!(
            resolve(Path::new("../elsewhere/mine"), root),
            Path::new("/work/main/../elsewhere/mine")
        );
    }

    #[test]
    fn an_absolute_path_is_kept() {
        assert_eq!(
            resolve(Path::new("/opt/./mine"), Path::new("/work/main")),
            Path::new("/opt/mine")
        );
    }

    #[test]
    fn the_root_is_the_folder_above_testkit() {
        assert!(workspace_root().join("testkit/Cargo.toml").is_file());
    }

    /// A fresh folder of this test process's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("testkit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn says_in_one_line_why_a_path_cannot_be_run() {
        use std::os::unix::fs::PermissionsExt;
        let root = scratch("unrunnable");
        let check = |value: &str| {
            let value = Path::new(value);
            unrunnable("STAGE3_BIN", value, &resolve(value, &root), &root)
        };
        let at = root.display();
        assert_eq!(
            check("./mine"),
            Some(format!(
                "STAGE3_BIN=./mine: no such file (relative paths are read from {at})"
            ))
        );
        let missing = root.join("gone");
        assert_eq!(
            check(missing.to_str().unwrap()),
            Some(format!("STAGE3_BIN={}: no such file", missing.display()))
        );
        std::fs::write(root.join("text"), "not a program").unwrap();
        assert_eq!(
            check("text"),
            Some(format!(
                "STAGE3_BIN=text: not executable (chmod +x {at}/text)"
            ))
        );
        std::fs::create_dir(root.join("dir")).unwrap();
        assert_eq!(
            check("dir"),
            Some(format!(
                "STAGE3_BIN=dir: {at}/dir is a directory, not a program"
            ))
        );
        let program = root.join("mine");
        std::fs::write(&program, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check("mine"), None);
        assert_eq!(check(program.to_str().unwrap()), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
