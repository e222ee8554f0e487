//! The artifact directory of one test attempt: `<artifacts>/<Class.method>/attempt-<n>/`.
//!
//! For an attempt that did not pass (or with `--keep-artifacts`) it holds:
//! - `output.txt`: everything the attempt printed (written as it arrives, see `output.rs`);
//! - `<machine>/console.log`: the serial console of each machine vmcheck booted, since the
//!   attempt started (from boot for a fresh machine);
//! - `<machine>/journal.txt`: the guest's kernel log and journal since the attempt started;
//! - `<machine>/files/…`: the guest paths the test lists in `artifacts`, as plain files and
//!   directories; `<machine>/files.txt` lists what was not copied (symlinks with their
//!   targets, hard links, devices, names that would leave the directory);
//! - `unexpected-journal-messages.txt`: the always-bad log lines that failed the test.
//!
//! A passing attempt's directory is removed (nothing is collected for it), so what is left
//! after a run is exactly the evidence of what went wrong.
//!
//! Everything here is private to the user running vmcheck whatever the umask (directories
//! 0700, files 0600), and nothing the guest sends can choose a mode, an owner, a link or a
//! place outside `files/`: the guest's tar stream is read here, entry by entry, never
//! unpacked by `tar -x`.

use crate::machine::Machine;
use crate::machine::shell::Exec;
use crate::machine::ssh::Stream;
use crate::shell::quote;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where one attempt's artifacts go.
#[derive(Debug, Clone)]
pub struct AttemptDir {
    pub path: PathBuf,
}

impl AttemptDir {
    /// `<root>/<test>/attempt-<n>`, emptied of what an earlier run left there.
    pub fn fresh(root: &Path, test: &str, attempt: u32) -> AttemptDir {
        let path = AttemptDir::path_of(root, test, attempt);
        let _ = std::fs::remove_dir_all(&path);
        AttemptDir { path }
    }

    /// Where the artifacts of attempt `attempt` of `test` go under `root`.
    pub fn path_of(root: &Path, test: &str, attempt: u32) -> PathBuf {
        root.join(test).join(format!("attempt-{attempt}"))
    }

    /// Write `name` (relative to the attempt directory), creating directories. Errors are
    /// returned with the file's path.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let file = self.path.join(name);
        create_private(&file)
            .and_then(|mut f| f.write_all(data))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    /// Remove the attempt's directory, and the test's when it is left empty.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
        if let Some(test_dir) = self.path.parent() {
            let _ = std::fs::remove_dir(test_dir);
        }
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// Copy `machine`'s console log from byte `from` on into `<name>/console.log`.
    pub fn save_console(&self, name: &str, machine: &Machine, from: u64) -> Result<(), String> {
        let Some(log) = machine.console_log() else {
            return Ok(());
        };
        let data = read_from(&log, from)
            .map_err(|e| format!("cannot read console log {}: {e}", log.display()))?;
        self.write(&format!("{name}/console.log"), &data)
    }

