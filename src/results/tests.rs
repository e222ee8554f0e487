//! The results stage end to end, without machines: events recorded into a real SQLite
//! store, read back as durations and statistics.

use super::durations::Durations;
use super::record::{Fallback, Recorded, Recorder, Source, outcome_tag, verdict_tag};
use super::stats::{self, Query, State};
use super::store::Store;
use crate::events::{
    AttemptOutcome, AttemptReport, BootOrigin, Event, KnownIssues, Placement, RunMeta, ShardInfo,
    TestInfo, Verdict,
};
use std::time::Duration;

const DAY_MS: u64 = 24 * 3600 * 1000;
/// A fixed "now" for the durations view (2026-12-01).
const NOW: u64 = 1_796_083_200_000;

fn meta(id: &str, commit: &str, host: &str, start_ms: u64) -> RunMeta {
    RunMeta {
        id: id.into(),
        project: "proj".into(),
        commit: Some(commit.into()),
        dirty: false,
        image: Some("busybox-7fc128435cc5".into()),
        host: host.into(),
        start_ms,
        merged: Vec::new(),
    }
}

fn started(run: Option<RunMeta>, shard: Option<usize>) -> Event {
    Event::RunStarted {
        test_os: "busybox".into(),
        jobs: 1,
        tests: Vec::new(),
        shard: shard.map(|index| ShardInfo {
            index,
            total: 2,
            split: "x".into(),
        }),
        rerun: Vec::new(),
        run,
    }
}

fn attempt(n: u32, outcome: AttemptOutcome, secs: u64, start_ms: u64) -> AttemptReport {
    AttemptReport {
        attempt: n,
        outcome,
        output: String::new(),
        duration: Duration::from_secs(secs),
        machines: vec!["nd1".into()],
        artifacts: None,
        known: KnownIssues::default(),
        start_ms: Some(start_ms),
        boot: Some(BootOrigin::Restored),
    }
}

fn finished(name: &str, verdict: Verdict, attempts: Vec<AttemptReport>) -> Event {
    Event::TestFinished {
        test: TestInfo {
            id: 1,
            name: name.into(),
            file: "test/verify/check-a".into(),
            nondestructive: true,
            ram_mib: 0,
            os: None,
        },
        placement: Placement::Global(1),
        verdict,
        attempts,
    }
}

fn failed() -> AttemptOutcome {
    AttemptOutcome::failed("exit code 1")
}

fn harness() -> AttemptOutcome {
    AttemptOutcome::Harness {
        message: "boot timed out".into(),
        host_fault: false,
    }
}

fn fallback() -> Fallback {
    Fallback {
        id: "fallback".into(),
        project: "proj".into(),
        host: "unknown".into(),
        start_ms: 0,
    }
}

/// Record `events` as `source`; what each wrote.
fn record(store: &mut Store, source: Source, events: &[Event]) -> Vec<Recorded> {
    let mut r = Recorder::new(source, fallback());
    events.iter().map(|e| r.record(store, e).unwrap()).collect()
}

/// The tests of these runs, as a plan names them.
fn names() -> Vec<String> {
    ["T.testA", "T.testB", "T.testC", "T.testD"]
        .map(String::from)
        .to_vec()
}

