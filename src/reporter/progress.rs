//! Progress on stderr. On a terminal: an indicatif display with the elapsed time, a bar of
//! finished tests, counts by outcome, and one line per running test with its machine and
//! how long it has been running; finished tests scroll above it as status lines. Elsewhere
//! (CI logs): the same status lines only, one per finished test or retry. A run of a
//! repeated test (`--repeat`, `--until-fail`, `--stress-below`) also gives its test's tally
//! so far and the 95 % interval of its failure rate. A running soak shows its clock of its
//! duration and each event's runs (on a terminal in its test's line; in CI logs a line each
//! minute of the soak, and at each failed execution). Never stdout: TAP stays clean whichever
//! mode is used.

use super::Reporter;
use super::text::one_line;
use crate::events::{AttemptReport, Event, Placement, RunStats, SoakRun, TestInfo, Verdict};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

/// The status word of a finished test, padded to one width.
fn status(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Passed => "   PASS",
        Verdict::Flaky => "  FLAKY",
        Verdict::Failed | Verdict::UnexpectedPass { .. } | Verdict::KnownElsewhere { .. } => {
            "   FAIL"
        }
        Verdict::KnownIssue { .. } => "  KNOWN",
        Verdict::Skipped { .. } => "   SKIP",
        Verdict::Todo { .. } => "   TODO",
        Verdict::Error { .. } => "  ERROR",
    }
}

fn total_time(attempts: &[AttemptReport]) -> Duration {
    attempts.iter().map(|a| a.duration).sum()
}

fn place(placement: &Placement) -> String {
    match placement {
        Placement::Global(n) => format!("ND@{n}"),
        Placement::Own => "booting".into(),
        Placement::None => "-".into(),
    }
}

/// `   PASS [   1.2s] TestFoo.testBar`, plus why for the ones that did not pass.
fn finished_line(test: &TestInfo, verdict: &Verdict, attempts: &[AttemptReport]) -> String {
    let mut line = format!(
        "{} [{:>6.1}s] {}",
        status(verdict),
        total_time(attempts).as_secs_f64(),
        test.name
    );
    match verdict {
        Verdict::Skipped { reason } | Verdict::Todo { reason } => {
            line.push_str(&format!(" ({reason})"))
        }
        Verdict::KnownIssue { issue } => line.push_str(&format!(" (known issue #{issue})")),
        Verdict::Passed => {
            if let Some(note) = crate::events::machine_failure_note(attempts) {
                line.push_str(&format!(" ({note})"));
            }
        }
        _ => line.push_str(&format!(" ({})", verdict.describe_failure(attempts.last()))),
    }
    one_line(&line)
}

/// Each repeated test's runs so far: (runs, failures).
#[derive(Debug, Default)]
struct Series(HashMap<String, (u64, u64)>);

impl Series {
    /// ` — 12 runs, 1 failed: failure rate 0.4%-35.4% (95%)` for a run of a repeated test.
    fn note(&mut self, test: &TestInfo, verdict: &Verdict) -> String {
        let (name, 1..) = crate::checkfile::split_repeat(&test.name) else {
            return String::new();
        };
        let failed = match verdict {
            Verdict::Passed | Verdict::Flaky => false,
            Verdict::Failed | Verdict::KnownIssue { .. } | Verdict::KnownElsewhere { .. } => true,
            // Skipped, stopped, todo, or the machine failed: not a trial.
            _ => return String::new(),
        };
        let (runs, failures) = self.0.entry(name.to_string()).or_default();
        *runs += 1;
        *failures += u64::from(failed);
        let (lo, hi) = crate::results::stats::wilson(*failures, *runs);
        let rate = if *failures == 0 {
            format!("failure rate < {:.2}%", 100.0 * hi)
        } else {
            format!("failure rate {:.2}%-{:.2}%", 100.0 * lo, 100.0 * hi)
        };
        format!(" — {runs} runs, {failures} failed: {rate} (95%)")
    }
}

/// A running soak as the progress shows it.
#[derive(Debug, Default)]
struct SoakState {
    duration: Duration,
    /// The soak's clock when its latest execution ended.
    clock: Duration,
    /// Per event in the order declared: name, runs, failed.
    events: Vec<(String, u32, u32)>,
    /// The minute of the soak's clock last told in a line.
    told: u64,
}

impl SoakState {
    fn new(duration: Duration, names: &[String]) -> SoakState {
        SoakState {
            duration,
            events: names.iter().map(|n| (n.clone(), 0, 0)).collect(),
            ..SoakState::default()
        }
    }

