//! The one event type of a run. The dispatcher emits every event; every reporter (TAP,
//! and later JUnit, JSON lines, progress) consumes only these, never scheduler internals.
//! Events are plain data carrying everything a reporter needs: decisions (retry reasons,
//! verdicts) are made before emission and never recomputed by reporters.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Durations are written as seconds (a float, millisecond precision).
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// Byte strings are written as (lossy) UTF-8 text.
mod text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

/// What reporters need to know about a planned test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestInfo {
    /// Position in the plan (1-based), stable for the same check files.
    pub id: usize,
    /// `TestClass.testMethod`.
    pub name: String,
    /// The check file, as shown to users (`test/verify/check-foo`).
    pub file: PathBuf,
    pub nondestructive: bool,
    /// RAM of the test's own machines (destructive tests), for display.
    pub ram_mib: u64,
    /// Its TEST_OS, when the run has several (its name says so too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
}

#[cfg(test)]
impl TestInfo {
    /// A destructive test `name` of `test/verify/check-a`, for unit tests of reports.
    pub fn sample(id: usize, name: &str) -> TestInfo {
        TestInfo {
            id,
            name: name.into(),
            file: "test/verify/check-a".into(),
            nondestructive: false,
            ram_mib: 256,
            os: None,
        }
    }
}

/// One execution of a soak's event, as every report keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoakRun {
    /// The event's name.
    pub name: String,
    /// 1-based, per event.
    pub run: u32,
    /// `startup`, `periodic`, `teardown`, or `invariant` (after a fault).
    pub why: String,
    /// When it was due and when it started, from the soak's start.
    #[serde(with = "secs")]
    pub due: Duration,
    #[serde(with = "secs")]
    pub started: Duration,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// `passed`, `failed`, `timed-out`, `skipped` (its previous run still ran), or
    /// `interrupted` (the soak ended first).
    pub outcome: String,
    /// How it failed (`exit code 1`), or why it was skipped; empty when it passed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The last lines of its output, for a run that did not pass.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tail: String,
}

impl SoakRun {
    pub fn failed(&self) -> bool {
        matches!(self.outcome.as_str(), "failed" | "timed-out")
    }
}

/// The label of shared machine `k` (`Placement::Global(k)`, `[ND@k]` in TAP).
pub fn global_label(k: usize) -> String {
    format!("nd{k}")
}

/// Where an attempt ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "machine", rename_all = "kebab-case")]
pub enum Placement {
    /// On shared global machine number `n` (`[ND@n]`).
    Global(usize),
    /// On machines of its own.
    Own,
    /// Nowhere: skipped before running.
    None,
}

/// How one attempt ended, before policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum AttemptOutcome {
    Passed,
    /// The body failed (`status` says how, e.g. "exit code 1").
    Failed {
        status: String,
        /// The test said its failure is not to be retried (a pixel test: a picture does not
        /// flake), with why.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        final_because: Option<String>,
    },
    /// The body exited 77; `reason` is its last output line.
    Skipped {
        reason: String,
    },
    TimedOut {
        #[serde(with = "secs")]
        after: Duration,
    },
    /// The body passed, but the guest log got messages that are always bad (kernel oops,
    /// segfault, …) and that the test does not allow. Never retried.
    UnexpectedMessages {
        lines: Vec<String>,
    },
    /// The machine or the harness failed (boot timeout, qemu died, guest kernel panic);
    /// `message` names the cause.
    Harness {
        message: String,
        /// The host itself failed the attempt (its disk is full): another attempt on it
        /// would fail the same way, so it is not retried.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        host_fault: bool,
    },
}

/// Known issues ("naughties") whose patterns an attempt's output matched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownIssues {
    /// Issue numbers of this OS's matching patterns, sorted.
    pub own: Vec<u64>,
    /// (issue, OS) of other OSes' matching patterns.
    pub other: Vec<(u64, String)>,
}

/// One finished attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    /// 1-based.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// Everything the attempt printed, in order: vmcheck's notes, guest and host output.
    pub output: String,
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Labels of the machines it ran on.
    pub machines: Vec<String>,
    /// Where collected guest files went, if the test asked for any.
    pub artifacts: Option<PathBuf>,
    /// Known issues the output matched (only looked up for failures).
    pub known: KnownIssues,
    /// When it started, in milliseconds since the epoch; absent in streams written before
    /// it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    /// How its machines came up (cold if any of them booted its kernel); absent where
    /// unknown (nothing booted, or an older stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootOrigin>,
}

impl AttemptOutcome {
    /// A failure of the test's body (retried as policy says).
    pub fn failed(status: impl Into<String>) -> AttemptOutcome {
        AttemptOutcome::Failed {
            status: status.into(),
            final_because: None,
        }
    }
}

