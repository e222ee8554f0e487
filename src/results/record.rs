//! The rows a run's events become in the outcome store: the same for a run recording itself
//! as it goes and for a stream imported later (`vmcheck results import`, `vmcheck merge`),
//! so that both give the same store. A pure function of the events, apart from what a
//! stream written before runs carried their metadata does not say ([`Fallback`]).

use super::store::{AttemptRow, BootRow, RunRow, Store, StoreError};
use crate::events::{AttemptOutcome, AttemptReport, BootOrigin, Event, Verdict};

/// What one event adds to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// The run: one row per TEST_OS (`<id>/<os>` for a run on several), so that each OS's
    /// outcomes and durations are kept apart as if each had been a run of its own.
    Run(Vec<RunRow>),
    /// The attempts of one finished test, in the run row they belong to (an index into
    /// `Row::Run`'s).
    Attempts(usize, Vec<AttemptRow>),
    Boot(usize, BootRow),
}

/// How the events reach the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The run records itself: a shard run is not settled (see [`super::store`]).
    Live,
    /// A stream read afterwards: settled, whatever it is.
    Import,
}

/// What to record for a stream that does not carry its run's metadata (written by an older
/// vmcheck).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// A stable id: a hash of the stream, so that importing it twice adds nothing.
    pub id: String,
    pub project: String,
    pub host: String,
    pub start_ms: u64,
}

impl From<&crate::events::RunMeta> for Fallback {
    /// A live run's own metadata: what its `run-started` carries anyway.
    fn from(m: &crate::events::RunMeta) -> Fallback {
        Fallback {
            id: m.id.clone(),
            project: m.project.clone(),
            host: m.host.clone(),
            start_ms: m.start_ms,
        }
    }
}

/// Turns a run's events into rows, in order.
#[derive(Debug)]
pub struct Recorder {
    source: Source,
    fallback: Fallback,
    /// The rows of the run, one per TEST_OS; empty before `run-started`.
    runs: Vec<RunRow>,
    boots: u32,
}

impl Recorder {
    pub fn new(source: Source, fallback: Fallback) -> Recorder {
        Recorder {
            source,
            fallback,
            runs: Vec::new(),
            boots: 0,
        }
    }

    /// The run row the events of OS `os` (none: the run's own) belong to.
    fn run_of(&self, os: Option<&str>) -> Option<usize> {
        match os {
            _ if self.runs.len() <= 1 => (!self.runs.is_empty()).then_some(0),
            Some(os) => self.runs.iter().position(|r| r.os == os),
            None => Some(0),
        }
    }

    /// The run row a boot of `image` (`<name>` or `<name>-<id>`) belongs to: the OS it
    /// is, else the run's first.
    fn run_of_image(&self, image: &str) -> Option<usize> {
        let is = |os: &str| {
            image == os
                || image
                    .strip_prefix(os)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
        };
        (!self.runs.is_empty()).then(|| self.runs.iter().position(|r| is(&r.os)).unwrap_or(0))
    }

    /// What `event` adds, if anything.
    pub fn observe(&mut self, event: &Event) -> Option<Row> {
        match event {
            // A merge's stream repeats its runs' attempts: those runs' own streams are
            // recorded instead.
            Event::RunStarted { run: Some(r), .. } if !r.merged.is_empty() => None,
            Event::RunStarted {
                test_os,
                shard,
                run,
                ..
            } => {
                let f = &self.fallback;
                let row = RunRow {
                    id: run.as_ref().map_or_else(|| f.id.clone(), |r| r.id.clone()),
                    project: run
                        .as_ref()
                        .map_or_else(|| f.project.clone(), |r| r.project.clone()),
                    os: test_os.clone(),
                    image: run.as_ref().and_then(|r| r.image.clone()),
                    commit: run.as_ref().and_then(|r| r.commit.clone()),
                    dirty: run.as_ref().is_some_and(|r| r.dirty),
                    host: run
                        .as_ref()
                        .map_or_else(|| f.host.clone(), |r| r.host.clone()),
                    start_ms: run.as_ref().map_or(f.start_ms, |r| r.start_ms),
                    shard: shard.as_ref().map(|s| format!("{}/{}", s.index, s.total)),
                    settled: shard.is_none() || self.source == Source::Import,
                };
                let oses = crate::planning::plan::run_oses(test_os);
                self.runs = if oses.len() > 1 {
                    oses.iter()
                        .map(|os| RunRow {
                            id: format!("{}/{os}", row.id),
                            os: os.to_string(),
                            image: None,
                            ..row.clone()
                        })
                        .collect()
                } else {
                    vec![row]
                };
                Some(Row::Run(self.runs.clone()))
            }
            Event::MachineReady {
                label,
                image,
                boot,
                origin,
            } => {
                let run = self.run_of_image(image)?;
                self.boots += 1;
                let origin = match origin {
                    Some(o) => Some(origin_tag(*o)),
                    None if image == crate::runner::EXISTING_HOST => Some("existing"),
                    None => None,
                };
                Some(Row::Boot(
                    run,
                    BootRow {
                        seq: self.boots,
                        label: label.clone(),
                        image: image.clone(),
                        origin,
                        duration_ms: boot.as_millis() as u64,
                    },
                ))
            }
            Event::TestFinished {
                test,
                verdict,
                attempts,
                ..
            } => {
                let run = self.run_of(test.os.as_deref())?;
                let start_ms = self.runs[run].start_ms;
                // Recorded under its own name, beside its OS.
                let name = match &test.os {
                    Some(os) => crate::checkfile::strip_os(&test.name, os),
                    None => test.name.clone(),
                };
                let n = attempts.len();
                let rows: Vec<AttemptRow> = attempts
                    .iter()
                    .enumerate()
                    .map(|(i, a)| attempt_row(&name, a, verdict, i + 1 == n, start_ms))
                    .collect();
                (!rows.is_empty()).then_some(Row::Attempts(run, rows))
            }
            _ => None,
        }
    }

