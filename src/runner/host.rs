//! A test's process on the host — its `host` script, or an executable check file's test
//! (`FILE --vmcheck-run NAME`, which also gets `topology.rs`'s files, vmcheck's Python
//! testlib on `PYTHONPATH` and a file to report an infrastructure failure in) — run in its
//! own process group, with the `vm` helper on `PATH` and the attempt's control socket
//! served (see `control.rs`) until it ends or the test's deadline. What it asks for that
//! outlives it (paths to restore, journal messages to allow) is handed back (`Granted`).
//!
//! Nothing the script starts outlives it: its process group is killed when the attempt
//! ends; the script itself gets `PR_SET_PDEATHSIG` (it dies with vmcheck, even by
//! SIGKILL); and its scratch directory is a run directory (`rundir.rs`) whose environment
//! marker every process of the script inherits, so the next vmcheck removes the directory
//! of a killed vmcheck and kills what its script left running.
//!
//! The socket is served without ever blocking on a client: each connection's request is
//! read in a task of its own, within [`REQUEST_READ_LIMIT`], and each answer is written in
//! one too, so a client that connects and never writes (or never reads) delays neither
//! other clients nor the deadline.

use super::attempt::{AttemptContext, AttemptRequest, Log, Named};
use super::control::{self, Request, Response};
use super::outcomes::{harness, machine_failed, skipped};
use crate::events::AttemptOutcome;
use crate::machine::error::MachineError;
use crate::machine::shell::Exec;
use crate::machine::ssh::{ExitStatus, Stream};
use crate::shell::quote;
use std::path::Path;
use std::time::{Duration, Instant};

/// What runs on the host for a test.
#[derive(Clone, Copy)]
pub(super) enum HostProgram<'a> {
    /// A `host` script, run by `/bin/sh -e`.
    Script(&'a str),
    /// An executable check file, run as `FILE --vmcheck-run NAME`.
    CheckFile(&'a Path),
}

/// A test's process on the host: what runs, and the attempt's terms.
pub(super) struct HostTask<'a> {
    pub program: HostProgram<'a>,
    /// The test's environment (`VMCHECK_TEST`, …, its `env`).
    pub env: &'a [(String, String)],
    pub deadline: Instant,
    /// What the deadline is, for messages (the test's `timeout`, or a soak event's).
    pub timeout: Duration,
    /// The machine is shared (a nondestructive test): `restore` requests save paths.
    pub shared: bool,
    /// The machines' private network, where `net` requests put their faults.
    pub net: Option<&'a super::net::Network>,
}

/// The machines a host process's `vm` requests reach.
pub(super) enum Reach<'a, 'm> {
    /// The attempt's own: `vm reboot` may reboot them.
    Attempt(&'a mut [Named]),
    /// A soak's, shared with its other executions: each request holds its machine while it
    /// runs (waiting while a reboot fault reboots it); rebooting is the soak's fault's.
    Soak(&'a [super::soak::hold::Held<'m, Named>]),
}

impl Reach<'_, '_> {
    fn names(&self) -> Vec<&str> {
        match self {
            Reach::Attempt(ms) => ms.iter().map(|m| m.name.as_str()).collect(),
            Reach::Soak(ms) => ms.iter().map(|m| m.name.as_str()).collect(),
        }
    }
}

/// What the test's process asked for that outlives it.
#[derive(Debug, Default)]
pub(super) struct Granted {
    /// Guest paths saved by `restore` requests on a shared machine, in the order saved.
    pub restore: Vec<String>,
    /// Regexes of journal messages allowed by `allow-journal` requests.
    pub allow_journal: Vec<String>,
}

/// The file a test writes a reason into to report an infrastructure failure (Bazel's
/// `TEST_INFRASTRUCTURE_FAILURE_FILE`), under the attempt's host directory.
const INFRASTRUCTURE_FAILURE_FILE: &str = "infrastructure-failure";
/// The file a failing test writes a reason into when its failure is not to be retried (a
/// pixel test's), under the attempt's host directory.
const FINAL_FAILURE_FILE: &str = "final-failure";
/// Most of that file that is read.
const INFRASTRUCTURE_REASON_LIMIT: u64 = 4096;

