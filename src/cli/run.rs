//! `vmcheck run` and `vmcheck exec`: check files → plan → images and host → dispatcher, with
//! the TAP reporter on stdout. Every input error is found before anything boots.

use super::args::ProgressMode;
use super::args::{FlakyResult, MergeArgs, ReportArgs, RunArgs};
use super::errors::CliError;
use std::io::BufWriter;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmcheck::autopkgtest::test::Internet;
use vmcheck::checkfile::{self, TestDef};
use vmcheck::events::{Event, Placement, RunStats, TestInfo, Verdict};
use vmcheck::exit_codes;
use vmcheck::image::{Catalog, ImageError};
use vmcheck::machine::host::Host;
use vmcheck::machine::qemu::{QEMU_OVERHEAD_MIB, mem_available_mib};
use vmcheck::machine::remote::parse_address;
use vmcheck::machine::ssh::{HostKeyCheck, SshTarget};
use vmcheck::plan::{PlanOptions, TestPlan};
use vmcheck::policy::PolicyOptions;
use vmcheck::reporter::Reporter;
use vmcheck::reporter::autopkgtest::Summary as AptSummary;
use vmcheck::reporter::file::ReportFile;
use vmcheck::reporter::html::HtmlReporter;
use vmcheck::reporter::json::JsonReporter;
use vmcheck::reporter::junit::JunitReporter;
use vmcheck::reporter::live::LiveReporter;
use vmcheck::reporter::progress::{BarReporter, LinesReporter};
use vmcheck::reporter::status::StatusReporter;
use vmcheck::reporter::summary::{self, SummaryReporter};
use vmcheck::reporter::tap::TapReporter;
use vmcheck::results::writer::LiveStore;
use vmcheck::runner::attempt::AttemptContext;
use vmcheck::runner::boots::BootGate;
use vmcheck::runner::dispatcher::{Dispatcher, RunConfig, test_info};
use vmcheck::runner::ledger::{default_jobs, host_capacity};
use vmcheck::shard::Shard;
use vmcheck::signal::Cancel;

/// The default image when `TEST_OS` is not set: the fast one.
pub const DEFAULT_TEST_OS: &str = "busybox";
/// The default image of `vmcheck autopkgtest`.
pub const DEFAULT_AUTOPKGTEST_OS: &str = "debian-12";

/// Where a run's tests come from.
pub enum Suite {
    /// The check files of `--test-dir` (`vmcheck run`).
    Dir,
    /// One check file (`vmcheck exec FILE`).
    File(PathBuf),
    /// Source packages' autopkgtests (`vmcheck autopkgtest`): the positional words that
    /// name a source tree or a `.dsc` are sources, the others filters.
    Autopkgtest {
        summary_file: Option<PathBuf>,
        needs_internet: Internet,
    },
}