    /// Write what `event` adds to `store`.
    pub fn record(&mut self, store: &mut Store, event: &Event) -> Result<Recorded, StoreError> {
        Ok(match self.observe(event) {
            Some(Row::Run(runs)) => {
                let mut new = false;
                for run in &runs {
                    new |= store.add_run(run)?;
                }
                Recorded::Run { new }
            }
            Some(Row::Attempts(run, rows)) => {
                store.add_attempts(&self.runs[run], &rows)?;
                Recorded::Attempts(rows.len())
            }
            Some(Row::Boot(run, boot)) => {
                store.add_boot(&self.runs[run], &boot)?;
                Recorded::Boot
            }
            None => Recorded::Nothing,
        })
    }
}

/// What [`Recorder::record`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Nothing,
    /// The run; `new` unless the store had it already (its attempts are then left as
    /// they are).
    Run {
        new: bool,
    },
    Attempts(usize),
    Boot,
}

fn attempt_row(
    test: &str,
    a: &AttemptReport,
    verdict: &Verdict,
    last: bool,
    run_start_ms: u64,
) -> AttemptRow {
    let detail = match a.outcome {
        AttemptOutcome::Passed => String::new(),
        _ => {
            let line = a.describe();
            let line = line.lines().next().unwrap_or("").trim();
            line.chars().take(300).collect()
        }
    };
    let mut known: Vec<(u64, Option<String>)> = a.known.own.iter().map(|n| (*n, None)).collect();
    known.extend(a.known.other.iter().map(|(n, os)| (*n, Some(os.clone()))));
    // The runs of a repeated test are one test's.
    let (test, repeat) = crate::checkfile::split_repeat(test);
    AttemptRow {
        test: test.to_string(),
        repeat,
        attempt: a.attempt,
        start_ms: a.start_ms.unwrap_or(run_start_ms),
        duration_ms: a.duration.as_millis() as u64,
        outcome: outcome_tag(&a.outcome),
        detail,
        verdict: verdict_tag(verdict),
        last,
        known,
        boot: a.boot.map(origin_tag),
    }
}

/// An attempt's outcome as the store writes it (the event stream's name for it).
pub fn outcome_tag(o: &AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Passed => "passed",
        AttemptOutcome::Failed { .. } => "failed",
        AttemptOutcome::Skipped { .. } => "skipped",
        AttemptOutcome::TimedOut { .. } => "timed-out",
        AttemptOutcome::UnexpectedMessages { .. } => "unexpected-messages",
        AttemptOutcome::Harness { .. } => "harness",
    }
}

/// A verdict as the store writes it (the event stream's name for it).
pub fn verdict_tag(v: &Verdict) -> &'static str {
    match v {
        Verdict::Passed => "passed",
        Verdict::Flaky => "flaky",
        Verdict::Failed => "failed",
        Verdict::KnownIssue { .. } => "known-issue",
        Verdict::KnownElsewhere { .. } => "known-elsewhere",
        Verdict::Skipped { .. } => "skipped",
        Verdict::Todo { .. } => "todo",
        Verdict::UnexpectedPass { .. } => "unexpected-pass",
        Verdict::Error { .. } => "error",
    }
}

fn origin_tag(o: BootOrigin) -> &'static str {
    match o {
        BootOrigin::Cold => "cold",
        BootOrigin::Restored => "restored",
        BootOrigin::Existing => "existing",
    }
}
