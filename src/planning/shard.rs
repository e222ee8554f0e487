//! `--shard K/N`: split the selected tests into N shards of about equal estimated duration
//! and keep shard K, so N CI jobs run one suite in parallel. Applied to the plan after
//! filtering; the result is again a [`TestPlan`] (renumbered from 1).
//!
//! The split is LPT (longest processing time first): tests by estimated duration, longest
//! first (ties by name), each to the shard whose total it raises least (ties: fewer tests,
//! then the lower shard). A shard's first nondestructive test also pays the boot of a shared
//! machine, so nondestructive tests gather where a machine is booted anyway. The split is a
//! pure function of the test names and estimates: every job computes the same one when it
//! reads the same history, and every test lands in exactly one shard.

use crate::planning::estimate::Estimates;
use crate::planning::plan::{ExcludeReason, Excluded, PlannedTest, TestPlan};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Shard `index` of `total`, counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N` with 1 ≤ K ≤ N. The error is one line for `--shard`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let usage = || format!("--shard {s}: expected K/N, shard K of N counted from 1 (e.g. 1/3)");
        let (k, n) = s.trim().split_once('/').ok_or_else(usage)?;
        let (Ok(index), Ok(total)) = (k.trim().parse::<usize>(), n.trim().parse::<usize>()) else {
            return Err(usage());
        };
        if total == 0 {
            return Err(format!("--shard {s}: N must be at least 1"));
        }
        if index == 0 || index > total {
            return Err(format!("--shard {s}: K must be from 1 to {total}"));
        }
        Ok(Shard { index, total })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

/// A test as the split sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub name: &'a str,
    pub estimate: Duration,
    pub nondestructive: bool,
}

/// The shard (0-based) of each item, in the items' order, and each shard's estimated total
/// (the shared boot included).
pub fn assign(items: &[Item], shards: usize, boot: Duration) -> (Vec<usize>, Vec<Duration>) {
    let shards = shards.max(1);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        (items[b].estimate, items[a].name).cmp(&(items[a].estimate, items[b].name))
    });
    let mut load = vec![Duration::ZERO; shards];
    let mut count = vec![0usize; shards];
    let mut booted = vec![false; shards];
    let mut result = vec![0; items.len()];
    for i in order {
        let item = &items[i];
        let after = |s: usize| {
            let boot = if item.nondestructive && !booted[s] {
                boot
            } else {
                Duration::ZERO
            };
            load[s] + item.estimate + boot
        };
        let s = (0..shards)
            .min_by_key(|&s| (after(s), count[s], s))
            .expect("at least one shard");
        load[s] = after(s);
        count[s] += 1;
        booted[s] |= item.nondestructive;
        result[i] = s;
    }
    (result, load)
}

/// What `--shard` kept.
#[derive(Debug, Clone)]
pub struct Selection {
    pub plan: TestPlan,
    /// Tests selected before the split.
    pub selected: usize,
    /// This shard's estimated total, and the largest of all shards.
    pub estimate: Duration,
    pub largest: Duration,
    /// A short hash of the split's inputs (names, estimates, kinds, shard count): jobs that
    /// print the same one split the same way.
    pub fingerprint: String,
}

/// Keep `shard`'s part of `plan`, renumbered from 1; the other tests move to `excluded`.
pub fn select(plan: TestPlan, estimates: &Estimates, shard: Shard) -> Selection {
    let names: Vec<String> = plan.tests.iter().map(|t| t.def.name()).collect();
    let items: Vec<Item> = plan
        .tests
        .iter()
        .zip(&names)
        .map(|(t, name)| Item {
            name,
            estimate: estimates.duration(name),
            nondestructive: t.def.nondestructive,
        })
        .collect();
    let (of, loads) = assign(&items, shard.total, estimates.boot);
    let fingerprint = fingerprint(&items, shard.total, estimates.boot);
    let selected = plan.tests.len();
    let mut kept = TestPlan {
        tests: Vec::new(),
        ..plan
    };
    for ((t, s), name) in plan.tests.into_iter().zip(of).zip(names) {
        if s + 1 == shard.index {
            kept.tests.push(PlannedTest {
                id: kept.tests.len() + 1,
                ..t
            });
        } else {
            kept.excluded.push(Excluded {
                name,
                file: t.def.file.clone(),
                reason: ExcludeReason::OtherShard,
            });
        }
    }
    Selection {
        plan: kept,
        selected,
        estimate: loads[shard.index - 1],
        largest: loads.iter().copied().max().unwrap_or_default(),
        fingerprint,
    }
}

fn fingerprint(items: &[Item], shards: usize, boot: Duration) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(format!("{shards} {}\n", boot.as_millis()));
    let mut sorted: Vec<&Item> = items.iter().collect();
    sorted.sort_by_key(|i| i.name);
    for i in sorted {
        h.update(format!(
            "{} {} {}\n",
            i.name,
            i.estimate.as_millis(),
            i.nondestructive
        ));
    }
    hex::encode(h.finalize())[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        for (spec, needle) in [
            ("0/3", "K must be from 1 to 3"),
            ("4/3", "K must be from 1 to 3"),
            ("1/0", "N must be at least 1"),
            ("x", "expected K/N"),
            ("1/", "expected K/N"),
            ("-1/3", "expected K/N"),
            ("1/3/5", "expected K/N"),
            ("", "expected K/N"),
        ] {
            let e = spec.parse::<Shard>().unwrap_err();
            assert!(e.starts_with(&format!("--shard {spec}: ")), "{e}");
            assert!(e.contains(needle), "{spec}: {e}");
            assert_eq!(e.lines().count(), 1);
        }
        assert_eq!(" 2/3 ".parse::<Shard>(), Ok(Shard { index: 2, total: 3 }));
        assert_eq!("1/1".parse::<Shard>().unwrap().to_string(), "1/1");
    }

    /// A deterministic pseudo-random suite: a heavy tail of durations, some nondestructive.
    fn suite(n: usize, seed: u64) -> Vec<(String, Duration, bool)> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % 1000;
                let d = if r < 50 {
                    60_000 + r * 500
                } else {
                    500 + r * 20
                };
                (format!("TestS.test{i:04}"), ms(d), r.is_multiple_of(3))
            })
            .collect()
    }

    fn items(s: &[(String, Duration, bool)]) -> Vec<Item<'_>> {
        s.iter()
            .map(|(n, d, nd)| Item {
                name: n,
                estimate: *d,
                nondestructive: *nd,
            })
            .collect()
    }

    #[test]
    fn every_test_in_exactly_one_shard_and_shards_balanced() {
        for (n, shards, seed) in [(1, 3, 1), (7, 3, 2), (200, 4, 3), (1000, 7, 4), (50, 50, 5)] {
            let s = suite(n, seed);
            let (of, loads) = assign(&items(&s), shards, ms(3000));
            assert_eq!(of.len(), n);
            assert!(of.iter().all(|&k| k < shards));
            // Totals are each shard's tests plus one boot if it has nondestructive ones.
            for (k, load) in loads.iter().enumerate() {
                let mine: Vec<_> = s.iter().zip(&of).filter(|(_, o)| **o == k).collect();
                let boot = if mine.iter().any(|(t, _)| t.2) {
                    ms(3000)
                } else {
                    ms(0)
                };
                assert_eq!(
                    *load,
                    mine.iter().map(|(t, _)| t.1).sum::<Duration>() + boot
                );
            }
            // LPT's bound: no shard exceeds the mean by more than the longest test (and a
            // boot).
            let total: Duration = loads.iter().sum();
            let longest = s.iter().map(|t| t.1).max().unwrap();
            let max = *loads.iter().max().unwrap();
            assert!(
                max <= total / shards as u32 + longest + ms(3000),
                "{n}/{shards}: {loads:?}"
            );
        }
    }

    #[test]
    fn the_split_is_deterministic_and_independent_of_input_order() {
        let s = suite(300, 9);
        let (a, _) = assign(&items(&s), 5, ms(2000));
        let mut rev = s.clone();
        rev.reverse();
        let (b, _) = assign(&items(&rev), 5, ms(2000));
        let by_name = |s: &[(String, Duration, bool)], of: &[usize]| {
            let mut v: Vec<(String, usize)> =
                s.iter().zip(of).map(|(t, o)| (t.0.clone(), *o)).collect();
            v.sort();
            v
        };
        assert_eq!(by_name(&s, &a), by_name(&rev, &b));
        assert_eq!(assign(&items(&s), 5, ms(2000)).0, a);
    }

    #[test]
    fn longest_first_balances_what_round_robin_does_not() {
        let s: Vec<(String, Duration, bool)> = [8, 7, 6, 5, 4, 3, 2, 1]
            .iter()
            .map(|d| (format!("T.t{d}"), ms(d * 1000), false))
            .collect();
        let (of, loads) = assign(&items(&s), 2, ms(0));
        assert_eq!(loads, [ms(18_000), ms(18_000)]);
        assert_eq!(of, [0, 1, 1, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn nondestructive_tests_share_the_boot_they_pay_for() {
        // Four 1 s nondestructive tests, destructive ones of 30 s and 20 s, boot 10 s: the
        // nondestructive tests gather on the shorter shard, which pays one boot.
        let mut s: Vec<(String, Duration, bool)> = (1..=4)
            .map(|i| (format!("T.nd{i}"), ms(1000), true))
            .collect();
        s.push(("T.d1".into(), ms(30_000), false));
        s.push(("T.d2".into(), ms(20_000), false));
        let (of, loads) = assign(&items(&s), 2, ms(10_000));
        assert_eq!(of, [1, 1, 1, 1, 0, 1]);
        assert_eq!(loads, [ms(30_000), ms(34_000)]);
        // With equal destructive halves, a second boot balances better than one: 2 × 17 s
        // rather than 19 s and 15 s.
        s[4].1 = ms(5000);
        s[5].1 = ms(5000);
        let (_, loads) = assign(&items(&s), 2, ms(10_000));
        assert_eq!(loads, [ms(17_000), ms(17_000)]);
    }

    #[test]
    fn tests_without_cost_spread_by_count() {
        let s: Vec<(String, Duration, bool)> =
            (0..9).map(|i| (format!("T.t{i}"), ms(0), false)).collect();
        let (of, _) = assign(&items(&s), 3, ms(0));
        for k in 0..3 {
            assert_eq!(of.iter().filter(|&&o| o == k).count(), 3);
        }
    }
}
