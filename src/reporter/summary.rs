//! The end-of-run summary on stderr: counts by outcome, wall time, the slowest tests, how
//! busy each machine was, how many runs of each repeated test passed (`--repeat`), how
//! many matrix cases failed for each axis value (so that "everything with `fs=xfs` fails"
//! shows), each soak's events (runs, failures, skips, the slowest), each failure with its
//! artifact directory, and the exact command line that re-runs only the failed tests (with
//! the seed of their soaks' schedules).

use super::Reporter;
use super::text::one_line;
use crate::events::{Event, Placement, RunStats, TestInfo, Verdict};
use crate::shell::quote;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Slowest tests listed.
const SLOWEST: usize = 5;

/// One machine's use during the run.
#[derive(Debug, Default, Clone, PartialEq)]
struct MachineUse {
    image: String,
    boot: Duration,
    busy: Duration,
    attempts: usize,
}

#[derive(Debug)]
struct Failure {
    name: String,
    what: String,
    artifacts: Option<PathBuf>,
}

pub struct SummaryReporter<W: Write> {
    out: W,
    /// The command line that re-runs tests: the failed tests' names are appended.
    rerun: Vec<String>,
    /// Per test: total time of all its attempts.
    durations: Vec<(Duration, String)>,
    /// Global machines by label (`ND@n` placements), and fresh machines summed up.
    globals: BTreeMap<String, MachineUse>,
    fresh: MachineUse,
    fresh_count: usize,
    boots: BTreeMap<String, (String, Duration)>,
    failures: Vec<Failure>,
    /// Per repeated test (its own name): runs that passed, runs.
    repeats: BTreeMap<String, (u32, u32)>,
    /// Per matrix value (`fs=xfs`): cases that failed, cases that finished.
    by_value: BTreeMap<String, (u32, u32)>,
    /// Test names by id (from `run-started`).
    names: BTreeMap<usize, String>,
    /// Per soak test and event, in the order first seen: its executions.
    soaks: Vec<(String, String, SoakCount)>,
    /// The seed soaks' schedules were drawn from.
    seed: Option<u64>,
}

/// One soak event's executions in a run.
#[derive(Debug, Default, Clone, PartialEq)]
struct SoakCount {
    runs: u32,
    failed: u32,
    skipped: u32,
    slowest: Duration,
}

impl<W: Write> SummaryReporter<W> {
    /// `rerun`: the words of the command that re-runs the named tests, e.g.
    /// `["vmcheck", "run", "--exact"]`.
    pub fn new(out: W, rerun: Vec<String>) -> SummaryReporter<W> {
        SummaryReporter {
            out,
            rerun,
            durations: Vec::new(),
            globals: BTreeMap::new(),
            fresh: MachineUse::default(),
            fresh_count: 0,
            boots: BTreeMap::new(),
            failures: Vec::new(),
            repeats: BTreeMap::new(),
            by_value: BTreeMap::new(),
            names: BTreeMap::new(),
            soaks: Vec::new(),
            seed: None,
        }
    }

    fn attempts(&mut self, placement: &Placement, attempts: &[crate::events::AttemptReport]) {
        for a in attempts {
            for label in &a.machines {
                let (image, boot) = self.boots.get(label).cloned().unwrap_or_default();
                let u = if matches!(placement, Placement::Global(_)) {
                    let u = self.globals.entry(label.clone()).or_default();
                    (u.image, u.boot) = (image, boot);
                    u
                } else {
                    self.fresh_count += 1;
                    &mut self.fresh
                };
                u.busy += a.duration;
                u.attempts += 1;
            }
        }
    }

