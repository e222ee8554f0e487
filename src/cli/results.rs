//! `vmcheck stats` and `vmcheck results import`, and what `run` and `merge` need of the
//! outcome store: the project's name, the run's metadata (commit, host), the durations read
//! back, importing event streams. The store itself is `vmcheck::results`.

use super::args::{ResultsCommand, StatsArgs};
use super::errors::CliError;
use std::path::Path;
use vmcheck::events::RunMeta;
use vmcheck::exit_codes;
use vmcheck::results::durations::Durations;
use vmcheck::results::merge::Stream;
use vmcheck::results::now_ms;
use vmcheck::results::record::{Fallback, Recorded, Recorder, Source};
use vmcheck::results::stats::{self, Query};
use vmcheck::results::store::{self, Store, StoreError};

/// The project's name in the store: its root directory's name (checkouts of one project in
/// different places, on different CI machines, share their results); `autopkgtest` for
/// Debian suites, whose test names are the packages'.
pub fn project_name(root: &Path, autopkgtest: bool) -> String {
    if autopkgtest {
        return "autopkgtest".into();
    }
    root.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// The project vmcheck is run in, if any (for `stats` and `import`).
fn current_project() -> Option<String> {
    let dir = std::env::current_dir().ok()?;
    vmcheck::project::Project::discover(&dir).map(|p| project_name(&p.root, false))
}

/// The recorded durations of `tests` of `project` on `os` (none if there is no store yet).
pub fn durations(
    path: &Path,
    project: &str,
    os: &str,
    tests: &[String],
) -> Result<Durations, StoreError> {
    match Store::open_existing(path)? {
        Some(s) => Durations::read(&s, project, os, tests, now_ms()),
        None => Ok(Durations::default()),
    }
}

fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// A random run id (128 bits, hex).
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        // Unique enough without a random device: time, process and host.
        let seed = format!("{}-{}-{}", now_ms(), std::process::id(), host_name());
        let hash = <sha2::Sha256 as sha2::Digest>::digest(seed.as_bytes());
        bytes.copy_from_slice(&hash[..16]);
    }
    hex::encode(bytes)
}

/// `git` in `root`, its trimmed stdout if it succeeded.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    super::hunt::git(root, args).ok()
}

