//! A status file (`--status-file FILE`): a JSON snapshot of the run, rewritten atomically
//! (temporary file + rename) for dashboards and for people looking at a long CI run from
//! outside. It holds every test's state (`queued`, `waiting` with the reason it waits,
//! `preparing`, `running`, `retrying`, `finished` with its verdict), the counts by state, and every shared machine's state with the test it is
//! running or since when it is idle.
//!
//! Events only update the snapshot in memory (O(1) each); a writer thread rewrites the
//! file at most every [`INTERVAL`] while something changed, and `run-finished` writes it
//! once more before it returns. Rewriting the whole file on every event cost O(tests) per
//! event, O(tests²) per run, on the dispatcher's thread.

use super::Reporter;
use crate::events::{Event, Placement, Verdict, global_label};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the file is rewritten at most while the run goes on.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// Version of the status file format.
pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
struct TestStatus {
    id: usize,
    name: String,
    file: PathBuf,
    /// `queued`, `waiting` (first in line, but the host has no room for it yet: see
    /// `reason`), `preparing` (machines are handed over or booting), `running`, `retrying`
    /// (an attempt failed, the next one is waiting) or `finished`.
    state: &'static str,
    /// Why a `waiting` test waits, e.g. `needs 1.6 GiB of RAM, 0.9 GiB free`.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    attempt: u32,
    /// Where it runs: `nd1` (a shared machine) or `own`.
    #[serde(skip_serializing_if = "Option::is_none")]
    machine: Option<String>,
    /// The labels of the machines the current attempt runs on, once they are ready.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    machines: Vec<String>,
    /// When the current attempt started (seconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
}

#[derive(Debug, Clone, Serialize)]
struct MachineStatus {
    image: String,
    /// `idle`, `busy`, `failed` or `replacing`.
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    test: Option<String>,
    /// Since when it is in this state (seconds since the epoch).
    since: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Status {
    v: u32,
    test_os: String,
    started: f64,
    updated: f64,
    finished: bool,
    counts: BTreeMap<&'static str, usize>,
    tests: Vec<TestStatus>,
    machines: BTreeMap<String, MachineStatus>,
}

/// What the reporter and its writer thread share.
struct Shared {
    status: Status,
    /// Changed since the last write.
    dirty: bool,
    /// The run is over (or the reporter dropped): the writer stops.
    done: bool,
    /// The first failed write of the writer thread, for the next event to return.
    error: Option<std::io::Error>,
    /// Files written, for tests.
    writes: usize,
}

pub struct StatusReporter {
    path: PathBuf,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Position in `status.tests` by test id.
    index: HashMap<usize, usize>,
    writer: Option<std::thread::JoinHandle<()>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0)
        .unwrap_or(0.0)
}

fn where_runs(placement: &Placement) -> Option<String> {
    match placement {
        Placement::Global(k) => Some(global_label(*k)),
        Placement::Own => Some("own".into()),
        Placement::None => None,
    }
}

fn lock(shared: &(Mutex<Shared>, Condvar)) -> MutexGuard<'_, Shared> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// The snapshot as JSON, with its counts and time brought up to date.
fn render(s: &mut Status) -> std::io::Result<Vec<u8>> {
    s.updated = now();
    s.counts.clear();
    for t in &s.tests {
        let key = match (&t.state, &t.verdict) {
            (_, Some(v)) if v.is_success() => match v {
                Verdict::Passed => "passed",
                Verdict::Flaky => "flaky",
                Verdict::Todo { .. } => "todo",
                _ => "skipped",
            },
            (_, Some(Verdict::Error { .. })) => "errors",
            (_, Some(_)) => "failed",
            (state, None) => state,
        };
        *s.counts.entry(key).or_default() += 1;
    }
    serde_json::to_vec_pretty(s).map_err(std::io::Error::other)
}