/// Longest a `vm` helper may take to send its request once connected.
pub const REQUEST_READ_LIMIT: Duration = Duration::from_secs(10);
/// Longest an answer may take to be written to a `vm` helper.
const RESPONSE_WRITE_LIMIT: Duration = Duration::from_secs(60);

/// Kills a host script's whole process group when dropped.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

/// The script's scratch directory (`bin/vm`, `control.sock`) and the socket's listener.
fn prepare(ctx: &AttemptContext) -> std::io::Result<(tempfile::TempDir, tokio::net::UnixListener)> {
    let dir = crate::machine::rundir::create("host")?;
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let helper = bin.join("vm");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nexec {} vm-ctl \"$@\"\n",
            quote(&ctx.vmcheck_exe.to_string_lossy())
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o700))?;
    // `vmcheck` is the one running the test, whatever its file is called.
    std::os::unix::fs::symlink(&ctx.vmcheck_exe, bin.join("vmcheck"))?;
    let listener = tokio::net::UnixListener::bind(dir.path().join("control.sock"))?;
    Ok((dir, listener))
}

/// The process of `program`, with its environment and the files it is told about.
fn command(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    reach: &Reach,
    dir: &Path,
    program: HostProgram,
    log: &Log,
) -> std::io::Result<tokio::process::Command> {
    let mut cmd = match program {
        HostProgram::Script(script) => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-ec").arg(script);
            cmd
        }
        HostProgram::CheckFile(file) => {
            let Reach::Attempt(machines) = reach else {
                return Err(std::io::Error::other(
                    "an executable check file has no soaks",
                ));
            };
            let mut cmd = tokio::process::Command::new(file);
            cmd.arg(crate::checkfile::RUN_ARG).arg(req.test.base_name());
            let written = super::topology::write(dir, &req.test.name(), machines, |name| {
                req.test
                    .provision
                    .iter()
                    .find(|p| p.name == name)
                    .map_or(req.test.os(&ctx.test_os), |p| {
                        p.image_or(req.test.os(&ctx.test_os))
                    })
                    .to_owned()
            })?;
            for note in &written.notes {
                log.note(note);
            }
            cmd.env("VMCHECK_TOPOLOGY", &written.topology)
                .env("VMCHECK_SSH_CONFIG", &written.ssh_config)
                .env("PYTHONPATH", crate::testlib::python_path_env()?);
            cmd
        }
    };
    cmd.env(
        "VMCHECK_INFRASTRUCTURE_FAILURE_FILE",
        dir.join(INFRASTRUCTURE_FAILURE_FILE),
    )
    .env("VMCHECK_FINAL_FAILURE_FILE", dir.join(FINAL_FAILURE_FILE));
    if let Some(address) = &ctx.browser {
        cmd.env("VMCHECK_BROWSER", address);
    }
    // Where the test may leave files of its own (screenshots): kept with the attempt's
    // artifacts (which a passing attempt's are not, unless --keep-artifacts).
    cmd.env(
        "VMCHECK_ARTIFACTS",
        super::artifacts::AttemptDir::path_of(&ctx.artifacts_dir, &req.test.name(), req.attempt)
            .join("test"),
    );
    Ok(cmd)
}

/// The reason a test wrote into its infrastructure-failure (or final-failure) file, if it
/// did (one line, bounded).
fn infrastructure_failure(dir: &Path) -> Option<String> {
    reason_in(&dir.join(INFRASTRUCTURE_FAILURE_FILE))
}

fn reason_in(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(INFRASTRUCTURE_REASON_LIMIT)
        .read_to_end(&mut bytes)
        .ok()?;
    let reason = crate::reporter::text::first_line(&String::from_utf8_lossy(&bytes));
    Some(if reason.is_empty() {
        "(no reason given)".to_owned()
    } else {
        reason
    })
}

