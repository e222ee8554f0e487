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
//!
//! A snapshot in use is never removed: a machine restored from one holds a shared `flock`
//! on its directory for its whole life (its overlay is backed by the snapshot's disk, and a
//! reboot opens that again), possibly in another vmcheck process sharing the store. Removal
//! (a corrupt or failed snapshot, a stale one replaced) takes the exclusive lock without
//! waiting; when it cannot, the snapshot is marked stale (`.<name>.stale`), is no longer
//! found, and the next remover that gets the lock deletes it.
//!
//! Integrity: publishing records the SHA-256 of `state.mig` and `disk.qcow2` in
//! `snapshot.toml`; the first use in a process checks them unless an earlier process did and
//! they are unchanged since (a stamp, see `image/stamp.rs`), and a snapshot that does not
//! match is discarded (one line on stderr) and the machine boots cold.
//!
//! Everything here is private to the user: the snapshots directory is 0700, snapshots are
//! read-only to their owner only.

use super::accel::Accel;
use super::qemu::QemuConfig;
use crate::image::Image;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bumped whenever what a snapshot holds or how it is restored changes.
pub const FORMAT: u32 = 3;

pub const STATE: &str = "state.mig";
pub const DISK: &str = "disk.qcow2";
/// Written last: a directory without it is not a snapshot.
pub const INFO: &str = "snapshot.toml";
/// The verification stamp: the files hashed by an earlier process, unchanged since.
const STAMP: &str = ".verified";
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
        layer: Option<&str>,
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
            // Forwards are the host's side of the NIC, like the SSH port: not saved.
            forwards: Vec::new(),
            // Whether the guest may reach out is the host's side of its NIC, not saved.
            isolated: false,
            // The second NIC is a device of the saved machine; its network (the sockets to
            // the switch) is the host's side and not saved, its address is set after a
            // restore.
            private_net: private_net.then(|| super::qemu::PrivateNet {
                socket: "S".into(),
                switch: "W".into(),
                mac: "52:54:01:00:00:00".into(),
            }),
            qmp: None,
            incoming: None,
            // Its port is a device of the saved machine, the FIFOs are the host's side.
            agent: Some("A".into()),
            kmsg: Some("K".into()),
        }
        .args();
        let mut h = Sha256::new();
        h.update(format!("vmcheck-snapshot {FORMAT}\n"));
        h.update(format!("{}-{}\n", image.name, image.sha256));
        h.update(format!("{qemu_version}\n"));
        // The agent a snapshot holds running: a new one makes new snapshots.
        h.update(format!("agent {}\n", super::agent::program_digest()));
        if let Some(layer) = layer {
            h.update(format!("layer {layer}\n"));
        }
        for a in layout {
            h.update(a.as_encoded_bytes());
            h.update(b"\0");
        }
        let key = hex::encode(h.finalize());
        let net = if private_net { "-net" } else { "" };
        // A layer's snapshots are apart: they neither replace nor are replaced by the image's.
        let layer = layer.map(|l| format!("+{l}")).unwrap_or_default();
        let prefix = format!("{}{layer}-{memory_mib}m{cpus}c{net}-", image.name);
        SnapshotKey {
            name: format!("{prefix}{}", &key[..KEY_DIGITS]),
            prefix,
            store: store_of(image.dir.parent().unwrap_or(Path::new("."))),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.store.join(&self.name)
    }

    /// The published snapshot, if there is one, taken for use (shared lock held while the
    /// returned [`Snapshot`] lives) and checked against its recorded hashes on first use in
    /// this process. Blocking (hashing); `Corrupt` says what did not match.
    pub fn find(&self) -> Found {
        let dir = self.dir();
        if !dir.join(INFO).is_file() {
            return Found::None;
        }
        if self.stale_marker().exists() {
            // Marked while in use: remove it if that use is over.
            remove_unused(&dir, &self.stale_marker());
            return Found::None;
        }
        let Some(lock) = lock_dir(&dir, FlockArg::LockSharedNonblock) else {
            return Found::None;
        };
        // It may have been removed or marked between the checks and the lock.
        if !dir.join(INFO).is_file() || self.stale_marker().exists() {
            return Found::None;
        }
        // Read once: what it records decides both its check and how it is restored.
        let recorded = std::fs::read_to_string(dir.join(INFO))
            .map_err(|e| format!("reading {INFO}: {e}"))
            .and_then(|info| {
                toml::from_str::<toml::Table>(&info)
                    .map_err(|e| format!("{INFO} is not valid: {e}"))
            });
        let snapshot = Snapshot {
            dir,
            stale_marker: self.stale_marker(),
            agent: recorded
                .as_ref()
                .ok()
                .and_then(|t| t.get("agent").and_then(toml::Value::as_bool))
                .unwrap_or(false),
            _in_use: lock,
        };
        match recorded.and_then(|t| snapshot.verify(&t)) {
            Ok(()) => Found::Some(snapshot),
            Err(why) => Found::Corrupt(snapshot, why),
        }
    }

    /// The file that marks this key's snapshot stale while it is still in use.
    fn stale_marker(&self) -> PathBuf {
        self.store.join(format!(".{}.stale", self.name))
    }

    /// Take the right to make this snapshot, without waiting: `None` if it exists meanwhile
    /// or another machine is making it (or the store cannot be written).
    pub fn try_make(&self) -> Option<Maker> {
        crate::private::create_dir(&self.store).ok()?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.store.join(format!(".{}.lock", self.name)))
            .ok()?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).ok()?;
        let dir = self.dir();
        if dir.exists() {
            // Published (then there is nothing to make), or stale and maybe still in use.
            if !self.stale_marker().exists() {
                return None;
            }
            remove_unused(&dir, &self.stale_marker());
            if dir.exists() {
                return None;
            }
        }
        // With the lock held, a temporary directory of this key is a dead maker's.
        let partial = format!(".{}.", self.name);
        for e in std::fs::read_dir(&self.store).ok()?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&partial)
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix(&partial)
            .permissions(std::fs::Permissions::from_mode(0o700))
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

