//! Executable check files against real VMs, beyond what the own suite's run shows
//! (`runner.rs`): restores asked for while a test runs, on one shared machine; a Python
//! check file run on its own, as a developer does, also with `--sit`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use vmcheck::exit_codes;

#[test]
fn paths_restored_on_request_are_put_back_on_the_one_shared_machine() {
    common::image("busybox");
    // One job: one shared machine runs all of these in turn, and each checks that it finds
    // the machine as it was before any of them.
    let out = common::vmcheck()
        .args(["run", "-j", "1", "--no-retry-fail", "--progress", "none"])
        .args(["TestProtocol.testRestore", "TestPythonShared.testRestore"])
        .output()
        .unwrap();
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
    assert_eq!(tap.matches("\nok ").count(), 4, "{tap}");
    assert_eq!(
        tap.matches(" [ND@1]").count(),
        4,
        "one shared machine: {tap}"
    );
}

#[test]
fn a_python_check_file_runs_on_its_own() {
    common::image("busybox");
    let out = std::process::Command::new("test/verify/check-python")
        .current_dir(common::project_root())
        .env("PATH", common::path_with_vmcheck())
        .env("VMCHECK_PROGRESS", "none")
        .args(["TestPythonShared.testExecute", "TestPythonSkips"])
        .output()
        .unwrap();
    let tap = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{tap}\n{err}");
    assert!(
        tap.contains("ok 1 test/verify/check-python TestPythonShared.testExecute")
            || tap.contains(" TestPythonShared.testExecute [ND@1]\n"),
        "{tap}"
    );
    assert!(
        tap.contains("TestPythonSkips.testSkipsItself [ND@")
            || tap.contains("# SKIP nothing to test on busybox"),
        "{tap}"
    );
    // Run by hand, the output is live on stderr, as Cockpit's check-* show it.
    assert!(err.contains("+ vm exec") || err.contains("hello"), "{err}");
    // Without vmcheck on PATH, one clear line.
    let out = std::process::Command::new("test/verify/check-python")
        .current_dir(common::project_root())
        .env("PATH", "/usr/bin:/bin")
        .arg("TestPythonShared.testExecute")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vmcheck"), "{err}");
}

#[test]
fn a_python_check_file_sits_on_its_failed_machine_until_enter() {
    common::image("busybox");
    let mut child = std::process::Command::new("test/example/check-python-failures")
        .current_dir(common::project_root())
        .env("PATH", common::path_with_vmcheck())
        .args(["TestPythonExample.testAssertFails", "--sit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ssh = loop {
        let line = err.next().expect("a sit prompt").unwrap();
        seen.push(line.clone());
        if let Some(ssh) = line.strip_prefix("  machine1: ") {
            break ssh.to_owned();
        }
    };
    // The assertion's traceback was shown before the prompt.
    assert!(
        seen.iter().any(|l| l.contains("AssertionError")),
        "{seen:#?}"
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ssh} cat /proc/sys/kernel/random/boot_id"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    for _ in err.by_ref() {}
    assert_eq!(child.wait().unwrap().code(), Some(exit_codes::TESTS_FAILED));
    assert!(common::run_dirs_of(child.id()).is_empty());
}