pub(super) async fn run_host(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    mut reach: Reach<'_, '_>,
    log: &Log,
    task: &HostTask<'_>,
    granted: &mut Granted,
) -> AttemptOutcome {
    let (program, env, deadline) = (task.program, task.env, task.deadline);
    let what = match program {
        HostProgram::Script(_) => "the host script",
        HostProgram::CheckFile(_) => "the test's process",
    };
    let (dir, listener) = match prepare(ctx) {
        Ok(x) => x,
        Err(e) => return harness(format!("preparing {what}: {e}")),
    };
    let mut cmd = match command(ctx, req, &reach, dir.path(), program, log) {
        Ok(cmd) => cmd,
        Err(e) => return harness(format!("preparing {what}: {e}")),
    };
    let path = crate::testlib::path_env(Some(&dir.path().join("bin")));
    cmd.current_dir(&ctx.workdir)
        .envs(env.iter().cloned())
        .env("PATH", path)
        .env("VMCHECK_CONTROL", dir.path().join("control.sock"))
        .env(crate::machine::rundir::OWNER_ENV, dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    crate::private::give_caller_umask(cmd.as_std_mut());
    // The guard process kills all the script started if vmcheck is killed (SIGKILL);
    // `KillGroup` does on every other way out.
    let (mut child, _death_guard) = match crate::machine::spawn::spawn_guarded(cmd).await {
        Ok(c) => c,
        Err(e) => return harness(format!("starting {what}: {e}")),
    };
    let guard = KillGroup(child.id());
    let mut readers = tokio::task::JoinSet::new();
    // Bounded: a script printing faster than the output is written waits for it.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stream = stream;
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    // Requests read so far, each with its connection (reading never blocks this loop).
    let (requests_tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
    let mut clients = tokio::task::JoinSet::new();
    // A machine that died under a `vm` request: the script's failure is then that machine's.
    let mut died: Option<MachineError> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break Some(status),
            Some(data) = rx.recv() => log.write(&data),
            conn = listener.accept() => {
                if let Ok((mut stream, _)) = conn {
                    let requests = requests_tx.clone();
                    clients.spawn(async move {
                        let request = match tokio::time::timeout(
                            REQUEST_READ_LIMIT,
                            control::read_request(&mut stream),
                        )
                        .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(format!(
                                "no request within {}s",
                                REQUEST_READ_LIMIT.as_secs()
                            )),
                        };
                        let _ = requests.send((stream, request));
                    });
                }
            }
            Some((mut stream, request)) = requests.recv() => {
                let response = match request {
                    Ok(request) => match tokio::time::timeout_at(
                        deadline.into(),
                        serve(ctx, req, &mut reach, log, request, task, granted),
                    )
                    .await
                    {
                        Ok(Ok(response)) => response,
                        Ok(Err(e)) => {
                            let response = Response::infrastructure_error(e.to_string());
                            if matches!(e, MachineError::Died { .. }) {
                                died.get_or_insert(e);
                            }
                            response
                        }
                        Err(_) => Response::infrastructure_error("the test's deadline passed"),
                    },
                    Err(e) => Response::error(e),
                };
                clients.spawn(async move {
                    let _ = tokio::time::timeout(
                        RESPONSE_WRITE_LIMIT,
                        control::write_response(&mut stream, &response),
                    )
                    .await;
                });
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = tokio::time::sleep_until(deadline.into()) => break None,
        }
    };
    clients.abort_all();
    let (outcome, note) = match status {
        None => {
            // SIGTERM to the script's group, a grace period, then SIGKILL (by the guard).
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::SIGTERM,
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            (
                AttemptOutcome::TimedOut {
                    after: task.timeout,
                },
                Some(format!(
                    "vmcheck: timed out after {}s",
                    task.timeout.as_secs()
                )),
            )
        }
        Some(Err(e)) => (harness(format!("waiting for {what}: {e}")), None),
        // A machine that died under a `vm` request explains the failure: a machine
        // failure, named, retried as one.
        Some(Ok(s)) if !matches!(s.code(), Some(0 | 77)) && died.is_some() => {
            let e = died.take().expect("checked");
            (machine_failed(&e), Some(format!("vmcheck: {e}")))
        }
        Some(Ok(_)) if let Some(reason) = infrastructure_failure(dir.path()) => {
            let message = format!("the test reported an infrastructure failure: {reason}");
            (
                harness(message.clone()),
                Some(format!("vmcheck: {message}")),
            )
        }
        Some(Ok(s)) => match s.code() {
            Some(0) => (AttemptOutcome::Passed, None),
            Some(77) => (
                AttemptOutcome::Skipped {
                    reason: String::new(),
                },
                None,
            ),
            _ => {
                let (status, note) = match program {
                    HostProgram::Script(_) => ("host script", "the host script failed"),
                    HostProgram::CheckFile(_) => ("test", "the test failed"),
                };
                let final_because = reason_in(&dir.path().join(FINAL_FAILURE_FILE));
                let not_retried = final_because
                    .as_deref()
                    .map_or(String::new(), |r| format!("; not retried: {r}"));
                (
                    AttemptOutcome::Failed {
                        status: format!("{status}: {s}"),
                        final_because,
                    },
                    Some(format!("vmcheck: {note} ({s}){not_retried}")),
                )
            }
        },
    };
    // Leftover background processes of the script die with its group; then the rest of
    // its output comes, before vmcheck's note on how it ended.
    drop(guard);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(data) = rx.recv().await {
            log.write(&data);
        }
    })
    .await;
    readers.abort_all();
    if let Some(note) = note {
        log.note(&note);
    }
    match outcome {
        AttemptOutcome::Skipped { .. } => skipped(log),
        other => other,
    }
}

