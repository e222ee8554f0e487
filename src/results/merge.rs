//! `vmcheck merge`: the JSON-lines event streams of several runs (typically the shards of one
//! suite, `--shard K/N` on several CI runners) combined into the event sequence of one run,
//! which the ordinary reporters then turn into one TAP stream, JUnit file or summary.
//!
//! Each stream is replayed in the order given, with its tests renumbered after the previous
//! streams' tests. The combined run starts with every stream's tests and finishes once, with
//! the counts added up, the longest wall time (shards run side by side), and the known issues
//! that no stream matched. A stream that ends without `run-finished` (its runner died) still
//! counts: every test it planned but did not finish is reported as an error. An attempt
//! whose `output` the stream left empty (it went out as `test-output` events) gets it back
//! from those events.

use crate::events::{Event, RunStats, TestInfo, Verdict};
use crate::reporter::json::FORMAT_VERSION;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A line that is not an event of this format, with its place (`line` 0: the file could not
/// be read, and `message` says so with its name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MergeError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for MergeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}", self.message),
            n => write!(f, "{}:{n}: {}", self.file.display(), self.message),
        }
    }
}

/// One stream's events, parsed.
#[derive(Debug)]
pub struct Stream {
    pub file: PathBuf,
    pub events: Vec<Event>,
}

/// Read and parse the event stream in `file`. Any prefix of a stream is one: a file cut in
/// the middle of a line or of a UTF-8 character (its runner was killed) loses only that
/// last, unfinished line.
pub fn read(file: &Path) -> Result<Stream, MergeError> {
    let bytes = std::fs::read(file).map_err(|e| MergeError {
        file: file.to_path_buf(),
        line: 0,
        message: format!("cannot read {}: {e}", file.display()),
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        // A character cut at the very end: the unfinished line is dropped by `parse`.
        Err(e) if e.error_len().is_none() => {
            std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid up to here")
        }
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            return Err(MergeError {
                file: file.to_path_buf(),
                line,
                message: "not UTF-8 text".into(),
            });
        }
    };
    parse(file, text)
}

/// Parse a JSON-lines event stream (`text` read from `file`). The last line, when it lacks
/// its newline and is not a whole event, is a cut and is dropped; an empty text is the
/// stream of a runner that died before it started (no events).
pub fn parse(file: &Path, text: &str) -> Result<Stream, MergeError> {
    let err = |line: usize, message: String| MergeError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let mut events = Vec::new();
    let mut lines: Vec<&str> = text.split('\n').collect();
    // What follows the last newline: empty for a whole stream, else an unfinished line.
    let unfinished = lines.pop().filter(|l| !l.trim().is_empty());
    let whole = lines.len();
    for (i, (l, finished)) in lines
        .into_iter()
        .map(|l| (l, true))
        .chain(unfinished.map(|l| (l, false)))
        .enumerate()
    {
        if l.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(l) {
            Ok(v) => v,
            Err(_) if !finished && i == whole => break,
            Err(e) => return Err(err(i + 1, format!("not JSON: {e}"))),
        };
        match value.get("v").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(err(
                    i + 1,
                    format!(
                        "event format version {v}, this vmcheck reads version {FORMAT_VERSION}"
                    ),
                ));
            }
            None => return Err(err(i + 1, "not a vmcheck event (no \"v\" field)".into())),
        }
        let event: Event = serde_json::from_value(value)
            .map_err(|e| err(i + 1, format!("not a vmcheck event: {e}")))?;
        events.push(event);
    }
    match events.first() {
        Some(Event::RunStarted { .. }) | None => Ok(Stream {
            file: file.to_path_buf(),
            events,
        }),
        _ => Err(err(1, "does not start with a run-started event".into())),
    }
}

