//! Known issues as the outcome store saw them (`vmcheck naughty stale`): for each pattern of
//! `bots/naughty/`, how often failures matched it, first and last, and whether it is stale:
//! it matched nothing in the window (the last 21 days by default, Cockpit's naughty-prune
//! rule, or the last N runs on its OS), so the bug may be fixed and the pattern may hide the
//! next one.

use super::store::{Store, StoreError, error};
use rusqlite::params;

/// Cockpit prunes known issues that matched nothing for this many days.
pub const STALE_DAYS: u64 = 21;

/// The window a pattern must have matched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Attempts started at or after this (epoch milliseconds).
    Since(u64),
    /// The last N runs of the project on the pattern's OS.
    Runs(u32),
}

/// One pattern's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrences {
    pub issue: u64,
    pub os: String,
    /// Attempts whose output matched it.
    pub count: u64,
    /// When it first and last matched (epoch milliseconds).
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    /// It matched nothing in the window.
    pub stale: bool,
}

/// The record of known issue `issue` of `os` in `project`'s runs.
pub fn occurrences(
    store: &Store,
    project: &str,
    issue: u64,
    os: &str,
    window: Window,
) -> Result<Occurrences, StoreError> {
    let err = error(store.path());
    let read = |e: rusqlite::Error| err("reading known issues", &e);
    let conn = store.conn();
    // A match on the run's own TEST_OS is stored with os NULL.
    let (count, first, last): (i64, Option<i64>, Option<i64>) = conn
        .query_row(
            "SELECT count(*), min(a.start_ms), max(a.start_ms)
             FROM known k JOIN runs r ON r.id = k.run
             JOIN attempts a ON a.run = k.run AND a.test = k.test AND a.repeat = k.repeat
                            AND a.attempt = k.attempt
             WHERE k.issue = ?1 AND coalesce(k.os, r.os) = ?2 AND r.project = ?3",
            params![issue as i64, os, project],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .map_err(read)?;
    let in_window: i64 = match window {
        Window::Since(ms) => {
            if last.is_some_and(|l| l >= ms as i64) {
                1
            } else {
                0
            }
        }
        Window::Runs(n) => conn
            .query_row(
                "SELECT count(*) FROM known k JOIN runs r ON r.id = k.run
                 WHERE k.issue = ?1 AND coalesce(k.os, r.os) = ?2 AND k.run IN (
                   SELECT id FROM runs WHERE project = ?3 AND os = ?2
                   ORDER BY start_ms DESC LIMIT ?4)",
                params![issue as i64, os, project, n],
                |r| r.get(0),
            )
            .map_err(read)?,
    };
    Ok(Occurrences {
        issue,
        os: os.to_string(),
        count: count.max(0) as u64,
        first_ms: first.map(|f| f.max(0) as u64),
        last_ms: last.map(|l| l.max(0) as u64),
        stale: in_window == 0,
    })
}
