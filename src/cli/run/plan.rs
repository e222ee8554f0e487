//! A run's planning stage, before anything is built or boots: what was asked (the suite,
//! TEST_OS, the shard), the tests collected (check files or autopkgtests), and the plan made
//! of them (scenario, filters, affected tests, known issues, repeats, durations, estimates,
//! the shard's part); `--list` and `--explain` print it. Every input error is found here.

use super::Suite;
use super::autopkgtest::{AptRun, collect_autopkgtests};
use crate::cli::args::RunArgs;
use crate::cli::errors::CliError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vmcheck::autopkgtest::test::Internet;
use vmcheck::checkfile::{self, TestDef};
use vmcheck::events::ShardInfo;
use vmcheck::image::Catalog;
use vmcheck::naughty::NaughtyDb;
use vmcheck::planning::affected::Affected;
use vmcheck::planning::estimate::Estimates;
use vmcheck::planning::plan::{PlanOptions, TestPlan};
use vmcheck::planning::shard::Shard;
use vmcheck::signal::Cancel;

/// The default image when `TEST_OS` is not set: the fast one.
pub const DEFAULT_TEST_OS: &str = "busybox";
/// The default image of `vmcheck autopkgtest`.
pub const DEFAULT_AUTOPKGTEST_OS: &str = "debian-12";
/// The most runs of a test with `--until-fail` and no `--repeat`.
const DEFAULT_UNTIL_FAIL: u32 = 100;

/// What a run was asked for, once its suite, options and environment are read.
pub(super) struct Request {
    /// The one check file of `vmcheck exec FILE`.
    pub(super) file: Option<PathBuf>,
    /// The source packages of `vmcheck autopkgtest`.
    pub(super) autopkgtest: Option<AptSources>,
    pub(super) shard: Option<Shard>,
    /// How many runs of each test, if repeated (`--repeat`, `--until-fail`, `--stress-below`).
    pub(super) repeats: Option<u32>,
    /// `TEST_OS`, or the suite's default image.
    pub(super) test_os: String,
}

/// `vmcheck autopkgtest`'s source packages and options.
pub(super) struct AptSources {
    sources: Vec<PathBuf>,
    pub(super) summary_file: Option<PathBuf>,
    internet: Internet,
}

/// Read the suite, options and environment of a run into a [`Request`], settling the
/// options that follow from others (`args` keeps only the filters of an autopkgtest run's
/// words; running one file by hand, `--sit` and repeats turn retries off; `--machine` runs
/// only nondestructive tests).
pub(super) fn settle(args: &mut RunArgs, suite: &Suite) -> Result<Request, CliError> {
    let file = match suite {
        Suite::File(f) => Some(f.clone()),
        _ => None,
    };
    let autopkgtest = match suite {
        Suite::Autopkgtest {
            summary_file,
            needs_internet,
        } => {
            let (sources, filters): (Vec<String>, Vec<String>) =
                args.filters.iter().cloned().partition(|w| {
                    let p = Path::new(w);
                    p.is_dir() || (p.is_file() && w.ends_with(".dsc"))
                });
            if sources.is_empty() {
                return Err(CliError::Usage(
                    "name at least one source package: a source tree (a directory with \
                     debian/tests/control) or a .dsc file"
                        .into(),
                ));
            }
            if !args.machine.is_empty() {
                return Err(CliError::Usage(
                    "vmcheck autopkgtest runs on machines it boots, with each test's \
                     dependencies installed: --machine is not supported"
                        .into(),
                ));
            }
            args.filters = filters;
            Some(AptSources {
                sources: sources.into_iter().map(PathBuf::from).collect(),
                summary_file: summary_file.clone(),
                internet: *needs_internet,
            })
        }
        _ => None,
    };
    if file.is_some() {
        // Running one check file by hand: no retries, output live (as Cockpit's check-*).
        args.no_retry_fail = true;
    }
    let repeats = repeats(args)?;
    if args.sit || repeats.is_some() {
        // A repeated test's runs are its trials: each counts as it ends.
        args.no_retry_fail = true;
    }
    if !args.machine.is_empty() {
        args.nondestructive = true;
    }
    let shard = args
        .shard
        .as_deref()
        .map(str::parse::<Shard>)
        .transpose()
        .map_err(CliError::Usage)?;
    let test_os = std::env::var("TEST_OS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            if autopkgtest.is_some() {
                DEFAULT_AUTOPKGTEST_OS
            } else {
                DEFAULT_TEST_OS
            }
            .to_string()
        });
    vmcheck::planning::plan::check_test_os(&test_os).map_err(CliError::Usage)?;
    let several_os = vmcheck::planning::plan::run_oses(&test_os).len() > 1;
    if several_os && autopkgtest.is_some() {
        return Err(CliError::Usage(format!(
            "TEST_OS={test_os}: autopkgtest runs on one TEST_OS at a time (its dependencies \
             are resolved against that image)"
        )));
    }
    if several_os && !args.machine.is_empty() {
        return Err(CliError::Usage(format!(
            "TEST_OS={test_os}: --machine runs on existing hosts of one TEST_OS; give one"
        )));
    }
    Ok(Request {
        file,
        autopkgtest,
        shard,
        repeats,
        test_os,
    })
}

