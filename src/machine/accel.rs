//! Choosing the accelerator: KVM when it really works, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on some hosts the KVM module is PVM, which runs a
//! few real-mode instructions but hangs a Linux kernel. So the probe boots the image's own
//! kernel under KVM with a root device that does not exist: a working KVM reaches the
//! "Kernel panic" (and, with `-no-reboot`, QEMU's exit) in well under a second. The answer is
//! cached per host boot and QEMU binary, so only the first vmcheck after a reboot pays for
//! it. `VMCHECK_ACCEL=kvm|tcg` overrides the probe.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Boot `kernel` under `accel` towards a panic; true if it got there within `limit`.
pub async fn kernel_runs(qemu: &Path, kernel: &Path, accel: Accel, limit: Duration) -> bool {
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-accel",
        accel.as_str(),
        "-machine",
        "q35",
        "-m",
        "128",
        "-nodefaults",
    ])
    .args([
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
    ])
    .args(["-no-reboot", "-kernel"])
    .arg(kernel)
    .args(["-append", "console=ttyS0 panic=-1 root=/dev/vmcheck-probe"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let Ok(mut child) = super::spawn::spawn_tied(cmd).await else {
        return false;
    };
    let mut out = child.stdout.take().expect("stdout is piped");
    let run = async {
        let mut text = Vec::new();
        let _ = out.read_to_end(&mut text).await;
        let _ = child.wait().await;
        String::from_utf8_lossy(&text).contains("Kernel panic")
    };
    tokio::time::timeout(limit, run).await.unwrap_or(false)
}

/// The accelerator to use with `qemu`, probing (or reading the cached probe) as needed.
pub async fn choose(qemu: &Path, kernel: &Path, cache_dir: &Path) -> Accel {
    match std::env::var("VMCHECK_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let key = cache_key(qemu);
    let cache = cache_dir.join("accel-probe");
    if let Ok(text) = std::fs::read_to_string(&cache)
        && let Some((k, v)) = text.trim().rsplit_once(' ')
        && k == key
    {
        return if v == "kvm" { Accel::Kvm } else { Accel::Tcg };
    }
    let accel = if kernel_runs(qemu, kernel, Accel::Kvm, Duration::from_secs(5)).await {
        Accel::Kvm
    } else {
        crate::say!("vmcheck: KVM does not work on this host; using TCG (software emulation)");
        Accel::Tcg
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&cache, format!("{key} {}\n", accel.as_str()));
    accel
}

/// What the probe result depends on: this boot of the host, and the QEMU binary.
fn cache_key(qemu: &Path) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let meta = std::fs::metadata(qemu).ok();
    let (size, mtime) = meta
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.size(), m.mtime())
        })
        .unwrap_or((0, 0));
    format!("{}:{}:{size}:{mtime}", boot.trim(), qemu.display())
}
