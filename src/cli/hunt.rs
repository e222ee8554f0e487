//! `vmcheck hunt A..B TEST`: the commit that changed a test's failure rate, found as
//! TestLooper would by running the test many times at commits of the range. Each probed
//! commit is checked out into a git worktree (named like the project, so that its results
//! are the project's in the outcome store), the test runs there `--runs` times through
//! `vmcheck run --repeat`, and the search narrows by bisection on the failure rate: the
//! change-point model of `results::changepoint` says between which probed commits the rate
//! most likely broke, and the commit halfway between them is probed next, until the break
//! lies between a commit and its parent with at least one star of significance. Results
//! already in the store for those commits (clean runs) count too.

use super::errors::CliError;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use vmcheck::exit_codes;
use vmcheck::results::changepoint::{self, Tally};
use vmcheck::results::stats::{self, Query};
use vmcheck::results::store::{self, Store};

/// What `vmcheck hunt` was asked.
pub struct Hunt {
    pub range: String,
    pub test: String,
    pub runs: u32,
    pub results_db: Option<PathBuf>,
}

/// Exit code: the data cannot name a commit (more runs might).
pub const CANNOT_TELL: i32 = 1;

/// The most runs a probed commit gets when a break stays ambiguous: this many times
/// `--runs`.
const MAX_ROUNDS: u64 = 4;

/// `git -C root ARGS`: its trimmed stdout, or an error with git's message.
pub fn git(root: &Path, args: &[&str]) -> Result<String, CliError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::Usage(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(CliError::Usage(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A worktree of the project at one commit after another, removed at the end.
struct Worktree<'a> {
    root: &'a Path,
    path: PathBuf,
    _dir: tempfile::TempDir,
    added: bool,
}

impl<'a> Worktree<'a> {
    fn new(root: &'a Path, name: &str) -> Result<Worktree<'a>, CliError> {
        let dir = tempfile::Builder::new()
            .prefix("vmcheck-hunt-")
            .tempdir()
            .map_err(|e| {
                CliError::Usage(format!("cannot create a directory for worktrees: {e}"))
            })?;
        Ok(Worktree {
            root,
            path: dir.path().join(name),
            _dir: dir,
            added: false,
        })
    }

    fn checkout(&mut self, commit: &str) -> Result<&Path, CliError> {
        self.remove();
        let path = self.path.to_string_lossy().into_owned();
        git(
            self.root,
            &["worktree", "add", "--quiet", "--detach", &path, commit],
        )?;
        self.added = true;
        Ok(&self.path)
    }

    fn remove(&mut self) {
        if self.added {
            let path = self.path.to_string_lossy().into_owned();
            let _ = git(self.root, &["worktree", "remove", "--force", &path]);
            let _ = git(self.root, &["worktree", "prune"]);
            self.added = false;
        }
    }
}

impl Drop for Worktree<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `vmcheck hunt`.
pub fn hunt(root: &Path, h: &Hunt) -> Result<i32, CliError> {
    let Some((base, tip)) = h
        .range
        .split_once("..")
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
    else {
        return Err(CliError::Usage(format!(
            "hunt {}: expected a range A..B (A: a commit where the test behaved, B: one where it does not)",
            h.range
        )));
    };
    let resolve = |r: &str| {
        git(
            root,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{r}^{{commit}}"),
            ],
        )
    };
    let base =
        resolve(base).map_err(|_| CliError::Usage(format!("hunt: {base} is not a commit")))?;
    let tip = resolve(tip).map_err(|_| CliError::Usage(format!("hunt: {tip} is not a commit")))?;
    let list = git(
        root,
        &[
            "rev-list",
            "--reverse",
            "--first-parent",
            &format!("{base}..{tip}"),
        ],
    )?;
    let mut line: Vec<String> = vec![base];
    line.extend(list.lines().map(String::from));
    if line.len() < 2 {
        return Err(CliError::Usage(format!(
            "hunt {}: the range has no commits",
            h.range
        )));
    }
    let test_os = std::env::var("TEST_OS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| super::run::plan::DEFAULT_TEST_OS.to_string());
    vmcheck::planning::plan::check_test_os(&test_os).map_err(CliError::Usage)?;
    if vmcheck::planning::plan::run_oses(&test_os).len() > 1 {
        return Err(CliError::Usage(format!(
            "TEST_OS={test_os}: hunt measures a failure rate on one TEST_OS; give one"
        )));
    }
    let project = super::results::project_name(root, false);
    let store_path = store::path_of(h.results_db.as_deref());
    let query = Query {
        project: Some(project.clone()),
        os: Some(test_os.clone()),
        since_ms: None,
        filters: Vec::new(),
        clean_only: true,
    };
    let mut worktree = Worktree::new(root, &project)?;
    vmcheck::say!(
        "vmcheck: hunting in {} commits ({}..{}) for the change in {}'s failure rate on {test_os}, {} runs a probe",
        line.len(),
        short(&line[0]),
        short(&line[line.len() - 1]),
        h.test,
        h.runs
    );
    let runs = u64::from(h.runs);
    let last = line.len() - 1;
    let tallies = |line: &[String]| -> Result<Vec<Tally>, CliError> {
        let rows =
            match Store::open_existing(&store_path).map_err(|e| CliError::Usage(e.to_string()))? {
                Some(s) => stats::by_commit(&s, &query, &h.test)
                    .map_err(|e| CliError::Usage(e.to_string()))?,
                None => Vec::new(),
            };
        Ok(line
            .iter()
            .map(|c| {
                rows.iter()
                    .filter(|r| r.commit.as_deref() == Some(c.as_str()))
                    .fold(
                        Tally {
                            failures: 0,
                            runs: 0,
                        },
                        |t, r| Tally {
                            failures: t.failures + r.failures,
                            runs: t.runs + r.runs,
                        },
                    )
            })
            .collect())
    };
    let mut probe = |i: usize, tallies: &[Tally]| -> Result<(), CliError> {
        vmcheck::say!(
            "vmcheck: probing {} ({runs} runs; {} failed of {} so far) ...",
            short(&line[i]),
            tallies[i].failures,
            tallies[i].runs
        );
        let dir = worktree.checkout(&line[i])?.to_path_buf();
        run_probe(&dir, &h.test, runs, &store_path, &test_os, &line[i])
    };
    let mut t = tallies(&line)?;
    for i in [0, last] {
        if t[i].runs < runs {
            probe(i, &t)?;
        }
    }
    loop {
        t = tallies(&line)?;
        let probed: Vec<usize> = (0..line.len()).filter(|&i| t[i].runs > 0).collect();
        let seq: Vec<Tally> = probed.iter().map(|&i| t[i]).collect();
        let split = changepoint::best_split(&seq);
        let (left, right) = match split {
            Some(s) => (probed[s.at - 1], probed[s.at]),
            None => (0, last),
        };
        let significant = split.is_some_and(|s| s.stars > 0);
        if significant && right == left + 1 {
            print_table(root, &line, &t, Some((right, split.expect("significant"))));
            out!(
                "first commit with the changed failure rate: {} {}",
                line[right],
                subject(root, &line[right])
            );
            return Ok(exit_codes::OK);
        }
        if significant {
            probe((left + right) / 2, &t)?;
            continue;
        }
        // Not (or no longer) significant: more runs where the break most likely is.
        let more: Vec<usize> = [left, right]
            .into_iter()
            .filter(|&i| t[i].runs < runs * MAX_ROUNDS)
            .collect();
        if more.is_empty() {
            print_table(root, &line, &t, None);
            let gain = split.map_or(0.0, |s| s.gain);
            match changepoint::growth_for_one_star(gain) {
                Some(g) => out!(
                    "the data cannot tell: the likeliest break, between {} and {}, needs about {:.0} runs on each side to be significant at 0.1 (now {} and {})",
                    short(&line[left]),
                    short(&line[right]),
                    (g * t[left].runs.max(t[right].runs) as f64).ceil(),
                    t[left].runs,
                    t[right].runs
                ),
                None => out!(
                    "the data cannot tell: the failure rate is the same at every probed commit ({} runs at {}, {} at {})",
                    t[left].runs,
                    short(&line[left]),
                    t[right].runs,
                    short(&line[right])
                ),
            }
            return Ok(CANNOT_TELL);
        }
        for i in more {
            probe(i, &t)?;
            t = tallies(&line)?;
        }
    }
}

/// Run `test` `runs` times in the worktree at `dir`, recording into `store_path`.
fn run_probe(
    dir: &Path,
    test: &str,
    runs: u64,
    store_path: &Path,
    test_os: &str,
    commit: &str,
) -> Result<(), CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Usage(format!("cannot find the vmcheck binary: {e}")))?;
    let out = Command::new(exe)
        .arg("--project-dir")
        .arg(dir)
        .args([
            "run",
            "--progress",
            "none",
            "--exact",
            test,
            "--repeat",
            &runs.to_string(),
        ])
        .arg("--results-db")
        .arg(store_path)
        .env("TEST_OS", test_os)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| CliError::Usage(format!("cannot run vmcheck: {e}")))?;
    match out.status.code() {
        Some(exit_codes::OK | exit_codes::TESTS_FAILED) => Ok(()),
        Some(exit_codes::NO_TESTS) => Err(CliError::Usage(format!(
            "hunt: {test} is not a test at {}",
            short(commit)
        ))),
        code => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            Err(CliError::Usage(format!(
                "hunt: vmcheck run at {} exited {}: {}",
                short(commit),
                code.map_or("on a signal".into(), |c| c.to_string()),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )))
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(10)]
}

