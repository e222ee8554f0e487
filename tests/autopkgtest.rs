//! `vmcheck autopkgtest` end to end: real Debian 12 source packages' suites (fetched by
//! `bots/fetch-sources`, kept out of git) on real debian-12 machines, and source packages
//! it cannot run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

/// Sources of `bots/fetch-sources` left to `bench/autopkgtest`: figlet's `@builddeps@`
/// (debhelper and its dependencies, beyond the image's build-essential) take minutes to
/// install under TCG, and the build-needed test below builds a tree already.
const BENCH_ONLY: &[&str] = &["figlet"];

/// The sources of `bots/fetch-sources`, fetched (once, cached) and unpacked.
fn sources() -> Vec<PathBuf> {
    let out = std::process::Command::new(common::project_root().join("bots/fetch-sources"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

fn autopkgtest(args: &[&str], sources: &[PathBuf], summary: &Path) -> (Output, String) {
    let out = common::vmcheck()
        .arg("autopkgtest")
        .arg("--summary-file")
        .arg(summary)
        .args(args)
        .args(sources)
        .env("VMCHECK_PROGRESS", "none")
        .env_remove("TEST_OS")
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(summary).unwrap_or_default();
    (out, summary)
}

/// `NAME RESULT` pairs of a summary file, sorted.
fn verdicts(summary: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = summary
        .lines()
        .map(|l| {
            let (name, result) = l.split_once(' ').unwrap();
            (name.to_owned(), result.trim_start().to_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn real_packages_get_their_bookworm_verdicts() {
    common::image("debian-12");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary");
    let source_of = |p: &Path| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.rsplit_once('-')
            .map_or(name.clone(), |(n, _)| n.to_owned())
    };
    let all: Vec<PathBuf> = sources()
        .into_iter()
        .filter(|p| !BENCH_ONLY.contains(&source_of(p).as_str()))
        .collect();
    let (out, text) = autopkgtest(&["-j", "2"], &all, &summary);
    let err = String::from_utf8_lossy(&out.stderr);
    let tap = String::from_utf8_lossy(&out.stdout);
    // The verdicts Debian's own autopkgtest gives these packages here (bench/autopkgtest).
    let expected: Vec<(String, String)> =
        std::fs::read_to_string(common::project_root().join("test/autopkgtest/expected"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter(|l| !BENCH_ONLY.iter().any(|s| l.starts_with(&format!("{s}/"))))
            .map(|l| {
                let (name, result) = l.split_once(' ').unwrap();
                (name.to_owned(), result.trim_start().to_owned())
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
    assert_eq!(verdicts(&text), expected, "{tap}\n{err}");
    // autopkgtest's exit code for those verdicts.
    let any = |word: &str| expected.iter().any(|(_, r)| r.starts_with(word));
    let code = if any("FAIL") { 4 } else { 0 } | if any("SKIP") || any("FLAKY") { 2 } else { 0 };
    assert_eq!(out.status.code(), Some(code), "{text}\n{err}");
    // TAP for the same run, valid, and failing exactly when a verdict is a failure.
    assert_eq!(common::prove(&tap).0, !any("FAIL"), "{tap}");
}

/// A source tree in `dir` named `name`, with `debian/control`, a changelog and the given
/// `debian/tests/control` (and test scripts).
fn tree(dir: &Path, name: &str, control: &str, scripts: &[(&str, &str)]) -> PathBuf {
    tree_building(dir, name, "debhelper-compat (= 13)", control, scripts)
}

/// [`tree`] with these `Build-Depends`.
fn tree_building(
    dir: &Path,
    name: &str,
    build_depends: &str,
    control: &str,
    scripts: &[(&str, &str)],
) -> PathBuf {
    let root = dir.join(name);
    std::fs::create_dir_all(root.join("debian/tests")).unwrap();
    std::fs::write(
        root.join("debian/control"),
        format!("Source: {name}\nMaintainer: A <a@example.org>\nBuild-Depends: {build_depends}\n\nPackage: {name}\nArchitecture: all\nDescription: a test\n"),
    )
    .unwrap();
    std::fs::write(
        root.join("debian/changelog"),
        format!("{name} (1.0-1) unstable; urgency=medium\n\n  * Test.\n\n -- A <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n"),
    )
    .unwrap();
    std::fs::write(root.join("debian/tests/control"), control).unwrap();
    for (script, text) in scripts {
        std::fs::write(root.join("debian/tests").join(script), text).unwrap();
    }
    root
}

#[test]
fn broken_source_packages_are_named_and_start_nothing() {
    common::image("debian-12");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary");
    let garbage = dir.path().join("broken.dsc");
    std::fs::write(&garbage, "not a dsc\n").unwrap();
    let fine = tree(dir.path(), "fine", "Test-Command: true\n", &[]);
    let cases = [
        (
            vec![fine.clone(), "--machine".into(), "127.0.0.1:22".into()],
            "--machine is not supported",
        ),
        (
            vec![tree(
                dir.path(),
                "nofield",
                "Depends: @\n\nTests: smoke\n",
                &[("smoke", "true\n")],
            )],
            "nofield/debian/tests/control:1: ",
        ),
        (
            vec![tree(dir.path(), "noscript", "Tests: missing\n", &[])],
            "noscript/debian/tests/control:1: debian/tests/missing does not exist",
        ),
        (vec![garbage.clone()], "broken.dsc: "),
        (
            vec![dir.path().join("nothing-here")],
            "name at least one source package",
        ),
    ];
    for (given, want) in cases {
        let tmp = common::private_tmp();
        let out = common::vmcheck()
            .arg("autopkgtest")
            .args(&given)
            .env("TMPDIR", tmp.path())
            .env("VMCHECK_PROGRESS", "none")
            .env_remove("TEST_OS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{given:?}: {err}");
        assert!(out.stdout.is_empty(), "{given:?}: nothing ran");
        let code = out.status.code();
        assert!(
            code == Some(12) || code == Some(2),
            "{given:?}: {code:?} {err}"
        );
        common::assert_nothing_left(tmp.path());
    }
    assert!(!summary.exists());
}

#[test]
fn uninstallable_dependencies_fail_as_badpkg_or_skip() {
    common::image("debian-12");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary");
    let src = tree(
        dir.path(),
        "needsnothing",
        "Test-Command: true\nDepends: vmcheck-no-such-package\n\n\
         Test-Command: true\nDepends: vmcheck-no-such-package\nRestrictions: skip-not-installable\n\n\
         Test-Command: echo warning >&2\nDepends: dpkg\n\n\
         Test-Command: echo fine >&2\nDepends: dpkg\nRestrictions: allow-stderr, needs-root\n\n\
         Test-Command: exit 77\nDepends: dpkg\nRestrictions: skippable\n\n\
         Test-Command: test \"$(id -un)\" = \"$AUTOPKGTEST_NORMAL_USER\" && test -d \"$AUTOPKGTEST_TMP\" && test -f debian/tests/control\nDepends: dpkg\n",
        &[],
    );
    let (out, text) = autopkgtest(&["-j", "2", "--no-retry-fail"], &[src], &summary);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        verdicts(&text),
        [
            (
                "needsnothing/command1".to_string(),
                "FAIL badpkg: the test dependencies cannot be installed: vmcheck-no-such-package but it is not installable".to_string()
            ),
            (
                "needsnothing/command2".into(),
                "SKIP installation fails and skip-not-installable set".into()
            ),
            ("needsnothing/command3".into(), "FAIL stderr: warning".into()),
            ("needsnothing/command4".into(), "PASS".into()),
            (
                "needsnothing/command5".into(),
                "SKIP exit status 77 and marked as skippable".into()
            ),
            ("needsnothing/command6".into(), "PASS".into()),
        ],
        "{err}"
    );
    assert_eq!(out.status.code(), Some(14), "badpkg and a skip: {err}");
}

/// A host port that a guest reaches at 10.0.2.2 unless its network is restricted, and a
/// count of the connections it accepted.
fn listener() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(c);
        }
    });
    (port, count)
}

const REBOOTING: &str = r#"#!/bin/sh
set -e
case "${AUTOPKGTEST_REBOOT_MARK:-}" in
    "")
        cat /proc/sys/kernel/random/boot_id > /var/tmp/boot-1
        /tmp/autopkgtest-reboot first
        echo "not killed by autopkgtest-reboot" >&2; exit 1 ;;
    first)
        ! cmp -s /proc/sys/kernel/random/boot_id /var/tmp/boot-1
        test -f debian/tests/control
        cat /proc/sys/kernel/random/boot_id > /var/tmp/boot-2
        /tmp/autopkgtest-reboot "second mark"
        echo "not killed by autopkgtest-reboot" >&2; exit 1 ;;
    "second mark")
        ! cmp -s /proc/sys/kernel/random/boot_id /var/tmp/boot-2
        echo "rebooted twice" ;;
    *)
        echo "unexpected mark: $AUTOPKGTEST_REBOOT_MARK" >&2; exit 1 ;;
esac
"#;

#[test]
fn the_testbed_reboots_builds_and_keeps_guests_off_the_network() {
    common::image("debian-12");
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary");
    let (port, connections) = listener();
    let reach = format!("exec 3<>/dev/tcp/10.0.2.2/{port}");
    let src = tree_building(
        dir.path(),
        "testbed",
        "dpkg-dev",
        &format!(
            "Tests: rebooting\nDepends: dpkg\nRestrictions: needs-root, needs-reboot\n\n\
             Test-Command: ! timeout 20 bash -c '{reach}' 2>/dev/null\nDepends: dpkg\n\n\
             Test-Command: timeout 20 bash -c '{reach}'\nDepends: dpkg\nRestrictions: needs-internet\n\n\
             Test-Command: test \"$(cat built-stamp)\" = built\nDepends: dpkg\nRestrictions: build-needed\n"
        ),
        &[("rebooting", REBOOTING)],
    );
    // Built as autopkgtest builds it: dpkg-buildpackage -us -uc -b (build-essential and
    // fakeroot are in the debian-12 image; no debhelper, whose dependencies take minutes to
    // install under TCG).
    std::fs::write(
        src.join("debian/rules"),
        "#!/usr/bin/make -f\n\
         build build-arch build-indep:\n\techo built > built-stamp\n\
         clean:\n\trm -rf built-stamp debian/tmp debian/files\n\
         binary binary-arch binary-indep: build\n\
         \tmkdir -p debian/tmp/DEBIAN\n\
         \tdpkg-gencontrol -ptestbed -Pdebian/tmp\n\
         \tdpkg-deb --build debian/tmp ..\n",
    )
    .unwrap();

    // By default: the reboot protocol works (the script fails unless it is killed by each
    // /tmp/autopkgtest-reboot and comes back in a new boot with the next mark), the tree is
    // built, no guest reaches the host's port, and the test that needs the internet is
    // skipped.
    let (out, text) = autopkgtest(
        &["-j", "2", "--no-retry-fail"],
        std::slice::from_ref(&src),
        &summary,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let tap = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        verdicts(&text),
        [
            ("testbed/command1".to_string(), "PASS".to_string()),
            (
                "testbed/command2".into(),
                "SKIP Test restriction \"needs-internet\" requires testbed capability \"has_internet\"".into()
            ),
            ("testbed/command3".into(), "PASS".into()),
            ("testbed/rebooting".into(), "PASS".into()),
        ],
        "{tap}\n{err}"
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(out.status.code(), Some(2), "a skip: {err}");

    // --needs-internet=run lets that test's machine (only) out; =try makes its failure a skip.
    let only = ["--exact", "testbed/command2"];
    let (out, text) = autopkgtest(
        &[&["--needs-internet=run"][..], &only].concat(),
        std::slice::from_ref(&src),
        &summary,
    );
    assert_eq!(
        text,
        "testbed/command2     PASS\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    let closed = tree(
        dir.path(),
        "closed",
        "Test-Command: exit 3\nDepends: dpkg\nRestrictions: needs-internet\n",
        &[],
    );
    let (out, text) = autopkgtest(&["--needs-internet=try"], &[closed], &summary);
    assert_eq!(
        text,
        "closed/command1      SKIP Failed, but test has needs-internet and that's not guaranteed\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn runs_outside_a_vmcheck_project_on_its_built_in_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let src = tree(
        dir.path(),
        "anywhere",
        "Test-Command: true\nDepends: dpkg\n",
        &[],
    );
    let out = common::vmcheck()
        .current_dir(dir.path())
        .args(["autopkgtest", "--list", "anywhere"])
        .env("VMCHECK_PROGRESS", "none")
        .env_remove("TEST_OS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("anywhere/command1"),
        "{err}"
    );
    assert!(src.is_dir());
    // Other commands still need a project.
    let out = common::vmcheck()
        .current_dir(dir.path())
        .args(["run", "--list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not inside a vmcheck project"));
}
