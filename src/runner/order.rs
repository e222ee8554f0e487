//! What runs next, as pure functions of estimated durations ([`crate::planning::estimate`]): the
//! destructive queue longest first, and how many shared machines the waiting
//! nondestructive work is worth. The dispatcher applies them; they hold no state.
//!
//! Longest first is the classic LPT rule: the long tests start while the short ones fill
//! the gaps, instead of one long test starting last and running alone. When the first test
//! waiting does not fit (a multi-machine test while a shared machine holds a CPU), a later
//! one may start if it is expected to end before the first would fit anyway
//! ([`admitted_in`]; "EASY backfilling"), so it uses the gap without delaying the first.
//! Nondestructive tests
//! keep their name order (see [`crate::planning::plan::nondestructive_order`]): it exposes order
//! dependence, and they are short enough to fill gaps wherever they stand.

use super::ledger::{Cost, Ledger};
use std::time::Duration;

/// What a test's place in the destructive queue depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    pub estimate: Duration,
    pub timeout: Duration,
    pub machines: usize,
}

/// Sorts `queue` (indices into `weights`, in plan order) longest first: by estimate, then
/// timeout, then number of machines (all descending), then plan order.
pub fn longest_first(queue: &mut [usize], weights: &[Weight]) {
    queue.sort_by(|&a, &b| {
        let (x, y) = (&weights[a], &weights[b]);
        (y.estimate, y.timeout, y.machines, a).cmp(&(x.estimate, x.timeout, x.machines, b))
    });
}

/// The work that waits, and what could serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    /// Job slots (`-j`).
    pub slots: usize,
    /// Nondestructive tests waiting, and their estimated duration.
    pub nd_tests: usize,
    pub nd_work: Duration,
    /// Estimated duration of the destructive tests waiting.
    pub d_work: Duration,
    /// The boot of a shared machine.
    pub boot: Duration,
}

/// How many shared machines the waiting nondestructive tests should have: their share of
/// the job slots by work (so nondestructive and destructive work end together, instead of
/// all nondestructive tests first), at least one, at most one per test, and no more than
/// pay for their boot: going from k to k+1 machines shortens the nondestructive work
/// by `nd_work/k − nd_work/(k+1)`, which must exceed one boot.
pub fn wanted_globals(w: &Waiting) -> usize {
    if w.nd_tests == 0 || w.slots == 0 {
        return 0;
    }
    let (nd, d) = (w.nd_work.as_secs_f64(), w.d_work.as_secs_f64());
    let share = if nd + d > 0.0 {
        w.slots as f64 * nd / (nd + d)
    } else {
        w.slots as f64
    };
    let most = (share.round() as usize).clamp(1, w.slots.min(w.nd_tests));
    let mut k = 1;
    while k < most && w.boot.as_secs_f64() * ((k * (k + 1)) as f64) < nd {
        k += 1;
    }
    k
}

/// Capacity held by running work (a destructive test, a shared machine), and how long it
/// is expected to hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    pub cost: Cost,
    pub left: Duration,
}

/// How long until `ledger` (holding `holdings`) would admit `cost`, if every holding ends
/// as expected. A ledger admits anything once it is empty, so there is always an answer.
pub fn admitted_in(ledger: &Ledger, holdings: &[Holding], cost: Cost) -> Duration {
    let mut ledger = ledger.clone();
    let mut by_end = holdings.to_vec();
    by_end.sort_by_key(|h| h.left);
    let mut at = Duration::ZERO;
    for h in by_end {
        if ledger.admits(cost) {
            break;
        }
        ledger.release(h.cost);
        at = h.left;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn w(estimate: u64, timeout: u64, machines: usize) -> Weight {
        Weight {
            estimate: s(estimate),
            timeout: s(timeout),
            machines,
        }
    }

    #[test]
    fn longest_first_then_timeout_then_machines_then_plan_order() {
        let weights = [
            w(10, 600, 1), // 0
            w(90, 600, 1), // 1
            w(30, 600, 1), // 2
            w(30, 900, 1), // 3: same estimate, longer timeout
            w(30, 600, 2), // 4: same estimate and timeout, more machines
            w(30, 600, 1), // 5: a tie with 2: plan order
            w(0, 600, 1),  // 6
        ];
        let mut q: Vec<usize> = (0..weights.len()).collect();
        longest_first(&mut q, &weights);
        assert_eq!(q, [1, 3, 4, 2, 5, 0, 6]);
    }

    #[test]
    fn unknown_tests_are_ordered_by_timeout() {
        // Without a history every estimate is the timeout: long timeouts first, then the
        // tests that boot more machines, then plan order.
        let weights = [
            w(600, 600, 1),
            w(3600, 3600, 1),
            w(600, 600, 3),
            w(60, 60, 1),
        ];
        let mut q = vec![0, 1, 2, 3];
        longest_first(&mut q, &weights);
        assert_eq!(q, [1, 2, 0, 3]);
    }

    #[test]
    fn admitted_when_enough_holdings_have_ended() {
        let c = |ram_mib, cpus| Cost { ram_mib, cpus };
        let held = [
            Holding {
                cost: c(400, 1),
                left: s(30),
            },
            Holding {
                cost: c(400, 1),
                left: s(5),
            },
        ];
        let mut l = Ledger::new(c(2000, 2), 2);
        for h in &held {
            l.reserve(h.cost);
        }
        // One CPU frees after 5 s; a two-machine test needs both: after 30 s.
        assert_eq!(admitted_in(&l, &held, c(400, 1)), s(5));
        assert_eq!(admitted_in(&l, &held, c(800, 2)), s(30));
        // Bigger than the host: when everything has ended.
        assert_eq!(admitted_in(&l, &held, c(9000, 8)), s(30));
        l.release(held[1].cost);
        assert_eq!(admitted_in(&l, &held[..1], c(400, 1)), s(0), "fits now");
    }

    fn waiting(slots: usize, nd_tests: usize, nd: u64, d: u64, boot: u64) -> Waiting {
        Waiting {
            slots,
            nd_tests,
            nd_work: s(nd),
            d_work: s(d),
            boot: s(boot),
        }
    }

    #[test]
    fn shared_machines_follow_the_share_of_work() {
        let cases = [
            // (slots, nd tests, nd work, d work, boot) → machines
            (waiting(2, 0, 0, 100, 3), 0),
            (waiting(2, 5, 1, 100, 3), 1), // little nd work: one machine, one slot for d
            (waiting(4, 40, 200, 200, 3), 2), // half the work: half the slots
            (waiting(4, 40, 400, 0, 3), 4), // only nd work left: every slot
            (waiting(4, 3, 400, 0, 3), 3), // at most one per test
            (waiting(4, 40, 5, 0, 3), 1),  // a second machine saves 2.5 s: not a boot
            (waiting(4, 40, 10, 0, 3), 2), // saves 5 s > 3 s; a third saves 1.7 s
            (waiting(4, 40, 20, 0, 3), 3),
            (waiting(4, 40, 60, 0, 3), 4),     // 3·12 = 36 < 60
            (waiting(8, 40, 0, 0, 3), 1),      // nothing known to cost anything
            (waiting(1, 40, 100, 1000, 3), 1), // one slot
            (waiting(2, 1, 1_000, 0, 100), 1), // one test
        ];
        for (w, want) in cases {
            assert_eq!(wanted_globals(&w), want, "{w:?}");
        }
    }
}
