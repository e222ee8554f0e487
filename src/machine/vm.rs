//! A QEMU virtual machine booted from an image: start, wait for boot, run commands over one
//! persistent SSH connection, copy files, reboot, kill. The main type is [`VirtualMachine`].
//!
//! Cleanup is structural: the machine owns its qemu child (own process group, killed on
//! drop and by the kernel if vmcheck dies), its run directory (overlay, console log; removed
//! on drop) and its port lease (released on drop).
//!
//! qemu runs with `-no-reboot`, so a guest reset ends it. When the console shows that the
//! guest asked for the reboot (and did not panic), [`VirtualMachine::wait_boot`] relaunches
//! qemu on the same disk overlay: a reboot, with a new boot id, where a panic is an error. [`VirtualMachine::start`] returns as soon
//! as qemu runs, so callers can start several machines and then wait for all of them.

use super::accel::Accel;
use super::console::{self, ConsoleState};
use super::ports::{self, PortKind, PortLease};
use super::qemu::{self, PrivateNet, QemuConfig};
use super::rundir;
use super::spawn::spawn_tied;
use super::ssh::{ExitStatus, HostKeyCheck, Output, OutputSink, SshError, SshSession, SshTarget};
use crate::image::Image;
use crate::shell::quote;
use crate::signal::Cancel;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// The marker images print on the console when sshd is up (see bots/images/README.md).
pub use crate::image::READY_MARKER;

/// Facts about the host that every machine needs, found once per process.
#[derive(Debug, Clone)]
pub struct Host {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
}

