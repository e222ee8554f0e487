//! A machine's serial console: qemu writes it to its stdout; a task appends it to the
//! console log file (up to 64 MiB: a guest printing without end fills no disk) and counts
//! the lines vmcheck reacts to: the image's ready marker (sshd is up, so no network
//! polling), the kernel's "reboot: Restarting system" (the guest asked for a reboot) and
//! "Kernel panic" (it died; its first line is kept, to say why).

use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// What one qemu process printed on the console so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleState {
    /// Lines equal to the ready marker.
    pub ready: u32,
    /// Kernel messages of a requested restart (`reboot: Restarting system`).
    pub restarts: u32,
    /// Kernel panics.
    pub panics: u32,
    /// The first panic's line, from `Kernel panic` on (`Kernel panic - not syncing: …`).
    pub panic_line: Option<String>,
}

/// Most of a console kept in its log: a guest writing without end fills no disk (what comes
/// after is still read, and its markers counted).
const MAX_LOG: u64 = 64 << 20;

/// Append `source` to `log` until EOF (up to `MAX_LOG` bytes), counting ready markers
/// (lines equal to `marker`, ignoring carriage returns), restarts and panics. Returns the
/// receiver of the counts.
pub fn spawn_reader(
    source: impl AsyncRead + Unpin + Send + 'static,
    log: PathBuf,
    marker: &'static str,
) -> watch::Receiver<ConsoleState> {
    spawn_capped_reader(source, log, marker, MAX_LOG)
}

fn spawn_capped_reader(
    mut source: impl AsyncRead + Unpin + Send + 'static,
    log: PathBuf,
    marker: &'static str,
    cap: u64,
) -> watch::Receiver<ConsoleState> {
    let (tx, rx) = watch::channel(ConsoleState::default());
    tokio::spawn(async move {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log)
            .await
            .ok();
        let mut line: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut room = cap;
        loop {
            let n = match source.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(f) = file.as_mut() {
                let kept = n.min(usize::try_from(room).unwrap_or(usize::MAX));
                let _ = f.write_all(&buf[..kept]).await;
                room -= kept as u64;
                if kept < n {
                    let note = format!("\nvmcheck: the console log is cut here, at {cap} bytes\n");
                    let _ = f.write_all(note.as_bytes()).await;
                    let _ = f.flush().await;
                    file = None;
                }
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    let l = trim_cr(&line);
                    if l == marker.as_bytes() {
                        tx.send_modify(|c| c.ready += 1);
                    } else if contains(l, b"reboot: Restarting system") {
                        tx.send_modify(|c| c.restarts += 1);
                    } else if let Some(at) = find(l, b"Kernel panic - not syncing") {
                        let text = String::from_utf8_lossy(&l[at..]).trim_end().to_string();
                        tx.send_modify(|c| {
                            c.panics += 1;
                            c.panic_line.get_or_insert(text);
                        });
                    }
                    line.clear();
                } else if line.len() < 4096 {
                    line.push(b);
                }
            }
        }
        if let Some(mut f) = file {
            let _ = f.flush().await;
        }
    });
    rx
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_cr(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\r'] = l {
        l = rest;
    }
    l
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_console_without_end_is_cut_and_still_watched() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (mut w, r) = tokio::io::duplex(64);
        let mut rx = spawn_capped_reader(r, log.clone(), "READY", 1000);
        for _ in 0..100 {
            w.write_all(&[b'x'; 99]).await.unwrap();
            w.write_all(b"\n").await.unwrap();
        }
        w.write_all(b"READY\n").await.unwrap();
        drop(w);
        // The reader ends (its sender goes) once it has read everything and written its log.
        while rx.changed().await.is_ok() {}
        assert_eq!(rx.borrow().ready, 1);
        let kept = std::fs::read(&log).unwrap();
        let note = b"\nvmcheck: the console log is cut here, at 1000 bytes\n";
        assert_eq!(kept.len(), 1000 + note.len());
        assert!(kept.ends_with(note));
    }

    #[tokio::test]
    async fn counts_markers_across_chunks_and_logs_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let (mut w, r) = tokio::io::duplex(8);
        let mut rx = spawn_reader(r, log.clone(), "READY");
        w.write_all(b"boot\r\nREA").await.unwrap();
        w.write_all(b"DY\r\nnot READY\n[ 1.0] reboot: Restarting system\nREADY\n")
            .await
            .unwrap();
        w.write_all(b"[ 2.0] Kernel panic - not syncing: sysrq triggered crash\r\n")
            .await
            .unwrap();
        w.write_all(b"[ 2.1] Kernel panic - not syncing: again\n")
            .await
            .unwrap();
        drop(w);
        while rx.borrow().panics < 2 {
            rx.changed().await.unwrap();
        }
        // The reader may still be flushing the file after the last marker.
        for _ in 0..100 {
            if tail(&log, 10).ends_with("again") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            tail(&log, 5),
            "not READY\n[ 1.0] reboot: Restarting system\nREADY\n\
             [ 2.0] Kernel panic - not syncing: sysrq triggered crash\n\
             [ 2.1] Kernel panic - not syncing: again"
        );
        assert_eq!(
            *rx.borrow(),
            ConsoleState {
                ready: 2,
                restarts: 1,
                panics: 2,
                panic_line: Some("Kernel panic - not syncing: sysrq triggered crash".into()),
            }
        );
    }
}
