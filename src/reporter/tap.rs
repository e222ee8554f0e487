//! TAP on stdout, line-compatible with Cockpit's run-tests and valid for TAP parsers.
//!
//! Compatible: `ok 3 test/verify/check-foo TestFoo.testBar [ND@1]`, ` (0.4GB)` for
//! destructive tests, `# SKIP`, `# TODO`, `# RETRY n (reason)`, the `# 1 TEST PASSED [3s on
//! nd1]` line above each result and the `# N TESTS FAILED [...]` summary. Valid (where Cockpit
//! is not): test numbers follow emission order (tests finish out of plan order); a retried
//! attempt is a comment line without a number (`# not ok test/… # RETRY 1 (…)`), so no
//! number is reused; every line of captured output is
//! prefixed with `# `, so a test printing `ok 1` cannot corrupt the stream; no `TAP version`
//! line (Perl's TAP::Harness rejects 14); an interrupted run ends with `Bail out!`.

use super::Reporter;
use super::text::{first_line, one_line, safe_lines, tap_description};
use crate::events::{
    AttemptOutcome, AttemptReport, Event, Placement, RunStats, TestInfo, Verdict,
    machine_failure_note,
};
use std::io::Write;
use std::time::Duration;

pub struct TapReporter<W: Write> {
    out: W,
    next: usize,
    host: String,
    /// The plan, and which of its tests have their line: what [`TapReporter::abandon`]
    /// still owes.
    planned: Vec<TestInfo>,
    finished: std::collections::HashSet<usize>,
    /// `Bail out!` written: nothing may follow.
    closed: bool,
}

impl<W: Write> TapReporter<W> {
    pub fn new(out: W) -> TapReporter<W> {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "host".into());
        TapReporter {
            out,
            next: 0,
            host,
            planned: Vec::new(),
            finished: Default::default(),
            closed: false,
        }
    }

    /// End the stream at once, validly: a `not ok … # ERROR` line for every planned test
    /// that has none, then `Bail out!`. For a forced exit (a second Ctrl-C), when the run
    /// cannot close its reports the normal way.
    pub fn abandon(&mut self, reason: &str) -> std::io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let owed: Vec<TestInfo> = self
            .planned
            .iter()
            .filter(|t| !self.finished.contains(&t.id))
            .cloned()
            .collect();
        for t in owed {
            self.next += 1;
            writeln!(
                self.out,
                "not ok {} {} # ERROR {}",
                self.next,
                describe(&t, &Placement::None),
                one_line(reason)
            )?;
        }
        self.closed = true;
        writeln!(self.out, "Bail out! {}", one_line(reason))?;
        self.out.flush()
    }

    /// `text` as comment lines: split at every line end, control characters made visible,
    /// so nothing a test prints can leave the comment.
    fn comment_block(&mut self, text: &str) -> std::io::Result<()> {
        for line in safe_lines(text) {
            if line.is_empty() {
                writeln!(self.out, "#")?;
            } else {
                writeln!(self.out, "# {line}")?;
            }
        }
        Ok(())
    }

    /// An attempt's output as comments, then where its artifacts are.
    fn output_block(&mut self, report: &AttemptReport) -> std::io::Result<()> {
        self.comment_block(&report.output)?;
        if let Some(dir) = &report.artifacts {
            writeln!(
                self.out,
                "# artifacts: {}",
                one_line(&dir.to_string_lossy())
            )?;
        }
        Ok(())
    }

    fn header(&mut self, test: &TestInfo, report: &AttemptReport) -> std::io::Result<()> {
        writeln!(self.out, "# {}", "-".repeat(70))?;
        writeln!(
            self.out,
            "# {} ({}) attempt {}",
            test.name,
            one_line(&test.file.to_string_lossy()),
            report.attempt
        )?;
        writeln!(self.out, "#")
    }

    /// `# 1 TEST FAILED [3s on nd1]`: how the attempt itself ended, whatever the verdict
    /// makes of it (a known issue's attempt failed, a passing todo's attempt passed).
    fn duration_line(&mut self, report: &AttemptReport) -> std::io::Result<()> {
        let on = if report.machines.is_empty() {
            "host".to_string()
        } else {
            one_line(&report.machines.join(", "))
        };
        let how = match report.outcome {
            AttemptOutcome::Passed => "PASSED",
            AttemptOutcome::Skipped { .. } => "SKIPPED",
            _ => "FAILED",
        };
        writeln!(
            self.out,
            "# 1 TEST {how} [{}s on {on}]",
            report.duration.as_secs()
        )
    }
}

