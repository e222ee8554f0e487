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
    assert!(invariant.len() >= 3, "{runs:?}");
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
