//! An existing host reached over SSH (`--machine HOST[:PORT]`): vmcheck did not boot it,
//! cannot reset it, and only runs commands in it. The main type is [`RemoteMachine`].

use super::error::MachineError;
use super::shell::{CONNECT_LIMIT, Shell};
use super::ssh::{HostKeyCheck, SshSession, SshTarget};
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
    /// Connect and read the boot id. A host that refuses the connection (or cannot be
    /// routed to) fails at once; one that does not answer is retried until `timeout`, and
    /// stderr says so after the first try.
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

    /// How programs outside vmcheck reach this host: its address, key and host key policy.
    pub fn ssh_access(&self) -> super::access::SshAccess {
        let t = self.shell.target();
        super::access::SshAccess {
            host: t.host.clone(),
            port: t.port,
            user: t.user.clone(),
            identity: t.identity.clone(),
            known_hosts: match &t.host_key {
                HostKeyCheck::KnownHosts(f) => Some(f.clone()),
                HostKeyCheck::Insecure => None,
                // Not made for existing hosts; no file holds the key, so nothing matches.
                HostKeyCheck::Exact(_) => Some(std::path::PathBuf::from("/dev/null")),
            },
        }
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

    fn tell_waiting(&self, deadline: Instant, why: &str) {
        crate::say!(
            "vmcheck: waiting up to {}s more for {} to answer SSH ({why})",
            deadline.saturating_duration_since(Instant::now()).as_secs(),
            self.label
        );
    }

    async fn wait_for_new_boot(
        &self,
        old: Option<&str>,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<String, MachineError> {
        let deadline = Instant::now() + timeout;
        let mut told = false;
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
            // A first connect that takes a while is said on stderr, with how long it may
            // take; a wait for a reboot is expected to.
            let mut attempt = std::pin::pin!(attempt);
            let result = if old.is_some() || told {
                attempt.await
            } else {
                tokio::select! {
                    r = &mut attempt => r,
                    _ = tokio::time::sleep(TELL_AFTER) => {
                        told = true;
                        self.tell_waiting(deadline, &format!("no answer in {}s", TELL_AFTER.as_secs()));
                        attempt.await
                    }
                }
            };
            let err = match result {
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
                // Nothing listens there, or no route: a first connect fails at once (during a
                // reboot sshd is down for a while, so a wait for a new boot goes on).
                Err(e) if old.is_none() && unreachable(&e) => return Err(e),
                Err(e) => Some(e),
            };
            if let (None, Some(e), false) = (old, &err, told) {
                told = true;
                self.tell_waiting(deadline, &e.to_string());
            }
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

/// How long a first connect may take before stderr says that it is being waited for.
const TELL_AFTER: Duration = Duration::from_secs(5);

/// Whether `e` says that nothing will answer at that address: the connection was refused
/// or there is no route to it (not: no answer yet).
fn unreachable(e: &MachineError) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, NetworkUnreachable};
    matches!(
        e,
        MachineError::Ssh {
            source: super::ssh::SshError::Connect { source, .. },
            ..
        } if matches!(source.kind(), ConnectionRefused | HostUnreachable | NetworkUnreachable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target on this host's `port`, with a fresh key in `dir`.
    fn target(dir: &std::path::Path, port: u16) -> SshTarget {
        let identity = dir.join("id");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&identity)
            .status()
            .unwrap();
        assert!(made.success());
        SshTarget {
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
            identity,
            host_key: HostKeyCheck::Insecure,
        }
    }

    #[tokio::test]
    async fn a_refused_connection_fails_at_once() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = RemoteMachine::connect(
            "dead",
            target(dir.path(), port),
            Duration::from_secs(60),
            &Cancel::new(),
        )
        .await
        .err()
        .expect("nothing listens");
        assert!(unreachable(&e), "{e}");
        // Not the 60 s timeout: a refusal ends the wait at once.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_silent_host_is_waited_for_until_the_timeout() {
        // Accepts the connection and never says a word: not refused, so retried.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = RemoteMachine::connect(
            "mute",
            target(dir.path(), port),
            Duration::from_secs(3),
            &Cancel::new(),
        )
        .await
        .err()
        .expect("no SSH banner");
        assert!(!unreachable(&e), "{e}");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        keep.abort();
    }

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
