//! End-to-end: `vmcheck run` and check files on real VMs. The own suite (test/verify) must
//! pass; the failure examples (test/example) must produce exactly the expected TAP; prove
//! must read every stream without parse errors.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Output, Stdio};
use vmcheck::exit_codes;

/// One TAP result line: (ok, description, directive).
fn results(tap: &str) -> Vec<(bool, String, String)> {
    let mut expected = 0;
    tap.lines()
        .filter_map(|l| {
            let (ok, rest) = if let Some(r) = l.strip_prefix("ok ") {
                (true, r)
            } else {
                (false, l.strip_prefix("not ok ")?)
            };
            let (num, rest) = rest.split_once(' ').unwrap();
            expected += 1;
            assert_eq!(
                num.parse::<usize>().unwrap(),
                expected,
                "numbers in order: {l}"
            );
            let (desc, directive) = rest.split_once(" # ").unwrap_or((rest, ""));
            Some((ok, desc.to_string(), directive.to_string()))
        })
        .collect()
}

/// The result line of test `name`.
fn result<'a>(rs: &'a [(bool, String, String)], name: &str) -> &'a (bool, String, String) {
    let hits: Vec<_> = rs
        .iter()
        .filter(|r| r.1.split(' ').nth(1) == Some(name))
        .collect();
    assert_eq!(hits.len(), 1, "exactly one result for {name}: {rs:?}");
    hits[0]
}

fn run(args: &[&str]) -> (Output, String) {
    let out = common::vmcheck().arg("run").args(args).output().unwrap();
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, tap)
}

