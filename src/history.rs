//! The duration history: how long each test took on each TEST_OS in recent runs, and how
//! long a shared machine took to boot, kept in a small JSON file so that the next run can
//! order tests longest first and `--shard` can balance shards.
//!
//! The main types are [`History`] (the data: per TEST_OS, the last [`KEEP`] durations of
//! each test; estimates use their median), [`Samples`] (what one run measured, taken from its
//! events after the fact) and [`HistoryFile`] (where it lives; loading, and updating under a
//! lock with an atomic rename, so runs and shards on one machine can share a file).
//!
//! Only real results count: attempts that passed, failed, timed out or had unexpected
//! journal messages. Skipped attempts, machine or harness failures and interrupted tests
//! measure nothing about the test and are not recorded.

use crate::events::{AttemptOutcome, BootOrigin, Event};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Durations kept per test (and for boots): the most recent ones.
pub const KEEP: usize = 5;
/// The file format version this vmcheck reads and writes.
pub const FORMAT: u32 = 1;
/// Entries not updated for this long are dropped when the file is written (renamed or
/// removed tests, images no longer used).
pub const STALE_AFTER: Duration = Duration::from_secs(90 * 24 * 3600);

/// Environment variable naming the history file (same as `--history`).
pub const ENV: &str = "VMCHECK_HISTORY";

/// Every recorded duration, by TEST_OS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    pub version: u32,
    #[serde(default)]
    pub os: BTreeMap<String, OsHistory>,
}

impl Default for History {
    fn default() -> History {
        History {
            version: FORMAT,
            os: BTreeMap::new(),
        }
    }
}

/// The durations recorded on one TEST_OS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsHistory {
    /// Cold boots of shared (nondestructive) machines, to SSH-ready. (A file written before
    /// restores were told apart has them here too.)
    #[serde(default, skip_serializing_if = "Entry::is_empty")]
    pub boot: Entry,
    /// Restores of shared machines from a booted snapshot, to SSH-ready.
    #[serde(default, skip_serializing_if = "Entry::is_empty")]
    pub restore: Entry,
    /// By `TestClass.testMethod`: the duration of each attempt, boots of the test's own
    /// machines included.
    #[serde(default)]
    pub tests: BTreeMap<String, Entry>,
}

/// The last few durations of one thing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Seconds, oldest first, at most [`KEEP`].
    pub secs: Vec<f64>,
    /// When the last one was recorded, in seconds since the epoch.
    pub last: u64,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.secs.is_empty()
    }

    fn push(&mut self, d: Duration, now: u64) {
        // Milliseconds are plenty and keep the file short.
        self.secs.push((d.as_secs_f64() * 1000.0).round() / 1000.0);
        if self.secs.len() > KEEP {
            self.secs.drain(..self.secs.len() - KEEP);
        }
        self.last = now;
    }

    /// The median of the kept durations (the mean of the middle two for an even count).
    pub fn median(&self) -> Option<Duration> {
        let mut v: Vec<f64> = self
            .secs
            .iter()
            .copied()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        let secs = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
        Some(Duration::from_secs_f64(secs))
    }
}

impl OsHistory {
    /// The median duration of test `name`, if it was recorded.
    pub fn test(&self, name: &str) -> Option<Duration> {
        self.tests.get(name).and_then(Entry::median)
    }

    /// The median boot of a shared machine the next run is likely to get, if one was
    /// recorded: a cold boot with `cold` (`--cold-boot`), else a restore once one was
    /// recorded (the first run of an image makes the snapshot that later runs restore),
    /// else a cold boot.
    pub fn boot(&self, cold: bool) -> Option<Duration> {
        match self.restore.median() {
            Some(restore) if !cold => Some(restore),
            _ => self.boot.median(),
        }
    }
}

impl History {
    /// Parse a history file's text.
    pub fn parse(text: &str) -> Result<History, String> {
        let h: History = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if h.version != FORMAT {
            return Err(format!(
                "format version {} (this vmcheck reads {FORMAT})",
                h.version
            ));
        }
        Ok(h)
    }