    /// Count `run`; whether a line is due (a failure, or a new minute of the soak).
    fn update(&mut self, run: &SoakRun) -> bool {
        self.clock = self.clock.max(run.started + run.duration);
        if let Some(e) = self.events.iter_mut().find(|e| e.0 == run.name) {
            e.1 += 1;
            e.2 += u32::from(run.failed());
        }
        let minute = self.clock.as_secs() / 60;
        let new_minute = minute > self.told;
        self.told = self.told.max(minute);
        run.failed() || new_minute
    }

    /// `soak 1m10s/2h0m0s: check 14 (1 failed), pause 2, collect 0`
    fn line(&self) -> String {
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(name, runs, failed)| match failed {
                0 => format!("{name} {runs}"),
                f => format!("{name} {runs} ({f} failed)"),
            })
            .collect();
        format!(
            "soak {}/{}: {}",
            hms(self.clock),
            hms(self.duration),
            events.join(", ")
        )
    }
}

/// `1h2m3s`, `2m0s`, `12s`.
fn hms(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

/// The CI line of a soak: `   SOAK TestS.x: soak 2m0s/1h0m0s: …`, with the failed
/// execution first when there is one.
fn soak_line(test: &str, run: &SoakRun, state: &SoakState) -> String {
    let failed = if run.failed() {
        format!(
            "{} #{} {} at {:.1}s; ",
            run.name,
            run.run,
            if run.detail.is_empty() {
                run.outcome.clone()
            } else {
                format!("{} ({})", run.outcome, run.detail)
            },
            run.started.as_secs_f64()
        )
    } else {
        String::new()
    };
    one_line(&format!("   SOAK {test}: {failed}{}", state.line()))
}

fn retry_line(test: &TestInfo, report: &AttemptReport, reason: &str) -> String {
    one_line(&format!(
        "  RETRY [{:>6.1}s] {} (attempt {}: {reason})",
        report.duration.as_secs_f64(),
        test.name,
        report.attempt
    ))
}

fn counts(stats: &RunStats) -> String {
    format!(
        "{} passed, {} failed, {} skipped, {} flaky",
        stats.passed,
        stats.failed + stats.errors,
        stats.skipped + stats.todo,
        stats.flaky
    )
}

/// Plain status lines (no terminal).
pub struct LinesReporter<W: Write> {
    out: W,
    total: usize,
    done: usize,
    series: Series,
    names: HashMap<usize, String>,
    soaks: HashMap<usize, SoakState>,
}

impl<W: Write> LinesReporter<W> {
    pub fn new(out: W) -> LinesReporter<W> {
        LinesReporter {
            out,
            total: 0,
            done: 0,
            series: Series::default(),
            names: HashMap::new(),
            soaks: HashMap::new(),
        }
    }
}

impl<W: Write> Reporter for LinesReporter<W> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted { tests, .. } => {
                self.total = tests.len();
                self.names = tests.iter().map(|t| (t.id, t.name.clone())).collect();
            }
            Event::SoakStarted {
                id,
                duration,
                events,
                ..
            } => {
                self.soaks.insert(*id, SoakState::new(*duration, events));
                return Ok(());
            }
            Event::SoakEvent { id, run, .. } => {
                let Some(state) = self.soaks.get_mut(id) else {
                    return Ok(());
                };
                if !state.update(run) {
                    return Ok(());
                }
                let name = self.names.get(id).map_or("", String::as_str);
                writeln!(self.out, "{}", soak_line(name, run, state))?;
            }
            Event::TestFinished {
                test,
                verdict,
                attempts,
                ..
            } => {
                self.done += 1;
                writeln!(
                    self.out,
                    "{} [{}/{}]{}",
                    finished_line(test, verdict, attempts),
                    self.done,
                    self.total,
                    self.series.note(test, verdict)
                )?;
            }
            Event::AttemptRetry {
                test,
                report,
                reason,
                ..
            } => writeln!(self.out, "{}", retry_line(test, report, reason))?,
            Event::MachineFailed { label, message } => writeln!(
                self.out,
                "vmcheck: machine {label} failed: {}",
                one_line(message)
            )?,
            Event::TestWaiting { name, reason, .. } => writeln!(
                self.out,
                "{}",
                one_line(&format!("  WAIT {name}: {reason}"))
            )?,
            _ => return Ok(()),
        }
        self.out.flush()
    }
}

/// The live display on a terminal.
pub struct BarReporter {
    multi: MultiProgress,
    main: ProgressBar,
    running: HashMap<usize, ProgressBar>,
    /// The test that waits for capacity, and what the main line says about it.
    waiting: Option<(usize, String)>,
    stats: RunStats,
    series: Series,
    soaks: HashMap<usize, SoakState>,
}

