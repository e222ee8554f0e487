//! The HTML report (`run --html DIR`, `vmcheck report STREAM... --html DIR`): one static
//! page, `DIR/index.html`, that opens from `file://` with no network: its script and style
//! are inside it (`report.html`), and so is the run, as one JSON document the script
//! renders (failed, flaky and retried tests first; a "problems only" filter; search; each
//! attempt with its output, machines, known issues and artifacts; a timeline of the run;
//! each test's recent verdicts from the outcome store).
//!
//! Nothing a test printed reaches the page as markup: output is stripped of terminal
//! escapes and control characters here, the JSON is put in a `<script type=
//! "application/json">` with every `<`, `>` and `&` escaped, and the script builds the page
//! with text nodes only. The page is written when the run finishes, to a temporary file
//! renamed over the last one.

use super::Reporter;
use crate::events::{AttemptReport, Event, Placement, RunMeta, TestInfo, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The page: its script reads the element `#run`, which this module fills.
const PAGE: &str = include_str!("report.html");
/// Where the run's JSON goes in [`PAGE`].
const SLOT: &str = "<!--RUN-->";

/// Most bytes of a passed attempt's output in the page (a failed one's is all there is:
/// the attempt's shown output, itself bounded).
const PASSED_OUTPUT: usize = 8 * 1024;
/// Most verdicts of a test's history shown.
pub const HISTORY: usize = 20;

/// The recent verdicts of each test, newest first (from the outcome store).
pub type History = Box<dyn FnOnce(&RunData) -> Vec<Vec<String>> + Send>;

pub struct HtmlReporter {
    dir: PathBuf,
    run: RunData,
    /// Tests by id, as they finish.
    finished: BTreeMap<usize, TestData>,
    /// Each machine that booted apart from a test (a shared one): its label and how long
    /// it took, in seconds.
    boots: Vec<(String, f64)>,
    history: Option<History>,
    written: bool,
}

/// The run as the page's script reads it.
#[derive(Debug, Default, Serialize)]
pub struct RunData {
    pub test_os: String,
    pub run: Option<RunMeta>,
    pub wall: f64,
    pub cancelled: Option<String>,
    pub tests: Vec<TestData>,
    /// Lanes of the timeline: each a machine slot, with what ran on it.
    pub lanes: Vec<Lane>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestData {
    pub id: usize,
    pub name: String,
    pub file: String,
    pub os: Option<String>,
    /// `passed`, `flaky`, `failed`, ... (the outcome store's words), or `not-run`.
    pub verdict: String,
    /// How the verdict came about, in one line (the failure, the skip reason).
    pub detail: String,
    pub attempts: Vec<AttemptData>,
    /// Recent verdicts before this run, newest first.
    pub history: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptData {
    pub attempt: u32,
    pub outcome: String,
    pub describe: String,
    /// Seconds.
    pub duration: f64,
    pub start_ms: Option<u64>,
    pub machines: Vec<String>,
    pub boot: Option<String>,
    pub known: Vec<String>,
    /// The attempt's artifacts, relative to the report's directory where it can be.
    pub artifacts: Option<String>,
    pub output: String,
    /// Bytes of output left out of the page.
    pub cut: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    pub name: String,
    pub bars: Vec<Bar>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    /// Milliseconds since the epoch.
    pub start: u64,
    pub end: u64,
    /// `boot`, or the attempt's outcome.
    pub kind: String,
    /// The test's id (0 for a boot).
    pub test: usize,
    pub label: String,
}

/// Each test's recent verdicts from the outcome store at `path`, if there is one (a store
/// that cannot be read is a warning, and the report has no history).
pub fn store_history(path: PathBuf) -> History {
    Box::new(move |run: &RunData| {
        let none = vec![Vec::new(); run.tests.len()];
        let Some(meta) = &run.run else { return none };
        let store = match crate::results::store::Store::open_existing(&path) {
            Ok(Some(store)) => store,
            Ok(None) => return none,
            Err(e) => {
                crate::say!("vmcheck: warning: outcome store {e}; the report has no history");
                return none;
            }
        };
        let tests: Vec<(String, String)> = run
            .tests
            .iter()
            .map(|t| match &t.os {
                Some(os) => (crate::checkfile::strip_os(&t.name, os), os.clone()),
                None => (t.name.clone(), run.test_os.clone()),
            })
            .collect();
        let mut except = meta.merged.clone();
        except.push(meta.id.clone());
        match store.recent_verdicts(&meta.project, &tests, &except, HISTORY) {
            Ok(h) => h,
            Err(e) => {
                crate::say!("vmcheck: warning: outcome store {e}; the report has no history");
                none
            }
        }
    })
}

impl HtmlReporter {
    /// A report into `dir` (created private if missing, left as it is if not: it may be
    /// the user's own; the page is private either way): checked before the run starts.
    pub fn create(dir: &Path, history: Option<History>) -> std::io::Result<HtmlReporter> {
        crate::runner::artifacts::create_private_dir(dir)?;
        // A file we may not replace fails now, not after the run.
        let probe = tempfile::Builder::new()
            .prefix(".index.html.")
            .tempfile_in(dir)?;
        drop(probe);
        Ok(HtmlReporter {
            dir: dir.to_path_buf(),
            run: RunData::default(),
            finished: BTreeMap::new(),
            boots: Vec::new(),
            history,
            written: false,
        })
    }

    fn write(&mut self) -> std::io::Result<()> {
        if self.written {
            return Ok(());
        }
        self.written = true;
        let mut run = std::mem::take(&mut self.run);
        // Plan order; tests that never finished (a cancelled run) stay as planned.
        for t in &mut run.tests {
            if let Some(done) = self.finished.remove(&t.id) {
                *t = done;
            }
        }
        run.lanes = lanes(&run.tests, &self.boots);
        if let Some(history) = self.history.take() {
            let recent = history(&run);
            for (t, h) in run.tests.iter_mut().zip(recent) {
                t.history = h;
            }
        }
        let page = page(&run)?;
        let mut file = tempfile::Builder::new()
            .prefix(".index.html.")
            .tempfile_in(&self.dir)?;
        std::io::Write::write_all(&mut file, page.as_bytes())?;
        file.as_file().sync_all()?;
        file.persist(self.dir.join("index.html"))
            .map_err(|e| e.error)?;
        Ok(())
    }
}

impl Reporter for HtmlReporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        match event {
            Event::RunStarted {
                test_os,
                tests,
                run,
                ..
            } => {
                self.run.test_os = test_os.clone();
                self.run.run = run.clone();
                self.run.tests = tests.iter().map(not_run).collect();
            }
            Event::MachineReady { label, boot, .. } => {
                self.boots.push((label.clone(), boot.as_secs_f64()));
            }
            Event::TestFinished {
                test,
                verdict,
                attempts,
                placement,
            } => {
                let data = test_data(test, verdict, attempts, placement, &self.dir);
                self.finished.insert(test.id, data);
            }
            Event::RunCancelled { reason } => self.run.cancelled = Some(reason.clone()),
            Event::RunFinished { wall, .. } => {
                self.run.wall = wall.as_secs_f64();
                self.write()?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// A planned test before it finished.
fn not_run(t: &TestInfo) -> TestData {
    TestData {
        id: t.id,
        name: t.name.clone(),
        file: t.file.display().to_string(),
        os: t.os.clone(),
        verdict: "not-run".into(),
        detail: "the test did not finish".into(),
        attempts: Vec::new(),
        history: Vec::new(),
    }
}

fn test_data(
    t: &TestInfo,
    verdict: &Verdict,
    attempts: &[AttemptReport],
    placement: &Placement,
    dir: &Path,
) -> TestData {
    let detail = match verdict {
        Verdict::Passed | Verdict::Flaky => {
            crate::events::machine_failure_note(attempts).unwrap_or_default()
        }
        Verdict::Skipped { reason } | Verdict::Todo { reason } => reason.clone(),
        v => v.describe_failure(attempts.last()),
    };
    TestData {
        id: t.id,
        name: t.name.clone(),
        file: t.file.display().to_string(),
        os: t.os.clone(),
        verdict: crate::results::record::verdict_tag(verdict).into(),
        detail: super::text::one_line(&super::text::strip_escapes(&detail)),
        attempts: attempts
            .iter()
            .map(|a| attempt_data(a, placement, dir))
            .collect(),
        history: Vec::new(),
    }
}

fn attempt_data(a: &AttemptReport, placement: &Placement, dir: &Path) -> AttemptData {
    let text = super::text::strip_escapes(&a.output);
    let mut output = super::text::safe_lines(&text).join("\n");
    let mut cut = 0;
    if a.outcome == crate::events::AttemptOutcome::Passed && output.len() > PASSED_OUTPUT {
        let mut from = output.len() - PASSED_OUTPUT;
        while !output.is_char_boundary(from) {
            from += 1;
        }
        cut = from;
        output = output[from..].to_string();
    }
    let mut machines = a.machines.clone();
    if let Placement::Global(n) = placement {
        machines.insert(0, format!("shared machine {n}"));
    }
    AttemptData {
        attempt: a.attempt,
        outcome: crate::results::record::outcome_tag(&a.outcome).into(),
        describe: super::text::one_line(&super::text::strip_escapes(&a.describe())),
        duration: a.duration.as_secs_f64(),
        start_ms: a.start_ms,
        machines,
        boot: a.boot.map(|b| format!("{b:?}").to_lowercase()),
        known: a
            .known
            .own
            .iter()
            .map(|i| format!("#{i}"))
            .chain(a.known.other.iter().map(|(i, os)| format!("#{i} ({os})")))
            .collect(),
        artifacts: a.artifacts.as_deref().map(|p| relative(p, dir)),
        output,
        cut,
    }
}

/// `path` relative to `from` when both are absolute (so the report and its artifacts can
/// move together), else as it is.
pub fn relative(path: &Path, from: &Path) -> String {
    let (Ok(path), Ok(from)) = (std::path::absolute(path), std::path::absolute(from)) else {
        return path.display().to_string();
    };
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return path.display().to_string();
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out.display().to_string()
}

/// The timeline: a lane per shared machine slot (its boots and tests), and lanes for tests
/// on machines of their own, each bar in the first lane free when it started.
fn lanes(tests: &[TestData], boots: &[(String, f64)]) -> Vec<Lane> {
    let mut shared: BTreeMap<String, Lane> = BTreeMap::new();
    let mut own: Vec<Lane> = Vec::new();
    let mut bars: Vec<(&TestData, &AttemptData)> = tests
        .iter()
        .flat_map(|t| t.attempts.iter().map(move |a| (t, a)))
        .filter(|(_, a)| a.start_ms.is_some())
        .collect();
    bars.sort_by_key(|(_, a)| a.start_ms);
    for (t, a) in bars {
        let start = a.start_ms.expect("filtered");
        let bar = Bar {
            start,
            end: start + (a.duration * 1000.0) as u64,
            kind: a.outcome.clone(),
            test: t.id,
            label: if a.attempt > 1 {
                format!("{} (attempt {})", t.name, a.attempt)
            } else {
                t.name.clone()
            },
        };
        match a
            .machines
            .first()
            .filter(|m| m.starts_with("shared machine "))
        {
            Some(slot) => shared
                .entry(slot.clone())
                .or_insert_with(|| Lane {
                    name: slot.clone(),
                    bars: Vec::new(),
                })
                .bars
                .push(bar),
            None => {
                let free = own
                    .iter()
                    .position(|l| l.bars.last().is_none_or(|b| b.end <= start));
                let i = free.unwrap_or_else(|| {
                    own.push(Lane {
                        name: format!("own machines {}", own.len() + 1),
                        bars: Vec::new(),
                    });
                    own.len() - 1
                });
                own[i].bars.push(bar);
            }
        }
    }
    // A shared machine's boot goes in the lane of the slot that first ran on it, ending
    // when that test started (the stream says how long a boot took, not when).
    for (label, secs) in boots {
        let first = tests
            .iter()
            .flat_map(|t| &t.attempts)
            .filter(|a| a.machines.iter().any(|m| m == label))
            .filter_map(|a| Some((a.start_ms?, a.machines.first()?)))
            .min();
        if let Some((ready, slot)) = first
            && let Some(l) = shared.get_mut(slot)
        {
            l.bars.push(Bar {
                start: ready.saturating_sub((secs * 1000.0) as u64),
                end: ready,
                kind: "boot".into(),
                test: 0,
                label: format!("boot {label}"),
            });
        }
    }
    let mut out: Vec<Lane> = shared.into_values().collect();
    out.extend(own);
    for l in &mut out {
        l.bars.sort_by_key(|b| b.start);
    }
    out
}

/// The page with `run` in it, as JSON that no text inside can end early.
fn page(run: &RunData) -> std::io::Result<String> {
    let json = serde_json::to_string(run).map_err(std::io::Error::other)?;
    let safe = json
        .replace('&', "\\u0026")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e");
    let (head, tail) = PAGE.split_once(SLOT).expect("the page has its slot");
    Ok(format!("{head}{safe}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AttemptOutcome, KnownIssues};
    use std::time::Duration;

    fn info(id: usize, name: &str) -> TestInfo {
        TestInfo::sample(id, name)
    }

    fn attempt(n: u32, outcome: AttemptOutcome, output: &str, start_ms: u64) -> AttemptReport {
        AttemptReport {
            attempt: n,
            outcome,
            output: output.into(),
            duration: Duration::from_secs(2),
            machines: vec![format!("t{n}-machine1")],
            artifacts: None,
            known: KnownIssues::default(),
            start_ms: Some(start_ms),
            boot: None,
        }
    }

    /// The JSON inside the page.
    fn data_of(page: &str) -> serde_json::Value {
        let start = page
            .find(r#"<script id="run" type="application/json">"#)
            .unwrap();
        let rest = &page[start..];
        let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hostile_output_cannot_leave_its_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = HtmlReporter::create(dir.path(), None).unwrap();
        let evil = "</script><script>alert(1)</script><!-- \x1b[31mred\x1b[0m \u{2028}";
        let tests = vec![info(1, "TestA.testEvil")];
        for e in [
            Event::RunStarted {
                test_os: "busybox".into(),
                jobs: 1,
                tests: tests.clone(),
                shard: None,
                rerun: Vec::new(),
                run: None,
            },
            Event::TestFinished {
                test: tests[0].clone(),
                placement: Placement::Own,
                verdict: Verdict::Failed,
                attempts: vec![attempt(1, AttemptOutcome::failed(evil), evil, 1000)],
            },
            Event::RunFinished {
                stats: Default::default(),
                wall: Duration::from_secs(3),
                unmatched_known: Vec::new(),
            },
        ] {
            r.report(&e).unwrap();
        }
        let page = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        // The page's own script and the data's: nothing the test printed opened a third.
        assert_eq!(page.matches("<script").count(), 2, "{page}");
        assert!(!page.contains("alert(1)</script>"));
        let data = data_of(&page);
        let a = &data["tests"][0]["attempts"][0];
        assert_eq!(a["output"], "</script><script>alert(1)</script><!-- red ");
        assert_eq!(data["tests"][0]["verdict"], "failed");
        // Written privately, and no temporary file left.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["index.html"]);
    }

    #[test]
    fn lanes_pack_own_machines_and_keep_shared_slots() {
        let a = |start: u64, secs: f64, machine: &str| AttemptData {
            attempt: 1,
            outcome: "passed".into(),
            describe: "passed".into(),
            duration: secs,
            start_ms: Some(start),
            machines: vec![machine.into()],
            boot: None,
            known: Vec::new(),
            artifacts: None,
            output: String::new(),
            cut: 0,
        };
        let t = |id: usize, att: AttemptData| TestData {
            id,
            name: format!("T.t{id}"),
            file: String::new(),
            os: None,
            verdict: "passed".into(),
            detail: String::new(),
            attempts: vec![att],
            history: Vec::new(),
        };
        let mut shared = a(3_000, 1.0, "shared machine 1");
        shared.machines.push("g1".into());
        let tests = vec![
            t(1, a(0, 10.0, "t1-m")),
            t(2, a(5_000, 10.0, "t2-m")),
            t(3, a(10_000, 1.0, "t3-m")),
            t(4, shared),
        ];
        let lanes = lanes(&tests, &[("g1".into(), 2.0)]);
        let names: Vec<&str> = lanes.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            ["shared machine 1", "own machines 1", "own machines 2"]
        );
        let ids = |l: &Lane| l.bars.iter().map(|b| b.test).collect::<Vec<_>>();
        // Test 3 starts when test 1 ends: it reuses the first lane.
        assert_eq!(ids(&lanes[1]), [1, 3]);
        assert_eq!(ids(&lanes[2]), [2]);
        // The shared machine's boot, then its test.
        assert_eq!(ids(&lanes[0]), [0, 4]);
    }

    #[test]
    fn paths_are_relative_to_the_report() {
        assert_eq!(
            relative(
                Path::new("/r/artifacts/T.t/attempt-1"),
                Path::new("/r/html")
            ),
            "../artifacts/T.t/attempt-1"
        );
    }
}
