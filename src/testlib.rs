//! vmcheck's Python `testlib` (`python/testlib.py`, Cockpit's names over the executable
//! check-file protocol), built into the binary and written once per version to a private
//! cache directory (`builtin.rs`), which the runner puts on every executable check file's `PYTHONPATH`
//! (and `vmcheck python` on the one it runs), so no installation is needed; and the `PATH`
//! those processes get, on which `vmcheck` is this vmcheck (their first line may run it).

use std::path::PathBuf;

/// The library's source, as shipped in this repository.
pub const SOURCE: &str = include_str!("../python/testlib.py");
/// Its browser half (`import browser`, on first use of `self.browser`).
pub const BROWSER: &str = include_str!("../python/browser.py");

/// The directory holding `testlib.py` of this vmcheck:
/// `$XDG_CACHE_HOME/vmcheck/python/<hash, 16 hex digits>/`, written (0700 directory,
/// atomically renamed file) the first time it is asked for.
pub fn python_path() -> std::io::Result<PathBuf> {
    python_path_in(&crate::image::cache_home())
}

fn python_path_in(cache: &std::path::Path) -> std::io::Result<PathBuf> {
    crate::builtin::written(
        cache,
        "python",
        &[
            ("testlib.py", SOURCE, 0o644),
            ("browser.py", BROWSER, 0o644),
        ],
    )
}

/// `PYTHONPATH` with vmcheck's library first, then the caller's.
pub fn python_path_env() -> std::io::Result<std::ffi::OsString> {
    let mut value = python_path()?.into_os_string();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(old);
    }
    Ok(value)
}

/// `PATH` with the directory of this vmcheck binary first (after `first`, if given), so
/// that an executable check file's `vmcheck` is the one that runs it.
pub fn path_env(first: Option<&std::path::Path>) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = first.map(PathBuf::from).into_iter().collect();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
    {
        dirs.push(dir);
    }
    let rest = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    dirs.extend(std::env::split_paths(&rest));
    std::env::join_paths(dirs).unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once_and_found_again() {
        let home = tempfile::tempdir().unwrap();
        let dir = python_path_in(home.path()).unwrap();
        assert!(dir.starts_with(home.path()));
        let file = dir.join("testlib.py");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), SOURCE);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A damaged copy is replaced.
        std::fs::write(&file, "broken").unwrap();
        assert_eq!(python_path_in(home.path()).unwrap(), dir);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), SOURCE);
    }
}