/// Replace `path` with `json` atomically (a private temporary file beside it, renamed over;
/// written in place if `path` is a device or a pipe, never renamed over).
fn replace(path: &Path, json: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = super::file::ReportFile::replaced(path)?;
    file.write_all(json)?;
    file.flush()
}

/// The writer thread: waits for a change, writes, rests [`INTERVAL`], until done.
fn write_loop(path: PathBuf, shared: Arc<(Mutex<Shared>, Condvar)>) {
    let mut g = lock(&shared);
    loop {
        while !g.dirty && !g.done {
            g = shared.1.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        if g.done {
            return;
        }
        g.dirty = false;
        let json = render(&mut g.status);
        drop(g);
        let written = json.and_then(|json| replace(&path, &json));
        g = lock(&shared);
        g.writes += 1;
        if let Err(e) = written {
            g.error.get_or_insert(e);
        }
        drop(g);
        std::thread::sleep(INTERVAL);
        g = lock(&shared);
    }
}

impl StatusReporter {
    pub fn new(path: PathBuf) -> StatusReporter {
        let t = now();
        let shared = Arc::new((
            Mutex::new(Shared {
                status: Status {
                    v: STATUS_VERSION,
                    test_os: String::new(),
                    started: t,
                    updated: t,
                    finished: false,
                    counts: BTreeMap::new(),
                    tests: Vec::new(),
                    machines: BTreeMap::new(),
                },
                dirty: false,
                done: false,
                error: None,
                writes: 0,
            }),
            Condvar::new(),
        ));
        let writer = {
            let (path, shared) = (path.clone(), shared.clone());
            std::thread::Builder::new()
                .name("vmcheck-status".into())
                .spawn(move || write_loop(path, shared))
                .ok()
        };
        StatusReporter {
            path,
            shared,
            index: HashMap::new(),
            writer,
        }
    }

    fn stop_writer(&mut self) {
        lock(&self.shared).done = true;
        self.shared.1.notify_all();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }

    /// Stop the writer thread and write the final snapshot now.
    fn finish(&mut self) -> std::io::Result<()> {
        self.stop_writer();
        let mut g = lock(&self.shared);
        if let Some(e) = g.error.take() {
            return Err(e);
        }
        g.writes += 1;
        let json = render(&mut g.status)?;
        replace(&self.path, &json)
    }

    /// Update the snapshot in memory; the writer thread writes it.
    fn update(&mut self, event: &Event) {
        if let Event::RunStarted { tests, .. } = event {
            self.index = tests.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        }
        let index = &self.index;
        let mut g = lock(&self.shared);
        let s = &mut g.status;
        let test = |s: &mut Status, id: usize| -> Option<usize> {
            index.get(&id).copied().filter(|&i| i < s.tests.len())
        };
        let machine = |s: &mut Status, label: &str, state: &'static str, test: Option<String>| {
            if let Some(m) = s.machines.get_mut(label) {
                m.state = state;
                m.test = test;
                m.since = now();
            }
        };
        match event {
            Event::RunStarted { test_os, tests, .. } => {
                s.test_os = test_os.clone();
                s.tests = tests
                    .iter()
                    .map(|t| TestStatus {
                        id: t.id,
                        name: t.name.clone(),
                        file: t.file.clone(),
                        state: "queued",
                        reason: None,
                        attempt: 0,
                        machine: None,
                        machines: Vec::new(),
                        since: None,
                        verdict: None,
                    })
                    .collect();
            }
            Event::MachineReady { label, image, .. } => {
                s.machines.insert(
                    label.clone(),
                    MachineStatus {
                        image: image.clone(),
                        state: "idle",
                        test: None,
                        since: now(),
                    },
                );
            }
            Event::MachineFailed { label, .. } => machine(s, label, "failed", None),
            Event::MachineReset { label, .. } => machine(s, label, "replacing", None),
            Event::TestStarted {
                test: info,
                attempt,
                placement,
            } => {
                if let Placement::Global(k) = placement {
                    machine(s, &global_label(*k), "busy", Some(info.name.clone()));
                }
                if let Some(i) = test(s, info.id) {
                    let t = &mut s.tests[i];
                    t.state = "preparing";
                    t.reason = None;
                    t.attempt = *attempt;
                    t.machine = where_runs(placement);
                    t.since = Some(now());
                }
            }
            Event::AttemptRetry {
                test: info,
                placement,
                ..
            }
            | Event::TestFinished {
                test: info,
                placement,
                ..
            } => {
                if let Placement::Global(k) = placement {
                    let label = global_label(*k);
                    if s.machines.get(&label).map(|m| m.state) == Some("busy") {
                        machine(s, &label, "idle", None);
                    }
                }
                let verdict = match event {
                    Event::TestFinished { verdict, .. } => Some(verdict.clone()),
                    _ => None,
                };
                if let Some(i) = test(s, info.id) {
                    let t = &mut s.tests[i];
                    t.state = if verdict.is_some() {
                        "finished"
                    } else {
                        "retrying"
                    };
                    t.since = None;
                    t.verdict = verdict;
                }
            }
            Event::TestWaiting { id, reason, .. } => {
                if let Some(i) = test(s, *id) {
                    s.tests[i].state = "waiting";
                    s.tests[i].reason = Some(reason.clone());
                }
            }
            Event::TestRunning { id, machines, .. } => {
                if let Some(i) = test(s, *id) {
                    s.tests[i].state = "running";
                    s.tests[i].machines = machines.clone();
                }
            }
            Event::RunFinished { .. } => s.finished = true,
            Event::TestOutput { .. }
            | Event::SoakStarted { .. }
            | Event::SoakEvent { .. }
            | Event::RunCancelled { .. }
            | Event::KnownIssuePassed { .. } => return,
        }
        g.dirty = true;
        drop(g);
        self.shared.1.notify_all();
    }
}