/// Run `vmcheck run ARGS` with stdout a pipe and stderr a terminal (a pty), as a developer
/// piping TAP somewhere would: returns the exit status, stdout and what the terminal showed.
fn run_with_terminal_stderr(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = common::vmcheck()
        .arg("run")
        .args(args)
        .env("TERM", "xterm")
        .env_remove("VMCHECK_PROGRESS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    // The terminal must be drained or the child blocks; reading ends with EIO when the
    // last writer closes it.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match std::io::Read::read(&mut master, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let status = child.wait().unwrap();
    // Our copy of the slave was moved into the child's Stdio and closed after spawn.
    (status, stdout, reader.join().unwrap())
}

#[test]
fn the_own_suite_passes_with_every_reporter_on() {
    common::image("busybox");
    common::image("debian-12");
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let junit = dir.path().join("junit.xml");
    let artifacts = dir.path().join("artifacts");
    let status_file = dir.path().join("status.json");
    let (status, tap, terminal) = run_with_terminal_stderr(&[
        "--status-file",
        status_file.to_str().unwrap(),
        "-j",
        "2",
        "--events",
        events.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(exit_codes::OK), "{tap}\n{terminal}");
    // TAP on stdout is untouched by the progress display on the terminal.
    assert!(!tap.contains('\x1b'), "no escape sequences in TAP:\n{tap}");
    let (ok, text) = common::prove(&tap);
    assert!(ok, "{text}");
    let rs = results(&tap);
    // The terminal showed the live display, status lines and the summary.
    assert!(terminal.contains("PASS ["), "{terminal}");
    assert!(terminal.contains(" passed, "), "{terminal}");
    assert!(terminal.contains("slowest tests:"), "{terminal}");
    assert!(
        terminal.contains(&format!("vmcheck: {} tests in ", rs.len())),
        "{terminal}"
    );
    // Trafficlight's matrix of roles (test/verify/check-roles): 8 cases, one excluded, each
    // with its own id, and the summary by axis value.
    let roles: Vec<&str> = rs
        .iter()
        .filter_map(|r| r.1.split(' ').nth(1))
        .filter(|n| n.starts_with("TestRoles.testClientsReachTheServer["))
        .collect();
    assert_eq!(roles.len(), 7, "{roles:?}");
    assert!(roles.contains(
        &"TestRoles.testClientsReachTheServer[alice=debian-12,bob=busybox,server=debian-12]"
    ));
    assert!(
        terminal.contains("matrix values (cases failed / cases):"),
        "{terminal}"
    );
    assert!(terminal.contains("server=debian-12  0/3"), "{terminal}");

    // The status file ends with every test finished.
    let snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(snapshot["finished"], true);
    let tests = snapshot["tests"].as_array().unwrap();
    assert_eq!(tests.len(), rs.len());
    assert!(tests.iter().all(|t| t["state"] == "finished"), "{snapshot}");
    // Only the test that is flaky on purpose; a real flake shows its retried output.
    assert_eq!(snapshot["counts"]["flaky"], 1, "{tap}\n{snapshot}");

    // JUnit: valid against the schema, and the same tests with the same outcomes.
    common::assert_valid_junit(&junit);
    let report =
        quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&junit).unwrap())
            .unwrap();
    let cases: Vec<&quick_junit::TestCase> = report
        .test_suites
        .iter()
        .flat_map(|s| s.test_cases.iter())
        .collect();
    assert_eq!(cases.len(), rs.len());
    assert!(
        report
            .test_suites
            .iter()
            .any(|s| s.name.as_str() == "test/verify/check-basic")
    );
    for c in &cases {
        let name = format!(
            "{}.{}",
            c.classname.as_ref().unwrap().as_str(),
            c.name.as_str()
        );
        let (tap_ok, _, directive) = result(&rs, &name);
        let junit_ok = !matches!(c.status, quick_junit::TestCaseStatus::NonSuccess { .. });
        assert_eq!(junit_ok, *tap_ok || directive.starts_with("TODO"), "{name}");
        if name == "TestShared.testFailsOnce" {
            let quick_junit::TestCaseStatus::Success { flaky_runs } = &c.status else {
                panic!("a flaky test passes: {c:?}");
            };
            assert_eq!(flaky_runs.len(), 1);
        }
    }

    // Artifacts: kept for the failed attempts, not for the passing ones.
    let flaky = artifacts.join("TestShared.testFailsOnce");
    assert!(flaky.join("attempt-1/output.txt").is_file());
    assert!(
        !flaky.join("attempt-2").exists(),
        "the passing attempt's are removed"
    );
    let todo = artifacts.join("TestTodo.testKnownBroken/attempt-1");
    assert!(todo.join("output.txt").is_file());
    assert!(todo.join("machine1/console.log").is_file());
    assert!(todo.join("machine1/journal.txt").is_file());
    assert!(tap.contains(&format!(
        "# artifacts: {}",
        flaky.join("attempt-1").display()
    )));
    for name in [
        "TestShared.testA",
        "TestMachines.testReboot",
        "TestDebian.testSystemd",
    ] {
        assert!(!artifacts.join(name).exists(), "{name} passed");
    }

    // The JSON lines tell the same story: same tests, same outcomes.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(lines.first().unwrap()["event"], "run-started");
    assert_eq!(lines.last().unwrap()["event"], "run-finished");
    assert!(lines.iter().all(|l| l["v"] == 1 && l["ts"].is_f64()));
    let finished: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["event"] == "test-finished")
        .collect();
    assert_eq!(finished.len(), rs.len());
    let count = |kind: &str| lines.iter().filter(|l| l["event"] == kind).count();
    assert_eq!(
        count("test-running"),
        count("test-started"),
        "every attempt's machines came up"
    );
    for f in finished {
        let name = f["test"]["name"].as_str().unwrap();
        let tap_ok = result(&rs, name).0;
        let verdict = f["verdict"]["verdict"].as_str().unwrap();
        let json_ok = ["passed", "flaky", "skipped", "known-issue"].contains(&verdict);
        assert_eq!(json_ok, tap_ok, "{name}: {verdict}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["event"] == "attempt-retry")
            .count(),
        tap.lines().filter(|l| l.contains(" # RETRY ")).count()
    );
    assert!(tap.starts_with(&format!("1..{}\n", rs.len())));
    assert!(rs.len() >= 12, "{tap}");
    let flaky = result(&rs, "TestShared.testFailsOnce");
    assert!(
        flaky.0 && flaky.2 == "flaky: passed on attempt 2",
        "{flaky:?}"
    );
    assert!(tap.contains("# not ok test/verify/check-basic TestShared.testFailsOnce [ND@"));
    assert_eq!(
        result(&rs, "TestSkips.testOnlyOnDebian").2,
        "SKIP needs systemd"
    );
    assert_eq!(
        result(&rs, "TestSkips.testSkipsItself").2,
        "SKIP nothing to test on busybox"
    );
    let todo = result(&rs, "TestTodo.testKnownBroken");
    assert_eq!(
        (todo.0, todo.2.as_str()),
        (false, "TODO the frobnicator is not written yet")
    );
    for name in ["TestShared.testA", "TestShared.testB", "TestShared.testC"] {
        assert!(
            result(&rs, name).1.contains(" [ND@"),
            "{name} runs on a shared machine"
        );
    }
    for name in [
        "TestMachines.testPrivateNetwork",
        "TestMachines.testReboot",
        "TestDebian.testSystemd",
        // Executable check files: in Python with testlib, and in plain shell.
        "TestPythonMachines.testPrivateNetwork",
        "TestPythonMachine.testReboot",
        "TestPythonMachine.testFiles",
        "TestPythonShared.testExecute",
        "TestPythonShared.testAllowedMessage",
        "TestPythonShared.testRestoreA",
        "TestPythonShared.testRestoreB",
        "TestProtocol.testMachines",
        "TestProtocol.testRestoreA",
        "TestProtocol.testRestoreB",
    ] {
        let r = result(&rs, name);
        assert!(r.0 && r.2.is_empty(), "{r:?}");
    }
    for (name, directive) in [
        ("TestPythonSkips.testOnlyOnDebian", "SKIP needs systemd"),
        (
            "TestPythonSkips.testNotOnBusybox",
            "SKIP busybox has no package manager",
        ),
        (
            "TestPythonSkips.testSkipsItself",
            "SKIP nothing to test on busybox",
        ),
        (
            "TestPythonSkips.testKnownBroken",
            "TODO the frobnicator is not written yet",
        ),
    ] {
        assert_eq!(result(&rs, name).2, directive, "{name}");
    }
    assert!(
        tap.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("# TESTS PASSED ["),
        "{tap}"
    );
}

