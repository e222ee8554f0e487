//! autopkgtest's own result format for `vmcheck autopkgtest`: one summary line per test
//! (`NAME PASS`, `NAME FAIL non-zero exit status 3`, `NAME SKIP reason`, `NAME FLAKY …`) in
//! the file of `--summary-file`, and the exit code autopkgtest would give the run.

use super::Reporter;
use crate::events::{AttemptOutcome, Event, Verdict};
use std::collections::HashSet;
use std::io::Write;

/// autopkgtest's exit codes (its man page, "EXIT STATUS").
pub mod exit {
    pub const PASSED: i32 = 0;
    /// At least one test was skipped (or failed as `flaky`).
    pub const SKIPPED: i32 = 2;
    /// At least one test failed.
    pub const FAILED: i32 = 4;
    /// No tests, or every test that is not `superficial` was skipped.
    pub const NONE_RAN: i32 = 8;
    /// An erroneous package: its dependencies cannot be installed, its control file is
    /// broken.
    pub const BADPKG: i32 = 12;
    /// The testbed failed (a machine kept failing).
    pub const TESTBED: i32 = 16;
}

/// The result of one test, as autopkgtest words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub name: String,
    pub result: String,
}

impl Line {
    /// `'%-20s %s'`, as autopkgtest writes it.
    pub fn render(&self) -> String {
        format!("{:<20} {}", self.name, self.result)
    }
}

/// Collects the run's results; `lines` and `exit_code` once it is over.
#[derive(Debug, Default)]
pub struct Summary {
    /// Tests whose `superficial` passes do not count as having run something.
    superficial: HashSet<String>,
    pub lines: Vec<Line>,
    failed: bool,
    badpkg: bool,
    skipped: bool,
    testbed: bool,
    /// A test that is not superficial passed or failed (ran).
    substantial_ran: bool,
}

impl Summary {
    pub fn new(superficial: HashSet<String>) -> Summary {
        Summary {
            superficial,
            ..Summary::default()
        }
    }

    /// Take one test's verdict (and its last attempt, which says how it failed).
    pub fn record(&mut self, name: &str, verdict: &Verdict, last: Option<&AttemptOutcome>) {
        let result = match verdict {
            Verdict::Passed | Verdict::Flaky if self.superficial.contains(name) => {
                "PASS (superficial)".to_owned()
            }
            Verdict::Passed | Verdict::Flaky => "PASS".to_owned(),
            Verdict::Skipped { reason } => match reason.strip_prefix("FLAKY ") {
                Some(rest) => format!("FLAKY {rest}"),
                None => format!("SKIP {reason}"),
            },
            Verdict::KnownIssue { issue } => format!("SKIP Known issue #{issue}"),
            Verdict::Error { message } => format!("FAIL testbed failure: {message}"),
            Verdict::Failed
            | Verdict::KnownElsewhere { .. }
            | Verdict::Todo { .. }
            | Verdict::UnexpectedPass { .. } => format!(
                "FAIL {}",
                match last {
                    Some(AttemptOutcome::Failed { status, .. }) => status.clone(),
                    Some(AttemptOutcome::TimedOut { .. }) => "timed out".into(),
                    Some(AttemptOutcome::UnexpectedMessages { .. }) => {
                        "unexpected journal messages".into()
                    }
                    Some(AttemptOutcome::Harness { message, .. }) => message.clone(),
                    _ => "failed".into(),
                }
            ),
        };
        let word = result.split(' ').next().unwrap_or_default();
        match word {
            "PASS" => self.substantial_ran |= !self.superficial.contains(name),
            "SKIP" | "FLAKY" => self.skipped = true,
            _ if matches!(verdict, Verdict::Error { .. }) => self.testbed = true,
            _ if result.starts_with("FAIL badpkg") => self.badpkg = true,
            _ => {
                self.failed = true;
                self.substantial_ran |= !self.superficial.contains(name);
            }
        }
        self.lines.push(Line {
            name: name.to_owned(),
            result: crate::reporter::text::one_line(&result),
        });
    }

    /// autopkgtest's exit code for the results so far.
    pub fn exit_code(&self) -> i32 {
        if self.testbed {
            return exit::TESTBED;
        }
        let mut code = if self.badpkg {
            exit::BADPKG
        } else if self.failed {
            exit::FAILED
        } else if !self.substantial_ran {
            return exit::NONE_RAN;
        } else {
            exit::PASSED
        };
        if self.skipped {
            code |= exit::SKIPPED;
        }
        code
    }
}

/// The reporter: records every finished test and writes the summary file when the run ends.
pub struct SummaryReporter {
    pub summary: std::sync::Arc<std::sync::Mutex<Summary>>,
    pub file: Option<super::file::ReportFile>,
}

impl Reporter for SummaryReporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::TestFinished {
                test,
                verdict,
                attempts,
                ..
            } => {
                let last = attempts.last().map(|a| &a.outcome);
                self.summary
                    .lock()
                    .expect("poisoned")
                    .record(&test.name, verdict, last);
            }
            Event::RunFinished { .. } => {
                if let Some(mut file) = self.file.take() {
                    let text: String = (self.summary.lock().expect("poisoned").lines.iter())
                        .map(|l| l.render() + "\n")
                        .collect();
                    file.write_all(text.as_bytes())?;
                    // Puts the whole file in place.
                    file.flush()?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: &str) -> AttemptOutcome {
        AttemptOutcome::failed(status)
    }

    fn skipped(reason: &str) -> Verdict {
        Verdict::Skipped {
            reason: reason.into(),
        }
    }

    #[test]
    fn lines_and_exit_codes_as_autopkgtest_gives_them() {
        let mut s = Summary::new(HashSet::from(["hello/command1".to_string()]));
        assert_eq!(s.exit_code(), exit::NONE_RAN, "no tests");
        s.record("hello/command1", &Verdict::Passed, None);
        assert_eq!(
            s.exit_code(),
            exit::NONE_RAN,
            "only a superficial test passed"
        );
        s.record("hello/smoke", &Verdict::Passed, None);
        assert_eq!(s.exit_code(), exit::PASSED);
        s.record("hello/net", &skipped("Test needs needs-internet"), None);
        assert_eq!(s.exit_code(), 2);
        s.record(
            "hello/bad",
            &Verdict::Failed,
            Some(&failed("non-zero exit status 3")),
        );
        assert_eq!(s.exit_code(), 6);
        s.record("hello/flaky", &skipped("FLAKY stderr: warning"), None);
        s.record(
            "hello/deps",
            &Verdict::Failed,
            Some(&failed(
                "badpkg: the test dependencies cannot be installed: frob",
            )),
        );
        assert_eq!(s.exit_code(), 14);
        let rendered: Vec<String> = s.lines.iter().map(Line::render).collect();
        assert_eq!(
            rendered,
            [
                "hello/command1       PASS (superficial)",
                "hello/smoke          PASS",
                "hello/net            SKIP Test needs needs-internet",
                "hello/bad            FAIL non-zero exit status 3",
                "hello/flaky          FLAKY stderr: warning",
                "hello/deps           FAIL badpkg: the test dependencies cannot be installed: frob",
            ]
        );
        s.record(
            "hello/boom",
            &Verdict::Error {
                message: "qemu was killed".into(),
            },
            None,
        );
        assert_eq!(s.exit_code(), exit::TESTBED);
    }

    #[test]
    fn all_skipped_is_none_ran() {
        let mut s = Summary::new(HashSet::new());
        s.record("a/b", &skipped("x"), None);
        assert_eq!(s.exit_code(), exit::NONE_RAN);
    }
}