    /// The durations recorded on `test_os` (empty when there are none).
    pub fn for_os(&self, test_os: &str) -> OsHistory {
        self.os.get(test_os).cloned().unwrap_or_default()
    }

    /// Add one run's samples on `test_os`, then drop what is stale at `now`.
    pub fn record(&mut self, test_os: &str, samples: &Samples, now: u64) {
        if !samples.is_empty() {
            let os = self.os.entry(test_os.to_string()).or_default();
            for (name, d) in &samples.tests {
                os.tests.entry(name.clone()).or_default().push(*d, now);
            }
            for d in &samples.boots {
                os.boot.push(*d, now);
            }
            for d in &samples.restores {
                os.restore.push(*d, now);
            }
        }
        let cutoff = now.saturating_sub(STALE_AFTER.as_secs());
        for os in self.os.values_mut() {
            os.tests.retain(|_, e| e.last >= cutoff && !e.is_empty());
            for boots in [&mut os.boot, &mut os.restore] {
                if boots.last < cutoff {
                    *boots = Entry::default();
                }
            }
        }
        self.os
            .retain(|_, os| !os.tests.is_empty() || !os.boot.is_empty() || !os.restore.is_empty());
    }
}

/// What one run measured, in the order it happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples {
    /// (`TestClass.testMethod`, duration of one attempt).
    pub tests: Vec<(String, Duration)>,
    /// Cold boots of shared machines.
    pub boots: Vec<Duration>,
    /// Restores of shared machines from a snapshot.
    pub restores: Vec<Duration>,
}

impl Samples {
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty() && self.boots.is_empty() && self.restores.is_empty()
    }

    /// Take what `event` measured: every real attempt of a finished test, and the boot or
    /// restore of a shared machine (not of an existing host, which did not boot; a stream
    /// written before the origin was recorded has cold boots and restores as boots).
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::TestFinished { test, attempts, .. } => {
                for a in attempts {
                    if matches!(
                        a.outcome,
                        AttemptOutcome::Passed
                            | AttemptOutcome::Failed { .. }
                            | AttemptOutcome::TimedOut { .. }
                            | AttemptOutcome::UnexpectedMessages { .. }
                    ) {
                        self.tests.push((test.name.clone(), a.duration));
                    }
                }
            }
            Event::MachineReady {
                image,
                boot,
                origin,
                ..
            } => match origin {
                Some(BootOrigin::Restored) => self.restores.push(*boot),
                Some(BootOrigin::Cold) => self.boots.push(*boot),
                None if image != crate::runner::EXISTING_HOST => self.boots.push(*boot),
                Some(BootOrigin::Existing) | None => {}
            },
            _ => {}
        }
    }
}

/// A history file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{}: not a vmcheck duration history: {message}", .path.display())]
    Corrupt { path: PathBuf, message: String },
    #[error("{}: {context}: {source}", .path.display())]
    Io {
        path: PathBuf,
        context: &'static str,
        source: std::io::Error,
    },
}

/// Where the history lives, and whether the user named it (`--history`, `$VMCHECK_HISTORY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFile {
    pub path: PathBuf,
    pub explicit: bool,
}

impl HistoryFile {
    /// A file the user named (`--history`, `$VMCHECK_HISTORY`).
    pub fn named(path: PathBuf) -> HistoryFile {
        HistoryFile {
            path,
            explicit: true,
        }
    }

    /// The default file of the project at `root`:
    /// `$XDG_CACHE_HOME/vmcheck/history/<name>-<hash of the root path>.json`.
    pub fn default_for(root: &Path) -> HistoryFile {
        HistoryFile {
            path: crate::image::cache_home()
                .join("vmcheck/history")
                .join(format!("{}.json", project_key(root))),
            explicit: false,
        }
    }

