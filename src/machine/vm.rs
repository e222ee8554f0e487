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
pub use super::error::MachineError;
use super::ports::{self, PortKind, PortLease};
use super::qemu::{self, PrivateNet, QemuConfig};
use super::rundir;
use super::shell::{CONNECT_LIMIT, Shell};
pub use super::shell::{Completed, Exec};
use super::spawn::spawn_tied;
use super::ssh::{HostKeyCheck, SshError, SshSession, SshTarget};
use crate::image::Image;
use crate::shell::quote;
use crate::signal::Cancel;
use std::path::{Path, PathBuf};
use std::process::Stdio;
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
    shell: Shell,
    boot_id: Option<String>,
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
        let shell = Shell::new(&label, target(&spec.image, ssh_port.port));
        Ok(VirtualMachine {
            shell,
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
            boot_id: None,
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

    /// Commands and file copies over this machine's SSH connection.
    pub fn shell(&self) -> &Shell {
        &self.shell
    }

    /// A known_hosts file listing this machine's host key (written on first use).
    pub fn known_hosts(&self) -> PathBuf {
        let file = self.dir.path().join("known_hosts");
        let _ = std::fs::write(
            &file,
            format!(
                "[127.0.0.1]:{} {}\n",
                self.ssh_port.port, self.image.manifest.host_key
            ),
        );
        file
    }

    /// An `ssh` command line that reaches this machine as printed (host key checked).
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F none -i {} -p {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} root@127.0.0.1",
            quote(&self.image.client_key().to_string_lossy()),
            self.ssh_port.port,
            quote(&self.known_hosts().to_string_lossy()),
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
            self.shell = Shell::new(&self.label, target(&self.image, self.ssh_port.port));
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
        self.shell.disconnect().await;
        // sshd listens when the marker prints; a first connection can still race the
        // guest's network settling, so retry briefly until the boot deadline.
        let session = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match SshSession::connect(self.shell.target(), left.min(CONNECT_LIMIT)).await {
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
        self.shell.adopt(session).await;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let done = self
            .shell
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

    /// Reboot the guest and wait until it is back; returns the new boot id.
    pub async fn reboot(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        self.shell.request_reboot().await;
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
        self.shell.disconnect().await;
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
        self.shell.disconnect().await;
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

/// How to reach `image`'s guest on host port `port`.
fn target(image: &Image, port: u16) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port,
        user: "root".into(),
        identity: image.client_key(),
        host_key: match super::ssh::parse_public_key(&image.manifest.host_key) {
            Ok(k) => HostKeyCheck::Exact(k),
            // A manifest we wrote ourselves; unreadable means corrupt, and then no key
            // will match, which is the safe failure.
            Err(_) => HostKeyCheck::KnownHosts(PathBuf::from("/dev/null")),
        },
    }
}