impl Drop for StatusReporter {
    fn drop(&mut self) {
        let g = lock(&self.shared);
        let (done, started) = (g.done, !g.status.tests.is_empty());
        drop(g);
        if done {
            return;
        }
        if started {
            // A run that ended without run-finished: the last state it had.
            let _ = self.finish();
        } else {
            // Nothing started: the file is left as it was.
            self.stop_writer();
        }
    }
}

impl Reporter for StatusReporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        self.update(event);
        if matches!(event, Event::RunFinished { .. }) {
            return self.finish();
        }
        match lock(&self.shared).error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::TestInfo;
    use std::os::unix::fs::FileTypeExt;

    fn info(id: usize) -> TestInfo {
        TestInfo {
            id,
            name: format!("TestA.t{id}"),
            file: "check-a".into(),
            nondestructive: true,
            ram_mib: 0,
            os: None,
        }
    }

    /// The file once `ready` holds for it (the writer thread writes it soon after a change).
    fn read_when(
        path: &std::path::Path,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(path) {
                last = serde_json::from_str(&text).unwrap();
                if ready(&last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the status file did not follow: {last:#}")
    }

    #[test]
    fn the_file_follows_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut r = StatusReporter::new(path.clone());
        r.report(&Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: vec![info(1), info(2)],
            shard: None,
            rerun: vec![],
            run: None,
        })
        .unwrap();
        r.report(&Event::MachineReady {
            label: global_label(1),
            image: "busybox".into(),
            boot: Default::default(),
            origin: None,
        })
        .unwrap();
        r.report(&Event::TestStarted {
            test: info(1),
            attempt: 1,
            placement: Placement::Global(1),
        })
        .unwrap();
        let s = read_when(&path, |s| s["counts"]["preparing"] == 1);
        assert_eq!(s["machines"]["nd1"]["state"], "busy");
        r.report(&Event::TestRunning {
            id: 1,
            attempt: 1,
            machines: vec!["nd1".into()],
        })
        .unwrap();
        let s = read_when(&path, |s| s["counts"]["running"] == 1);
        assert_eq!(s["tests"][0]["machines"][0], "nd1");
        assert_eq!(s["counts"]["queued"], 1);
        assert_eq!(s["tests"][0]["machine"], "nd1");
        assert_eq!(s["machines"]["nd1"]["state"], "busy");
        assert_eq!(s["machines"]["nd1"]["test"], "TestA.t1");
        r.report(&Event::TestFinished {
            test: info(1),
            placement: Placement::Global(1),
            verdict: Verdict::Passed,
            attempts: vec![],
        })
        .unwrap();
        let s = read_when(&path, |s| s["counts"]["passed"] == 1);
        assert_eq!(s["tests"][0]["state"], "finished");
        assert_eq!(s["tests"][0]["verdict"]["verdict"], "passed");
        assert_eq!(s["machines"]["nd1"]["state"], "idle");
        assert_eq!(s["finished"], false);
        r.report(&Event::RunFinished {
            stats: Default::default(),
            wall: Default::default(),
            unmatched_known: vec![],
        })
        .unwrap();
        // Written before run-finished returns, and no temporary file is left.
        assert_eq!(read_when(&path, |_| true)["finished"], true);
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn writes_are_bounded_by_time_not_by_events() {
        // 2000 tests, 6000 events in a burst: the file is not rewritten per event (that was
        // 6000 writes of 2000 tests each).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut r = StatusReporter::new(path.clone());
        let tests: Vec<TestInfo> = (1..=2000).map(info).collect();
        let started = std::time::Instant::now();
        r.report(&Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: tests.clone(),
            shard: None,
            rerun: vec![],
            run: None,
        })
        .unwrap();
        for t in &tests {
            r.report(&Event::TestStarted {
                test: t.clone(),
                attempt: 1,
                placement: Placement::Own,
            })
            .unwrap();
            r.report(&Event::TestRunning {
                id: t.id,
                attempt: 1,
                machines: vec![],
            })
            .unwrap();
            r.report(&Event::TestFinished {
                test: t.clone(),
                placement: Placement::Own,
                verdict: Verdict::Passed,
                attempts: vec![],
            })
            .unwrap();
        }
        r.report(&Event::RunFinished {
            stats: Default::default(),
            wall: Default::default(),
            unmatched_known: vec![],
        })
        .unwrap();
        let bound = started.elapsed().as_millis() / INTERVAL.as_millis() + 2;
        let writes = lock(&r.shared).writes;
        assert!(writes as u128 <= bound, "{writes} writes (at most {bound})");
        let s = read_when(&path, |_| true);
        assert_eq!(s["counts"]["passed"], 2000);
        assert_eq!(s["finished"], true);
    }

    #[test]
    fn a_run_that_never_started_leaves_the_file_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, "earlier").unwrap();
        drop(StatusReporter::new(path.clone()));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "earlier");
    }

    /// `--status-file /dev/null` (or a link) is written, never renamed over.
    #[test]
    fn a_device_or_a_link_is_written_not_replaced() {
        replace(Path::new("/dev/null"), b"{}").unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("status.json");
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        std::fs::write(&target, "old").unwrap();
        replace(&link, b"{}").unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");
    }

    #[test]
    fn a_write_that_fails_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/status.json");
        let mut r = StatusReporter::new(path);
        let started = Event::RunStarted {
            test_os: "busybox".into(),
            jobs: 1,
            tests: vec![info(1)],
            shard: None,
            rerun: vec![],
            run: None,
        };
        // The writer thread's failure comes with a later event, run-finished's at once.
        let first = r.report(&started);
        let finished = Event::RunFinished {
            stats: Default::default(),
            wall: Default::default(),
            unmatched_known: vec![],
        };
        assert!(first.is_err() || r.report(&finished).is_err());
    }
}