    /// Read the file; a missing file is an empty history.
    pub fn load(&self) -> Result<History, HistoryError> {
        // The file is replaced by a rename: anything but a regular file (`/dev/null`, a
        // pipe) would be replaced too.
        if let Ok(m) = std::fs::metadata(&self.path)
            && !m.is_file()
        {
            return Err(HistoryError::Io {
                path: self.path.clone(),
                context: "reading",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file (the history is replaced whole after each run)",
                ),
            });
        }
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
            Err(source) => {
                return Err(HistoryError::Io {
                    path: self.path.clone(),
                    context: "reading",
                    source,
                });
            }
        };
        History::parse(&text).map_err(|message| HistoryError::Corrupt {
            path: self.path.clone(),
            message,
        })
    }

    /// Add a run's samples on `test_os` to what the file holds now (another run may have
    /// written it meanwhile): under an exclusive lock on `<file>.lock`, reading again and
    /// replacing the file atomically. A corrupt file is replaced.
    pub fn update(&self, test_os: &str, samples: &Samples, now: u64) -> Result<(), HistoryError> {
        let io = |context: &'static str| {
            let path = self.path.clone();
            move |source| HistoryError::Io {
                path,
                context,
                source,
            }
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io("creating its directory"))?;
        let mut lock_name = self.path.file_name().unwrap_or_default().to_os_string();
        lock_name.push(".lock");
        let lock = std::fs::File::create(dir.join(lock_name)).map_err(io("creating its lock"))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking it")(e.into()))?;
        let mut history = match self.load() {
            Err(HistoryError::Corrupt { .. }) => History::default(),
            other => other?,
        };
        // A link is followed: its target is the file replaced, the link stays.
        let path = crate::reporter::file::rename_target(&self.path);
        history.record(test_os, samples, now);
        let mut text = serde_json::to_string(&history).expect("history serializes");
        text.push('\n');
        let mut tmp = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(&dir))
            .map_err(io("writing"))?;
        tmp.write_all(text.as_bytes()).map_err(io("writing"))?;
        tmp.persist(&path).map_err(|e| io("replacing")(e.error))?;
        Ok(())
    }
}