impl AttemptReport {
    /// How the attempt ended, in one line (`failed (exit code 1)`, `timed out after 3s`).
    pub fn describe(&self) -> String {
        match &self.outcome {
            AttemptOutcome::Passed => "passed".into(),
            AttemptOutcome::Failed { status, .. } => format!("failed ({status})"),
            AttemptOutcome::Skipped { reason } => format!("skipped: {reason}"),
            AttemptOutcome::TimedOut { after } => format!("timed out after {}s", after.as_secs()),
            AttemptOutcome::UnexpectedMessages { lines } => format!(
                "unexpected journal messages: {}",
                lines.first().map(String::as_str).unwrap_or("")
            ),
            AttemptOutcome::Harness { message, .. } => message.clone(),
        }
    }
}

/// For a test that passed after its machine failed (a harness failure is retried and says
/// nothing about the test, so the verdict stays `passed`): `machine failed on attempt 1:
/// <cause>`, the last such attempt, so that reports never pass it silently.
pub fn machine_failure_note(attempts: &[AttemptReport]) -> Option<String> {
    let (last, earlier) = attempts.split_last()?;
    if last.outcome != AttemptOutcome::Passed {
        return None;
    }
    earlier.iter().rev().find_map(|a| match &a.outcome {
        AttemptOutcome::Harness { message, .. } => Some(format!(
            "machine failed on attempt {}: {}",
            a.attempt,
            message.lines().next().unwrap_or("").trim()
        )),
        _ => None,
    })
}

/// The final result of a test, after policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Passed,
    /// Failed at least once, then passed.
    Flaky,
    Failed,
    /// Failed with output matching a known issue of this OS (`ok … # SKIP Known issue #N`).
    KnownIssue {
        issue: u64,
    },
    /// Failed with output matching only another OS's known issue: still a failure, not
    /// retried (`not ok … # NOTE Known issue #N in OS`).
    KnownElsewhere {
        issue: u64,
        os: String,
    },
    Skipped {
        reason: String,
    },
    /// A `todo` test failed, as expected.
    Todo {
        reason: String,
    },
    /// A `todo` test passed: a failure (the todo is stale).
    UnexpectedPass {
        reason: String,
    },
    /// The machine or harness kept failing; the test's own result is unknown.
    Error {
        message: String,
    },
}

impl Verdict {
    /// Why a test did not succeed, in one line, given its last attempt.
    pub fn describe_failure(&self, last: Option<&AttemptReport>) -> String {
        let what = last
            .map(AttemptReport::describe)
            .unwrap_or_else(|| "did not run".into());
        match self {
            Verdict::UnexpectedPass { reason } => format!("a todo test passed: {reason}"),
            Verdict::KnownElsewhere { issue, os } => {
                format!("{what} (known issue #{issue} in {os})")
            }
            Verdict::Error { message } => message.clone(),
            _ => what,
        }
    }

    /// Whether this verdict leaves the run green.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Verdict::Passed
                | Verdict::Flaky
                | Verdict::Skipped { .. }
                | Verdict::Todo { .. }
                | Verdict::KnownIssue { .. }
        )
    }
}

/// Counts by verdict, kept by the dispatcher and carried in [`Event::RunFinished`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    pub planned: usize,
    pub passed: usize,
    pub flaky: usize,
    pub failed: usize,
    pub skipped: usize,
    pub todo: usize,
    pub errors: usize,
    /// Attempts that were retried.
    pub retries: usize,
    pub destructive: usize,
    pub nondestructive: usize,
}

/// `3 passed, 1 flaky`: the non-zero counts of `counts` (count, what), in their order.
pub fn nonzero<N: std::fmt::Display + PartialEq + Default>(
    counts: impl IntoIterator<Item = (N, &'static str)>,
) -> Vec<String> {
    counts
        .into_iter()
        .filter(|(n, _)| *n != N::default())
        .map(|(n, what)| format!("{n} {what}"))
        .collect()
}

impl RunStats {
    /// `3 passed, 1 flaky, 2 retries`: the non-zero counts, in a fixed order.
    pub fn nonzero_counts(&self) -> Vec<String> {
        nonzero([
            (self.passed, "passed"),
            (self.flaky, "flaky"),
            (self.failed, "failed"),
            (self.errors, "errors"),
            (self.skipped, "skipped"),
            (self.todo, "todo"),
            (self.retries, "retries"),
        ])
    }

    pub fn finished(&self) -> usize {
        self.passed + self.flaky + self.failed + self.skipped + self.todo + self.errors
    }

    pub fn count(&mut self, verdict: &Verdict) {
        match verdict {
            Verdict::Passed => self.passed += 1,
            Verdict::Flaky => self.flaky += 1,
            Verdict::Failed | Verdict::UnexpectedPass { .. } | Verdict::KnownElsewhere { .. } => {
                self.failed += 1
            }
            Verdict::Skipped { .. } | Verdict::KnownIssue { .. } => self.skipped += 1,
            Verdict::Todo { .. } => self.todo += 1,
            Verdict::Error { .. } => self.errors += 1,
        }
    }
}

/// How a shared machine came up: its boot time depends on it (a restore takes about a
/// second, a cold boot of the same image ten or more).
///
/// Ordered coldest first: the origin of several machines is the least of theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOrigin {
    /// Booted its kernel.
    Cold,
    /// Restored from a booted snapshot.
    Restored,
    /// An existing host (`--machine`): connected to, not booted.
    Existing,
}

