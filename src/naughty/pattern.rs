//! One naughty pattern: its file name (`<issue-number>-<slug>`), its normalised text, and
//! how it matches a failure's output (Cockpit's `check_known_issue` for one file).
//!
//! A normalised pattern `P` matches a normalised output when the glob `*P*` matches all of
//! it ([`glob_match`](super::glob_match) semantics: `*` crosses newlines); if not, the glob
//! is tried once more with every `[` replaced by `?`, because pasted output often has
//! literal brackets (`[   12.345678] BUG: …`) that would otherwise be character classes.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::NaughtyError;
use super::glob::Glob;
use super::normalize::normalize;
use super::pixel::is_pixel_failure;

/// One known-issue pattern, as loaded from `bots/naughty/<os>/<issue>-<slug>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naughty {
    /// The issue number: the file name's leading digits.
    pub issue: u64,
    /// The name of the OS directory it was loaded from (for a symlinked alias, the
    /// directory the link points to).
    pub os: String,
    /// The pattern file.
    pub path: PathBuf,
    /// The pattern, normalised.
    pub pattern: String,
}

/// A [`Naughty`] with its compiled globs.
#[derive(Debug, Clone)]
pub(super) struct Compiled {
    pub(super) naughty: Naughty,
    glob: Glob,
    /// The glob with every `[` replaced by `?`, if the pattern has a `[`.
    bracket_retry: Option<Glob>,
}

impl Compiled {
    /// Reads and compiles the pattern file `path` of the OS directory `os`.
    pub(super) fn load(path: &Path, os: &str) -> Result<Compiled, NaughtyError> {
        let error = |message: String| NaughtyError::new(path, message);
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| error("the file name is not UTF-8".into()))?;
        let issue = issue_number(file_name).map_err(error)?;
        if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(error(
                "is a directory; an OS directory holds only pattern files".into(),
            ));
        }
        let bytes = fs::read(path).map_err(|e| error(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| error("is not UTF-8 text".into()))?;
        Compiled::new(issue, os, path, &text).map_err(error)
    }

    /// Compiles the pattern `text` (the file's content).
    pub(super) fn new(issue: u64, os: &str, path: &Path, text: &str) -> Result<Compiled, String> {
        let pattern = normalize(&universal_newlines(text));
        if pattern.is_empty() {
            return Err("the pattern is empty".into());
        }
        if pattern.chars().all(|c| c == '*') {
            return Err("the pattern is only `*`, so it would match every failure".into());
        }
        let glob = Glob::new(&format!("*{pattern}*"));
        let bracket_retry = pattern
            .contains('[')
            .then(|| Glob::new(&format!("*{}*", pattern.replace('[', "?"))));
        Ok(Compiled {
            naughty: Naughty {
                issue,
                os: os.to_owned(),
                path: path.to_owned(),
                pattern,
            },
            glob,
            bracket_retry,
        })
    }

    /// Whether the pattern matches `output`, which must already be normalised and must not
    /// be a pixel-test failure.
    pub(super) fn is_match(&self, normalized_output: &str) -> bool {
        self.glob.is_match(normalized_output)
            || self
                .bracket_retry
                .as_ref()
                .is_some_and(|g| g.is_match(normalized_output))
    }
}

/// The issue number of a pattern file named `<digits>-<anything>`.
pub fn issue_number(file_name: &str) -> Result<u64, String> {
    let digits = file_name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || file_name.as_bytes().get(digits) != Some(&b'-') {
        return Err(
            "the file name must be the issue number, `-` and a description, e.g. `1234-pmproxy-crash`"
                .into(),
        );
    }
    file_name[..digits]
        .parse()
        .map_err(|_| format!("the issue number {} is too large", &file_name[..digits]))
}

/// Whether the pattern `pattern` (a file's raw content) matches the failure `output`, as
/// Cockpit decides for one file: both normalised, pixel-test failures never match, `*P*`
/// then the literal-bracket retry. An empty pattern matches nothing.
pub fn pattern_matches(pattern: &str, output: &str) -> bool {
    let output = normalize(output);
    !is_pixel_failure(&output)
        && Compiled::new(0, "", Path::new(""), pattern).is_ok_and(|c| c.is_match(&output))
}

