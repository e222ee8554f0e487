//! The image store: a directory of read-only images named `NAME-<sha256>`, shared by all
//! projects of a user (`$VMCHECK_IMAGES_DIR`, default `~/.cache/vmcheck/images`).
//!
//! The main type is [`Image`]: an image directory whose manifest was found intact. Opening
//! checks the manifest's hash against the directory name; [`ImageStore::verify`] also hashes
//! every file.

use super::ImageError;
use super::hash::{sha256_bytes, sha256_files};
use super::manifest::Manifest;
use std::path::{Path, PathBuf};

/// An image's verification stamp (see `stamp.rs`).
const VERIFIED: &str = ".verified";

/// Where built images live.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub dir: PathBuf,
}

/// A built image, opened from the store.
#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub sha256: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// File names inside every image.
pub const CLIENT_KEY: &str = "id_ed25519";
pub const KERNEL: &str = "vmlinux";
pub const INITRD: &str = "initrd";
pub const MANIFEST: &str = "manifest.toml";

impl Image {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    pub fn kernel(&self) -> PathBuf {
        self.file(KERNEL)
    }
    pub fn initrd(&self) -> PathBuf {
        self.file(INITRD)
    }
    pub fn disk(&self) -> Option<PathBuf> {
        self.manifest.boot.disk.as_deref().map(|d| self.file(d))
    }
    pub fn client_key(&self) -> PathBuf {
        self.file(CLIENT_KEY)
    }
    /// `NAME-<first 12 hex digits>`, for messages.
    pub fn short_id(&self) -> String {
        format!("{}-{}", self.name, &self.sha256[..12])
    }
}

impl ImageStore {
    /// The store named by `$VMCHECK_IMAGES_DIR`, else `$XDG_CACHE_HOME/vmcheck/images`, else
    /// `~/.cache/vmcheck/images`.
    pub fn from_env() -> ImageStore {
        let dir = std::env::var_os("VMCHECK_IMAGES_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_home().join("vmcheck/images"));
        ImageStore { dir }
    }

    /// Remove the scratch directories of builds whose vmcheck was killed; any vmcheck that
    /// opens the store calls this, so a killed build's gigabytes do not stay forever.
    pub fn sweep(&self) {
        super::build::sweep_scratch(&self.dir);
    }

    pub fn image_dir(&self, name: &str, sha256: &str) -> PathBuf {
        self.dir.join(format!("{name}-{sha256}"))
    }

    /// Open the image at `dir` (a `NAME-<sha256>` directory), checking that its manifest
    /// hashes to the name. File contents are not hashed here; see [`ImageStore::verify`].
    pub fn open(&self, dir: &Path) -> Result<Image, ImageError> {
        let base = dir
            .file_name()
            .and_then(|b| b.to_str())
            .unwrap_or_default()
            .to_string();
        let Some((name, sha256)) = split_image_dir_name(&base) else {
            return Err(ImageError::Corrupt {
                name: base.clone(),
                dir: dir.to_path_buf(),
                problem: "the directory name is not NAME-<sha256>".into(),
            });
        };
        let corrupt = |problem: String| ImageError::Corrupt {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            problem,
        };
        let text = std::fs::read(dir.join(MANIFEST))
            .map_err(|e| corrupt(format!("cannot read {MANIFEST}: {e}")))?;
        let actual = sha256_bytes(&text);
        if actual != sha256 {
            return Err(corrupt(format!(
                "{MANIFEST} has sha256 {actual}, the image name says {sha256}"
            )));
        }
        let manifest = Manifest::parse(&String::from_utf8_lossy(&text))
            .map_err(|e| corrupt(format!("bad {MANIFEST}: {e}")))?;
        if manifest.name != name {
            return Err(corrupt(format!(
                "{MANIFEST} names image '{}'",
                manifest.name
            )));
        }
        Ok(Image {
            name: name.to_string(),
            sha256: sha256.to_string(),
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Hash every file of `image` and compare with its manifest, unless a process did since
    /// the files last changed (its stamp, `.verified` in the image: see `stamp.rs`).
    pub fn verify(&self, image: &Image) -> Result<(), ImageError> {
        let files: Vec<(&String, &String)> = image.manifest.files.iter().collect();
        let paths: Vec<PathBuf> = files.iter().map(|(f, _)| image.file(f)).collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let manifest = image.dir.join(MANIFEST);
        let stamp = image.dir.join(VERIFIED);
        let stamped: Vec<&Path> = refs.iter().copied().chain([manifest.as_path()]).collect();
        if super::stamp::fresh(&stamp, &stamped) {
            return Ok(());
        }
        for (((file, want), path), got) in files.iter().zip(&paths).zip(sha256_files(&refs)) {
            let problem = match got {
                Err(e) => format!("cannot read {}: {e}", path.display()),
                Ok(got) if &got != *want => {
                    format!("{file} has sha256 {got}, the manifest says {want}")
                }
                Ok(_) => continue,
            };
            return Err(ImageError::Corrupt {
                name: image.name.clone(),
                dir: image.dir.clone(),
                problem,
            });
        }
        super::stamp::record(&stamp, &stamped);
        Ok(())
    }

    /// Every image directory in the store, newest build first per name.
    pub fn all(&self) -> Vec<Result<Image, ImageError>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Result<Image, ImageError>> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| split_image_dir_name(n).is_some())
            })
            .map(|e| self.open(&e.path()))
            .collect();
        out.sort_by_key(|r| match r {
            Ok(i) => (i.name.clone(), u64::MAX - i.manifest.built_at),
            Err(_) => (String::new(), 0),
        });
        out
    }
}

