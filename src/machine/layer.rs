//! A layer: what is installed into a machine right after it boots (an autopkgtest's
//! dependencies), saved with the booted snapshot its first machine makes, so that later
//! machines are restored with it in place. A layer is named by a key (its content's hash),
//! which is part of the snapshot's key and name (`debian-12+deps-<key>-…`): each distinct
//! layer is installed once per image, memory size and CPU count.

use super::error::MachineError;
use super::shell::{Exec, Shell};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Host files copied into the machine, then a script run as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// A short name of the content, e.g. `deps-0123456789abcdef` (letters, digits, `-`).
    pub key: String,
    /// `(host file, absolute guest path)`, copied first (parent directories created).
    pub files: Vec<(PathBuf, String)>,
    /// Then run with `sh -e` as root; a failure fails the machine with its output.
    pub script: String,
    /// The longest the files and the script may take together.
    pub timeout: Duration,
}

impl Layer {
    /// Install the layer through `shell` (a machine that just booted).
    pub async fn apply(&self, shell: &Shell, label: &str) -> Result<(), MachineError> {
        let deadline = Instant::now() + self.timeout;
        let failed = |message: String| MachineError::Failed {
            label: label.to_owned(),
            message: format!("installing layer {}: {message}", self.key),
        };
        let dirs: Vec<String> = self
            .files
            .iter()
            .filter_map(|(_, remote)| remote.rsplit_once('/').map(|(d, _)| d.to_owned()))
            .filter(|d| !d.is_empty())
            .collect();
        if !dirs.is_empty() {
            let quoted: Vec<String> = dirs.iter().map(|d| crate::shell::quote(d)).collect();
            let done = shell
                .execute(&format!("mkdir -p {}", quoted.join(" ")), self.timeout)
                .await?;
            if !done.status.success() {
                return Err(failed(format!("mkdir failed ({})", done.status)));
            }
        }
        for (local, remote) in &self.files {
            shell.upload(local, remote).await?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let done = shell
            .run(Exec::new(&format!("set -e\n{}", self.script), left))
            .await?;
        if !done.status.success() {
            let mut output = String::from_utf8_lossy(&done.output.stdout).into_owned();
            output.push_str(&String::from_utf8_lossy(&done.output.stderr));
            let tail: Vec<&str> = output.lines().rev().take(10).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(failed(format!(
                "the script failed ({}): {}",
                done.status,
                crate::reporter::text::one_line(&tail.join(" | "))
            )));
        }
        Ok(())
    }
}
