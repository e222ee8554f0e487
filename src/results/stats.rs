//! Flakiness as a measured quantity (`vmcheck stats`): per test and TEST_OS, from the
//! outcome store, how often it ran and failed, its failure rate with a 95 % Wilson score
//! interval, how often it flipped between passing and failing lately, and its state.
//!
//! What counts: an attempt that passed is a pass; one that failed, timed out or had
//! unexpected journal messages is a failure (a matched known issue is still a failure of
//! the test). Skips count for nothing, and machine or harness failures (boot, SSH lost,
//! qemu died) are counted apart: they say nothing about the test and never make it look
//! flaky; the hosts that had them are listed instead.
//!
//! The state looks at the last [`RECENT`] results: `broken` when the last
//! [`BROKEN_STREAK`] (or all, if fewer) failed, `flaky` when they mix passes and failures,
//! `healthy` when none failed (older failures still show in the counts and the rate).

use super::store::{Store, StoreError, error};
use rusqlite::params;
use serde::Serialize;
use std::collections::HashMap;

/// Results the flip rate and the state look at: the most recent ones.
pub const RECENT: usize = 20;
/// Consecutive latest failures that make a test `broken`.
pub const BROKEN_STREAK: usize = 3;
/// The normal quantile for a two-sided 95 % interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95 % Wilson score interval of a failure rate of `k` failures in `n` runs; (0, 1)
/// when nothing ran.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = p + z2 / (2.0 * n);
    let spread = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z2 / n;
    // Exactly 0 with no failure and 1 with nothing but failures (not a rounding error off).
    let low = if k == 0.0 {
        0.0
    } else {
        (centre - spread) / denom
    };
    let high = if k == n {
        1.0
    } else {
        (centre + spread) / denom
    };
    (low.clamp(0.0, 1.0), high.clamp(0.0, 1.0))
}

/// The most runs `--stress-below` asks for (a rate below 0.001 % is not a goal).
pub const MAX_STRESS_RUNS: u32 = 100_000;

/// The number of clean runs after which the 95 % Wilson upper bound of the failure rate is
/// below `rate` (with no failure it is z²/(n+z²)), at most [`MAX_STRESS_RUNS`].
pub fn runs_to_bound(rate: f64) -> u32 {
    (1..=MAX_STRESS_RUNS)
        .find(|&n| wilson(0, u64::from(n)).1 < rate)
        .unwrap_or(MAX_STRESS_RUNS)
}

/// A failure rate as written: `1%`, `0.5%` or `0.01`; above 0 and below 1.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (number, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let rate = number
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite())
        .map(|r| r / scale)
        .ok_or_else(|| "expected a failure rate such as 1% or 0.01".to_string())?;
    if !(rate > 0.0 && rate < 1.0) {
        return Err("the rate must be above 0 and below 100%".into());
    }
    if wilson(0, u64::from(MAX_STRESS_RUNS)).1 >= rate {
        return Err(format!(
            "too small: {MAX_STRESS_RUNS} clean runs bound the rate only below {:.4}%",
            100.0 * wilson(0, u64::from(MAX_STRESS_RUNS)).1
        ));
    }
    Ok(rate)
}

/// A test's state, from its recent results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Broken,
    Flaky,
    Healthy,
    /// Never a real result (only skips or machine failures).
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Broken => "broken",
            State::Flaky => "flaky",
            State::Healthy => "healthy",
            State::Unknown => "unknown",
        }
    }

    /// The state of a test whose most recent real results are `recent` (true: failed),
    /// newest first.
    pub fn of(recent: &[bool]) -> State {
        if recent.is_empty() {
            State::Unknown
        } else if recent.iter().take(BROKEN_STREAK).all(|f| *f) {
            State::Broken
        } else if recent.iter().any(|f| *f) {
            State::Flaky
        } else {
            State::Healthy
        }
    }
}

/// How often consecutive results in `recent` differ (0 for fewer than two).
pub fn flip_rate(recent: &[bool]) -> f64 {
    if recent.len() < 2 {
        return 0.0;
    }
    let flips = recent.windows(2).filter(|w| w[0] != w[1]).count();
    flips as f64 / (recent.len() - 1) as f64
}