/// `\r\n` and lone `\r` become `\n`, as Python's text-mode `open()` reads pattern files.
fn universal_newlines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_numbers_come_from_file_names() {
        assert_eq!(issue_number("9054-stratis-missing-dbus"), Ok(9054));
        assert_eq!(issue_number("9054-"), Ok(9054));
        assert_eq!(issue_number("0042-x"), Ok(42));
        assert_eq!(issue_number("9054-2"), Ok(9054));
        for bad in [
            "readme", "9054", "x9054-a", "-1-a", "+12-a", " 12-a", "12_a", "",
        ] {
            let err = issue_number(bad).unwrap_err();
            assert!(err.contains("must be the issue number"), "{bad}: {err}");
        }
        let err = issue_number("99999999999999999999999-x").unwrap_err();
        assert_eq!(err, "the issue number 99999999999999999999999 is too large");
    }

    #[test]
    fn patterns_match_anywhere_in_the_output() {
        let output = "line 1\nError: timeout\nnot ok 1 test/verify/check-a TestA.testB";
        assert!(pattern_matches("Error: timeout", output));
        assert!(pattern_matches("\n  Error: timeout  \n", output));
        assert!(pattern_matches("line 1\n*\nnot ok", output));
        assert!(pattern_matches("Error: *out", output));
        assert!(!pattern_matches("Error: crash", output));
        assert!(!pattern_matches("error: timeout", output));
        assert!(!pattern_matches("", output));
        assert!(!pattern_matches(" \n", output));
    }

    #[test]
    fn both_sides_are_normalised() {
        let output =
            "  File \"/ci/checkout/test/verify/check-x\", line 9, in testY\ntestlib.Error: boom";
        assert!(pattern_matches(
            "File \"test/verify/check-x\", line *, in testY\nError: boom",
            output
        ));
        assert!(pattern_matches(
            "File \"check-x\", line 9, in testY\ntestlib.Error: boom",
            output
        ));
        let avc = "audit(1712345678.123:99): avc:  denied { read } for pid=77 comm=\"a\"";
        assert!(pattern_matches(
            "audit(1.1:1): avc:  denied { read } for pid=1 comm",
            avc
        ));
    }

    #[test]
    fn literal_brackets_are_retried_as_question_marks() {
        let output = "[   12.345678] BUG: kernel NULL pointer dereference, address: 0000";
        // As a glob, `[   12.345678]` is one character out of ` .12345678`.
        assert!(pattern_matches(
            "[   12.345678] BUG: kernel NULL pointer",
            output
        ));
        assert!(pattern_matches("[*] BUG: kernel NULL*", output));
        // The retry replaces every `[`, classes included: `?a-z]` needs a literal `a-z]`.
        assert!(pattern_matches("x[a-z]y", "xby"));
        assert!(pattern_matches("x[a-z]y", "x_a-z]y"));
        assert!(!pattern_matches("x[a-z]y", "x_y"));
    }

    #[test]
    fn pixel_failures_never_match() {
        let output = "Error: timeout\nPixel test TestA-dialog-pixels.png failed: 30 pixels";
        assert!(!pattern_matches("Error: timeout", output));
        assert!(!pattern_matches("*", "New pixel test reference x.png"));
    }

    #[test]
    fn pattern_files_get_universal_newlines() {
        let c = Compiled::new(1, "os", Path::new("1-x"), "a\r\nb\rc\r\n").unwrap();
        assert_eq!(c.naughty.pattern, "a\nb\nc");
        assert!(c.is_match("xx a\nb\nc yy"));
    }

    #[test]
    fn empty_and_star_only_patterns_are_errors() {
        let compile = |text| Compiled::new(1, "os", Path::new("1-x"), text).map(|_| ());
        assert_eq!(compile(""), Err("the pattern is empty".into()));
        assert_eq!(compile(" \n\t\n"), Err("the pattern is empty".into()));
        assert!(
            compile("*")
                .unwrap_err()
                .contains("would match every failure")
        );
        assert!(
            compile("\n**\n")
                .unwrap_err()
                .contains("would match every failure")
        );
        assert!(compile("a*").is_ok());
    }
}