/// What [`SnapshotKey::find`] found.
pub enum Found {
    None,
    Some(Snapshot),
    /// Published, but its files do not match the hashes recorded when it was made.
    Corrupt(Snapshot, String),
}

/// A published snapshot, in use while this value lives (a shared lock on its directory).
#[derive(Debug)]
pub struct Snapshot {
    pub dir: PathBuf,
    stale_marker: PathBuf,
    /// Whether the saved machine has the guest agent waiting on its port (`agent = true` in
    /// `snapshot.toml`, written when it answered just before the state was saved).
    pub agent: bool,
    _in_use: Flock<File>,
}

impl Snapshot {
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE)
    }
    pub fn disk(&self) -> PathBuf {
        self.dir.join(DISK)
    }

    /// Stop using a snapshot that could not be restored or is corrupt: it is removed, so
    /// the next machine makes it anew, unless other machines still use it; then it is
    /// marked stale (no longer found) and removed by a later remover.
    pub fn discard(self) {
        let Snapshot {
            dir,
            stale_marker,
            _in_use,
            ..
        } = self;
        drop(_in_use);
        remove_unused(&dir, &stale_marker);
    }

    /// Check the files against the hashes `recorded` in `snapshot.toml`, once per process and
    /// file.
    fn verify(&self, recorded: &toml::Table) -> Result<(), String> {
        // Files as they are now: a rewrite changes the modification time.
        type Seen = (PathBuf, Vec<(u64, i64, i64, u64)>);
        static VERIFIED: Mutex<Option<HashSet<Seen>>> = Mutex::new(None);
        let id: Seen = (
            self.dir.clone(),
            [STATE, DISK, INFO]
                .iter()
                .filter_map(|f| std::fs::metadata(self.dir.join(f)).ok())
                .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
                .collect(),
        );
        if VERIFIED
            .lock()
            .expect("poisoned")
            .get_or_insert_default()
            .contains(&id)
        {
            return Ok(());
        }
        // Hashed by an earlier process, and unchanged since (see `stamp.rs`)?
        let stamp = self.dir.join(STAMP);
        let files: Vec<PathBuf> = [STATE, DISK, INFO]
            .iter()
            .map(|f| self.dir.join(f))
            .filter(|p| p.exists())
            .collect();
        let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let stamped = crate::image::stamp::fresh(&stamp, &files);
        for (file, field) in HASHED.into_iter().filter(|_| !stamped) {
            let path = self.dir.join(file);
            let want = recorded.get(field).and_then(|v| v.as_str());
            let have = path
                .exists()
                .then(|| crate::image::hash::sha256_file(&path).map_err(|e| e.to_string()))
                .transpose()?;
            match (want, have) {
                (None, None) => {}
                (Some(w), Some(h)) if w == h => {}
                (None, Some(_)) => return Err(format!("{INFO} records no {field}")),
                (Some(_), None) => return Err(format!("{file} is missing")),
                (Some(_), Some(_)) => {
                    return Err(format!("{file} does not match its recorded SHA-256"));
                }
            }
        }
        if !stamped {
            crate::image::stamp::record(&stamp, &files);
        }
        VERIFIED
            .lock()
            .expect("poisoned")
            .get_or_insert_default()
            .insert(id);
        Ok(())
    }
}

