//! The bodies of one attempt, run within the test's deadline on the machines it got: a soak
//! (`soak/`), the guest script in the first machine (its environment exported, the journal's
//! start marker and, where the kernel log streams, the end marker written around it), then a
//! host script or an executable check file (`host.rs`), or an autopkgtest (`autopkgtest.rs`).
//! Every body sees the same environment (`VMCHECK_*`, `TEST_OS`, the test's own `env`).

use super::attempt::{AttemptContext, AttemptRequest, Named};
use super::host::{Granted, HostProgram, HostTask, Reach};
use super::net::Network;
use super::outcomes::{guest_error, skipped};
use super::output::Log;
use crate::checkfile::Body;
use crate::events::AttemptOutcome;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use crate::shell::quote;
use std::time::Instant;

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
pub(super) struct Terms<'a> {
    /// The command writing the journal's start marker.
    pub(super) mark: &'a str,
    /// The marker is written by the guest body, before it runs.
    pub(super) marked_by_body: bool,
    /// The command writing the end marker, which the guest body runs after it (in a
    /// subshell, so that its `exit` ends it only), where the first machine's kernel log
    /// streams to the host.
    pub(super) end: Option<&'a str>,
    /// The attempt's directory.
    pub(super) dir: &'a std::path::Path,
    /// The machine is a nondestructive test's.
    pub(super) shared: bool,
    /// The machines' private network (tests with several machines).
    pub(super) net: Option<&'a Network>,
}

/// Run `run` in the first machine (after the start marker, if given), then `host` on the
/// host, or the executable check file's test, until the test's deadline.
pub(super) async fn run_bodies(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert_eq!(env_name("machine1"), "MACHINE1");
        assert_eq!(env_name("web-server"), "WEB_SERVER");
    }
}
