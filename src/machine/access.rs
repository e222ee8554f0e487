//! How programs outside vmcheck reach a machine over SSH ([`SshAccess`]): the `ssh` command
//! line printed for `--sit`, `vm-run` and `vm ssh`, and the `Host` block of the
//! `ssh_config` an executable check file's test gets, from one description.

use crate::shell::quote;
use std::path::PathBuf;

/// Where a machine's SSH server is and which files let a client in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshAccess {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The client's private key.
    pub identity: PathBuf,
    /// The file holding the machine's host key; `None`: the host key is not checked
    /// (`--insecure-host-key`).
    pub known_hosts: Option<PathBuf>,
}

impl SshAccess {
    /// An `ssh` command line (shell-quoted) that reaches the machine with the same key and
    /// host key policy as vmcheck.
    pub fn command(&self) -> String {
        let keys = match &self.known_hosts {
            Some(f) => format!(
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                quote(&f.to_string_lossy())
            ),
            None => "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".to_string(),
        };
        format!(
            "ssh -F none -i {} -p {} -o IdentitiesOnly=yes {keys} {}",
            quote(&self.identity.to_string_lossy()),
            self.port,
            quote(&format!("{}@{}", self.user, self.host)),
        )
    }

    /// An `ssh_config` `Host` block that makes `alias` reach the machine, or why it cannot
    /// be written (ssh_config has no escape for `"` or a line end in a value).
    pub fn config_block(&self, alias: &str) -> Result<String, String> {
        let value = |what: &str, v: &str| {
            if v.contains(['"', '\n', '\r']) || v.is_empty() {
                Err(format!(
                    "its {what} {v:?} cannot be written in an ssh_config"
                ))
            } else {
                Ok(format!("\"{v}\""))
            }
        };
        let mut block = format!("Host {}\n", value("name", alias)?);
        block.push_str(&format!("  HostName {}\n", value("host", &self.host)?));
        block.push_str(&format!("  Port {}\n", self.port));
        block.push_str(&format!("  User {}\n", value("user", &self.user)?));
        let identity = self.identity.to_string_lossy();
        block.push_str(&format!(
            "  IdentityFile {}\n",
            value("identity", &identity)?
        ));
        block.push_str("  IdentitiesOnly yes\n  BatchMode yes\n  LogLevel ERROR\n");
        match &self.known_hosts {
            Some(f) => {
                let f = f.to_string_lossy();
                block.push_str(&format!(
                    "  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n",
                    value("known_hosts file", &f)?
                ));
            }
            None => block.push_str("  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"),
        }
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(known_hosts: Option<&str>) -> SshAccess {
        SshAccess {
            host: "127.0.0.1".into(),
            port: 2201,
            user: "root".into(),
            identity: "/keys/a b/id".into(),
            known_hosts: known_hosts.map(PathBuf::from),
        }
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            access(Some("/run/kh")).command(),
            "ssh -F none -i '/keys/a b/id' -p 2201 -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/run/kh root@127.0.0.1"
        );
        assert!(
            access(None)
                .command()
                .contains("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
        );
    }

    #[test]
    fn config_blocks_quote_values_and_refuse_what_cannot_be_written() {
        let block = access(Some("/run/k h")).config_block("machine1").unwrap();
        assert!(block.starts_with("Host \"machine1\"\n  HostName \"127.0.0.1\"\n  Port 2201\n"));
        assert!(
            block.contains("  IdentityFile \"/keys/a b/id\"\n"),
            "{block}"
        );
        assert!(
            block.contains("  UserKnownHostsFile \"/run/k h\"\n"),
            "{block}"
        );
        let mut bad = access(None);
        bad.identity = "/keys/a\"b".into();
        assert!(bad.config_block("m").unwrap_err().contains("identity"));
    }
}