    /// Copy `paths` (absolute guest paths) from `machine` into `<name>/files/`, listing what
    /// was not copied in `<name>/files.txt`. The guest's tar stream goes to a private
    /// scratch file (not memory), which is then read entry by entry.
    pub async fn collect_files(
        &self,
        name: &str,
        machine: &Machine,
        paths: &[String],
    ) -> Result<(), String> {
        let dest = self.path.join(name).join("files");
        create_private_dir(&dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let scratch = self.path.join(name).join(".files.tar");
        let mut file = create_private(&scratch)
            .map_err(|e| format!("cannot write {}: {e}", scratch.display()))?;
        let rel: Vec<String> = paths
            .iter()
            .map(|p| quote(p.trim_start_matches('/')))
            .collect();
        let cmd = format!("tar -C / -cf - {} 2>/dev/null; true", rel.join(" "));
        let mut written: std::io::Result<()> = Ok(());
        let mut sink = |stream: Stream, data: &[u8]| {
            if stream == Stream::Stdout && written.is_ok() {
                written = file.write_all(data);
            }
        };
        let done = machine
            .shell()
            .run(Exec {
                sink: Some(&mut sink),
                agent: true,
                ..Exec::new(&cmd, Duration::from_secs(120))
            })
            .await;
        let result = match (done, written) {
            (Err(e), _) => Err(format!("collecting artifacts of {name}: {e}")),
            (_, Err(e)) => Err(format!("cannot write {}: {e}", scratch.display())),
            (Ok(_), Ok(())) => std::fs::File::open(&scratch)
                .and_then(|f| unpack(f, &dest))
                .map_err(|e| format!("unpacking artifacts of {name}: {e}"))
                .and_then(|skipped| {
                    if skipped.is_empty() {
                        Ok(())
                    } else {
                        self.write(
                            &format!("{name}/files.txt"),
                            (skipped.join("\n") + "\n").as_bytes(),
                        )
                    }
                }),
        };
        let _ = std::fs::remove_file(&scratch);
        result
    }
}

/// Create `file` for writing (truncated), mode 0600, and its missing parent directories,
/// mode 0700.
pub fn create_private(file: &Path) -> std::io::Result<std::fs::File> {
    if let Some(parent) = file.parent() {
        create_private_dir(parent)?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
}

/// Create `dir` and its missing parents, mode 0700.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Unpack the tar stream `archive` into `dest` as plain data: regular files (0600) and
/// directories (0700) only, at sanitized paths inside `dest`. Returns a line for each entry
/// that was not unpacked (symlinks and hard links with their targets, other special files,
/// names that would leave `dest` or cannot be created).
pub fn unpack(archive: impl std::io::Read, dest: &Path) -> std::io::Result<Vec<String>> {
    let mut skipped = Vec::new();
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path_bytes().into_owned();
        let shown = escape(&raw);
        let Some(rel) = safe_path(&raw) else {
            skipped.push(format!("skipped {shown}: not a path inside the directory"));
            continue;
        };
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        let made = if kind.is_dir() {
            create_private_dir(&target)
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            target
                .parent()
                .map_or(Ok(()), create_private_dir)
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&target)
                })
                .and_then(|mut f| std::io::copy(&mut entry, &mut f).map(|_| ()))
        } else {
            let link = entry.link_name_bytes().map(|l| escape(&l));
            skipped.push(match (kind, link) {
                (tar::EntryType::Symlink, Some(l)) => format!("symlink {shown} -> {l}"),
                (tar::EntryType::Link, Some(l)) => format!("hard link {shown} -> {l}"),
                (k, _) => format!("skipped {shown}: a {k:?} entry"),
            });
            continue;
        };
        if let Err(e) = made {
            skipped.push(format!("skipped {shown}: {e}"));
        }
    }
    Ok(skipped)
}

