//! Affected tests: which check files a change touches, so their tests must pass 3 times.
//!
//! The change is everything between the **merge-base** of `--base REF` and HEAD, plus
//! uncommitted and untracked files (Cockpit diffs against the tip of the base branch, which
//! also counts the base branch's own new commits). A check file is affected when
//! - it changed itself, and at most [`MAX_CHANGED_CHECK_FILES`] check files changed (more is a
//!   refactoring, and nothing counts: Cockpit's rule, reported when it triggers);
//! - a changed file matches one of its `covers` globs;
//! - with the `pkg` rule on (Cockpit's convention, off by default): a file changed under
//!   `pkg/<name>/` and the check file's name contains `check-<name>`.

use crate::checkfile::{TestDef, covers_matcher};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// More changed check files than this is a refactoring: none is counted as affected.
pub const MAX_CHANGED_CHECK_FILES: usize = 3;

/// Why a check file is affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The check file itself changed.
    Changed,
    /// A changed file matches its `covers`.
    Covers { file: String },
    /// A changed file under `pkg/<name>/` (the `pkg` rule).
    Pkg { file: String },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Changed => write!(f, "the check file changed"),
            Reason::Covers { file } => write!(f, "{file} changed (covers)"),
            Reason::Pkg { file } => write!(f, "{file} changed (pkg rule)"),
        }
    }
}

/// The result: affected check files (display paths) with their reasons, and notes to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affected {
    pub files: BTreeMap<PathBuf, Vec<Reason>>,
    pub notes: Vec<String>,
}