/// The most of a `vm exec` command's stdout, and of its stderr, that its answer carries.
const ANSWER_LIMIT: usize = 16 << 20;

/// Carry out one `vm` helper request against the attempt's machines: the answer, or the
/// machine's error.
async fn serve(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    reach: &mut Reach<'_, '_>,
    log: &Log,
    request: Request,
    task: &HostTask<'_>,
    granted: &mut Granted,
) -> Result<Response, MachineError> {
    let deadline = task.deadline;
    log.note(&format!("+ {}", request.describe()));
    let Some(machine) = request.machine() else {
        return Ok(match request {
            Request::AllowJournal { patterns } => allow_journal(patterns, granted),
            Request::Net {
                action,
                machines,
                value,
            } => match task.net {
                Some(net) => net.serve(action, &machines, value.as_deref()),
                None => Response::error(
                    "this test has no private network: `vm net` needs a test with two \
                     machines or more",
                ),
            },
            _ => unreachable!("only allow-journal and net are for no machine"),
        });
    };
    let names = reach.names();
    if !names.contains(&machine) {
        return Ok(Response::error(format!(
            "no machine '{machine}' in this test (machines: {})",
            names.join(", ")
        )));
    }
    let machine = machine.to_owned();
    let left = deadline.saturating_duration_since(Instant::now());
    match (reach, request) {
        (Reach::Attempt(ms), request @ (Request::Reboot { .. } | Request::WaitReboot { .. })) => {
            let m = ms.iter_mut().find(|m| m.name == machine).expect("named");
            let limit = ctx.boot_timeout.min(left);
            match request {
                Request::Reboot { .. } => m.machine.reboot(limit, &ctx.cancel).await?,
                _ => m.machine.wait_reboot(limit, &ctx.cancel).await?,
            };
            // A test's own machines get their names and addresses back (a shared machine
            // never had them).
            if !task.shared {
                super::fresh::set_up(m).await?;
            }
            Ok(Response::default())
        }
        (Reach::Soak(_), Request::Reboot { .. } | Request::WaitReboot { .. }) => {
            Ok(Response::error(
                "a soak's machines are rebooted by its reboot fault (fault = \"reboot\"), not \
                 by its events",
            ))
        }
        (Reach::Attempt(ms), request) => {
            let m = ms.iter().find(|m| m.name == machine).expect("named");
            serve_on(req, m, request, task, granted, left).await
        }
        (Reach::Soak(held), request) => {
            let held = held.iter().find(|m| m.name == machine).expect("named");
            let mut hold = held.hold().await;
            let left = deadline.saturating_duration_since(Instant::now());
            let (m, rebooting) = hold.parts();
            let served = serve_on(req, m, request, task, granted, left);
            tokio::select! {
                r = served => r,
                _ = rebooting => Ok(Response::error(format!(
                    "{machine} was rebooted by the soak's reboot fault while this ran"
                ))),
            }
        }
    }
}

