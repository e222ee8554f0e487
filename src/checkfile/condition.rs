//! The `skip` and `only` settings: a condition on TEST_OS, [`OsCondition`].
//!
//! ```toml
//! skip = { os = ["rhel-*", "centos-*"], reason = "no podman there" }
//! only = { os = ["debian-*"], reason = "tests apt" }
//! ```
//!
//! `os` is a non-empty list of globs (`*`, `?`, `[..]`) matched against the whole TEST_OS
//! name; `reason` is required. A skipped test stays in the plan and is reported as skipped
//! with `"<TEST_OS>: <reason>"`, without booting anything.

use super::error::Diagnostics;
use super::glob::name_glob;
use super::keys::unknown_nested_key;
use super::value::{Value, entries, non_empty_string, string_array, table};

/// A set of TEST_OS globs and why they matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsCondition {
    pub os: Vec<String>,
    pub reason: String,
}

impl OsCondition {
    /// Whether any glob matches `test_os`. A glob that does not compile (impossible for a
    /// parsed condition) matches nothing.
    pub fn matches(&self, test_os: &str) -> bool {
        self.os
            .iter()
            .filter_map(|pattern| name_glob(pattern).ok())
            .any(|glob| glob.is_match(test_os))
    }
}

const CONDITION_KEYS: &[&str] = &["os", "reason"];

/// Parses `skip` or `only` (`key`).
pub(super) fn condition(d: &mut Diagnostics, key: &str, value: &Value) -> Option<OsCondition> {
    let expected = "a table like { os = [\"debian-*\"], reason = \"…\" }";
    let fields = table(d, key, value, expected)?;
    let (mut os, mut reason) = (None, None);
    let mut ok = true;
    for (field_key, field) in entries(fields) {
        match field_key.get_ref().as_ref() {
            "os" => os = Some(os_globs(d, &format!("{key}.os"), field)),
            "reason" => {
                reason = Some(non_empty_string(
                    d,
                    &format!("{key}.reason"),
                    field,
                    ": say why",
                ))
            }
            _ => {
                unknown_nested_key(d, key, field_key, CONDITION_KEYS);
                ok = false;
            }
        }
    }
    if os.is_none() {
        d.error(
            value.span(),
            format!("'{key}' needs 'os', a list of TEST_OS globs, e.g. os = [\"debian-*\"]"),
        );
    }
    if reason.is_none() {
        d.error(value.span(), format!("'{key}' needs a 'reason'"));
    }
    let condition = OsCondition {
        os: os.flatten()?,
        reason: reason.flatten()?,
    };
    ok.then_some(condition)
}

fn os_globs(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Vec<String>> {
    let globs = string_array(d, key, value)?;
    if globs.is_empty() {
        d.error(
            value.span(),
            format!("'{key}' must list at least one TEST_OS glob"),
        );
        return None;
    }
    let mut ok = true;
    for (pattern, span) in &globs {
        if let Err(why) = name_glob(pattern) {
            d.error(span.clone(), format!("'{key}': {why}"));
            ok = false;
        }
    }
    ok.then(|| globs.into_iter().map(|(s, _)| s.to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use toml::de::DeTable;

    fn parse(text: &str) -> Result<OsCondition, Vec<(usize, usize, String)>> {
        let doc = DeTable::parse(text).unwrap();
        let value = doc.get_ref().get("skip").unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let result = condition(&mut d, "skip", value);
        let errors: Vec<_> = d
            .finish()
            .into_iter()
            .map(|e| (e.line, e.col, e.message))
            .collect();
        match result {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(errors),
        }
    }

    #[test]
    fn valid_and_matching() {
        let c =
            parse("skip = { os = [\"rhel-*\", \"fedora-4?\"], reason = \"no podman\" }").unwrap();
        assert_eq!(c.os, ["rhel-*", "fedora-4?"]);
        assert_eq!(c.reason, "no podman");
        let cases = [
            ("rhel-9-4", true),
            ("fedora-40", true),
            ("fedora-400", false),
            ("debian-12", false),
        ];
        for (os, expected) in cases {
            assert_eq!(c.matches(os), expected, "{os}");
        }
    }

    /// Each error as (line, column, start of the message).
    type Expected<'a> = &'a [(usize, usize, &'a str)];

    #[test]
    fn invalid() {
        let cases: [(&str, Expected); 8] = [
            (
                "skip = \"rhel-*\"",
                &[(
                    1,
                    8,
                    "'skip' must be a table like { os = [\"debian-*\"], reason = \"…\" }, found a string",
                )],
            ),
            ("skip = { reason = \"x\" }", &[(1, 8, "'skip' needs 'os'")]),
            (
                "skip = { os = [\"a\"] }",
                &[(1, 8, "'skip' needs a 'reason'")],
            ),
            (
                "skip = { os = [], reason = \"x\" }",
                &[(1, 15, "'skip.os' must list at least one TEST_OS glob")],
            ),
            (
                "skip = { os = \"a\", reason = \"x\" }",
                &[(
                    1,
                    15,
                    "'skip.os' must be an array of strings, found a string",
                )],
            ),
            (
                "skip = { os = [\"a\", \"b[\"], reason = \"x\" }",
                &[(
                    1,
                    21,
                    "'skip.os': invalid glob \"b[\": unclosed character class",
                )],
            ),
            (
                "skip = { os = [\"a\"], reason = \"\" }",
                &[(1, 31, "'skip.reason' must not be empty: say why")],
            ),
            (
                "skip = { os = [\"a\"], reason = \"x\", images = [] }",
                &[(1, 36, "unknown key 'images' in 'skip' (valid: os, reason)")],
            ),
        ];
        for (text, expected) in cases {
            let errors = parse(text).unwrap_err();
            assert_eq!(errors.len(), expected.len(), "{text}: {errors:?}");
            for ((line, col, message), (eline, ecol, emessage)) in errors.iter().zip(expected) {
                assert_eq!((line, col), (eline, ecol), "{text}: {message}");
                assert!(message.contains(emessage), "{text}: {message}");
            }
        }
    }
}
