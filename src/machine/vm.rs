//! A QEMU virtual machine booted from an image: start, wait for boot, run commands over one
//! persistent SSH connection, copy files, reboot, kill. The main type is [`VirtualMachine`].
//!
//! Cleanup is structural: the machine owns its qemu child (own process group, killed on
//! drop and by the kernel if vmcheck dies), its run directory (overlay, console log; removed
//! on drop) and its port lease (released on drop).
//!
//! qemu runs with `-no-reboot`, so a guest reset ends it. When the console shows that the
//! guest asked for the reboot (and did not panic), [`VirtualMachine::wait_boot`] relaunches
//! qemu on the same disk overlay: a reboot, with a new boot id, where a panic is an error.
//! [`VirtualMachine::start`] returns as soon as qemu runs, so callers can start several
//! machines and then wait for all of them.
//!
//! A machine starts from a booted snapshot of its image and size when there is one
//! (`snapshot.rs`): qemu loads the saved state, vmcheck resumes it over QMP, sets the guest's
//! clock and lets the image give it its own identity. The first machine that finds no
//! snapshot boots cold and saves one once it is ready (paused for a moment: its disk moves to
//! a new overlay, the old one is copied into the snapshot). A restore that fails is one line
//! on stderr and a cold boot; `cold_boot` in the spec always boots. Those steps are in
//! `vm/snapshots.rs`; bringing back a kept failed machine is `vm/kept.rs`.

use super::agent;
use super::console::{self, ConsoleState};
use super::deadline::BootClock;
pub use super::error::MachineError;
use super::fault::{self, Probe};
use super::kmsg::{self, KmsgStream};
use super::ports::{self, PortKind, PortLease};
use super::qemu::{self, PrivateNet, QemuConfig};
use super::qmp::Qmp;
use super::rundir;
use super::shell::{CONNECT_LIMIT, Shell};
pub use super::shell::{Completed, Exec};
use super::snapshot::{Found, Maker, Snapshot, SnapshotKey};
use super::spawn::spawn_tied;
use super::ssh::{HostKeyCheck, SshError, SshSession, SshTarget};
use crate::image::Image;
use crate::signal::Cancel;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

pub mod kept;
mod snapshots;

use super::host::Host;

/// The marker images print on the console when sshd is up (see bots/images/README.md).
pub use crate::image::READY_MARKER;

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
    /// Its first NIC reaches nothing outside (see [`QemuConfig::isolated`]).
    pub isolated: bool,
    /// Boot the image even where a booted snapshot could be restored (`--cold-boot`).
    pub cold_boot: bool,
    /// Installed after the boot, and saved with the snapshot (see `layer.rs`).
    pub layer: Option<Arc<super::layer::Layer>>,
    /// Bring back a kept failed machine instead of booting (see `vm/kept.rs`).
    pub revive: Option<kept::Revive>,
    /// Guest TCP ports forwarded to leased ports of the host's 127.0.0.1.
    pub forward: Vec<u16>,
}

/// The host ports a machine's qemu listens on: SSH's, and one per forwarded guest port.
struct HostPorts {
    ssh: PortLease,
    /// (guest port, the host's).
    forwards: Vec<(u16, PortLease)>,
}

impl HostPorts {
    fn lease(forward: &[u16], label: &str) -> Result<HostPorts, MachineError> {
        let lease = |what: String| {
            ports::lease(PortKind::Tcp).map_err(|source| MachineError::Io {
                label: label.to_owned(),
                context: format!("reserving {what}"),
                source,
            })
        };
        Ok(HostPorts {
            ssh: lease("an SSH port".into())?,
            forwards: forward
                .iter()
                .map(|&g| Ok((g, lease(format!("a port for its port {g}"))?)))
                .collect::<Result<_, MachineError>>()?,
        })
    }

    /// (host port, guest port) of each forward.
    fn pairs(&self) -> Vec<(u16, u16)> {
        self.forwards.iter().map(|(g, l)| (l.port, *g)).collect()
    }
}