/// Carry out a request (anything but a reboot) on machine `m`, within `left`.
async fn serve_on(
    req: &AttemptRequest,
    m: &Named,
    request: Request,
    task: &HostTask<'_>,
    granted: &mut Granted,
    left: Duration,
) -> Result<Response, MachineError> {
    let shell_done = |r: Result<(), MachineError>| r.map(|()| Response::default());
    match request {
        Request::Exec {
            command,
            input,
            timeout,
            ..
        } => {
            let limit = timeout.map_or(left, |t| left.min(Duration::from_secs(t)));
            // The answer travels whole in one JSON message: each stream is kept up to
            // ANSWER_LIMIT, the rest counted and said, so vmcheck's memory stays bounded.
            let mut kept: [Vec<u8>; 2] = Default::default();
            let mut cut = [0usize; 2];
            let mut sink = |stream: Stream, data: &[u8]| {
                let i = usize::from(stream == Stream::Stderr);
                let room = ANSWER_LIMIT.saturating_sub(kept[i].len());
                kept[i].extend_from_slice(&data[..data.len().min(room)]);
                cut[i] += data.len().saturating_sub(room);
            };
            let done = m
                .machine
                .shell()
                .run(Exec {
                    sink: Some(&mut sink),
                    stdin: input.as_deref().map(str::as_bytes),
                    ..Exec::new(&command, limit)
                })
                .await;
            let done = match done {
                // The command's own timeout, before the test's deadline: its answer.
                Err(MachineError::CommandTimeout { .. }) if limit < left => {
                    return Ok(Response::error(format!(
                        "the command timed out after {}s",
                        limit.as_secs()
                    )));
                }
                other => other?,
            };
            let [stdout, stderr] = kept.map(|b| String::from_utf8_lossy(&b).into_owned());
            let mut stderr = stderr;
            for (what, n) in ["stdout", "stderr"].iter().zip(cut) {
                if n > 0 {
                    stderr.push_str(&format!(
                        "\nvmcheck: {n} bytes of the command's {what} cut: a vm exec answer \
                         keeps {} MiB of each (write big output to a file in the machine and \
                         vm download it)\n",
                        ANSWER_LIMIT >> 20
                    ));
                }
            }
            Ok(Response {
                exit: match done.status {
                    ExitStatus::Code(c) => c.min(255) as i32,
                    _ => 255,
                },
                stdout,
                stderr,
                ..Response::default()
            })
        }
        Request::Upload { local, remote, .. } => {
            shell_done(m.machine.shell().upload(&local, &remote).await)
        }
        Request::Download { remote, local, .. } => {
            shell_done(m.machine.shell().download(&remote, &local).await)
        }
        Request::Ssh { .. } => Ok(Response {
            exit: 0,
            stdout: format!("{}\n", m.machine.ssh_command()),
            ..Response::default()
        }),
        Request::Restore { paths, .. } => {
            if let Some(e) = paths
                .iter()
                .find_map(|p| super::restore::valid_path(p).err())
            {
                return Ok(Response::error(format!("cannot restore {e}")));
            }
            // A fresh machine is thrown away after the test: nothing to put back.
            if !task.shared {
                return Ok(Response::default());
            }
            let first = req.test.restore.len() + granted.restore.len() + 1;
            let save = super::restore::save_command(&paths, first, false);
            let done = m.machine.shell().execute(&save, left).await?;
            if !done.status.success() {
                return Ok(Response::error(format!(
                    "saving {} failed ({}): {}",
                    paths.join(" "),
                    done.status,
                    String::from_utf8_lossy(&done.output.stderr).trim()
                )));
            }
            granted.restore.extend(paths);
            Ok(Response::default())
        }
        Request::AllowJournal { .. }
        | Request::Net { .. }
        | Request::Reboot { .. }
        | Request::WaitReboot { .. } => unreachable!("handled by serve"),
    }
}

/// Allow journal messages matching `patterns` for the rest of the attempt, if they are
/// valid regexes.
fn allow_journal(patterns: Vec<String>, granted: &mut Granted) -> Response {
    for p in &patterns {
        if let Err(e) = regex::Regex::new(p) {
            return Response::error(format!(
                "not a valid regex: {}",
                crate::reporter::text::one_line(&e.to_string())
            ));
        }
    }
    granted.allow_journal.extend(patterns);
    Response::default()
}
