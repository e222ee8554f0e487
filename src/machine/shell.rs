//! Running commands and copying files over a machine's one persistent SSH connection, or its
//! guest agent when it has one (`agent.rs`: a restored virtual machine). The main type is
//! [`Shell`]; virtual machines and existing hosts (`--machine`) both use it.
//!
//! The agent runs vmcheck's own commands only (POSIX sh, no stdin: [`Shell::execute`], or an
//! [`Exec`] that says `agent`), when it is attached and answers a ping at once (a test may
//! have killed it). What users and tests run (bodies, `vm-run -e`, `vm exec`) goes over SSH,
//! connected when first needed: it gets what an SSH session gives (the user's login shell,
//! PAM's session, `SSH_CONNECTION`), exactly as on a booted machine; so does everything
//! after the agent failed once.
//!
//! Every command runs with `VMCHECK_EXEC_ID=<unique>` exported. On timeout vmcheck kills
//! every guest process whose environment carries that id, so a timed-out command leaves
//! nothing running on a machine that later tests share.

use super::agent::{Agent, AgentError};
use super::error::MachineError;
use super::fault::{Probe, diagnose};
use super::ssh::{Conversation, ExitStatus, Output, OutputSink, SshSession, SshTarget};
use crate::shell::quote;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A command to run in a machine.
pub struct Exec<'a> {
    pub command: &'a str,
    pub timeout: Duration,
    pub stdin: Option<&'a [u8]>,
    pub sink: Option<OutputSink<'a>>,
    /// vmcheck's own POSIX sh command, which the guest agent may run (see the module doc);
    /// false: over SSH.
    pub agent: bool,
}

impl<'a> Exec<'a> {
    pub fn new(command: &'a str, timeout: Duration) -> Exec<'a> {
        Exec {
            command,
            timeout,
            stdin: None,
            sink: None,
            agent: false,
        }
    }
}

/// A command that ran to its end.
#[derive(Debug, Clone)]
pub struct Completed {
    pub status: ExitStatus,
    pub output: Output,
}

impl Completed {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
}

/// How long a single SSH connection attempt may take.
pub const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// How long an attached agent may take to answer before a command goes over SSH instead.
const PING_LIMIT: Duration = Duration::from_secs(3);

/// Commands and file copies for one machine, over one lazily (re)opened SSH connection.
pub struct Shell {
    label: String,
    target: SshTarget,
    ssh: tokio::sync::Mutex<Option<Arc<SshSession>>>,
    /// The guest agent, while it is trusted to answer.
    agent: tokio::sync::Mutex<Option<Agent>>,
    exec_counter: AtomicU64,
    /// For machines vmcheck runs: what to look at when a command fails for want of a machine.
    probe: Option<Arc<std::sync::Mutex<Probe>>>,
}

impl Shell {
    pub fn new(label: &str, target: SshTarget) -> Shell {
        Shell {
            label: label.to_string(),
            target,
            ssh: tokio::sync::Mutex::new(None),
            agent: tokio::sync::Mutex::new(None),
            exec_counter: AtomicU64::new(0),
            probe: None,
        }
    }

    /// A shell whose lost connections and timeouts are explained by `probe` (see
    /// `fault.rs`): the error then names the cause (kernel panic, qemu killed, disk full).
    pub fn with_probe(mut self, probe: Arc<std::sync::Mutex<Probe>>) -> Shell {
        self.probe = Some(probe);
        self
    }