/// What the store records about a run starting now in `root`.
pub fn run_meta(root: &Path, project: &str, image: Option<String>) -> RunMeta {
    let commit = git(root, &["rev-parse", "--verify", "--quiet", "HEAD"]).filter(|c| !c.is_empty());
    let dirty = commit.is_some()
        && git(root, &["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|s| !s.is_empty());
    RunMeta {
        id: random_id(),
        project: project.to_string(),
        commit,
        dirty,
        image,
        host: host_name(),
        start_ms: now_ms(),
        merged: Vec::new(),
    }
}

/// How many runs and attempts an import added.
#[derive(Debug, Default)]
pub struct Imported {
    pub runs: usize,
    pub known: usize,
    pub attempts: usize,
}

/// Record `streams` in the store at `path`, as a run records itself; a stream already
/// there (by its run's id) adds nothing, but settles its run.
pub fn import(path: &Path, streams: &[Stream]) -> Result<Imported, StoreError> {
    let mut store = Store::open(path)?;
    let project = current_project().unwrap_or_else(|| "unknown".into());
    let mut done = Imported::default();
    for stream in streams {
        let start_ms = std::fs::metadata(&stream.file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let mut recorder = Recorder::new(Source::Import, fallback_of(stream, &project, start_ms));
        let mut new = false;
        for event in &stream.events {
            match recorder.record(&mut store, event)? {
                Recorded::Run { new: true } => (new, done.runs) = (true, done.runs + 1),
                Recorded::Run { new: false } => (new, done.known) = (false, done.known + 1),
                Recorded::Attempts(n) if new => done.attempts += n,
                _ => {}
            }
        }
    }
    Ok(done)
}

/// For a stream without run metadata: an id that is a hash of its events, so that the
/// same stream imported twice is one run.
fn fallback_of(stream: &Stream, project: &str, start_ms: u64) -> Fallback {
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    for e in &stream.events {
        let line = serde_json::to_string(e).expect("events serialize");
        sha2::Digest::update(&mut hash, line.as_bytes());
        sha2::Digest::update(&mut hash, b"\n");
    }
    Fallback {
        id: format!(
            "stream-{}",
            &hex::encode(sha2::Digest::finalize(hash))[..32]
        ),
        project: project.to_string(),
        host: "unknown".into(),
        start_ms,
    }
}

/// `vmcheck results import`.
pub fn results(cmd: &ResultsCommand) -> Result<i32, CliError> {
    match cmd {
        ResultsCommand::Import { files, results_db } => {
            // Every stream is read before the store is touched: a bad one changes nothing.
            let mut streams = Vec::new();
            for f in files {
                streams.push(
                    vmcheck::results::merge::read(f).map_err(|e| CliError::Usage(e.to_string()))?,
                );
            }
            let path = store::path_of(results_db.as_deref());
            let done = import(&path, &streams).map_err(|e| CliError::Usage(e.to_string()))?;
            vmcheck::say!(
                "vmcheck: {} into {}: {} new run(s), {} attempt(s){}",
                if done.runs > 0 {
                    "imported"
                } else {
                    "nothing new"
                },
                path.display(),
                done.runs,
                done.attempts,
                match done.known {
                    0 => String::new(),
                    n => format!("; {n} run(s) were there already"),
                }
            );
            Ok(exit_codes::OK)
        }
    }
}

/// `vmcheck naughty stale`: every pattern's record, the stale ones marked; 1 if any is.
pub fn naughty_stale(
    project: &vmcheck::project::Project,
    db: &vmcheck::naughty::NaughtyDb,
    days: Option<u64>,
    runs: Option<u32>,
    results_db: Option<std::path::PathBuf>,
) -> Result<i32, CliError> {
    use vmcheck::results::known::{self, STALE_DAYS, Window};
    let path = store::path_of(results_db.as_deref());
    let window = match runs {
        Some(n) => Window::Runs(n),
        None => {
            Window::Since(now_ms().saturating_sub(days.unwrap_or(STALE_DAYS) * 24 * 3600 * 1000))
        }
    };
    let store = Store::open_existing(&path).map_err(|e| CliError::Usage(e.to_string()))?;
    let name = project_name(&project.root, false);
    let mut stale = 0;
    for n in db.all() {
        let o = match &store {
            Some(s) => known::occurrences(s, &name, n.issue, &n.os, window)
                .map_err(|e| CliError::Usage(e.to_string()))?,
            None => known::Occurrences {
                issue: n.issue,
                os: n.os.clone(),
                count: 0,
                first_ms: None,
                last_ms: None,
                stale: true,
            },
        };
        stale += usize::from(o.stale);
        let seen = match (o.first_ms, o.last_ms) {
            (Some(f), Some(l)) => format!(
                "{} matches, first {}, last {}",
                o.count,
                utc_minute(f),
                utc_minute(l)
            ),
            _ => "never matched".into(),
        };
        out!(
            "{} #{} {}: {seen}",
            if o.stale { "STALE" } else { "ok   " },
            n.issue,
            n.path
                .strip_prefix(&project.root)
                .unwrap_or(&n.path)
                .display()
        );
    }
    let how = match window {
        Window::Runs(n) => format!("in the last {n} runs of its OS"),
        Window::Since(_) => format!("in the last {} days", days.unwrap_or(STALE_DAYS)),
    };
    vmcheck::say!(
        "vmcheck: {stale} of {} known issues matched nothing {how} ({})",
        db.len(),
        path.display()
    );
    Ok(if stale == 0 {
        exit_codes::OK
    } else {
        exit_codes::TESTS_FAILED
    })
}

/// `--since`: `7d`, or a duration as check files write them (`12h`, `90m`).
fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    if let Some(days) = s.strip_suffix('d')
        && let Ok(n) = days.parse::<u64>()
        && n > 0
    {
        return Ok(std::time::Duration::from_secs(n * 24 * 3600));
    }
    vmcheck::checkfile::parse_duration(s)
        .map_err(|e| format!("--since: {e} (or a number of days: \"7d\")"))
}

/// `vmcheck stats`.
pub fn stats(args: &StatsArgs) -> Result<i32, CliError> {
    let since = args
        .since
        .as_deref()
        .map(parse_since)
        .transpose()
        .map_err(CliError::Usage)?;
    let path = store::path_of(args.results_db.as_deref());
    let query = Query {
        project: if args.all_projects {
            None
        } else {
            current_project()
        },
        os: args.os.clone(),
        since_ms: since.map(|d| now_ms().saturating_sub(d.as_millis() as u64)),
        filters: args.filters.clone(),
        clean_only: false,
    };
    let store = Store::open_existing(&path).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(test) = &args.by_commit {
        return by_commit(store.as_ref(), &query, test, args.json);
    }
    let stats::Report { tests, hosts } = match &store {
        Some(s) => stats::report(s, &query).map_err(|e| CliError::Usage(e.to_string()))?,
        None => stats::Report::default(),
    };
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&tests).expect("statistics serialize")
        );
        return Ok(exit_codes::OK);
    }
    if tests.is_empty() {
        vmcheck::say!(
            "vmcheck: no results{} in {}",
            match &query.project {
                Some(p) => format!(" of project {p}"),
                None => String::new(),
            },
            path.display()
        );
        return Ok(exit_codes::OK);
    }
    for line in stats_table(&tests) {
        out!("{line}");
    }
    if !hosts.is_empty() {
        out!("");
        out!("Machine and harness failures (not counted against tests), by host:");
        for h in &hosts {
            out!(
                "  {}: {} of {} attempts ({:.1}%)",
                h.host,
                h.machine_failures,
                h.attempts,
                100.0 * h.machine_failures as f64 / h.attempts.max(1) as f64
            );
        }
    }
    Ok(exit_codes::OK)
}

