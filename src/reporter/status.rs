//! A status file (`--status-file FILE`): a JSON snapshot of the run, rewritten atomically
//! (temporary file + rename) whenever something changes, for dashboards and for people
//! looking at a long CI run from outside. It holds every test's state (`queued`, `running`,
//! `retrying`, `finished` with its verdict), the counts by state, and every shared machine's
//! state with the test it is running or since when it is idle.

use super::Reporter;
use crate::events::{Event, Placement, TestInfo, Verdict, global_label};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Version of the status file format.
pub const STATUS_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
struct TestStatus {
    id: usize,
    name: String,
    file: PathBuf,
    /// `queued`, `preparing` (machines are handed over or booting), `running`, `retrying`
    /// (an attempt failed, the next one is waiting) or `finished`.
    state: &'static str,
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

pub struct StatusReporter {
    path: PathBuf,
    status: Status,
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

impl StatusReporter {
    pub fn new(path: PathBuf) -> StatusReporter {
        let t = now();
        StatusReporter {
            path,
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
        }
    }

    fn test(&mut self, info: &TestInfo) -> Option<&mut TestStatus> {
        self.status.tests.iter_mut().find(|t| t.id == info.id)
    }

    fn machine(&mut self, label: &str, state: &'static str, test: Option<String>) {
        if let Some(m) = self.status.machines.get_mut(label) {
            m.state = state;
            m.test = test;
            m.since = now();
        }
    }

    fn write(&mut self) -> std::io::Result<()> {
        let s = &mut self.status;
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
        let json = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &self.path)
    }
}

impl Reporter for StatusReporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted { test_os, tests, .. } => {
                self.status.test_os = test_os.clone();
                self.status.tests = tests
                    .iter()
                    .map(|t| TestStatus {
                        id: t.id,
                        name: t.name.clone(),
                        file: t.file.clone(),
                        state: "queued",
                        attempt: 0,
                        machine: None,
                        machines: Vec::new(),
                        since: None,
                        verdict: None,
                    })
                    .collect();
            }
            Event::MachineReady { label, image, .. } => {
                self.status.machines.insert(
                    label.clone(),
                    MachineStatus {
                        image: image.clone(),
                        state: "idle",
                        test: None,
                        since: now(),
                    },
                );
            }
            Event::MachineFailed { label, .. } => self.machine(label, "failed", None),
            Event::MachineReset { label, .. } => self.machine(label, "replacing", None),
            Event::TestStarted {
                test,
                attempt,
                placement,
            } => {
                let machine = where_runs(placement);
                if let Placement::Global(k) = placement {
                    self.machine(&global_label(*k), "busy", Some(test.name.clone()));
                }
                if let Some(t) = self.test(test) {
                    t.state = "preparing";
                    t.attempt = *attempt;
                    t.machine = machine;
                    t.since = Some(now());
                }
            }
            Event::AttemptRetry {
                test, placement, ..
            }
            | Event::TestFinished {
                test, placement, ..
            } => {
                if let Placement::Global(k) = placement {
                    let label = global_label(*k);
                    if self.status.machines.get(&label).map(|m| m.state) == Some("busy") {
                        self.machine(&label, "idle", None);
                    }
                }
                let verdict = match event {
                    Event::TestFinished { verdict, .. } => Some(verdict.clone()),
                    _ => None,
                };
                if let Some(t) = self.test(test) {
                    t.state = if verdict.is_some() {
                        "finished"
                    } else {
                        "retrying"
                    };
                    t.since = None;
                    t.verdict = verdict;
                }
            }
            Event::TestRunning { id, machines, .. } => {
                if let Some(t) = self.status.tests.iter_mut().find(|t| t.id == *id) {
                    t.state = "running";
                    t.machines = machines.clone();
                }
            }
            Event::RunFinished { .. } => self.status.finished = true,
            Event::TestOutput { .. }
            | Event::RunCancelled { .. }
            | Event::KnownIssuePassed { .. } => {
                return Ok(());
            }
        }
        self.write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: usize) -> TestInfo {
        TestInfo {
            id,
            name: format!("TestA.t{id}"),
            file: "check-a".into(),
            nondestructive: true,
            ram_mib: 0,
        }
    }

    fn read(path: &std::path::Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
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
        let s = read(&path);
        assert_eq!(s["counts"]["preparing"], 1);
        r.report(&Event::TestRunning {
            id: 1,
            attempt: 1,
            machines: vec!["nd1".into()],
        })
        .unwrap();
        let s = read(&path);
        assert_eq!(s["counts"]["running"], 1);
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
        let s = read(&path);
        assert_eq!(s["counts"]["passed"], 1);
        assert_eq!(s["tests"][0]["state"], "finished");
        assert_eq!(s["tests"][0]["verdict"]["verdict"], "passed");
        assert_eq!(s["machines"]["nd1"]["state"], "idle");
        assert_eq!(s["finished"], false);
        assert!(!dir.path().join("status.tmp").exists());
    }
}
