//! Guest images: recipes in `bots/images/`, built into a content-addressed store, found by
//! name through the project's `images/NAME` links.

mod build;
pub use build::READY_MARKER;
mod catalog;
pub(crate) mod hash;
mod manifest;
pub(crate) mod stamp;
mod store;

pub use catalog::{Catalog, ImageStatus, ImageSummary};
pub use manifest::{BootConfig, GuestLog, Manifest};
pub use store::{Image, ImageStore, cache_home};

use std::path::PathBuf;

/// Everything that can go wrong finding, verifying or building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unknown image '{name}' (known images: {})", known_list(.known))]
    Unknown { name: String, known: Vec<String> },
    #[error("invalid image name '{name}': use lower-case letters, digits, '.' and '-'")]
    InvalidName { name: String },
    #[error("image {name} ({}): {problem}; rebuild it with `vmcheck image build {name}`", .dir.display())]
    Corrupt {
        name: String,
        dir: PathBuf,
        problem: String,
    },
    #[error("building image {name}: recipe {} failed ({status}); log {}:\n{tail}", .recipe.display(), .log.display())]
    RecipeFailed {
        name: String,
        recipe: PathBuf,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("building image {name}: {problem}")]
    BadRecipeOutput { name: String, problem: String },
    /// Cancelled by a signal; the recipe was stopped and its scratch directory removed.
    #[error("building image {name}: interrupted")]
    Interrupted { name: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }

    /// True when the problem is in what the user gave (name, image files) rather than
    /// in the machinery that builds images.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            ImageError::Unknown { .. }
                | ImageError::InvalidName { .. }
                | ImageError::Corrupt { .. }
        )
    }
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    }
}

/// Image names: what may appear as a recipe file name and before `-<sha256>` in the store.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("busybox"));
        assert!(valid_name("debian-12"));
        assert!(valid_name("fedora-44.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("Debian"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("lib/"));
    }

    #[test]
    fn unknown_lists_known_images() {
        let e = ImageError::Unknown {
            name: "fedora".into(),
            known: vec!["busybox".into(), "debian-12".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown image 'fedora' (known images: busybox, debian-12)"
        );
    }
}
