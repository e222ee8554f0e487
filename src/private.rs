//! What vmcheck creates is private to its user, whatever the caller's umask: the binary
//! narrows the process umask to 077 at startup ([`restrict_umask`]), directories that guard
//! live machines (run directories and their parent, QMP sockets, snapshots) are created
//! 0700 explicitly and checked ([`create_dir`]), so library users are safe too; and code
//! that is the user's own (image recipes, host scripts) gets the caller's umask back
//! ([`give_caller_umask`]), so the files it makes are as the user would make them.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask vmcheck was started with (022 until [`restrict_umask`] ran).
static CALLER_UMASK: AtomicU32 = AtomicU32::new(0o022);

/// Set the process umask to 077, remembering the caller's for [`give_caller_umask`].
pub fn restrict_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    CALLER_UMASK.store(old.bits(), Ordering::Relaxed);
}

/// Run `cmd` with the umask vmcheck was started with (it runs the user's code).
pub fn give_caller_umask(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let mask = CALLER_UMASK.load(Ordering::Relaxed) as libc::mode_t;
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// Create `dir` (and missing parents) as a directory only its owner can use, or check that
/// the existing one is: a real directory (not a symlink), owned by this user, mode 0700
/// (tightened if it is ours and looser). Another user's directory at a predictable path
/// (`/tmp/vmcheck-0`) is an error, never used.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{}: {why}, refusing to use it", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("not a directory");
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return refuse("owned by another user");
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_0700_and_loose_ones_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        create_dir(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "tightened");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = create_dir(&link).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
