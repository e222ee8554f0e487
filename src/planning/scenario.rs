//! CI scenarios: named selections of tests and options, declared in `test/scenarios.toml`
//! (not a shell `case`), chosen with `--scenario` or `$TEST_SCENARIO`.
//!
//! ```toml
//! [nondestructive]
//! description = "only the tests that share machines"
//! nondestructive = true
//!
//! [other]
//! exclude_matching = ["TestMulti", "TestReboot"]
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What a scenario selects and sets; empty lists select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    /// Substrings of `Class.method`: a test is kept if any matches (as positional filters).
    #[serde(default)]
    pub filters: Vec<String>,
    /// Exact test names to drop (as `--exclude`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Substrings of `Class.method`: a test is dropped if any matches.
    #[serde(default)]
    pub exclude_matching: Vec<String>,
    /// Only nondestructive tests (as `-n`).
    #[serde(default)]
    pub nondestructive: bool,
    /// No retries of failures (as `--no-retry-fail`).
    #[serde(default)]
    pub no_retry_fail: bool,
}

/// Load scenario `name` from `file`; an unknown name lists the known ones.
pub fn load(file: &Path, name: &str) -> Result<Scenario, String> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        format!(
            "unknown scenario '{name}': cannot read {}: {e}",
            file.display()
        )
    })?;
    let all = parse(file, &text)?;
    all.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = all.keys().map(String::as_str).collect();
        format!(
            "unknown scenario '{name}' (known scenarios in {}: {})",
            file.display(),
            known.join(", ")
        )
    })
}

/// Every scenario of a scenarios file (`text`, read from `file`); an error is
/// `file:line:col: message`.
pub fn parse(file: &Path, text: &str) -> Result<BTreeMap<String, Scenario>, String> {
    toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        format!("{}:{line}:{col}: {}", file.display(), e.message())
    })
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn loads_a_scenario() {
        let f = file("[nd]\nnondestructive = true\n\n[other]\nexclude_matching = [\"Multi\"]\n");
        let s = load(f.path(), "other").unwrap();
        assert_eq!(s.exclude_matching, ["Multi"]);
        assert!(load(f.path(), "nd").unwrap().nondestructive);
    }

    #[test]
    fn error_columns_count_characters() {
        let e = parse(Path::new("s.toml"), "[nd]\ndescription = \"\u{e9}\" x\n").unwrap_err();
        assert!(e.starts_with("s.toml:2:19: "), "{e}");
    }

    #[test]
    fn unknown_names_and_keys_are_errors() {
        let f = file("[nd]\nnondestructive = true\n[b]\n");
        let e = load(f.path(), "x").unwrap_err();
        assert!(
            e.contains("unknown scenario 'x'") && e.ends_with(": b, nd)"),
            "{e}"
        );
        let f = file("[nd]\nnondestructiv = true\n");
        let e = load(f.path(), "nd").unwrap_err();
        assert!(e.contains(":2:1: unknown field `nondestructiv`"), "{e}");
    }
}