/// Check that the shards among `streams` belong to one split: the same number of shards and
/// the same split fingerprint (the same selection and duration history), each shard once.
/// Returns a warning when shards are missing; an error names the stream that does not fit.
pub fn check_shards(streams: &[Stream]) -> Result<Option<String>, MergeError> {
    let mut first: Option<(&Path, &crate::events::ShardInfo)> = None;
    let mut seen: HashMap<usize, &Path> = HashMap::new();
    for s in streams {
        let Some(Event::RunStarted {
            shard: Some(info), ..
        }) = s.events.first()
        else {
            continue;
        };
        let err = |message: String| MergeError {
            file: s.file.clone(),
            line: 1,
            message,
        };
        match first {
            None => first = Some((&s.file, info)),
            Some((f, i)) if i.total != info.total || i.split != info.split => {
                return Err(err(format!(
                    "shard {}/{} of split {}, but {} is shard {}/{} of split {}: the shards \
                     were split differently (give every shard job the same selection and the \
                     same --history file)",
                    info.index,
                    info.total,
                    info.split,
                    f.display(),
                    i.index,
                    i.total,
                    i.split
                )));
            }
            Some(_) => {}
        }
        if let Some(other) = seen.insert(info.index, &s.file) {
            return Err(err(format!(
                "shard {}/{} is also in {}",
                info.index,
                info.total,
                other.display()
            )));
        }
    }
    Ok(first.and_then(|(_, info)| {
        let missing: Vec<String> = (1..=info.total)
            .filter(|k| !seen.contains_key(k))
            .map(|k| k.to_string())
            .collect();
        (!missing.is_empty()).then(|| {
            format!(
                "shard {} of {} missing: the merged report lacks their tests",
                missing.join(", "),
                info.total
            )
        })
    }))
}

