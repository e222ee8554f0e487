//! The two small TOML files of an image: `image.toml`, written by a recipe to say how to
//! boot it, and `manifest.toml`, written by vmcheck to pin every file by its SHA-256.
//!
//! The image's name in the store is `NAME-<sha256 of manifest.toml>`, so the manifest's
//! bytes are the image's identity and every file is reachable from it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of the manifest format; part of every image's identity.
pub const MANIFEST_FORMAT: u32 = 1;

/// How the guest exposes its log to tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestLog {
    /// systemd's journal (`journalctl`).
    Journal,
    /// The kernel ring buffer only (`dmesg`).
    Kmsg,
}

/// `image.toml`: how to boot an image, as its recipe declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Appended to vmcheck's own kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Default memory of a machine of this image.
    pub memory_mib: u32,
    /// Root disk (qcow2), attached as the first virtio disk; none for RAM-root images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
    pub log: GuestLog,
}

impl BootConfig {
    pub fn parse(text: &str) -> Result<BootConfig, String> {
        let cfg: BootConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if !(64..=65536).contains(&cfg.memory_mib) {
            return Err(format!(
                "memory_mib = {} is outside 64..=65536",
                cfg.memory_mib
            ));
        }
        if let Some(disk) = &cfg.disk
            && (disk.contains('/') || disk.starts_with('.'))
        {
            return Err(format!("disk = {disk:?} must be a file name in the image"));
        }
        Ok(cfg)
    }
}

/// `manifest.toml`: what an image is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// SHA-256 of the recipe that built the image; a changed recipe makes the image stale.
    pub recipe_sha256: String,
    /// Seconds since the epoch when the build finished.
    pub built_at: u64,
    /// The guest's SSH host public key (one OpenSSH line), checked on every connection.
    pub host_key: String,
    pub boot: BootConfig,
    /// File name → SHA-256 of every file in the image except the manifest itself.
    pub files: BTreeMap<String, String>,
}

impl Manifest {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("manifest serializes")
    }

    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if m.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not {MANIFEST_FORMAT}",
                m.format
            ));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_parses_and_rejects_unknown_keys() {
        let c = BootConfig::parse(
            "cmdline = \"root=/dev/vda\"\nmemory_mib = 512\ndisk = \"root.qcow2\"\nlog = \"journal\"\n",
        )
        .unwrap();
        assert_eq!(c.disk.as_deref(), Some("root.qcow2"));
        assert_eq!(c.log, GuestLog::Journal);
        let e = BootConfig::parse("memory_mib = 256\nlog = \"kmsg\"\nmem = 3\n").unwrap_err();
        assert!(e.contains("unknown field `mem`"), "{e}");
        assert!(BootConfig::parse("memory_mib = 1\nlog = \"kmsg\"\n").is_err());
        assert!(BootConfig::parse("memory_mib = 256\nlog = \"kmsg\"\ndisk = \"../x\"\n").is_err());
    }

    #[test]
    fn manifest_round_trips() {
        let m = Manifest {
            format: MANIFEST_FORMAT,
            name: "busybox".into(),
            recipe_sha256: "ab".repeat(32),
            built_at: 1,
            host_key: "ssh-ed25519 AAAA host".into(),
            boot: BootConfig {
                cmdline: String::new(),
                memory_mib: 256,
                disk: None,
                log: GuestLog::Kmsg,
            },
            files: [("vmlinux".to_string(), "cd".repeat(32))].into(),
        };
        assert_eq!(Manifest::parse(&m.to_toml()).unwrap(), m);
    }
}
