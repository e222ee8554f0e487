//! Failed machines kept and brought back. `run --keep-failed-machines`: right after a test's
//! body failed, before anything else touches them, its machines are saved into the
//! attempt's artifacts (`machines/<name>/`, see `machine/vm/kept.rs`); a later failed
//! attempt of the same test replaces the earlier one's. `vmcheck sit DIR`: those machines
//! come back on this host (or another with the same images, qemu and accelerator), running
//! exactly where the test failed, with their private network if they had one.

use super::artifacts::AttemptDir;
use super::attempt::{AttemptContext, AttemptRequest, Log, Named};
use super::net::Network;
use crate::image::ImageStore;
use crate::machine::Machine;
use crate::machine::host::Host;
use crate::machine::vm::kept::{self, KeepAs, KeptInfo, Revive};
use crate::machine::vm::{MachineSpec, VirtualMachine};
use crate::signal::Cancel;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directory of an attempt's kept machines.
pub const MACHINES: &str = "machines";

/// Keep the machines of a failed attempt (each a note in its output), and drop the kept
/// machines of the test's earlier attempts.
pub(super) async fn keep(
    ctx: &AttemptContext,
    req: &AttemptRequest,
    machines: &mut [Named],
    dir: &AttemptDir,
    log: &Log,
) {
    let test = req.test.name();
    let into = dir.path.join(MACHINES);
    for m in machines.iter_mut() {
        let Machine::Virtual(vm) = &mut m.machine else {
            log.note(&format!(
                "vmcheck: {} is an existing host: it cannot be kept",
                m.name
            ));
            continue;
        };
        let who = KeepAs {
            name: &m.name,
            test: &test,
            private_ip: m.ip.as_deref(),
        };
        match vm.keep(&into.join(&m.name), who).await {
            Ok(info) => log.note(&format!(
                "vmcheck: kept {} as it failed ({} in {:.1}s): vmcheck sit {}",
                m.name,
                super::output::size(info.bytes),
                info.seconds,
                dir.path.display()
            )),
            Err(e) => log.note(&format!("vmcheck: could not keep {}: {e}", m.name)),
        }
    }
    for earlier in 1..req.attempt {
        let old = AttemptDir::path_of(&ctx.artifacts_dir, &test, earlier).join(MACHINES);
        let _ = std::fs::remove_dir_all(old);
    }
}

/// Kept machines brought back, and their private network.
pub struct Revived {
    /// In their test's order (machine1 first).
    pub machines: Vec<(KeptInfo, Named)>,
    _net: Option<Network>,
}

impl Revived {
    /// Stop the machines and remove their files (the kept ones stay as they are).
    pub async fn kill(self) {
        kill_all(self.machines).await;
    }
}

/// The kept machines of `dir`: an attempt's artifacts, its `machines` directory, or a
/// test's artifacts (its latest attempt that kept any).
pub fn find(dir: &Path) -> Result<Vec<(PathBuf, KeptInfo)>, String> {
    let candidates: Vec<PathBuf> = {
        let mut attempts: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .filter_map(|e| {
                let e = e.ok()?;
                let n = e
                    .file_name()
                    .to_str()?
                    .strip_prefix("attempt-")?
                    .parse()
                    .ok()?;
                Some((n, e.path().join(MACHINES)))
            })
            .collect();
        attempts.sort();
        let mut c = vec![dir.to_path_buf(), dir.join(MACHINES)];
        c.extend(attempts.into_iter().rev().map(|(_, p)| p));
        c
    };
    for machines in candidates {
        let Ok(entries) = std::fs::read_dir(&machines) else {
            continue;
        };
        let mut found: Vec<(PathBuf, KeptInfo)> = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.join(kept::INFO).is_file() {
                found.push((path.clone(), kept::read_info(&path)?));
            }
        }
        if !found.is_empty() {
            found.sort_by(|a, b| a.1.name.cmp(&b.1.name));
            return Ok(found);
        }
    }
    Err(format!(
        "{}: no kept machines here (run the tests with --keep-failed-machines; a failed \
         attempt keeps its machines in <artifacts>/<test>/attempt-N/{MACHINES})",
        dir.display()
    ))
}

/// Bring back the kept machines `found` (from [`find`]), with the images of `store`.
pub async fn revive(
    store: &ImageStore,
    found: Vec<(PathBuf, KeptInfo)>,
    boot_timeout: Duration,
    cancel: &Cancel,
) -> Result<Revived, String> {
    let mut images = Vec::new();
    for (path, info) in &found {
        let dir = store.image_dir(&info.image, &info.image_sha256);
        let image = store.open(&dir).map_err(|_| {
            format!(
                "{}: needs the image {} {} (by hash), which this host does not have in {}: \
                 build it from the same recipe (vmcheck image build {})",
                path.display(),
                info.image,
                &info.image_sha256[..info.image_sha256.len().min(12)],
                store.dir.display(),
                info.image
            )
        })?;
        images.push(image);
    }
    let host = Host::detect(&images[0].kernel(), &store.dir.join(".cache"))
        .await
        .map_err(|e| e.to_string())?;
    for (path, info) in &found {
        if info.accel != host.accel.as_str() || info.qemu_version != host.qemu_version {
            return Err(format!(
                "{}: kept under {} with {:?}; this host runs {} with {:?} (a saved machine \
                 loads only into the same qemu and accelerator)",
                path.display(),
                info.accel,
                info.qemu_version,
                host.accel.as_str(),
                host.qemu_version
            ));
        }
    }
    let net = if found.iter().any(|(_, i)| i.private_mac.is_some()) {
        let names: Vec<String> = found.iter().map(|(_, i)| i.name.clone()).collect();
        Some(Network::create(&names, 0).map_err(|e| format!("its private network: {e}"))?)
    } else {
        None
    };
    let mut machines = Vec::new();
    for (i, ((path, info), image)) in found.into_iter().zip(images).enumerate() {
        let disk = path.join(kept::DISK);
        let spec = MachineSpec {
            label: format!("kept-{}", info.name),
            image,
            memory_mib: Some(info.memory_mib),
            cpus: info.cpus,
            private_net: match (&net, &info.private_mac) {
                (Some(net), Some(mac)) => Some(net.nic(i, mac.clone())),
                _ => None,
            },
            isolated: info.isolated,
            cold_boot: false,
            layer: None,
            forward: info.forward.clone(),
            revive: Some(Revive {
                state: path.join(kept::STATE),
                disk: disk.is_file().then_some(disk),
            }),
        };
        let started = VirtualMachine::start(&host, spec).await;
        let mut vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                kill_all(machines).await;
                return Err(format!("{}: {e}", path.display()));
            }
        };
        if let Err(e) = vm.wait_boot(boot_timeout, cancel).await {
            vm.kill().await;
            kill_all(machines).await;
            return Err(format!("{}: {e}", path.display()));
        }
        let named = Named {
            name: info.name.clone(),
            machine: Machine::Virtual(Box::new(vm)),
            ip: info.private_ip.clone(),
        };
        machines.push((info, named));
    }
    Ok(Revived {
        machines,
        _net: net,
    })
}

async fn kill_all(machines: Vec<(KeptInfo, Named)>) {
    for (_, m) in machines {
        m.machine.kill().await;
    }
}