/// The statistics of one test on one TEST_OS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestStats {
    pub project: String,
    pub test: String,
    pub os: String,
    /// Real results: passes and failures.
    pub runs: u64,
    pub failures: u64,
    /// Machine or harness failures (not counted in `runs`).
    pub machine_failures: u64,
    /// Times the test failed, then passed on a retry (verdict flaky).
    pub passed_on_retry: u64,
    pub rate: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
    /// Over the last [`RECENT`] results.
    pub flip_rate: f64,
    pub state: State,
    /// The latest failure: when (epoch milliseconds) and at which commit.
    pub last_failure_ms: Option<u64>,
    pub last_failure_commit: Option<String>,
}

/// A host's machine and harness failures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStats {
    pub host: String,
    pub attempts: u64,
    pub machine_failures: u64,
}

/// Which attempts the statistics are of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this project's (all projects when None).
    pub project: Option<String>,
    /// Only this TEST_OS.
    pub os: Option<String>,
    /// Only attempts started at or after this (epoch milliseconds).
    pub since_ms: Option<u64>,
    /// Only tests whose name contains one of these (all when empty).
    pub filters: Vec<String>,
    /// Only runs without uncommitted changes (`by_commit`, for `vmcheck hunt`).
    pub clean_only: bool,
}

impl Query {
    fn wants(&self, test: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| test.contains(f.as_str()))
    }
}

/// Statistics of the attempts a query selects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Most troubled first: by state (broken, flaky, healthy, unknown), then by failure
    /// rate, then by name.
    pub tests: Vec<TestStats>,
    /// Hosts that had machine or harness failures, most first.
    pub hosts: Vec<HostStats>,
}

/// One test's tally while its attempts stream by, oldest first.
#[derive(Default)]
struct Tally {
    runs: u64,
    failures: u64,
    machine: u64,
    retried: u64,
    /// The last [`RECENT`] real results (true: failed), oldest first.
    recent: std::collections::VecDeque<bool>,
    last_failure: Option<(u64, String)>,
}

impl Tally {
    fn add(&mut self, start_ms: u64, run: &str, outcome: &str, flaky_verdict: bool) {
        let failed = matches!(outcome, "failed" | "timed-out" | "unexpected-messages");
        match outcome {
            "harness" => self.machine += 1,
            "passed" => {}
            _ if failed => {}
            // Skips count for nothing.
            _ => return,
        }
        if flaky_verdict {
            self.retried += 1;
        }
        if outcome == "harness" {
            return;
        }
        self.runs += 1;
        if failed {
            self.failures += 1;
            self.last_failure = Some((start_ms, run.to_string()));
        }
        self.recent.push_back(failed);
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    fn finish(
        self,
        project: String,
        os: String,
        test: String,
        commits: &HashMap<String, Option<String>>,
    ) -> TestStats {
        let newest_first: Vec<bool> = self.recent.iter().rev().copied().collect();
        let (wilson_low, wilson_high) = wilson(self.failures, self.runs);
        let (last_failure_ms, last_failure_commit) = match self.last_failure {
            Some((ms, run)) => (Some(ms), commits.get(&run).cloned().flatten()),
            None => (None, None),
        };
        TestStats {
            project,
            test,
            os,
            runs: self.runs,
            failures: self.failures,
            machine_failures: self.machine,
            passed_on_retry: self.retried,
            rate: if self.runs == 0 {
                0.0
            } else {
                self.failures as f64 / self.runs as f64
            },
            wilson_low,
            wilson_high,
            flip_rate: flip_rate(&newest_first),
            state: State::of(&newest_first),
            last_failure_ms,
            last_failure_commit,
        }
    }
}

/// Column `i` of `r` as text, without copying it.
fn text<'a>(r: &'a rusqlite::Row, i: usize) -> rusqlite::Result<&'a str> {
    r.get_ref(i)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The statistics of the attempts `query` selects: one pass over the store's covering index
