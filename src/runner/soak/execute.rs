//! One execution of a soak's script: a check in a machine (held for it, and interrupted
//! when a reboot fault takes the machine), or a script on the host with the `vm` helper
//! (each of its requests holds its machine). What it left is an [`Ended`].

use super::hold::Held;
use crate::events::AttemptOutcome;
use crate::machine::error::MachineError;
use crate::machine::shell::Exec;
use crate::machine::ssh::ExitStatus;
use crate::runner::attempt::{Log, Named};
use crate::runner::host::{Granted, HostProgram, HostTask, Reach, run_host};
use crate::shell::quote;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one execution ended, before it is a `SoakRun`.
pub(super) struct Ended {
    pub outcome: &'static str,
    pub detail: String,
    pub tail: String,
    /// How long it ran, from when it had its machine.
    pub took: Duration,
    /// How long it waited for its machine (being rebooted) before it ran.
    pub waited: Duration,
}

impl Ended {
    pub fn passed() -> Ended {
        Ended::not_run("passed", "")
    }

    pub fn failed(detail: String, tail: String) -> Ended {
        Ended {
            detail,
            tail,
            ..Ended::not_run("failed", "")
        }
    }

    /// An execution that did not run to its end (`skipped`, `interrupted`).
    pub fn not_run(outcome: &'static str, detail: &str) -> Ended {
        Ended {
            outcome,
            detail: detail.into(),
            tail: String::new(),
            took: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    /// Ended because `machine` was rebooted under it.
    pub fn rebooted(machine: &str) -> Ended {
        Ended::not_run(
            "interrupted",
            &format!("{machine} was rebooted by a reboot fault"),
        )
    }
}

/// How many bytes of a failed execution's output are kept.
const TAIL: usize = 2000;

/// The last [`TAIL`] bytes of a command's output, stdout then stderr, on line boundaries.
pub(super) fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = String::from_utf8_lossy(stdout).into_owned();
    all.push_str(&String::from_utf8_lossy(stderr));
    let all = crate::reporter::text::safe_lines(&all).join("\n");
    if all.len() <= TAIL {
        return all;
    }
    let mut cut = all.len() - TAIL;
    while !all.is_char_boundary(cut) {
        cut += 1;
    }
    let rest = &all[cut..];
    rest.split_once('\n').map_or(rest, |(_, r)| r).to_string()
}

fn command(machine: &Named, exports: &str, script: &str) -> String {
    format!(
        "{exports}export VMCHECK_MACHINE={}\nset -e\n{script}",
        quote(&machine.name)
    )
}

/// `script` in machine `held` (`set -e`, the test's environment), within `timeout` from
/// when it has the machine; `interrupted` if a reboot fault takes the machine first.
pub(super) async fn in_machine(
    held: &Held<'_, Named>,
    exports: &str,
    script: &str,
    timeout: Duration,
) -> Ended {
    let asked = Instant::now();
    let mut hold = held.hold().await;
    let (waited, t) = (asked.elapsed(), Instant::now());
    let (machine, rebooting) = hold.parts();
    let mut ended = tokio::select! {
        ended = script_in(machine, exports, script, timeout) => ended,
        _ = rebooting => Ended::rebooted(&held.name),
    };
    ended.took = t.elapsed();
    ended.waited = waited;
    ended
}

async fn script_in(machine: &Named, exports: &str, script: &str, timeout: Duration) -> Ended {
    let command = command(machine, exports, script);
    match machine
        .machine
        .shell()
        .run(Exec::new(&command, timeout))
        .await
    {
        Ok(done) => match done.status {
            ExitStatus::Code(0) => Ended::passed(),
            status => Ended::failed(
                status.to_string(),
                tail(&done.output.stdout, &done.output.stderr),
            ),
        },
        Err(MachineError::CommandTimeout { .. }) => Ended {
            took: timeout,
            ..Ended::not_run("timed-out", &format!("after {}s", timeout.as_secs()))
        },
        Err(e) => Ended::failed(e.to_string(), String::new()),
    }
}

/// What a host script of a soak runs with.
pub(super) struct OnHost<'a, 'm> {
    pub attempt: &'a super::Attempt<'a>,
    pub machines: &'a [Held<'m, Named>],
    pub script: &'a str,
    pub timeout: Duration,
    /// Where its whole output goes.
    pub output: &'a Path,
}

/// A host script (`/bin/sh -e`, the test's environment, the `vm` helper), within its
/// timeout; its output goes to its own file, of which a failure keeps the tail. Also the
/// journal messages it allowed.
pub(super) async fn on_host(run: OnHost<'_, '_>) -> (Ended, Vec<String>) {
    let a = run.attempt;
    let t = Instant::now();
    let log = Log::new(run.output, Arc::new(|_| {}));
    let task = HostTask {
        program: HostProgram::Script(run.script),
        env: a.env,
        deadline: Instant::now() + run.timeout,
        timeout: run.timeout,
        shared: false,
        net: a.net,
    };
    let mut granted = Granted::default();
    let outcome = run_host(
        a.ctx,
        a.req,
        Reach::Soak(run.machines),
        &log,
        &task,
        &mut granted,
    )
    .await;
    let output = log.finish(true);
    let mut ended = match outcome {
        AttemptOutcome::Passed => Ended::passed(),
        AttemptOutcome::Skipped { reason } => Ended::not_run("skipped", &reason),
        AttemptOutcome::TimedOut { after } => {
            Ended::not_run("timed-out", &format!("after {}s", after.as_secs()))
        }
        AttemptOutcome::Failed { status, .. } => {
            Ended::failed(status, tail(output.as_bytes(), b""))
        }
        AttemptOutcome::Harness { message, .. } => {
            Ended::failed(message, tail(output.as_bytes(), b""))
        }
        other => Ended::failed(format!("{other:?}"), tail(output.as_bytes(), b"")),
    };
    ended.took = t.elapsed();
    (ended, granted.allow_journal)
}