/// How the current qemu of a machine is coming up.
enum Origin {
    /// Booting its kernel.
    Cold,
    /// Booting its kernel, and saving a snapshot once it is ready.
    Making(Maker),
    /// Loading a snapshot's state.
    Restoring(Snapshot),
    /// Loading a kept failed machine's state, to be resumed as it was.
    Reviving,
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
    ports: HostPorts,
    child: tokio::process::Child,
    qemu_stderr: Arc<Mutex<Vec<u8>>>,
    console: watch::Receiver<ConsoleState>,
    /// Ready markers of the current qemu seen up to the last completed boot.
    markers_seen: u32,
    shell: Shell,
    boot_id: Option<String>,
    origin: Origin,
    /// The disk overlay qemu writes to (it moves when a snapshot is saved).
    disk: Option<PathBuf>,
    /// Whether the last boot was a snapshot restore.
    restored: bool,
    /// What its shell looks at to explain a failed command (the current qemu).
    probe: Arc<Mutex<Probe>>,
    /// The snapshot this machine's disk is backed by, in use (not removed) while it lives.
    _snapshot: Option<Snapshot>,
    /// When its last start or boot began, and the steps of it so far (see [`Self::phases`]).
    phases: Phases,
    /// The guest kernel's log, streamed while the agent vmcheck started runs (`kmsg.rs`).
    kmsg: KmsgStream,
}

/// The steps of a machine's last start, each with the time since the start began: where the
/// time of a restore or boot goes (`examples/boot_latency` prints them).
#[derive(Debug, Clone)]
struct Phases {
    began: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new() -> Phases {
        Phases {
            began: Instant::now(),
            marks: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        self.mark_at(step, Instant::now());
    }

    fn mark_at(&mut self, step: &'static str, at: Instant) {
        self.marks.push((step, at - self.began));
    }
}

impl VirtualMachine {
    /// Launch qemu for `spec`; returns once qemu runs (see [`VirtualMachine::wait_boot`]).
    pub async fn start(host: &Host, spec: MachineSpec) -> Result<VirtualMachine, MachineError> {
        let mut phases = Phases::new();
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
        // Blocking: the first start in a process sweeps dead owners' directories.
        let dir = {
            let label = label.clone();
            tokio::task::spawn_blocking(move || rundir::create(&label))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
        .map_err(io(&format!(
            "creating its run directory in {}",
            rundir::base_dir().display()
        )))?;
        let origin = if spec.revive.is_some() {
            Origin::Reviving
        } else if spec.cold_boot {
            Origin::Cold
        } else {
            let key = SnapshotKey::new(
                &spec.image,
                memory_mib,
                spec.cpus,
                host.accel,
                &host.qemu_version,
                spec.private_net.is_some(),
                spec.layer.as_ref().map(|l| l.key.as_str()),
            );
            // Blocking: the first use of a snapshot in a process hashes it.
            let found = tokio::task::spawn_blocking(move || {
                let found = match key.find() {
                    Found::Some(s) => return Origin::Restoring(s),
                    Found::None => None,
                    Found::Corrupt(s, why) => Some((s, why)),
                };
                if let Some((s, why)) = found {
                    crate::say!(
                        "vmcheck: the snapshot {} is corrupt ({why}); discarded, booting cold",
                        s.dir.display()
                    );
                    s.discard();
                }
                key.try_make().map_or(Origin::Cold, Origin::Making)
            });
            found.await.unwrap_or(Origin::Cold)
        };
        let disk = spec.image.disk().map(|_| dir.path().join("overlay.qcow2"));
        if let (Some(revive), Some(overlay)) = (&spec.revive, &disk) {
            kept::working_disk(host, &spec.image, revive, overlay, &label).await?;
        } else if let (Some(backing), Some(overlay)) = (spec.image.disk(), &disk) {
            let backing = match &origin {
                Origin::Restoring(s) => s.disk(),
                _ => backing,
            };
            create_overlay(&host.qemu_img, &backing, overlay, &label).await?;
        }
        phases.mark("overlay");
        let host_ports = HostPorts::lease(&spec.forward, &label)?;
        let incoming = match (&origin, &spec.revive) {
            (Origin::Restoring(s), _) => Some(s.state()),
            (_, Some(revive)) => Some(revive.state.clone()),
            _ => None,
        };
        let (child, console, qemu_stderr) = launch(
            host,
            &spec,
            memory_mib,
            dir.path(),
            &host_ports,
            disk.as_deref(),
            incoming.as_deref(),
        )
        .await?;
        phases.mark("qemu started");
        let probe = Arc::new(Mutex::new(Probe {
            pid: child.id().unwrap_or(0),
            console: console.clone(),
            stderr: qemu_stderr.clone(),
            run_dir: dir.path().to_path_buf(),
            qmp: qmp_socket(dir.path()),
        }));
        let shell =
            Shell::new(&label, target(&spec.image, host_ports.ssh.port)).with_probe(probe.clone());
        let kmsg = KmsgStream::new(dir.path());
        Ok(VirtualMachine {
            probe,
            shell,
            label,
            image: spec.image.clone(),
            memory_mib,
            host: host.clone(),
            spec,
            dir,
            ports: host_ports,
            child,
            qemu_stderr,
            console,
            markers_seen: 0,
            boot_id: None,
            origin,
            disk,
            restored: false,
            _snapshot: None,
            phases,
            kmsg,
        })
    }

    /// Whether the machine came up from a booted snapshot (rather than booting).
    pub fn restored(&self) -> bool {
        self.restored
    }

    /// The steps of its last start (or reboot) and when each ended, from the start.
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases.marks
    }

