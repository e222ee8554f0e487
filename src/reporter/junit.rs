//! JUnit XML (`--junit FILE`), written when the run finishes: one `<testsuite>` per check
//! file, one `<testcase>` per test (classname `TestClass`, name `testMethod`), in plan order.
//!
//! - flaky tests pass with a `<flakyFailure>`/`<flakyError>` per failed attempt, failed tests
//!   carry their earlier attempts as `<rerunFailure>`/`<rerunError>` (Surefire's elements);
//! - known issues of this OS and `todo` tests are `<skipped>` with the issue or reason;
//! - machine or harness failures are `<error type="infrastructure">`, not `<failure>`;
//! - a non-success carries the attempt's output in `<system-out>` and names its artifact
//!   directory;
//! - a soak's events follow its test, one `<testcase>` each (`testMethod/event`) with the
//!   counts of its last attempt's executions as properties, failed if any failed.
//!
//! `test/junit.xsd` is the schema the output is checked against.

use super::Reporter;
use crate::events::{AttemptOutcome, AttemptReport, Event, SoakRun, TestInfo, Verdict};
use quick_junit::{
    NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestRerun, TestSuite,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Lines of output quoted in a failure's text (the whole output is in `<system-out>`).
const TAIL_LINES: usize = 20;

pub struct JunitReporter<W: Write> {
    out: Option<W>,
    test_os: String,
    /// Plan order of tests, and each finished test's case.
    tests: Vec<TestInfo>,
    cases: BTreeMap<usize, TestCase>,
    /// Per soak test: its events in order, and the executions of its latest attempt.
    soaks: BTreeMap<usize, (Vec<String>, Vec<SoakRun>)>,
}

impl<W: Write> JunitReporter<W> {
    pub fn new(out: W) -> JunitReporter<W> {
        JunitReporter {
            out: Some(out),
            test_os: String::new(),
            tests: Vec::new(),
            cases: BTreeMap::new(),
            soaks: BTreeMap::new(),
        }
    }

    fn write(&mut self, wall: std::time::Duration) -> std::io::Result<()> {
        let Some(mut out) = self.out.take() else {
            return Ok(());
        };
        let mut report = Report::new("vmcheck");
        report.set_time(wall);
        // One suite per check file, in the order files first appear in the plan.
        let mut suites: Vec<(PathBuf, TestSuite)> = Vec::new();
        for t in &self.tests {
            let i = match suites.iter().position(|(f, _)| *f == t.file) {
                Some(i) => i,
                None => {
                    let mut suite = TestSuite::new(t.file.display().to_string());
                    suite.add_property(Property::new("TEST_OS", self.test_os.as_str()));
                    suites.push((t.file.clone(), suite));
                    suites.len() - 1
                }
            };
            let case = self.cases.remove(&t.id).unwrap_or_else(|| {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
                status
                    .set_type("infrastructure")
                    .set_message("the test did not finish");
                new_case(t, status)
            });
            suites[i].1.add_test_case(case);
            if let Some((events, runs)) = self.soaks.remove(&t.id) {
                for event in &events {
                    suites[i].1.add_test_case(soak_case(t, event, &runs));
                }
            }
        }
        for (_, mut suite) in suites {
            let time = suite.test_cases.iter().filter_map(|c| c.time).sum();
            suite.set_time(time);
            report.add_test_suite(suite);
        }
        report
            .serialize(&mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        out.flush()
    }
}

impl<W: Write> Reporter for JunitReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted { test_os, tests, .. } => {
                self.test_os = test_os.clone();
                self.tests = tests.clone();
            }
            Event::TestFinished {
                test,
                verdict,
                attempts,
                ..
            } => {
                self.cases.insert(test.id, case(test, verdict, attempts));
            }
            Event::SoakStarted { id, events, .. } => {
                self.soaks.insert(*id, (events.clone(), Vec::new()));
            }
            Event::SoakEvent { id, run, .. } => {
                if let Some((_, runs)) = self.soaks.get_mut(id) {
                    runs.push(run.clone());
                }
            }
            Event::RunFinished { wall, .. } => self.write(*wall)?,
            _ => {}
        }
        Ok(())
    }
}

fn new_case(test: &TestInfo, status: TestCaseStatus) -> TestCase {
    let (class, method) = test.name.split_once('.').unwrap_or(("", &test.name));
    let mut case = TestCase::new(method, status);
    case.set_classname(class);
    case
}