fn count(store: &Store, table: &str) -> i64 {
    store
        .conn()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// One run on `host` at `start`: testA passes (2 s), testB fails then passes (flaky),
/// testC's machine fails then it passes, a shared machine restored in 1.5 s.
fn run_events(id: &str, commit: &str, host: &str, start: u64, shard: Option<usize>) -> Vec<Event> {
    vec![
        started(Some(meta(id, commit, host, start)), shard),
        Event::MachineReady {
            label: "nd1".into(),
            image: "busybox-7fc128435cc5".into(),
            boot: Duration::from_millis(1500),
            origin: Some(BootOrigin::Restored),
        },
        finished(
            "T.testA",
            Verdict::Passed,
            vec![attempt(1, AttemptOutcome::Passed, 2, start + 10)],
        ),
        finished(
            "T.testB",
            Verdict::Flaky,
            vec![
                attempt(1, failed(), 3, start + 20),
                attempt(2, AttemptOutcome::Passed, 5, start + 30),
            ],
        ),
        finished(
            "T.testC",
            Verdict::Passed,
            vec![
                attempt(1, harness(), 0, start + 40),
                attempt(2, AttemptOutcome::Passed, 1, start + 50),
            ],
        ),
    ]
}

#[test]
fn a_run_is_recorded_once_and_read_back_as_durations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/results.sqlite");
    let mut store = Store::open(&path).unwrap();
    let events = run_events("r1", "c1", "h1", NOW - DAY_MS, None);
    let wrote = record(&mut store, Source::Live, &events);
    assert_eq!(wrote[0], Recorded::Run { new: true });
    assert_eq!(
        wrote[2..],
        [
            Recorded::Attempts(1),
            Recorded::Attempts(2),
            Recorded::Attempts(2)
        ]
    );
    // The same stream again (imported after the run recorded itself) adds nothing.
    let again = record(&mut store, Source::Import, &events);
    assert_eq!(again[0], Recorded::Run { new: false });
    assert_eq!(count(&store, "runs"), 1);
    assert_eq!(count(&store, "attempts"), 5);
    assert_eq!(count(&store, "boots"), 1);

    let d = Durations::read(&store, "proj", "busybox", &names(), NOW).unwrap();
    assert_eq!(d.test("T.testA"), Some(Duration::from_secs(2)));
    // Both real results of testB count; the machine failure of testC does not.
    assert_eq!(d.test("T.testB"), Some(Duration::from_secs(4)));
    assert_eq!(d.tests["T.testC"], [Duration::from_secs(1)]);
    assert_eq!(d.boot(false), Some(Duration::from_millis(1500)));
    assert_eq!(d.boot(true), None, "no cold boot recorded");
    // Other projects, other OSes, and results older than 90 days are not read.
    assert!(
        Durations::read(&store, "other", "busybox", &names(), NOW)
            .unwrap()
            .tests
            .is_empty()
    );
    assert!(
        Durations::read(&store, "proj", "debian-12", &names(), NOW)
            .unwrap()
            .tests
            .is_empty()
    );
    let later = NOW + 91 * DAY_MS;
    assert!(
        Durations::read(&store, "proj", "busybox", &names(), later)
            .unwrap()
            .tests
            .is_empty()
    );
}

#[test]
fn a_shard_run_orders_later_runs_only_once_its_stream_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    let events = run_events("s1", "c1", "h1", NOW - DAY_MS, Some(1));
    record(&mut store, Source::Live, &events);
    assert_eq!(count(&store, "attempts"), 5, "its attempts are recorded");
    let d = Durations::read(&store, "proj", "busybox", &names(), NOW).unwrap();
    assert!(d.tests.is_empty() && d.restore.is_empty(), "{d:?}");
    record(&mut store, Source::Import, &events);
    assert_eq!(count(&store, "attempts"), 5);
    let d = Durations::read(&store, "proj", "busybox", &names(), NOW).unwrap();
    assert_eq!(d.test("T.testA"), Some(Duration::from_secs(2)));
}

#[test]
fn streams_without_run_metadata_and_merged_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    let mut old = run_events("ignored", "c", "h", NOW - DAY_MS, None);
    old[0] = started(None, None);
    let wrote = record(&mut store, Source::Import, &old);
    assert_eq!(wrote[0], Recorded::Run { new: true });
    let host: String = store
        .conn()
        .query_row("SELECT id || ' ' || host FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(host, "fallback unknown");
    // A merge's stream repeats its runs' attempts: it records nothing.
    let mut merged = run_events("m", "c", "h", NOW, None);
    if let Event::RunStarted { run: Some(r), .. } = &mut merged[0] {
        r.merged = vec!["a".into(), "b".into()];
    }
    let wrote = record(&mut store, Source::Import, &merged);
    assert!(wrote.iter().all(|w| *w == Recorded::Nothing), "{wrote:?}");
    assert_eq!(count(&store, "runs"), 1);
}

#[test]
fn tags_are_the_event_streams_names() {
    for o in [AttemptOutcome::Passed, failed(), harness()] {
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["outcome"], outcome_tag(&o));
    }
    for v in [
        Verdict::Passed,
        Verdict::Flaky,
        Verdict::KnownIssue { issue: 3 },
        Verdict::UnexpectedPass { reason: "r".into() },
    ] {
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], verdict_tag(&v));
    }
}