/// The tests of the request: its check file, the check files of `--test-dir`, or its source
/// packages' autopkgtests (a `.dsc` unpacked in `scratch`).
pub(super) async fn collect(
    catalog: &Arc<Catalog>,
    args: &RunArgs,
    request: &Request,
    scratch: &Path,
    cancel: &Cancel,
) -> Result<Vec<TestDef>, CliError> {
    let root = &catalog.project.root;
    let found = match &request.file {
        // Source packages are the suite, not the project's check files.
        _ if request.autopkgtest.is_some() => checkfile::Discovered::default(),
        Some(f) => checkfile::Discovered {
            files: vec![f.clone()],
            ..Default::default()
        },
        None => {
            let dir = args
                .test_dir
                .clone()
                .unwrap_or_else(|| root.join("test/verify"));
            checkfile::discover(&dir, &args.test_glob).map_err(|e| {
                CliError::Usage(format!("cannot read test directory {}: {e}", dir.display()))
            })?
        }
    };
    for f in &found.ignored {
        vmcheck::say!(
            "vmcheck: warning: ignoring {}: an editor backup, not a check file",
            f.strip_prefix(root).unwrap_or(f).display()
        );
    }
    if let Some(apt) = &request.autopkgtest {
        let how = AptRun {
            test_os: &request.test_os,
            scratch,
            resolve: !args.list,
            internet: apt.internet,
        };
        return collect_autopkgtests(catalog, &apt.sources, &how, cancel).await;
    }
    match (checkfile::load(&found.files, root), found.unusable) {
        (Ok(loaded), unusable) if unusable.is_empty() => {
            for w in &loaded.warnings {
                vmcheck::say!("vmcheck: warning: {w}");
            }
            Ok(loaded.tests)
        }
        (loaded, mut unusable) => {
            unusable.extend(loaded.err().unwrap_or_default());
            Err(CliError::CheckFiles(unusable))
        }
    }
}

/// A run's plan and what was decided with it.
pub(super) struct Planned {
    pub(super) plan: TestPlan,
    pub(super) affected: Affected,
    pub(super) naughty: NaughtyDb,
    pub(super) estimates: Estimates,
    pub(super) shard: Option<ShardInfo>,
    /// Nothing left out: every known issue that matched nothing is worth listing.
    pub(super) whole_suite: bool,
    /// The outcome store, and the project's name in it.
    pub(super) store: PathBuf,
    pub(super) project: String,
    /// Whether the run is recorded into the store (it could be read).
    pub(super) record: bool,
}

