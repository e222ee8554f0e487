//! Failed machines kept for later (`run --keep-failed-machines`) and brought back
//! (`vmcheck sit DIR`): a machine's memory and devices migrated to `state.zst` (zstd) and
//! its disk at that moment (`disk.qcow2`, an overlay of the image's disk alone, so that it
//! needs no booted snapshot), with `machine.toml` saying what it needs: the image by hash,
//! memory, CPUs, the accelerator and the qemu version (a saved state loads only into the
//! same machine). A kept machine is brought back exactly as it was: nothing is run in it
//! before it is handed over (no clock set, no new identity), unlike a restored snapshot.

use super::{Host, MachineError, Qmp, VirtualMachine, qemu};
use crate::image::Image;
use crate::signal::Cancel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Files of a kept machine.
pub const STATE: &str = "state.zst";
pub const DISK: &str = "disk.qcow2";
pub const INFO: &str = "machine.toml";
/// Bumped whenever what a kept machine holds changes. 2: machines have the guest agent's
/// virtio-serial port, so a state saved without it (1) does not load into today's devices;
/// 3: and the port of the kernel log stream (`kmsg.rs`).
pub const FORMAT: u32 = 3;

/// How long keeping a machine may take (it is paused meanwhile).
const KEEP_LIMIT: Duration = Duration::from_secs(300);

/// What a kept machine is and needs (`machine.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptInfo {
    pub format: u32,
    /// Its name in its test (`machine1`).
    pub name: String,
    pub test: String,
    pub image: String,
    pub image_sha256: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: String,
    pub qemu_version: String,
    /// Its first NIC reached nothing outside.
    pub isolated: bool,
    /// Its forwarded guest ports (forwarded again when it comes back).
    #[serde(default)]
    pub forward: Vec<u16>,
    /// Its address and MAC on its test's private network, if it had one.
    pub private_ip: Option<String>,
    pub private_mac: Option<String>,
    /// When it was kept (ms since the epoch), how long that took, and its size on disk.
    pub kept_ms: u64,
    pub seconds: f64,
    pub bytes: u64,
}

/// A kept machine to bring back: its state and disk (absent for an image without one).
#[derive(Debug, Clone)]
pub struct Revive {
    pub state: PathBuf,
    pub disk: Option<PathBuf>,
}

/// Who the machine is in its test.
pub struct KeepAs<'a> {
    pub name: &'a str,
    pub test: &'a str,
    pub private_ip: Option<&'a str>,
}