/// The combined events of `streams`, in order.
pub fn merge(streams: &[Stream]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut all_tests = Vec::new();
    let mut oses: Vec<String> = Vec::new();
    let mut rerun_words = Vec::new();
    let mut jobs = 0;
    let mut offsets = Vec::new();
    let mut runs: Vec<&crate::events::RunMeta> = Vec::new();
    for s in streams {
        offsets.push(all_tests.len());
        if let Some(Event::RunStarted {
            test_os,
            jobs: j,
            tests,
            rerun,
            run,
            ..
        }) = s.events.first()
        {
            runs.extend(run);
            if rerun_words.is_empty() {
                rerun_words = rerun.clone();
            }
            if !oses.contains(test_os) {
                oses.push(test_os.clone());
            }
            jobs += j;
            let base = all_tests.len();
            all_tests.extend(tests.iter().map(|t| renumber(t, base)));
        }
    }
    out.push(Event::RunStarted {
        test_os: oses.join(","),
        jobs,
        tests: all_tests,
        shard: None,
        rerun: rerun_words,
        // Marked as a merge of those runs, which the store records from their own streams.
        run: runs.first().map(|first| crate::events::RunMeta {
            id: format!(
                "merge-{}",
                runs.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            ),
            merged: runs.iter().map(|r| r.id.clone()).collect(),
            ..(*first).clone()
        }),
    });

    let mut stats = RunStats::default();
    let mut wall = Duration::ZERO;
    let mut unmatched: Option<BTreeSet<String>> = None;
    let mut cancelled = Vec::new();
    for (s, base) in streams.iter().zip(offsets) {
        let planned: Vec<TestInfo> = match s.events.first() {
            Some(Event::RunStarted { tests, .. }) => tests.clone(),
            _ => {
                cancelled.push(format!(
                    "{}: empty, its runner ended before the run started",
                    s.file.display()
                ));
                continue;
            }
        };
        let mut finished_ids = HashSet::new();
        let mut finished_run = false;
        let mut started: HashMap<usize, crate::events::Placement> = HashMap::new();
        let mut outputs: HashMap<(usize, u32), Vec<u8>> = HashMap::new();
        for e in &s.events[1..] {
            match e {
                Event::RunStarted { .. } => {}
                Event::RunFinished {
                    stats: st,
                    wall: w,
                    unmatched_known,
                } => {
                    finished_run = true;
                    add(&mut stats, st);
                    wall = wall.max(*w);
                    let these: BTreeSet<String> = unmatched_known.iter().cloned().collect();
                    unmatched = Some(match unmatched.take() {
                        None => these,
                        Some(u) => u.intersection(&these).cloned().collect(),
                    });
                }
                Event::RunCancelled { reason } => {
                    cancelled.push(format!("{}: {reason}", s.file.display()))
                }
                other => {
                    let mut e = shift(other, base);
                    refill_output(&mut e, &mut outputs);
                    match &e {
                        Event::TestFinished { test, .. } => {
                            finished_ids.insert(test.id);
                        }
                        Event::TestStarted {
                            test, placement, ..
                        } => {
                            started.insert(test.id, placement.clone());
                        }
                        _ => {}
                    }
                    out.push(e);
                }
            }
        }
        if !finished_run {
            // The stream was cut off: what it did not finish is an error of the merged run,
            // and its counts are made from its events as its runner would have.
            stats.planned += planned.len();
            let nondestructive = planned.iter().filter(|t| t.nondestructive).count();
            stats.nondestructive += nondestructive;
            stats.destructive += planned.len() - nondestructive;
            stats.retries += s
                .events
                .iter()
                .filter(|e| matches!(e, Event::AttemptRetry { .. }))
                .count();
            for t in planned.iter().map(|t| renumber(t, base)) {
                if finished_ids.contains(&t.id) {
                    continue;
                }
                let verdict = Verdict::Error {
                    message: format!("{} ended before this test finished", s.file.display()),
                };
                let mut counted = RunStats::default();
                counted.count(&verdict);
                add(&mut stats, &counted);
                out.push(Event::TestFinished {
                    placement: started
                        .remove(&t.id)
                        .unwrap_or(crate::events::Placement::None),
                    test: t,
                    verdict,
                    attempts: Vec::new(),
                });
            }
            // Its finished tests' verdicts were never added up: count them from the events.
            for e in &out {
                if let Event::TestFinished { test, verdict, .. } = e
                    && test.id > base
                    && test.id <= base + planned.len()
                    && finished_ids.contains(&test.id)
                {
                    let mut counted = RunStats::default();
                    counted.count(verdict);
                    add(&mut stats, &counted);
                }
            }
            cancelled.push(format!("{}: ended without run-finished", s.file.display()));
        }
    }
    if !cancelled.is_empty() {
        out.push(Event::RunCancelled {
            reason: cancelled.join("; "),
        });
    }
    out.push(Event::RunFinished {
        stats,
        wall,
        unmatched_known: unmatched.unwrap_or_default().into_iter().collect(),
    });
    out
}

/// Collect `test-output` data into `outputs`; give an attempt report with an empty output
/// the data of its attempt.
fn refill_output(e: &mut Event, outputs: &mut HashMap<(usize, u32), Vec<u8>>) {
    let fill =
        |id: usize, a: &mut crate::events::AttemptReport, outputs: &mut HashMap<_, Vec<u8>>| {
            if a.output.is_empty()
                && let Some(data) = outputs.get(&(id, a.attempt))
            {
                a.output = String::from_utf8_lossy(data).into_owned();
            }
        };
    match e {
        Event::TestOutput { id, attempt, data } => {
            outputs
                .entry((*id, *attempt))
                .or_default()
                .extend(data.iter());
        }
        Event::AttemptRetry { test, report, .. } => fill(test.id, report, outputs),
        Event::TestFinished { test, attempts, .. } => {
            for a in attempts.iter_mut() {
                fill(test.id, a, outputs);
            }
            outputs.retain(|(id, _), _| *id != test.id);
        }
        _ => {}
    }
}

fn renumber(t: &TestInfo, base: usize) -> TestInfo {
    TestInfo {
        id: t.id + base,
        ..t.clone()
    }
}

/// `e` with its test ids moved up by `base`.
fn shift(e: &Event, base: usize) -> Event {
    let mut e = e.clone();
    match &mut e {
        Event::TestStarted { test, .. }
        | Event::AttemptRetry { test, .. }
        | Event::TestFinished { test, .. }
        | Event::KnownIssuePassed { test, .. } => test.id += base,
        Event::TestOutput { id, .. }
        | Event::TestRunning { id, .. }
        | Event::TestWaiting { id, .. } => *id += base,
        _ => {}
    }
    e
}

