//! Booted-machine snapshots: the saved state of a guest that finished booting (its RAM and
//! devices, migrated to `state.mig`) and its disk at that moment (`disk.qcow2`, an overlay
//! of the image's disk, frozen), so that a machine can start already booted.
//!
//! Snapshots are content-addressed like images: the directory
//! `<images>/snapshots/<image>-<MiB>m<cpus>c[-net]-<key>` is named by a hash of everything the
//! saved state depends on (the snapshot format, the image's own hash, memory, CPUs, the
//! accelerator, the qemu version and the device part of its command line). Changing any of
//! them makes a new snapshot; the one it replaces is removed when the new one is published.
//! A snapshot is made by the first machine that needs it (see `vm.rs`), under a lock that
//! nobody waits for: a machine that finds the lock taken boots cold instead.

use super::accel::Accel;
use super::qemu::QemuConfig;
use crate::image::Image;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bumped whenever what a snapshot holds or how it is restored changes.
pub const FORMAT: u32 = 1;

pub const STATE: &str = "state.mig";
pub const DISK: &str = "disk.qcow2";
/// Written last: a directory without it is not a snapshot.
pub const INFO: &str = "snapshot.toml";
/// Hex digits of the key in a snapshot's name.
const KEY_DIGITS: usize = 16;

/// The snapshots' directory of the image store `images`.
fn store_of(images: &Path) -> PathBuf {
    images.join("snapshots")
}

/// What a snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotKey {
    /// `busybox-256m1c-<16 hex digits>`.
    pub name: String,
    /// The part before the hash: snapshots of other keys with this prefix are stale.
    pub prefix: String,
    pub store: PathBuf,
}

impl SnapshotKey {
    pub fn new(
        image: &Image,
        memory_mib: u32,
        cpus: u32,
        accel: Accel,
        qemu_version: &str,
        private_net: bool,
    ) -> SnapshotKey {
        // The command line of such a machine with the per-boot parts (port, paths) fixed:
        // a change in the devices vmcheck gives machines changes the key.
        let layout = QemuConfig {
            accel,
            memory_mib,
            cpus,
            kernel: "K".into(),
            initrd: "I".into(),
            cmdline: image.manifest.boot.cmdline.clone(),
            disk: image.disk().map(|_| PathBuf::from("D")),
            ssh_port: 1,
            // The second NIC is a device of the saved machine; its network (the multicast
            // port) is the host's side and not saved, its address is set after a restore.
            private_net: private_net.then(|| super::qemu::PrivateNet {
                mcast_port: 1,
                mac: "52:54:01:00:00:00".into(),
            }),
            qmp: None,
            incoming: None,
        }
        .args();
        let mut h = Sha256::new();
        h.update(format!("vmcheck-snapshot {FORMAT}\n"));
        h.update(format!("{}-{}\n", image.name, image.sha256));
        h.update(format!("{qemu_version}\n"));
        for a in layout {
            h.update(a.as_encoded_bytes());
            h.update(b"\0");
        }
        let key = hex::encode(h.finalize());
        let net = if private_net { "-net" } else { "" };
        let prefix = format!("{}-{memory_mib}m{cpus}c{net}-", image.name);
        SnapshotKey {
            name: format!("{prefix}{}", &key[..KEY_DIGITS]),
            prefix,
            store: store_of(image.dir.parent().unwrap_or(Path::new("."))),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.store.join(&self.name)
    }

    /// The published snapshot, if there is one.
    pub fn find(&self) -> Option<Snapshot> {
        let dir = self.dir();
        dir.join(INFO).is_file().then_some(Snapshot { dir })
    }

    /// Take the right to make this snapshot, without waiting: `None` if it exists meanwhile
    /// or another machine is making it (or the store cannot be written).
    pub fn try_make(&self) -> Option<Maker> {
        std::fs::create_dir_all(&self.store).ok()?;
        let lock = File::create(self.store.join(format!(".{}.lock", self.name))).ok()?;
        let lock =
            nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()?;
        if self.find().is_some() {
            return None;
        }
        // With the lock held, a temporary directory of this key is a dead maker's.
        let partial = format!(".{}.", self.name);
        for e in std::fs::read_dir(&self.store).ok()?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&partial) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(&partial)
            .tempdir_in(&self.store)
            .ok()?;
        Some(Maker {
            key: self.clone(),
            tmp,
            _lock: lock,
        })
    }
}

/// The published snapshots in the image store `store`: name, directory and bytes on disk.
pub fn list(store: &Path) -> Vec<(String, PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(store_of(store)) else {
        return Vec::new();
    };
    let mut found: Vec<(String, PathBuf, u64)> = entries
        .flatten()
        .filter(|e| e.path().join(INFO).is_file())
        .map(|e| {
            let bytes = [STATE, DISK, INFO]
                .iter()
                .filter_map(|f| std::fs::metadata(e.path().join(f)).ok())
                .map(|m| m.len())
                .sum();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
                bytes,
            )
        })
        .collect();
    found.sort();
    found
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub dir: PathBuf,
}

