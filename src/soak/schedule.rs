//! When each event of a soak runs: a pure function of the soak and a seed, computed from
//! the start (run k of a periodic event is due at k × interval, never "an interval after
//! the last one ended"), so that nothing drifts over hours and the same seed gives the same
//! schedule. Faults are due at a time drawn within each interval (so that they do not line
//! up with the checks); everything else on the interval's boundaries.

use super::{Action, Soak};
use std::time::Duration;

/// Why an execution is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    Startup,
    Periodic,
    Teardown,
}

/// One due execution of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// From the soak's start.
    pub at: Duration,
    /// Index into `Soak::events`.
    pub event: usize,
    pub why: Why,
}

/// A small deterministic generator (splitmix64): the schedule's only source of chance, so
/// that a seed replays it exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A fraction in [0, 1).
    pub fn fraction(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Every due execution of `soak`'s events, in time order (ties: teardown last, then the
/// order written). Startup runs are due at 0, teardown runs at the duration; periodic run k
/// (from 1) of an event at k × interval, of a fault somewhere in ((k − 1) × interval,
/// k × interval], drawn from `seed`; none at or after the duration.
pub fn schedule(soak: &Soak, seed: u64) -> Vec<Due> {
    let mut rng = Rng::new(seed);
    let mut due = Vec::new();
    for (i, e) in soak.events.iter().enumerate() {
        if e.at_startup {
            due.push(Due {
                at: Duration::ZERO,
                event: i,
                why: Why::Startup,
            });
        }
        if let Some(interval) = e.interval.filter(|d| !d.is_zero()) {
            let fault = matches!(e.action, Action::Fault { .. });
            let mut k: u32 = 1;
            loop {
                let boundary = interval * k;
                let at = if fault {
                    // Within the window before the boundary, never at its start (a
                    // startup run may be there).
                    boundary.saturating_sub(interval.mul_f64(rng.fraction() * 0.9))
                } else {
                    boundary
                };
                if at >= soak.duration {
                    break;
                }
                due.push(Due {
                    at,
                    event: i,
                    why: Why::Periodic,
                });
                k += 1;
            }
        }
        if e.at_teardown {
            due.push(Due {
                at: soak.duration,
                event: i,
                why: Why::Teardown,
            });
        }
    }
    due.sort_by(|a, b| {
        (a.at, a.why == Why::Teardown, a.event).cmp(&(b.at, b.why == Why::Teardown, b.event))
    });
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::{Fault, Overlap, SoakEvent};

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn event(name: &str, interval: Option<u64>, startup: bool, teardown: bool) -> SoakEvent {
        SoakEvent {
            name: name.into(),
            action: Action::Guest {
                machine: "machine1".into(),
                script: "true".into(),
            },
            interval: interval.map(s),
            at_startup: startup,
            at_teardown: teardown,
            timeout: s(600),
            overlap: Overlap::Skip,
            invariant: false,
            line: 1,
        }
    }

    fn soak() -> Soak {
        let mut pause = event("pause", Some(20), false, false);
        pause.action = Action::Fault {
            machine: "machine1".into(),
            fault: Fault::Pause { duration: s(2) },
        };
        Soak {
            duration: s(60),
            keep_going: false,
            events: vec![
                event("setup", None, true, false),
                event("check", Some(10), true, false),
                event("collect", None, false, true),
                pause,
            ],
        }
    }

    #[test]
    fn runs_are_due_from_the_start_without_drift() {
        let due = schedule(&soak(), 7);
        let of = |i: usize| -> Vec<(u64, Why)> {
            due.iter()
                .filter(|d| d.event == i)
                .map(|d| (d.at.as_secs(), d.why))
                .collect()
        };
        assert_eq!(of(0), [(0, Why::Startup)]);
        // duration / interval runs, the startup one included: none at the end.
        assert_eq!(
            of(1),
            [
                (0, Why::Startup),
                (10, Why::Periodic),
                (20, Why::Periodic),
                (30, Why::Periodic),
                (40, Why::Periodic),
                (50, Why::Periodic)
            ]
        );
        assert_eq!(of(2), [(60, Why::Teardown)]);
        // Faults: one per interval window, inside it.
        let faults: Vec<Duration> = due.iter().filter(|d| d.event == 3).map(|d| d.at).collect();
        assert_eq!(faults.len(), 3, "{faults:?}");
        for (k, at) in faults.iter().enumerate() {
            let end = s(20) * (k as u32 + 1);
            assert!(*at > end - s(20) && *at <= end, "{k}: {at:?}");
        }
        // In time order, teardown last.
        assert!(due.windows(2).all(|w| w[0].at <= w[1].at));
        assert_eq!(due.last().unwrap().why, Why::Teardown);
    }

    #[test]
    fn a_seed_replays_its_schedule_and_another_draws_another() {
        let a = schedule(&soak(), 42);
        assert_eq!(a, schedule(&soak(), 42));
        assert_ne!(a, schedule(&soak(), 43));
    }

    #[test]
    fn scaling_shrinks_durations_intervals_and_faults_together() {
        let scaled = soak().scaled(1.0 / 10.0);
        assert_eq!(scaled.duration, s(6));
        assert_eq!(scaled.events[1].interval, Some(Duration::from_secs(1)));
        assert_eq!(scaled.events[1].timeout, s(600));
        match &scaled.events[3].action {
            Action::Fault { fault, .. } => {
                assert_eq!(fault.duration(), Duration::from_millis(200))
            }
            other => panic!("{other:?}"),
        }
        let n = |soak: &Soak| schedule(soak, 1).len();
        assert_eq!(n(&scaled), n(&soak()));
    }
}