/// The test case of a finished test.
pub fn case(test: &TestInfo, verdict: &Verdict, attempts: &[AttemptReport]) -> TestCase {
    let last = attempts.last();
    let earlier = &attempts[..attempts.len().saturating_sub(1)];
    let failed_earlier = earlier.iter().filter(|a| !attempt_passed(a)).map(rerun);
    let mut status = match verdict {
        Verdict::Passed | Verdict::Flaky => {
            let mut s = TestCaseStatus::success();
            s.add_reruns(failed_earlier);
            s
        }
        Verdict::Skipped { reason } => skipped("skipped", reason),
        Verdict::Todo { reason } => skipped("todo", &format!("todo: {reason}")),
        Verdict::KnownIssue { issue } => skipped("known-issue", &format!("Known issue #{issue}")),
        Verdict::Failed
        | Verdict::UnexpectedPass { .. }
        | Verdict::KnownElsewhere { .. }
        | Verdict::Error { .. } => {
            let kind = if matches!(verdict, Verdict::Error { .. }) {
                NonSuccessKind::Error
            } else {
                NonSuccessKind::Failure
            };
            let mut s = TestCaseStatus::non_success(kind);
            s.set_message(verdict.describe_failure(last)).set_type(
                if kind == NonSuccessKind::Error {
                    "infrastructure"
                } else {
                    "failure"
                },
            );
            s.add_reruns(failed_earlier);
            s
        }
    };
    if let (Some(a), false) = (last, matches!(status, TestCaseStatus::Success { .. })) {
        status.set_description(description(a));
    }
    let success = matches!(status, TestCaseStatus::Success { .. });
    let mut case = new_case(test, status);
    if let Some(a) = last {
        case.set_time(a.duration);
        if !success {
            case.set_system_out(a.output.as_str());
        }
    }
    case
}

/// One soak event of test `test` as a case: the counts of its executions, failed if one did.
fn soak_case(test: &TestInfo, event: &str, runs: &[SoakRun]) -> TestCase {
    let mine: Vec<&SoakRun> = runs.iter().filter(|r| r.name == event).collect();
    let failed: Vec<&&SoakRun> = mine.iter().filter(|r| r.failed()).collect();
    let count = |outcome: &str| mine.iter().filter(|r| r.outcome == outcome).count();
    let status = match failed.first() {
        None => TestCaseStatus::success(),
        Some(first) => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_type("failure").set_message(format!(
                "{} of {} runs failed; the first, #{} ({}), {}{}",
                failed.len(),
                mine.len(),
                first.run,
                first.why,
                first.outcome,
                if first.detail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", first.detail)
                }
            ));
            if !first.tail.is_empty() {
                s.set_description(first.tail.as_str());
            }
            s
        }
    };
    let (class, method) = test.name.split_once('.').unwrap_or(("", &test.name));
    let mut case = TestCase::new(format!("{method}/{event}"), status);
    case.set_classname(class);
    case.set_time(mine.iter().map(|r| r.duration).sum());
    for (name, value) in [
        ("runs", mine.len()),
        ("passed", count("passed")),
        ("failed", failed.len()),
        ("skipped", count("skipped")),
        ("interrupted", count("interrupted")),
    ] {
        case.properties.push(Property::new(name, value.to_string()));
    }
    if let Some(slowest) = mine.iter().map(|r| r.duration).max() {
        case.properties.push(Property::new(
            "slowest",
            format!("{:.3}", slowest.as_secs_f64()),
        ));
    }
    case
}

fn skipped(ty: &str, message: &str) -> TestCaseStatus {
    let mut s = TestCaseStatus::skipped();
    s.set_type(ty).set_message(message);
    s
}

fn attempt_passed(a: &AttemptReport) -> bool {
    matches!(
        a.outcome,
        AttemptOutcome::Passed | AttemptOutcome::Skipped { .. }
    )
}

/// An earlier failed attempt, as a flaky or rerun element.
fn rerun(a: &AttemptReport) -> TestRerun {
    let kind = match a.outcome {
        AttemptOutcome::Harness { .. } => NonSuccessKind::Error,
        _ => NonSuccessKind::Failure,
    };
    let mut r = TestRerun::new(kind);
    r.set_time(a.duration)
        .set_message(format!("attempt {}: {}", a.attempt, a.describe()))
        .set_description(description(a))
        .set_system_out(a.output.as_str());
    r
}

