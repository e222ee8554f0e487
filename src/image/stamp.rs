//! Verification stamps: a record that some files were hashed and matched what was recorded
//! for them, trusted by later processes while the files are unchanged, so that each process
//! need not hash them again (a debian-12 image is 0.9 GB: 0.5 s to several seconds of every
//! `vmcheck` process on a loaded host, before its first machine could start).
//!
//! "Unchanged" is the files' device, inode, size, modification time and status-change time,
//! as git's index judges a work tree. Writing to a file, renaming another over it or changing
//! its mode changes its ctime, which no user can set back, so a corrupted or replaced file is
//! hashed again. What a stamp does not see is a change below the file system (bit rot on the
//! disk): that is found when the file is next hashed, after any other change.
//!
//! Stamps are small private files (mode 0600, written whole and renamed into place); one that
//! cannot be written leaves the files to be hashed each time, as before.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The files' identity as they are now, and the latest of their status-change times;
/// `None` if one cannot be looked at.
fn fingerprint(files: &[&Path]) -> Option<(String, (i64, i64))> {
    let mut text = String::new();
    let mut changed = (i64::MIN, 0);
    for f in files {
        let m = std::fs::metadata(f).ok()?;
        changed = changed.max((m.ctime(), m.ctime_nsec()));
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}.{}\t{}.{}\n",
            f.display(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ));
    }
    Some((text, changed))
}

/// Whether `stamp` says that `files`, as they are now, were verified. A file changed no
/// earlier than the stamp was written is not trusted (file times are coarse: a write right
/// after the hashing could leave every time as recorded; git calls this "racily clean").
pub fn fresh(stamp: &Path, files: &[&Path]) -> bool {
    let Ok(written) = std::fs::metadata(stamp).map(|m| (m.mtime(), m.mtime_nsec())) else {
        return false;
    };
    match (std::fs::read_to_string(stamp), fingerprint(files)) {
        (Ok(recorded), Some((now, changed))) => changed < written && recorded == now,
        _ => false,
    }
}

/// Record in `stamp` that `files`, as they are now, were verified (best effort).
pub fn record(stamp: &Path, files: &[&Path]) {
    let (Some((text, _)), Some(dir)) = (fingerprint(files), stamp.parent()) else {
        return;
    };
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".stamp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(dir)?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())?;
        tmp.persist(stamp).map_err(|e| e.error)?;
        Ok(())
    };
    let _ = write();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_stamp_holds_until_a_file_changes_in_any_way() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"one").unwrap();
        std::fs::write(&b, b"two").unwrap();
        let stamp = tmp.path().join(".verified");
        let files = [a.as_path(), b.as_path()];
        assert!(!fresh(&stamp, &files), "no stamp yet");
        // Written in the same tick of the file system's clock as the files: not trusted.
        record(&stamp, &files);
        let settle = || std::thread::sleep(std::time::Duration::from_millis(30));
        settle();
        record(&stamp, &files);
        assert!(fresh(&stamp, &files));
        assert_eq!(
            std::fs::metadata(&stamp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The same bytes written again: its times change, so it is hashed again.
        std::fs::write(&a, b"one").unwrap();
        assert!(!fresh(&stamp, &files), "rewritten");
        settle();
        record(&stamp, &files);
        assert!(fresh(&stamp, &files));
        // A mode change (ctime), however the modification time is set back.
        let mtime = std::fs::metadata(&b).unwrap().modified().unwrap();
        std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&b)
            .and_then(|f| f.set_modified(mtime))
            .ok();
        assert!(!fresh(&stamp, &files), "mode changed");
        settle();
        record(&stamp, &files);
        // Another file renamed over it, with the same size.
        let c = tmp.path().join("c");
        std::fs::write(&c, b"TWO").unwrap();
        std::fs::rename(&c, &b).unwrap();
        assert!(!fresh(&stamp, &files), "replaced");
        // Gone.
        settle();
        record(&stamp, &files);
        assert!(fresh(&stamp, &files));
        std::fs::remove_file(&a).unwrap();
        assert!(!fresh(&stamp, &files), "removed");
        // A stamp for other files says nothing of these.
        assert!(!fresh(&stamp, &[b.as_path()]));
    }

    #[test]
    fn a_change_in_the_tick_the_stamp_was_written_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::write(&a, b"one").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let stamp = tmp.path().join(".verified");
        record(&stamp, &[a.as_path()]);
        // At once: the same size, and quite possibly the same times as recorded.
        std::fs::write(&a, b"two").unwrap();
        assert!(!fresh(&stamp, &[a.as_path()]));
    }

    #[test]
    fn a_stamp_that_cannot_be_written_is_no_stamp() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::write(&a, b"one").unwrap();
        let stamp = tmp.path().join("missing-dir").join(".verified");
        record(&stamp, &[a.as_path()]);
        assert!(!fresh(&stamp, &[a.as_path()]));
    }
}