impl Host {
    /// Find qemu and choose the accelerator (probing KVM with `probe_kernel` if needed).
    pub async fn detect(probe_kernel: &Path, cache_dir: &Path) -> Result<Host, MachineError> {
        let qemu = qemu::find_qemu().ok_or(MachineError::Missing {
            program: "qemu-system-x86_64",
            package: "qemu-system-x86",
        })?;
        let qemu_img = qemu::find_in_path("qemu-img").ok_or(MachineError::Missing {
            program: "qemu-img",
            package: "qemu-utils",
        })?;
        let accel = super::accel::choose(&qemu, probe_kernel, cache_dir).await;
        Ok(Host {
            qemu,
            qemu_img,
            accel,
        })
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// A short name for messages and run directories, e.g. `busybox-1`.
    pub label: String,
    pub image: Image,
    /// Guest memory; the image's default when `None`.
    pub memory_mib: Option<u32>,
    pub cpus: u32,
    pub private_net: Option<PrivateNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(
        "{program} not found in PATH: install the Debian package {package} (or run bots/install-deps)"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error(
        "not enough memory for machine {label}: it needs {needed_mib} MiB ({memory_mib} MiB guest + qemu), the host has {available_mib} MiB available"
    )]
    OutOfMemory {
        label: String,
        memory_mib: u32,
        needed_mib: u64,
        available_mib: u64,
    },
    #[error("machine {label}: {context}: {source}")]
    Io {
        label: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// `status` says how and when, e.g. "exit status: 1, while booting".
    #[error("machine {label}: qemu exited ({status})\n{stderr}--- console tail ({}) ---\n{console}", .console_log.display())]
    QemuExited {
        label: String,
        status: String,
        stderr: String,
        console_log: PathBuf,
        console: String,
    },
    #[error("machine {label} did not boot within {}s (no ready marker on the console)\n--- console tail ({}) ---\n{console}", .after.as_secs(), .console_log.display())]
    BootTimeout {
        label: String,
        after: Duration,
        console_log: PathBuf,
        console: String,
    },
    #[error("machine {label}: {source}")]
    Ssh {
        label: String,
        #[source]
        source: SshError,
    },
    #[error("machine {label}: command timed out after {}s: {command}", .after.as_secs())]
    CommandTimeout {
        label: String,
        command: String,
        after: Duration,
        output: Output,
    },
    #[error("machine {label}: {message}")]
    Failed { label: String, message: String },
    #[error("interrupted")]
    Cancelled,
}

/// A command to run in a machine.
pub struct Exec<'a> {
    pub command: &'a str,
    pub timeout: Duration,
    pub stdin: Option<&'a [u8]>,
    pub sink: Option<OutputSink<'a>>,
}

impl<'a> Exec<'a> {
    pub fn new(command: &'a str, timeout: Duration) -> Exec<'a> {
        Exec {
            command,
            timeout,
            stdin: None,
            sink: None,
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
const CONNECT_LIMIT: Duration = Duration::from_secs(20);
/// How often one wait for a boot relaunches qemu: after the guest asked for a reboot, or
/// when qemu lost its forwarded port to another program.
const RELAUNCHES: u32 = 3;

pub struct VirtualMachine {
    pub label: String,
    pub image: Image,
    pub memory_mib: u32,
    host: Host,
    spec: MachineSpec,
    dir: tempfile::TempDir,
    ssh_port: PortLease,
    child: tokio::process::Child,
    qemu_stderr: Arc<Mutex<Vec<u8>>>,
    console: watch::Receiver<ConsoleState>,
    /// Ready markers of the current qemu seen up to the last completed boot.
    markers_seen: u32,
    ssh: tokio::sync::Mutex<Option<Arc<SshSession>>>,
    boot_id: Option<String>,
    exec_counter: AtomicU64,
}

impl VirtualMachine {
    /// Launch qemu for `spec`; returns once qemu runs (see [`VirtualMachine::wait_boot`]).
    pub async fn start(host: &Host, spec: MachineSpec) -> Result<VirtualMachine, MachineError> {
        let label = spec.label.clone();
        let memory_mib = spec
            .memory_mib
            .unwrap_or(spec.image.manifest.boot.memory_mib);
        let needed_mib = u64::from(memory_mib) + qemu::QEMU_OVERHEAD_MIB;
        if let Some(available_mib) = qemu::mem_available_mib()
            && available_mib < needed_mib
        {
            return Err(MachineError::OutOfMemory {
                label,
                memory_mib,
                needed_mib,
                available_mib,
            });
        }
        let io = |context: &str| {
            let label = label.clone();
            let context = context.to_string();
            move |source| MachineError::Io {
                label,
                context,
                source,
            }
        };
        let dir = rundir::create(&label).map_err(io("creating its run directory"))?;
        if let Some(disk) = spec.image.disk() {
            create_overlay(&host.qemu_img, &disk, &dir.path().join("overlay.qcow2"))
                .await
                .map_err(io("creating its disk overlay"))?;
        }
        let ssh_port = ports::lease(PortKind::Tcp).map_err(io("reserving an SSH port"))?;
        let (child, console, qemu_stderr) =
            launch(host, &spec, memory_mib, dir.path(), ssh_port.port).await?;
        Ok(VirtualMachine {
            label,
            image: spec.image.clone(),
            memory_mib,
            host: host.clone(),
            spec,
            dir,
            ssh_port,
            child,
            qemu_stderr,
            console,
            markers_seen: 0,
            ssh: tokio::sync::Mutex::new(None),
            boot_id: None,
            exec_counter: AtomicU64::new(0),
        })
    }

    pub fn ssh_port(&self) -> u16 {
        self.ssh_port.port
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    pub fn run_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: self.ssh_port.port,
            user: "root".into(),
            identity: self.image.client_key(),
            host_key: match super::ssh::parse_public_key(&self.image.manifest.host_key) {
                Ok(k) => HostKeyCheck::Exact(k),
                // A manifest we wrote ourselves; unreadable means corrupt, and then no key
                // will match, which is the safe failure.
                Err(_) => HostKeyCheck::KnownHosts(PathBuf::from("/dev/null")),
            },
        }
    }

    /// An `ssh` command line that reaches this machine as printed (host key checked).
    pub fn ssh_command(&self) -> String {
        let known_hosts = self.dir.path().join("known_hosts");
        let _ = std::fs::write(
            &known_hosts,
            format!(
                "[127.0.0.1]:{} {}\n",
                self.ssh_port.port, self.image.manifest.host_key
            ),
        );
        format!(
            "ssh -F none -i {} -p {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} root@127.0.0.1",
            quote(&self.image.client_key().to_string_lossy()),
            self.ssh_port.port,
            quote(&known_hosts.to_string_lossy()),
        )
    }

    fn console_tail(&self) -> String {
        console::tail(&self.console_log(), 30)
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.qemu_stderr.lock().expect("poisoned")).into_owned()
    }

    /// Wait until the guest printed its ready marker and answers over SSH; returns the
    /// boot id.
    pub async fn wait_boot(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        let deadline = Instant::now() + timeout;
        let mut relaunches = 0;
        loop {
            let seen = self.markers_seen;
            enum Woke {
                Ready,
                ConsoleClosed,
                Exited(std::io::Result<std::process::ExitStatus>),
                Deadline,
            }
            let woke = tokio::select! {
                r = self.console.wait_for(|c| c.ready > seen) => {
                    if r.is_ok() { Woke::Ready } else { Woke::ConsoleClosed }
                }
                status = self.child.wait() => Woke::Exited(status),
                _ = tokio::time::sleep_until(deadline.into()) => Woke::Deadline,
                _ = cancel.cancelled() => return Err(MachineError::Cancelled),
            };
            let status = match woke {
                Woke::Ready => break,
                Woke::Exited(status) => status,
                // The console closed: qemu is exiting; collect its status.
                Woke::ConsoleClosed => {
                    match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
                        Ok(status) => status,
                        Err(_) => Err(std::io::Error::other(
                            "qemu closed its console but did not exit",
                        )),
                    }
                }
                Woke::Deadline => {
                    return Err(MachineError::BootTimeout {
                        label: self.label.clone(),
                        after: timeout,
                        console_log: self.console_log(),
                        console: self.console_tail(),
                    });
                }
            };
            let lost_port = self
                .stderr_text()
                .contains("Could not set up host forwarding rule");
            let state = *self.console.borrow();
            let rebooted = status.as_ref().is_ok_and(|s| s.success())
                && state.restarts > 0
                && state.panics == 0;
            if (lost_port || rebooted) && relaunches < RELAUNCHES {
                relaunches += 1;
                self.relaunch(lost_port).await?;
                continue;
            }
            let when = if state.panics > 0 {
                "the guest kernel panicked"
            } else {
                "while booting"
            };
            return Err(self.exited(status, when));
        }
        self.markers_seen = self.console.borrow().ready;
        let boot_id = self.connect_and_read_boot_id(deadline, cancel).await?;
        self.boot_id = Some(boot_id.clone());
        Ok(boot_id)
    }

    fn exited(
        &self,
        status: std::io::Result<std::process::ExitStatus>,
        when: &'static str,
    ) -> MachineError {
        MachineError::QemuExited {
            label: self.label.clone(),
            status: match status {
                Ok(s) => format!("{s}, {when}"),
                Err(e) => format!("{e}, {when}"),
            },
            stderr: self.stderr_text(),
            console_log: self.console_log(),
            console: self.console_tail(),
        }
    }

    /// Start qemu again on the same disk overlay (and a new port if `new_port`).
    async fn relaunch(&mut self, new_port: bool) -> Result<(), MachineError> {
        if new_port {
            self.ssh_port = ports::lease(PortKind::Tcp).map_err(|source| MachineError::Io {
                label: self.label.clone(),
                context: "reserving an SSH port".into(),
                source,
            })?;
        }
        let (child, console, stderr) = launch(
            &self.host,
            &self.spec,
            self.memory_mib,
            self.dir.path(),
            self.ssh_port.port,
        )
        .await?;
        self.child = child;
        self.console = console;
        self.qemu_stderr = stderr;
        self.markers_seen = 0;
        Ok(())
    }

    async fn connect_and_read_boot_id(
        &self,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        *self.ssh.lock().await = None;
        // sshd listens when the marker prints; a first connection can still race the
        // guest's network settling, so retry briefly until the boot deadline.
        let session = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match SshSession::connect(&self.target(), left.min(CONNECT_LIMIT)).await {
                Ok(s) => break s,
                Err(
                    SshError::Connect { .. }
                    | SshError::Disconnected { .. }
                    | SshError::Protocol { .. },
                ) if Instant::now() + Duration::from_millis(100) < deadline
                    && !cancel.is_cancelled() =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => {
                    return Err(MachineError::Ssh {
                        label: self.label.clone(),
                        source,
                    });
                }
            }
        };
        *self.ssh.lock().await = Some(Arc::new(session));
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let done = self
            .execute("cat /proc/sys/kernel/random/boot_id", left)
            .await?;
        let id = done.stdout_text().trim().to_string();
        if !done.status.success() || id.is_empty() {
            return Err(MachineError::Failed {
                label: self.label.clone(),
                message: format!("reading the boot id failed ({})", done.status),
            });
        }
        Ok(id)
    }

