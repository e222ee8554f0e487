//! What an executable check file's test is told about its machines: `topology.json`
//! (`$VMCHECK_TOPOLOGY`: each machine's name, image, private-network address and SSH
//! access) and an `ssh_config` (`$VMCHECK_SSH_CONFIG`: `ssh -F "$VMCHECK_SSH_CONFIG"
//! machine1 cmd`), written into the attempt's host directory.

use super::attempt::Named;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The topology file's format (`"version"`).
pub const TOPOLOGY_VERSION: u32 = 1;

#[derive(Serialize)]
struct Topology<'a> {
    version: u32,
    test: &'a str,
    machines: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    image: &'a str,
    ip: Option<&'a str>,
    /// Forwarded guest ports: "9090" → "127.0.0.1:NNNNN".
    forward: std::collections::BTreeMap<String, String>,
    ssh: Ssh,
}

#[derive(Serialize)]
struct Ssh {
    host: String,
    port: u16,
    user: String,
    identity: PathBuf,
    known_hosts: Option<PathBuf>,
}

/// The files written, and notes on what the ssh_config could not hold.
pub(super) struct Written {
    pub topology: PathBuf,
    pub ssh_config: PathBuf,
    pub notes: Vec<String>,
}

/// Write `topology.json` and `ssh_config` for `machines` into `dir`; `image_of` names
/// each machine's image.
pub(super) fn write(
    dir: &Path,
    test: &str,
    machines: &[Named],
    image_of: impl Fn(&str) -> String,
) -> std::io::Result<Written> {
    let images: Vec<String> = machines.iter().map(|m| image_of(&m.name)).collect();
    let accesses: Vec<_> = machines.iter().map(|m| m.machine.ssh_access()).collect();
    let topology = Topology {
        version: TOPOLOGY_VERSION,
        test,
        machines: machines
            .iter()
            .zip(&images)
            .zip(&accesses)
            .map(|((m, image), a)| Entry {
                name: &m.name,
                image,
                ip: m.ip.as_deref(),
                forward: m
                    .machine
                    .forwards()
                    .into_iter()
                    .map(|(g, h)| (g.to_string(), format!("127.0.0.1:{h}")))
                    .collect(),
                ssh: Ssh {
                    host: a.host.clone(),
                    port: a.port,
                    user: a.user.clone(),
                    identity: a.identity.clone(),
                    known_hosts: a.known_hosts.clone(),
                },
            })
            .collect(),
    };
    let mut notes = Vec::new();
    let mut config = String::from("# vmcheck: the machines of this test\n");
    for (m, a) in machines.iter().zip(&accesses) {
        match a.config_block(&m.name) {
            Ok(block) => config.push_str(&block),
            Err(e) => notes.push(format!("vmcheck: {} is not in the ssh_config: {e}", m.name)),
        }
    }
    let written = Written {
        topology: dir.join("topology.json"),
        ssh_config: dir.join("ssh_config"),
        notes,
    };
    let json = serde_json::to_vec_pretty(&topology).map_err(std::io::Error::other)?;
    std::fs::write(&written.topology, [json.as_slice(), b"\n"].concat())?;
    std::fs::write(&written.ssh_config, config)?;
    Ok(written)
}
