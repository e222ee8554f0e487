//! The outcome store: one SQLite file holding every attempt of every run (live runs, and
//! the event streams of other runs imported with `vmcheck results import`), with no server
//! to start. It owns the file's schema (below, and in the README), opening it (creating it
//! private to its user, checking its version), writing rows idempotently (a run's id is
//! its key: recording a stream twice adds nothing) and the queries later stages need.
//!
//! The schema, version [`SCHEMA_VERSION`] (SQLite's `user_version`):
//!
//! - `runs`: one row per run: `id` (random, from `run-started`), `project`, `os` (TEST_OS),
//!   `image` (the image id), `commit_id`, `dirty`, `host`, `start_ms` (epoch milliseconds),
//!   `shard` (`K/N`, or NULL) and `settled` (1 when its durations may order later runs: a
//!   live shard run is settled once `vmcheck merge` or `results import` has seen its
//!   stream, so that every shard of a split reads the same durations).
//! - `attempts`: one row per attempt: `run`, `project` and `os` (the run's, for the index),
//!   `test`, `repeat` (0 unless `--repeat`), `attempt` (1-based), `start_ms`,
//!   `duration_ms`, `outcome` (passed, failed, skipped, timed-out, unexpected-messages,
//!   harness), `detail` (the failure in one line), `verdict` (the test's, after policy, on
//!   each of its attempts), `last` (1 on the attempt that decided it), `boot` (cold,
//!   restored, existing, or NULL).
//! - `known`: one row per known issue an attempt's output matched: `run`, `test`,
//!   `repeat`, `attempt`, `issue`, `os` (NULL for this run's TEST_OS, else the other OS).
//! - `boots`: boots of shared machines: `run`, `seq`, `label`, `image`, `origin`,
//!   `duration_ms`.

use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema version this vmcheck reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Environment variable naming the store (same as `--results-db`).
pub const ENV: &str = "VMCHECK_RESULTS_DB";

/// How long a write waits for another vmcheck's write to finish before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    os TEXT NOT NULL,
    image TEXT,
    commit_id TEXT,
    dirty INTEGER NOT NULL DEFAULT 0,
    host TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    shard TEXT,
    settled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE attempts (
    run TEXT NOT NULL,
    project TEXT NOT NULL,
    os TEXT NOT NULL,
    test TEXT NOT NULL,
    repeat INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL,
    start_ms INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL,
    last INTEGER NOT NULL,
    boot TEXT,
    PRIMARY KEY (run, test, repeat, attempt)
) WITHOUT ROWID;
CREATE INDEX attempts_by_test
    ON attempts (project, os, test, start_ms, outcome, verdict, last, duration_ms);
CREATE TABLE known (
    run TEXT NOT NULL,
    test TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    issue INTEGER NOT NULL,
    os TEXT,
    PRIMARY KEY (run, test, repeat, attempt, issue, os)
);
CREATE TABLE boots (
    run TEXT NOT NULL,
    seq INTEGER NOT NULL,
    label TEXT NOT NULL,
    image TEXT NOT NULL,
    origin TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (run, seq)
);
";

/// A store that could not be opened, read or written: one line, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {context}: {message}", .path.display())]
pub struct StoreError {
    pub path: PathBuf,
    pub context: &'static str,
    pub message: String,
}

/// A run, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    pub id: String,
    pub project: String,
    pub os: String,
    pub image: Option<String>,
    pub commit: Option<String>,
    pub dirty: bool,
    pub host: String,
    pub start_ms: u64,
    /// `K/N` for a shard run.
    pub shard: Option<String>,
    /// Whether its durations may order later runs (see the module doc).
    pub settled: bool,
}

/// One attempt of a test, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub test: String,
    pub repeat: u32,
    pub attempt: u32,
    pub start_ms: u64,
    pub duration_ms: u64,
    /// `passed`, `failed`, `skipped`, `timed-out`, `unexpected-messages`, `harness`.
    pub outcome: &'static str,
    pub detail: String,
    /// The test's verdict (`passed`, `flaky`, `failed`, `known-issue`, …).
    pub verdict: &'static str,
    /// Whether this attempt decided the verdict.
    pub last: bool,
    /// Known issues its output matched: (issue, None) for this run's OS, (issue, Some(os))
    /// for another OS's.
    pub known: Vec<(u64, Option<String>)>,
    /// `cold`, `restored`, `existing`.
    pub boot: Option<&'static str>,
}

/// A boot of a shared machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootRow {
    pub seq: u32,
    pub label: String,
    pub image: String,
    /// `cold`, `restored`, `existing`, or None in streams that did not say.
    pub origin: Option<&'static str>,
    pub duration_ms: u64,
}

/// An open store.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The default store: `$XDG_DATA_HOME/vmcheck/results.sqlite`
/// (`~/.local/share/vmcheck/results.sqlite`).
pub fn default_path() -> PathBuf {
    let data = match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".local/share"),
    };
    data.join("vmcheck/results.sqlite")
}

