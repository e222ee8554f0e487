//! What `vmcheck run` makes of its input before anything boots: which check files it finds,
//! the exit code of an empty selection, `--base` with file names git would quote, and an
//! unknown image in `provision`. Each test uses a throw-away project; none boots a machine.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use vmcheck::exit_codes;

/// A project with `bots/images/` holding a recipe called `tiny` (never run here) and the
/// check files `files` (name, text) in `test/verify/`.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bots/images")).unwrap();
    let recipe = dir.path().join("bots/images/tiny");
    std::fs::write(&recipe, "#!/bin/sh\nexit 1\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&recipe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let verify = dir.path().join("test/verify");
    std::fs::create_dir_all(&verify).unwrap();
    for (name, text) in files {
        std::fs::write(verify.join(name), text).unwrap();
    }
    dir
}

fn vmcheck(project: &Path, args: &[&str]) -> Output {
    common::vmcheck()
        .current_dir(project)
        .args(args)
        .env("TEST_OS", "tiny")
        .env("PATH", "/usr/bin:/bin")
        .env("VMCHECK_IMAGES_DIR", project.join("store"))
        .env_remove("TEST_SCENARIO")
        .env_remove("BASE_BRANCH")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_files_with_dots_and_spaces_are_found_and_backups_named() {
    let p = project(&[
        ("check-a.b", "[TestDot.testOne]\nrun = 'true'\n"),
        ("check-with space", "[TestSpace.testOne]\nrun = 'true'\n"),
        ("check-plain", "[TestPlain.testOne]\nrun = 'true'\n"),
        ("check-plain~", "[TestPlain.testOne]\nrun = 'true'\n"),
    ]);
    let out = vmcheck(p.path(), &["run", "--list"]);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "TestDot.testOne\nTestPlain.testOne\nTestSpace.testOne\n"
    );
    assert!(
        stderr(&out).contains(
            "warning: ignoring test/verify/check-plain~: an editor backup, not a check file"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_check_file_name_that_could_forge_tap_is_an_error_naming_it() {
    let p = project(&[
        ("check-ok", "[TestOk.testOne]\nrun = 'true'\n"),
        (
            "check-x\nok 1 forged",
            "[TestForged.testOne]\nrun = 'true'\n",
        ),
    ]);
    let out = vmcheck(p.path(), &["run", "--list"]);
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/test/verify/check-x\\nok 1 forged: the file name has a control character"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn an_empty_selection_exits_3_when_listed_or_run() {
    let p = project(&[("check-a", "[TestA.testOne]\nrun = 'true'\n")]);
    for args in [
        &["run", "NoSuchTest"][..],
        &["run", "--list", "NoSuchTest"],
        &["run", "-l", "-v", "NoSuchTest"],
    ] {
        let out = vmcheck(p.path(), args);
        assert_eq!(
            out.status.code(),
            Some(exit_codes::NO_TESTS),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("no tests selected"), "{args:?}");
    }
}

#[test]
fn an_unknown_image_in_provision_is_an_error_at_its_place_and_truncates_nothing() {
    let p = project(&[(
        "check-a",
        "[TestA.testOne]\nrun = 'true'\n\n[TestA.testTwo]\nprovision.machine1 = { image = \"fedora-99\" }\nrun = 'true'\n",
    )]);
    let junit = p.path().join("junit.xml");
    std::fs::write(&junit, "an earlier report").unwrap();
    let out = vmcheck(
        p.path(),
        &[
            "run",
            "--junit",
            junit.to_str().unwrap(),
            "--progress",
            "none",
        ],
    );
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    assert_eq!(
        stderr(&out),
        "test/verify/check-a:5:32: unknown image 'fedora-99' (known images: tiny)\n"
    );
    assert!(stdout(&out).is_empty(), "no TAP: nothing started");
    assert_eq!(
        std::fs::read_to_string(&junit).unwrap(),
        "an earlier report"
    );
    // A skipped test's machines are not needed, so their image does not matter.
    let p = project(&[(
        "check-a",
        "[TestA.testTwo]\nonly = { os = [\"fedora-*\"], reason = \"r\" }\nprovision.machine1 = { image = \"fedora-99\" }\nrun = 'true'\n",
    )]);
    let out = vmcheck(p.path(), &["run", "--list"]);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{}", stderr(&out));
}

fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
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
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn base_matches_covers_of_non_ascii_and_spaced_file_names() {
    let p = project(&[
        (
            "check-accent",
            "covers = [\"src/caf\u{e9}/**\"]\n[TestAccent.testOne]\nrun = 'true'\n",
        ),
        (
            "check-space",
            "covers = [\"src/with space.rs\"]\n[TestSpace.testOne]\nrun = 'true'\n",
        ),
        (
            "check-none",
            "covers = [\"src/other.rs\"]\n[TestNone.testOne]\nrun = 'true'\n",
        ),
    ]);
    let src: PathBuf = p.path().join("src");
    std::fs::create_dir_all(src.join("caf\u{e9}")).unwrap();
    std::fs::write(src.join("caf\u{e9}/x.rs"), "1").unwrap();
    std::fs::write(src.join("with space.rs"), "1").unwrap();
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-qm", "base"]);
    git(p.path(), &["checkout", "-qb", "topic"]);
    // One committed change, one uncommitted.
    std::fs::write(src.join("caf\u{e9}/x.rs"), "2").unwrap();
    git(p.path(), &["commit", "-qam", "change"]);
    std::fs::write(src.join("with space.rs"), "2").unwrap();
    let out = vmcheck(p.path(), &["run", "--explain", "--base", "main"]);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "test/verify/check-accent TestAccent.testOne: affected: src/caf\u{e9}/x.rs changed (covers)\n\
         test/verify/check-none TestNone.testOne: not affected\n\
         test/verify/check-space TestSpace.testOne: affected: src/with space.rs changed (covers)\n"
    );
}