#[test]
fn failure_examples_produce_the_expected_tap() {
    common::image("busybox");
    common::image("debian-12");
    let (out, tap) = run(&["-j", "2", "--test-dir", "test/example"]);
    assert_eq!(out.status.code(), Some(exit_codes::TESTS_FAILED), "{tap}");
    let rs = results(&tap);
    assert_eq!(
        rs.len(),
        common::planned(&["--test-dir", "test/example"]),
        "{tap}"
    );
    assert_eq!(rs.len(), 21, "{tap}");
    let expect = [
        // The same failure modes in a Python check file.
        ("TestPythonExample.testAssertFails", false, ""),
        ("TestPythonExample.testExecuteFails", false, ""),
        ("TestPythonExample.testTimesOut", false, "TIMEOUT after 3s"),
        (
            "TestPythonExample.testInfrastructure",
            false,
            "ERROR the test reported an infrastructure failure: the package mirror is down",
        ),
        (
            "TestPythonExample.testTodoPasses",
            false,
            "expected failure: this bug was fixed but the todo was not removed",
        ),
        (
            "TestPythonKnown.testKnownCrash",
            true,
            "SKIP Known issue #101",
        ),
        (
            "TestExample.testJournalOops",
            false,
            "unexpected journal messages",
        ),
        ("TestKnown.testKnownCrash", true, "SKIP Known issue #101"),
        (
            "TestKnown.testKnownElsewhere",
            false,
            "NOTE Known issue #202 in debian-12",
        ),
        ("TestKnown.testFixed", true, ""),
        (
            "TestExample.testKernelOops",
            false,
            "unexpected journal messages",
        ),
        ("TestShared.testPasses", true, ""),
        ("TestShared.testFails", false, ""),
        ("TestExample.testFails", false, ""),
        ("TestExample.testHostFails", false, ""),
        ("TestExample.testPrintsTap", false, ""),
        ("TestExample.testStopsAtFirstError", false, ""),
        ("TestExample.testTimesOut", false, "TIMEOUT after 3s"),
        (
            "TestExample.testTodoPasses",
            false,
            "expected failure: this bug was fixed but the todo was not removed",
        ),
    ];
    for (name, ok, directive) in expect {
        let r = result(&rs, name);
        assert_eq!((r.0, r.2.as_str()), (ok, directive), "{name}: {tap}");
    }
    for name in [
        "TestExample.testMachineDies",
        "TestPythonExample.testMachineDies",
    ] {
        let dies = result(&rs, name);
        assert!(
            !dies.0 && dies.2.starts_with("ERROR machine ") && dies.2.contains("powered off"),
            "{dies:?}"
        );
    }
    // Retries: two per failing test, the harness failure retried as such.
    let retries = |name: &str, reason: &str| {
        tap.lines()
            .filter(|l| {
                l.starts_with("# not ok ") && l.contains(&format!(" {name} ")) && l.contains(reason)
            })
            .count()
    };
    assert_eq!(
        retries(
            "TestExample.testFails",
            "(be robust against unstable tests)"
        ),
        2
    );
    assert_eq!(
        retries("TestShared.testFails", "(be robust against unstable tests)"),
        2
    );
    for name in [
        "TestExample.testMachineDies",
        "TestPythonExample.testMachineDies",
        "TestPythonExample.testInfrastructure",
    ] {
        assert_eq!(
            retries(name, "(due to failure of test harness or framework)"),
            2,
            "{name}"
        );
    }
    assert_eq!(
        retries(
            "TestPythonExample.testAssertFails",
            "(be robust against unstable tests)"
        ),
        2
    );
    // A Python test's failure shows where in the check file it failed.
    assert!(
        tap.contains("# AssertionError: '1' != '2'"),
        "the assertion is shown: {tap}"
    );
    assert_eq!(
        retries("TestExample.testTodoPasses", "RETRY"),
        0,
        "todo tests are not retried"
    );
    // Output is shown for failures, commented so it cannot pass for TAP; set -e holds.
    assert!(tap.contains("\n# ok 99 not a real test\n# 1..1\n# Bail out! not really\n"));
    assert!(tap.contains("# about to fail on attempt 3\n"));
    assert!(
        tap.contains("# + vm exec machine1 'echo from the machine; exit 4'\n# from the machine\n")
    );
    assert!(!tap.contains("not reached"));
    assert!(tap.contains("# 17 TESTS FAILED ["), "{tap}");
    let (ok, _) = common::prove(&tap);
    assert!(!ok);
    // Without a terminal, progress is plain status lines; the summary ends with the command
    // that re-runs exactly the failed tests.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("   FAIL [") && err.contains("  RETRY ["),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err}");
    let rerun = err
        .lines()
        .skip_while(|l| *l != "re-run the failed tests with:")
        .nth(1)
        .unwrap_or_else(|| panic!("no re-run command: {err}"));
    let words: Vec<&str> = rerun.split_whitespace().collect();
    assert_eq!(words[1], "run", "{rerun}");
    let listed = common::vmcheck()
        .args(&words[1..])
        .arg("--list")
        .output()
        .unwrap();
    let mut listed: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    let mut failed: Vec<String> = rs
        .iter()
        .filter(|r| !r.0 && !r.2.starts_with("TODO"))
        .map(|r| r.1.split(' ').nth(1).unwrap().to_string())
        .collect();
    failed.sort();
    assert_eq!(listed, failed, "{rerun}");
}

