//! Fault suite, guests and signals: a guest that loses its SSH server or its network, bodies
//! that hang or ignore SIGTERM, on fresh and on shared machines, and vmcheck itself killed
//! with machines up. Each run must complete with the right verdicts and exit code, report
//! every test exactly once in TAP, JUnit and events, and leave no qemu, run directory,
//! socket, temporary file or host-script process behind. Real busybox guests.

mod common;

use std::path::Path;
use std::process::Output;
use vmcheck::exit_codes;

/// The reports of one run.
struct Reports {
    out: Output,
    tap: String,
    dir: tempfile::TempDir,
}

impl Reports {
    fn junit(&self) -> std::path::PathBuf {
        self.dir.path().join("junit.xml")
    }

    fn events(&self) -> std::path::PathBuf {
        self.dir.path().join("events.jsonl")
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The TAP result line of `name`.
    fn result(&self, name: &str) -> &str {
        self.tap
            .lines()
            .find(|l| {
                (l.starts_with("ok ") || l.starts_with("not ok "))
                    && l.contains(&format!(" {name} "))
                    || l.ends_with(&format!(" {name}"))
            })
            .unwrap_or_else(|| panic!("no result for {name}:\n{}", self.tap))
    }

    fn assert_complete(&self, code: i32, names: &[&str]) {
        assert_eq!(
            self.out.status.code(),
            Some(code),
            "{}\n{}",
            self.tap,
            self.stderr()
        );
        common::assert_each_test_once(&self.tap, Some(&self.junit()), Some(&self.events()), names);
        common::prove(&self.tap);
    }
}

/// `vmcheck run` of `checks` with every report on, in a private TMPDIR that must be left
/// empty.
fn run(checks: &Path, args: &[&str]) -> Reports {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = common::vmcheck();
    cmd.args(["run", "--test-dir"])
        .arg(checks)
        .arg("--junit")
        .arg(dir.path().join("junit.xml"))
        .arg("--events")
        .arg(dir.path().join("events.jsonl"));
    if !args.contains(&"--artifacts") {
        cmd.arg("--artifacts").arg(dir.path().join("artifacts"));
    }
    let out = common::output_leaving_nothing(cmd.args(args));
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    Reports { out, tap, dir }
}

/// The guest's SSH server killed, or its network link taken down, during the first attempt
/// of a test on a fresh machine and of one on a shared machine: a machine failure, retried
/// on a new machine, where the test passes. Nothing hangs past the test's timeout.
#[test]
fn a_guest_that_loses_sshd_or_its_link_is_retried_on_a_new_machine() {
    common::image("busybox");
    let checks = common::check_dir(
        r#"
timeout = "20s"
[TestFresh.testSshdKilled]
run = '[ "$VMCHECK_ATTEMPT" != 1 ] || killall dropbear; sleep 5'
[TestFresh.testLinkDown]
run = '[ "$VMCHECK_ATTEMPT" != 1 ] || ip link set eth0 down; sleep 1'
[TestShared]
nondestructive = true
[TestShared.testSshdKilled]
run = '[ "$VMCHECK_ATTEMPT" != 1 ] || killall dropbear; sleep 5'
[TestShared.testLinkDown]
run = '[ "$VMCHECK_ATTEMPT" != 1 ] || ip link set eth0 down; sleep 1'
[TestShared.testAfter]
run = 'true'
"#,
    );
    let started = std::time::Instant::now();
    let r = run(checks.path(), &["-j", "2"]);
    let names = [
        "TestFresh.testSshdKilled",
        "TestFresh.testLinkDown",
        "TestShared.testSshdKilled",
        "TestShared.testLinkDown",
        "TestShared.testAfter",
    ];
    r.assert_complete(exit_codes::OK, &names);
    for name in &names[..4] {
        assert!(r.result(name).starts_with("ok "), "{}", r.tap);
        assert!(
            r.tap.contains(&format!(" {name} ")) && r.tap.contains("# RETRY 1"),
            "{name} was retried:\n{}",
            r.tap
        );
    }
    // Generous: a stuck attempt would take the whole test timeout, and more.
    assert!(started.elapsed().as_secs() < 300, "{:?}", started.elapsed());
}

/// Bodies that hang, and one that ignores SIGTERM, end at their timeout on fresh and shared
/// machines; the shared machine they broke is replaced and the next test passes on it.
#[test]
fn hung_and_term_ignoring_bodies_end_at_their_timeout() {
    common::image("busybox");
    let checks = common::check_dir(
        r#"
timeout = "3s"
[TestFresh.testHangs]
run = 'sleep 1000'
[TestFresh.testIgnoresTerm]
run = '''trap "" TERM; sh -c 'trap "" TERM; while :; do sleep 1; done' & while :; do sleep 1; done'''
[TestShared]
nondestructive = true
[TestShared.testHangs]
run = 'sleep 1000'
[TestShared.testIgnoresTerm]
run = '''trap "" TERM; sh -c 'trap "" TERM; while :; do sleep 1; done' & while :; do sleep 1; done'''
[TestShared.testZAfter]
run = '! pgrep -f "while :" && ! pgrep -x "sleep"'
"#,
    );
    let r = run(checks.path(), &["-j", "1", "--no-retry-fail"]);
    let names = [
        "TestFresh.testHangs",
        "TestFresh.testIgnoresTerm",
        "TestShared.testHangs",
        "TestShared.testIgnoresTerm",
        "TestShared.testZAfter",
    ];
    r.assert_complete(exit_codes::TESTS_FAILED, &names);
    for name in &names[..4] {
        assert!(
            r.result(name).ends_with("# TIMEOUT after 3s"),
            "{name}: {}",
            r.tap
        );
    }
    assert!(
        r.result("TestShared.testZAfter").starts_with("ok "),
        "{}",
        r.tap
    );
}

/// SIGTERM with machines up: like Ctrl-C, exit 130 with valid, complete reports and nothing
/// left; SIGKILL: the machines die with vmcheck, and the next vmcheck sweeps their files.
#[test]
fn vmcheck_killed_with_machines_up() {
    common::image("busybox");
    let checks = common::check_dir(
        "[TestSlow.testA]\nrun = 'sleep 600'\n[TestSlow.testB]\nrun = 'sleep 600'\n\
         [TestShared]\nnondestructive = true\n[TestShared.testC]\nrun = 'sleep 600'\n",
    );
    for signal in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGKILL] {
        let dir = tempfile::tempdir().unwrap();
        let tmp = common::private_tmp();
        let child = common::spawn_with_machines_up(
            common::vmcheck()
                .args(["run", "-j", "3", "--test-dir"])
                .arg(checks.path())
                .arg("--junit")
                .arg(dir.path().join("junit.xml"))
                .arg("--events")
                .arg(dir.path().join("events.jsonl"))
                .env("VMCHECK_PROGRESS", "none"),
            tmp.path(),
            // As many as the host's CPUs admit at once (two on CI's machines).
            2,
        );
        // The bodies are running.
        std::thread::sleep(std::time::Duration::from_secs(2));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = child.wait_with_output().unwrap();
        let tap = String::from_utf8_lossy(&out.stdout);
        let names = ["TestSlow.testA", "TestSlow.testB", "TestShared.testC"];
        if signal == nix::sys::signal::SIGTERM {
            assert_eq!(out.status.code(), Some(exit_codes::INTERRUPTED));
            common::assert_each_test_once(
                &tap,
                Some(&dir.path().join("junit.xml")),
                Some(&dir.path().join("events.jsonl")),
                &names,
            );
            assert!(
                tap.contains("\nBail out! interrupted by SIGTERM\n"),
                "{tap}"
            );
            common::prove(&tap);
            common::assert_nothing_left(tmp.path());
        } else {
            // Killed: no reports closed, but the events so far merge, with every test.
            let merged = common::vmcheck()
                .arg("merge")
                .arg(dir.path().join("events.jsonl"))
                .output()
                .unwrap();
            let merged_tap = String::from_utf8_lossy(&merged.stdout);
            common::assert_each_test_once(&merged_tap, None, None, &names);
            common::prove(&merged_tap);
            common::assert_next_run_sweeps(tmp.path());
        }
    }
}

/// Artifacts that cannot be saved (a read-only disk) do not hide the test's own failure:
/// the verdict stands, the output says why nothing was saved, the run completes.
#[test]
fn a_read_only_artifact_disk_does_not_hide_the_failure() {
    common::image("busybox");
    let checks = common::check_dir("[TestFails.testA]\nrun = 'echo failing; exit 3'\n");
    let ro = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        ro.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY,
        Some("size=64k"),
    )
    .expect("mount a read-only tmpfs (the tests run as root)");
    let r = run(
        checks.path(),
        &[
            "--no-retry-fail",
            "--artifacts",
            ro.path().to_str().unwrap(),
        ],
    );
    let _ = nix::mount::umount2(ro.path(), nix::mount::MntFlags::MNT_DETACH);
    r.assert_complete(exit_codes::TESTS_FAILED, &["TestFails.testA"]);
    assert!(r.tap.contains("# failing\n"), "{}", r.tap);
    assert!(
        r.tap.contains("Read-only file system"),
        "the reason is said:\n{}",
        r.tap
    );
}
