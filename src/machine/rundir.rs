//! Per-machine run directories (overlay, console log, sockets) under
//! `$TMPDIR/vmcheck-<uid>/`, and the sweep that removes those of dead processes.
//!
//! A directory's name starts with its owner's pid and start time (`<pid>.<start>-…`), so
//! the sweep can tell a live owner from a dead one (or a recycled pid) without any lock.
//! vmcheck removes a machine's directory when the machine is killed; the sweep catches the
//! rest (a vmcheck killed by SIGKILL), the next time any vmcheck starts a machine or a host
//! script. Processes started with [`OWNER_ENV`] naming a directory (host scripts and all
//! they start) are killed by the sweep that removes it.
//!
//! The parent and every run directory are 0700 and this user's (`private.rs`): they hold
//! the QMP socket, which drives qemu (and `migrate exec:` runs host commands).

use std::path::{Path, PathBuf};

/// The environment variable that ties a process (and its descendants) to a run directory:
/// when the directory's owner is dead, the sweep kills them.
pub const OWNER_ENV: &str = "VMCHECK_RUN_DIR";

/// The parent of all run directories of this user.
pub fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("vmcheck-{}", nix::unistd::getuid()))
}

/// Create a fresh run directory for a machine labelled `label`; removed when dropped.
pub fn create(label: &str) -> std::io::Result<tempfile::TempDir> {
    let base = base_dir();
    crate::private::create_dir(&base)?;
    sweep_once(&base);
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!("{}{label}-", owner_prefix()))
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
}

/// The name prefix that marks a directory as this process's: `<pid>.<start>-`.
pub fn owner_prefix() -> String {
    let me = std::process::id();
    format!("{me}.{}-", start_time(me).unwrap_or(0))
}

fn sweep_once(base: &Path) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| sweep(base));
}

/// Remove run directories whose owning process is gone, after killing the processes tied
/// to them (see [`OWNER_ENV`]).
pub fn sweep(base: &Path) {
    sweep_where(base, |_| true);
}

/// Remove the directories in `base` named with an [`owner_prefix`] whose owner is gone and
/// for which `ready` (called first, e.g. to unmount what is below) says yes, after killing
/// the processes tied to them.
pub fn sweep_where(base: &Path, ready: impl Fn(&Path) -> bool) {
    kill_orphans(base);
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_str().is_some_and(owner_is_gone) && ready(&entry.path()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the owner encoded in run directory name `name` is gone.
fn owner_is_gone(name: &str) -> bool {
    owner(name).is_some_and(|(pid, start)| start_time(pid) != Some(start))
}

/// SIGKILL every process tied to a run directory under `base` whose owner is gone, whether
/// the directory is still there or not (an older vmcheck may have removed it).
fn kill_orphans(base: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let prefix = [
        OWNER_ENV.as_bytes(),
        b"=",
        base.as_os_str().as_bytes(),
        b"/",
    ]
    .concat();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let orphan = environ
            .split(|&b| b == 0)
            .filter_map(|v| v.strip_prefix(prefix.as_slice()))
            .any(|name| std::str::from_utf8(name).is_ok_and(owner_is_gone));
        if orphan {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }
}

/// The owner (pid, start time) encoded in a run directory's name.
fn owner(name: &str) -> Option<(u32, u64)> {
    let (id, _) = name.split_once('-')?;
    let (pid, start) = id.split_once('.')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner() {
        assert_eq!(owner("123.456-busybox-1-abc"), Some((123, 456)));
        assert_eq!(owner("junk"), None);
    }

    #[test]
    fn sweep_removes_only_dead_owners() {
        let base = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let live = base
            .path()
            .join(format!("{me}.{}-a-x", start_time(me).unwrap()));
        let dead = base.path().join(format!("{me}.1-b-x"));
        let other = base.path().join("unrelated");
        for d in [&live, &dead, &other] {
            std::fs::create_dir(d).unwrap();
        }
        // A process tied to the dead owner's directory, and one tied to the live one's.
        let tied = |dir: &Path| {
            std::process::Command::new("sleep")
                .arg("1000")
                .env(OWNER_ENV, dir)
                .spawn()
                .unwrap()
        };
        let (mut orphan, mut kept) = (tied(&dead), tied(&live));
        // Its directory already removed (by an older vmcheck): still killed.
        let mut removed = tied(&base.path().join(format!("{me}.2-host-x")));
        sweep(base.path());
        assert!(live.exists());
        assert!(!dead.exists());
        assert!(other.exists());
        // Bounded waits (a miss fails in seconds, not when `sleep 1000` ends), and what the
        // sweep could read of the process when it missed it.
        let killed = |child: &mut std::process::Child| {
            use std::os::unix::process::ExitStatusExt;
            for _ in 0..600 {
                if let Some(status) = child.try_wait().unwrap() {
                    return status.signal();
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let environ = std::fs::read(format!("/proc/{}/environ", child.id()));
            child.kill().unwrap();
            child.wait().unwrap();
            panic!(
                "pid {} not killed; its environ: {:?}",
                child.id(),
                environ.map(|e| String::from_utf8_lossy(&e).into_owned())
            );
        };
        assert_eq!(killed(&mut orphan), Some(libc::SIGKILL));
        assert_eq!(killed(&mut removed), Some(libc::SIGKILL));
        assert!(
            kept.try_wait().unwrap().is_none(),
            "a live owner's process runs on"
        );
        kept.kill().unwrap();
        kept.wait().unwrap();
    }
}
