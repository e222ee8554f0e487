//! [`NaughtyError`], the one error type of the naughty database: a problem with one file or
//! directory, found while loading, before anything boots.

use std::fmt;
use std::path::PathBuf;

/// One problem with one file or directory of the naughty database.
///
/// Displays as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaughtyError {
    pub path: PathBuf,
    pub message: String,
}

impl NaughtyError {
    pub(super) fn new(path: impl Into<PathBuf>, message: impl Into<String>) -> NaughtyError {
        NaughtyError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for NaughtyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for NaughtyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display() {
        let e = NaughtyError::new("bots/naughty/fedora-44/x", "bad");
        assert_eq!(e.to_string(), "bots/naughty/fedora-44/x: bad");
    }
}