/// Split `NAME-<64 hex>` into its parts.
pub fn split_image_dir_name(base: &str) -> Option<(&str, &str)> {
    let (name, sha) = base.rsplit_once('-')?;
    (sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && super::valid_name(name))
    .then_some((name, sha))
}

/// `$XDG_CACHE_HOME`, else `~/.cache` (else `/tmp/.cache`).
pub fn cache_home() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::manifest::{BootConfig, GuestLog, MANIFEST_FORMAT};

    #[test]
    fn splits_names() {
        let sha = "0123456789abcdef".repeat(4);
        assert_eq!(
            split_image_dir_name(&format!("debian-12-{sha}")),
            Some(("debian-12", sha.as_str()))
        );
        assert_eq!(split_image_dir_name("debian-12"), None);
        assert_eq!(split_image_dir_name(&format!("-{sha}")), None);
        assert_eq!(split_image_dir_name(&format!("x-{}", "G".repeat(64))), None);
    }

    fn fake_image(store: &ImageStore, tamper: bool) -> PathBuf {
        let staging = store.dir.join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("vmlinux"), b"kernel").unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: "tiny".into(),
            recipe_sha256: "0".repeat(64),
            built_at: 5,
            host_key: "ssh-ed25519 AAAA".into(),
            boot: BootConfig {
                cmdline: String::new(),
                memory_mib: 128,
                disk: None,
                log: GuestLog::Kmsg,
            },
            files: [("vmlinux".to_string(), sha256_bytes(b"kernel"))].into(),
        };
        let text = manifest.to_toml();
        std::fs::write(staging.join(MANIFEST), &text).unwrap();
        let dir = store.image_dir("tiny", &sha256_bytes(text.as_bytes()));
        std::fs::rename(&staging, &dir).unwrap();
        if tamper {
            std::fs::write(dir.join("vmlinux"), b"kernal").unwrap();
        }
        dir
    }

    #[test]
    fn open_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore {
            dir: tmp.path().to_path_buf(),
        };
        let dir = fake_image(&store, false);
        let img = store.open(&dir).unwrap();
        assert_eq!(img.name, "tiny");
        store.verify(&img).unwrap();
        assert_eq!(store.all().len(), 1);
    }

    #[test]
    fn tampered_file_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore {
            dir: tmp.path().to_path_buf(),
        };
        let dir = fake_image(&store, true);
        let img = store.open(&dir).unwrap();
        let err = store.verify(&img).unwrap_err().to_string();
        assert!(err.contains("vmlinux has sha256"), "{err}");
        assert!(err.contains("vmcheck image build tiny"), "{err}");
    }

    #[test]
    fn a_later_verification_trusts_its_stamp_only_while_nothing_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore {
            dir: tmp.path().to_path_buf(),
        };
        let dir = fake_image(&store, false);
        let img = store.open(&dir).unwrap();
        store.verify(&img).unwrap();
        assert!(
            dir.join(VERIFIED).is_file(),
            "the first verification is stamped"
        );
        store.verify(&img).unwrap();
        // Corrupted after it was stamped: found all the same.
        std::fs::write(dir.join("vmlinux"), b"kernal").unwrap();
        let err = store.verify(&img).unwrap_err().to_string();
        assert!(err.contains("vmlinux has sha256"), "{err}");
    }

    #[test]
    fn renamed_directory_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore {
            dir: tmp.path().to_path_buf(),
        };
        let dir = fake_image(&store, false);
        let wrong = store.image_dir("tiny", &"a".repeat(64));
        std::fs::rename(&dir, &wrong).unwrap();
        let err = store.open(&wrong).unwrap_err().to_string();
        assert!(err.contains("the image name says"), "{err}");
    }
}
