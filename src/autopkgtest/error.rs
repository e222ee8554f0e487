//! [`ControlError`]: one problem in one file of a source package's metadata, at a line, and
//! [`ControlErrors`], all the problems of a parse.

use std::fmt;
use std::path::PathBuf;

/// One problem at one line of one file.
///
/// Displays as `path:line: message`; `line` is 1-based. An error about the whole file (it
/// cannot be read, a `.dsc` does not unpack) has `line` 0 and displays as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl ControlError {
    pub fn new(path: impl Into<PathBuf>, line: usize, message: impl Into<String>) -> Self {
        ControlError {
            path: path.into(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ControlError {}

/// Every error of one parse, in file order; displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlErrors(pub Vec<ControlError>);

impl fmt::Display for ControlErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ControlErrors {}

impl From<ControlError> for ControlErrors {
    fn from(e: ControlError) -> Self {
        ControlErrors(vec![e])
    }
}
