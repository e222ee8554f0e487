//! A minimal client of QEMU's machine protocol (QMP) on a Unix socket: enough to pause a
//! guest, switch its disk to a new overlay, migrate its state to a file, and resume it
//! (`snapshot.rs` and `vm.rs` use it to save and restore booted machines).
//!
//! QMP is JSON, one message per line: a greeting, then for each command one reply
//! (`return` or `error`), with asynchronous `event`s in between, which are skipped.

use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// A QMP connection in command mode.
pub struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connect to the socket qemu listens on (`-qmp unix:PATH,server=on,wait=off`), retrying
    /// until `deadline` while qemu is starting, and enter command mode.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Qmp, String> {
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("connecting to QMP at {}: {e}", path.display()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            lines: BufReader::new(read).lines(),
            writer,
        };
        let greeting = qmp.message(deadline).await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("unexpected QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}), deadline).await?;
        Ok(qmp)
    }

    async fn message(&mut self, deadline: Instant) -> Result<Value, String> {
        let line = tokio::time::timeout_at(deadline.into(), self.lines.next_line())
            .await
            .map_err(|_| "QMP did not answer in time".to_string())?
            .map_err(|e| format!("reading QMP: {e}"))?
            .ok_or_else(|| "qemu closed its QMP socket".to_string())?;
        serde_json::from_str(&line).map_err(|e| format!("QMP sent bad JSON ({e}): {line}"))
    }

    /// Run one command; its `return` value, or QMP's error description.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Value,
        deadline: Instant,
    ) -> Result<Value, String> {
        let mut text = json!({ "execute": command, "arguments": arguments }).to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("writing to QMP: {e}"))?;
        loop {
            let m = self.message(deadline).await?;
            if let Some(r) = m.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = m.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("error");
                return Err(format!("{command}: {desc}"));
            }
            // An event: not the reply.
        }
    }

    /// The guest's run state (`running`, `paused`, `inmigrate`, `postmigrate`, ...).
    pub async fn status(&mut self, deadline: Instant) -> Result<String, String> {
        let r = self.execute("query-status", json!({}), deadline).await?;
        Ok(r.get("status")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string())
    }

    /// Poll `query-migrate` until the outgoing migration completed.
    pub async fn wait_migrated(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let r = self.execute("query-migrate", json!({}), deadline).await?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = r.get("error-desc").and_then(Value::as_str).unwrap_or("");
                    return Err(format!("the migration {s}: {why}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Poll until an incoming migration is loaded (the state is no longer `inmigrate`).
    pub async fn wait_incoming(&mut self, deadline: Instant) -> Result<String, String> {
        loop {
            let s = self.status(deadline).await?;
            if s != "inmigrate" {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A fake qemu that greets, answers each command from `replies` in turn and sends an
    /// event before every reply.
    async fn fake(
        replies: Vec<&'static str>,
    ) -> (tempfile::TempDir, tokio::task::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("qmp.sock")).unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"{\"QMP\": {\"version\": {}}}\n")
                .await
                .unwrap();
            let mut seen = String::new();
            for r in replies {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                s.write_all(b"{\"event\": \"RESUME\"}\n").await.unwrap();
                s.write_all(r.as_bytes()).await.unwrap();
                s.write_all(b"\n").await.unwrap();
            }
            seen
        });
        (dir, task)
    }

    #[tokio::test]
    async fn commands_skip_events_and_report_errors() {
        let (dir, task) = fake(vec![
            r#"{"return": {}}"#,
            r#"{"return": {"status": "inmigrate", "running": false}}"#,
            r#"{"return": {"status": "paused", "running": false}}"#,
            r#"{"error": {"class": "GenericError", "desc": "no such device"}}"#,
        ])
        .await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut q = Qmp::connect(&dir.path().join("qmp.sock"), deadline)
            .await
            .unwrap();
        assert_eq!(q.wait_incoming(deadline).await.unwrap(), "paused");
        let e = q.execute("cont", json!({}), deadline).await.unwrap_err();
        assert_eq!(e, "cont: no such device");
        let seen = task.await.unwrap();
        assert!(
            seen.starts_with(r#"{"execute":"qmp_capabilities""#),
            "{seen}"
        );
        assert_eq!(seen.matches("query-status").count(), 2);
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let e = Qmp::connect(
            &dir.path().join("none.sock"),
            Instant::now() + Duration::from_millis(50),
        )
        .await
        .err()
        .unwrap();
        assert!(e.starts_with("connecting to QMP at "), "{e}");
    }
}