#[test]
fn stores_of_other_programs_and_versions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.sqlite");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let e = Store::open(&other).err().unwrap().to_string();
    assert!(e.contains("not a vmcheck outcome store"), "{e}");
    let newer = dir.path().join("newer.sqlite");
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = Store::open_existing(&newer).err().unwrap().to_string();
    assert!(e.contains("schema version 99"), "{e}");
    let text = dir.path().join("text");
    std::fs::write(
        &text,
        "not a database at all, but long enough to be read as a header",
    )
    .unwrap();
    let e = Store::open(&text).err().unwrap().to_string();
    assert!(e.starts_with(&format!("{}: ", text.display())), "{e}");
    assert!(
        Store::open_existing(&dir.path().join("missing"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn statistics_count_machine_failures_apart_and_find_the_last_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    record(
        &mut store,
        Source::Live,
        &run_events("r1", "c1", "h1", NOW - 2 * DAY_MS, None),
    );
    record(
        &mut store,
        Source::Live,
        &run_events("r2", "c2", "h2", NOW - DAY_MS, None),
    );
    // testD fails in each of four runs, the first time as a known issue.
    for i in 0..4u64 {
        let mut a = attempt(1, failed(), 1, NOW + 10 * i);
        a.known.own = vec![42];
        let verdict = match i {
            0 => Verdict::KnownIssue { issue: 42 },
            _ => Verdict::Failed,
        };
        let id = format!("r{}", 3 + i);
        let events = [
            started(
                Some(meta(&id, &format!("c{}", 3 + i), "h1", NOW + 10 * i)),
                None,
            ),
            finished("T.testD", verdict, vec![a]),
        ];
        record(&mut store, Source::Live, &events);
    }
    assert_eq!(count(&store, "known"), 4);

    let all = stats::report(&store, &Query::default()).unwrap().tests;
    let names: Vec<(&str, State)> = all.iter().map(|s| (s.test.as_str(), s.state)).collect();
    assert_eq!(
        names,
        [
            ("T.testD", State::Broken),
            ("T.testB", State::Flaky),
            ("T.testA", State::Healthy),
            ("T.testC", State::Healthy),
        ],
        "most troubled first"
    );
    let b = &all[1];
    assert_eq!((b.runs, b.failures, b.passed_on_retry), (4, 2, 2));
    assert_eq!(b.rate, 0.5);
    assert_eq!((b.wilson_low, b.wilson_high), stats::wilson(2, 4));
    assert_eq!(b.flip_rate, 1.0);
    assert_eq!(b.last_failure_commit.as_deref(), Some("c2"));
    assert_eq!(b.last_failure_ms, Some(NOW - DAY_MS + 20));
    let c = &all[3];
    assert_eq!((c.runs, c.failures, c.machine_failures), (2, 0, 2));
    assert_eq!(c.last_failure_ms, None);
    let d = &all[0];
    assert_eq!((d.runs, d.failures, d.wilson_high), (4, 4, 1.0));
    assert_eq!(d.last_failure_commit.as_deref(), Some("c6"));

    // Filters, OS and period.
    let q = Query {
        filters: vec!["testB".into()],
        since_ms: Some(NOW - DAY_MS),
        ..Default::default()
    };
    let only = stats::report(&store, &q).unwrap().tests;
    assert_eq!(only.len(), 1);
    assert_eq!(
        (only[0].runs, only[0].failures),
        (2, 1),
        "only the last run's"
    );
    let q = Query {
        os: Some("debian-12".into()),
        ..Default::default()
    };
    assert!(stats::report(&store, &q).unwrap().tests.is_empty());

    let hosts = stats::report(&store, &Query::default()).unwrap().hosts;
    let hosts: Vec<(&str, u64, u64)> = hosts
        .iter()
        .map(|h| (h.host.as_str(), h.machine_failures, h.attempts))
        .collect();
    assert_eq!(hosts, [("h1", 1, 9), ("h2", 1, 5)], "h1 ran testD 4 times");
}

#[test]
fn failure_rates_by_commit_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    record(
        &mut store,
        Source::Live,
        &run_events("r1", "c1", "h", NOW, None),
    );
    record(
        &mut store,
        Source::Live,
        &run_events("r2", "c2", "h", NOW + DAY_MS, None),
    );
    let mut dirty = run_events("r3", "c2", "h", NOW + 2 * DAY_MS, None);
    if let Event::RunStarted { run: Some(r), .. } = &mut dirty[0] {
        r.dirty = true;
    }
    record(&mut store, Source::Live, &dirty);
    let rows = stats::by_commit(&store, &Query::default(), "T.testB").unwrap();
    let got: Vec<(Option<&str>, bool, u64, u64)> = rows
        .iter()
        .map(|r| (r.commit.as_deref(), r.dirty, r.runs, r.failures))
        .collect();
    assert_eq!(got, [(Some("c1"), false, 2, 1), (Some("c2"), true, 4, 2)]);
    assert_eq!(rows[0].first_ms, NOW + 20);
    assert!(
        stats::by_commit(&store, &Query::default(), "T.none")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn known_issues_are_counted_per_os_and_stale_outside_the_window() {
    use super::known::{Window, occurrences};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("r.sqlite")).unwrap();
    // Two runs on busybox: the first matched #7 (own) and #9 of debian-12 (other).
    for (i, start) in [(1, NOW - 30 * DAY_MS), (2, NOW)] {
        let mut a = attempt(1, failed(), 1, start + 5);
        if i == 1 {
            a.known.own = vec![7];
            a.known.other = vec![(9, "debian-12".into())];
        }
        let events = [
            started(Some(meta(&format!("r{i}"), "c", "h", start)), None),
            finished("T.testK", Verdict::Failed, vec![a]),
        ];
        record(&mut store, Source::Live, &events);
    }
    let week = Window::Since(NOW - 21 * DAY_MS);
    let seven = occurrences(&store, "proj", 7, "busybox", week).unwrap();
    assert_eq!(
        (seven.count, seven.first_ms, seven.stale),
        (1, Some(NOW - 30 * DAY_MS + 5), true)
    );
    assert!(
        !occurrences(
            &store,
            "proj",
            7,
            "busybox",
            Window::Since(NOW - 40 * DAY_MS)
        )
        .unwrap()
        .stale
    );
    assert!(
        occurrences(&store, "proj", 7, "busybox", Window::Runs(1))
            .unwrap()
            .stale
    );
    assert!(
        !occurrences(&store, "proj", 7, "busybox", Window::Runs(2))
            .unwrap()
            .stale
    );
    // #9 is debian-12's pattern, matched on a busybox run.
    let nine = occurrences(&store, "proj", 9, "debian-12", Window::Since(0)).unwrap();
    assert_eq!((nine.count, nine.stale), (1, false));
    assert_eq!(
        occurrences(&store, "proj", 9, "busybox", Window::Since(0))
            .unwrap()
            .count,
        0
    );
    // #7 on debian-12 never matched.
    let never = occurrences(&store, "proj", 7, "debian-12", Window::Since(0)).unwrap();
    assert_eq!((never.count, never.last_ms, never.stale), (0, None, true));
}

/// A run on several TEST_OS is recorded as one run per OS (`<id>/<os>`), each test under its
/// own name beside its OS, and each boot under the OS it booted: what a later run on one of
/// them reads back is that OS's.
#[test]
fn a_run_on_several_test_os_is_recorded_per_os() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("results.sqlite")).unwrap();
    let on = |os: &str, name: &str, secs: u64| match finished(
        &format!("T.testA[TEST_OS={os}{name}]"),
        Verdict::Passed,
        vec![attempt(1, AttemptOutcome::Passed, secs, NOW - 10)],
    ) {
        Event::TestFinished {
            mut test,
            placement,
            verdict,
            attempts,
        } => {
            test.os = Some(os.into());
            Event::TestFinished {
                test,
                placement,
                verdict,
                attempts,
            }
        }
        _ => unreachable!(),
    };
    let mut start = started(Some(meta("r1", "c1", "h1", NOW - 100)), None);
    if let Event::RunStarted { test_os, .. } = &mut start {
        *test_os = "busybox,debian-12".into();
    }
    let boot = |image: &str, ms: u64| Event::MachineReady {
        label: "nd1".into(),
        image: image.into(),
        boot: Duration::from_millis(ms),
        origin: Some(BootOrigin::Restored),
    };
    let events = [
        start,
        boot("debian-12-0123abcd", 9000),
        boot("busybox-7fc128435cc5", 1000),
        on("busybox", "", 2),
        on("debian-12", "", 20),
        on("debian-12", ",fs=xfs", 30),
    ];
    let wrote = record(&mut store, Source::Live, &events);
    assert_eq!(
        wrote,
        [
            Recorded::Run { new: true },
            Recorded::Boot,
            Recorded::Boot,
            Recorded::Attempts(1),
            Recorded::Attempts(1),
            Recorded::Attempts(1)
        ]
    );
    assert_eq!(count(&store, "runs"), 2);
    let names = ["T.testA".to_string(), "T.testA[fs=xfs]".to_string()];
    let busybox = Durations::read(&store, "proj", "busybox", &names, NOW).unwrap();
    assert_eq!(busybox.test("T.testA"), Some(Duration::from_secs(2)));
    assert_eq!(busybox.test("T.testA[fs=xfs]"), None);
    assert_eq!(busybox.restore, [Duration::from_millis(1000)]);
    let debian = Durations::read(&store, "proj", "debian-12", &names, NOW).unwrap();
    assert_eq!(debian.test("T.testA"), Some(Duration::from_secs(20)));
    assert_eq!(
        debian.test("T.testA[fs=xfs]"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(debian.restore, [Duration::from_millis(9000)]);
    // Imported again, it adds nothing.
    let again = record(&mut store, Source::Import, &events);
    assert_eq!(again[0], Recorded::Run { new: false });
    assert_eq!(count(&store, "attempts"), 3);
}