    fn render(&mut self, stats: &RunStats, wall: Duration) -> std::io::Result<()> {
        let o = &mut self.out;
        writeln!(o)?;
        writeln!(
            o,
            "vmcheck: {} tests in {}: {}",
            stats.finished(),
            secs(wall),
            stats.nonzero_counts().join(", ")
        )?;
        self.durations
            .sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let slow: Vec<_> = self
            .durations
            .iter()
            .filter(|(d, _)| !d.is_zero())
            .take(SLOWEST)
            .collect();
        if !slow.is_empty() {
            writeln!(o, "slowest tests:")?;
            for (d, name) in slow {
                writeln!(o, "  {:>8}  {name}", secs(*d))?;
            }
        }
        if !self.globals.is_empty() || self.fresh_count > 0 {
            writeln!(o, "machines (time running tests / of the run):")?;
            let lw = self.globals.keys().map(String::len).max().unwrap_or(0);
            let iw = self
                .globals
                .values()
                .map(|u| u.image.len())
                .max()
                .unwrap_or(0);
            for (label, u) in &self.globals {
                writeln!(
                    o,
                    "  {label:<lw$} {:<iw$} busy {:>8} ({:>3}%), {} attempts, booted in {}",
                    u.image,
                    secs(u.busy),
                    percent(u.busy, wall),
                    u.attempts,
                    secs(u.boot)
                )?;
            }
            if self.fresh_count > 0 {
                writeln!(
                    o,
                    "  {:<21} busy {:>8} (boot included), {} machines",
                    "fresh machines",
                    secs(self.fresh.busy),
                    self.fresh_count,
                )?;
            }
        }
        if !self.repeats.is_empty() {
            let mut repeats: Vec<_> = self.repeats.iter().collect();
            // The least reliable first.
            repeats.sort_by(|a, b| {
                let ratio = |(p, n): (u32, u32)| f64::from(p) / f64::from(n.max(1));
                ratio(*a.1).total_cmp(&ratio(*b.1)).then(a.0.cmp(b.0))
            });
            let w = repeats
                .iter()
                .map(|(_, (p, n))| format!("{p}/{n}").len())
                .max()
                .unwrap_or(0);
            let nw = repeats.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
            writeln!(o, "repeated tests (runs passed / runs, failure rate):")?;
            for (name, (p, n)) in repeats {
                let (lo, hi) = crate::results::stats::wilson(u64::from(n - p), u64::from(*n));
                writeln!(
                    o,
                    "  {:>w$}  {name:<nw$}  {:.1}%, 95% interval {:.1}%-{:.1}%",
                    format!("{p}/{n}"),
                    100.0 * f64::from(n - p) / f64::from((*n).max(1)),
                    100.0 * lo,
                    100.0 * hi
                )?;
            }
        }
        if !self.by_value.is_empty() {
            let w = self.by_value.keys().map(String::len).max().unwrap_or(0);
            writeln!(o, "matrix values (cases failed / cases):")?;
            for (value, (failed, n)) in &self.by_value {
                let all = if failed == n && *n > 0 {
                    "  all failed"
                } else {
                    ""
                };
                writeln!(o, "  {value:<w$}  {failed}/{n}{all}")?;
            }
        }
        if !self.soaks.is_empty() {
            let w = self
                .soaks
                .iter()
                .map(|(t, e, _)| t.len() + e.len() + 1)
                .max()
                .unwrap_or(0);
            writeln!(o, "soak events (runs, failed, skipped, slowest):")?;
            for (test, event, c) in &self.soaks {
                writeln!(
                    o,
                    "  {:<w$}  {:>5} {:>5} {:>5} {:>8}",
                    format!("{test}/{event}"),
                    c.runs,
                    c.failed,
                    c.skipped,
                    secs(c.slowest)
                )?;
            }
        }
        if !self.failures.is_empty() {
            writeln!(o, "failed:")?;
            for f in &self.failures {
                writeln!(o, "  {}: {}", f.name, one_line(&f.what))?;
                if let Some(dir) = &f.artifacts {
                    writeln!(o, "    artifacts: {}", dir.display())?;
                }
            }
            let mut words: Vec<String> = self.rerun.iter().map(|w| quote(w)).collect();
            // A repeated test is re-run by its own name, once.
            let mut names: Vec<&str> = Vec::new();
            for f in &self.failures {
                let (name, _) = crate::checkfile::split_repeat(&f.name);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            // A soak replays with the schedule it failed with.
            if let Some(seed) = self.seed
                && !self
                    .rerun
                    .iter()
                    .any(|w| w == "--seed" || w.starts_with("--seed="))
            {
                let at = words.len().saturating_sub(1);
                words.splice(at..at, ["--seed".to_string(), seed.to_string()]);
            }
            words.extend(names.iter().map(|n| quote(n)));
            writeln!(o, "re-run the failed tests with:\n  {}", words.join(" "))?;
        }
        o.flush()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn percent(part: Duration, whole: Duration) -> u32 {
    if whole.is_zero() {
        0
    } else {
        ((part.as_secs_f64() / whole.as_secs_f64()) * 100.0).round() as u32
    }
}

impl<W: Write> Reporter for SummaryReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::MachineReady {
                label, image, boot, ..
            } => {
                self.boots.insert(label.clone(), (image.clone(), *boot));
            }
            Event::AttemptRetry {
                placement, report, ..
            } => self.attempts(placement, std::slice::from_ref(report)),
            Event::TestFinished {
                test,
                placement,
                verdict,
                attempts,
            } => {
                // Retried attempts were counted when they were retried.
                if let Some(last) = attempts.last() {
                    self.attempts(placement, std::slice::from_ref(last));
                }
                let total = attempts.iter().map(|a| a.duration).sum();
                self.durations.push((total, test.name.clone()));
                let (name, run) = crate::checkfile::split_repeat(&test.name);
                if run > 0 {
                    let r = self.repeats.entry(name.to_string()).or_default();
                    r.0 += u32::from(matches!(verdict, Verdict::Passed | Verdict::Flaky));
                    r.1 += 1;
                }
                if let (_, Some(id)) = crate::checkfile::split_case(name) {
                    for value in id.split(',') {
                        let v = self.by_value.entry(value.to_owned()).or_default();
                        v.0 += u32::from(!verdict.is_success());
                        v.1 += 1;
                    }
                }
                if !verdict.is_success() {
                    self.failures.push(failure(test, verdict, attempts));
                }
            }
            Event::RunStarted { tests, .. } => {
                self.names = tests.iter().map(|t| (t.id, t.name.clone())).collect();
            }
            Event::SoakStarted { seed, .. } => self.seed = Some(*seed),
            Event::SoakEvent { id, run, .. } => {
                let test = self.names.get(id).cloned().unwrap_or_default();
                let i = match self
                    .soaks
                    .iter()
                    .position(|(t, e, _)| *t == test && *e == run.name)
                {
                    Some(i) => i,
                    None => {
                        self.soaks
                            .push((test, run.name.clone(), SoakCount::default()));
                        self.soaks.len() - 1
                    }
                };
                let c = &mut self.soaks[i].2;
                c.runs += 1;
                c.failed += u32::from(run.failed());
                c.skipped += u32::from(run.outcome == "skipped");
                c.slowest = c.slowest.max(run.duration);
            }
            Event::RunFinished { stats, wall, .. } => self.render(stats, *wall)?,
            _ => {}
        }
        Ok(())
    }
}

