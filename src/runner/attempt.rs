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
use super::guest_log::{LogCheck, unexpected_messages};
use super::host::{Granted, HostProgram, HostTask, Reach};
use super::journal;
use super::net::Network;
pub use super::output::{LiveOutput, Log, Progress};
use super::sit::sit;
use crate::checkfile::{Body, TestDef};
use crate::events::{AttemptOutcome, AttemptReport};
use crate::image::Image;
use crate::machine::Machine;
use crate::machine::error::MachineError;
use crate::machine::host::Host;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use crate::shell::quote;
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
    let mut health = match &outcome {
        AttemptOutcome::TimedOut { after } => {
            Health::Broken(format!("the test timed out after {}s", after.as_secs()))
        }
        AttemptOutcome::Harness { message, .. } => Health::Broken(message.clone()),
        _ => Health::Good,
    };
    if health == Health::Good {
        let saved: Vec<String> = test
            .restore
            .iter()
            .chain(&granted.restore)
            .cloned()
            .collect();
        // Restoring doubles as a health probe of the shared machine; reading its log after
        // the body was one already (one round trip less a test).
        if !saved.is_empty() || !first_answered {
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
            if let Some(problem) = command_problem(done, "restoring files after the test") {
                health = Health::Broken(problem);
            }
        }
    }
    AttemptDone {
        report,
        global: Some((m, health)),
    }
}

pub(super) fn harness(message: String) -> AttemptOutcome {
    AttemptOutcome::Harness {
        message,
        host_fault: false,
    }
}

