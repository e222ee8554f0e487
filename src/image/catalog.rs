//! Finding images by name: the project's recipes (`bots/images/NAME`), its links
//! (`images/NAME` → `<store>/NAME-<sha256>`), and the store. The main type is [`Catalog`].
//!
//! [`Catalog::resolve`] is what every command that needs an image calls: it builds the
//! image first when it is missing or its recipe changed, verifies each image's files once
//! per process, and names the known images when asked for an unknown one.

use super::build::{BuildRequest, build};
use super::hash::sha256_file;
use super::store::{Image, ImageStore, split_image_dir_name};
use super::{ImageError, valid_name};
use crate::project::Project;
use crate::signal::Cancel;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The images a project can use.
#[derive(Debug)]
pub struct Catalog {
    pub project: Project,
    pub store: ImageStore,
    /// Image directories whose files were hashed by this process.
    verified: Mutex<HashSet<PathBuf>>,
}

/// The state of one image name.
#[derive(Debug)]
pub enum ImageStatus {
    /// Built and built from the current recipe (or there is no recipe to compare with).
    Current(Image),
    /// Built, but the recipe changed since.
    Stale(Image),
    /// Not built (no link, or the link points nowhere).
    Missing,
    /// The link points at something that is not an intact image.
    Broken(ImageError),
}

/// One row of `vmcheck image list`.
#[derive(Debug)]
pub struct ImageSummary {
    pub name: String,
    pub has_recipe: bool,
    pub status: ImageStatus,
}

impl Catalog {
    pub fn new(project: Project, store: ImageStore) -> Catalog {
        Catalog {
            project,
            store,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Names of the recipes in `bots/images/` (executable regular files), sorted.
    pub fn recipes(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.project.recipes_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        names
    }

    fn recipe(&self, name: &str) -> Option<PathBuf> {
        let p = self.project.recipes_dir().join(name);
        self.recipes().iter().any(|n| n == name).then_some(p)
    }

    fn link(&self, name: &str) -> PathBuf {
        self.project.images_dir().join(name)
    }

    /// Every name that has a recipe or a link, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.recipes();
        if let Ok(entries) = std::fs::read_dir(self.project.images_dir()) {
            names.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| valid_name(n)),
            );
        }
        names.sort();
        names.dedup();
        names
    }

    pub fn status(&self, name: &str) -> ImageStatus {
        let link = self.link(name);
        let Ok(target) = std::fs::read_link(&link) else {
            return ImageStatus::Missing;
        };
        let target = if target.is_relative() {
            self.project.images_dir().join(target)
        } else {
            target
        };
        if !target.exists() {
            return ImageStatus::Missing;
        }
        let base = target.file_name().and_then(|b| b.to_str()).unwrap_or("");
        if split_image_dir_name(base).is_none_or(|(n, _)| n != name) {
            return ImageStatus::Broken(ImageError::Corrupt {
                name: name.to_string(),
                dir: target.clone(),
                problem: format!(
                    "{} does not point at a {name}-<sha256> image",
                    link.display()
                ),
            });
        }
        let image = match self.store.open(&target) {
            Ok(image) => image,
            Err(e) => return ImageStatus::Broken(e),
        };
        match self.recipe(name).map(|r| sha256_file(&r)) {
            Some(Ok(sha)) if sha != image.manifest.recipe_sha256 => ImageStatus::Stale(image),
            _ => ImageStatus::Current(image),
        }
    }

    pub fn list(&self) -> Vec<ImageSummary> {
        self.names()
            .into_iter()
            .map(|name| ImageSummary {
                has_recipe: self.recipe(&name).is_some(),
                status: self.status(&name),
                name,
            })
            .collect()
    }

    /// The image called `name`, built first if it is missing or stale, its files verified
    /// (once per process).
    pub fn resolve(&self, name: &str, cancel: &Cancel, verbose: bool) -> Result<Image, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::InvalidName {
                name: name.to_string(),
            });
        }
        let image = match (self.status(name), self.recipe(name)) {
            (ImageStatus::Current(image), _) => image,
            (ImageStatus::Stale(image), None) => image,
            (ImageStatus::Broken(e), _) => return Err(e),
            (status, Some(_)) => {
                let why = match status {
                    ImageStatus::Stale(_) => "its recipe changed",
                    _ => "it is not built yet",
                };
                crate::say!("vmcheck: building image {name} ({why}) ...");
                return self.build(name, cancel, verbose);
            }
            (_, None) => {
                return Err(ImageError::Unknown {
                    name: name.to_string(),
                    known: self.names(),
                });
            }
        };
        let mut verified = self.verified.lock().expect("verified set poisoned");
        if !verified.contains(&image.dir) {
            self.store.verify(&image)?;
            verified.insert(image.dir.clone());
        }
        Ok(image)
    }

    /// Build `name` from its recipe and point `images/NAME` at the result.
    pub fn build(&self, name: &str, cancel: &Cancel, verbose: bool) -> Result<Image, ImageError> {
        let Some(recipe) = self.recipe(name) else {
            return Err(ImageError::Unknown {
                name: name.to_string(),
                known: self.recipes(),
            });
        };
        std::fs::create_dir_all(&self.store.dir).map_err(ImageError::io(format!(
            "creating {}",
            self.store.dir.display()
        )))?;
        let lock_path = self.store.dir.join(format!(".{name}.lock"));
        let lock_file = std::fs::File::create(&lock_path)
            .map_err(ImageError::io(format!("creating {}", lock_path.display())))?;
        let mut lock_file = lock_file;
        let mut waited = false;
        // Polled rather than blocking, so that Ctrl-C still works while another vmcheck builds.
        let _lock = loop {
            match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => break lock,
                Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                    if !waited {
                        crate::say!(
                            "vmcheck: waiting for another vmcheck that is building {name} ..."
                        );
                        waited = true;
                    }
                    if cancel.is_cancelled() {
                        return Err(ImageError::Interrupted {
                            name: name.to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    lock_file = file;
                }
                Err((_, e)) => {
                    return Err(ImageError::Io {
                        context: format!("locking {}", lock_path.display()),
                        source: e.into(),
                    });
                }
            }
        };
        // Another vmcheck built it meanwhile: use its result if it is current.
        if waited && let ImageStatus::Current(image) = self.status(name) {
            return Ok(image);
        }
        let image = build(&BuildRequest {
            name,
            recipe: &recipe,
            store: &self.store,
            verbose,
            cancel,
        })?;
        self.point_link(name, &image)?;
        self.verified
            .lock()
            .expect("verified set poisoned")
            .insert(image.dir.clone());
        Ok(image)
    }

    /// Atomically point `images/NAME` at `image`.
    fn point_link(&self, name: &str, image: &Image) -> Result<(), ImageError> {
        let dir = self.project.images_dir();
        std::fs::create_dir_all(&dir)
            .map_err(ImageError::io(format!("creating {}", dir.display())))?;
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&image.dir, &tmp)
            .and_then(|()| std::fs::rename(&tmp, self.link(name)))
            .map_err(ImageError::io(format!("linking images/{name}")))
    }
}