/// The files of a snapshot whose hashes `snapshot.toml` records, and the fields.
const HASHED: [(&str, &str); 2] = [(STATE, "state_sha256"), (DISK, "disk_sha256")];

/// An exclusive or shared lock on the directory `dir`, without waiting.
fn lock_dir(dir: &Path, how: FlockArg) -> Option<Flock<File>> {
    Flock::lock(File::open(dir).ok()?, how).ok()
}

/// Remove the snapshot directory `dir` if no machine uses it; else mark it stale.
fn remove_unused(dir: &Path, stale_marker: &Path) {
    match lock_dir(dir, FlockArg::LockExclusiveNonblock) {
        Some(_unused) => {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(stale_marker);
        }
        None if dir.exists() => {
            let _ = std::fs::write(stale_marker, "");
        }
        None => {}
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
    /// Blocking: hashes the files.
    pub fn publish(self, info: &str) -> std::io::Result<PathBuf> {
        let mut info = info.to_string();
        for (f, field) in HASHED {
            let p = self.tmp.path().join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400))?;
                let sum = crate::image::hash::sha256_file(&p)?;
                info.push_str(&format!("{field} = \"{sum}\"\n"));
            }
        }
        std::fs::write(self.tmp.path().join(INFO), info)?;
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(0o700))?;
        let dir = self.key.dir();
        std::fs::rename(self.tmp.keep(), &dir)?;
        let _ = std::fs::remove_file(self.key.stale_marker());
        if let Ok(entries) = std::fs::read_dir(&self.key.store) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // `busybox-256m1c-<key>` is stale, `busybox-256m1c-net-<key>` another kind.
                let stale = name.strip_prefix(&self.key.prefix).is_some_and(|key| {
                    key.len() == KEY_DIGITS && key.bytes().all(|b| b.is_ascii_hexdigit())
                });
                if stale && name != self.key.name {
                    remove_unused(&e.path(), &self.key.store.join(format!(".{name}.stale")));
                }
            }
        }
        Ok(dir)
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
        let k =
            |img: &Image, m, c, accel, v| SnapshotKey::new(img, m, c, accel, v, false, None).name;
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
        let net = SnapshotKey::new(&a, 256, 1, Accel::Tcg, "QEMU 7.2", true, None).name;
        assert!(net.starts_with("busybox-256m1c-net-"), "{net}");
        assert_ne!(base, net);
        // A layer's snapshots have a prefix of their own: neither makes the other stale.
        let layered = |l| SnapshotKey::new(&a, 256, 1, Accel::Tcg, "QEMU 7.2", false, Some(l));
        let (one, two) = (layered("deps-1"), layered("deps-2"));
        assert!(
            one.name.starts_with("busybox+deps-1-256m1c-"),
            "{}",
            one.name
        );
        assert!(!one.name.starts_with(&layered("deps-2").prefix));
        assert!(!base.starts_with(&one.prefix) && !one.name.starts_with("busybox-256m1c-"));
        assert_ne!(one.name, two.name);
        assert_eq!(
            SnapshotKey::new(&a, 256, 1, Accel::Tcg, "v", false, None).store,
            Path::new("/store/snapshots")
        );
    }

    /// The key of a 256 MiB, 1-CPU busybox-like machine of image `aa` under qemu `version`.
    fn key_of(store: &Path, version: &str) -> SnapshotKey {
        SnapshotKey::new(
            &image(store, "aa"),
            256,
            1,
            Accel::Tcg,
            version,
            false,
            None,
        )
    }

    fn found(key: &SnapshotKey) -> Option<Snapshot> {
        match key.find() {
            Found::Some(s) => Some(s),
            Found::None => None,
            Found::Corrupt(_, why) => panic!("corrupt: {why}"),
        }
    }

    /// Make and publish `key`'s snapshot with a state of `state`.
    fn publish(key: &SnapshotKey, state: &str) -> PathBuf {
        let m = key.try_make().unwrap();
        std::fs::write(m.state(), state).unwrap();
        m.publish("x = 1\n").unwrap()
    }

    #[test]
    fn publishing_replaces_stale_snapshots_and_a_dropped_maker_leaves_nothing() {
        let store = tempfile::tempdir().unwrap();
        let key = |v| key_of(store.path(), v);
        let (old, new) = (key("1"), key("2"));
        let m = old.try_make().unwrap();
        assert!(old.try_make().is_none(), "one maker at a time");
        std::fs::write(m.state(), "s").unwrap();
        m.publish("x = 1\n").unwrap();
        assert!(found(&old).is_some());
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
        assert!(found(&new).is_none());
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

        let with_net = SnapshotKey::new(
            &image(store.path(), "aa"),
            256,
            1,
            Accel::Tcg,
            "2",
            true,
            None,
        );
        publish(&with_net, "s");
        let dir = publish(&new, "s");
        assert!(
            found(&with_net).is_some(),
            "not a stale one of the same kind"
        );
        found(&with_net).unwrap().discard();
        assert!(found(&new).is_some());
        assert!(found(&old).is_none(), "the stale snapshot is gone");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir.join(STATE)), 0o400, "read-only, private");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&new.store), 0o700);
        let listed = list(store.path());
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, new.name);
        let info = std::fs::read_to_string(dir.join(INFO)).unwrap();
        assert!(info.contains("state_sha256 = "), "{info}");
        assert_eq!(listed[0].2, 1 + info.len() as u64, "state and info");
        found(&new).unwrap().discard();
        assert!(found(&new).is_none());
        assert!(list(store.path()).is_empty());
    }

    #[test]
    fn snapshots_in_use_are_not_removed() {
        let store = tempfile::tempdir().unwrap();
        let key = |v| key_of(store.path(), v);
        let (old, new) = (key("1"), key("2"));
        let old_dir = publish(&old, "s");
        let user = found(&old).unwrap();
        let other = found(&old).unwrap();
        // A failed restore discards it while another machine uses it: kept, no longer found.
        other.discard();
        assert!(old_dir.join(STATE).exists(), "kept while in use");
        assert!(found(&old).is_none(), "marked stale");
        assert!(old.try_make().is_none(), "cannot be remade while in use");
        // Publishing a newer snapshot does not remove it either.
        publish(&new, "t");
        assert!(old_dir.join(STATE).exists(), "kept while in use");
        drop(user);
        // Unused now: the next look removes it, and it can be made again.
        assert!(found(&old).is_none());
        assert!(!old_dir.exists(), "removed once unused");
        assert!(!old.stale_marker().exists());
        publish(&old, "s");
        assert!(found(&old).is_some());
    }

    #[test]
    fn a_changed_byte_in_the_saved_state_is_detected() {
        let store = tempfile::tempdir().unwrap();
        let key = SnapshotKey::new(
            &image(store.path(), "aa"),
            256,
            1,
            Accel::Tcg,
            "1",
            false,
            None,
        );
        let dir = publish(&key, "saved state");
        let state = dir.join(STATE);
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&state, "saved stave").unwrap();
        match key.find() {
            Found::Corrupt(s, why) => {
                assert!(why.contains("state.mig does not match"), "{why}");
                s.discard();
            }
            _ => panic!("not detected"),
        }
        assert!(!dir.exists(), "discarded");
    }
}