/// `test/verify/check-foo TestFoo.testBar [ND@1]` — what follows the number.
pub fn describe(test: &TestInfo, placement: &Placement) -> String {
    let mut s = tap_description(&format!("{} {}", test.file.display(), test.name));
    match placement {
        Placement::Global(k) => s.push_str(&format!(" [ND@{k}]")),
        Placement::Own => s.push_str(&format!(" ({:.1}GB)", test.ram_mib as f64 / 1024.0)),
        Placement::None => {}
    }
    s
}

/// The directive or comment after the description, if any.
fn annotation(verdict: &Verdict, attempts: &[AttemptReport]) -> Option<String> {
    let last = attempts.last();
    match verdict {
        Verdict::Passed => machine_failure_note(attempts).map(|n| one_line(&n)),
        Verdict::Flaky => Some(format!(
            "flaky: passed on attempt {}",
            last.map(|r| r.attempt).unwrap_or(0)
        )),
        Verdict::Failed => match last.map(|r| &r.outcome) {
            Some(AttemptOutcome::UnexpectedMessages { .. }) => {
                Some("unexpected journal messages".to_string())
            }
            Some(AttemptOutcome::TimedOut { after }) => {
                Some(format!("TIMEOUT after {}s", after.as_secs()))
            }
            _ => None,
        },
        Verdict::KnownIssue { issue } => Some(format!("SKIP Known issue #{issue}")),
        Verdict::KnownElsewhere { issue, os } => Some(format!(
            "NOTE Known issue #{issue} in {}",
            tap_description(os)
        )),
        Verdict::Skipped { reason } => Some(format!("SKIP {}", first_line(reason))),
        Verdict::Todo { reason } => Some(format!("TODO {}", first_line(reason))),
        Verdict::UnexpectedPass { reason } => {
            Some(format!("expected failure: {}", first_line(reason)))
        }
        Verdict::Error { message } => Some(format!("ERROR {}", first_line(message))),
    }
}

/// The summary line: `# 2 TESTS FAILED [41s on host, 3 destructive tests, 5 nondestructive tests, 1 flaky, 2 retries]`.
pub fn summary_line(stats: &RunStats, wall: Duration, host: &str) -> String {
    let bad = stats.failed + stats.errors;
    let head = if bad > 0 {
        format!("{bad} TESTS FAILED")
    } else {
        "TESTS PASSED".to_string()
    };
    let mut details = vec![
        format!("{}s on {host}", wall.as_secs()),
        format!("{} destructive tests", stats.destructive),
        format!("{} nondestructive tests", stats.nondestructive),
    ];
    details.extend(stats.nonzero_counts());
    format!("# {head} [{}]", details.join(", "))
}

