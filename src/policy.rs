//! What happens after an attempt: retry it, or settle the test's verdict. A pure function
//! of the attempt history, the known-issue matches of the last attempt and the options, in
//! Cockpit's order (reference §4.3) with every retry path bounded:
//!
//! 1. an affected test that passed runs again until it passed [`AFFECTED_RUNS`] times;
//! 2. a skip (exit 77) is final;
//! 3. a `todo` test that passed is an unexpected pass (a failure); one that failed is a todo;
//! 4. a pass is final: flaky if an earlier attempt failed;
//! 5. a failure whose output matches a known issue of this OS is final as that known issue;
//!    one matching only another OS's is a final failure with a note;
//! 6. a harness failure (machine, SSH) is retried on a fresh machine up to
//!    [`HARNESS_RETRIES`] times, then final as an error; one the host caused (its disk is
//!    full) is final at once, as a retry on the same host would fail the same way;
//! 7. unexpected journal messages and failures of affected tests are final;
//! 8. any other failure or timeout is retried up to [`FAILURE_RETRIES`] times unless retries
//!    are off (`--no-retry-fail`, `--sit`), then final.

pub use crate::events::KnownIssues as Known;
use crate::events::{AttemptOutcome, Verdict};

/// Retries after a test's own failure: at most 3 runs, as Cockpit.
pub const FAILURE_RETRIES: usize = 2;
/// Retries after machine or harness failures (unbounded in Cockpit; bounded here).
pub const HARNESS_RETRIES: usize = 2;
/// How often an affected test must pass.
pub const AFFECTED_RUNS: usize = 3;

pub const REASON_UNSTABLE: &str = "be robust against unstable tests";
pub const REASON_HARNESS: &str = "due to failure of test harness or framework";
pub const REASON_AFFECTED: &str = "test affected tests 3 times";

#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyOptions {
    /// Do not retry the test's own failures.
    pub no_retry_fail: bool,
    /// A repeated test's runs stop at its first failure (`--until-fail`, `--stress-below`):
    /// those not started yet are skipped.
    pub until_fail: bool,
}

/// The test-level facts policy needs.
#[derive(Debug, Clone, Default)]
pub struct TestFacts {
    pub todo: Option<String>,
    /// Affected by the change under test (and not opted out with `no_retry_when_changed`).
    pub affected: bool,
    /// Its own failures are final (a soak: hours are not retried, and its failure is
    /// evidence, not noise).
    pub no_retry_fail: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { reason: String },
    Final(Verdict),
}

/// Decide after the last attempt in `history` (all attempts so far, oldest first).
pub fn decide(
    history: &[AttemptOutcome],
    known: &Known,
    test: &TestFacts,
    opts: &PolicyOptions,
) -> Decision {
    let last = history.last().expect("decide needs at least one attempt");
    let earlier = &history[..history.len() - 1];
    let count = |f: fn(&AttemptOutcome) -> bool| history.iter().filter(|o| f(o)).count();
    let retry = |reason: &str| Decision::Retry {
        reason: reason.into(),
    };
    match last {
        AttemptOutcome::Passed
            if test.affected
                && test.todo.is_none()
                && count(|o| *o == AttemptOutcome::Passed) < AFFECTED_RUNS =>
        {
            retry(REASON_AFFECTED)
        }
        AttemptOutcome::Skipped { reason } => Decision::Final(Verdict::Skipped {
            reason: reason.clone(),
        }),
        AttemptOutcome::Passed => match &test.todo {
            Some(reason) => Decision::Final(Verdict::UnexpectedPass {
                reason: reason.clone(),
            }),
            None if earlier.iter().any(is_failure) => Decision::Final(Verdict::Flaky),
            None => Decision::Final(Verdict::Passed),
        },
        failure => {
            if let Some(reason) = &test.todo
                && !matches!(failure, AttemptOutcome::Harness { .. })
            {
                return Decision::Final(Verdict::Todo {
                    reason: reason.clone(),
                });
            }
            if let Some(issue) = known.own.first() {
                return Decision::Final(Verdict::KnownIssue { issue: *issue });
            }
            if let Some((issue, os)) = known.other.first() {
                return Decision::Final(Verdict::KnownElsewhere {
                    issue: *issue,
                    os: os.clone(),
                });
            }
            match failure {
                AttemptOutcome::Harness {
                    message,
                    host_fault,
                } => {
                    if !host_fault
                        && count(|o| matches!(o, AttemptOutcome::Harness { .. })) <= HARNESS_RETRIES
                    {
                        retry(REASON_HARNESS)
                    } else {
                        Decision::Final(Verdict::Error {
                            message: message.clone(),
                        })
                    }
                }
                AttemptOutcome::UnexpectedMessages { .. }
                | AttemptOutcome::Failed {
                    final_because: Some(_),
                    ..
                } => Decision::Final(Verdict::Failed),
                _ if test.affected => Decision::Final(Verdict::Failed),
                _ if !opts.no_retry_fail
                    && !test.no_retry_fail
                    && count(is_failure) <= FAILURE_RETRIES =>
                {
                    retry(REASON_UNSTABLE)
                }
                _ => Decision::Final(Verdict::Failed),
            }
        }
    }
}