fn subject(root: &Path, commit: &str) -> String {
    let s = git(root, &["log", "-1", "--format=%s", commit]).unwrap_or_default();
    vmcheck::reporter::text::one_line(&s)
        .chars()
        .take(50)
        .collect()
}

/// The probed commits, oldest first, with their tallies and intervals; the named break
/// marked with its stars.
fn print_table(
    root: &Path,
    line: &[String],
    t: &[Tally],
    found: Option<(usize, changepoint::Split)>,
) {
    let probed: Vec<(usize, String)> = (0..line.len())
        .filter(|&i| t[i].runs > 0)
        .map(|i| (i, subject(root, &line[i])))
        .collect();
    let w = probed
        .iter()
        .map(|(_, s)| s.chars().count())
        .max()
        .unwrap_or(0)
        .max("SUBJECT".len());
    out!(
        "{:<10}  {:<w$}  {:>5}  {:>6}  {:>6}  95% INTERVAL",
        "COMMIT",
        "SUBJECT",
        "RUNS",
        "FAILED",
        "RATE"
    );
    for (i, subject) in probed {
        let (lo, hi) = stats::wilson(t[i].failures, t[i].runs);
        let mark = match found {
            Some((at, s)) if at == i => format!(
                "  {} {:.1}% -> {:.1}%",
                "*".repeat(usize::from(s.stars)),
                100.0 * s.before,
                100.0 * s.after
            ),
            _ => String::new(),
        };
        out!(
            "{:<10}  {subject:<w$}  {:>5}  {:>6}  {:>5.1}%  {:.1}%-{:.1}%{mark}",
            short(&line[i]),
            t[i].runs,
            t[i].failures,
            100.0 * t[i].rate(),
            100.0 * lo,
            100.0 * hi
        );
    }
}