impl BarReporter {
    /// Draws on stderr (indicatif hides itself when stderr is not a terminal).
    pub fn new() -> BarReporter {
        BarReporter::with_target(ProgressDrawTarget::stderr())
    }

    pub fn with_target(target: ProgressDrawTarget) -> BarReporter {
        let multi = MultiProgress::with_draw_target(target);
        let main = multi.add(ProgressBar::new(0));
        main.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:25}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        BarReporter {
            multi,
            main,
            running: HashMap::new(),
            waiting: None,
            stats: RunStats::default(),
            series: Series::default(),
            soaks: HashMap::new(),
        }
    }

    /// The counts so far, and which test waits for capacity and why.
    fn set_main_message(&self) {
        let waiting = self.waiting.as_ref().map_or("", |(_, w)| w.as_str());
        self.main
            .set_message(format!("{}{waiting}", counts(&self.stats)));
    }

    fn stop_running(&mut self, id: usize) {
        if let Some(bar) = self.running.remove(&id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

impl Default for BarReporter {
    fn default() -> Self {
        BarReporter::new()
    }
}

impl Reporter for BarReporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted { tests, .. } => {
                self.main.set_length(tests.len() as u64);
                self.set_main_message();
                self.main.enable_steady_tick(Duration::from_millis(500));
            }
            Event::TestWaiting { id, name, reason } => {
                self.waiting = Some((*id, one_line(&format!(" — next: {name} ({reason})"))));
                self.set_main_message();
            }
            Event::TestStarted {
                test,
                attempt,
                placement,
            } => {
                if self.waiting.as_ref().is_some_and(|(id, _)| *id == test.id) {
                    self.waiting = None;
                    self.set_main_message();
                }
                // Added before anything is set: a bar that drew on its own before it joined
                // the display leaves stale lines behind (indicatif #645).
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {prefix} [{msg}] {elapsed}")
                        .expect("valid template"),
                );
                bar.set_prefix(test.name.clone());
                let mut msg = place(placement);
                if *attempt > 1 {
                    msg.push_str(&format!(", attempt {attempt}"));
                }
                bar.set_message(msg);
                bar.tick();
                self.running.insert(test.id, bar);
            }
            Event::TestRunning {
                id,
                attempt,
                machines,
            } => {
                if let Some(bar) = self.running.get(id) {
                    let mut msg = machines.join(", ");
                    if *attempt > 1 {
                        msg.push_str(&format!(", attempt {attempt}"));
                    }
                    bar.set_message(msg);
                }
            }
            Event::SoakStarted {
                id,
                duration,
                events,
                ..
            } => {
                let state = SoakState::new(*duration, events);
                if let Some(bar) = self.running.get(id) {
                    bar.set_message(state.line());
                }
                self.soaks.insert(*id, state);
            }
            Event::SoakEvent { id, run, .. } => {
                if let Some(state) = self.soaks.get_mut(id) {
                    state.update(run);
                    if let Some(bar) = self.running.get(id) {
                        bar.set_message(state.line());
                    }
                }
            }
            Event::AttemptRetry {
                test,
                report,
                reason,
                ..
            } => {
                self.stop_running(test.id);
                let _ = self.multi.println(retry_line(test, report, reason));
            }
            Event::TestFinished {
                test,
                verdict,
                attempts,
                ..
            } => {
                self.stop_running(test.id);
                self.stats.count(verdict);
                let note = self.series.note(test, verdict);
                let _ = self
                    .multi
                    .println(finished_line(test, verdict, attempts) + &note);
                self.main.inc(1);
                self.set_main_message();
            }
            Event::MachineFailed { label, message } => {
                let _ = self.multi.println(format!(
                    "vmcheck: machine {label} failed: {}",
                    one_line(message)
                ));
            }
            Event::RunCancelled { .. } | Event::RunFinished { .. } => {
                for (_, bar) in self.running.drain() {
                    bar.finish_and_clear();
                }
                self.main.finish_and_clear();
                let _ = self.multi.clear();
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AttemptOutcome, KnownIssues};

    fn info(name: &str) -> TestInfo {
        TestInfo {
            id: 1,
            name: name.into(),
            file: "check-x".into(),
            nondestructive: false,
            ram_mib: 0,
            os: None,
        }
    }

    fn attempt(outcome: AttemptOutcome) -> AttemptReport {
        AttemptReport {
            attempt: 1,
            outcome,
            output: String::new(),
            duration: Duration::from_millis(1250),
            machines: vec![],
            artifacts: None,
            known: KnownIssues::default(),
            start_ms: None,
            boot: None,
        }
    }

    #[test]
    fn plain_lines_for_ci() {
        let mut out = Vec::new();
        let mut r = LinesReporter::new(&mut out);
        r.report(&Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: vec![info("TestA.a"), info("TestA.b")],
            shard: None,
            rerun: vec![],
            run: None,
        })
        .unwrap();
        let failed = attempt(AttemptOutcome::failed("exit code 1"));
        r.report(&Event::AttemptRetry {
            test: info("TestA.a"),
            placement: Placement::Own,
            report: failed.clone(),
            retry: 1,
            reason: "retry after failure".into(),
        })
        .unwrap();
        r.report(&Event::TestFinished {
            test: info("TestA.a"),
            placement: Placement::Own,
            verdict: Verdict::Failed,
            attempts: vec![failed],
        })
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "  RETRY [   1.2s] TestA.a (attempt 1: retry after failure)\n   \
             FAIL [   1.2s] TestA.a (failed (exit code 1)) [1/2]\n"
        );
    }

    /// Every line says why a test did not pass, in words: a passing todo is not
    /// "FAIL (passed)", another OS's known issue is named, and nothing a test printed
    /// reaches the terminal as a control sequence.
    #[test]
    fn failures_say_why() {
        let t = info("TestA.a");
        let line = |verdict: Verdict, outcome: AttemptOutcome| {
            finished_line(&t, &verdict, &[attempt(outcome)])
        };
        assert_eq!(
            line(
                Verdict::UnexpectedPass {
                    reason: "bug 7".into()
                },
                AttemptOutcome::Passed
            ),
            "   FAIL [   1.2s] TestA.a (a todo test passed: bug 7)"
        );
        let failed = AttemptOutcome::failed("exit code 1");
        assert_eq!(
            line(
                Verdict::KnownElsewhere {
                    issue: 9,
                    os: "debian-12".into()
                },
                failed.clone()
            ),
            "   FAIL [   1.2s] TestA.a (failed (exit code 1) (known issue #9 in debian-12))"
        );
        assert_eq!(
            line(
                Verdict::Error {
                    message: "machine1 died\r\x1b[2Jforged".into()
                },
                failed
            ),
            "  ERROR [   1.2s] TestA.a (machine1 died \\x1b[2Jforged)"
        );
    }

    #[test]
    fn a_soak_tells_its_clock_and_counts_each_minute_and_at_each_failure() {
        let mut out = Vec::new();
        let mut r = LinesReporter::new(&mut out);
        let run = |name: &str, n: u32, outcome: &str, at: u64| Event::SoakEvent {
            id: 1,
            attempt: 1,
            run: SoakRun {
                name: name.into(),
                run: n,
                why: "periodic".into(),
                due: Duration::from_secs(at),
                started: Duration::from_secs(at),
                duration: Duration::from_secs(1),
                outcome: outcome.into(),
                detail: if outcome == "failed" {
                    "exit code 1".into()
                } else {
                    String::new()
                },
                tail: String::new(),
            },
        };
        let events = [
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 1,
                tests: vec![info("TestS.soak")],
                shard: None,
                rerun: vec![],
                run: None,
            },
            Event::SoakStarted {
                id: 1,
                attempt: 1,
                duration: Duration::from_secs(7200),
                seed: 1,
                events: vec!["check".into(), "pause".into()],
            },
            run("check", 1, "passed", 30),
            run("check", 2, "passed", 60),
            run("pause", 1, "passed", 70),
            run("check", 3, "passed", 90),
            run("check", 4, "failed", 100),
            run("check", 5, "passed", 3700),
        ];
        for e in &events {
            r.report(e).unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "   SOAK TestS.soak: soak 1m1s/2h0m0s: check 2, pause 0\n   \
             SOAK TestS.soak: check #4 failed (exit code 1) at 100.0s; soak 1m41s/2h0m0s: check 4 (1 failed), pause 1\n   \
             SOAK TestS.soak: soak 1h1m41s/2h0m0s: check 5 (1 failed), pause 1\n"
        );
    }

    #[test]
    fn bar_reporter_survives_a_whole_run_hidden() {
        let mut r = BarReporter::with_target(ProgressDrawTarget::hidden());
        let t = info("TestA.a");
        for e in [
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 1,
                tests: vec![t.clone()],
                shard: None,
                rerun: vec![],
                run: None,
            },
            Event::TestStarted {
                test: t.clone(),
                attempt: 1,
                placement: Placement::Global(1),
            },
            Event::TestFinished {
                test: t.clone(),
                placement: Placement::Global(1),
                verdict: Verdict::Passed,
                attempts: vec![attempt(AttemptOutcome::Passed)],
            },
        ] {
            r.report(&e).unwrap();
        }
        assert!(r.running.is_empty());
        assert_eq!(r.stats.passed, 1);
        assert_eq!(r.main.position(), 1);
    }
}