/// Plan the tests: `--scenario`, filters and matrix, affected tests of `--base`, known issues,
/// repeats, the recorded durations and the estimates made of them, the shard's part.
/// `None`: a shard with nothing to do, which is not an error.
pub(super) fn plan(
    mut tests: Vec<TestDef>,
    args: &mut RunArgs,
    request: &Request,
    root: &Path,
    verbose: bool,
) -> Result<Option<Planned>, CliError> {
    let test_os = &request.test_os;
    let mut opts = PlanOptions {
        test_os: test_os.clone(),
        filters: args.filters.clone(),
        exact: args.exact,
        exclude: args.exclude.clone(),
        matrix: args.matrix.clone(),
        nondestructive_only: args.nondestructive,
    };
    if let Some(name) = args.scenario.as_deref().filter(|s| !s.is_empty()) {
        let scenario = vmcheck::planning::scenario::load(&root.join("test/scenarios.toml"), name)
            .map_err(CliError::Usage)?;
        opts.filters.extend(scenario.filters);
        opts.exclude.extend(scenario.exclude);
        opts.nondestructive_only |= scenario.nondestructive;
        args.no_retry_fail |= scenario.no_retry_fail;
        tests.retain(|t: &TestDef| {
            !scenario
                .exclude_matching
                .iter()
                .any(|m| t.name().contains(m.as_str()))
        });
    }
    let affected = match args.base.as_deref().filter(|b| !b.is_empty()) {
        Some(base) => {
            let changed =
                vmcheck::planning::affected::changed_files(root, base).map_err(CliError::Usage)?;
            let a = vmcheck::planning::affected::affected(&tests, &changed, args.pkg_rule);
            for note in &a.notes {
                vmcheck::say!("vmcheck: {note}");
            }
            a
        }
        None => Affected::default(),
    };
    let naughty = if args.thorough {
        NaughtyDb::default()
    } else {
        NaughtyDb::load(&root.join(vmcheck::naughty::NAUGHTY_DIR)).map_err(CliError::Naughty)?
    };
    let mut plan = vmcheck::planning::plan::plan(tests, &opts);
    if let Some(n) = request.repeats {
        plan = vmcheck::planning::plan::repeat(plan, n);
    }
    let whole_suite = request.file.is_none()
        && request.shard.is_none()
        && opts.filters.is_empty()
        && opts.exclude.is_empty()
        && opts.matrix.is_empty()
        && !opts.nondestructive_only;
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let project = crate::cli::results::project_name(root, request.autopkgtest.is_some());
    // A store that cannot be read is one warning, and the run goes on without it.
    // A plain listing shows no estimate and splits no shard: it reads no durations.
    let needs_durations = !args.list || verbose || request.shard.is_some();
    let looked_up = if needs_durations {
        durations_of(&plan, &store, &project, test_os)
    } else {
        Ok(Default::default())
    };
    let (durations, record) = match looked_up {
        Ok(d) => (d, true),
        Err(e) => {
            vmcheck::say!(
                "vmcheck: warning: outcome store {e}; ordering tests without durations{}",
                if args.list {
                    ""
                } else {
                    ", not recording this run"
                }
            );
            (Default::default(), false)
        }
    };
    let estimates = vmcheck::planning::estimate::estimate(&plan, &durations, args.cold_boot);
    if !plan.unknown_excludes.is_empty() {
        return Err(CliError::Usage(format!(
            "--exclude names no test: {} (it takes exact TestClass.testMethod names or case \
             ids, TestClass.testMethod[fs=xfs])",
            plan.unknown_excludes.join(", ")
        )));
    }
    let mut shard_info = None;
    if let Some(shard) = request.shard {
        let selection = vmcheck::planning::shard::select(plan, &estimates, shard);
        shard_info = Some(ShardInfo {
            index: shard.index,
            total: shard.total,
            split: selection.fingerprint.clone(),
        });
        vmcheck::say!(
            "vmcheck: shard {shard}: {} of {} tests, estimated {:.0}s (largest shard {:.0}s, \
             {} of the estimates guessed; split {})",
            selection.plan.tests.len(),
            selection.selected,
            selection.estimate.as_secs_f64(),
            selection.largest.as_secs_f64(),
            selection.selected - estimates.recorded(),
            selection.fingerprint,
        );
        if selection.plan.tests.is_empty() && selection.selected > 0 {
            // More shards than tests: this one has nothing to do, which is not an error.
            return Ok(None);
        }
        plan = selection.plan;
    }
    for f in &plan.unmatched_filters {
        vmcheck::say!("vmcheck: warning: filter '{f}' matches no test");
    }
    for m in &plan.unmatched_matrix {
        vmcheck::say!("vmcheck: warning: --matrix {m} matches no matrix case");
    }
    if plan.tests.is_empty() {
        return Err(CliError::NoTests);
    }
    Ok(Some(Planned {
        plan,
        affected,
        naughty,
        estimates,
        shard: shard_info,
        whole_suite,
        store,
        project,
        record,
    }))
}