/// A directory name for the project at `root`: its base name and a hash of its path, so
/// two checkouts of one project keep separate histories.
pub fn project_key(root: &Path) -> String {
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        root.as_os_str().as_encoded_bytes(),
    ));
    format!("{base}-{}", &hash[..16])
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{AttemptReport, Placement, TestInfo, Verdict};
    use std::os::unix::fs::FileTypeExt;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn entry(v: &[f64]) -> Entry {
        Entry {
            secs: v.to_vec(),
            last: 0,
        }
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(entry(&[]).median(), None);
        assert_eq!(entry(&[3.0]).median(), Some(secs(3.0)));
        assert_eq!(entry(&[9.0, 1.0, 5.0]).median(), Some(secs(5.0)));
        assert_eq!(entry(&[4.0, 1.0, 2.0, 100.0]).median(), Some(secs(3.0)));
        // Garbage that parses (negative, NaN is not JSON) is ignored.
        assert_eq!(entry(&[-1.0, 2.0]).median(), Some(secs(2.0)));
    }

    #[test]
    fn keeps_the_last_few_and_one_outlier_does_not_move_the_median() {
        let mut e = Entry::default();
        for s in [10.0, 10.0, 11.0, 10.0, 12.0, 500.0, 11.0] {
            e.push(secs(s), 7);
        }
        assert_eq!(e.secs, [11.0, 10.0, 12.0, 500.0, 11.0]);
        assert_eq!(e.last, 7);
        assert_eq!(e.median(), Some(secs(11.0)));
    }

    fn samples(tests: &[(&str, f64)], boots: &[f64]) -> Samples {
        Samples {
            tests: tests
                .iter()
                .map(|(n, s)| (n.to_string(), secs(*s)))
                .collect(),
            boots: boots.iter().map(|s| secs(*s)).collect(),
            restores: Vec::new(),
        }
    }

    fn file_in(dir: &tempfile::TempDir, name: &str) -> HistoryFile {
        HistoryFile {
            path: dir.path().join(name),
            explicit: false,
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "sub/h.json");
        assert_eq!(file.load().unwrap(), History::default(), "missing is empty");
        let s = samples(&[("TestA.testOne", 1.5), ("TestA.testOne", 2.5)], &[3.25]);
        file.update("busybox", &s, 1000).unwrap();
        file.update("debian-12", &samples(&[("TestA.testOne", 9.0)], &[]), 1001)
            .unwrap();
        let h = file.load().unwrap();
        let busybox = h.for_os("busybox");
        assert_eq!(busybox.test("TestA.testOne"), Some(secs(2.0)));
        assert_eq!(busybox.boot(false), Some(secs(3.25)));
        assert_eq!(h.for_os("debian-12").test("TestA.testOne"), Some(secs(9.0)));
        assert_eq!(h.for_os("debian-12").boot(false), None);
        assert_eq!(h.for_os("fedora").test("TestA.testOne"), None);
        let text = std::fs::read_to_string(&file.path).unwrap();
        assert_eq!(History::parse(&text).unwrap(), h);
        assert!(text.starts_with("{\"version\":1,"), "{text}");
    }

    /// `--history /dev/null` is refused rather than renamed over; a link's target is
    /// replaced and the link stays.
    #[test]
    fn only_regular_files_are_replaced() {
        let null = HistoryFile::named("/dev/null".into());
        let e = null.load().unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(null.update("busybox", &Samples::default(), 1).is_err());
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("h.json"), dir.path().join("link.json"));
        std::os::unix::fs::symlink(&target, &link).unwrap();
        HistoryFile::named(link.clone())
            .update("busybox", &Samples::default(), 1)
            .unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert!(target.is_file());
    }

    #[test]
    fn a_corrupt_file_names_itself_and_is_replaced_on_update() {
        let dir = tempfile::tempdir().unwrap();
        let file = file_in(&dir, "h.json");
        for (text, needle) in [
            ("{\"version\": 1, \"os\": ", "EOF while parsing"),
            ("<xml/>", "expected value at line 1 column 1"),
            (
                "{\"version\": 2}",
                "format version 2 (this vmcheck reads 1)",
            ),
            ("{\"version\": 1, \"tests\": {}}", "unknown field `tests`"),
        ] {
            std::fs::write(&file.path, text).unwrap();
            let e = file.load().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!(
                    "{}: not a vmcheck duration history: ",
                    file.path.display()
                )),
                "{e}"
            );
            assert!(e.contains(needle), "{e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        file.update("busybox", &samples(&[("T.t", 1.0)], &[]), 5)
            .unwrap();
        assert_eq!(
            file.load().unwrap().for_os("busybox").test("T.t"),
            Some(secs(1.0))
        );
    }

    #[test]
    fn stale_entries_are_dropped() {
        let mut h = History::default();
        h.record("busybox", &samples(&[("Old.t", 1.0)], &[2.0]), 100);
        h.record("fedora", &samples(&[("Gone.t", 1.0)], &[]), 100);
        let later = 100 + STALE_AFTER.as_secs() + 1;
        h.record("busybox", &samples(&[("New.t", 3.0)], &[]), later);
        let b = h.for_os("busybox");
        assert_eq!(b.tests.keys().collect::<Vec<_>>(), ["New.t"]);
        assert_eq!(b.boot(false), None);
        assert!(!h.os.contains_key("fedora"));
    }

    #[test]
    fn only_real_attempts_and_booted_machines_are_samples() {
        let report = |outcome: AttemptOutcome, d: f64| AttemptReport {
            attempt: 1,
            outcome,
            output: String::new(),
            duration: secs(d),
            machines: vec![],
            artifacts: None,
            known: Default::default(),
        };
        let finished = |name: &str, attempts: Vec<AttemptReport>| Event::TestFinished {
            test: TestInfo {
                id: 1,
                name: name.into(),
                file: "check-a".into(),
                nondestructive: false,
                ram_mib: 0,
            },
            placement: Placement::Own,
            verdict: Verdict::Passed,
            attempts,
        };
        let mut s = Samples::default();
        for e in [
            finished(
                "T.flaky",
                vec![
                    report(AttemptOutcome::Failed { status: "1".into() }, 4.0),
                    report(AttemptOutcome::Passed, 5.0),
                ],
            ),
            finished(
                "T.skip",
                vec![report(AttemptOutcome::Skipped { reason: "x".into() }, 1.0)],
            ),
            finished(
                "T.harness",
                vec![report(
                    AttemptOutcome::Harness {
                        message: "x".into(),
                        host_fault: false,
                    },
                    1.0,
                )],
            ),
            finished("T.interrupted", vec![]),
            finished(
                "T.slow",
                vec![report(AttemptOutcome::TimedOut { after: secs(9.0) }, 9.5)],
            ),
            Event::MachineReady {
                label: "nd1".into(),
                image: "busybox-1234".into(),
                boot: secs(2.5),
                origin: None,
            },
            Event::MachineReady {
                label: "host:22".into(),
                image: crate::runner::EXISTING_HOST.into(),
                boot: secs(0.1),
                origin: None,
            },
            Event::MachineReady {
                label: "nd2".into(),
                image: "busybox-1234".into(),
                boot: secs(14.0),
                origin: Some(BootOrigin::Cold),
            },
            Event::MachineReady {
                label: "nd3".into(),
                image: "busybox-1234".into(),
                boot: secs(0.5),
                origin: Some(BootOrigin::Restored),
            },
            Event::MachineReady {
                label: "host:22".into(),
                image: crate::runner::EXISTING_HOST.into(),
                boot: secs(0.2),
                origin: Some(BootOrigin::Existing),
            },
        ] {
            s.observe(&e);
        }
        let mut want = samples(
            &[("T.flaky", 4.0), ("T.flaky", 5.0), ("T.slow", 9.5)],
            &[2.5, 14.0],
        );
        want.restores = vec![secs(0.5)];
        assert_eq!(s, want);
    }

    #[test]
    fn restores_and_cold_boots_are_estimated_apart() {
        let mut h = History::default();
        let cold = samples(&[], &[15.0, 16.0, 14.0]);
        h.record("debian-12", &cold, 1000);
        assert_eq!(h.for_os("debian-12").boot(false), Some(secs(15.0)));
        let restores = Samples {
            restores: vec![secs(0.5), secs(0.7), secs(0.6)],
            ..Samples::default()
        };
        h.record("debian-12", &restores, 1001);
        let os = h.for_os("debian-12");
        assert_eq!(os.boot(false), Some(secs(0.6)), "snapshots are restored");
        assert_eq!(os.boot(true), Some(secs(15.0)), "--cold-boot");
        assert_eq!(os.boot.secs.len(), 3, "not mixed");
        // Both survive a round trip, and a file without restores still reads.
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(History::parse(&text).unwrap(), h);
        let old = r#"{"version":1,"os":{"busybox":{"boot":{"secs":[3.0],"last":5},"tests":{}}}}"#;
        assert_eq!(
            History::parse(old).unwrap().for_os("busybox").boot(false),
            Some(secs(3.0))
        );
    }

    #[test]
    fn project_keys_differ_by_path() {
        let a = project_key(Path::new("/work/main"));
        let b = project_key(Path::new("/work/other/main"));
        assert!(a.starts_with("main-") && b.starts_with("main-"));
        assert_ne!(a, b);
        assert_eq!(a.len(), "main-".len() + 16);
        assert!(project_key(Path::new("/x/a b")).starts_with("a_b-"));
    }
}