    async fn session(&self) -> Result<Arc<SshSession>, MachineError> {
        let mut slot = self.ssh.lock().await;
        if let Some(s) = slot.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let s = Arc::new(
            SshSession::connect(&self.target(), CONNECT_LIMIT)
                .await
                .map_err(|source| MachineError::Ssh {
                    label: self.label.clone(),
                    source,
                })?,
        );
        *slot = Some(s.clone());
        Ok(s)
    }

    /// Run a shell command as root; `Ok` whatever its exit status, `Err` on timeout or a
    /// lost connection.
    pub async fn execute(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<Completed, MachineError> {
        self.run(Exec::new(command, timeout)).await
    }

    /// Run a command as described by `req`. On timeout every process that inherited the
    /// command's `VMCHECK_EXEC_ID` is killed, so nothing it started keeps running.
    pub async fn run(&self, req: Exec<'_>) -> Result<Completed, MachineError> {
        let session = self.session().await?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            self.exec_counter.fetch_add(1, Ordering::Relaxed)
        );
        let wrapped = format!(
            "VMCHECK_EXEC_ID={id}; export VMCHECK_EXEC_ID; {}",
            req.command
        );
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
                let kill = format!(
                    "for p in /proc/[0-9]*; do tr '\\0' '\\n' < $p/environ 2>/dev/null | grep -qx VMCHECK_EXEC_ID={id} && kill -9 ${{p#/proc/}} 2>/dev/null; done; true"
                );
                let mut ignored = Output::default();
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    session.exec(&kill, None, None, &mut ignored),
                )
                .await;
                Err(MachineError::CommandTimeout {
                    label: self.label.clone(),
                    command: req.command.to_string(),
                    after: req.timeout,
                    output,
                })
            }
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