impl<W: Write> Reporter for TapReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        // After `Bail out!` only the closing comments.
        if self.closed && !matches!(event, Event::RunFinished { .. }) {
            return Ok(());
        }
        match event {
            Event::RunStarted { tests, .. } => {
                self.planned = tests.clone();
                writeln!(self.out, "1..{}", tests.len())?
            }
            Event::AttemptRetry {
                test,
                placement,
                report,
                retry,
                reason,
            } => {
                self.header(test, report)?;
                self.output_block(report)?;
                self.duration_line(report)?;
                // No number: the test's number is given when it finishes.
                let status = if report.outcome == AttemptOutcome::Passed {
                    "ok"
                } else {
                    "not ok"
                };
                writeln!(
                    self.out,
                    "# {status} {} # RETRY {retry} ({})",
                    describe(test, placement),
                    one_line(reason)
                )?;
            }
            Event::TestFinished {
                test,
                placement,
                verdict,
                attempts,
            } => {
                let last = attempts.last();
                let quiet = matches!(verdict, Verdict::Passed | Verdict::Flaky);
                if let Some(report) = last {
                    if quiet {
                        let warnings: Vec<&str> = report
                            .output
                            .lines()
                            .filter(|l| l.starts_with("WARNING:"))
                            .collect();
                        self.comment_block(&warnings.join("\n"))?;
                    } else {
                        self.header(test, report)?;
                        self.output_block(report)?;
                    }
                    self.duration_line(report)?;
                }
                self.next += 1;
                self.finished.insert(test.id);
                let ok = if matches!(verdict, Verdict::Todo { .. }) {
                    false
                } else {
                    verdict.is_success()
                };
                let mut line = format!(
                    "{} {} {}",
                    if ok { "ok" } else { "not ok" },
                    self.next,
                    describe(test, placement)
                );
                if let Some(a) = annotation(verdict, attempts) {
                    line.push_str(" # ");
                    line.push_str(&a);
                }
                writeln!(self.out, "{line}")?;
            }
            Event::RunCancelled { reason } => {
                self.closed = true;
                writeln!(self.out, "Bail out! {}", one_line(reason))?
            }
            Event::KnownIssuePassed { test, issue, path } => writeln!(
                self.out,
                "# known issue #{issue} ({}) names {}, which passed: is the pattern stale?",
                one_line(&path.to_string_lossy()),
                test.name
            )?,
            Event::RunFinished {
                stats,
                wall,
                unmatched_known,
            } => {
                writeln!(self.out)?;
                if !unmatched_known.is_empty() {
                    writeln!(self.out, "# known issues that matched nothing in this run:")?;
                    for k in unmatched_known {
                        writeln!(self.out, "#   {}", one_line(k))?;
                    }
                }
                writeln!(self.out, "{}", summary_line(stats, *wall, &self.host))?;
            }
            Event::MachineReady { .. }
            | Event::MachineFailed { .. }
            | Event::MachineReset { .. }
            | Event::TestStarted { .. }
            | Event::TestOutput { .. }
            | Event::TestRunning { .. }
            | Event::SoakStarted { .. }
            | Event::SoakEvent { .. }
            | Event::TestWaiting { .. } => {}
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn info(name: &str, nd: bool) -> TestInfo {
        TestInfo {
            id: 1,
            name: name.into(),
            file: PathBuf::from("test/verify/check-foo"),
            nondestructive: nd,
            ram_mib: 384,
            os: None,
        }
    }

    fn report(attempt: u32, outcome: AttemptOutcome, output: &str) -> AttemptReport {
        AttemptReport {
            attempt,
            outcome,
            output: output.into(),
            duration: Duration::from_secs(3),
            machines: vec!["nd1".into()],
            artifacts: None,
            known: Default::default(),
            start_ms: None,
            boot: None,
        }
    }

    fn render(events: &[Event]) -> String {
        let mut buf = Vec::new();
        let mut tap = TapReporter::new(&mut buf);
        tap.host = "h".into();
        for e in events {
            tap.report(e).unwrap();
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn retries_are_comments_and_numbers_follow_emission() {
        let a = info("TestA.testOne", true);
        let b = info("TestB.testTwo", false);
        let failed = AttemptOutcome::failed("exit code 1");
        let text = render(&[
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 2,
                tests: vec![a.clone(), b.clone()],
                shard: None,
                rerun: vec![],
                run: None,
            },
            Event::AttemptRetry {
                test: b.clone(),
                placement: Placement::Own,
                report: report(1, failed.clone(), "ok 7 fake\nboom"),
                retry: 1,
                reason: "be robust against unstable tests".into(),
            },
            Event::TestFinished {
                test: a.clone(),
                placement: Placement::Global(1),
                verdict: Verdict::Passed,
                attempts: vec![report(1, AttemptOutcome::Passed, "noise\nWARNING: careful")],
            },
            Event::TestFinished {
                test: b.clone(),
                placement: Placement::Own,
                verdict: Verdict::Flaky,
                attempts: vec![
                    report(1, failed, "boom"),
                    report(2, AttemptOutcome::Passed, ""),
                ],
            },
        ]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "1..2",
                "ok 1 test/verify/check-foo TestA.testOne [ND@1]",
                "ok 2 test/verify/check-foo TestB.testTwo (0.4GB) # flaky: passed on attempt 2",
            ]
        );
        assert!(text.contains("# ok 7 fake\n# boom\n"), "{text}");
        assert!(text.contains(
            "# not ok test/verify/check-foo TestB.testTwo (0.4GB) # RETRY 1 (be robust against unstable tests)"
        ));
        assert!(text.contains("# WARNING: careful\n"));
        assert!(!text.contains("noise"), "passing output is not shown");
        assert!(text.contains("# 1 TEST PASSED [3s on nd1]\nok 1 "));
    }

    #[test]
    fn verdict_annotations() {
        let t = info("TestA.testOne", false);
        let fin = |verdict: Verdict, outcome: AttemptOutcome| {
            let text = render(&[Event::TestFinished {
                test: t.clone(),
                placement: Placement::None,
                verdict,
                attempts: vec![report(1, outcome, "last line")],
            }]);
            text.lines().last().unwrap().to_string()
        };
        let failed = AttemptOutcome::failed("x");
        assert_eq!(
            fin(
                Verdict::Skipped {
                    reason: "no systemd".into()
                },
                AttemptOutcome::Passed
            ),
            "ok 1 test/verify/check-foo TestA.testOne # SKIP no systemd"
        );
        assert_eq!(
            fin(
                Verdict::Todo {
                    reason: "bug 7".into()
                },
                failed.clone()
            ),
            "not ok 1 test/verify/check-foo TestA.testOne # TODO bug 7"
        );
        assert_eq!(
            fin(
                Verdict::UnexpectedPass {
                    reason: "bug 7".into()
                },
                AttemptOutcome::Passed
            ),
            "not ok 1 test/verify/check-foo TestA.testOne # expected failure: bug 7"
        );
        assert_eq!(
            fin(
                Verdict::Failed,
                AttemptOutcome::TimedOut {
                    after: Duration::from_secs(5)
                }
            ),
            "not ok 1 test/verify/check-foo TestA.testOne # TIMEOUT after 5s"
        );
        assert_eq!(
            fin(
                Verdict::Error {
                    message: "boot failed\nmore".into()
                },
                failed
            ),
            "not ok 1 test/verify/check-foo TestA.testOne # ERROR boot failed"
        );
    }

    /// Whatever a test prints stays inside comment lines, for a reader that ends lines at CR
    /// (or VT, FF, NEL, U+2028) as much as for one that ends them at LF; a check file whose
    /// name holds `#` cannot start a directive.
    #[test]
    fn test_output_cannot_forge_results() {
        let mut t = info("TestA.testOne", false);
        t.file = PathBuf::from("test/verify/check-a # SKIP forged");
        let hostile =
            "x\rok 9 forged CR\u{0b}ok 10 forged VT\u{2028}ok 11 forged LS\x1b]0;title\x07";
        let text = render(&[
            Event::AttemptRetry {
                test: t.clone(),
                placement: Placement::Own,
                report: report(1, AttemptOutcome::failed("x"), hostile),
                retry: 1,
                reason: "r\rok 12 forged".into(),
            },
            Event::TestFinished {
                test: t.clone(),
                placement: Placement::Own,
                verdict: Verdict::Error {
                    message: "boom\rok 13 forged".into(),
                },
                attempts: vec![report(1, AttemptOutcome::failed("x"), hostile)],
            },
        ]);
        for line in text.split([
            '\n', '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{2028}', '\u{2029}',
        ]) {
            assert!(
                line.is_empty() || line.starts_with('#') || line.starts_with("not ok 1 "),
                "a line outside the comments: {line:?} in\n{text}"
            );
            assert!(!line.contains('\x1b') && !line.contains('\x07'), "{line:?}");
        }
        assert!(text.contains("\nnot ok 1 test/verify/check-a \\# SKIP forged TestA.testOne (0.4GB) # ERROR boom\n"), "{text}");
    }

    /// The `# 1 TEST …` line tells how the attempt ended: a known issue's attempt failed,
    /// although the test is `ok … # SKIP`.
    #[test]
    fn the_attempt_line_follows_the_attempt_not_the_verdict() {
        let t = info("TestA.testOne", false);
        let failed = AttemptOutcome::failed("x");
        let text = render(&[Event::TestFinished {
            test: t.clone(),
            placement: Placement::Own,
            verdict: Verdict::KnownIssue { issue: 7 },
            attempts: vec![report(1, failed, "oops")],
        }]);
        assert!(
            text.contains("# 1 TEST FAILED [3s on nd1]\nok 1 test/verify/check-foo TestA.testOne (0.4GB) # SKIP Known issue #7\n"),
            "{text}"
        );
        let text = render(&[Event::TestFinished {
            test: t,
            placement: Placement::Own,
            verdict: Verdict::UnexpectedPass {
                reason: "bug".into(),
            },
            attempts: vec![report(1, AttemptOutcome::Passed, "")],
        }]);
        assert!(
            text.contains("# 1 TEST PASSED [3s on nd1]\nnot ok 1 "),
            "{text}"
        );
    }

    #[test]
    fn an_abandoned_stream_still_holds_its_plan() {
        let (a, b) = (info("TestA.one", true), info("TestB.two", true));
        let b = TestInfo { id: 2, ..b };
        let mut buf = Vec::new();
        let mut tap = TapReporter::new(&mut buf);
        tap.report(&Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: vec![a.clone(), b],
            shard: None,
            rerun: vec![],
            run: None,
        })
        .unwrap();
        tap.report(&Event::TestFinished {
            test: a,
            placement: Placement::Global(1),
            verdict: Verdict::Passed,
            attempts: vec![],
        })
        .unwrap();
        tap.abandon("interrupted twice").unwrap();
        tap.abandon("again").unwrap();
        tap.report(&Event::RunCancelled {
            reason: "late".into(),
        })
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "1..2\nok 1 test/verify/check-foo TestA.one [ND@1]\n\
             not ok 2 test/verify/check-foo TestB.two # ERROR interrupted twice\n\
             Bail out! interrupted twice\n"
        );
    }

    /// A test that passed after its machine failed is marked as such, with the cause.
    #[test]
    fn a_pass_after_a_machine_failure_says_so() {
        let t = info("TestA.testOne", false);
        let died = AttemptOutcome::Harness {
            message: "machine1 died: kernel panic: Kernel panic - not syncing: sysrq\nmore".into(),
            host_fault: false,
        };
        let text = render(&[Event::TestFinished {
            test: t,
            placement: Placement::Own,
            verdict: Verdict::Passed,
            attempts: vec![report(1, died, ""), report(2, AttemptOutcome::Passed, "")],
        }]);
        assert!(
            text.ends_with(
                "ok 1 test/verify/check-foo TestA.testOne (0.4GB) # machine failed on attempt 1: \
                 machine1 died: kernel panic: Kernel panic - not syncing: sysrq\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn bail_out_and_summary() {
        let stats = RunStats {
            planned: 3,
            passed: 1,
            failed: 1,
            flaky: 1,
            retries: 2,
            destructive: 2,
            nondestructive: 1,
            ..RunStats::default()
        };
        let text = render(&[
            Event::RunCancelled {
                reason: "interrupted by SIGINT".into(),
            },
            Event::RunFinished {
                stats,
                wall: Duration::from_secs(41),
                unmatched_known: vec!["#7 bots/naughty/busybox/7-x".into()],
            },
        ]);
        assert!(text.starts_with("Bail out! interrupted by SIGINT\n"));
        assert!(text.contains(
            "\n# known issues that matched nothing in this run:\n#   #7 bots/naughty/busybox/7-x\n"
        ));
        assert!(text.ends_with(
            "# 1 TESTS FAILED [41s on h, 2 destructive tests, 1 nondestructive tests, 1 passed, 1 flaky, 1 failed, 2 retries]\n"
        ));
    }
}
