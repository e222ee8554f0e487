//! The host's side of every machine, found once per process: which qemu and qemu-img, which
//! accelerator (KVM probed, else TCG), and qemu's version (saved states are only for the same
//! qemu).

use super::accel::Accel;
use super::error::MachineError;
use super::qemu;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Facts about the host that every machine needs, found once per process.
#[derive(Debug, Clone)]
pub struct Host {
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    /// `qemu-system-x86_64 --version`'s first line: saved states are only for the same qemu.
    pub qemu_version: String,
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
        let qemu_version = tokio::process::Command::new(&qemu)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        Ok(Host {
            qemu,
            qemu_img,
            accel,
            qemu_version,
        })
    }
}