#[test]
fn no_retry_fail_runs_each_failure_once() {
    common::image("busybox");
    let (out, tap) = run(&[
        "--test-dir",
        "test/example",
        "--no-retry-fail",
        "TestExample.testFails",
    ]);
    assert_eq!(out.status.code(), Some(exit_codes::TESTS_FAILED));
    assert!(!tap.contains("RETRY"), "{tap}");
    assert_eq!(results(&tap).len(), 1);
}

#[test]
fn nondestructive_tests_run_on_an_existing_machine() {
    common::image("busybox");
    let (mut vm, run_args) = common::vm_run("busybox");
    let mut args: Vec<&str> = run_args.iter().map(String::as_str).collect();
    args.extend(["--scenario", "nondestructive"]);
    let (out, tap) = run(&args);
    vm.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert_eq!(vm.wait().unwrap().code(), Some(exit_codes::OK));
    common::assert_code(&out, &tap, exit_codes::OK);
    let rs = results(&tap);
    assert_eq!(
        rs.len(),
        common::planned(&["-n"]),
        "only the nondestructive tests: {tap}"
    );
    assert!(rs.iter().all(|r| r.1.ends_with(" [ND@1]")), "{tap}");
    common::prove(&tap);
}

#[test]
fn interrupting_a_run_leaves_nothing_and_well_formed_tap() {
    common::image("busybox");
    common::image("debian-12");
    let child = common::vmcheck()
        .args(["run", "-j", "2", "--test-dir", "test/example"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let children = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit(')')
                            .next()?
                            .split_whitespace()
                            .nth(1)?
                            .parse::<u32>()
                            .ok()
                    })
                    == Some(pid)
            })
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.starts_with("qemu"))
            })
            .collect()
    };
    // Booting can take long on a loaded host (cold debian-12 under TCG): this waits for the
    // precondition, it does not time anything.
    assert!(
        common::eventually(300, || children().len() >= 2),
        "two machines start"
    );
    let qemus = children();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stops within seconds"
    );
    assert_eq!(out.status.code(), Some(exit_codes::INTERRUPTED));
    let tap = String::from_utf8_lossy(&out.stdout);
    assert!(tap.contains("\nBail out! interrupted by SIGINT\n"), "{tap}");
    let rs = results(&tap);
    assert_eq!(
        rs.len(),
        common::planned(&["--test-dir", "test/example"]),
        "every planned test has its line: {tap}"
    );
    assert!(
        rs.iter().any(|r| r.2 == "ERROR interrupted by SIGINT"),
        "{tap}"
    );
    common::prove(&tap);
    assert!(
        qemus.iter().all(|p| !common::process_alive(*p)),
        "qemu left running"
    );
    assert!(common::run_dirs_of(pid).is_empty(), "run directories left");
}

