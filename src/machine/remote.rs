//! An existing host reached over SSH (`--machine HOST[:PORT]`): vmcheck did not boot it,
//! cannot reset it, and only runs commands in it. The main type is [`RemoteMachine`].

use super::error::MachineError;
use super::shell::{CONNECT_LIMIT, Shell};
use super::ssh::{HostKeyCheck, SshSession, SshTarget};
use crate::shell::quote;
use crate::signal::Cancel;
use std::time::{Duration, Instant};

pub struct RemoteMachine {
    pub label: String,
    shell: Shell,
    boot_id: Option<String>,
}

/// Parse `HOST[:PORT]` (port 22 by default; `[v6addr]:port` for IPv6).
pub fn parse_address(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("invalid machine address '{s}': expected HOST or HOST:PORT");
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        match tail.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if tail.is_empty() => (h, None),
            None => return Err(bad()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ if s.contains(':') => return Err(bad()),
            _ => (s, None),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let port = match port {
        None => 22,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?,
    };
    Ok((host.to_string(), port))
}

impl RemoteMachine {
    /// Connect (retrying until `timeout`) and read the boot id.
    pub async fn connect(
        label: &str,
        target: SshTarget,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<RemoteMachine, MachineError> {
        let mut m = RemoteMachine {
            label: label.to_string(),
            shell: Shell::new(label, target),
            boot_id: None,
        };
        let id = m.wait_for_new_boot(None, timeout, cancel).await?;
        m.boot_id = Some(id);
        Ok(m)
    }

    pub fn shell(&self) -> &Shell {
        &self.shell
    }

    pub fn boot_id(&self) -> Option<&str> {
        self.boot_id.as_deref()
    }

    /// An `ssh` command line for this host, with the same key and host key policy.
    pub fn ssh_command(&self) -> String {
        let t = self.shell.target();
        let keys = match &t.host_key {
            HostKeyCheck::KnownHosts(f) => format!(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                quote(&f.to_string_lossy())
            ),
            HostKeyCheck::Insecure => {
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".to_string()
            }
            HostKeyCheck::Exact(_) => "-o StrictHostKeyChecking=yes".to_string(),
        };
        format!(
            "ssh -F none -i {} -p {} -o IdentitiesOnly=yes {keys} {}@{}",
            quote(&t.identity.to_string_lossy()),
            t.port,
            t.user,
            t.host
        )
    }

    /// Wait until the host answers with a boot id different from the last one seen.
    pub async fn wait_reboot(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        self.shell.disconnect().await;
        let old = self.boot_id.clone();
        let id = self
            .wait_for_new_boot(old.as_deref(), timeout, cancel)
            .await?;
        self.boot_id = Some(id.clone());
        Ok(id)
    }

    async fn wait_for_new_boot(
        &self,
        old: Option<&str>,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                let session = SshSession::connect(self.shell.target(), left.min(CONNECT_LIMIT))
                    .await
                    .map_err(|source| MachineError::Ssh {
                        label: self.label.clone(),
                        source,
                    })?;
                self.shell.adopt(session).await;
                let done = self
                    .shell
                    .execute(
                        "cat /proc/sys/kernel/random/boot_id",
                        left.max(Duration::from_secs(5)),
                    )
                    .await?;
                Ok::<_, MachineError>(done.stdout_text().trim().to_string())
            };
            let err = match attempt.await {
                Ok(id) if !id.is_empty() && Some(id.as_str()) != old => return Ok(id),
                Ok(_) => None,
                // Wrong key or host key: waiting will not help.
                Err(
                    e @ MachineError::Ssh {
                        source:
                            super::ssh::SshError::HostKeyMismatch { .. }
                            | super::ssh::SshError::AuthRejected { .. }
                            | super::ssh::SshError::Identity { .. },
                        ..
                    },
                ) => return Err(e),
                Err(e) => Some(e),
            };
            self.shell.disconnect().await;
            if cancel.is_cancelled() {
                return Err(MachineError::Cancelled);
            }
            if Instant::now() + Duration::from_secs(1) >= deadline {
                return Err(err.unwrap_or_else(|| MachineError::Failed {
                    label: self.label.clone(),
                    message: format!("the boot id did not change within {}s", timeout.as_secs()),
                }));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("host").unwrap(), ("host".into(), 22));
        assert_eq!(
            parse_address("127.0.0.1:2201").unwrap(),
            ("127.0.0.1".into(), 2201)
        );
        assert_eq!(parse_address("[::1]:2222").unwrap(), ("::1".into(), 2222));
        assert_eq!(parse_address("[::1]").unwrap(), ("::1".into(), 22));
        for bad in [
            "",
            ":22",
            "host:",
            "host:0",
            "host:99999",
            "::1",
            "a b:2",
            "[::1]x",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }
}