fn failure(
    test: &TestInfo,
    verdict: &Verdict,
    attempts: &[crate::events::AttemptReport],
) -> Failure {
    Failure {
        name: test.name.clone(),
        what: verdict.describe_failure(attempts.last()),
        artifacts: attempts.last().and_then(|a| a.artifacts.clone()),
    }
}

/// Options of `vmcheck run` that a re-run must not repeat, with a value each: the run's
/// outputs (pasting the line would overwrite this run's reports and delete the artifacts the
/// summary points to) and its shard.
const NOT_REPEATED: [&str; 5] = [
    "--shard",
    "--events",
    "--junit",
    "--status-file",
    "--artifacts",
];

/// The command that re-runs tests by name: `argv` without its positional `filters`, its
/// outputs and its shard (`NOT_REPEATED`), with `--exact` so names match whole tests
/// only; prefixed with `TEST_OS=…` when it was set.
pub fn rerun_words(argv: &[String], filters: &[String], test_os: Option<&str>) -> Vec<String> {
    let mut words = Vec::new();
    if let Some(os) = test_os {
        words.push(format!("TEST_OS={os}"));
    }
    let mut drop: Vec<&String> = filters.iter().collect();
    let mut skip_next = false;
    for (i, w) in argv.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        if NOT_REPEATED.contains(&w.as_str()) {
            skip_next = true;
            continue;
        }
        let with_value = |o: &&str| w.strip_prefix(o).is_some_and(|v| v.starts_with('='));
        if NOT_REPEATED.iter().any(with_value) || w == "--exact" {
            continue;
        }
        // Positional filters come after the subcommand: drop their last occurrences.
        if i > 1
            && let Some(p) = drop.iter().rposition(|f| *f == w)
        {
            drop.remove(p);
            continue;
        }
        words.push(w.clone());
    }
    words.push("--exact".into());
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AttemptOutcome, AttemptReport, KnownIssues};

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn rerun_drops_filters_outputs_and_shard() {
        let w = rerun_words(
            &argv(
                "vmcheck run -j2 --shard 1/3 TestA --test-dir t --junit j.xml --events=e.jsonl \
                 --status-file s --artifacts a --artifacts=b --keep-artifacts TestB",
            ),
            &["TestA".into(), "TestB".into()],
            Some("debian-12"),
        );
        assert_eq!(
            w.join(" "),
            "TEST_OS=debian-12 vmcheck run -j2 --test-dir t --keep-artifacts --exact"
        );
        let w = rerun_words(
            &argv("vmcheck exec ./check-foo --exact TestFoo"),
            &["TestFoo".into()],
            None,
        );
        assert_eq!(w.join(" "), "vmcheck exec ./check-foo --exact");
    }

    fn info(id: usize, name: &str) -> TestInfo {
        TestInfo {
            id,
            name: name.into(),
            file: "check-x".into(),
            nondestructive: true,
            ram_mib: 0,
            os: None,
        }
    }

    fn attempt(outcome: AttemptOutcome, secs: u64, machine: &str) -> AttemptReport {
        AttemptReport {
            attempt: 1,
            outcome,
            output: String::new(),
            duration: Duration::from_secs(secs),
            machines: vec![machine.into()],
            artifacts: Some("res/TestB.b/attempt-1".into()),
            known: KnownIssues::default(),
            start_ms: None,
            boot: None,
        }
    }

    #[test]
    fn a_soak_is_counted_per_event_and_re_run_with_its_seed() {
        let mut out = Vec::new();
        let mut r = SummaryReporter::new(&mut out, argv("vmcheck run --exact"));
        let run = |name: &str, n: u32, outcome: &str, secs: u64| Event::SoakEvent {
            id: 1,
            attempt: 1,
            run: crate::events::SoakRun {
                name: name.into(),
                run: n,
                why: "periodic".into(),
                due: Duration::ZERO,
                started: Duration::ZERO,
                duration: Duration::from_secs(secs),
                outcome: outcome.into(),
                detail: String::new(),
                tail: String::new(),
            },
        };
        let events = [
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 1,
                tests: vec![info(1, "TestS.soak")],
                shard: None,
                rerun: Vec::new(),
                run: None,
            },
            Event::SoakStarted {
                id: 1,
                attempt: 1,
                duration: Duration::from_secs(60),
                seed: 42,
                events: vec!["check".into(), "pause".into()],
            },
            run("check", 1, "passed", 1),
            run("pause", 1, "passed", 2),
            run("check", 2, "skipped", 0),
            run("check", 3, "failed", 3),
            Event::TestFinished {
                test: info(1, "TestS.soak"),
                placement: Placement::Own,
                verdict: Verdict::Failed,
                attempts: vec![attempt(
                    AttemptOutcome::failed("soak event check #3 failed"),
                    9,
                    "t1",
                )],
            },
            Event::RunFinished {
                stats: RunStats::default(),
                wall: Duration::from_secs(10),
                unmatched_known: Vec::new(),
            },
        ];
        for e in &events {
            r.report(e).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "soak events (runs, failed, skipped, slowest):\n\
                 \x20 TestS.soak/check      3     1     1     3.0s\n\
                 \x20 TestS.soak/pause      1     0     0     2.0s\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "re-run the failed tests with:\n  vmcheck run --seed 42 --exact TestS.soak\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn summary_lists_counts_slowest_machines_failures_and_rerun() {
        let mut out = Vec::new();
        let mut r = SummaryReporter::new(&mut out, argv("vmcheck run --exact"));
        let events = [
            Event::MachineReady {
                label: "ND@1".into(),
                image: "busybox".into(),
                boot: Duration::from_secs(2),
                origin: None,
            },
            Event::TestFinished {
                test: info(1, "TestA.a"),
                placement: Placement::Global(1),
                verdict: Verdict::Passed,
                attempts: vec![attempt(AttemptOutcome::Passed, 3, "ND@1")],
            },
            Event::TestFinished {
                test: info(2, "TestB.b"),
                placement: Placement::Own,
                verdict: Verdict::Failed,
                attempts: vec![attempt(
                    AttemptOutcome::failed("exit code 1"),
                    7,
                    "t2-machine1",
                )],
            },
            Event::RunFinished {
                stats: RunStats {
                    passed: 1,
                    failed: 1,
                    ..Default::default()
                },
                wall: Duration::from_secs(10),
                unmatched_known: vec![],
            },
        ];
        for e in &events {
            r.report(e).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("vmcheck: 2 tests in 10.0s: 1 passed, 1 failed"),
            "{text}"
        );
        let slow = text.find("7.0s  TestB.b").unwrap();
        assert!(
            slow < text.find("3.0s  TestA.a").unwrap(),
            "slowest first:\n{text}"
        );
        assert!(
            text.contains("ND@1 busybox busy     3.0s ( 30%), 1 attempts, booted in 2.0s"),
            "{text}"
        );
        assert!(text.contains("fresh machines"), "{text}");
        assert!(
            text.contains("TestB.b: failed (exit code 1)\n    artifacts: res/TestB.b/attempt-1")
        );
        assert!(
            text.ends_with("re-run the failed tests with:\n  vmcheck run --exact TestB.b\n"),
            "{text}"
        );
    }

    #[test]
    fn repeated_tests_give_their_passes_out_of_their_runs_and_rerun_once() {
        let mut out = Vec::new();
        let mut r = SummaryReporter::new(&mut out, argv("vmcheck run --exact"));
        let failed = || AttemptOutcome::failed("exit code 1");
        let mut events = Vec::new();
        for (i, (name, pass)) in [
            ("TestA.a[repeat=1]", true),
            ("TestA.a[repeat=2]", false),
            ("TestA.a[repeat=3]", false),
            ("TestB.b[repeat=1]", true),
            ("TestB.b[repeat=2]", true),
            ("TestB.b[repeat=3]", true),
        ]
        .into_iter()
        .enumerate()
        {
            let (verdict, outcome) = match pass {
                true => (Verdict::Passed, AttemptOutcome::Passed),
                false => (Verdict::Failed, failed()),
            };
            events.push(Event::TestFinished {
                test: info(i + 1, name),
                placement: Placement::Global(1),
                verdict,
                attempts: vec![attempt(outcome, 1, "ND@1")],
            });
        }
        events.push(Event::RunFinished {
            stats: RunStats {
                passed: 4,
                failed: 2,
                ..Default::default()
            },
            wall: Duration::from_secs(10),
            unmatched_known: vec![],
        });
        for e in &events {
            r.report(e).unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "repeated tests (runs passed / runs, failure rate):\n  \
                 1/3  TestA.a  66.7%, 95% interval 20.8%-93.9%\n  \
                 3/3  TestB.b  0.0%, 95% interval 0.0%-56.1%\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with("re-run the failed tests with:\n  vmcheck run --exact TestA.a\n"),
            "{text}"
        );
    }

    #[test]
    fn matrix_cases_are_counted_by_value() {
        let mut out = Vec::new();
        let mut r = SummaryReporter::new(&mut out, argv("vmcheck run"));
        let cases = [
            ("T.m[fs=ext4,s=busybox]", true),
            ("T.m[fs=xfs,s=busybox]", false),
            ("T.m[fs=xfs,s=debian-12]", false),
            ("T.m[fs=ext4,s=debian-12][repeat=2]", true),
            ("T.plain", false),
        ];
        for (i, (name, ok)) in cases.iter().enumerate() {
            let outcome = if *ok {
                AttemptOutcome::Passed
            } else {
                AttemptOutcome::failed("exit code 1")
            };
            r.report(&Event::TestFinished {
                test: info(i + 1, name),
                placement: Placement::Own,
                verdict: if *ok {
                    Verdict::Passed
                } else {
                    Verdict::Failed
                },
                attempts: vec![attempt(outcome, 1, "m")],
            })
            .unwrap();
        }
        r.report(&Event::RunFinished {
            stats: RunStats::default(),
            wall: Duration::from_secs(1),
            unmatched_known: vec![],
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let start = text.find("matrix values").unwrap();
        let end = text.find("failed:\n").unwrap();
        assert_eq!(
            &text[start..end],
            "matrix values (cases failed / cases):\n\
             \x20 fs=ext4      0/2\n\
             \x20 fs=xfs       2/2  all failed\n\
             \x20 s=busybox    1/2\n\
             \x20 s=debian-12  1/2\n"
        );
    }
}