fn is_failure(o: &AttemptOutcome) -> bool {
    matches!(
        o,
        AttemptOutcome::Failed { .. }
            | AttemptOutcome::TimedOut { .. }
            | AttemptOutcome::UnexpectedMessages { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failed() -> AttemptOutcome {
        AttemptOutcome::failed("exit code 1")
    }
    fn harness() -> AttemptOutcome {
        AttemptOutcome::Harness {
            message: "ssh lost".into(),
            host_fault: false,
        }
    }
    fn facts(todo: Option<&str>, affected: bool) -> TestFacts {
        TestFacts {
            todo: todo.map(String::from),
            affected,
            no_retry_fail: false,
        }
    }

    #[test]
    fn a_failure_the_test_calls_final_is_not_retried() {
        let pixels = AttemptOutcome::Failed {
            status: "test: exit status: 1".into(),
            final_because: Some("pixel test failed".into()),
        };
        assert_eq!(
            decide(
                &[pixels],
                &Known::default(),
                &TestFacts::default(),
                &PolicyOptions::default()
            ),
            Decision::Final(Verdict::Failed)
        );
        assert!(matches!(
            decide(
                &[failed()],
                &Known::default(),
                &TestFacts::default(),
                &PolicyOptions::default()
            ),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn a_soak_failure_is_final_but_a_harness_failure_is_retried() {
        let soak = TestFacts {
            no_retry_fail: true,
            ..TestFacts::default()
        };
        let opts = PolicyOptions::default();
        let fail = AttemptOutcome::failed("soak event check #3 failed");
        assert_eq!(
            decide(&[fail], &Known::default(), &soak, &opts),
            Decision::Final(Verdict::Failed)
        );
        assert!(matches!(
            decide(&[harness()], &Known::default(), &soak, &opts),
            Decision::Retry { .. }
        ));
    }
    fn run(history: &[AttemptOutcome], todo: Option<&str>, no_retry: bool) -> Decision {
        decide(
            history,
            &Known::default(),
            &facts(todo, false),
            &PolicyOptions {
                no_retry_fail: no_retry,
                ..Default::default()
            },
        )
    }
    fn retry(reason: &str) -> Decision {
        Decision::Retry {
            reason: reason.into(),
        }
    }

    #[test]
    fn passes_skips_and_flakes() {
        use AttemptOutcome::*;
        assert_eq!(
            run(&[Passed], None, false),
            Decision::Final(Verdict::Passed)
        );
        assert_eq!(
            run(&[failed(), Passed], None, false),
            Decision::Final(Verdict::Flaky)
        );
        assert_eq!(
            run(&[harness(), Passed], None, false),
            Decision::Final(Verdict::Passed),
            "a harness failure says nothing about the test"
        );
        let skip = Skipped {
            reason: "no".into(),
        };
        assert_eq!(
            run(&[skip], None, false),
            Decision::Final(Verdict::Skipped {
                reason: "no".into()
            })
        );
    }

    #[test]
    fn failures_retry_twice_then_fail() {
        let t = AttemptOutcome::TimedOut {
            after: Duration::from_secs(1),
        };
        assert_eq!(run(&[failed()], None, false), retry(REASON_UNSTABLE));
        assert_eq!(
            run(&[failed(), t.clone()], None, false),
            retry(REASON_UNSTABLE)
        );
        assert_eq!(
            run(&[failed(), t, failed()], None, false),
            Decision::Final(Verdict::Failed)
        );
        assert_eq!(
            run(&[failed()], None, true),
            Decision::Final(Verdict::Failed)
        );
    }

    #[test]
    fn harness_failures_are_bounded_and_ignore_no_retry() {
        assert_eq!(run(&[harness()], None, true), retry(REASON_HARNESS));
        assert_eq!(
            run(&[harness(), harness()], None, false),
            retry(REASON_HARNESS)
        );
        assert!(matches!(
            run(&[harness(), harness(), harness()], None, false),
            Decision::Final(Verdict::Error { .. })
        ));
    }

    #[test]
    fn a_host_fault_is_not_retried_onto_the_same_host() {
        let full = AttemptOutcome::Harness {
            message: "machine m: the host's disk is full: no space left for /tmp/x".into(),
            host_fault: true,
        };
        assert_eq!(
            run(std::slice::from_ref(&full), None, false),
            Decision::Final(Verdict::Error {
                message: "machine m: the host's disk is full: no space left for /tmp/x".into()
            })
        );
        assert_eq!(
            run(&[harness(), full.clone()], None, false),
            Decision::Final(Verdict::Error {
                message: "machine m: the host's disk is full: no space left for /tmp/x".into()
            })
        );
    }

    #[test]
    fn todo() {
        assert_eq!(
            run(&[failed()], Some("bug 1"), false),
            Decision::Final(Verdict::Todo {
                reason: "bug 1".into()
            })
        );
        assert_eq!(
            run(&[AttemptOutcome::Passed], Some("bug 1"), false),
            Decision::Final(Verdict::UnexpectedPass {
                reason: "bug 1".into()
            })
        );
    }

    #[test]
    fn affected_tests_pass_three_times_and_fail_at_once() {
        let opts = PolicyOptions::default();
        let aff = facts(None, true);
        let none = Known::default();
        let p = AttemptOutcome::Passed;
        assert_eq!(
            decide(std::slice::from_ref(&p), &none, &aff, &opts),
            retry(REASON_AFFECTED)
        );
        assert_eq!(
            decide(&[p.clone(), p.clone()], &none, &aff, &opts),
            retry(REASON_AFFECTED)
        );
        assert_eq!(
            decide(&[p.clone(), p.clone(), p.clone()], &none, &aff, &opts),
            Decision::Final(Verdict::Passed)
        );
        assert_eq!(
            decide(&[p.clone(), failed()], &none, &aff, &opts),
            Decision::Final(Verdict::Failed),
            "a failing affected test is not retried"
        );
        assert_eq!(
            decide(&[harness()], &none, &aff, &opts),
            retry(REASON_HARNESS)
        );
    }

    #[test]
    fn known_issues_and_unexpected_messages_are_final() {
        let opts = PolicyOptions::default();
        let f = facts(None, false);
        let own = Known {
            own: vec![12, 40],
            other: vec![(7, "fedora".into())],
        };
        assert_eq!(
            decide(&[failed()], &own, &f, &opts),
            Decision::Final(Verdict::KnownIssue { issue: 12 })
        );
        let other = Known {
            own: vec![],
            other: vec![(7, "fedora".into())],
        };
        assert_eq!(
            decide(&[failed()], &other, &f, &opts),
            Decision::Final(Verdict::KnownElsewhere {
                issue: 7,
                os: "fedora".into()
            })
        );
        let msgs = AttemptOutcome::UnexpectedMessages {
            lines: vec!["BUG: x".into()],
        };
        assert_eq!(
            decide(&[msgs], &Known::default(), &f, &opts),
            Decision::Final(Verdict::Failed)
        );
    }

    #[test]
    fn every_history_is_bounded() {
        // Whatever happens, a test ends within 3 + FAILURE_RETRIES + HARNESS_RETRIES runs.
        let outcomes = [failed(), harness(), AttemptOutcome::Passed];
        for affected in [false, true] {
            let mut stack = vec![Vec::new()];
            while let Some(h) = stack.pop() {
                for o in &outcomes {
                    let mut next: Vec<AttemptOutcome> = h.clone();
                    next.push(o.clone());
                    assert!(next.len() <= AFFECTED_RUNS + FAILURE_RETRIES + HARNESS_RETRIES);
                    let d = decide(
                        &next,
                        &Known::default(),
                        &facts(None, affected),
                        &PolicyOptions::default(),
                    );
                    if let Decision::Retry { .. } = d {
                        stack.push(next);
                    }
                }
            }
        }
    }
}