    /// Reboot the guest and wait until it is back; returns the new boot id.
    pub async fn reboot(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        // The connection may drop before `reboot` reports back; that is expected.
        let _ = self.execute("reboot", Duration::from_secs(10)).await;
        self.wait_reboot(timeout, cancel).await
    }

    /// Wait for a reboot that was started some other way (e.g. by a test): the ready marker
    /// must appear again and the boot id must change.
    pub async fn wait_reboot(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        let old = self.boot_id.clone();
        if let Some(s) = self.ssh.lock().await.take() {
            s.close().await;
        }
        let id = self.wait_boot(timeout, cancel).await?;
        if Some(&id) == old.as_ref() {
            return Err(MachineError::Failed {
                label: self.label.clone(),
                message: "the boot id did not change: the machine did not reboot".into(),
            });
        }
        Ok(id)
    }

    /// Stop qemu and remove everything the machine had on the host.
    pub async fn kill(mut self) {
        if let Some(s) = self.ssh.lock().await.take() {
            // Do not wait on a guest that may be hung.
            let _ = tokio::time::timeout(Duration::from_millis(200), s.close()).await;
        }
        self.kill_group();
        let _ = self.child.wait().await;
        // Dropping self removes the run directory and releases the port.
    }

    fn kill_group(&self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

impl Drop for VirtualMachine {
    fn drop(&mut self) {
        self.kill_group();
    }
}

async fn create_overlay(qemu_img: &Path, backing: &Path, overlay: &Path) -> std::io::Result<()> {
    let out = tokio::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

type Launched = (
    tokio::process::Child,
    watch::Receiver<ConsoleState>,
    Arc<Mutex<Vec<u8>>>,
);

async fn launch(
    host: &Host,
    spec: &MachineSpec,
    memory_mib: u32,
    dir: &Path,
    ssh_port: u16,
) -> Result<Launched, MachineError> {
    let image = &spec.image;
    let config = QemuConfig {
        accel: host.accel,
        memory_mib,
        cpus: spec.cpus,
        kernel: image.kernel(),
        initrd: image.initrd(),
        cmdline: image.manifest.boot.cmdline.clone(),
        disk: image.disk().map(|_| dir.join("overlay.qcow2")),
        ssh_port,
        private_net: spec.private_net.clone(),
    };
    let mut cmd = tokio::process::Command::new(&host.qemu);
    cmd.args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_tied(cmd).await.map_err(|source| MachineError::Io {
        label: spec.label.clone(),
        context: format!("starting {}", host.qemu.display()),
        source,
    })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let console = console::spawn_reader(stdout, dir.join("console.log"), READY_MARKER);
    let stderr_buf = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let sink = stderr_buf.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut s = sink.lock().expect("poisoned");
            if s.len() < 64 * 1024 {
                s.extend_from_slice(&buf[..n]);
            }
        }
    });
    Ok((child, console, stderr_buf))
}