/// of attempts in (project, os, test, time) order, tallied per test as they stream by.
pub fn report(store: &Store, query: &Query) -> Result<Report, StoreError> {
    let err = error(store.path());
    let read = |e: rusqlite::Error| err("reading statistics", &e);
    let conn = store.conn();
    // The runs: their commits and hosts (one row per run, few).
    let mut commits: HashMap<String, Option<String>> = HashMap::new();
    let mut host_of: HashMap<String, String> = HashMap::new();
    {
        let mut stmt = conn
            .prepare("SELECT id, commit_id, host FROM runs")
            .map_err(read)?;
        let mut rows = stmt.query([]).map_err(read)?;
        while let Some(r) = rows.next().map_err(read)? {
            let id: String = r.get(0).map_err(read)?;
            commits.insert(id.clone(), r.get(1).map_err(read)?);
            host_of.insert(id, r.get(2).map_err(read)?);
        }
    }
    let mut stmt = conn
        .prepare(
            "SELECT project, os, test, start_ms, run, outcome, verdict = 'flaky' AND last
             FROM attempts
             WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR os = ?2) AND start_ms >= ?3
             ORDER BY project, os, test, start_ms",
        )
        .map_err(read)?;
    let mut rows = stmt
        .query(params![
            query.project.as_deref(),
            query.os.as_deref(),
            query.since_ms.unwrap_or(0) as i64
        ])
        .map_err(read)?;
    let mut tests = Vec::new();
    // Per run: attempts, machine failures.
    let mut by_run: HashMap<String, (u64, u64)> = HashMap::new();
    let mut current: Option<(String, String, String, Tally)> = None;
    while let Some(r) = rows.next().map_err(read)? {
        let text = |i| text(r, i).map_err(read);
        let (project, os, test) = (text(0)?, text(1)?, text(2)?);
        let start_ms = r.get::<_, i64>(3).map_err(read)?.max(0) as u64;
        let (run, outcome) = (text(4)?, text(5)?);
        let flaky: bool = r.get(6).map_err(read)?;
        let same = matches!(&current, Some((p, o, t, _)) if p == project && o == os && t == test);
        if !same {
            if let Some((p, o, t, tally)) = current.take()
                && query.wants(&t)
            {
                tests.push(tally.finish(p, o, t, &commits));
            }
            current = Some((project.into(), os.into(), test.into(), Tally::default()));
        }
        current
            .as_mut()
            .expect("set above")
            .3
            .add(start_ms, run, outcome, flaky);
        match by_run.get_mut(run) {
            Some(n) => *n = (n.0 + 1, n.1 + u64::from(outcome == "harness")),
            None => {
                by_run.insert(run.to_string(), (1, u64::from(outcome == "harness")));
            }
        }
    }
    if let Some((p, o, t, tally)) = current.take()
        && query.wants(&t)
    {
        tests.push(tally.finish(p, o, t, &commits));
    }
    tests.sort_by(|a, b| {
        a.state
            .cmp(&b.state)
            .then(b.rate.total_cmp(&a.rate))
            .then_with(|| (&a.test, &a.os).cmp(&(&b.test, &b.os)))
    });
    let mut hosts: HashMap<&str, (u64, u64)> = HashMap::new();
    for (run, (n, machine)) in &by_run {
        let host = host_of.get(run).map_or("unknown", String::as_str);
        let h = hosts.entry(host).or_default();
        *h = (h.0 + n, h.1 + machine);
    }
    let mut hosts: Vec<HostStats> = hosts
        .into_iter()
        .filter(|(_, (_, machine))| *machine > 0)
        .map(|(host, (attempts, machine_failures))| HostStats {
            host: host.to_string(),
            attempts,
            machine_failures,
        })
        .collect();
    hosts.sort_by(|a, b| {
        b.machine_failures
            .cmp(&a.machine_failures)
            .then(a.host.cmp(&b.host))
    });
    Ok(Report { tests, hosts })
}

/// A test's results at one commit (`vmcheck stats --by-commit`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommitStats {
    /// None for runs outside a git work tree.
    pub commit: Option<String>,
    /// Some of its runs had changes not committed.
    pub dirty: bool,
    /// Its first recorded attempt (epoch milliseconds): the order of the table.
    pub first_ms: u64,
    pub runs: u64,
    pub failures: u64,
    pub rate: f64,
    pub wilson_low: f64,
    pub wilson_high: f64,
}