/// The store a command uses: the one named (`--results-db`, `$VMCHECK_RESULTS_DB`), else
/// the default.
pub fn path_of(named: Option<&Path>) -> PathBuf {
    named.map(Path::to_path_buf).unwrap_or_else(default_path)
}

impl Store {
    /// Open the store at `path` for reading and writing, creating it (and its directory,
    /// private to this user) if missing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let err = error(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            crate::private::create_dir(dir).map_err(|e| err("creating its directory", &e))?;
        }
        if let Ok(m) = std::fs::metadata(path)
            && !m.is_file()
        {
            return Err(err("opening", &"not a regular file"));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err("opening", &e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.prepare(true)?;
        Ok(store)
    }

    /// Open an existing store for reading only; `None` if there is none yet.
    pub fn open_existing(path: &Path) -> Result<Option<Store>, StoreError> {
        let err = error(path);
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err("opening", &e)),
            Ok(m) if !m.is_file() => return Err(err("opening", &"not a regular file")),
            Ok(_) => {}
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err("opening", &e))?;
        let store = Store {
            conn,
            path: path.to_path_buf(),
        };
        store.prepare(false)?;
        Ok(Some(store))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Check (or, writing to a new file, create) the schema.
    fn prepare(&self, write: bool) -> Result<(), StoreError> {
        let err = error(&self.path);
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| err("opening", &e))?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| err("not a vmcheck outcome store", &e))?;
        match version {
            SCHEMA_VERSION => {}
            0 => {
                let tables: i64 = self
                    .conn
                    .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                    .map_err(|e| err("not a vmcheck outcome store", &e))?;
                if tables > 0 {
                    return Err(err(
                        "not a vmcheck outcome store",
                        &"an SQLite database with other tables",
                    ));
                }
                if !write {
                    return Ok(());
                }
                self.conn
                    .execute_batch(&format!(
                        "PRAGMA journal_mode = WAL; BEGIN IMMEDIATE; {SCHEMA} \
                         PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                    ))
                    .map_err(|e| err("creating its tables", &e))?;
            }
            v => {
                return Err(err(
                    "not readable by this vmcheck",
                    &format!("schema version {v}, this vmcheck reads version {SCHEMA_VERSION}"),
                ));
            }
        }
        if write {
            self.conn
                .execute_batch("PRAGMA synchronous = NORMAL")
                .map_err(|e| err("opening", &e))?;
        }
        Ok(())
    }

    /// Add a run (nothing if it is there already); whether it is new. A settled run
    /// settles the stored one: a shard's stream imported after the shard recorded itself.
    pub fn add_run(&mut self, run: &RunRow) -> Result<bool, StoreError> {
        let err = error(&self.path);
        let tx = self
            .conn
            .transaction()
            .map_err(|e| err("writing a run", &e))?;
        let added = tx
            .execute(
                "INSERT OR IGNORE INTO runs (id, project, os, image, commit_id, dirty, host, \
             start_ms, shard, settled) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    run.id,
                    run.project,
                    run.os,
                    run.image,
                    run.commit,
                    run.dirty,
                    run.host,
                    run.start_ms as i64,
                    run.shard,
                    run.settled
                ],
            )
            .map_err(|e| err("writing a run", &e))?;
        if run.settled {
            tx.execute("UPDATE runs SET settled = 1 WHERE id = ?1", [&run.id])
                .map_err(|e| err("writing a run", &e))?;
        }
        tx.commit().map_err(|e| err("writing a run", &e))?;
        Ok(added == 1)
    }

    /// Add the attempts of one test of `run` (those already there are left as they are).
    pub fn add_attempts(&mut self, run: &RunRow, rows: &[AttemptRow]) -> Result<(), StoreError> {
        let err = error(&self.path);
        let tx = self
            .conn
            .transaction()
            .map_err(|e| err("writing attempts", &e))?;
        {
            let mut attempt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO attempts (run, project, os, test, repeat, attempt, \
                     start_ms, duration_ms, outcome, detail, verdict, last, boot) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(|e| err("writing attempts", &e))?;
            let mut known = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO known (run, test, repeat, attempt, issue, os) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| err("writing attempts", &e))?;
            for a in rows {
                attempt
                    .execute(params![
                        run.id,
                        run.project,
                        run.os,
                        a.test,
                        a.repeat,
                        a.attempt,
                        a.start_ms as i64,
                        a.duration_ms as i64,
                        a.outcome,
                        a.detail,
                        a.verdict,
                        a.last,
                        a.boot
                    ])
                    .map_err(|e| err("writing attempts", &e))?;
                for (issue, os) in &a.known {
                    known
                        .execute(params![
                            run.id,
                            a.test,
                            a.repeat,
                            a.attempt,
                            *issue as i64,
                            os
                        ])
                        .map_err(|e| err("writing attempts", &e))?;
                }
            }
        }
        tx.commit().map_err(|e| err("writing attempts", &e))
    }

    /// Add the boot of a shared machine of `run`.
    pub fn add_boot(&mut self, run: &RunRow, boot: &BootRow) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO boots (run, seq, label, image, origin, duration_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    run.id,
                    boot.seq,
                    boot.label,
                    boot.image,
                    boot.origin,
                    boot.duration_ms as i64
                ],
            )
            .map(|_| ())
            .map_err(|e| error(&self.path)("writing a boot", &e))
    }

    /// The durations of the last `keep` real results (passed, failed, timed out, unexpected
    /// messages) of each of `tests` of `project` on `os` in settled runs since `since_ms`,
    /// newest first: a short range of the index per test, so that a run's start costs
    /// little however much the store holds.
    pub fn recent_durations(
        &self,
        project: &str,
        os: &str,
        tests: &[String],
        since_ms: u64,
        keep: usize,
    ) -> Result<Vec<(String, Vec<u64>)>, StoreError> {
        let err = error(&self.path);
        let read = |e: rusqlite::Error| err("reading durations", &e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT duration_ms FROM attempts
                 WHERE project = ?1 AND os = ?2 AND test = ?3 AND start_ms >= ?4
                   AND outcome IN ('passed', 'failed', 'timed-out', 'unexpected-messages')
                   AND run NOT IN (SELECT id FROM runs WHERE settled = 0)
                 ORDER BY start_ms DESC LIMIT ?5",
            )
            .map_err(read)?;
        let mut out = Vec::new();
        for test in tests {
            let v = stmt
                .query_map(
                    params![project, os, test, since_ms as i64, keep as i64],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(read)?
                .map(|r| r.map(|ms| ms.max(0) as u64))
                .collect::<Result<Vec<u64>, _>>()
                .map_err(read)?;
            if !v.is_empty() {
                out.push((test.clone(), v));
            }
        }
        Ok(out)
    }

    /// The verdicts of the last `keep` settled runs of each of `tests` (name, TEST_OS) of
    /// `project`, newest first, leaving out the runs `except` (the one being reported, or
    /// those a merged stream combines; with their per-OS parts): what a report shows as each
    /// test's recent history.
    pub fn recent_verdicts(
        &self,
        project: &str,
        tests: &[(String, String)],
        except: &[String],
        keep: usize,
    ) -> Result<Vec<Vec<String>>, StoreError> {
        let err = error(&self.path);
        let read = |e: rusqlite::Error| err("reading verdicts", &e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run, verdict FROM attempts
                 WHERE project = ?1 AND os = ?2 AND test = ?3 AND last = 1
                   AND run NOT IN (SELECT id FROM runs WHERE settled = 0)
                 ORDER BY start_ms DESC",
            )
            .map_err(read)?;
        let left_out = |run: &str| {
            except.iter().any(|e| {
                run.strip_prefix(e.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
        };
        let mut out = Vec::with_capacity(tests.len());
        for (test, os) in tests {
            let mut rows = stmt.query(params![project, os, test]).map_err(read)?;
            let mut verdicts = Vec::new();
            while verdicts.len() < keep
                && let Some(r) = rows.next().map_err(read)?
            {
                let run: String = r.get(0).map_err(read)?;
                if !left_out(&run) {
                    verdicts.push(r.get(1).map_err(read)?);
                }
            }
            out.push(verdicts);
        }
        Ok(out)
    }

    /// The durations of the last `keep` boots of shared machines of `project` on `os` that
    /// came up as `origin` (`cold`, `restored`) in settled runs since `since_ms`, newest
    /// first. Boots of streams that did not say how count as cold.
    pub fn recent_boots(
        &self,
        project: &str,
        os: &str,
        origin: &str,
        since_ms: u64,
        keep: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let err = error(&self.path);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT b.duration_ms FROM boots b JOIN runs r ON r.id = b.run
                 WHERE r.project = ?1 AND r.os = ?2 AND r.start_ms >= ?3 AND r.settled = 1
                   AND coalesce(b.origin, 'cold') = ?4
                 ORDER BY r.start_ms DESC, b.seq DESC LIMIT ?5",
            )
            .map_err(|e| err("reading boots", &e))?;
        let rows = stmt
            .query_map(
                params![project, os, since_ms as i64, origin, keep as i64],
                |r| r.get::<_, i64>(0),
            )
            .map_err(|e| err("reading boots", &e))?;
        rows.map(|r| r.map(|ms| ms.max(0) as u64))
            .collect::<Result<_, _>>()
            .map_err(|e| err("reading boots", &e))
    }

    /// The connection, for the queries of [`super::stats`].
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }
}

/// An error about the store at `path`, in `context`.
pub(super) fn error(path: &Path) -> impl Fn(&'static str, &dyn std::fmt::Display) -> StoreError {
    let path = path.to_path_buf();
    move |context, e| StoreError {
        path: path.clone(),
        context,
        message: e.to_string(),
    }
}
