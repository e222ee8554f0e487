//! One attempt of one test: get its machines (fresh ones for a destructive test, booted by
//! `fresh.rs`, the global machine handed over for a nondestructive one), run its bodies
//! within the test's deadline, heal its private network (`net.rs`) and say what the faults
//! did, collect artifacts, sit if asked, restore and hand machines back or kill them.
//!
//! The result is plain data ([`AttemptDone`]): the attempt's outcome and output, and for
//! nondestructive tests the machine itself with a health verdict, so the dispatcher alone
//! decides what happens next. Machines are owned by this task while it runs; if the
//! dispatcher aborts it (Ctrl-C), dropping them kills qemu and removes their files.

use super::artifacts::{AttemptDir, console_offset};
use super::bodies::{Terms, run_bodies};
use super::guest_log::{LogCheck, unexpected_messages};
use super::host::Granted;
use super::journal;
use super::outcomes::{command_problem, harness, machine_failed};
pub use super::output::{LiveOutput, Log, Progress};
use super::sit::sit;
use crate::checkfile::{Body, TestDef};
use crate::events::{AttemptOutcome, AttemptReport};
use crate::image::Image;
use crate::machine::Machine;
use crate::machine::host::Host;
use crate::machine::shell::Exec;
use crate::signal::Cancel;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Standard input, line by line.
pub type SitInput = tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>;

/// What every attempt of a run shares.
pub struct AttemptContext {
    pub test_os: String,
    /// `None` when running on existing hosts only (`--machine`).
    pub host: Option<Host>,
    pub images: BTreeMap<String, Image>,
    pub boot_timeout: Duration,
    /// Boot machines even where a booted snapshot could be restored (`--cold-boot`).
    pub cold_boot: bool,
    /// Root of per-attempt artifacts (see `artifacts.rs`).
    pub artifacts_dir: PathBuf,
    /// Keep the artifacts of passing attempts too (`--keep-artifacts`).
    pub keep_artifacts: bool,
    /// Save a failed attempt's machines into its artifacts (`--keep-failed-machines`).
    pub keep_failed_machines: bool,
    /// The web address browser tests open (`--browser HOST:PORT`).
    pub browser: Option<String>,
    /// This vmcheck binary, run as the `vm` helper of host scripts.
    pub vmcheck_exe: PathBuf,
    /// Working directory of host scripts.
    pub workdir: PathBuf,
    pub sit: bool,
    /// Lines of standard input, for `--sit` prompts: one sitting test at a time holds it,
    /// and one reader serves all prompts (a reader per prompt would swallow lines).
    pub sit_input: tokio::sync::Mutex<Option<SitInput>>,
    pub cancel: Cancel,
    /// Known-issue patterns (empty with `--thorough`).
    pub naughty: crate::naughty::NaughtyDb,
    /// Paces cold boots (shared with the dispatcher's boots of shared machines).
    pub boots: super::boots::BootGate,
    /// Soaks' durations, intervals and faults are multiplied by this (`--soak-scale`).
    pub soak_scale: f64,
    /// The seed of every soak's schedule (`--seed`, else drawn for the run).
    pub seed: u64,
}

/// The machines an attempt runs on.
pub enum Machines {
    /// A shared machine, handed over by the dispatcher and handed back in the result.
    Global { machine: Machine },
    /// Boot the test's `provision`.
    Fresh,
}

pub struct AttemptRequest {
    pub test: Arc<TestDef>,
    pub id: usize,
    pub attempt: u32,
    pub max_attempts: u32,
    pub machines: Machines,
}

/// Whether a global machine can serve the next test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Good,
    Broken(String),
}

pub struct AttemptDone {
    pub report: AttemptReport,
    /// The global machine, back from a nondestructive test.
    pub global: Option<(Machine, Health)>,
}

/// A machine of this attempt, by the name the test uses.
pub struct Named {
    pub name: String,
    pub machine: Machine,
    /// Address on the test's private network, for multi-machine tests.
    pub ip: Option<String>,
}