/// The results of `test` (its own name) at each commit it was recorded at, oldest first,
/// within `query`'s project, OS and period.
pub fn by_commit(store: &Store, query: &Query, test: &str) -> Result<Vec<CommitStats>, StoreError> {
    let err = error(store.path());
    let read = |e: rusqlite::Error| err("reading statistics", &e);
    let mut stmt = store
        .conn()
        .prepare(
            "SELECT r.commit_id, max(r.dirty), min(a.start_ms),
                    sum(a.outcome IN ('passed', 'failed', 'timed-out', 'unexpected-messages')),
                    sum(a.outcome IN ('failed', 'timed-out', 'unexpected-messages'))
             FROM attempts a JOIN runs r ON r.id = a.run
             WHERE a.test = ?4 AND (?1 IS NULL OR a.project = ?1) AND (?2 IS NULL OR a.os = ?2)
               AND a.start_ms >= ?3 AND (?5 = 0 OR r.dirty = 0)
             GROUP BY r.commit_id ORDER BY 3",
        )
        .map_err(read)?;
    let rows = stmt
        .query_map(
            params![
                query.project.as_deref(),
                query.os.as_deref(),
                query.since_ms.unwrap_or(0) as i64,
                test,
                query.clean_only
            ],
            |r| {
                let runs = r.get::<_, i64>(3)?.max(0) as u64;
                let failures = r.get::<_, i64>(4)?.max(0) as u64;
                let (wilson_low, wilson_high) = wilson(failures, runs);
                Ok(CommitStats {
                    commit: r.get(0)?,
                    dirty: r.get(1)?,
                    first_ms: r.get::<_, i64>(2)?.max(0) as u64,
                    runs,
                    failures,
                    rate: if runs == 0 {
                        0.0
                    } else {
                        failures as f64 / runs as f64
                    },
                    wilson_low,
                    wilson_high,
                })
            },
        )
        .map_err(read)?;
    rows.collect::<Result<_, _>>().map_err(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_written_as_json_are_read_back_exactly() {
        // `stats --json` and event streams are read back by programs (and by vmcheck's own
        // tests, which compare bounds exactly): serde_json parses floats exactly only with
        // its float_roundtrip feature. Without it this bound came back one ulp off.
        let mut values = vec![0.375_030_967_423_100_27_f64];
        for n in 1..=60 {
            for k in 0..=n {
                let (lo, hi) = wilson(k, n);
                values.extend([lo, hi]);
            }
        }
        for x in values {
            let text = serde_json::to_string(&x).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(
                x.to_bits(),
                back.to_bits(),
                "{x} written as {text}, read as {back}"
            );
        }
    }

    #[test]
    fn wilson_matches_known_values() {
        // Reference values (Wilson score, z = 1.96).
        let (lo, hi) = wilson(0, 300);
        assert!(lo == 0.0 && (hi - 0.01264).abs() < 1e-4, "{hi}");
        let (lo, hi) = wilson(10, 100);
        assert!(
            (lo - 0.05523).abs() < 1e-4 && (hi - 0.17437).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(5, 5);
        assert!((lo - 0.56552).abs() < 1e-4 && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }

    #[test]
    fn about_300_clean_runs_bound_the_rate_below_one_percent() {
        let first = (1..1000).find(|n| wilson(0, *n).1 < 0.01).unwrap();
        assert!((370..=390).contains(&first), "{first}");
    }

    #[test]
    fn stress_targets() {
        assert_eq!(parse_rate("1%"), Ok(0.01));
        assert_eq!(parse_rate("0.5 %"), Ok(0.005));
        assert_eq!(parse_rate("0.02"), Ok(0.02));
        for bad in ["0", "100%", "-1%", "x", "1e-9", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        let n = runs_to_bound(0.01);
        assert!(wilson(0, u64::from(n)).1 < 0.01 && wilson(0, u64::from(n) - 1).1 >= 0.01);
        assert_eq!(runs_to_bound(0.05), 73);
    }

    #[test]
    fn states_and_flips() {
        assert_eq!(State::of(&[]), State::Unknown);
        assert_eq!(State::of(&[false, false]), State::Healthy);
        assert_eq!(State::of(&[true, true, true, false]), State::Broken);
        assert_eq!(State::of(&[true]), State::Broken);
        assert_eq!(State::of(&[true, false, true]), State::Flaky);
        assert_eq!(State::of(&[false, false, true]), State::Flaky);
        assert_eq!(flip_rate(&[false, true, false, true]), 1.0);
        assert_eq!(flip_rate(&[false, false, true, true, true]), 0.25);
        assert_eq!(flip_rate(&[true]), 0.0);
    }

    proptest::proptest! {
        #[test]
        fn the_interval_contains_the_observed_rate(n in 1u64..5000, k in 0u64..5000) {
            let k = k % (n + 1);
            let (lo, hi) = wilson(k, n);
            let p = k as f64 / n as f64;
            proptest::prop_assert!(lo <= p + 1e-12 && p <= hi + 1e-12 && 0.0 <= lo && hi <= 1.0);
        }
    }
}
