//! Locating the project a command works on: the directory that holds `bots/images/`.
//!
//! vmcheck is run from anywhere inside a project (or a check file is executed directly), so
//! the root is found by walking up from a start directory, unless given explicitly.

use std::path::{Path, PathBuf};

/// A project checkout: its root and the well-known directories below it.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// Find the project containing `start` (walking up to `/`).
    pub fn discover(start: &Path) -> Option<Project> {
        let start = start.canonicalize().ok()?;
        start
            .ancestors()
            .find(|dir| dir.join("bots/images").is_dir())
            .map(|root| Project {
                root: root.to_path_buf(),
            })
    }

    /// Directory of image recipes (`bots/images`).
    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("bots/images")
    }

    /// Directory of the `images/NAME` links to built images.
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_root_from_a_subdirectory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bots/images")).unwrap();
        std::fs::create_dir_all(dir.path().join("test/verify")).unwrap();
        let p = Project::discover(&dir.path().join("test/verify")).unwrap();
        assert_eq!(p.root, dir.path().canonicalize().unwrap());
    }

    #[test]
    fn no_project_outside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Project::discover(dir.path()).is_none());
    }
}
