//! Soak tests end to end on real busybox machines: events at startup, periodically and at
//! teardown for a scaled duration, pause and link-down faults done with QMP and an invariant
//! checked after each; a failing event ends the soak at once and teardown still runs; a
//! seed replays its schedule.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use vmcheck::exit_codes;

fn run_in(root: &Path) -> Command {
    let mut cmd = common::vmcheck_run_in(root);
    cmd.env("TEST_OS", "busybox");
    cmd
}

/// The `soak-event` events of a stream: (name, why, outcome, due, started, duration).
fn soak_events(file: &Path) -> Vec<(String, String, String, f64, f64, f64)> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "soak-event")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["why"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
                e["due"].as_f64().unwrap(),
                e["started"].as_f64().unwrap(),
                e["duration"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Four minutes scaled by 1/6: 40 s. `check` every 5 s (and after each fault), a pause and
/// a link-down of 2 s in each 20 s, while the test's own script works.
const SOAK: &str = r#"
[TestSoak.testLong]
soak = { duration = "4m" }
timeout = 120
run = "while true; do date +%s >> /tmp/workload; sleep 1; done"

[[TestSoak.testLong.events]]
name = "setup"
run = "echo ready > /tmp/ready"

[[TestSoak.testLong.events]]
name = "check"
run = "test -s /tmp/ready && test -s /tmp/workload"
interval = "30s"
at_startup = false
invariant = true
timeout = "60s"

[[TestSoak.testLong.events]]
name = "pause"
fault = "pause"
for = "12s"
interval = "2m"
at_startup = false

[[TestSoak.testLong.events]]
name = "unplug"
fault = "link-down"
for = "12s"
interval = "2m"
at_startup = false

[[TestSoak.testLong.events]]
name = "collect"
run = "wc -l < /tmp/workload"
at_startup = false
at_teardown = true
"#;

#[test]
fn a_soak_runs_its_events_on_schedule_with_faults_and_checks() {
    let dir = common::busybox_project_with("check-soak", SOAK);
    let root = dir.path();
    let events = root.join("events.jsonl");
    let junit = root.join("junit.xml");
    let out = common::output_leaving_nothing(
        run_in(root)
            .args(["--soak-scale", "0.1666667", "--seed", "11", "--events"])
            .arg(&events)
            .arg("--junit")
            .arg(&junit),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    common::assert_code(&out, &tap, exit_codes::OK);
    let runs = soak_events(&events);
    let of = |name: &str, why: &str| -> Vec<&(String, String, String, f64, f64, f64)> {
        runs.iter().filter(|r| r.0 == name && r.1 == why).collect()
    };
    // Startup once, teardown once at the end; all passed.
    assert_eq!(of("setup", "startup").len(), 1, "{runs:?}");
    let collect = of("collect", "teardown");
    assert_eq!(collect.len(), 1, "{runs:?}");
    assert!(collect[0].4 >= 40.0, "{runs:?}");
    assert!(
        runs.iter().all(|r| r.2 == "passed" || r.2 == "skipped"),
        "{runs:?}"
    );
    // duration / interval = 8 periodic checks due (none at the end): 7, within one.
    let periodic = of("check", "periodic").len();
    assert!((6..=8).contains(&periodic), "{periodic}: {runs:?}");
    // Two windows of 20 s: two faults of each kind, each held about its 2 s.
    for fault in ["pause", "unplug"] {
        let f = of(fault, "periodic");
        assert_eq!(f.len(), 2, "{fault}: {runs:?}");
        assert!(f.iter().all(|r| r.5 >= 1.9 && r.2 == "passed"), "{f:?}");
    }
    // After each fault ended, the invariant ran, and passed (two faults ending while one
    // check runs share the one after it).
    let invariant = of("check", "invariant");
    assert!(invariant.len() >= 2, "{runs:?}");
    for f in of("pause", "periodic")
        .into_iter()
        .chain(of("unplug", "periodic"))
    {
        let end = f.4 + f.5;
        assert!(
            invariant
                .iter()
                .any(|i| i.4 >= end - 0.05 && i.2 == "passed"),
            "no check after {f:?}: {runs:?}"
        );
    }
    // The summary counts each event; JUnit has a case per event with its counts.
    assert!(
        err.contains("soak events (runs, failed, skipped, slowest):"),
        "{err}"
    );
    assert!(err.contains("TestSoak.testLong/pause"), "{err}");
    common::assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains(r#"name="testLong/unplug""#), "{xml}");
    assert!(
        xml.contains(r#"<property name="runs" value="2"/>"#),
        "{xml}"
    );
}

/// `check` fails on its third run: the soak ends then, not at the next tick nor at the
/// end of its ten minutes; the output names the event and the run; teardown runs; the
/// test fails, once (a soak is not retried).
const FAILING: &str = r#"
[TestSoak.testFails]
soak = { duration = "10m" }
timeout = 60

[[TestSoak.testFails.events]]
name = "check"
run = 'n=$(cat /tmp/n 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /tmp/n; echo "run $n"; [ $n -lt 3 ]'
interval = "10s"
at_startup = false

[[TestSoak.testFails.events]]
name = "pause"
fault = "pause"
for = "2s"
interval = "10s"
at_startup = false

[[TestSoak.testFails.events]]
name = "collect"
run = "cat /tmp/n"
at_startup = false
at_teardown = true
"#;

#[test]
fn a_failing_event_ends_the_soak_at_once_and_a_seed_replays_the_schedule() {
    let dir = common::busybox_project_with("check-soak", FAILING);
    let root = dir.path();
    let run = |seed: &str, name: &str| {
        let events = root.join(name);
        let out = common::output_leaving_nothing(
            run_in(root)
                .args(["--soak-scale", "0.1", "--seed", seed, "--events"])
                .arg(&events),
        );
        (out, soak_events(&events))
    };
    let (out, runs) = run("5", "a.jsonl");
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::TESTS_FAILED);
    assert!(!tap.contains("RETRY"), "{tap}");
    // The third check that ran failed (on a loaded host a run may have been skipped, so
    // its number is read from the events), and the output names it with its output.
    let executed: Vec<usize> = (0..runs.len())
        .filter(|&i| runs[i].0 == "check" && runs[i].2 != "skipped")
        .collect();
    assert_eq!(executed.len(), 3, "{runs:?}");
    let third = &runs[executed[2]];
    assert_eq!(third.2, "failed", "{runs:?}");
    let n = runs[..=executed[2]]
        .iter()
        .filter(|r| r.0 == "check")
        .count();
    assert!(
        tap.contains(&format!("soak: check #{n} (periodic")),
        "{tap}"
    );
    assert!(tap.contains(&format!("soak: check #{n} | run 3")), "{tap}");
    assert!(tap.contains("soak stopped at"), "{tap}");
    let failed_at = third.4 + third.5;
    // Nothing started after the failure (but teardown), long before the end (60 s).
    assert!(
        runs.iter()
            .filter(|r| r.1 != "teardown")
            .all(|r| r.4 <= failed_at + 0.01),
        "{runs:?}"
    );
    assert!(failed_at < 30.0, "{runs:?}");
    // Teardown right after it (within a second on an idle host: a running pause is
    // undone first).
    let collect: Vec<_> = runs.iter().filter(|r| r.0 == "collect").collect();
    assert_eq!(collect.len(), 1, "{runs:?}");
    assert!(collect[0].4 < failed_at + 3.0, "{runs:?}");
    // The same seed draws the same fault times; another seed others.
    let due = |runs: &[(String, String, String, f64, f64, f64)]| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.0 == "pause")
            .map(|r| r.3)
            .collect()
    };
    let (_, again) = run("5", "b.jsonl");
    let (_, other) = run("6", "c.jsonl");
    assert!(!due(&runs).is_empty(), "{runs:?}");
    assert_eq!(due(&runs), due(&again));
    assert_ne!(due(&runs)[0], due(&other)[0]);
}

/// Bad soak options are usage errors before anything starts.
#[test]
fn bad_soak_options_start_nothing() {
    let dir = common::busybox_project_with("check-soak", FAILING);
    for (args, says) in [
        (
            &["--soak-scale", "0"][..],
            "expected a number greater than 0",
        ),
        (
            &["--soak-scale", "nan"][..],
            "expected a number greater than 0",
        ),
        (&["--seed", "x"][..], "--seed"),
    ] {
        let out = common::output_leaving_nothing(run_in(dir.path()).args(args));
        assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

/// A soak with a matrix: each case soaks on its own machine, under its own id, with its
/// values in its events' environment.
#[test]
fn each_matrix_case_soaks_under_its_id() {
    let dir = common::busybox_project_with(
        "check-soak",
        r#"
[TestSoak.testCases]
matrix = { n = [1, 2] }
soak = { duration = "3s" }

[[TestSoak.testCases.events]]
name = "check"
run = 'test "$VMCHECK_MATRIX_N" -ge 1 && test "$VMCHECK_TEST" = "TestSoak.testCases[n=$VMCHECK_MATRIX_N]"'
interval = "1s"
"#,
    );
    let root = dir.path();
    let events = root.join("events.jsonl");
    let out = common::output_leaving_nothing(run_in(root).arg("--events").arg(&events));
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
    let text = std::fs::read_to_string(&events).unwrap();
    let ids: Vec<(u64, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"] == "soak-event")
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Per case: the startup run and the periodic ones at 1 s and 2 s, all passed.
    for id in [1, 2] {
        let runs: Vec<_> = ids.iter().filter(|(i, _)| *i == id).collect();
        assert_eq!(runs.len(), 3, "{text}");
        assert!(runs.iter().all(|(_, o)| o == "passed"), "{text}");
    }
    assert!(tap.contains("TestSoak.testCases[n=2]"), "{tap}");
}

/// Three minutes scaled by 1/6: 30 s on two machines. machine1 is rebooted once (QMP
/// `system_reset`) under the test's own script, machine2's clock jumps an hour ahead; host
/// events reach both with the `vm` helper, and one, an invariant, checks after each fault
/// that machine1 is back on the private network under its name.
const FAULTS: &str = r#"
[TestSoak.testFaults]
provision.machine1 = {}
provision.machine2 = {}
soak = { duration = "3m" }
timeout = 240
run = "while true; do echo x >> /tmp/workload; sleep 1; done"

[[TestSoak.testFaults.events]]
name = "first"
host = "vm exec machine1 cat /proc/sys/kernel/random/boot_id"

[[TestSoak.testFaults.events]]
name = "reboot"
fault = "reboot"
interval = "3m"
at_startup = false

[[TestSoak.testFaults.events]]
name = "jump"
fault = "clock-jump"
machine = "machine2"
by = "1h"
interval = "3m"
at_startup = false

[[TestSoak.testFaults.events]]
name = "reach"
host = "vm exec machine2 ping -c 1 -W 10 10.111.0.1 && test $(vm exec machine1 hostname) = machine1"
invariant = true
at_startup = false

[[TestSoak.testFaults.events]]
name = "last"
host = """
vm exec machine1 cat /proc/sys/kernel/random/boot_id
skew=$(( $(vm exec machine2 date +%s) - $(date +%s) ))
echo "skew $skew"
test "$skew" -ge 3500 && test "$skew" -le 3700
"""
at_startup = false
at_teardown = true
"#;

#[test]
fn a_reboot_and_a_clock_jump_under_host_events() {
    let dir = common::busybox_project_with("check-soak", FAULTS);
    let root = dir.path();
    let events = root.join("events.jsonl");
    let artifacts = root.join("artifacts");
    let out = common::output_leaving_nothing(
        run_in(root)
            .args([
                "--soak-scale",
                "0.1666667",
                "--seed",
                "3",
                "--keep-artifacts",
            ])
            .arg("--artifacts")
            .arg(&artifacts)
            .arg("--events")
            .arg(&events),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
    let runs = soak_events(&events);
    let of = |name: &str| -> Vec<&(String, String, String, f64, f64, f64)> {
        runs.iter().filter(|r| r.0 == name).collect()
    };
    // One reboot and one jump, passed; the invariant after each, passed (twice, or once
    // when one fault ended while the other ran).
    for fault in ["reboot", "jump"] {
        let f = of(fault);
        assert_eq!(f.len(), 1, "{fault}: {runs:?}");
        assert_eq!(f[0].2, "passed", "{runs:?}");
    }
    let reach = of("reach");
    assert!(!reach.is_empty(), "{runs:?}");
    assert!(
        reach.iter().all(|r| r.1 == "invariant" && r.2 == "passed"),
        "{runs:?}"
    );
    // The test's own script was interrupted by the reboot and started again.
    let attempt = artifacts.join("TestSoak.testFaults/attempt-1");
    let output = std::fs::read_to_string(attempt.join("output.txt")).unwrap();
    assert!(
        output.contains("starts again once the machine is back"),
        "{output}"
    );
    // Each host execution's output is kept: the boot id changed, the clock is an hour
    // ahead.
    let soak = attempt.join("soak");
    let read = |f: &str| std::fs::read_to_string(soak.join(f)).unwrap();
    let (first, last) = (read("first.1.txt"), read("last.1.txt"));
    let id = |text: &str| {
        text.lines()
            .find(|l| l.len() == 36 && l.matches('-').count() == 4)
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no boot id in {text}"))
    };
    assert_ne!(id(&first), id(&last), "{first}\n{last}");
    assert!(last.contains("skew 3"), "{last}");
}

/// A soak of ten minutes with a check each second, and a pause now and then.
const LONG: &str = r#"
[TestSoak.testLong]
soak = { duration = "10m" }

[[TestSoak.testLong.events]]
name = "check"
run = "true"
interval = "1s"

[[TestSoak.testLong.events]]
name = "pause"
fault = "pause"
for = "1s"
interval = "5s"
at_startup = false

[[TestSoak.testLong.events]]
name = "collect"
run = "true"
at_startup = false
at_teardown = true
"#;

/// Ctrl-C ends a soak at once, its machine with it, and the reports hold every execution
/// so far.
#[test]
fn ctrl_c_stops_a_soak_with_its_results_so_far() {
    let dir = common::busybox_project_with("check-soak", LONG);
    let root = dir.path();
    let (events, junit) = (root.join("events.jsonl"), root.join("junit.xml"));
    let mut cmd = run_in(root);
    cmd.env("VMCHECK_PROGRESS", "none")
        .arg("--events")
        .arg(&events)
        .arg("--junit")
        .arg(&junit);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ran = || {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .matches("\"soak-event\"")
            .count()
    };
    // Waits for the precondition (a cold boot on a loaded host), times nothing.
    assert!(common::eventually(300, || ran() >= 5), "the soak runs");
    let pid = child.id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::INTERRUPTED);
    assert!(tap.contains("ERROR interrupted by SIGINT"), "{tap}");
    let runs = soak_events(&events);
    assert!(runs.len() >= 5, "{runs:?}");
    // Teardown is not run: Ctrl-C is for stopping now.
    assert!(runs.iter().all(|r| r.0 != "collect"), "{runs:?}");
    let stream = std::fs::read_to_string(&events).unwrap();
    assert!(stream.contains("\"run-cancelled\""), "{stream}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains("testLong/check"), "{junit}");
    assert!(common::run_dirs_of(pid).is_empty(), "run directories left");
}

/// `--sit` keeps a failed soak's machine, unpaused and reachable.
#[test]
fn sit_keeps_a_failed_soaks_machine() {
    let dir = common::busybox_project_with(
        "check-soak",
        r#"
[TestSoak.testFails]
soak = { duration = "1m" }

[[TestSoak.testFails.events]]
name = "pause"
fault = "pause"
for = "20s"
interval = "30s"
at_startup = false

[[TestSoak.testFails.events]]
name = "check"
run = "test ! -e /tmp/once; touch /tmp/once"
interval = "2s"
"#,
    );
    let mut cmd = run_in(dir.path());
    cmd.env("VMCHECK_PROGRESS", "none").arg("--sit");
    let (mut child, mut err) = common::spawn_reading_stderr(&mut cmd);
    let ssh = common::sit_prompt(&mut err)
        .iter()
        .find_map(|l| l.strip_prefix("  machine1: ").map(String::from))
        .expect("ssh line");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("timeout 30 {ssh} cat /tmp/once"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::TESTS_FAILED));
}

/// The log check covers a soak from its start, its workload's machine included: a kernel
/// BUG an event provokes fails the test, unless a host event allowed it.
#[test]
fn the_log_check_covers_a_soak() {
    let check = |allow: &str| {
        format!(
            r#"
[TestSoak.testLog]
soak = {{ duration = "4s" }}
run = "while true; do sleep 1; done"

[[TestSoak.testLog.events]]
name = "allow"
host = "{allow}"

[[TestSoak.testLog.events]]
name = "oops"
run = "echo 'BUG: soak provoked' > /dev/kmsg"
at_startup = false
interval = "2s"
"#
        )
    };
    for (allow, code) in [
        ("true", exit_codes::TESTS_FAILED),
        ("vm allow-journal 'soak provoked'", exit_codes::OK),
    ] {
        let dir = common::busybox_project_with("check-soak", &check(allow));
        let out = common::output_leaving_nothing(&mut run_in(dir.path()));
        let tap = String::from_utf8_lossy(&out.stdout);
        common::assert_code(&out, &tap, code);
        if code != exit_codes::OK {
            assert!(tap.contains("unexpected journal messages"), "{tap}");
            assert!(tap.contains("BUG: soak provoked"), "{tap}");
        }
    }
}