#[test]
fn sit_keeps_the_failed_machine_until_enter() {
    common::image("busybox");
    let mut cmd = std::process::Command::new("test/example/check-failures");
    cmd.current_dir(common::project_root())
        .env("PATH", common::path_with_vmcheck())
        .args(["TestExample.testFails", "--sit"]);
    let (mut child, mut err) = common::spawn_reading_stderr(&mut cmd);
    let ssh = common::sit_prompt(&mut err)
        .iter()
        .find_map(|l| l.strip_prefix("  machine1: ").map(String::from));
    // The failed machine is still there and reachable with the printed command.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} cat /proc/sys/kernel/random/boot_id",
            ssh.expect("ssh line")
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(exit_codes::TESTS_FAILED));
    assert!(common::run_dirs_of(child.id()).is_empty());
}

#[test]
fn sit_also_holds_a_machine_that_did_not_boot() {
    common::image("busybox");
    let mut cmd = common::vmcheck();
    cmd.args([
        "exec",
        "test/example/check-failures",
        "TestExample.testFails",
        "--sit",
        "--boot-timeout",
        "1",
        // A restore could be ready within the second: this is about a boot that is not.
        "--cold-boot",
    ]);
    let (mut child, mut err) = common::spawn_reading_stderr(&mut cmd);
    let console = common::sit_prompt(&mut err)
        .iter()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix("console: ")
                .map(std::path::PathBuf::from)
        })
        .expect("console line");
    assert!(
        console.exists(),
        "the machine's files are kept while sitting"
    );
    // A boot failure is a harness failure: retried (and sat on) up to twice more.
    child.stdin.as_mut().unwrap().write_all(b"\n\n\n").unwrap();
    for _ in err.by_ref() {}
    assert_eq!(
        child.wait().unwrap().code(),
        Some(exit_codes::INFRASTRUCTURE)
    );
    assert!(!console.exists());
}

#[test]
fn listing_boots_nothing() {
    // Executable check files run to list their tests, but nothing can boot.
    let bin = common::bin_without_qemu();
    let out = common::vmcheck()
        .args(["run", "--list"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK));
    let names = String::from_utf8_lossy(&out.stdout);
    assert!(
        names.lines().any(|l| l == "TestMachines.testReboot"),
        "{names}"
    );
}

