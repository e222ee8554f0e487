//! What happens after an attempt: retry it, or settle the test's verdict. A pure function
//! of the attempt history and the options, in Cockpit's order (reference §4.3) with every
//! retry path bounded:
//!
//! 1. a skip (exit 77) is final;
//! 2. a `todo` test that passed is an unexpected pass (a failure); one that failed is a todo;
//! 3. a pass is final: flaky if an earlier attempt failed;
//! 4. a harness failure (machine, SSH) is retried on a fresh machine up to
//!    [`HARNESS_RETRIES`] times, then final as an error;
//! 5. a failure or timeout is retried up to [`FAILURE_RETRIES`] times unless retries are
//!    off (`--no-retry-fail`, `--sit`), then final.

use crate::events::{AttemptOutcome, Verdict};

/// Retries after a test's own failure: at most 3 runs, as Cockpit.
pub const FAILURE_RETRIES: usize = 2;
/// Retries after machine or harness failures (unbounded in Cockpit; bounded here).
pub const HARNESS_RETRIES: usize = 2;

pub const REASON_UNSTABLE: &str = "be robust against unstable tests";
pub const REASON_HARNESS: &str = "due to failure of test harness or framework";

#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyOptions {
    /// Do not retry the test's own failures.
    pub no_retry_fail: bool,
}

/// The test-level facts policy needs.
#[derive(Debug, Clone, Default)]
pub struct TestFacts {
    pub todo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Retry { reason: String },
    Final(Verdict),
}

/// Decide after the last attempt in `history` (all attempts so far, oldest first).
pub fn decide(history: &[AttemptOutcome], test: &TestFacts, opts: &PolicyOptions) -> Decision {
    let last = history.last().expect("decide needs at least one attempt");
    let earlier = &history[..history.len() - 1];
    let count = |f: fn(&AttemptOutcome) -> bool| history.iter().filter(|o| f(o)).count();
    match last {
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
        AttemptOutcome::Harness { message } => {
            if count(|o| matches!(o, AttemptOutcome::Harness { .. })) <= HARNESS_RETRIES {
                Decision::Retry {
                    reason: REASON_HARNESS.into(),
                }
            } else {
                Decision::Final(Verdict::Error {
                    message: message.clone(),
                })
            }
        }
        AttemptOutcome::Failed { .. } | AttemptOutcome::TimedOut { .. } => {
            if let Some(reason) = &test.todo {
                return Decision::Final(Verdict::Todo {
                    reason: reason.clone(),
                });
            }
            if !opts.no_retry_fail && count(is_failure) <= FAILURE_RETRIES {
                Decision::Retry {
                    reason: REASON_UNSTABLE.into(),
                }
            } else {
                Decision::Final(Verdict::Failed)
            }
        }
    }
}

fn is_failure(o: &AttemptOutcome) -> bool {
    matches!(
        o,
        AttemptOutcome::Failed { .. } | AttemptOutcome::TimedOut { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn failed() -> AttemptOutcome {
        AttemptOutcome::Failed {
            status: "exit code 1".into(),
        }
    }
    fn harness() -> AttemptOutcome {
        AttemptOutcome::Harness {
            message: "ssh lost".into(),
        }
    }
    fn run(history: &[AttemptOutcome], todo: Option<&str>, no_retry: bool) -> Decision {
        decide(
            history,
            &TestFacts {
                todo: todo.map(String::from),
            },
            &PolicyOptions {
                no_retry_fail: no_retry,
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
    fn every_history_is_bounded() {
        // Whatever happens, a test ends within 1 + FAILURE_RETRIES + HARNESS_RETRIES runs.
        let outcomes = [failed(), harness()];
        let mut stack = vec![Vec::new()];
        while let Some(h) = stack.pop() {
            for o in &outcomes {
                let mut next: Vec<AttemptOutcome> = h.clone();
                next.push(o.clone());
                assert!(next.len() <= 1 + FAILURE_RETRIES + HARNESS_RETRIES);
                if let Decision::Retry { .. } = run(&next, None, false) {
                    stack.push(next);
                }
            }
        }
    }
}