/// Run one attempt. `live` sees output as it arrives.
pub async fn run_attempt(
    ctx: Arc<AttemptContext>,
    mut req: AttemptRequest,
    live: LiveOutput,
) -> AttemptDone {
    let started = Instant::now();
    let start_ms = crate::results::now_ms();
    let test = req.test.clone();
    let dir = AttemptDir::fresh(&ctx.artifacts_dir, &test.name(), req.attempt);
    let log = Log::new(&dir.path.join("output.txt"), live);
    let (mut machines, net, global) = match std::mem::replace(&mut req.machines, Machines::Fresh) {
        Machines::Global { machine } => (
            vec![Named {
                name: test.provision[0].name.clone(),
                machine,
                ip: None,
            }],
            None,
            true,
        ),
        Machines::Fresh => match super::fresh::boot_fresh(&ctx, &req, &log).await {
            Ok((machines, net)) => (machines, net, false),
            Err((e, machines)) => {
                log.note(&format!("vmcheck: {e}"));
                let outcome = machine_failed(&e);
                if ctx.sit && !machines.is_empty() {
                    sit(&ctx, &test.name(), &outcome, &machines).await;
                }
                let consoles: Vec<u64> = vec![0; machines.len()];
                let saved = save_artifacts(&req, &dir, &machines, &consoles, &log).await;
                let mut report = report(&req, &log, (started, start_ms), &machines, saved, outcome);
                // Not all of them booted: the attempt ran on none.
                report.machines.clear();
                for m in machines {
                    m.machine.kill().await;
                }
                return AttemptDone {
                    report,
                    global: None,
                };
            }
        },
    };
    let labels: Vec<String> = machines
        .iter()
        .map(|m| m.machine.label().to_string())
        .collect();
    (log.live)(Progress::Running(&labels));
    // Where this attempt's part of each console log starts: from boot for fresh machines.
    let consoles: Vec<u64> = machines
        .iter()
        .map(|m| {
            if global {
                console_offset(&m.machine)
            } else {
                0
            }
        })
        .collect();

    let mut outcome = AttemptOutcome::Passed;
    if global && !test.restore.is_empty() {
        let done = machines[0]
            .machine
            .shell()
            .execute(
                &super::restore::save_command(&test.restore, 1, true),
                Duration::from_secs(60),
            )
            .await;
        if let Some(problem) = command_problem(done, "saving files to restore") {
            outcome = harness(problem);
        }
    }
    let tag = format!("t{}-a{}", req.id, req.attempt);
    let mut granted = Granted::default();
    let mut ended_by_body = false;
    if outcome == AttemptOutcome::Passed {
        // The first machine's start marker goes with its body: one round trip less a test.
        let mark = journal::mark_command(&tag);
        // (A soak's script runs beside its events, which may look at the log first.)
        let marked_by_body = test.body.guest_script().is_some() && test.soak.is_none();
        // And its end marker, where its kernel log streams to the host and nothing runs
        // after the body (no `host` script): then nothing is left to run in the machine
        // after the test (unless it has a journal).
        let end = journal::end_command(&tag);
        let body_ends = marked_by_body
            && machines[0].machine.kmsg().is_some()
            && matches!(test.body, Body::Scripts { host: None, .. });
        for m in machines.iter().skip(usize::from(marked_by_body)) {
            let _ = m
                .machine
                .shell()
                .execute(&mark, Duration::from_secs(30))
                .await;
        }
        let terms = Terms {
            mark: &mark,
            marked_by_body,
            end: body_ends.then_some(end.as_str()),
            shared: global,
            net: net.as_ref(),
            dir: &dir.path,
        };
        outcome = run_bodies(
            &ctx,
            &req,
            &mut machines,
            &log,
            terms,
            &mut granted,
            &mut ended_by_body,
        )
        .await;
        if ctx.keep_failed_machines
            && matches!(
                outcome,
                AttemptOutcome::Failed { .. } | AttemptOutcome::TimedOut { .. }
            )
        {
            super::kept::keep(&ctx, &req, &mut machines, &dir, &log).await;
        }
    }
    if let Some(net) = &net {
        // No fault outlives the test's body: the checks after it, artifacts and `--sit`
        // see the network whole.
        net.heal();
        if let Some(summary) = net.summary() {
            log.note(&summary);
        }
    }
    // Whether the first machine answered a command after the body (reading its log): then
    // a shared machine with nothing to restore needs no other probe of its health.
    let mut first_answered = false;
    if matches!(
        outcome,
        AttemptOutcome::Passed | AttemptOutcome::Failed { .. }
    ) {
        let check = LogCheck {
            tag: &tag,
            shared: global,
            ended_by_body,
        };
        let (lines, answered) =
            unexpected_messages(&req, &granted, &machines, &check, &dir, &log).await;
        first_answered = answered;
        if !lines.is_empty() {
            log.note("vmcheck: FAIL: test completed, but found unexpected journal messages:");
            for l in &lines {
                log.note(l);
            }
            if let Err(e) = dir.write(
                "unexpected-journal-messages.txt",
                (lines.join("\n") + "\n").as_bytes(),
            ) {
                log.note(&format!("vmcheck: {e}"));
            }
            if outcome == AttemptOutcome::Passed {
                outcome = AttemptOutcome::UnexpectedMessages { lines };
            }
        }
    }
    let passed = matches!(
        outcome,
        AttemptOutcome::Passed | AttemptOutcome::Skipped { .. }
    );
    let artifacts = if passed && !ctx.keep_artifacts {
        dir.remove();
        None
    } else {
        save_artifacts(&req, &dir, &machines, &consoles, &log).await
    };
    if ctx.sit
        && !matches!(
            outcome,
            AttemptOutcome::Passed | AttemptOutcome::Skipped { .. }
        )
    {
        sit(&ctx, &test.name(), &outcome, &machines).await;
        // Whoever sat may have done anything to the machines.
        first_answered = false;
    }

    let mut report = report(
        &req,
        &log,
        (started, start_ms),
        &machines,
        artifacts,
        outcome.clone(),
    );
    if !matches!(
        outcome,
        AttemptOutcome::Passed | AttemptOutcome::Skipped { .. }
    ) {
        let input = format!(
            "{}\nnot ok {} {}",
            report.output,
            test.file.display(),
            test.name()
        );
        let m = ctx.naughty.matches(test.os(&ctx.test_os), &input);
        report.known = crate::events::KnownIssues {
            own: m.own_issues(),
            other: m.other_issues(),
        };
    }
    if !global {
        for m in machines {
            m.machine.kill().await;
        }
        return AttemptDone {
            report,
            global: None,
        };
    }
    let m = machines.remove(0).machine;
    let health = health_after(&m, &test, &granted, &outcome, first_answered).await;
    AttemptDone {
        report,
        global: Some((m, health)),
    }
}