    fn qmp_socket(&self) -> PathBuf {
        qmp_socket(self.dir.path())
    }

    /// Run one QMP command (its own connection, closed after it: QMP serves one client at
    /// a time) within `limit`; its return value, or why not.
    pub async fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
        limit: Duration,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + limit;
        let mut qmp = Qmp::connect(&self.qmp_socket(), deadline).await?;
        qmp.execute(command, arguments, deadline).await
    }

    pub fn ssh_port(&self) -> u16 {
        self.ports.ssh.port
    }

    /// Each forwarded guest port and the host's 127.0.0.1 port it is reached on.
    pub fn forwards(&self) -> Vec<(u16, u16)> {
        self.ports
            .forwards
            .iter()
            .map(|(g, l)| (*g, l.port))
            .collect()
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// The guest kernel's log stream, while it is live.
    pub fn kmsg(&self) -> Option<&KmsgStream> {
        self.kmsg.is_live().then_some(&self.kmsg)
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
                self.ports.ssh.port, self.image.manifest.host_key
            ),
        );
        file
    }

    /// How programs outside vmcheck reach this machine (host key checked).
    pub fn ssh_access(&self) -> super::access::SshAccess {
        super::access::SshAccess {
            host: "127.0.0.1".into(),
            port: self.ports.ssh.port,
            user: "root".into(),
            identity: self.image.client_key(),
            known_hosts: Some(self.known_hosts()),
        }
    }

    /// An `ssh` command line that reaches this machine (host key checked).
    pub fn ssh_command(&self) -> String {
        self.ssh_access().command()
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
        // The timeout counts the time qemu could run: a loaded host pushes it back.
        let mut clock = BootClock::new(timeout, self.child.id().unwrap_or(0));
        let deadline = clock.deadline();
        self.restored = false;
        let origin = std::mem::replace(&mut self.origin, Origin::Cold);
        let maker = match origin {
            Origin::Making(maker) => Some(maker),
            Origin::Cold => None,
            Origin::Reviving => {
                let boot_id = self.resume_kept(deadline, cancel).await?;
                self.restored = true;
                self.boot_id = Some(boot_id.clone());
                return Ok(boot_id);
            }
            Origin::Restoring(snapshot) => {
                if let Some(boot_id) = self
                    .restore_or_boot_cold(snapshot, deadline, cancel)
                    .await?
                {
                    return Ok(boot_id);
                }
                None
            }
        };
        let mut relaunches = 0;
        loop {
            let seen = self.markers_seen;
            let pid = self.child.id().unwrap_or(0);
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
                _ = clock.expired(pid) => Woke::Deadline,
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
                    if let Some(fault) = fault::disk_full(self.dir.path()) {
                        return Err(MachineError::Died {
                            label: self.label.clone(),
                            fault,
                        });
                    }
                    return Err(MachineError::BootTimeout {
                        label: self.label.clone(),
                        after: timeout + clock.starved(),
                        console_log: self.console_log(),
                        console: self.console_tail(),
                    });
                }
            };
            let lost_port = self
                .stderr_text()
                .contains("Could not set up host forwarding rule");
            let state = self.console.borrow().clone();
            let rebooted = status.as_ref().is_ok_and(|s| s.success())
                && state.restarts > 0
                && state.panics == 0;
            if (lost_port || rebooted) && relaunches < RELAUNCHES {
                relaunches += 1;
                self.relaunch(lost_port).await?;
                continue;
            }
            let when = match state.panic_line {
                Some(line) => format!("the guest kernel panicked: {line}"),
                None => "while booting".into(),
            };
            return Err(self.exited(status, &when));
        }
        self.markers_seen = self.console.borrow().ready;
        self.phases.mark("ready marker");
        clock.observe(self.child.id().unwrap_or(0));
        let mut deadline = clock.deadline();
        if let Some(layer) = self.spec.layer.clone() {
            self.connect(deadline, cancel).await?;
            let started = Instant::now();
            layer.apply(&self.shell, &self.label).await?;
            // The layer has a limit of its own: its time is not the boot's.
            deadline += started.elapsed();
        }
        if let Some(maker) = maker {
            // Connect first: the snapshot is of a machine that answers over SSH. Its boot id
            // is not read yet, so each restored machine draws its own.
            self.connect(deadline, cancel).await?;
            let agent = self.start_agent().await;
            self.shell.disconnect().await;
            // Saving has a limit of its own too: a boot that was slow (a loaded host) must
            // not leave it no time, and its time is not the boot's.
            let started = Instant::now();
            let saved = self.save_snapshot(maker, agent.is_some()).await;
            if let Some(agent) = agent {
                self.attach_agent(agent).await;
            }
            deadline += started.elapsed();
            self.phases.mark("snapshot saved");
            if let Err(why) = saved {
                crate::say!(
                    "vmcheck: {}: no snapshot of {} was saved ({why}); its machines boot cold",
                    self.label,
                    self.image.short_id()
                );
            }
        }
        let boot_id = self.connect_and_read_boot_id(deadline, cancel).await?;
        self.phases.mark("boot id read");
        self.boot_id = Some(boot_id.clone());
        Ok(boot_id)
    }

    fn exited(
        &self,
        status: std::io::Result<std::process::ExitStatus>,
        when: &str,
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
        // The agent was the old qemu's guest's (a reboot, a failed restore): gone with it,
        // and so is its copier of the kernel log.
        self.shell.detach_agent().await;
        self.kmsg.set_live(false);
        if new_port {
            self.ports = HostPorts::lease(&self.spec.forward, &self.label)?;
            self.shell = Shell::new(&self.label, target(&self.image, self.ports.ssh.port))
                .with_probe(self.probe.clone());
        }
        let (child, console, stderr) = launch(
            &self.host,
            &self.spec,
            self.memory_mib,
            self.dir.path(),
            &self.ports,
            self.disk.as_deref(),
            None,
        )
        .await?;
        {
            let mut probe = self.probe.lock().expect("poisoned");
            probe.pid = child.id().unwrap_or(0);
            probe.console = console.clone();
            probe.stderr = stderr.clone();
        }
        self.child = child;
        self.console = console;
        self.qemu_stderr = stderr;
        self.markers_seen = 0;
        Ok(())
    }

    /// Connect the shell, retrying while the guest's network settles.
    async fn connect(&self, deadline: Instant, cancel: &Cancel) -> Result<(), MachineError> {
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
        Ok(())
    }

    async fn connect_and_read_boot_id(
        &self,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        self.connect(deadline, cancel).await?;
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
        self.phases = Phases::new();
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
        // The run directory is removed next, and a qemu that is still starting creates files
        // there (its QMP socket): wait until it is gone, which SIGKILL makes a matter of
        // milliseconds. Off the async worker (block_in_place), so other tasks keep running.
        // Removing the run directory (a disk overlay of many MB) is blocking too.
        let (child, dir) = (&mut self.child, self.dir.path());
        let mut wait_and_remove = || {
            for _ in 0..400 {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(Some(_)) | Err(_) => break,
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        };
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(wait_and_remove);
        } else {
            wait_and_remove();
        }
    }
}