impl Affected {
    pub fn reasons(&self, file: &Path) -> &[Reason] {
        self.files.get(file).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Files changed since the merge-base of `base` and HEAD in the repository at `root`, plus
/// uncommitted and untracked ones; paths relative to `root`.
pub fn changed_files(root: &Path, base: &str) -> Result<Vec<String>, String> {
    let git = |args: &[&str]| -> Result<String, String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run git: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    git(&[
        "rev-parse",
        "--verify",
        "--quiet",
        &format!("{base}^{{commit}}"),
    ])
    .map_err(|_| {
        format!(
            "--base {base}: no such commit, branch or tag in {}",
            root.display()
        )
    })?;
    let merge_base = git(&["merge-base", base, "HEAD"])
        .map_err(|e| format!("--base {base}: no merge-base with HEAD: {e}"))?;
    // NUL-terminated names: without -z, git quotes names that are not plain ASCII
    // (`"t\303\251st"`), and they never match a `covers` glob or a check file.
    let mut files: Vec<String> =
        git(&["diff", "-z", "--name-only", "--relative", merge_base.trim()])?
            .split('\0')
            .chain(git(&["ls-files", "-z", "--others", "--exclude-standard"])?.split('\0'))
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Decide which of `tests`' check files the `changed` files affect.
pub fn affected(tests: &[TestDef], changed: &[String], pkg_rule: bool) -> Affected {
    let mut result = Affected::default();
    let mut check_files: Vec<&TestDef> = Vec::new();
    for t in tests {
        if !check_files.iter().any(|c| c.file == t.file) {
            check_files.push(t);
        }
    }
    let changed_checks: Vec<&PathBuf> = check_files
        .iter()
        .map(|t| &t.file)
        .filter(|f| changed.iter().any(|c| Path::new(c) == f.as_path()))
        .collect();
    if changed_checks.len() > MAX_CHANGED_CHECK_FILES {
        result.notes.push(format!(
            "{} check files changed (more than {MAX_CHANGED_CHECK_FILES}): a refactoring, so changing them does not make their tests affected",
            changed_checks.len()
        ));
    } else {
        for f in changed_checks {
            result
                .files
                .entry(f.clone())
                .or_default()
                .push(Reason::Changed);
        }
    }
    for t in check_files {
        if !t.covers.is_empty()
            && let Ok(set) = covers_matcher(&t.covers)
            && let Some(file) = changed.iter().find(|c| set.is_match(c.as_str()))
        {
            result
                .files
                .entry(t.file.clone())
                .or_default()
                .push(Reason::Covers { file: file.clone() });
        }
        if pkg_rule {
            let name = t.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(file) = changed.iter().find(|c| {
                c.strip_prefix("pkg/")
                    .and_then(|rest| rest.split_once('/'))
                    .is_some_and(|(pkg, _)| name.contains(&format!("check-{pkg}")))
            }) {
                result
                    .files
                    .entry(t.file.clone())
                    .or_default()
                    .push(Reason::Pkg { file: file.clone() });
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tests_of(files: &[(&str, &[&str])]) -> Vec<TestDef> {
        files
            .iter()
            .flat_map(|(f, covers)| {
                let covers: Vec<String> = covers.iter().map(|s| s.to_string()).collect();
                let text = format!("covers = {covers:?}\n[TestA.testOne]\nrun = \"true\"\n");
                crate::checkfile::parse_file(Path::new(f), &text).unwrap()
            })
            .collect()
    }

    fn changed(files: &[&str]) -> Vec<String> {
        files.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn changed_check_files_up_to_three() {
        let tests = tests_of(&[
            ("test/verify/check-a", &[]),
            ("test/verify/check-b", &[]),
            ("test/verify/check-c", &[]),
            ("test/verify/check-d", &[]),
        ]);
        let a = affected(
            &tests,
            &changed(&["test/verify/check-a", "README.md"]),
            false,
        );
        assert_eq!(
            a.reasons(Path::new("test/verify/check-a")),
            [Reason::Changed]
        );
        assert!(a.reasons(Path::new("test/verify/check-b")).is_empty());
        let all = changed(&[
            "test/verify/check-a",
            "test/verify/check-b",
            "test/verify/check-c",
            "test/verify/check-d",
        ]);
        let a = affected(&tests, &all, false);
        assert!(a.files.is_empty());
        assert!(
            a.notes[0].contains("4 check files changed"),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn covers_and_pkg_rule() {
        let tests = tests_of(&[
            ("test/verify/check-net", &["src/net/**"]),
            ("test/verify/check-shell-menu", &[]),
        ]);
        let a = affected(
            &tests,
            &changed(&["src/net/dhcp.rs", "pkg/shell/index.js"]),
            false,
        );
        assert_eq!(
            a.reasons(Path::new("test/verify/check-net")),
            [Reason::Covers {
                file: "src/net/dhcp.rs".into()
            }]
        );
        assert!(
            a.reasons(Path::new("test/verify/check-shell-menu"))
                .is_empty(),
            "pkg rule is off"
        );
        let a = affected(&tests, &changed(&["pkg/shell/index.js"]), true);
        assert_eq!(
            a.reasons(Path::new("test/verify/check-shell-menu")),
            [Reason::Pkg {
                file: "pkg/shell/index.js".into()
            }]
        );
    }

    #[test]
    fn git_merge_base_and_working_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(root)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "init.defaultBranch=main",
                ])
                .args(args)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{args:?}: {ok:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(root.join("a"), "1").unwrap();
        git(&["add", "a"]);
        git(&["commit", "-qm", "a"]);
        git(&["checkout", "-qb", "topic"]);
        std::fs::write(root.join("b"), "1").unwrap();
        git(&["add", "b"]);
        git(&["commit", "-qm", "b"]);
        // The base moves on after the fork: its new file must not count.
        git(&["checkout", "-q", "main"]);
        std::fs::write(root.join("m"), "1").unwrap();
        git(&["add", "m"]);
        git(&["commit", "-qm", "m"]);
        git(&["checkout", "-q", "topic"]);
        std::fs::write(root.join("a"), "2").unwrap();
        std::fs::write(root.join("new"), "1").unwrap();
        assert_eq!(changed_files(root, "main").unwrap(), ["a", "b", "new"]);
        // Names git would quote: non-ASCII, spaces, quotes, a newline.
        for name in ["t\u{e9}st.rs", "with space", "q\"uote", "line\nbreak"] {
            std::fs::write(root.join(name), "1").unwrap();
        }
        git(&["add", "t\u{e9}st.rs", "with space"]);
        git(&["commit", "-qm", "names"]);
        assert_eq!(
            changed_files(root, "main").unwrap(),
            [
                "a",
                "b",
                "line\nbreak",
                "new",
                "q\"uote",
                "t\u{e9}st.rs",
                "with space"
            ]
        );
        let e = changed_files(root, "nope").unwrap_err();
        assert!(e.starts_with("--base nope: no such commit"), "{e}");
    }
}