/// A machine's failure as the attempt's outcome: its message names the cause, and a host
/// fault (a full disk) is marked so that policy does not retry it.
pub(super) fn machine_failed(e: &MachineError) -> AttemptOutcome {
    AttemptOutcome::Harness {
        message: e.to_string(),
        host_fault: !e.retryable(),
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

/// `None` if the command ran and succeeded, else what went wrong.
pub(super) fn command_problem(
    done: Result<crate::machine::shell::Completed, MachineError>,
    what: &str,
) -> Option<String> {
    match done {
        Ok(d) if d.status.success() => None,
        Ok(d) => Some(format!(
            "{what} failed ({}): {}",
            d.status,
            String::from_utf8_lossy(&d.output.stderr).trim()
        )),
        Err(e) => Some(format!("{what}: {e}")),
    }
}

/// Environment every body sees.
fn body_env(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    machines: &[Named],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("VMCHECK_TEST".to_string(), req.test.base_name()),
        ("VMCHECK_ATTEMPT".to_string(), req.attempt.to_string()),
        (
            "VMCHECK_MAX_ATTEMPTS".to_string(),
            req.max_attempts.to_string(),
        ),
        ("TEST_OS".to_string(), req.test.os(&ctx.test_os).to_owned()),
        (
            // Which run of a repeated test this is (`run --repeat N`), else 0.
            "VMCHECK_REPEAT".to_string(),
            req.test.repeat.map_or(0, |r| r.index).to_string(),
        ),
        (
            "VMCHECK_MACHINES".to_string(),
            machines
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    for m in machines {
        if let Some(ip) = &m.ip {
            env.push((format!("VMCHECK_{}_IP", env_name(&m.name)), ip.clone()));
        }
        for (guest, host) in m.machine.forwards() {
            env.push((
                format!("VMCHECK_{}_PORT_{guest}", env_name(&m.name)),
                format!("127.0.0.1:{host}"),
            ));
        }
    }
    env.extend(req.test.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

fn env_name(machine: &str) -> String {
    machine
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// What an attempt's bodies run with beside its machines.
struct Terms<'a> {
    /// The command writing the journal's start marker.
    mark: &'a str,
    /// The marker is written by the guest body, before it runs.
    marked_by_body: bool,
    /// The command writing the end marker, which the guest body runs after it (in a
    /// subshell, so that its `exit` ends it only), where the first machine's kernel log
    /// streams to the host.
    end: Option<&'a str>,
    /// The attempt's directory.
    dir: &'a std::path::Path,
    /// The machine is a nondestructive test's.
    shared: bool,
    /// The machines' private network (tests with several machines).
    net: Option<&'a Network>,
}

/// Run `run` in the first machine (after the start marker, if given), then `host` on the
/// host, or the executable check file's test, until the test's deadline.
async fn run_bodies(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    machines: &mut [Named],
    log: &Log,
    terms: Terms<'_>,
    granted: &mut Granted,
    // Set when the guest body's command ran to its end and wrote the end marker.
    ended: &mut bool,
) -> AttemptOutcome {
    let test = &req.test;
    let deadline = Instant::now() + test.timeout;
    let env = body_env(ctx, req, machines);
    if let Some(soak) = &test.soak {
        let scaled = soak.scaled(ctx.soak_scale);
        let task = super::soak::SoakTask {
            soak: &scaled,
            attempt: super::soak::Attempt {
                ctx,
                req,
                env: &env,
                net: terms.net,
                dir: terms.dir,
                mark: terms.mark,
            },
            grace: test.timeout,
        };
        return super::soak::run_soak(machines, log, task, &mut granted.allow_journal).await;
    }
    if let Some(script) = test.body.guest_script() {
        let mut exports: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}\n", quote(v)))
            .collect();
        exports.push_str(&format!(
            "export VMCHECK_MACHINE={}\n",
            quote(&machines[0].name)
        ));
        let mark = if terms.marked_by_body { terms.mark } else { "" };
        let body = format!("{exports}{mark}\nset -e\n{script}");
        let command = match terms.end {
            Some(end) => format!("(\n{body}\n); s=$?; {end}; exit $s"),
            None => body,
        };
        let mut sink = |_: Stream, data: &[u8]| log.write(data);
        let result = machines[0]
            .machine
            .shell()
            .run(Exec {
                sink: Some(&mut sink),
                ..Exec::new(&command, deadline.saturating_duration_since(Instant::now()))
            })
            .await;
        if terms.end.is_some()
            && matches!(&result, Ok(d) if matches!(d.status, ExitStatus::Code(_)))
        {
            // (A body that killed the shell around it left no end marker.)
            *ended = true;
        }
        match result {
            Ok(done) => match done.status {
                ExitStatus::Code(0) => {}
                ExitStatus::Code(77) => return skipped(log),
                status => {
                    log.note(&format!(
                        "vmcheck: the test failed in {} ({status})",
                        machines[0].name
                    ));
                    return AttemptOutcome::failed(status.to_string());
                }
            },
            Err(e) => return guest_error(e, test.timeout, log),
        }
    }
    let program = match &test.body {
        Body::Autopkgtest(apt) => {
            return super::autopkgtest::run(
                ctx,
                &mut machines[0],
                apt,
                &env,
                log,
                deadline,
                test.timeout,
            )
            .await;
        }
        Body::Scripts {
            host: Some(script), ..
        } => HostProgram::Script(script),
        Body::Executable(file) => HostProgram::CheckFile(file),
        Body::Scripts { host: None, .. } => return AttemptOutcome::Passed,
    };
    let task = HostTask {
        program,
        env: &env,
        deadline,
        timeout: test.timeout,
        shared: terms.shared,
        net: terms.net,
    };
    super::host::run_host(ctx, req, Reach::Attempt(machines), log, &task, granted).await
}

/// The outcome of a command in a machine that did not end: the test's deadline (`timeout`)
/// passed, or the machine failed.
pub(super) fn guest_error(e: MachineError, timeout: Duration, log: &Log) -> AttemptOutcome {
    match e {
        MachineError::CommandTimeout { .. } => {
            log.note(&format!("vmcheck: timed out after {}s", timeout.as_secs()));
            AttemptOutcome::TimedOut { after: timeout }
        }
        e => {
            log.note(&format!("vmcheck: {e}"));
            machine_failed(&e)
        }
    }
}

pub(super) fn skipped(log: &Log) -> AttemptOutcome {
    AttemptOutcome::Skipped {
        reason: log.last_line(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(env_name("machine1"), "MACHINE1");
        assert_eq!(env_name("web-server"), "WEB_SERVER");
    }
}