fn add(total: &mut RunStats, s: &RunStats) {
    total.planned += s.planned;
    total.passed += s.passed;
    total.flaky += s.flaky;
    total.failed += s.failed;
    total.skipped += s.skipped;
    total.todo += s.todo;
    total.errors += s.errors;
    total.retries += s.retries;
    total.destructive += s.destructive;
    total.nondestructive += s.nondestructive;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Placement;
    use crate::reporter::json::line;

    fn info(id: usize, name: &str) -> TestInfo {
        TestInfo::sample(id, name)
    }

    fn stream(name: &str, tests: &[&str], finish: bool) -> String {
        let infos: Vec<TestInfo> = tests
            .iter()
            .enumerate()
            .map(|(i, n)| info(i + 1, n))
            .collect();
        let mut events = vec![Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 2,
            tests: infos.clone(),
            shard: None,
            rerun: vec![],
            run: None,
        }];
        let mut stats = RunStats {
            planned: infos.len(),
            destructive: infos.len(),
            ..RunStats::default()
        };
        for (i, t) in infos.iter().enumerate() {
            if !finish && i > 0 {
                break;
            }
            events.push(Event::TestFinished {
                test: t.clone(),
                placement: Placement::Own,
                verdict: Verdict::Passed,
                attempts: vec![],
            });
            stats.count(&Verdict::Passed);
        }
        if finish {
            events.push(Event::RunFinished {
                stats,
                wall: Duration::from_secs(10 + tests.len() as u64),
                unmatched_known: vec![format!("#1 {name}"), "#2 both".into()],
            });
        }
        events.iter().map(|e| line(e, 0.0) + "\n").collect()
    }

    #[test]
    fn shards_combine_into_one_run() {
        let a = parse(Path::new("a.jsonl"), &stream("a", &["T.a1", "T.a2"], true)).unwrap();
        let b = parse(Path::new("b.jsonl"), &stream("b", &["T.b1"], true)).unwrap();
        let merged = merge(&[a, b]);
        let Event::RunStarted { tests, jobs, .. } = &merged[0] else {
            panic!()
        };
        let ids: Vec<(usize, &str)> = tests.iter().map(|t| (t.id, t.name.as_str())).collect();
        assert_eq!(ids, [(1, "T.a1"), (2, "T.a2"), (3, "T.b1")]);
        assert_eq!(*jobs, 4);
        let finished: Vec<usize> = merged
            .iter()
            .filter_map(|e| match e {
                Event::TestFinished { test, .. } => Some(test.id),
                _ => None,
            })
            .collect();
        assert_eq!(finished, [1, 2, 3]);
        let Some(Event::RunFinished {
            stats,
            wall,
            unmatched_known,
        }) = merged.last()
        else {
            panic!()
        };
        assert_eq!(stats.passed, 3);
        assert_eq!(*wall, Duration::from_secs(12), "the longest shard");
        assert_eq!(unmatched_known, &["#2 both"], "unmatched in every shard");
    }

    /// The merged run re-runs tests the way its runs would (their --test-dir, their
    /// machines), not with a bare `vmcheck run`.
    #[test]
    fn the_runs_rerun_command_is_kept() {
        let mut a = parse(Path::new("a.jsonl"), &stream("a", &["T.a1"], true)).unwrap();
        if let Some(Event::RunStarted { rerun, .. }) = a.events.first_mut() {
            *rerun = vec![
                "vmcheck".into(),
                "run".into(),
                "--test-dir".into(),
                "t".into(),
            ];
        }
        let b = parse(Path::new("b.jsonl"), &stream("b", &["T.b1"], true)).unwrap();
        let merged = merge(&[a, b]);
        let Event::RunStarted { rerun, .. } = &merged[0] else {
            panic!()
        };
        assert_eq!(rerun.join(" "), "vmcheck run --test-dir t");
    }

    #[test]
    fn a_cut_off_stream_reports_its_unfinished_tests_as_errors() {
        let a = parse(Path::new("a.jsonl"), &stream("a", &["T.a1", "T.a2"], false)).unwrap();
        let merged = merge(&[a]);
        let errors: Vec<&str> = merged
            .iter()
            .filter_map(|e| match e {
                Event::TestFinished {
                    test,
                    verdict: Verdict::Error { .. },
                    ..
                } => Some(test.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(errors, ["T.a2"]);
        assert!(
            matches!(&merged[merged.len() - 2], Event::RunCancelled { reason } if reason.contains("a.jsonl"))
        );
        let Some(Event::RunFinished { stats, .. }) = merged.last() else {
            panic!()
        };
        assert_eq!((stats.passed, stats.errors), (1, 1));
    }

    /// Every prefix of a stream, cut at any byte, merges: each planned test is reported
    /// exactly once, and the counts add up to the plan.
    #[test]
    fn every_prefix_of_a_stream_merges() {
        let mut whole = stream("a", &["T.a1", "T.a2", "T.a3"], true);
        // Output with multi-byte characters, so that cuts fall inside them too.
        whole = whole.replacen(
            "\n",
            &format!(
                "\n{}\n",
                line(
                    &Event::TestOutput {
                        id: 1,
                        attempt: 1,
                        data: "grüße → 🚀\n".as_bytes().to_vec()
                    },
                    0.0
                )
            ),
            1,
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.jsonl");
        for cut in 0..=whole.len() {
            std::fs::write(&path, &whole.as_bytes()[..cut]).unwrap();
            let s = read(&path).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let merged = merge(&[s]);
            let Some(Event::RunStarted { tests, .. }) = merged.first() else {
                panic!("cut at {cut}: no run-started")
            };
            let mut finished: Vec<usize> = merged
                .iter()
                .filter_map(|e| match e {
                    Event::TestFinished { test, .. } => Some(test.id),
                    _ => None,
                })
                .collect();
            finished.sort();
            let planned: Vec<usize> = tests.iter().map(|t| t.id).collect();
            assert_eq!(finished, planned, "cut at {cut}");
            let Some(Event::RunFinished { stats, .. }) = merged.last() else {
                panic!("cut at {cut}: no run-finished")
            };
            assert_eq!(stats.finished(), planned.len(), "cut at {cut}");
            assert_eq!(stats.planned, planned.len(), "cut at {cut}");
            assert_eq!(stats.destructive, planned.len(), "cut at {cut}");
            // Only the final newline missing: the run-finished line is whole.
            let complete = cut >= whole.len() - 1;
            assert_eq!(
                merged
                    .iter()
                    .any(|e| matches!(e, Event::RunCancelled { .. })),
                !complete,
                "cut at {cut}: a cut stream is said to be cut"
            );
        }
    }

    #[test]
    fn a_bad_line_in_the_middle_is_still_an_error() {
        let whole = stream("a", &["T.a1", "T.a2"], true);
        let broken = whole.replacen("\n{", "\n{{", 1);
        let e = parse(Path::new("x.jsonl"), &broken).unwrap_err();
        assert!(e.to_string().starts_with("x.jsonl:2: not JSON"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin.jsonl");
        std::fs::write(&path, b"{\"v\":1}\n\xff\xfe\n").unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: not UTF-8 text", path.display())
        );
        let e = read(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read /"), "{e}");
    }

    /// What the JSON reporter left out (outputs sent as `test-output`) comes back.
    #[test]
    fn outputs_come_back_from_test_output_events() {
        use crate::events::{AttemptOutcome, AttemptReport};
        let report = AttemptReport {
            attempt: 1,
            outcome: AttemptOutcome::failed("exit code 1"),
            output: "part one, part two\n".into(),
            duration: Duration::ZERO,
            machines: vec![],
            artifacts: None,
            known: Default::default(),
            start_ms: None,
            boot: None,
        };
        let mut json = crate::reporter::json::JsonReporter::new(Vec::new());
        let t = info(1, "T.a");
        for e in [
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 1,
                tests: vec![t.clone()],
                shard: None,
                rerun: vec![],
                run: None,
            },
            Event::TestOutput {
                id: 1,
                attempt: 1,
                data: b"part one, ".to_vec(),
            },
            Event::TestOutput {
                id: 1,
                attempt: 1,
                data: b"part two\n".to_vec(),
            },
            Event::TestFinished {
                test: t,
                placement: Placement::Own,
                verdict: Verdict::Failed,
                attempts: vec![report.clone()],
            },
        ] {
            crate::reporter::Reporter::report(&mut json, &e).unwrap();
        }
        let text = String::from_utf8(json.into_inner()).unwrap();
        let merged = merge(&[parse(Path::new("a.jsonl"), &text).unwrap()]);
        let finished = merged.iter().find_map(|e| match e {
            Event::TestFinished { attempts, .. } => Some(attempts.clone()),
            _ => None,
        });
        assert_eq!(finished, Some(vec![report]));
    }

    #[test]
    fn bad_lines_are_errors_with_their_place() {
        let e = parse(Path::new("x.jsonl"), "{\"v\":1,\"event\":\"nope\"}\n").unwrap_err();
        assert!(
            e.to_string().starts_with("x.jsonl:1: not a vmcheck event"),
            "{e}"
        );
        let e = parse(Path::new("x.jsonl"), "\nnot json\n").unwrap_err();
        assert!(e.to_string().starts_with("x.jsonl:2: not JSON"), "{e}");
        let e = parse(Path::new("x.jsonl"), "{\"v\":9,\"event\":\"run-started\"}").unwrap_err();
        assert!(e.to_string().contains("version 9"), "{e}");
        let ok = stream("a", &["T.a"], true);
        let tail: String = ok.lines().skip(1).map(|l| format!("{l}\n")).collect();
        let e = parse(Path::new("x.jsonl"), &tail).unwrap_err();
        assert!(
            e.to_string().contains("does not start with a run-started"),
            "{e}"
        );
    }

    #[test]
    fn a_real_event_line_round_trips() {
        let e = Event::TestOutput {
            id: 3,
            attempt: 1,
            data: b"hello\n".to_vec(),
        };
        let back: Event = serde_json::from_str(&line(&e, 1.5)).unwrap();
        assert_eq!(back, e);
    }

    fn sharded(file: &str, index: usize, total: usize, split: &str) -> Stream {
        let mut s = parse(Path::new(file), &stream(file, &["T.x"], true)).unwrap();
        if let Some(Event::RunStarted { shard, .. }) = s.events.first_mut() {
            *shard = Some(crate::events::ShardInfo {
                index,
                total,
                split: split.into(),
            });
        }
        s
    }

    #[test]
    fn shards_must_come_from_one_split() {
        let ok = [sharded("a", 1, 2, "f00"), sharded("b", 2, 2, "f00")];
        assert_eq!(check_shards(&ok), Ok(None));
        let missing = check_shards(&[sharded("a", 1, 3, "f00")]).unwrap().unwrap();
        assert_eq!(
            missing,
            "shard 2, 3 of 3 missing: the merged report lacks their tests"
        );
        let e = check_shards(&[sharded("a", 1, 2, "f00"), sharded("b", 2, 2, "bad")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("b:1: shard 2/2 of split bad, but a is shard 1/2 of split f00"),
            "{e}"
        );
        let e = check_shards(&[sharded("a", 1, 2, "f00"), sharded("b", 1, 2, "f00")]).unwrap_err();
        assert_eq!(e.to_string(), "b:1: shard 1/2 is also in a");
        // Streams of unsharded runs are not shards of anything.
        let plain = parse(Path::new("c"), &stream("c", &["T.c"], true)).unwrap();
        assert_eq!(check_shards(&[plain]), Ok(None));
    }
}