/// The text of a failure element: where the artifacts are, then the output's last lines.
fn description(a: &AttemptReport) -> String {
    let mut text = String::new();
    if let Some(dir) = &a.artifacts {
        text.push_str(&format!("artifacts: {}\n", dir.display()));
    }
    let lines: Vec<&str> = a.output.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if lines.len() > tail.len() {
        text.push_str("…\n");
    }
    for l in tail {
        text.push_str(l);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KnownIssues;
    use std::time::Duration;

    fn info() -> TestInfo {
        TestInfo {
            id: 1,
            name: "TestFoo.testBar".into(),
            file: "test/verify/check-foo".into(),
            nondestructive: false,
            ram_mib: 256,
            os: None,
        }
    }

    fn attempt(n: u32, outcome: AttemptOutcome) -> AttemptReport {
        AttemptReport {
            attempt: n,
            outcome,
            output: format!("output of attempt {n}\n"),
            duration: Duration::from_millis(1500),
            machines: vec!["t1-machine1".into()],
            artifacts: Some(format!("res/TestFoo.testBar/attempt-{n}").into()),
            known: KnownIssues::default(),
            start_ms: None,
            boot: None,
        }
    }

    fn xml(verdict: Verdict, attempts: Vec<AttemptReport>) -> String {
        let mut out = Vec::new();
        let mut r = JunitReporter::new(&mut out);
        let t = info();
        r.report(&Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: vec![t.clone()],
            shard: None,
            rerun: vec![],
            run: None,
        })
        .unwrap();
        r.report(&Event::TestFinished {
            test: t,
            placement: crate::events::Placement::Own,
            verdict,
            attempts,
        })
        .unwrap();
        r.report(&Event::RunFinished {
            stats: Default::default(),
            wall: Duration::from_secs(3),
            unmatched_known: vec![],
        })
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn failed() -> AttemptOutcome {
        AttemptOutcome::failed("exit code 1")
    }

    #[test]
    fn flaky_test_passes_with_flaky_failure() {
        let x = xml(
            Verdict::Flaky,
            vec![attempt(1, failed()), attempt(2, AttemptOutcome::Passed)],
        );
        assert!(x.contains(r#"<testsuite name="test/verify/check-foo" tests="1""#));
        assert!(x.contains(r#"name="testBar" classname="TestFoo""#), "{x}");
        assert!(x.contains("<flakyFailure"), "{x}");
        assert!(x.contains("attempt 1: failed (exit code 1)"));
        assert!(!x.contains("<failure"), "a flaky test passed");
    }

    #[test]
    fn failure_names_artifacts_and_carries_output_and_reruns() {
        let x = xml(
            Verdict::Failed,
            vec![attempt(1, failed()), attempt(2, failed())],
        );
        assert!(
            x.contains(r#"<failure message="failed (exit code 1)" type="failure">"#),
            "{x}"
        );
        assert!(x.contains("artifacts: res/TestFoo.testBar/attempt-2"));
        assert!(x.contains("<rerunFailure"));
        assert!(x.contains("<system-out>output of attempt 2"));
    }

    #[test]
    fn harness_failure_is_an_error_not_a_failure() {
        let x = xml(
            Verdict::Error {
                message: "boot timed out".into(),
            },
            vec![attempt(
                1,
                AttemptOutcome::Harness {
                    message: "boot timed out".into(),
                    host_fault: false,
                },
            )],
        );
        assert!(
            x.contains(r#"<error message="boot timed out" type="infrastructure""#),
            "{x}"
        );
        assert!(x.contains(r#"errors="1""#));
        assert!(!x.contains("<failure"));
    }

    #[test]
    fn known_issue_and_todo_are_skipped() {
        let x = xml(
            Verdict::KnownIssue { issue: 101 },
            vec![attempt(1, failed())],
        );
        assert!(
            x.contains(r#"<skipped message="Known issue #101" type="known-issue""#),
            "{x}"
        );
        let x = xml(
            Verdict::Todo {
                reason: "not yet".into(),
            },
            vec![attempt(1, failed())],
        );
        assert!(
            x.contains(r#"<skipped message="todo: not yet" type="todo""#),
            "{x}"
        );
    }
}