/// `--explain`: each planned test and why it is affected by the change, or not.
pub(super) fn explain(planned: &Planned) {
    for t in &planned.plan.tests {
        let reasons = planned.affected.reasons(&t.def.file);
        let why = if reasons.is_empty() {
            "not affected".to_string()
        } else if t.def.no_retry_when_changed {
            "affected, but no_retry_when_changed: runs once".to_string()
        } else {
            let r: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
            format!("affected: {}", r.join("; "))
        };
        out!("{} {}: {why}", t.def.file.display(), t.def.name());
    }
}

/// `--list`: the planned tests' names; with `-v`, their file, kind, timeout and estimate.
pub(super) fn list(planned: &Planned, verbose: bool) {
    for t in &planned.plan.tests {
        if verbose {
            let estimate = planned.estimates.of(&t.def.name());
            out!(
                "{} {} {} timeout={}s estimate={:.1}s{}",
                t.def.file.display(),
                t.def.name(),
                if t.def.nondestructive {
                    "nondestructive"
                } else {
                    "destructive"
                },
                t.def.timeout.as_secs(),
                estimate.duration.as_secs_f64(),
                if estimate.recorded { "" } else { " (guess)" }
            );
        } else {
            out!("{}", t.def.name());
        }
    }
}

/// The recorded durations of the tests of `plan` on their TEST_OS, by the names of their
/// cases ([`TestDef::case_name`]); with several TEST_OS, the boots of all of them.
fn durations_of(
    plan: &TestPlan,
    store: &Path,
    project: &str,
    test_os: &str,
) -> Result<vmcheck::results::durations::Durations, vmcheck::results::store::StoreError> {
    let oses = vmcheck::planning::plan::run_oses(test_os);
    if oses.len() == 1 {
        let mut names: Vec<String> = plan.tests.iter().map(|t| t.def.base_name()).collect();
        names.dedup();
        return crate::cli::results::durations(store, project, test_os, &names);
    }
    let mut all = vmcheck::results::durations::Durations::default();
    for os in oses {
        let on_os = || plan.tests.iter().filter(|t| t.def.os(test_os) == os);
        let mut names: Vec<String> = on_os().map(|t| t.def.base_name()).collect();
        names.dedup();
        let mut d = crate::cli::results::durations(store, project, os, &names)?;
        for t in on_os() {
            if let Some(v) = d.tests.get(&t.def.base_name()) {
                all.tests.insert(t.def.case_name(), v.clone());
            }
        }
        all.boot.append(&mut d.boot);
        all.restore.append(&mut d.restore);
    }
    Ok(all)
}

/// How many runs of each test (`--repeat`, `--until-fail`, `--stress-below`), if repeated.
fn repeats(args: &RunArgs) -> Result<Option<u32>, CliError> {
    if let Some(rate) = &args.stress_below {
        let rate = vmcheck::results::stats::parse_rate(rate)
            .map_err(|e| CliError::Usage(format!("--stress-below {rate}: {e}")))?;
        return Ok(Some(vmcheck::results::stats::runs_to_bound(rate)));
    }
    Ok(match (args.repeat, args.until_fail) {
        (Some(n), _) => Some(n),
        (None, true) => Some(DEFAULT_UNTIL_FAIL),
        (None, false) => None,
    })
}