/// `raw` as a relative path of normal components (`.` and empty ones dropped, a leading `/`
/// ignored), or `None` if it has `..` or nothing is left.
fn safe_path(raw: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = PathBuf::new();
    for c in Path::new(std::ffi::OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// A guest-chosen name made safe to print on one line.
fn escape(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).escape_debug().to_string()
}

/// The size of a machine's console log now: where this attempt's part of it starts.
pub fn console_offset(machine: &Machine) -> u64 {
    machine
        .console_log()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

fn read_from(path: &Path, from: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_clears_stale_files_and_remove_cleans_up() {
        let root = tempfile::tempdir().unwrap();
        let stale = root.path().join("T.t/attempt-1/old.txt");
        std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
        std::fs::write(&stale, "x").unwrap();
        let dir = AttemptDir::fresh(root.path(), "T.t", 1);
        assert!(!stale.exists(), "a stale file of an earlier run is removed");
        dir.write("m/journal.txt", b"log").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path.join("m/journal.txt")).unwrap(),
            "log"
        );
        dir.remove();
        assert!(!root.path().join("T.t").exists(), "empty test dir removed");
    }

    #[test]
    fn remove_keeps_other_attempts() {
        let root = tempfile::tempdir().unwrap();
        let one = AttemptDir::fresh(root.path(), "T.t", 1);
        one.write("output.txt", b"failed").unwrap();
        let two = AttemptDir::fresh(root.path(), "T.t", 2);
        two.write("output.txt", b"passed").unwrap();
        two.remove();
        assert!(one.path.join("output.txt").exists());
        assert!(!two.path.exists());
    }

    /// A tar header with a raw name (the tar crate's builder refuses `..`).
    fn entry(
        out: &mut Vec<u8>,
        name: &[u8],
        kind: tar::EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    /// A hostile guest's tar stream: what lands on the host is plain private data inside
    /// the directory, and the rest is listed.
    #[test]
    fn unpack_keeps_hostile_entries_harmless() {
        use std::os::unix::fs::PermissionsExt;
        use tar::EntryType as T;
        let mut t = Vec::new();
        entry(&mut t, b"var/log/app/", T::Directory, 0o777, b"", b"");
        entry(
            &mut t,
            b"var/log/app/suid",
            T::Regular,
            0o4755,
            b"",
            b"#!/bin/sh\n",
        );
        entry(
            &mut t,
            b"var/log/app/shadow",
            T::Symlink,
            0o777,
            b"/etc/shadow",
            b"",
        );
        entry(
            &mut t,
            b"var/log/app/up",
            T::Symlink,
            0o777,
            b"../../..",
            b"",
        );
        entry(
            &mut t,
            b"var/log/app/up/escaped",
            T::Regular,
            0o644,
            b"",
            b"x",
        );
        entry(
            &mut t,
            b"var/log/app/../../../../escape",
            T::Regular,
            0o644,
            b"",
            b"x",
        );
        entry(&mut t, b"/abs/file", T::Regular, 0o644, b"", b"abs");
        entry(
            &mut t,
            b"var/log/app/new\nline",
            T::Regular,
            0o666,
            b"",
            b"nl",
        );
        entry(
            &mut t,
            b"var/log/app/hard",
            T::Link,
            0o644,
            b"etc/shadow",
            b"",
        );
        entry(&mut t, b"var/log/app/fifo", T::Fifo, 0o666, b"", b"");
        entry(
            &mut t,
            b"var/log/app/suid",
            T::Regular,
            0o4755,
            b"",
            b"again",
        );
        let long = "n".repeat(300);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("var/{long}"), &b"long"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(
            &mut h,
            format!("var/{}/deep", "d".repeat(200)),
            &b"deep"[..],
        )
        .unwrap();
        t.extend_from_slice(&b.into_inner().unwrap());
        t.extend_from_slice(&[0; 1024]);

        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("files");
        create_private_dir(&dest).unwrap();
        let skipped = unpack(&t[..], &dest).unwrap();
        let text = skipped.join("\n");
        let mode = |p: &str| {
            std::fs::symlink_metadata(dest.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("var/log/app"), 0o700);
        assert_eq!(mode("var/log/app/suid"), 0o600);
        assert_eq!(
            std::fs::read(dest.join("var/log/app/suid")).unwrap(),
            b"#!/bin/sh\n",
            "the first copy is kept"
        );
        assert_eq!(mode("var/log/app/new\nline"), 0o600);
        assert_eq!(mode("abs/file"), 0o600);
        assert_eq!(
            mode("var/log/app/up/escaped"),
            0o600,
            "a plain directory, not a link"
        );
        assert_eq!(
            std::fs::read(dest.join(format!("var/{}/deep", "d".repeat(200)))).unwrap(),
            b"deep"
        );
        assert!(
            text.contains("symlink var/log/app/shadow -> /etc/shadow"),
            "{text}"
        );
        assert!(
            text.contains("hard link var/log/app/hard -> etc/shadow"),
            "{text}"
        );
        assert!(
            text.contains("skipped var/log/app/../../../../escape: not a path inside"),
            "{text}"
        );
        assert!(
            text.contains("skipped var/log/app/fifo: a Fifo entry"),
            "{text}"
        );
        assert!(text.contains(&format!("skipped var/{long}: ")), "{text}");
        assert!(text.contains("var/log/app/suid: File exists"), "{text}");
        assert!(
            !text.contains('\n'.to_string().as_str()) || skipped.iter().all(|l| !l.contains('\n'))
        );
        let mut found = Vec::new();
        let mut stack = vec![root.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                assert!(
                    m.is_dir() || m.is_file(),
                    "only plain files and directories: {:?}",
                    e.path()
                );
                assert_eq!(
                    m.permissions().mode() & 0o7077,
                    0,
                    "private: {:?}",
                    e.path()
                );
                if m.is_dir() {
                    stack.push(e.path());
                }
                found.push(e.path());
            }
        }
        assert!(!root.path().join("escape").exists());
        assert!(found.len() >= 8, "{found:?}");
    }

    #[test]
    fn write_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = AttemptDir::fresh(root.path(), "T.t", 1);
        dir.write("m/journal.txt", b"log").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path.join("m/journal.txt")), 0o600);
        assert_eq!(mode(&dir.path.join("m")), 0o700);
        assert_eq!(mode(&dir.path), 0o700);
    }

    #[test]
    fn read_from_offset() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("console.log");
        std::fs::write(&f, "boot\ntest\n").unwrap();
        assert_eq!(read_from(&f, 5).unwrap(), b"test\n");
    }
}