#[test]
fn a_listing_read_only_in_part_ends_quietly() {
    // `vmcheck run -l | head -1`: the reader goes away after one line.
    let dir = tempfile::tempdir().unwrap();
    let tests: String = (0..20_000)
        .map(|i| format!("[TestMany.test{i}]\nrun = \"true\"\n"))
        .collect();
    std::fs::write(dir.path().join("check-many"), tests).unwrap();
    let mut child = common::vmcheck()
        .args(["run", "--list", "--test-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "TestMany.test0\n");
    // The pipe is closed now; the rest of the listing cannot be written.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{err}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn bad_check_files_are_errors_with_locations_and_start_nothing() {
    let out = common::vmcheck()
        .args(["run", "--test-dir", "tests/fixtures/checkfiles/invalid"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().count() > 5, "{err}");
    for line in err.lines() {
        let mut parts = line.splitn(4, ':');
        let (file, l, c) = (
            parts.next().unwrap(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        assert!(
            file.starts_with("tests/fixtures/checkfiles/invalid/check-"),
            "{line}"
        );
        assert!(
            l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok(),
            "{line}"
        );
    }
}

#[test]
fn usage_errors() {
    for (args, needle) in [
        (
            &["run", "--scenario", "nope"][..],
            "unknown scenario 'nope' (known scenarios in",
        ),
        (
            &["run", "--exclude", "TestNo.testSuch"],
            "--exclude names no test: TestNo.testSuch",
        ),
        (
            &[
                "run",
                "--machine",
                "127.0.0.1:x",
                "--identity",
                "/etc/hostname",
                "--insecure-host-key",
            ],
            "invalid machine address",
        ),
        (
            &["run", "--machine", "127.0.0.1"],
            "--machine needs --identity FILE",
        ),
        (
            &["run", "--junit", "/nonexistent/junit.xml"],
            "cannot create /nonexistent/junit.xml",
        ),
        (
            &["run", "--status-file", "/nonexistent/status.json"],
            "cannot create /nonexistent/status.json",
        ),
        (
            &["merge", "/nonexistent.jsonl"],
            "cannot read /nonexistent.jsonl",
        ),
        (
            &["run", "--html", "/etc/hostname"],
            "cannot create /etc/hostname",
        ),
        (
            &["report", "/nonexistent.jsonl", "--html", "/tmp"],
            "cannot read /nonexistent.jsonl",
        ),
    ] {
        let out = common::vmcheck().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = common::vmcheck()
        .args(["run", "NoSuchTest"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::NO_TESTS));
}

/// A throw-away project in a git repository, using the real busybox image.
fn git_project() -> tempfile::TempDir {
    let dir = common::busybox_project();
    let root = dir.path();
    for name in ["a", "b"] {
        std::fs::write(
            root.join(format!("test/verify/check-{name}")),
            format!("[Test{name}.testOne]\nrun = \"echo {name}\"\n"),
        )
        .unwrap();
    }
    std::fs::write(root.join(".gitignore"), "images/\n").unwrap();
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "."]);
    git(root, &["commit", "-qm", "base"]);
    git(root, &["checkout", "-qb", "topic"]);
    dir
}

fn git(root: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
}

#[test]
fn affected_tests_pass_three_times() {
    let project = git_project();
    let root = project.path();
    // Change check-a (uncommitted): its test is affected, check-b's is not.
    std::fs::write(
        root.join("test/verify/check-a"),
        "[Testa.testOne]\nrun = \"echo changed\"\n",
    )
    .unwrap();
    let explain = common::vmcheck()
        .arg("--project-dir")
        .arg(root)
        .args(["run", "--base", "main", "--explain"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&explain.stdout),
        "test/verify/check-a Testa.testOne: affected: the check file changed\n\
         test/verify/check-b Testb.testOne: not affected\n"
    );
    let out = common::vmcheck()
        .arg("--project-dir")
        .arg(root)
        .args(["run", "--base", "main"])
        .output()
        .unwrap();
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    common::assert_code(&out, &tap, exit_codes::OK);
    let affected_retries = tap
        .lines()
        .filter(|l| {
            l.starts_with("# ok test/verify/check-a Testa.testOne ")
                && l.contains("(test affected tests 3 times)")
        })
        .count();
    assert_eq!(affected_retries, 2, "{tap}");
    assert!(!tap.contains("Testb.testOne (0.4GB) # RETRY"), "{tap}");
    assert_eq!(results(&tap).len(), 2);
    common::prove(&tap);

    let out = common::vmcheck()
        .arg("--project-dir")
        .arg(root)
        .args(["run", "--base", "no-such-branch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--base no-such-branch: no such commit"));
}

#[test]
fn naughty_commands_check_and_match_patterns() {
    let out = common::vmcheck()
        .args(["naughty", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    let out = common::vmcheck()
        .args([
            "naughty",
            "check",
            "--dir",
            "tests/fixtures/naughty-invalid",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .all(|l| l.starts_with("tests/fixtures/naughty-invalid/")),
        "{err}"
    );
    assert!(err.contains("readme-no-number"), "{err}");
    let matching = |os: &str, input: &str| {
        let mut child = common::vmcheck()
            .args(["naughty", "match", "--os", os])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = matching(
        "busybox",
        "log\nfrobnicator: segmentation fault in phase 7\nmore\n",
    );
    assert_eq!(code, Some(0));
    assert_eq!(text, "#101 bots/naughty/busybox/101-frobnicator-crash\n");
    let (code, text) = matching("busybox", "widget timeout after 5 s");
    assert_eq!(code, Some(1));
    assert_eq!(
        text,
        "#202 bots/naughty/debian-12/202-widget-timeout (in debian-12)\n"
    );
    // Bad patterns stop a run before anything boots (no qemu on PATH: booting would fail).
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    for d in ["bots/images", "bots/naughty/busybox", "test/verify"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("bots/naughty/busybox/no-number"), "x").unwrap();
    std::fs::write(
        root.join("test/verify/check-a"),
        "[TestA.testA]\nrun = \"true\"\n",
    )
    .unwrap();
    let out = common::vmcheck()
        .arg("--project-dir")
        .arg(root)
        .arg("run")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bots/naughty/busybox/no-number: "), "{err}");
    assert!(out.stdout.is_empty(), "no TAP: nothing ran");
}

#[test]
fn event_streams_of_two_runs_merge_into_one_report() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    // Two shards of one selection, as two CI runners would run them: both read the same
    // durations (other tests of this suite must not change them under them).
    let store = dir.path().join("results.sqlite");
    let durations = || common::durations(&store, "busybox");
    let selection = ["TestShared", "TestSkips"];
    let shard = |k: &str, events: &std::path::Path| {
        let mut args = vec![
            "--shard",
            k,
            "--events",
            events.to_str().unwrap(),
            "--results-db",
            store.to_str().unwrap(),
        ];
        args.extend(selection);
        run(&args)
    };
    let (out, tap_a) = shard("1/2", &a);
    common::assert_code(&out, &tap_a, exit_codes::OK);
    let (out, tap_b) = shard("2/2", &b);
    common::assert_code(&out, &tap_b, exit_codes::OK);
    assert!(
        durations().tests.is_empty(),
        "a shard records its attempts, but not as durations to split by"
    );
    let junit = dir.path().join("merged.xml");
    let out = common::vmcheck()
        .args(["merge", "--junit", junit.to_str().unwrap()])
        .arg("--results-db")
        .arg(&store)
        .args([&a, &b])
        .output()
        .unwrap();
    let recorded = durations();
    assert!(
        recorded.tests.keys().any(|t| t.starts_with("TestShared.")),
        "the merge settles the shards' durations: {recorded:?}"
    );
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    common::assert_code(&out, &tap, exit_codes::OK);
    let rs = results(&tap);
    let (ra, rb) = (results(&tap_a), results(&tap_b));
    assert_eq!(rs.len(), ra.len() + rb.len(), "{tap}");
    let listed = common::vmcheck()
        .args(["run", "--list"])
        .args(selection)
        .output()
        .unwrap();
    assert_eq!(
        rs.len(),
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        "the shards together ran the whole selection"
    );
    for (ok, desc, directive) in ra.iter().chain(&rb) {
        let name = desc.split(' ').nth(1).unwrap();
        assert_eq!(result(&rs, name), &(*ok, desc.clone(), directive.clone()));
    }
    let (ok, text) = common::prove(&tap);
    assert!(ok, "{text}");
    common::assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(&format!(
        r#"<testsuites name="vmcheck" tests="{}""#,
        rs.len()
    )));

    // Shards split from other durations (now the merge settled some) do not fit together:
    // merging them would report some tests twice and others not at all.
    let c = dir.path().join("c.jsonl");
    let (out, tap_c) = shard("2/2", &c);
    common::assert_code(&out, &tap_c, exit_codes::OK);
    let out = common::vmcheck()
        .arg("merge")
        .args([&a, &c])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{err}");
    assert!(err.contains("the shards were split differently"), "{err}");
    assert!(out.stdout.is_empty());

    // A stream cut off mid-run (its runner died) still merges: what it did not finish is an
    // error, so the merged run is not green.
    let text = std::fs::read_to_string(&b).unwrap();
    let cut: String = text
        .lines()
        .take_while(|l| !l.contains("\"event\":\"test-finished\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&b, cut).unwrap();
    let out = common::vmcheck()
        .arg("merge")
        .args([&a, &b])
        .output()
        .unwrap();
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    common::assert_code(&out, &tap, exit_codes::INFRASTRUCTURE);
    assert!(tap.contains("# ERROR "), "{tap}");
    assert!(tap.contains("Bail out! "), "{tap}");

    // Bad input: one line naming the file and line, exit 2.
    std::fs::write(&b, "{\"v\":1,\"event\":\"run-started\"\n").unwrap();
    let out = common::vmcheck()
        .arg("merge")
        .args([&a, &b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:1: not JSON", b.display())),
        "{err}"
    );
}

/// A shared machine's kernel log streams to the host (`machine/kmsg.rs`), so no program runs
/// in it after a `run` body: a test's oops is found there, whichever way it got into the log.
/// A test that kills the stream's copier still has its oops found (the stream is given up,
/// said in journal.txt, and the log read in the guest), and so do later tests.
#[test]
fn kernel_messages_of_shared_machines_are_found_with_and_without_the_stream() {
    common::image("busybox");
    let dir = common::check_dir(
        r#"
[TestStream]
nondestructive = true

[TestStream.testBody]
run = "echo before; echo 'BUG: from the body' > /dev/kmsg; echo after"

[TestStream.testHost]
host = "vm exec machine1 \"echo 'BUG: from the host' > /dev/kmsg\""

[TestStream.testRunThenHost]
run = "echo 'the run part'"
host = "vm exec machine1 \"echo 'BUG: after the run part' > /dev/kmsg\""

[TestStream.testAllowed]
run = "echo 'BUG: allowed one' > /dev/kmsg"
allow_journal = ["BUG: allowed"]

[TestStream.testExits]
run = "echo 'BUG: then exit' > /dev/kmsg; exit 0"

[TestStream.testKillsCopier]
run = '''
for d in /sys/class/virtio-ports/vport*; do
    [ "$(cat $d/name)" = org.vmcheck.kmsg.0 ] && port=/dev/${d##*/}
done
test -c "$port"
for p in /proc/[0-9]*; do
    [ "$(readlink $p/fd/1)" = "$port" ] && kill -9 ${p#/proc/}
done
echo 'BUG: the stream is gone' > /dev/kmsg
'''
"#,
    );
    // `vmcheck run` of some tests of `test_dir` on TEST_OS `os`, which fails; the artifacts
    // of every test are kept, and `journal` reads a test's journal.txt.
    let run_failing = |os: &str, test_dir: &std::path::Path, names: &[&str]| {
        let out = common::vmcheck()
            .args(["run", "-j", "1", "--no-retry-fail", "--keep-artifacts"])
            .arg("--artifacts")
            .arg(test_dir.join("artifacts"))
            .arg("--test-dir")
            .arg(test_dir)
            .args(names)
            .env("TEST_OS", os)
            .output()
            .unwrap();
        let tap = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(exit_codes::TESTS_FAILED), "{tap}");
        tap
    };
    let journal = |test_dir: &std::path::Path, test: &str| {
        let path = test_dir.join("artifacts").join(test);
        std::fs::read_to_string(path.join("attempt-1/machine1/journal.txt")).unwrap()
    };
    let run_tests = |names: &[&str]| run_failing("busybox", dir.path(), names);
    let tap = run_tests(&[
        "TestStream.testBody",
        "TestStream.testHost",
        "TestStream.testRunThenHost",
        "TestStream.testAllowed",
        "TestStream.testExits",
    ]);
    let rs = results(&tap);
    for (test, line) in [
        ("TestStream.testBody", "BUG: from the body"),
        ("TestStream.testHost", "BUG: from the host"),
        ("TestStream.testRunThenHost", "BUG: after the run part"),
        ("TestStream.testExits", "BUG: then exit"),
    ] {
        let r = result(&rs, test);
        assert_eq!(
            (r.0, r.2.as_str()),
            (false, "unexpected journal messages"),
            "{tap}"
        );
        let text = journal(dir.path(), test);
        let bugs: Vec<&str> = text.lines().filter(|l| l.contains("BUG:")).collect();
        assert_eq!(bugs.len(), 1, "only the test's own part: {text:?}");
        assert!(
            bugs[0].starts_with('[') && bugs[0].ends_with(line),
            "{text:?}"
        );
        assert!(!text.contains("vmcheck"), "no markers, no notes: {text:?}");
    }
    assert!(result(&rs, "TestStream.testAllowed").0, "{tap}");
    assert!(journal(dir.path(), "TestStream.testAllowed").ends_with("] BUG: allowed one\n"));
    assert!(
        tap.contains("# before\n# after\n"),
        "the body's output: {tap}"
    );

    let tap = run_tests(&["TestStream.testKillsCopier", "TestStream.testBody"]);
    let rs = results(&tap);
    for test in ["TestStream.testKillsCopier", "TestStream.testBody"] {
        let r = result(&rs, test);
        assert_eq!(
            (r.0, r.2.as_str()),
            (false, "unexpected journal messages"),
            "{tap}"
        );
    }
    let text = journal(dir.path(), "TestStream.testKillsCopier");
    assert!(
        text.contains(
            "vmcheck: the kernel log stream did not bring the test's end marker within 5s: \
             the log is read in the guest\n"
        ),
        "{text:?}"
    );
    assert!(text.ends_with("] BUG: the stream is gone\n"), "{text:?}");
    assert!(tap.contains("BUG: the stream is gone"), "{tap}");
    assert!(tap.contains("BUG: from the body"), "{tap}");

    // On a machine with a journal, its part is read too (in the guest: through the agent,
    // once the end marker came over SSH).
    common::image("debian-12");
    let journal_dir = common::check_dir(
        r#"
[TestJournal]
nondestructive = true

[TestJournal.testLogger]
run = "logger -p user.err 'process 7 (x) dumped core, said only the journal'"

[TestJournal.testQuiet]
run = "logger 'a quiet line of its own'"
"#,
    );
    let tap = run_failing("debian-12", journal_dir.path(), &[]);
    assert!(
        tap.contains("# unexpected journal messages")
            && tap.contains("dumped core, said only the journal")
            && tap
                .lines()
                .any(|l| l.starts_with("ok ") && l.contains("TestJournal.testQuiet")),
        "{tap}"
    );
    // One shared machine ran both, in either order: each test's journal.txt has its own
    // lines (read from the last read's cursor, its part taken on the host) and no markers.
    let (loud, quiet) = (
        journal(journal_dir.path(), "TestJournal.testLogger"),
        journal(journal_dir.path(), "TestJournal.testQuiet"),
    );
    assert!(
        loud.contains("dumped core, said only the journal\n"),
        "{loud}"
    );
    assert!(quiet.contains("a quiet line of its own\n"), "{quiet}");
    assert!(
        !loud.contains("a quiet line") && !quiet.contains("dumped core"),
        "{loud}{quiet}"
    );
    assert!(
        !(loud.clone() + &quiet).contains("vmcheck-"),
        "{loud}{quiet}"
    );
}
