//! `vmcheck run`, `vmcheck exec` and `vmcheck autopkgtest`: one run in stages, each in its
//! own file: what was asked and the plan made of it (`plan.rs`; every input error is found
//! there, before anything boots), the outputs opened (`outputs.rs`), the images and hosts
//! its tests need (`machines.rs`), then the dispatcher, with the TAP reporter on stdout.
//! `autopkgtest.rs` is `vmcheck autopkgtest`'s part.

mod autopkgtest;
mod machines;
pub(super) mod outputs;
pub(super) mod plan;

use super::args::{FlakyResult, RunArgs};
use super::errors::CliError;
use outputs::{Output, Outputs, ReportFailed, fan_out, reporters};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vmcheck::autopkgtest::test::Internet;
use vmcheck::events::{Event, Placement, RunStats, TestInfo, Verdict};
use vmcheck::exit_codes;
use vmcheck::image::Catalog;
use vmcheck::machine::qemu::{QEMU_OVERHEAD_MIB, mem_available_mib};
use vmcheck::planning::plan::TestPlan;
use vmcheck::policy::PolicyOptions;
use vmcheck::reporter::summary;
use vmcheck::results::writer::LiveStore;
use vmcheck::runner::attempt::AttemptContext;
use vmcheck::runner::boots::BootGate;
use vmcheck::runner::dispatcher::{Dispatcher, RunConfig, test_info};
use vmcheck::runner::ledger::{default_jobs, host_capacity};
use vmcheck::signal::Cancel;

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
    // What was asked, the tests, the plan: all input errors before anything starts.
    let request = plan::settle(&mut args, &suite)?;
    let single_file = request.file.is_some();
    let test_os = request.test_os.clone();
    // Where `.dsc` files are unpacked, for the whole run.
    let scratch = tempfile::tempdir()
        .map_err(|e| CliError::Usage(format!("cannot create a scratch directory: {e}")))?;
    let tests = plan::collect(&catalog, &args, &request, scratch.path(), cancel).await?;
    let Some(planned) = plan::plan(tests, &mut args, &request, &root, verbose)? else {
        return Ok(exit_codes::OK);
    };
    if args.explain {
        plan::explain(&planned);
        return Ok(exit_codes::OK);
    }
    if args.list {
        plan::list(&planned, verbose);
        return Ok(exit_codes::OK);
    }
    let plan = planned.plan;
    let remote = machines::remote_targets(&args)?;
    let needed = if remote.is_empty() {
        machines::needed_images(&plan, &test_os, &catalog.names())?
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
        store: &planned.store,
        status: args.status_file.as_deref(),
        live: live.then_some(plan.tests.len() > 1),
        progress: args.progress,
    };
    let mut reporters = reporters(&outputs, rerun.clone())?;
    let summary = match &request.autopkgtest {
        Some(apt) => {
            let (summary, output) =
                autopkgtest::autopkgtest_summary(&plan, apt.summary_file.as_deref())?;
            reporters.push(output);
            Some(summary)
        }
        None => None,
    };
    let report_failed = ReportFailed::default();

    // Images and host, then run.
    let (images, host) = machines::images_and_host(&catalog, &needed, cancel, verbose).await?;
    // Shared machines of the first TEST_OS, for the default number of jobs.
    let nd_mem = args
        .nondestructive_memory
        .or(images
            .get(vmcheck::planning::plan::run_oses(&test_os)[0])
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
        naughty: planned.naughty,
        boots: BootGate::new(args.max_boots.unwrap_or(cpus as u32)),
        soak_scale: args.soak_scale.unwrap_or(1.0),
        seed: args.seed.unwrap_or_else(random_seed),
    });
    if ctx.host.is_some() {
        machines::never_fits(&plan, &ctx, vmcheck::machine::qemu::mem_total_mib())
            .map_err(CliError::CheckFiles)?;
    }
    let meta = super::results::run_meta(&root, &planned.project, image_id);
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
        affected: planned.affected,
        estimates: planned.estimates,
        shard: planned.shard,
        whole_suite: planned.whole_suite,
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
    let recording = match planned.record {
        true => LiveStore::start(planned.store, (&meta).into()),
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

/// A seed for soaks' schedules when none is given: from the clock and the process.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = vmcheck::soak::schedule::Rng::new(nanos ^ (u64::from(std::process::id()) << 32));
    // Small enough to type back.
    rng.next_u64() % 1_000_000_000
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

/// The run's exit code; with `--flaky-result fail`, a flaky test fails the run.
pub(crate) fn final_code(
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
}
