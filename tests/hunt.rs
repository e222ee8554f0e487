//! End-to-end, on real busybox machines: `vmcheck hunt` names the commit of a fixture git
//! repository that made a test flaky, and says when the data cannot tell.

mod common;

use std::path::Path;
use std::process::Command;
use vmcheck::exit_codes;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

const STABLE: &str = "[TestCoin.testFlip]\nnondestructive = true\nrun = 'true'\n";
/// Fails half the time: a byte from the guest's /dev/urandom below 128.
const FLAKY: &str = "[TestCoin.testFlip]\nnondestructive = true\nrun = '''\n\
                     b=$(od -An -N1 -tu1 /dev/urandom)\n[ \"$b\" -ge 128 ]\n'''\n";

/// A project (this repository's `bots/`, so the same images) whose commits are: the test
/// stable, an unrelated change, the test made flaky, two unrelated changes.
fn fixture(dir: &Path) -> Vec<String> {
    let copied = Command::new("cp")
        .arg("-r")
        .arg(common::project_root().join("bots"))
        .arg(dir)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(dir.join("test/verify")).unwrap();
    git(dir, &["init", "-q"]);
    let check = dir.join("test/verify/check-coin");
    std::fs::write(&check, STABLE).unwrap();
    let mut commits = vec![commit(dir, "the coin test")];
    for (i, flaky) in [false, true, false, false].into_iter().enumerate() {
        if flaky {
            std::fs::write(&check, FLAKY).unwrap();
        } else {
            std::fs::write(dir.join("NOTES"), format!("change {i}\n")).unwrap();
        }
        commits.push(commit(dir, &format!("change {i}")));
    }
    commits
}

#[test]
fn hunt_names_the_commit_that_made_a_test_flaky() {
    common::image("busybox");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("coinproject");
    std::fs::create_dir(&dir).unwrap();
    let commits = fixture(&dir);
    let store = tmp.path().join("results.sqlite");
    let hunt = |range: String, runs: &str| {
        common::vmcheck()
            .arg("--project-dir")
            .arg(&dir)
            .args(["hunt", &range, "TestCoin.testFlip", "--runs", runs])
            .arg("--results-db")
            .arg(&store)
            .env("TEST_OS", "busybox")
            .output()
            .unwrap()
    };
    let out = hunt(format!("{}..{}", commits[0], commits[4]), "20");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    assert!(
        text.contains(&format!(
            "first commit with the changed failure rate: {} change 1",
            commits[2]
        )),
        "{text}"
    );
    // The table: the named commit marked with its stars, its parent clean.
    let row = |c: &str| {
        text.lines()
            .find(|l| l.starts_with(&c[..10]))
            .unwrap_or_else(|| panic!("{c} probed:\n{text}"))
            .to_string()
    };
    assert!(row(&commits[2]).contains("* 0.0% -> "), "{text}");
    assert!(row(&commits[1]).contains("  0.0%  "), "{text}");
    // Nothing left behind: no worktree registered, the repository clean.
    assert_eq!(git(&dir, &["worktree", "list"]).lines().count(), 1);
    assert_eq!(git(&dir, &["status", "--porcelain"]), "");

    // Between two commits where nothing changed (the test never failed), it cannot tell,
    // and says so.
    let out = hunt(format!("{}..{}", commits[0], commits[1]), "5");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text.contains("the data cannot tell"), "{text}");

    // A bad range is one line, exit 2.
    let out = hunt("nosuch..HEAD".into(), "5");
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nosuch is not a commit"), "{err}");
}
