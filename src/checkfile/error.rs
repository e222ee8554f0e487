//! [`CheckFileError`], the one error type of check files, and `Diagnostics`, which collects
//! a file's errors while turning toml's byte spans into 1-based lines and columns.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem in one check file, at a position.
///
/// Displays as `path:line:col: message`. `line` and `col` are 1-based; the column counts
/// characters, not bytes. An error about the whole file (it cannot be read) has `line` 0
/// and displays as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckFileError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for CheckFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.path.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl CheckFileError {
    /// An error about the whole file (no line): shown as `path: message`.
    pub fn whole_file(path: &std::path::Path, message: String) -> CheckFileError {
        CheckFileError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message,
        }
    }
}

impl std::error::Error for CheckFileError {}

/// The errors of one file being parsed.
pub(super) struct Diagnostics<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offset of the start of every line.
    line_starts: Vec<usize>,
    errors: Vec<CheckFileError>,
    warnings: Vec<CheckFileError>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Diagnostics {
            path,
            text,
            line_starts,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn at(&self, span: Range<usize>, message: impl Into<String>) -> CheckFileError {
        let (line, col) = self.position(span.start);
        CheckFileError {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }

    /// Records an error at the start of `span`.
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let e = self.at(span, message);
        self.errors.push(e);
    }

    /// Records an error at a (line, column) already worked out.
    pub(super) fn error_at(&mut self, (line, col): (usize, usize), message: impl Into<String>) {
        self.errors.push(CheckFileError {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    /// Records a warning (not an error: the file is still used) at the start of `span`.
    pub(super) fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let w = self.at(span, message);
        self.warnings.push(w);
    }

    /// The 1-based (line, column) of a byte offset.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[index];
        let col = match self.text.get(start..offset) {
            Some(s) => s.chars().count(),
            None => offset - start,
        };
        (index + 1, col + 1)
    }

    /// The 1-based line of a byte offset.
    pub(super) fn line(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    pub(super) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// How many errors are recorded so far.
    pub(super) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The errors in the order of their positions.
    pub(super) fn finish(self) -> Vec<CheckFileError> {
        self.finish_with_warnings().0
    }

    /// The errors and the warnings, each in the order of their positions, once each.
    pub(super) fn finish_with_warnings(mut self) -> (Vec<CheckFileError>, Vec<CheckFileError>) {
        for list in [&mut self.errors, &mut self.warnings] {
            list.sort_by_key(|e| (e.line, e.col));
            let mut seen = std::collections::HashSet::new();
            list.retain(|e| seen.insert((e.line, e.col, e.message.clone())));
        }
        (self.errors, self.warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\n\nxé=1\n";
        let d = Diagnostics::new(Path::new("f"), text);
        let cases = [
            (0, (1, 1)),
            (1, (1, 2)),
            (2, (1, 3)),
            (3, (2, 1)),
            (4, (3, 1)),
            (5, (3, 2)),
            // after the two-byte 'é'
            (7, (3, 3)),
            (10, (4, 1)),
            (99, (4, 1)),
        ];
        for (offset, expected) in cases {
            assert_eq!(d.position(offset), expected, "offset {offset}");
        }
    }

    #[test]
    fn display() {
        let mut e = CheckFileError {
            path: PathBuf::from("test/verify/check-foo"),
            line: 12,
            col: 3,
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "test/verify/check-foo:12:3: bad");
        e.line = 0;
        assert_eq!(e.to_string(), "test/verify/check-foo: bad");
    }

    #[test]
    fn finish_sorts_and_dedups() {
        let text = "a\nb\nc\n";
        let mut d = Diagnostics::new(Path::new("f"), text);
        d.error(4..5, "third");
        d.error(0..1, "first");
        d.error(4..5, "third");
        d.error(2..3, "second");
        assert!(d.has_errors());
        let messages: Vec<_> = d.finish().into_iter().map(|e| e.message).collect();
        assert_eq!(messages, ["first", "second", "third"]);
    }
}
