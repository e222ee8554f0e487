//! Faults of existing hosts (`--machine`): a host that refuses connections fails at once, a
//! host that never answers is waited for only while there is work, and the good host runs
//! every test meanwhile.

mod common;

use std::io::Write;
use std::process::Output;
use std::time::{Duration, Instant};
use vmcheck::exit_codes;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A local port that accepts connections and never says a word (a host whose sshd hangs,
/// or a firewall that lets SYNs through to nothing).
fn silent_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    port
}

/// A fresh SSH key in `dir` (for hosts that never get to check it).
fn identity(dir: &std::path::Path) -> std::path::PathBuf {
    let key = dir.join("id");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    key
}

/// `ok`/`not ok` lines of a TAP stream.
fn results(tap: &str) -> Vec<&str> {
    tap.lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .collect()
}

/// `vmcheck run` of the nondestructive scenario against `hosts` with `--boot-timeout
/// SECS`: its output, TAP, stderr, and how long it took.
fn run_on(hosts: &[&str], boot_timeout: &str, more: &[&str]) -> (Output, String, String, Duration) {
    let mut cmd = common::vmcheck();
    cmd.args([
        "run",
        "--scenario",
        "nondestructive",
        "--boot-timeout",
        boot_timeout,
    ]);
    for h in hosts {
        cmd.args(["--machine", h]);
    }
    cmd.args(more);
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, tap, err, took)
}

/// Run against `host` alone, logging in with a key nobody will check.
fn run_on_alone(host: &str, boot_timeout: &str) -> (Output, String, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let key = identity(dir.path());
    let key = key.to_str().unwrap();
    run_on(
        &[host],
        boot_timeout,
        &["--insecure-host-key", "--identity", key],
    )
}

#[test]
fn dead_and_silent_hosts_do_not_hold_a_run_on_a_good_one() {
    common::image("busybox");
    let (mut vm, good) = common::vm_run("busybox");
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let (dead, silent) = (closed_port(), silent_port());
    let (dead, silent) = (format!("127.0.0.1:{dead}"), format!("127.0.0.1:{silent}"));
    // The good host last: it is [ND@3]. A boot timeout far longer than the run may take.
    let (out, tap, err, took) = run_on(&[&dead, &silent], "600", &good);
    vm.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert_eq!(vm.wait().unwrap().code(), Some(exit_codes::OK));
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{tap}\n{err}");
    let rs = results(&tap);
    assert_eq!(
        rs.len(),
        common::planned(&["--scenario", "nondestructive"]),
        "{tap}"
    );
    assert!(
        rs.iter()
            .all(|r| r.starts_with("ok ") && r.contains(" [ND@3]")),
        "{tap}"
    );
    // Not one boot timeout: the silent host is dropped once the work is done.
    assert!(took < Duration::from_secs(300), "took {took:?}\n{err}");
    assert_eq!(
        err.matches(&format!("{dead}: cannot connect to {dead}"))
            .count(),
        1,
        "the refused host fails once: {err}"
    );
}

#[test]
fn a_silent_host_is_waited_for_as_long_as_a_boot_and_said_so() {
    let silent = format!("127.0.0.1:{}", silent_port());
    let (out, tap, err, took) = run_on_alone(&silent, "10");
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INFRASTRUCTURE),
        "{tap}\n{err}"
    );
    // Once for the boot timeout, not three times.
    assert!(took >= Duration::from_secs(9), "took {took:?}\n{err}");
    assert!(took < Duration::from_secs(30), "took {took:?}\n{err}");
    let waiting = format!("for {silent} to answer SSH (no answer in 5s)");
    assert_eq!(err.matches(&waiting).count(), 1, "{err}");
    assert_eq!(
        results(&tap).len(),
        common::planned(&["--scenario", "nondestructive"]),
        "{tap}"
    );
}

#[test]
fn a_refused_host_fails_its_tests_at_once() {
    let dead = format!("127.0.0.1:{}", closed_port());
    let (out, tap, err, took) = run_on_alone(&dead, "600");
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INFRASTRUCTURE),
        "{tap}\n{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}\n{err}");
    let rs = results(&tap);
    assert_eq!(
        rs.len(),
        common::planned(&["--scenario", "nondestructive"]),
        "{tap}"
    );
    assert!(
        rs.iter().all(|r| r.starts_with("not ok ")),
        "every test has its error: {tap}"
    );
    assert!(tap.contains("no machine for nondestructive tests"), "{tap}");
    assert!(err.contains("Connection refused"), "{err}");
}