pub async fn run(
    catalog: Arc<Catalog>,
    mut args: RunArgs,
    suite: Suite,
    verbose: bool,
    cancel: &Cancel,
) -> Result<i32, CliError> {
    let root = catalog.project.root.clone();
    let file = match &suite {
        Suite::File(f) => Some(f.clone()),
        _ => None,
    };
    let single_file = file.is_some();
    let autopkgtest = match &suite {
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
            Some((
                sources.into_iter().map(PathBuf::from).collect::<Vec<_>>(),
                summary_file.clone(),
                *needs_internet,
            ))
        }
        _ => None,
    };
    if single_file {
        // Running one check file by hand: no retries, output live (as Cockpit's check-*).
        args.no_retry_fail = true;
    }
    if args.sit || repeats(&args)?.is_some() {
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
    vmcheck::plan::check_test_os(&test_os).map_err(CliError::Usage)?;
    let several_os = vmcheck::plan::run_oses(&test_os).len() > 1;
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

    // Check files, scenario, plan: all input errors before anything starts.
    let found = match &file {
        // Source packages are the suite, not the project's check files.
        _ if autopkgtest.is_some() => checkfile::Discovered::default(),
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
            f.strip_prefix(&root).unwrap_or(f).display()
        );
    }
    // Where `.dsc` files are unpacked, for the whole run.
    let scratch = tempfile::tempdir()
        .map_err(|e| CliError::Usage(format!("cannot create a scratch directory: {e}")))?;
    let mut tests = match &autopkgtest {
        Some((sources, _, internet)) => {
            let how = AptRun {
                test_os: &test_os,
                scratch: scratch.path(),
                resolve: !args.list,
                internet: *internet,
            };
            collect_autopkgtests(&catalog, sources, &how, cancel).await?
        }
        None => match (checkfile::load(&found.files, &root), found.unusable) {
            (Ok(loaded), unusable) if unusable.is_empty() => {
                for w in &loaded.warnings {
                    vmcheck::say!("vmcheck: warning: {w}");
                }
                loaded.tests
            }
            (loaded, mut unusable) => {
                unusable.extend(loaded.err().unwrap_or_default());
                return Err(CliError::CheckFiles(unusable));
            }
        },
    };
    let mut opts = PlanOptions {
        test_os: test_os.clone(),
        filters: args.filters.clone(),
        exact: args.exact,
        exclude: args.exclude.clone(),
        matrix: args.matrix.clone(),
        nondestructive_only: args.nondestructive,
    };
    if let Some(name) = args.scenario.as_deref().filter(|s| !s.is_empty()) {
        let scenario = vmcheck::scenario::load(&root.join("test/scenarios.toml"), name)
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
            let changed = vmcheck::affected::changed_files(&root, base).map_err(CliError::Usage)?;
            let a = vmcheck::affected::affected(&tests, &changed, args.pkg_rule);
            for note in &a.notes {
                vmcheck::say!("vmcheck: {note}");
            }
            a
        }
        None => vmcheck::affected::Affected::default(),
    };
    let naughty = if args.thorough {
        vmcheck::naughty::NaughtyDb::default()
    } else {
        vmcheck::naughty::NaughtyDb::load(&root.join(vmcheck::naughty::NAUGHTY_DIR))
            .map_err(CliError::Naughty)?
    };
    let mut plan = vmcheck::plan::plan(tests, &opts);
    if let Some(n) = repeats(&args)? {
        plan = vmcheck::plan::repeat(plan, n);
    }
    // Nothing left out: every known issue that matched nothing is worth listing.
    let whole_suite = !single_file
        && shard.is_none()
        && opts.filters.is_empty()
        && opts.exclude.is_empty()
        && opts.matrix.is_empty()
        && !opts.nondestructive_only;
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let project = super::results::project_name(&root, autopkgtest.is_some());
    // A store that cannot be read is one warning, and the run goes on without it.
    // A plain listing shows no estimate and splits no shard: it reads no durations.
    let needs_durations = !args.list || verbose || shard.is_some();
    let looked_up = if needs_durations {
        durations_of(&plan, &store, &project, &test_os)
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
    let estimates = vmcheck::estimate::estimate(&plan, &durations, args.cold_boot);
    if !plan.unknown_excludes.is_empty() {
        return Err(CliError::Usage(format!(
            "--exclude names no test: {} (it takes exact TestClass.testMethod names or case \
             ids, TestClass.testMethod[fs=xfs])",
            plan.unknown_excludes.join(", ")
        )));
    }
    let mut shard_info = None;
    if let Some(shard) = shard {
        let selection = vmcheck::shard::select(plan, &estimates, shard);
        shard_info = Some(vmcheck::events::ShardInfo {
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
            return Ok(exit_codes::OK);
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
    if args.explain {
        for t in &plan.tests {
            let reasons = affected.reasons(&t.def.file);
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
        return Ok(exit_codes::OK);
    }
    if args.list {
        for t in &plan.tests {
            if verbose {
                let estimate = estimates.of(&t.def.name());
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
        return Ok(exit_codes::OK);
    }
    let remote = remote_targets(&args)?;
    let needed = if remote.is_empty() {
        needed_images(&plan, &test_os, &catalog.names())?
    } else {
        Vec::new()
    };
    // Every output is opened now, before images are built or anything boots.
    let live = verbose || single_file;
    let argv: Vec<String> = std::env::args().collect();
    let rerun = summary::rerun_words(
        if single_file && argv.get(1).map(String::as_str) == Some("exec") {
            &argv[2..]
        } else {
            &argv
        },
        &args.filters,
        std::env::var("TEST_OS")
            .ok()
            .filter(|s| !s.is_empty())
            .as_deref(),
    );
    let outputs = Outputs {
        tap: true,
        events: args.events.as_deref(),
        junit: args.junit.as_deref(),
        html: args.html.as_deref(),
        store: &store,
        status: args.status_file.as_deref(),
        live: live.then_some(plan.tests.len() > 1),
        progress: args.progress,
    };
    let mut reporters = reporters(&outputs, rerun.clone())?;
    let summary = match &autopkgtest {
        Some((_, summary_file, _)) => {
            let (summary, output) = autopkgtest_summary(&plan, summary_file.as_deref())?;
            reporters.push(output);
            Some(summary)
        }
        None => None,
    };
    let report_failed = ReportFailed::default();

    // Images and host, then run.
    let mut images = std::collections::BTreeMap::new();
    for name in &needed {
        let (c, n, cancel2) = (catalog.clone(), name.clone(), cancel.clone());
        let image = tokio::task::spawn_blocking(move || c.resolve(&n, &cancel2, verbose))
            .await
            .expect("image resolution panicked");
        match image {
            Ok(image) => images.insert(name.clone(), image),
            // Reported below, as every test of an interrupted run is.
            Err(ImageError::Interrupted { .. }) => break,
            Err(e) => return Err(e.into()),
        };
    }
    let host = match images.values().next() {
        Some(image) if !cancel.is_cancelled() => {
            Some(Host::detect(&image.kernel(), &catalog.store.dir.join(".cache")).await?)
        }
        _ => None,
    };
    // Shared machines of the first TEST_OS, for the default number of jobs.
    let nd_mem = args
        .nondestructive_memory
        .or(images
            .get(vmcheck::plan::run_oses(&test_os)[0])
            .map(|i| i.manifest.boot.memory_mib))
        .unwrap_or(512);
    let available = mem_available_mib().unwrap_or(4096);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let jobs = match args.jobs {
        Some(j) => j as usize,
        None if !remote.is_empty() => remote.len(),
        None => default_jobs(cpus, available, u64::from(nd_mem) + QEMU_OVERHEAD_MIB),
    };
    let capacity = host_capacity(cpus, available);
    let artifacts_dir = args
        .artifacts
        .clone()
        .unwrap_or_else(|| root.join("vmcheck-results/artifacts"));
    let image_id = images.get(&test_os).map(|i| i.short_id());
    let ctx = Arc::new(AttemptContext {
        test_os: test_os.clone(),
        host,
        images,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        cold_boot: args.cold_boot,
        artifacts_dir: artifacts_dir.clone(),
        keep_artifacts: args.keep_artifacts,
        keep_failed_machines: args.keep_failed_machines,
        browser: args.browser.clone(),
        vmcheck_exe: std::env::current_exe()
            .map_err(|e| CliError::Usage(format!("cannot find the vmcheck binary: {e}")))?,
        workdir: root.clone(),
        sit: args.sit,
        sit_input: tokio::sync::Mutex::new(None),
        cancel: cancel.clone(),
        naughty,
        boots: BootGate::new(args.max_boots.unwrap_or(cpus as u32)),
        soak_scale: args.soak_scale.unwrap_or(1.0),
        seed: args.seed.unwrap_or_else(random_seed),
    });
    if ctx.host.is_some() {
        never_fits(&plan, &ctx, vmcheck::machine::qemu::mem_total_mib())
            .map_err(CliError::CheckFiles)?;
    }
    let meta = super::results::run_meta(&root, &project, image_id);
    let cfg = RunConfig {
        jobs,
        capacity,
        nd_memory_mib: args.nondestructive_memory,
        nd_cpus: args.nondestructive_cpus,
        remote,
        policy: PolicyOptions {
            no_retry_fail: args.no_retry_fail,
            until_fail: args.until_fail || args.stress_below.is_some(),
        },
        affected,
        estimates,
        shard: shard_info.clone(),
        whole_suite,
        rerun,
        run: Some(meta.clone()),
    };
    if cancel.is_cancelled() {
        let stats = report_interrupted(&plan, &cfg, &ctx, reporters, report_failed.clone());
        return Ok(final_code(
            &stats,
            cancel,
            &report_failed,
            args.flaky_result,
        ));
    }
    // What earlier runs left for these tests is not evidence of this one.
    for t in &plan.tests {
        let _ = std::fs::remove_dir_all(artifacts_dir.join(t.def.name()));
    }
    let recording = match record {
        true => LiveStore::start(store, (&meta).into()),
        false => LiveStore::disabled(),
    };
    let fan = fan_out(reporters, cancel.clone(), report_failed.clone());
    let stats = execute(plan, cfg, ctx, fan, &recording).await;
    recording.finish();
    let code = final_code(&stats, cancel, &report_failed, args.flaky_result);
    Ok(match summary {
        // autopkgtest's code, unless the run itself was stopped.
        Some(summary) if !cancel.is_cancelled() && !report_failed.get() => {
            summary.lock().expect("poisoned").exit_code()
        }
        _ => code,
    })
}

/// How `vmcheck autopkgtest` collects its tests.
struct AptRun<'a> {
    test_os: &'a str,
    /// Where `.dsc` files are unpacked.
    scratch: &'a Path,
    /// Resolve the dependencies (not for a listing).
    resolve: bool,
    internet: Internet,
}

/// The tests of autopkgtest source packages, their dependencies resolved for the image
/// `test_os` (built first, if need be: its package database is what they are resolved
/// against). A listing resolves nothing.
async fn collect_autopkgtests(
    catalog: &Arc<Catalog>,
    sources: &[PathBuf],
    how: &AptRun<'_>,
    cancel: &Cancel,
) -> Result<Vec<TestDef>, CliError> {
    let test_os = how.test_os;
    let (c, n, cancel2) = (catalog.clone(), test_os.to_string(), cancel.clone());
    let image = tokio::task::spawn_blocking(move || c.resolve(&n, &cancel2, false))
        .await
        .expect("image resolution panicked")?;
    let dpkg_status = image.dir.join("dpkg-status");
    if !dpkg_status.is_file() {
        return Err(CliError::Usage(format!(
            "image {test_os} has no dpkg-status: autopkgtests need a Debian image (TEST_OS=debian-12)"
        )));
    }
    let cache = vmcheck::image::cache_home().join("vmcheck/debs");
    let bed = vmcheck::autopkgtest::collect::Testbed {
        image: test_os,
        dpkg_status: &dpkg_status,
        cache: &cache,
        scratch: how.scratch,
        resolve: how.resolve,
        internet: how.internet,
    };
    vmcheck::autopkgtest::collect::collect(sources, &bed)
        .map_err(|errors| CliError::BadPackage(errors.join("\n")))
}

/// The reporter of autopkgtest's summary, and the summary it fills.
fn autopkgtest_summary(
    plan: &TestPlan,
    file: Option<&Path>,
) -> Result<(Arc<Mutex<AptSummary>>, Output), CliError> {
    let superficial = plan
        .tests
        .iter()
        .filter(|t| match &t.def.body {
            vmcheck::checkfile::Body::Autopkgtest(a) => a.behaviour.superficial,
            _ => false,
        })
        .map(|t| t.def.name())
        .collect();
    let summary = Arc::new(Mutex::new(AptSummary::new(superficial)));
    let file = file
        .map(|p| {
            ReportFile::replaced(p)
                .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", p.display())))
        })
        .transpose()?;
    let reporter = vmcheck::reporter::autopkgtest::SummaryReporter {
        summary: summary.clone(),
        file,
    };
    Ok((summary, Output::new("the autopkgtest summary", reporter)))
}

/// Whether a reporter's output failed during the run (it then stopped the run).
#[derive(Clone, Default)]
struct ReportFailed(Arc<std::sync::atomic::AtomicBool>);

impl ReportFailed {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A reporter and what it writes, for the message when it fails (`the JUnit report x.xml`).
struct Output {
    what: String,
    reporter: Box<dyn Reporter + Send>,
}

impl Output {
    fn new(what: impl Into<String>, reporter: impl Reporter + Send + 'static) -> Output {
        Output {
            what: what.into(),
            reporter: Box::new(reporter),
        }
    }
}

/// A seed for soaks' schedules when none is given: from the clock and the process.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = vmcheck::soak::schedule::Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    // Small enough to type back.
    rng.next_u64() % 1_000_000_000
}

/// The recorded durations of the tests of `plan` on their TEST_OS, by the names of their
/// cases ([`TestDef::case_name`]); with several TEST_OS, the boots of all of them.
fn durations_of(
    plan: &TestPlan,
    store: &Path,
    project: &str,
    test_os: &str,
) -> Result<vmcheck::results::durations::Durations, vmcheck::results::store::StoreError> {
    let oses = vmcheck::plan::run_oses(test_os);
    if oses.len() == 1 {
        let mut names: Vec<String> = plan.tests.iter().map(|t| t.def.base_name()).collect();
        names.dedup();
        return super::results::durations(store, project, test_os, &names);
    }
    let mut all = vmcheck::results::durations::Durations::default();
    for os in oses {
        let on_os = || plan.tests.iter().filter(|t| t.def.os(test_os) == os);
        let mut names: Vec<String> = on_os().map(|t| t.def.base_name()).collect();
        names.dedup();
        let mut d = super::results::durations(store, project, os, &names)?;
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

/// The images the tests that will run boot, sorted. One that is neither built nor has a
/// recipe is an input error, at the `image = …` that names it (or TEST_OS's name).
fn needed_images(
    plan: &TestPlan,
    test_os: &str,
    known: &[String],
) -> Result<Vec<String>, CliError> {
    let unknown = |name: &str| ImageError::Unknown {
        name: name.to_string(),
        known: known.to_vec(),
    };
    let mut needed = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for t in plan.tests.iter().filter(|t| t.skip_reason.is_none()) {
        let os = t.def.os(test_os);
        if t.def.nondestructive {
            needed.insert(os.to_string());
            continue;
        }
        for m in &t.def.provision {
            let name = m.image_or(os);
            match m.image_at {
                Some((line, col)) if !known.iter().any(|k| k == name) => {
                    errors.push(checkfile::CheckFileError {
                        path: t.def.file.clone(),
                        line,
                        col,
                        message: unknown(name).to_string(),
                    });
                }
                _ => {
                    needed.insert(name.to_string());
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
        errors.dedup();
        return Err(CliError::CheckFiles(errors));
    }
    match needed.iter().find(|n| !known.contains(n)) {
        Some(name) => Err(unknown(name).into()),
        None => Ok(needed.into_iter().collect()),
    }
}

/// The outputs a run or a merge writes.
struct Outputs<'a> {
    /// TAP on stdout (unless JSON lines go there) and the summary on stderr: not for
    /// `vmcheck report`, which writes only its report.
    tap: bool,
    /// The HTML report's directory.
    html: Option<&'a Path>,
    /// The outcome store, for the HTML report's history.
    store: &'a Path,
    /// JSON lines (`-`: on stdout, instead of TAP).
    events: Option<&'a Path>,
    junit: Option<&'a Path>,
    status: Option<&'a Path>,
    /// Live test output on stderr; `Some(true)`: prefixed with the test's name.
    live: Option<bool>,
    progress: ProgressMode,
}

/// Open every output (before anything boots, so a bad path is an input error, and without
/// touching an earlier report: see [`ReportFile`]): TAP on stdout unless JSON lines go
/// there, JSON lines, JUnit, live output, progress and the summary on stderr.
fn reporters(outputs: &Outputs, rerun: Vec<String>) -> Result<Vec<Output>, CliError> {
    fn usage(p: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
        move |e| CliError::Usage(format!("cannot create {}: {e}", p.display()))
    }
    let streamed = |p: &Path| {
        ReportFile::streamed(p)
            .map(BufWriter::new)
            .map_err(usage(p))
    };
    let replaced = |p: &Path| {
        ReportFile::replaced(p)
            .map(BufWriter::new)
            .map_err(usage(p))
    };
    let mut reporters = Vec::new();
    match outputs.events {
        Some(p) if p.as_os_str() == "-" => {
            reporters.push(Output::new(
                "the events on stdout",
                JsonReporter::new(std::io::stdout()),
            ));
        }
        Some(p) => {
            if outputs.tap {
                reporters.push(tap_on_stdout());
            }
            reporters.push(Output::new(
                format!("the events file {}", p.display()),
                JsonReporter::new(streamed(p)?),
            ));
        }
        None if outputs.tap => reporters.push(tap_on_stdout()),
        None => {}
    }
    if let Some(dir) = outputs.html {
        let history = vmcheck::reporter::html::store_history(outputs.store.to_path_buf());
        let html = HtmlReporter::create(dir, Some(history)).map_err(usage(dir))?;
        reporters.push(Output::new(
            format!("the HTML report {}", dir.join("index.html").display()),
            html,
        ));
    }
    if let Some(p) = outputs.junit {
        reporters.push(Output::new(
            format!("the JUnit report {}", p.display()),
            JunitReporter::new(replaced(p)?),
        ));
    }
    if let Some(p) = outputs.status {
        // Checked like the others; the reporter replaces the file on each change.
        drop(replaced(p)?);
        reporters.push(Output::new(
            format!("the status file {}", p.display()),
            StatusReporter::new(p.to_path_buf()),
        ));
    }
    if let Some(prefix) = outputs.live {
        reporters.push(Output::new(
            "the live output on stderr",
            LiveReporter::new(std::io::stderr(), prefix),
        ));
    }
    let mode = match outputs.progress {
        ProgressMode::Auto if outputs.live.is_some() => ProgressMode::None,
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
        ProgressMode::Auto => ProgressMode::Lines,
        m => m,
    };
    match mode {
        ProgressMode::Bar => {
            reporters.push(Output::new("the progress display", BarReporter::new()))
        }
        ProgressMode::Lines => reporters.push(Output::new(
            "the progress lines on stderr",
            LinesReporter::new(std::io::stderr()),
        )),
        ProgressMode::Auto | ProgressMode::None => {}
    }
    if outputs.tap {
        reporters.push(Output::new(
            "the summary on stderr",
            SummaryReporter::new(std::io::stderr(), rerun),
        ));
    }
    Ok(reporters)
}

/// TAP on stdout, which a forced exit (a second Ctrl-C) closes validly.
fn tap_on_stdout() -> Output {
    let tap = Arc::new(Mutex::new(TapReporter::new(std::io::stdout())));
    let last_words = tap.clone();
    vmcheck::signal::at_forced_exit(move || {
        // The run may be writing a line: wait a little for it, never forever.
        for _ in 0..100 {
            if let Ok(mut tap) = last_words.try_lock() {
                let _ = tap.abandon("interrupted twice, exiting at once");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    Output::new("TAP on stdout", tap)
}

/// Send every event to every reporter. A reporter whose output fails (disk full, stdout
/// closed) gets no more events, says so, and stops the run: the others still get every
/// event, so they close properly, and the exit code is [`exit_codes::REPORT_FAILED`].
fn fan_out(
    mut reporters: Vec<Output>,
    cancel: Cancel,
    report_failed: ReportFailed,
) -> impl FnMut(&vmcheck::events::Event) {
    let mut failed = vec![false; reporters.len()];
    move |event| {
        for (r, failed) in reporters.iter_mut().zip(failed.iter_mut()) {
            if *failed {
                continue;
            }
            if let Err(e) = r.reporter.report(event) {
                *failed = true;
                report_failed.set();
                let why = format!("cannot write {}: {e}", r.what);
                vmcheck::say!("vmcheck: {why}; stopping the run");
                cancel.stop(why);
            }
        }
    }
}

/// `vmcheck report`: the HTML report of one run's event stream, or of several combined.
pub fn report(args: &ReportArgs) -> Result<i32, CliError> {
    let mut streams = Vec::new();
    for f in &args.files {
        streams.push(vmcheck::merge::read(f).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    let events = match streams.as_slice() {
        [one] => one.events.clone(),
        _ => vmcheck::merge::merge(&streams),
    };
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let outputs = Outputs {
        tap: false,
        events: None,
        junit: None,
        html: Some(&args.html),
        store: &store,
        status: None,
        live: None,
        progress: ProgressMode::None,
    };
    let report_failed = ReportFailed::default();
    let mut report = fan_out(
        reporters(&outputs, Vec::new())?,
        Cancel::new(),
        report_failed.clone(),
    );
    for e in &events {
        report(e);
    }
    drop(report);
    if report_failed.get() {
        return Ok(exit_codes::REPORT_FAILED);
    }
    vmcheck::say!(
        "vmcheck: the report is in {}",
        args.html.join("index.html").display()
    );
    Ok(exit_codes::OK)
}

/// `vmcheck merge`: replay the combined events of several runs through the reporters.
pub fn merge(args: &MergeArgs) -> Result<i32, CliError> {
    let mut streams = Vec::new();
    for f in &args.files {
        streams.push(vmcheck::merge::read(f).map_err(|e| CliError::Usage(e.to_string()))?);
    }
    if let Some(warning) =
        vmcheck::merge::check_shards(&streams).map_err(|e| CliError::Usage(e.to_string()))?
    {
        vmcheck::say!("vmcheck: warning: {warning}");
    }
    let events = vmcheck::merge::merge(&streams);
    let test_os = match events.first() {
        Some(vmcheck::events::Event::RunStarted { test_os, .. }) => test_os.clone(),
        _ => String::new(),
    };
    let store = vmcheck::results::store::path_of(args.results_db.as_deref());
    let outputs = Outputs {
        tap: true,
        events: args.events.as_deref(),
        junit: args.junit.as_deref(),
        html: args.html.as_deref(),
        store: &store,
        status: None,
        live: None,
        progress: ProgressMode::None,
    };
    // The runs' own re-run command (their --test-dir, their machines), else a plain one.
    let rerun = match events.first() {
        Some(vmcheck::events::Event::RunStarted { rerun, .. }) if !rerun.is_empty() => {
            rerun.clone()
        }
        _ => summary::rerun_words(
            &["vmcheck".into(), "run".into()],
            &[],
            Some(test_os.as_str()).filter(|os| !os.is_empty() && !os.contains(',')),
        ),
    };
    let report_failed = ReportFailed::default();
    let mut report = fan_out(
        reporters(&outputs, rerun)?,
        Cancel::new(),
        report_failed.clone(),
    );
    let mut stats = RunStats::default();
    for e in &events {
        report(e);
        if let vmcheck::events::Event::RunFinished { stats: s, .. } = e {
            stats = s.clone();
        }
    }
    // The runs are recorded as `results import` records them, which also lets the shards'
    // durations order later runs.
    if let Err(e) = super::results::import(&store, &streams) {
        vmcheck::say!("vmcheck: warning: outcome store {e}; the runs were not recorded");
    }
    Ok(final_code(
        &stats,
        &Cancel::new(),
        &report_failed,
        FlakyResult::Pass,
    ))
}

async fn execute(
    plan: TestPlan,
    cfg: RunConfig,
    ctx: Arc<AttemptContext>,
    mut fan: impl FnMut(&vmcheck::events::Event),
    recording: &LiveStore,
) -> RunStats {
    let mut report = |event: &vmcheck::events::Event| {
        recording.send(event);
        fan(event);
    };
    Dispatcher::new(plan, cfg, ctx, &mut report).run().await
}

/// A run interrupted before its tests started (while images were built): the events the
/// dispatcher's cancel path gives, so that TAP still has its plan, a `not ok … # ERROR
/// interrupted by SIGINT` per test that is not skipped, and `Bail out!`.
fn report_interrupted(
    plan: &TestPlan,
    cfg: &RunConfig,
    ctx: &AttemptContext,
    reporters: Vec<Output>,
    report_failed: ReportFailed,
) -> RunStats {
    let started = std::time::Instant::now();
    let mut report = fan_out(reporters, ctx.cancel.clone(), report_failed);
    let reason = ctx.cancel.describe();
    let infos: Vec<TestInfo> = plan.tests.iter().map(|t| test_info(t, ctx)).collect();
    report(&Event::RunStarted {
        test_os: ctx.test_os.clone(),
        jobs: cfg.jobs,
        tests: infos.clone(),
        shard: cfg.shard.clone(),
        rerun: cfg.rerun.clone(),
        run: cfg.run.clone(),
    });
    let mut stats = RunStats {
        planned: plan.tests.len(),
        nondestructive: infos.iter().filter(|t| t.nondestructive).count(),
        destructive: infos.iter().filter(|t| !t.nondestructive).count(),
        ..RunStats::default()
    };
    // Skips first, as the dispatcher reports them at the start.
    let (skipped, unfinished): (Vec<_>, Vec<_>) = plan
        .tests
        .iter()
        .zip(infos)
        .partition(|(t, _)| t.skip_reason.is_some());
    for (t, test) in skipped.into_iter().chain(unfinished) {
        let verdict = match &t.skip_reason {
            Some(reason) => Verdict::Skipped {
                reason: reason.clone(),
            },
            None => Verdict::Error {
                message: reason.clone(),
            },
        };
        stats.count(&verdict);
        report(&Event::TestFinished {
            test,
            placement: Placement::None,
            verdict,
            attempts: Vec::new(),
        });
    }
    report(&Event::RunCancelled { reason });
    report(&Event::RunFinished {
        stats: stats.clone(),
        wall: started.elapsed(),
        unmatched_known: Vec::new(),
    });
    stats
}

/// The exit code of a run: interrupted, else a report that failed, else failed tests, else
/// infrastructure errors.
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

/// The most runs of a test with `--until-fail` and no `--repeat`.
const DEFAULT_UNTIL_FAIL: u32 = 100;

/// The run's exit code; with `--flaky-result fail`, a flaky test fails the run.
fn final_code(
    stats: &RunStats,
    cancel: &Cancel,
    report_failed: &ReportFailed,
    flaky: FlakyResult,
) -> i32 {
    if cancel.signal().is_some() {
        exit_codes::INTERRUPTED
    } else if report_failed.get() {
        exit_codes::REPORT_FAILED
    } else if cancel.is_cancelled() {
        exit_codes::INTERRUPTED
    } else if stats.failed > 0 || (flaky == FlakyResult::Fail && stats.flaky > 0) {
        exit_codes::TESTS_FAILED
    } else if stats.errors > 0 {
        exit_codes::INFRASTRUCTURE
    } else {
        exit_codes::OK
    }
}

fn remote_targets(args: &RunArgs) -> Result<Vec<SshTarget>, CliError> {
    if args.machine.is_empty() {
        return Ok(Vec::new());
    }
    let identity = args.identity.clone().ok_or_else(|| {
        CliError::Usage("--machine needs --identity FILE: the private key to log in with".into())
    })?;
    std::fs::metadata(&identity).map_err(|e| {
        CliError::Usage(format!("cannot read identity {}: {e}", identity.display()))
    })?;
    let host_key = if args.insecure_host_key {
        HostKeyCheck::Insecure
    } else {
        let file = match &args.known_hosts {
            Some(f) => f.clone(),
            None => {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".ssh/known_hosts")
            }
        };
        std::fs::metadata(&file).map_err(|e| {
            CliError::Usage(format!(
                "cannot read known hosts {}: {e} (give --known-hosts FILE, or --insecure-host-key)",
                file.display()
            ))
        })?;
        HostKeyCheck::KnownHosts(file)
    };
    args.machine
        .iter()
        .map(|m| {
            let (host, port) = parse_address(m).map_err(CliError::Usage)?;
            Ok(SshTarget {
                host,
                port,
                user: args.user.clone(),
                identity: identity.clone(),
                host_key: host_key.clone(),
            })
        })
        .collect()
}

/// The destructive tests whose machines need more RAM than the host has in all
/// (`total_mib`): they could never start, so they are errors before anything starts
/// rather than a wait without end (Trafficlight's defect). A test bigger than what is free
/// now only waits, and one bigger than the run's budget runs alone.
fn never_fits(
    plan: &vmcheck::plan::TestPlan,
    ctx: &AttemptContext,
    total_mib: Option<u64>,
) -> Result<(), Vec<vmcheck::checkfile::CheckFileError>> {
    let Some(total) = total_mib else {
        return Ok(());
    };
    let gib = |mib: u64| mib as f64 / 1024.0;
    let errors: Vec<_> = plan
        .tests
        .iter()
        .filter(|t| !t.def.nondestructive && t.skip_reason.is_none())
        .filter_map(|t| {
            let need = vmcheck::runner::dispatcher::test_cost(&t.def, ctx).ram_mib;
            (need > total).then(|| vmcheck::checkfile::CheckFileError {
                path: t.def.file.clone(),
                line: t.def.line,
                col: usize::from(t.def.line > 0),
                message: format!(
                    "{} needs {:.1} GiB of RAM for its machines (with qemu's own), more than \
                     this host's {:.1} GiB in all: it can never run here",
                    t.def.name(),
                    gib(need),
                    gib(total)
                ),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_from_stats() {
        let cancel = Cancel::new();
        let failed = ReportFailed::default();
        let mut s = RunStats::default();
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::OK
        );
        s.flaky = 1;
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::OK
        );
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Fail),
            exit_codes::TESTS_FAILED,
            "--flaky-result fail"
        );
        s.errors = 1;
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::INFRASTRUCTURE
        );
        s.failed = 300;
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::TESTS_FAILED,
            "never a count"
        );
        failed.set();
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::REPORT_FAILED
        );
        cancel.cancel(libc::SIGINT);
        assert_eq!(
            final_code(&s, &cancel, &failed, FlakyResult::Pass),
            exit_codes::INTERRUPTED
        );
    }

    /// A reporter that fails at `run-finished` (a disk that filled up): the failure is said
    /// once, the other reporters still get every event, and the run is stopped.
    #[test]
    fn a_failing_reporter_stops_the_run_and_counts() {
        struct Full;
        impl Reporter for Full {
            fn report(&mut self, e: &vmcheck::events::Event) -> std::io::Result<()> {
                match e {
                    vmcheck::events::Event::RunFinished { .. } => Err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        "No space left on device",
                    )),
                    _ => Ok(()),
                }
            }
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        struct Log(Arc<Mutex<Vec<String>>>);
        impl Reporter for Log {
            fn report(&mut self, e: &vmcheck::events::Event) -> std::io::Result<()> {
                let kind = serde_json::to_value(e).unwrap()["event"].to_string();
                self.0.lock().unwrap().push(kind);
                Ok(())
            }
        }
        let (cancel, failed) = (Cancel::new(), ReportFailed::default());
        let mut fan = fan_out(
            vec![
                Output::new("the JUnit report j.xml", Full),
                Output::new("log", Log(seen.clone())),
            ],
            cancel.clone(),
            failed.clone(),
        );
        let finished = vmcheck::events::Event::RunFinished {
            stats: RunStats::default(),
            wall: Duration::ZERO,
            unmatched_known: vec![],
        };
        fan(&vmcheck::events::Event::RunCancelled { reason: "x".into() });
        assert!(!failed.get());
        fan(&finished);
        fan(&finished);
        assert!(failed.get());
        assert_eq!(
            cancel.describe(),
            "cannot write the JUnit report j.xml: No space left on device"
        );
        assert_eq!(seen.lock().unwrap().len(), 3, "the others get every event");
        assert_eq!(
            final_code(&RunStats::default(), &cancel, &failed, FlakyResult::Pass),
            exit_codes::REPORT_FAILED
        );
    }
}