/// A qcow2 overlay of `backing` at `overlay`, for the machine `label`.
async fn create_overlay(
    qemu_img: &Path,
    backing: &Path,
    overlay: &Path,
    label: &str,
) -> Result<(), MachineError> {
    let out = tokio::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .await;
    let result = match out {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(std::io::Error::other(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(e) => Err(e),
    };
    result.map_err(|source| match overlay.parent().and_then(fault::disk_full) {
        Some(fault) => MachineError::Died {
            label: label.to_string(),
            fault,
        },
        None => MachineError::Io {
            label: label.to_string(),
            context: "creating its disk overlay".into(),
            source,
        },
    })
}

/// Where the qemu of the machine with run directory `dir` listens for QMP.
fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// The qemu command line of a machine of `image` with `memory_mib` and `cpus`, running in
/// the run directory `dir` (its QMP socket and the FIFOs of its serial ports there, made by
/// [`make_port_fifos`]) and reached on `ssh_port`: booting, without a disk, forwards or a
/// private network, which callers add. Every machine is launched from it, and
/// `examples/qemu_floor` measures plain QEMU on it.
pub fn machine_config(
    host: &Host,
    image: &Image,
    memory_mib: u32,
    cpus: u32,
    dir: &Path,
    ssh_port: u16,
) -> QemuConfig {
    QemuConfig {
        accel: host.accel,
        memory_mib,
        cpus,
        kernel: image.kernel(),
        initrd: image.initrd(),
        cmdline: image.manifest.boot.cmdline.clone(),
        disk: None,
        ssh_port,
        forwards: Vec::new(),
        isolated: false,
        private_net: None,
        qmp: Some(qmp_socket(dir)),
        incoming: None,
        agent: Some(agent::pipe_base(dir)),
        kmsg: Some(kmsg::pipe_base(dir)),
    }
}

/// New, empty FIFOs of the serial ports of [`machine_config`] (the guest agent's and the
/// kernel log stream's), for a qemu about to start in `dir`.
pub fn make_port_fifos(dir: &Path) -> std::io::Result<()> {
    agent::make_fifos(dir)?;
    kmsg::make_fifos(dir)
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
    ports: &HostPorts,
    disk: Option<&Path>,
    incoming: Option<&Path>,
) -> Result<Launched, MachineError> {
    let config = QemuConfig {
        disk: disk.map(Path::to_path_buf),
        forwards: ports.pairs(),
        isolated: spec.isolated,
        private_net: spec.private_net.clone(),
        incoming: incoming.map(Path::to_path_buf),
        ..machine_config(
            host,
            &spec.image,
            memory_mib,
            spec.cpus,
            dir,
            ports.ssh.port,
        )
    };
    make_port_fifos(dir).map_err(|source| MachineError::Io {
        label: spec.label.clone(),
        context: "creating the FIFOs of the guest agent and kernel log".into(),
        source,
    })?;
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
