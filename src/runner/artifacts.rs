//! The artifact directory of one test attempt: `<artifacts>/<Class.method>/attempt-<n>/`.
//!
//! For an attempt that did not pass (or with `--keep-artifacts`) it holds:
//! - `output.txt`: everything the attempt printed;
//! - `<machine>/console.log`: the serial console of each machine vmcheck booted, since the
//!   attempt started (from boot for a fresh machine);
//! - `<machine>/journal.txt`: the guest's kernel log and journal since the attempt started;
//! - `<machine>/files/…`: the guest paths the test lists in `artifacts`;
//! - `unexpected-journal-messages.txt`: the always-bad log lines that failed the test.
//!
//! A passing attempt's directory is removed (nothing is collected for it), so what is left
//! after a run is exactly the evidence of what went wrong.

use crate::machine::Machine;
use crate::shell::quote;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where one attempt's artifacts go.
#[derive(Debug, Clone)]
pub struct AttemptDir {
    pub path: PathBuf,
}

impl AttemptDir {
    /// `<root>/<test>/attempt-<n>`, emptied of what an earlier run left there.
    pub fn fresh(root: &Path, test: &str, attempt: u32) -> AttemptDir {
        let path = root.join(test).join(format!("attempt-{attempt}"));
        let _ = std::fs::remove_dir_all(&path);
        AttemptDir { path }
    }

    /// Write `name` (relative to the attempt directory), creating directories. Errors are
    /// returned with the file's path.
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let file = self.path.join(name);
        file.parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| std::fs::write(&file, data))
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

    /// Copy `paths` (absolute guest paths) from `machine` into `<name>/files/`.
    pub async fn collect_files(
        &self,
        name: &str,
        machine: &Machine,
        paths: &[String],
    ) -> Result<(), String> {
        let dest = self.path.join(name).join("files");
        std::fs::create_dir_all(&dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let rel: Vec<String> = paths
            .iter()
            .map(|p| quote(p.trim_start_matches('/')))
            .collect();
        let cmd = format!("tar -C / -cf - {} 2>/dev/null; true", rel.join(" "));
        let done = machine
            .shell()
            .execute(&cmd, Duration::from_secs(120))
            .await
            .map_err(|e| format!("collecting artifacts of {name}: {e}"))?;
        untar(&done.output.stdout, &dest)
            .await
            .map_err(|e| format!("unpacking artifacts of {name}: {e}"))
    }
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

async fn untar(data: &[u8], dest: &Path) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if data.is_empty() {
        return Ok(());
    }
    let mut child = tokio::process::Command::new("tar")
        .arg("-xf")
        .arg("-")
        // Modes from vmcheck's umask (private), not the guest's.
        .arg("--no-same-permissions")
        .arg("-C")
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(data).await?;
    drop(stdin);
    child.wait().await?;
    Ok(())
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

    #[test]
    fn read_from_offset() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("console.log");
        std::fs::write(&f, "boot\ntest\n").unwrap();
        assert_eq!(read_from(&f, 5).unwrap(), b"test\n");
    }
}