    /// `error`, or the machine's fault that explains it. A lost connection waits a moment
    /// for a dying qemu; a timeout only looks.
    async fn explain(&self, error: MachineError) -> MachineError {
        let patience = match &error {
            MachineError::Ssh { .. } | MachineError::Agent { .. } => Duration::from_secs(3),
            MachineError::CommandTimeout { .. } => Duration::ZERO,
            _ => return error,
        };
        let Some(probe) = &self.probe else {
            return error;
        };
        let probe = probe.lock().expect("poisoned").clone();
        match diagnose(&probe, patience).await {
            Some(fault) => MachineError::Died {
                label: self.label.clone(),
                fault,
            },
            None => error,
        }
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Use `session` as the connection from now on.
    pub async fn adopt(&self, session: SshSession) {
        *self.ssh.lock().await = Some(Arc::new(session));
    }

    /// Run commands through `agent` from now on, while it answers.
    pub async fn attach_agent(&self, agent: Agent) {
        *self.agent.lock().await = Some(agent);
    }

    /// Stop using the agent (the guest reboots, or qemu is replaced: it is gone).
    pub async fn detach_agent(&self) {
        self.agent.lock().await.take();
    }

    /// Ask the machine to reboot. The connection may drop before `reboot` reports back, so
    /// the result says nothing; wait for the new boot id instead.
    pub async fn request_reboot(&self) {
        // Not explained: qemu ending is what a reboot looks like from here.
        let _ = self
            .run_once(Exec::new("reboot", Duration::from_secs(10)))
            .await;
    }

    /// Close the connection (the next command opens a new one).
    pub async fn disconnect(&self) {
        if let Some(s) = self.ssh.lock().await.take() {
            // Do not wait on a guest that may be hung.
            let _ = tokio::time::timeout(Duration::from_millis(200), s.close()).await;
        }
    }

    async fn session(&self) -> Result<Arc<SshSession>, MachineError> {
        let mut slot = self.ssh.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = Arc::new(
            SshSession::connect(&self.target, CONNECT_LIMIT)
                .await
                .map_err(|source| MachineError::Ssh {
                    label: self.label.clone(),
                    source,
                })?,
        );
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Run one of vmcheck's own shell commands as root (through the agent when it answers);
    /// `Ok` whatever its exit status, `Err` on timeout or a lost connection.
    pub async fn execute(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Completed, MachineError> {
        self.run(Exec {
            agent: true,
            ..Exec::new(command, timeout)
        })
        .await
    }

    /// Start `command` for a conversation over the connection (see
    /// [`super::ssh::Conversation`]); the caller bounds it in time.
    pub async fn converse(&self, command: &str) -> Result<Conversation, MachineError> {
        let session = self.session().await?;
        session
            .converse(command)
            .await
            .map_err(|source| MachineError::Ssh {
                label: self.label.clone(),
                source,
            })
    }

    /// Run a command as described by `req`. On timeout every process that inherited the
    /// command's `VMCHECK_EXEC_ID` is killed, so nothing it started keeps running.
    pub async fn run(&self, req: Exec<'_>) -> Result<Completed, MachineError> {
        match self.run_once(req).await {
            Err(e) => Err(self.explain(e).await),
            ok => ok,
        }
    }

    async fn run_once(&self, req: Exec<'_>) -> Result<Completed, MachineError> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            self.exec_counter.fetch_add(1, Ordering::Relaxed)
        );
        let wrapped = format!(
            "VMCHECK_EXEC_ID={id}; export VMCHECK_EXEC_ID; {}",
            req.command
        );
        if req.agent
            && req.stdin.is_none()
            && !wrapped.contains('\0')
            && let Ok(mut slot) = self.agent.try_lock()
            && let Some(agent) = slot.as_mut()
        {
            if agent.ping(PING_LIMIT).await.is_ok() {
                let mut output = Output::default();
                let result = agent
                    .run(&wrapped, req.timeout, req.sink, &mut output)
                    .await;
                if result.is_err() {
                    // Its answer is lost, or may still come: never use it again.
                    *slot = None;
                }
                drop(slot);
                return match result {
                    Ok(status) => Ok(Completed { status, output }),
                    Err(AgentError::TimedOut(_)) => {
                        self.kill_exec(&id).await;
                        Err(self.timed_out(req.command, req.timeout, output))
                    }
                    Err(e) => Err(self.agent_failed(e)),
                };
            }
            // Gone (a test killed it), or too slow to trust: SSH from now on.
            *slot = None;
        }
        let session = self.session().await?;
        let mut output = Output::default();
        let result = tokio::time::timeout(
            req.timeout,
            session.exec(&wrapped, req.stdin, req.sink, &mut output),
        )
        .await;
        match result {
            Ok(Ok(status)) => Ok(Completed { status, output }),
            Ok(Err(source)) => Err(MachineError::Ssh {
                label: self.label.clone(),
                source,
            }),
            Err(_) => {
                self.kill_exec(&id).await;
                Err(self.timed_out(req.command, req.timeout, output))
            }
        }
    }

    /// Kill every guest process of the command whose `VMCHECK_EXEC_ID` is `id`, over SSH.
    async fn kill_exec(&self, id: &str) {
        let Ok(session) = self.session().await else {
            return;
        };
        let kill = format!(
            "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -qx VMCHECK_EXEC_ID={id} && kill -9 ${{p#/proc/}} 2>/dev/null; done; true"
        );
        let mut ignored = Output::default();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            session.exec(&kill, None, None, &mut ignored),
        )
        .await;
    }

    fn timed_out(&self, command: &str, after: Duration, output: Output) -> MachineError {
        MachineError::CommandTimeout {
            label: self.label.clone(),
            command: command.to_string(),
            after,
            output,
        }
    }

    fn agent_failed(&self, source: AgentError) -> MachineError {
        MachineError::Agent {
            label: self.label.clone(),
            source,
        }
    }

    /// Write `data` to `remote` (parents created) with permissions `mode`.
    pub async fn upload_bytes(
        &self,
        data: &[u8],
        remote: &str,
        mode: u32,
    ) -> Result<(), MachineError> {
        let parent = Path::new(remote)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let q = quote(remote);
        let cmd = if parent.is_empty() {
            format!("cat > {q} && chmod {mode:o} {q}")
        } else {
            format!(
                "mkdir -p {} && cat > {q} && chmod {mode:o} {q}",
                quote(&parent)
            )
        };
        let timeout = Duration::from_secs(60 + (data.len() as u64 >> 20));
        let done = self
            .run(Exec {
                stdin: Some(data),
                ..Exec::new(&cmd, timeout)
            })
            .await?;
        self.check(&done, &format!("uploading to {remote}"))
    }

    /// Copy the local file `local` to `remote`, keeping its permission bits.
    pub async fn upload(&self, local: &Path, remote: &str) -> Result<(), MachineError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| MachineError::Io {
            label: self.label.clone(),
            context: format!("reading {}", local.display()),
            source,
        };
        let data = tokio::fs::read(local).await.map_err(io)?;
        let mode = tokio::fs::metadata(local)
            .await
            .map_err(io)?
            .permissions()
            .mode()
            & 0o7777;
        self.upload_bytes(&data, remote, mode).await
    }

    /// Copy the guest file `remote` to the local path `local`.
    pub async fn download(&self, remote: &str, local: &Path) -> Result<(), MachineError> {
        let done = self
            .execute(&format!("cat {}", quote(remote)), Duration::from_secs(300))
            .await?;
        self.check(&done, &format!("downloading {remote}"))?;
        tokio::fs::write(local, &done.output.stdout)
            .await
            .map_err(|source| MachineError::Io {
                label: self.label.clone(),
                context: format!("writing {}", local.display()),
                source,
            })
    }

    fn check(&self, done: &Completed, what: &str) -> Result<(), MachineError> {
        if done.status.success() {
            return Ok(());
        }
        Err(MachineError::Failed {
            label: self.label.clone(),
            message: format!(
                "{what} failed ({}): {}",
                done.status,
                String::from_utf8_lossy(&done.output.stderr).trim()
            ),
        })
    }
}