impl VirtualMachine {
    /// Save this machine as it is now into `into` (created private), then let it run on.
    pub async fn keep(&mut self, into: &Path, who: KeepAs<'_>) -> Result<KeptInfo, String> {
        let started = Instant::now();
        let limit = started + KEEP_LIMIT;
        crate::runner::artifacts::create_private_dir(into)
            .map_err(|e| format!("creating {}: {e}", into.display()))?;
        let mut qmp = Qmp::connect(&self.qmp_socket(), limit).await?;
        use serde_json::json;
        qmp.execute("stop", json!({}), limit).await?;
        let uri = qemu::exec_zstd_to(&into.join(STATE));
        let saved = self.freeze_and_migrate(&mut qmp, &uri, limit).await;
        // It runs on whatever happened (artifacts are collected from it, --sit sits on it).
        let resumed = qmp.execute("cont", json!({}), limit).await;
        let frozen = saved?;
        resumed?;
        if let (Some(frozen), Some(image_disk)) = (frozen, self.image.disk()) {
            let disk = into.join(DISK);
            tokio::fs::copy(&frozen, &disk)
                .await
                .map_err(|e| format!("copying {}: {e}", frozen.display()))?;
            // On the image's disk alone: the booted snapshot it may have come from need not
            // exist where it is brought back.
            qemu_img(
                &self.host.qemu_img,
                &["rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b"],
                &[&image_disk, &disk],
            )
            .await?;
        }
        let bytes = [STATE, DISK]
            .iter()
            .filter_map(|f| std::fs::metadata(into.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let info = KeptInfo {
            format: FORMAT,
            name: who.name.to_owned(),
            test: who.test.to_owned(),
            image: self.image.name.clone(),
            image_sha256: self.image.sha256.clone(),
            memory_mib: self.memory_mib,
            cpus: self.spec.cpus,
            accel: self.host.accel.as_str().to_owned(),
            qemu_version: self.host.qemu_version.clone(),
            isolated: self.spec.isolated,
            forward: self.spec.forward.clone(),
            private_ip: who.private_ip.map(str::to_owned),
            private_mac: self.spec.private_net.as_ref().map(|n| n.mac.clone()),
            kept_ms: crate::results::now_ms(),
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        };
        let text = toml::to_string(&info).map_err(|e| e.to_string())?;
        crate::runner::artifacts::create_private(&into.join(INFO))
            .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", into.join(INFO).display()))?;
        Ok(info)
    }

    /// Resume a kept machine whose qemu is loading its state, as it was: connect and read
    /// its boot id (the one it failed with).
    pub(super) async fn resume_kept(
        &mut self,
        deadline: Instant,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        let label = self.label.clone();
        let failed = |message: String| MachineError::Failed {
            label: label.clone(),
            message: format!("bringing the kept machine back: {message}"),
        };
        let mut qmp = Qmp::connect(&self.qmp_socket(), deadline)
            .await
            .map_err(&failed)?;
        let status = tokio::select! {
            s = qmp.wait_incoming(deadline) => s.map_err(&failed)?,
            _ = cancel.cancelled() => return Err(MachineError::Cancelled),
        };
        if status != "running" {
            qmp.execute("cont", serde_json::json!({}), deadline)
                .await
                .map_err(&failed)?;
        }
        drop(qmp);
        // It prints no ready marker: it booted long ago.
        self.markers_seen = self.console.borrow().ready;
        self.connect_and_read_boot_id(deadline, cancel).await
    }
}

/// The disk a kept machine comes back with: a copy of its kept disk (which stays as it is,
/// to be brought back again), backed by this host's copy of its image's disk.
pub(super) async fn working_disk(
    host: &Host,
    image: &Image,
    revive: &Revive,
    overlay: &Path,
    label: &str,
) -> Result<(), MachineError> {
    let io = |context: String| {
        move |source| MachineError::Io {
            label: label.to_owned(),
            context,
            source,
        }
    };
    let kept = revive.disk.as_ref().ok_or_else(|| MachineError::Failed {
        label: label.to_owned(),
        message: format!("the kept machine has no {DISK}, and its image has a disk"),
    })?;
    tokio::fs::copy(kept, overlay)
        .await
        .map_err(io(format!("copying {}", kept.display())))?;
    let backing = image.disk().expect("an image with a disk");
    qemu_img(
        &host.qemu_img,
        &["rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b"],
        &[&backing, overlay],
    )
    .await
    .map_err(|e| MachineError::Failed {
        label: label.to_owned(),
        message: e,
    })
}

async fn qemu_img(qemu_img: &Path, args: &[&str], paths: &[&Path]) -> Result<(), String> {
    let out = tokio::process::Command::new(qemu_img)
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", qemu_img.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {} failed: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Read the kept machine in `dir`.
pub fn read_info(dir: &Path) -> Result<KeptInfo, String> {
    let path = dir.join(INFO);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let info: KeptInfo = toml::from_str(&text)
        .map_err(|e| format!("{}: not a kept machine: {}", path.display(), e.message()))?;
    if info.format != FORMAT {
        return Err(format!(
            "{}: a kept machine of format {}, this vmcheck brings back format {FORMAT}",
            path.display(),
            info.format
        ));
    }
    // What goes into paths and qemu's command line is checked: an artifact directory may
    // come from anywhere.
    let bad = |what: &str, value: &str| {
        Err(format!(
            "{}: not a kept machine: invalid {what} {value:?}",
            path.display()
        ))
    };
    let word = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.')
    };
    if !word(&info.name) {
        return bad("name", &info.name);
    }
    if !crate::image::valid_name(&info.image) {
        return bad("image", &info.image);
    }
    if info.image_sha256.len() != 64 || !info.image_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad("image_sha256", &info.image_sha256);
    }
    if let Some(mac) = &info.private_mac {
        let octets: Vec<&str> = mac.split(':').collect();
        if octets.len() != 6
            || !octets
                .iter()
                .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return bad("private_mac", mac);
        }
    }
    if !(1..=64).contains(&info.cpus) || !(64..=1 << 20).contains(&info.memory_mib) {
        return bad(
            "size",
            &format!("{} CPUs, {} MiB", info.cpus, info.memory_mib),
        );
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> KeptInfo {
        KeptInfo {
            format: FORMAT,
            name: "machine1".into(),
            test: "T.t".into(),
            image: "busybox".into(),
            image_sha256: "ab".repeat(32),
            memory_mib: 256,
            cpus: 1,
            accel: "tcg".into(),
            qemu_version: "QEMU 7.2".into(),
            isolated: false,
            forward: vec![80],
            private_ip: Some("10.111.0.1".into()),
            private_mac: Some("52:54:01:00:00:01".into()),
            kept_ms: 1,
            seconds: 0.2,
            bytes: 1,
        }
    }

    fn read(info: &KeptInfo) -> Result<KeptInfo, String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INFO), toml::to_string(info).unwrap()).unwrap();
        read_info(dir.path())
    }

    #[test]
    fn a_kept_machine_reads_back_and_hostile_values_are_refused() {
        assert_eq!(read(&info()).unwrap(), info());
        let cases: Vec<(KeptInfo, &str)> = vec![
            (
                KeptInfo {
                    name: "../x".into(),
                    ..info()
                },
                "invalid name",
            ),
            (
                KeptInfo {
                    image: "a/../b".into(),
                    ..info()
                },
                "invalid image",
            ),
            (
                KeptInfo {
                    image_sha256: "../../etc".into(),
                    ..info()
                },
                "invalid image_sha256",
            ),
            (
                KeptInfo {
                    private_mac: Some("52:54:01:00:00:01,romfile=/etc/shadow".into()),
                    ..info()
                },
                "invalid private_mac",
            ),
            (
                KeptInfo {
                    memory_mib: 0,
                    ..info()
                },
                "invalid size",
            ),
            (
                KeptInfo {
                    format: 99,
                    ..info()
                },
                "format 99",
            ),
        ];
        for (bad, says) in cases {
            let e = read(&bad).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