/// The health of a shared machine after a test: broken by a timeout or a harness failure,
/// else as the restore of the files the test changed says (which doubles as a probe of it,
/// over SSH as the tests reach it); with nothing to restore, reading its log after the body
/// (`first_answered`) was the probe already: one round trip less a test.
async fn health_after(
    m: &Machine,
    test: &TestDef,
    granted: &Granted,
    outcome: &AttemptOutcome,
    first_answered: bool,
) -> Health {
    let health = match outcome {
        AttemptOutcome::TimedOut { after } => {
            Health::Broken(format!("the test timed out after {}s", after.as_secs()))
        }
        AttemptOutcome::Harness { message, .. } => Health::Broken(message.clone()),
        _ => Health::Good,
    };
    let saved: Vec<String> = test
        .restore
        .iter()
        .chain(&granted.restore)
        .cloned()
        .collect();
    if health != Health::Good || (saved.is_empty() && first_answered) {
        return health;
    }
    let cmd = if saved.is_empty() {
        "true".to_string()
    } else {
        super::restore::restore_command(&saved)
    };
    // Over SSH, as the tests reach it: the agent answering proves less.
    let done = m
        .shell()
        .run(Exec::new(&cmd, Duration::from_secs(60)))
        .await;
    match command_problem(done, "restoring files after the test") {
        Some(problem) => Health::Broken(problem),
        None => Health::Good,
    }
}

/// The attempt's report: the labels of its machines, and how they came up (the coldest of
/// them).
fn report(
    req: &AttemptRequest,
    log: &Log,
    (started, start_ms): (Instant, u64),
    machines: &[Named],
    artifacts: Option<PathBuf>,
    outcome: AttemptOutcome,
) -> AttemptReport {
    let labels = machines
        .iter()
        .map(|m| m.machine.label().to_string())
        .collect();
    AttemptReport {
        attempt: req.attempt,
        outcome,
        output: log.finish(artifacts.is_some()),
        duration: started.elapsed(),
        machines: labels,
        artifacts,
        known: Default::default(),
        start_ms: Some(start_ms),
        boot: machines.iter().map(|m| m.machine.origin()).min(),
    }
}

/// Save an attempt's evidence into `dir`: console logs and the files the test asks for, per
/// machine (the guest logs are already there, see [`unexpected_messages`]). Problems are noted in the output, never fatal. Returns the
/// directory if anything is in it.
async fn save_artifacts(
    req: &AttemptRequest,
    dir: &AttemptDir,
    machines: &[Named],
    consoles: &[u64],
    log: &Log,
) -> Option<PathBuf> {
    for (i, m) in machines.iter().enumerate() {
        let mut problems = Vec::new();
        if let Err(e) = dir.save_console(&m.name, &m.machine, consoles.get(i).copied().unwrap_or(0))
        {
            problems.push(e);
        }
        if !req.test.artifacts.is_empty()
            && let Err(e) = dir
                .collect_files(&m.name, &m.machine, &req.test.artifacts)
                .await
        {
            problems.push(e);
        }
        for p in problems {
            log.note(&format!("vmcheck: {p}"));
        }
    }
    Some(dir.path.clone())
}
