//! A machine and its image's booted snapshot: resuming a qemu that loads one (or, when that
//! fails, booting cold instead), and saving one once a cold boot is ready (the guest agent
//! started first, the disk moved to a new overlay, the state migrated out). The methods of
//! [`VirtualMachine`] that `wait_boot` calls for them; `kept.rs` uses the same freeze.

use super::VirtualMachine;
use super::create_overlay;
use crate::machine::agent::{self, Agent};
use crate::machine::error::MachineError;
use crate::machine::qemu;
use crate::machine::qmp::Qmp;
use crate::machine::restore::{self, Talk};
use crate::machine::snapshot::{Maker, Snapshot};
use crate::signal::Cancel;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest a snapshot restore may take before the machine boots cold instead.
const RESTORE_LIMIT: Duration = Duration::from_secs(30);
/// Longest a guest agent just started may take to answer before the snapshot is saved
/// without it.
const AGENT_START_LIMIT: Duration = Duration::from_secs(10);
/// Longest saving a snapshot may pause a machine.
const SAVE_LIMIT: Duration = Duration::from_secs(60);

impl VirtualMachine {
    /// Resume the machine from `snapshot` (its boot id), or, when that fails, say why on
    /// stderr, give the snapshot up and boot cold instead (`None`: wait for that boot).
    pub(super) async fn restore_or_boot_cold(
        &mut self,
        snapshot: Snapshot,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<Option<String>, MachineError> {
        let why = match self.resume_restored(snapshot.agent, deadline, cancel).await {
            Ok(boot_id) => {
                self.restored = true;
                self._snapshot = Some(snapshot);
                self.boot_id = Some(boot_id.clone());
                return Ok(Some(boot_id));
            }
            Err(_) if cancel.is_cancelled() => return Err(MachineError::Cancelled),
            Err(why) => why,
        };
        // A qemu that could not load the state says why on stderr.
        let why = match self.child.try_wait() {
            Ok(Some(status)) => {
                let stderr = self.stderr_text();
                let said = stderr.lines().rev().find(|l| !l.trim().is_empty());
                format!("qemu exited with {status}: {}", said.unwrap_or(&why))
            }
            _ => why,
        };
        crate::say!(
            "vmcheck: {}: restoring the snapshot {} failed ({why}); booting cold",
            self.label,
            snapshot.dir.display()
        );
        self.boot_cold_instead().await?;
        // Its qemu is gone: the snapshot is no longer used by this machine.
        let _ = tokio::task::spawn_blocking(move || snapshot.discard()).await;
        Ok(None)
    }

    /// Resume a machine whose qemu is loading a snapshot, and get it ready for use: its
    /// clock set, its identity its own. Errors are reasons for a cold boot.
    async fn resume_restored(
        &mut self,
        with_agent: bool,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<String, String> {
        // A restore takes a second; one that takes much longer is broken, not slow.
        let limit = deadline.min(Instant::now() + RESTORE_LIMIT);
        let mut qmp = Qmp::connect(&self.qmp_socket(), limit).await?;
        let status = tokio::select! {
            s = qmp.wait_incoming(limit) => s?,
            _ = cancel.cancelled() => return Err("cancelled".into()),
        };
        match status.as_str() {
            "running" => {}
            "paused" | "postmigrate" | "prelaunch" => {
                qmp.execute("cont", serde_json::json!({}), limit).await?;
            }
            other => return Err(format!("qemu is {other} after loading the state")),
        }
        drop(qmp);
        self.phases.mark("state loaded");
        let private_mac = self.spec.private_net.as_ref().map(|n| n.mac.as_str());
        let script = restore::after_restore_script(private_mac);
        let talk = if with_agent {
            // The agent has waited on its port since the snapshot was saved: no connection
            // to make first. SSH connects when something needs it.
            let agent = Agent::open(self.dir.path())
                .map_err(|e| format!("opening the guest agent's channel: {e}"))?;
            Talk::Agent(agent.talk(&script).await.map_err(|e| e.to_string())?)
        } else {
            // Not before: a connection that qemu's port forward accepts while the guest is not
            // running yet loses its first SYN, and slirp sends it again seconds later
            // (measured: 6 s for a busybox restore).
            self.connect(limit, cancel)
                .await
                .map_err(|e| e.to_string())?;
            self.phases.mark("ssh connected");
            Talk::Ssh(
                self.shell
                    .converse(&script)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        };
        let left = limit
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(5));
        let done = tokio::select! {
            done = tokio::time::timeout(left, restore::converse(talk)) => done
                .map_err(|_| format!("setting the clock and identity took over {left:?}"))??,
            _ = cancel.cancelled() => return Err("cancelled".into()),
        };
        self.phases.mark_at("clock read", done.clock_read);
        self.phases.mark("clock and identity set");
        if let Some(agent) = done.agent {
            self.attach_agent(agent).await;
        }
        self.kmsg.set_journal(done.journal);
        Ok(done.boot_id)
    }

    /// After a failed restore: a new qemu, booting the image on a fresh overlay.
    async fn boot_cold_instead(&mut self) -> Result<(), MachineError> {
        self.shell.disconnect().await;
        self.kill_group();
        let _ = self.child.wait().await;
        if let (Some(backing), Some(overlay)) = (self.image.disk(), &self.disk) {
            let _ = std::fs::remove_file(overlay);
            create_overlay(&self.host.qemu_img, &backing, overlay, &self.label).await?;
        }
        self.relaunch(false).await
    }

    /// Use the agent running in this qemu's guest, and the kernel log stream it started.
    pub(super) async fn attach_agent(&self, agent: Agent) {
        self.shell.attach_agent(agent).await;
        self.kmsg.set_live(true);
    }

    /// Start the guest agent (see `agent.rs`) in this booted machine, over its SSH
    /// connection, and wait until it answers; `None` (and SSH it is) for a guest without its
    /// port (an image without `virtio_console`) or where it does not answer.
    pub(super) async fn start_agent(&self) -> Option<Agent> {
        let started = self
            .shell
            .execute(&agent::start_command(), Duration::from_secs(30))
            .await;
        if !started.is_ok_and(|done| done.status.success()) {
            return None;
        }
        let mut agent = Agent::open(self.dir.path()).ok()?;
        agent.ping(AGENT_START_LIMIT).await.ok()?;
        Some(agent)
    }

    /// Save this booted machine as the snapshot `maker` makes: pause it, move its disk to a
    /// new overlay (the old one is the snapshot's disk), write its state, resume it. `agent`:
    /// whether the guest agent waits on its port in the saved machine.
    pub(super) async fn save_snapshot(&mut self, maker: Maker, agent: bool) -> Result<(), String> {
        let started = Instant::now();
        let limit = started + SAVE_LIMIT;
        let mut qmp = Qmp::connect(&self.qmp_socket(), limit).await?;
        use serde_json::json;
        qmp.execute("stop", json!({}), limit).await?;
        let saved = async {
            let frozen = self
                .freeze_and_migrate(&mut qmp, &qemu::exec_cat_to(&maker.state()), limit)
                .await?;
            if let Some(old) = frozen {
                tokio::fs::copy(&old, maker.disk())
                    .await
                    .map_err(|e| format!("copying {}: {e}", old.display()))?;
            }
            Ok::<(), String>(())
        }
        .await;
        // Resume whatever happened: the machine is someone's.
        let resumed = qmp.execute("cont", json!({}), limit).await;
        saved?;
        resumed?;
        let info = format!(
            "# A booted {} machine, saved by vmcheck {} in {:.2}s.\nimage = \"{}\"\nmemory_mib = {}\ncpus = {}\n",
            self.image.name,
            env!("CARGO_PKG_VERSION"),
            started.elapsed().as_secs_f64(),
            self.image.short_id(),
            self.memory_mib,
            self.spec.cpus,
        ) + if agent { "agent = true\n" } else { "" };
        // Blocking: hashes the files.
        tokio::task::spawn_blocking(move || maker.publish(&info))
            .await
            .map_err(|e| format!("publishing it: {e}"))?
            .map_err(|e| format!("publishing it: {e}"))?;
        Ok(())
    }

    /// Of a stopped machine: move its disk to a new overlay (the old one, returned, is then
    /// frozen as it was) and migrate its state to `uri`.
    pub(super) async fn freeze_and_migrate(
        &mut self,
        qmp: &mut Qmp,
        uri: &str,
        limit: Instant,
    ) -> Result<Option<PathBuf>, String> {
        use serde_json::json;
        let mut frozen = None;
        if let Some(old) = self.disk.clone() {
            let new = self
                .dir
                .path()
                .join(format!("overlay-{}.qcow2", crate::results::now_ms()));
            qmp.execute(
                "blockdev-snapshot-sync",
                json!({
                    "device": "disk0",
                    "snapshot-file": new.to_string_lossy(),
                    "format": "qcow2",
                }),
                limit,
            )
            .await?;
            self.disk = Some(new);
            frozen = Some(old);
        }
        // The default bandwidth limit would make this take seconds.
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 1u64 << 40 }),
            limit,
        )
        .await?;
        qmp.execute("migrate", json!({ "uri": uri }), limit).await?;
        qmp.wait_migrated(limit).await?;
        Ok(frozen)
    }
}