/// `vmcheck stats --by-commit TEST`.
fn by_commit(
    store: Option<&Store>,
    query: &Query,
    test: &str,
    json: bool,
) -> Result<i32, CliError> {
    let rows = match store {
        Some(s) => stats::by_commit(s, query, test).map_err(|e| CliError::Usage(e.to_string()))?,
        None => Vec::new(),
    };
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("statistics serialize")
        );
        return Ok(exit_codes::OK);
    }
    if rows.is_empty() {
        vmcheck::say!("vmcheck: no results of {test}");
        return Ok(exit_codes::OK);
    }
    out!("{test}: failure rate at each commit, oldest first");
    out!(
        "{:<17} {:<16} {:>6} {:>6} {:>6}  95% INTERVAL",
        "COMMIT",
        "FIRST RUN",
        "RUNS",
        "FAILED",
        "RATE"
    );
    for r in rows {
        let commit = match &r.commit {
            Some(c) => format!(
                "{}{}",
                &c[..c.len().min(10)],
                if r.dirty { "+dirty" } else { "" }
            ),
            None => "(no git)".into(),
        };
        out!(
            "{commit:<17} {:<16} {:>6} {:>6} {:>6}  {}-{}",
            utc_minute(r.first_ms),
            r.runs,
            r.failures,
            percent(r.rate),
            percent(r.wilson_low),
            percent(r.wilson_high)
        );
    }
    Ok(exit_codes::OK)
}

fn percent(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The text table of `vmcheck stats`.
fn stats_table(tests: &[stats::TestStats]) -> Vec<String> {
    let header = [
        "TEST",
        "OS",
        "RUNS",
        "FAILED",
        "RETRIED",
        "MACHINE",
        "RATE",
        "95% INTERVAL",
        "FLIPS",
        "STATE",
        "LAST FAILURE",
    ];
    let rows: Vec<[String; 11]> = tests
        .iter()
        .map(|t| {
            [
                t.test.clone(),
                t.os.clone(),
                t.runs.to_string(),
                t.failures.to_string(),
                t.passed_on_retry.to_string(),
                t.machine_failures.to_string(),
                percent(t.rate),
                format!("{}-{}", percent(t.wilson_low), percent(t.wilson_high)),
                format!("{:.2}", t.flip_rate),
                t.state.as_str().to_string(),
                match t.last_failure_ms {
                    Some(ms) => format!(
                        "{}{}",
                        utc_minute(ms),
                        t.last_failure_commit
                            .as_deref()
                            .map(|c| format!(" {}", &c[..c.len().min(10)]))
                            .unwrap_or_default()
                    ),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            // Names and words left, numbers right.
            let right = (2..=8).contains(&i);
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// `2026-12-02 14:03` (UTC) for epoch milliseconds.
fn utc_minute(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let (h, m) = ((secs % 86400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00");
        assert_eq!(utc_minute(1_796_220_180_000), "2026-12-02 14:03");
        assert_eq!(utc_minute(951_782_400_000), "2000-02-29 00:00");
    }

    #[test]
    fn since() {
        assert_eq!(parse_since("7d").unwrap().as_secs(), 7 * 86400);
        assert_eq!(parse_since("90m").unwrap().as_secs(), 5400);
        assert!(parse_since("soon").unwrap_err().starts_with("--since: "));
    }
}
