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

/// A project whose check files are `(name, text, executable)`.
fn project_with_programs(files: &[(&str, &str, bool)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let p = project(&[]);
    for (name, text, executable) in files {
        let path = p.path().join("test/verify").join(name);
        std::fs::write(&path, text).unwrap();
        let mode = if *executable { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    p
}

/// An executable check file in shell that lists `tests` (JSON) after running `before`.
fn lister(before: &str, tests: &str) -> String {
    format!(
        "#!/bin/sh\n[ \"$1\" = --vmcheck-list ] || exit 9\n{before}\necho '{{\"version\": 1, \"tests\": {tests}}}'\n"
    )
}

#[test]
fn bad_executable_check_files_are_one_line_errors_naming_the_file_and_start_nothing() {
    let toml = ("check-toml", "[TestA.testOne]\nrun = 'true'\n", false);
    let cases: &[(&str, String, bool, &str)] = &[
        (
            "check-py",
            "#!/usr/bin/env python3\nimport testlib\n".into(),
            false,
            "test/verify/check-py: its #! line names python3, but it is not executable: `chmod +x` it",
        ),
        (
            "check-fails",
            lister("echo 'Traceback (most recent call last):' >&2; echo 'NameError: frob' >&2; exit 1", "[]"),
            true,
            "test/verify/check-fails: listing its tests (--vmcheck-list) failed (exit status: 1); its stderr ends: Traceback (most recent call last): NameError: frob",
        ),
        (
            "check-garbage",
            lister("echo 'this is not json'; exit 0", "[]"),
            true,
            "test/verify/check-garbage: its listing (--vmcheck-list) is not JSON: expected ident at line 1 column 2",
        ),
        (
            "check-dup",
            "#!/usr/bin/env python3\nimport testlib\nclass TestA(testlib.MachineCase):\n    def testOne(self):\n        pass\ntestlib.test_main()\n".into(),
            true,
            "test/verify/check-toml:1:8: test TestA.testOne is already defined in test/verify/check-dup:4",
        ),
        (
            "check-image",
            lister("", r#"[{"name": "TestB.testTwo", "line": 7, "provision": {"machine1": {"image": "fedora-99"}}}]"#),
            true,
            "test/verify/check-image:7:1: unknown image 'fedora-99' (known images: tiny)",
        ),
        (
            "check-python",
            "#!/usr/bin/env python3\nimport testlib\nclass TestC(testlib.MachineCase):\n    @testlib.timeout(0)\n    def testThree(self):\n        pass\ntestlib.test_main()\n".into(),
            true,
            "test/verify/check-python:5:1: in its listing (--vmcheck-list): test TestC.testThree: 'timeout'",
        ),
    ];
    for (name, text, executable, want) in cases {
        let p = project_with_programs(&[toml, (name, text, *executable)]);
        let junit = p.path().join("junit.xml");
        std::fs::write(&junit, "an earlier report").unwrap();
        let tmp = common::private_tmp();
        let out = common::vmcheck()
            .current_dir(p.path())
            .args(["run", "--junit", "junit.xml"])
            .env("TEST_OS", "tiny")
            .env("VMCHECK_IMAGES_DIR", p.path().join("store"))
            .env("VMCHECK_PROGRESS", "none")
            .env("TMPDIR", tmp.path())
            .env_remove("TEST_SCENARIO")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(exit_codes::INPUT_ERROR),
            "{name}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        assert!(
            err.starts_with(want),
            "{name}: {err:?} should start with {want:?}"
        );
        assert!(stdout(&out).is_empty(), "{name}: no TAP, nothing started");
        assert_eq!(
            std::fs::read_to_string(&junit).unwrap(),
            "an earlier report"
        );
        common::assert_nothing_left(tmp.path());
    }
}

#[test]
fn a_hung_listing_is_stopped_and_named() {
    let p = project_with_programs(&[(
        "check-hangs",
        &lister("echo 'waiting for a lock' >&2; sleep 987654 & wait", "[]"),
        true,
    )]);
    let out = vmcheck(p.path(), &["run", "--list"]);
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    assert_eq!(
        stderr(&out),
        "test/verify/check-hangs: listing its tests (--vmcheck-list) did not finish within 20s; its stderr ends: waiting for a lock\n"
    );
    let left = common::processes_mentioning("sleep 987654");
    assert!(
        left.is_empty(),
        "the listing's children are killed: {left:?}"
    );
}

/// A stderr whose reader went away (a broken pipe) does not turn an error into a panic:
/// the exit code still says what happened.
#[test]
fn a_broken_stderr_keeps_the_exit_code() {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmcheck"))
        .args(["run", "--html", "/etc/hostname"])
        .stderr(std::process::Stdio::from(write))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
}
