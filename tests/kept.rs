//! Failed machines kept (`run --keep-failed-machines`) and brought back (`vmcheck sit`) on
//! real busybox machines: a failing test leaves a file and a background process behind,
//! and after the run `vmcheck sit ARTIFACT -e` finds both; a two-machine test comes back
//! with its private network; only the last failed attempt keeps its machines; a kept
//! machine whose image this host does not have is a clear error that starts nothing.

mod common;

use std::path::Path;
use vmcheck::exit_codes;

const CHECK: &str = r#"
[TestKeep.testLeaves]
run = "echo kept > /root/left; setsid sleep 10000 </dev/null >/dev/null 2>&1 & sleep 1; exit 1"

[TestKeep.testTwo]
provision.machine1 = {}
provision.machine2 = {}
run = "ping -c 1 -W 5 $VMCHECK_MACHINE2_IP; exit 1"
"#;

/// `vmcheck sit ARGS`, with nothing left behind; (exit code, stdout, stderr).
fn sit(args: &[&str], dir: &Path, stdin: &str) -> (i32, String, String) {
    let mut child = common::vmcheck()
        .arg("sit")
        .arg(dir)
        .args(args)
        .env("VMCHECK_PROGRESS", "none")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin.as_bytes()).unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(common::run_dirs_of(pid).is_empty(), "run directories left");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn failed_machines_come_back_as_they_failed() {
    let dir = common::busybox_project_with("check-keep", CHECK);
    let root = dir.path();
    let artifacts = root.join("artifacts");
    let out = common::output_leaving_nothing(
        common::vmcheck_run_in(root)
            .env("TEST_OS", "busybox")
            .arg("--keep-failed-machines")
            .arg("--artifacts")
            .arg(&artifacts),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::TESTS_FAILED);
    assert!(
        tap.contains("# vmcheck: kept machine1 as it failed ("),
        "{tap}"
    );
    // Retried twice: only the last failed attempt keeps its machines.
    let leaves = artifacts.join("TestKeep.testLeaves");
    assert!(
        leaves
            .join("attempt-3/machines/machine1/state.zst")
            .is_file()
    );
    for earlier in ["attempt-1", "attempt-2"] {
        assert!(!leaves.join(earlier).join("machines").exists(), "{earlier}");
    }
    // The file and the process the test left, in the machine as it was.
    let (code, stdout, stderr) = sit(
        &["-e", "cat /root/left && ps | grep 'sleep 1000[0]'"],
        &leaves,
        "",
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.starts_with("kept\n"), "{stdout}");
    assert!(stdout.contains("sleep 10000"), "{stdout}");
    // Again (what was kept stays as it is), with the command's own status.
    let (code, _, stderr) = sit(&["-e", "test -e /root/left && exit 7"], &leaves, "");
    assert_eq!(code, 7, "{stderr}");
    // Without -e: how to reach it, until Enter.
    let (code, stdout, stderr) = sit(&[], &leaves.join("attempt-3"), "\n");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("TestKeep.testLeaves's machines are back as it failed"),
        "{stdout}"
    );
    assert!(stdout.contains("  machine1: ssh "), "{stdout}");
    // Two machines, their private network with them.
    let two = artifacts.join("TestKeep.testTwo");
    let (code, stdout, stderr) = sit(
        &[
            "--machine",
            "machine2",
            "-e",
            "ping -c 1 -W 5 10.111.0.1 && hostname",
        ],
        &two,
        "",
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.ends_with("machine2\n"), "{stdout}");

    // A kept machine of an image this host does not have: one line, nothing started.
    let info = leaves.join("attempt-3/machines/machine1/machine.toml");
    let text = std::fs::read_to_string(&info).unwrap();
    let sha = text
        .lines()
        .find_map(|l| l.strip_prefix("image_sha256 = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    std::fs::write(&info, text.replace(&sha, &"0".repeat(64))).unwrap();
    let (code, _, stderr) = sit(&["-e", "true"], &leaves, "");
    assert_eq!(code, exit_codes::INPUT_ERROR, "{stderr}");
    assert!(
        stderr.contains("needs the image busybox 000000000000 (by hash)"),
        "{stderr}"
    );
    // And a directory without any.
    let (code, _, stderr) = sit(&[], root, "");
    assert_eq!(code, exit_codes::INPUT_ERROR, "{stderr}");
    assert!(stderr.contains("no kept machines here"), "{stderr}");
}
