//! The durations a run orders its tests by and `--shard` balances by: a view of the outcome
//! store ([`super::store`]), not a file of its own. Per test of the project on the TEST_OS,
//! the last [`KEEP`] real results (passed, failed, timed out, unexpected journal messages:
//! skips and machine failures measure nothing about the test) of settled runs of the last
//! [`STALE_AFTER`]; estimates use their median, so one outlier does not move them. Boots of
//! shared machines likewise, cold boots and restores apart.

use super::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::time::Duration;

/// Results kept per test (and per kind of boot): the most recent ones.
pub const KEEP: usize = 5;
/// Older results are not read (renamed or removed tests, images no longer used).
pub const STALE_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);

/// Recent durations of one project's tests on one TEST_OS.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Durations {
    /// By `TestClass.testMethod`, newest first.
    pub tests: BTreeMap<String, Vec<Duration>>,
    /// Cold boots of shared machines, newest first.
    pub boot: Vec<Duration>,
    /// Restores of shared machines from a booted snapshot, newest first.
    pub restore: Vec<Duration>,
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    let m = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[m]),
        _ => Some((v[m - 1] + v[m]) / 2),
    }
}

impl Durations {
    /// Read those of `tests` (their own names) from `store` for `project` on `os`, as of
    /// `now_ms`.
    pub fn read(
        store: &Store,
        project: &str,
        os: &str,
        tests: &[String],
        now_ms: u64,
    ) -> Result<Durations, StoreError> {
        let since = now_ms.saturating_sub(STALE_AFTER.as_millis() as u64);
        let ms = |v: Vec<u64>| v.into_iter().map(Duration::from_millis).collect();
        Ok(Durations {
            tests: store
                .recent_durations(project, os, tests, since, KEEP)?
                .into_iter()
                .map(|(t, v)| (t, ms(v)))
                .collect(),
            boot: ms(store.recent_boots(project, os, "cold", since, KEEP)?),
            restore: ms(store.recent_boots(project, os, "restored", since, KEEP)?),
        })
    }

    /// The median duration of test `name`, if it was recorded.
    pub fn test(&self, name: &str) -> Option<Duration> {
        self.tests.get(name).and_then(|v| median(v))
    }

    /// The median boot of a shared machine the next run is likely to get, if one was
    /// recorded: a cold boot with `cold` (`--cold-boot`), else a restore once one was
    /// recorded (the first run of an image makes the snapshot that later runs restore),
    /// else a cold boot.
    pub fn boot(&self, cold: bool) -> Option<Duration> {
        match median(&self.restore) {
            Some(restore) if !cold => Some(restore),
            _ => median(&self.boot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&secs(&[3])), Some(Duration::from_secs(3)));
        assert_eq!(median(&secs(&[9, 1, 5])), Some(Duration::from_secs(5)));
        assert_eq!(median(&secs(&[4, 1, 2, 100])), Some(Duration::from_secs(3)));
    }

    #[test]
    fn restores_are_preferred_unless_booting_cold() {
        let d = Durations {
            boot: secs(&[20, 22, 21]),
            restore: secs(&[2]),
            ..Default::default()
        };
        assert_eq!(d.boot(false), Some(Duration::from_secs(2)));
        assert_eq!(d.boot(true), Some(Duration::from_secs(21)));
        let cold_only = Durations {
            boot: secs(&[20]),
            ..Default::default()
        };
        assert_eq!(cold_only.boot(false), Some(Duration::from_secs(20)));
        assert_eq!(Durations::default().boot(false), None);
    }
}