/// Where and from what a run came: what the outcome store records about it
/// ([`crate::results`]). Absent in streams written before it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Unique to the run (random): importing its stream again adds nothing.
    pub id: String,
    /// The project's name (its root directory's name; `autopkgtest` for Debian suites).
    pub project: String,
    /// The commit checked out in the project, if it is a git work tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether tracked files differed from that commit.
    #[serde(default)]
    pub dirty: bool,
    /// The TEST_OS image's id (`debian-12-4c27b9bf6533`), if one was prepared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The host's name.
    pub host: String,
    /// When the run started, in milliseconds since the epoch.
    pub start_ms: u64,
    /// For the stream `vmcheck merge` writes: the ids of the runs it combines (whose own
    /// streams are what the store records); empty for a run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
}

/// A run that is one shard of a split suite: shard `index` of `total`, and the split's
/// fingerprint (runs that split the same way print the same one; see `planning/shard.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: usize,
    pub total: usize,
    pub split: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        test_os: String,
        jobs: usize,
        /// Every planned test, in plan order.
        tests: Vec<TestInfo>,
        /// Which shard of a split suite this run is (`--shard K/N`); absent otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shard: Option<ShardInfo>,
        /// The command that re-runs tests of this run by name, before the names
        /// (`vmcheck run --test-dir t --exact`), so that `vmcheck merge` can say it too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rerun: Vec<String>,
        /// Where and from what the run came (for the outcome store).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunMeta>,
    },
    MachineReady {
        label: String,
        image: String,
        #[serde(with = "secs")]
        boot: Duration,
        /// How it came up; absent in streams written before it was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<BootOrigin>,
    },
    MachineFailed {
        label: String,
        message: String,
    },
    /// A global machine is being replaced (after a timeout or harness failure).
    MachineReset {
        label: String,
        reason: String,
    },
    /// An attempt is being prepared: its machines are handed over or booting.
    TestStarted {
        test: TestInfo,
        attempt: u32,
        placement: Placement,
    },
    /// The first destructive test in line cannot start yet, and why (`needs 1.6 GiB of RAM,
    /// 0.9 GiB free`); told again when the reason changes.
    TestWaiting {
        id: usize,
        name: String,
        reason: String,
    },
    /// A soak starts (its machines are ready): its scaled duration, the seed its schedule
    /// was drawn from (`--seed` replays it) and its events' names.
    SoakStarted {
        id: usize,
        attempt: u32,
        #[serde(with = "secs")]
        duration: Duration,
        seed: u64,
        events: Vec<String>,
    },
    /// One execution of a soak's event ended (or was skipped: still running when due).
    SoakEvent {
        id: usize,
        attempt: u32,
        #[serde(flatten)]
        run: SoakRun,
    },
    /// The attempt's machines are ready (labels) and its body starts.
    TestRunning {
        id: usize,
        attempt: u32,
        machines: Vec<String>,
    },
    /// Output of a running attempt, as it arrives.
    TestOutput {
        id: usize,
        attempt: u32,
        #[serde(with = "text")]
        data: Vec<u8>,
    },
    /// An attempt failed and the test will run again.
    AttemptRetry {
        test: TestInfo,
        placement: Placement,
        report: AttemptReport,
        /// 1 for the first retry.
        retry: u32,
        reason: String,
    },
    TestFinished {
        test: TestInfo,
        placement: Placement,
        verdict: Verdict,
        /// Every attempt, the last one deciding the verdict.
        attempts: Vec<AttemptReport>,
    },
    /// The run stops early (a signal); running tests are abandoned.
    RunCancelled {
        reason: String,
    },
    /// A known issue of this OS names a test that passed: its pattern may be stale.
    KnownIssuePassed {
        test: TestInfo,
        issue: u64,
        path: PathBuf,
    },
    RunFinished {
        stats: RunStats,
        #[serde(with = "secs")]
        wall: Duration,
        /// This OS's known issues that matched no failure in this run (`#N path`).
        unmatched_known: Vec<String>,
    },
}