impl Snapshot {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }
    /// Remove a snapshot that could not be restored, so the next machine makes it anew.
    pub fn discard(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A snapshot being made: files go into a temporary directory that [`Maker::publish`]
/// renames into place; dropped unpublished, it leaves nothing.
pub struct Maker {
    key: SnapshotKey,
    tmp: tempfile::TempDir,
    _lock: nix::fcntl::Flock<File>,
}

impl Maker {
    pub fn state(&self) -> PathBuf {
        self.tmp.path().join(STATE)
    }
    pub fn disk(&self) -> PathBuf {
        self.tmp.path().join(DISK)
    }

    /// Make the snapshot visible (read-only), and remove stale ones of the same image and
    /// machine size.
    pub fn publish(self, info: &str) -> std::io::Result<Snapshot> {
        use std::os::unix::fs::PermissionsExt;
        for f in [STATE, DISK] {
            let p = self.tmp.path().join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444))?;
            }
        }
        std::fs::write(self.tmp.path().join(INFO), info)?;
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o755))?;
        let dir = self.key.dir();
        std::fs::rename(self.tmp.keep(), &dir)?;
        if let Ok(entries) = std::fs::read_dir(&self.key.store) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `busybox-256m1c-<key>` is stale, `busybox-256m1c-net-<key>` another kind.
                let stale = name.strip_prefix(&self.key.prefix).is_some_and(|key| {
                    key.len() == KEY_DIGITS && key.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if stale && name != self.key.name {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(Snapshot { dir })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(store: &Path, sha: &str) -> Image {
        let text = format!(
            "format = 1\nname = \"busybox\"\nrecipe_sha256 = \"{sha}\"\nbuilt_at = 1\n\
             host_key = \"k\"\n[boot]\ncmdline = \"\"\nmemory_mib = 256\nlog = \"kmsg\"\n[files]\n"
        );
        Image {
            name: "busybox".into(),
            sha256: sha.into(),
            dir: store.join(format!("busybox-{sha}")),
            manifest: toml::from_str(&text).unwrap(),
        }
    }

    #[test]
    fn keys_change_with_every_input() {
        let store = Path::new("/store");
        let a = image(store, "aa");
        let k = |img: &Image, m, c, accel, v| SnapshotKey::new(img, m, c, accel, v, false).name;
        let base = k(&a, 256, 1, Accel::Tcg, "QEMU 7.2");
        assert!(base.starts_with("busybox-256m1c-"), "{base}");
        assert_eq!(base, k(&a, 256, 1, Accel::Tcg, "QEMU 7.2"), "stable");
        for other in [
            k(&image(store, "bb"), 256, 1, Accel::Tcg, "QEMU 7.2"),
            k(&a, 512, 1, Accel::Tcg, "QEMU 7.2"),
            k(&a, 256, 2, Accel::Tcg, "QEMU 7.2"),
            k(&a, 256, 1, Accel::Kvm, "QEMU 7.2"),
            k(&a, 256, 1, Accel::Tcg, "QEMU 8.2"),
        ] {
            assert_ne!(base, other);
        }
        let net = SnapshotKey::new(&a, 256, 1, Accel::Tcg, "QEMU 7.2", true).name;
        assert!(net.starts_with("busybox-256m1c-net-"), "{net}");
        assert_ne!(base, net);
        assert_eq!(
            SnapshotKey::new(&a, 256, 1, Accel::Tcg, "v", false).store,
            Path::new("/store/snapshots")
        );
    }

    #[test]
    fn publishing_replaces_stale_snapshots_and_a_dropped_maker_leaves_nothing() {
        let store = tempfile::tempdir().unwrap();
        let key = |v| SnapshotKey::new(&image(store.path(), "aa"), 256, 1, Accel::Tcg, v, false);
        let (old, new) = (key("1"), key("2"));
        let m = old.try_make().unwrap();
        assert!(old.try_make().is_none(), "one maker at a time");
        std::fs::write(m.state(), "s").unwrap();
        m.publish("x").unwrap();
        assert!(old.find().is_some());
        assert!(old.try_make().is_none(), "already made");

        let m = new.try_make().unwrap();
        // A maker killed with SIGKILL leaves its directory; the next one removes it.
        let left = m.tmp.path().to_path_buf();
        std::mem::forget(m.tmp);
        drop(m._lock);
        assert!(left.exists());
        let m = new.try_make().unwrap();
        assert!(!left.exists(), "a dead maker's directory is removed");
        drop(m);
        assert!(new.find().is_none());
        let leftovers: Vec<_> = std::fs::read_dir(&new.store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(
            leftovers,
            std::slice::from_ref(&old.name),
            "no temporary directory left"
        );

        let with_net = SnapshotKey::new(&image(store.path(), "aa"), 256, 1, Accel::Tcg, "2", true);
        let m = with_net.try_make().unwrap();
        std::fs::write(m.state(), "s").unwrap();
        m.publish("x").unwrap();
        let m = new.try_make().unwrap();
        std::fs::write(m.state(), "s").unwrap();
        let s = m.publish("x").unwrap();
        assert!(
            with_net.find().is_some(),
            "not a stale one of the same kind"
        );
        with_net.find().unwrap().discard();
        assert!(new.find().is_some());
        assert!(old.find().is_none(), "the stale snapshot is gone");
        let mode = std::fs::metadata(s.state()).unwrap().permissions();
        assert!(mode.readonly());
        let listed = list(store.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, new.name);
        assert_eq!(listed[0].2, 2, "state and info, one byte each");
        s.discard();
        assert!(new.find().is_none());
        assert!(list(store.path()).is_empty());
    }
}
