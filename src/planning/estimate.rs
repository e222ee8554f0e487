//! Estimated durations of planned tests: what the scheduler orders by and `--shard` balances
//! by. A pure function of the plan and the recorded durations
//! ([`crate::results::durations`]).
//!
//! A recorded test is estimated by the median of its recent attempts. A test without a
//! record is guessed as the median of the recorded tests of its kind (nondestructive or
//! destructive) in this plan, at most its timeout; with no such record at all, as its
//! timeout (the only bound known). A test that the plan skips (TEST_OS) costs nothing.
//! The boot of a shared machine is estimated from recorded boots of the origin the run is
//! likely to get (a restore from a snapshot, or a cold boot; see [`Durations::boot`]), else
//! [`DEFAULT_BOOT`].

use crate::planning::plan::TestPlan;
use crate::results::durations::{Durations, median};
use std::collections::HashMap;
use std::time::Duration;

/// The boot of a shared machine when none was recorded (a TCG boot of a small image takes
/// 3 s, of a full distribution 12 s, on a 2-core host).
pub const DEFAULT_BOOT: Duration = Duration::from_secs(10);

/// One test's estimated duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    pub duration: Duration,
    /// Whether it comes from the test's own record (else it is a guess).
    pub recorded: bool,
}

/// Estimates of every test of a plan, by `TestClass.testMethod`, and of a shared boot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Estimates {
    tests: HashMap<String, Estimate>,
    /// The boot of one shared (nondestructive) machine.
    pub boot: Duration,
}

impl Estimates {
    /// The estimate of test `name` (zero for a test that is not in the plan).
    pub fn of(&self, name: &str) -> Estimate {
        self.tests.get(name).copied().unwrap_or(Estimate {
            duration: Duration::ZERO,
            recorded: false,
        })
    }

    /// The estimated duration of test `name`.
    pub fn duration(&self, name: &str) -> Duration {
        self.of(name).duration
    }

    /// How many of the plan's tests have a record.
    pub fn recorded(&self) -> usize {
        self.tests.values().filter(|e| e.recorded).count()
    }
}

/// Estimate every test of `plan` from `history` (the durations recorded on its TEST_OS);
/// `cold_boot`: shared machines boot cold (`--cold-boot`) rather than restore a snapshot.
pub fn estimate(plan: &TestPlan, history: &Durations, cold_boot: bool) -> Estimates {
    let recorded = |nd: bool| -> Vec<Duration> {
        plan.tests
            .iter()
            .filter(|t| t.def.nondestructive == nd && t.skip_reason.is_none())
            .filter_map(|t| history.test(&t.def.case_name()))
            .collect()
    };
    let typical = [median(&recorded(false)), median(&recorded(true))];
    let tests = plan
        .tests
        .iter()
        .map(|t| {
            let name = t.def.name();
            let estimate = match (&t.skip_reason, history.test(&t.def.case_name())) {
                (Some(_), _) => Estimate {
                    duration: Duration::ZERO,
                    recorded: true,
                },
                (None, Some(d)) => Estimate {
                    duration: d,
                    recorded: true,
                },
                (None, None) => Estimate {
                    duration: typical[usize::from(t.def.nondestructive)]
                        .map_or(t.def.timeout, |d| d.min(t.def.timeout)),
                    recorded: false,
                },
            };
            (name, estimate)
        })
        .collect();
    Estimates {
        tests,
        boot: history.boot(cold_boot).unwrap_or(DEFAULT_BOOT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkfile::TestDef;
    use crate::planning::plan::{PlanOptions, plan};

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn test(name: &str, nondestructive: bool, timeout: u64) -> TestDef {
        TestDef {
            nondestructive,
            timeout: s(timeout),
            ..TestDef::sample("check-a", name)
        }
    }

    fn history(tests: &[(&str, u64)], boots: &[u64]) -> Durations {
        Durations {
            tests: tests
                .iter()
                .map(|(n, d)| (n.to_string(), vec![s(*d)]))
                .collect(),
            boot: boots.iter().map(|d| s(*d)).collect(),
            restore: Vec::new(),
        }
    }

    fn opts() -> PlanOptions {
        PlanOptions {
            test_os: "os".into(),
            ..Default::default()
        }
    }

    #[test]
    fn recorded_guessed_and_skipped() {
        let mut skipped = test("T.skipped", false, 600);
        skipped.only = vec![crate::checkfile::OsCondition {
            os: vec!["other".into()],
            reason: "no".into(),
        }];
        let p = plan(
            vec![
                test("T.d1", false, 600),
                test("T.d2", false, 600),
                test("T.d3", false, 600),
                test("T.dNew", false, 600),
                test("T.dNewShort", false, 20),
                test("T.nd1", true, 600),
                test("T.ndNew", true, 600),
                skipped,
            ],
            &opts(),
        );
        let h = history(
            &[
                ("T.d1", 10),
                ("T.d2", 30),
                ("T.d3", 200),
                ("T.nd1", 2),
                ("T.skipped", 50),
            ],
            &[4],
        );
        let e = estimate(&p, &h, false);
        let got = |n: &str| (e.of(n).duration, e.of(n).recorded);
        assert_eq!(got("T.d3"), (s(200), true));
        assert_eq!(
            got("T.dNew"),
            (s(30), false),
            "median of recorded destructive"
        );
        assert_eq!(got("T.dNewShort"), (s(20), false), "at most its timeout");
        assert_eq!(
            got("T.ndNew"),
            (s(2), false),
            "median of recorded nondestructive"
        );
        assert_eq!(got("T.skipped"), (s(0), true), "never runs");
        assert_eq!(got("T.notPlanned"), (s(0), false));
        assert_eq!(e.boot, s(4));
        assert_eq!(e.recorded(), 5);
    }

    #[test]
    fn without_any_record_the_timeout_is_the_estimate() {
        let p = plan(
            vec![test("T.a", false, 600), test("T.b", true, 90)],
            &opts(),
        );
        let e = estimate(&p, &Durations::default(), false);
        assert_eq!(e.duration("T.a"), s(600));
        assert_eq!(e.duration("T.b"), s(90));
        assert_eq!(e.boot, DEFAULT_BOOT);
        assert_eq!(e.recorded(), 0);
    }
}
