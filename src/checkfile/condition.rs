//! Conditions: `skip`, `only` and `todo` on TEST_OS and on a case's matrix values, and
//! `timeout` by matrix values.
//!
//! ```toml
//! skip = { os = ["rhel-*", "centos-*"], reason = "no podman there" }
//! only = { os = ["debian-*"], reason = "tests apt" }
//! skip = [{ matrix = { server = "busybox", fs = "xfs" }, reason = "no mkfs.xfs" },
//!         { os = ["arch"], reason = "no podman" }]
//! todo = "reason"                                   # or conditions, as skip
//! todo = { matrix = { fs = ["xfs", "btrfs"] }, reason = "quota bug #12" }
//! timeout = [{ matrix = { server = "debian-*" }, timeout = "15m" }, "5m"]
//! ```
//!
//! A condition is a table with `os` (a non-empty list of globs against TEST_OS), `matrix`
//! (axis → glob or list of globs against the case's value) or both, and a `reason`; it
//! holds when every part given matches. `skip`/`only`/`todo` take one condition or a list:
//! a test is skipped when any `skip` condition holds or when no `only` condition does, and
//! expected to fail when any `todo` condition holds (each time with the first such reason).
//! Matrix parts are decided per case when the file is read ([`Condition::for_case`]); what
//! is left is an [`OsCondition`], decided once TEST_OS is known. A skipped test stays in the
//! plan and is reported as skipped with its reason, without booting anything.

use super::duration::timeout;
use super::error::Diagnostics;
use super::glob::name_glob;
use super::keys::unknown_nested_key;
use super::matrix::Case;
use super::value::{Value, a_type, entries, non_empty_string, string_array, table};
use std::ops::Range;
use std::time::Duration;
use toml::de::DeValue;

/// A set of TEST_OS globs and why they matter; an empty set matches no TEST_OS.
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

    /// A condition that holds on every TEST_OS.
    pub fn always(reason: impl Into<String>) -> OsCondition {
        OsCondition {
            os: vec!["*".into()],
            reason: reason.into(),
        }
    }
}

/// The reason of the first condition that holds on `test_os`.
pub fn first_match<'a>(conditions: &'a [OsCondition], test_os: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.matches(test_os))
        .map(|c| c.reason.as_str())
}

/// One `matrix` part of a condition: the case's value for `key` matches one of `globs`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MatrixTerm {
    pub(super) key: String,
    pub(super) globs: Vec<String>,
    /// Where the key is written, for "not a matrix key" errors.
    pub(super) span: Range<usize>,
}

fn terms_match(terms: &[MatrixTerm], case: Option<&Case>) -> bool {
    terms.iter().all(|t| {
        case.and_then(|c| c.get(&t.key)).is_some_and(|value| {
            t.globs
                .iter()
                .filter_map(|g| name_glob(g).ok())
                .any(|g| g.is_match(value))
        })
    })
}

/// A condition as written.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    /// TEST_OS globs; `None`: any TEST_OS.
    pub(super) os: Option<Vec<String>>,
    pub(super) matrix: Vec<MatrixTerm>,
    pub(super) reason: String,
}

impl Condition {
    /// What is left to decide for `case` (`None`: a test without a matrix): the TEST_OS
    /// part, which matches nothing when the case's values do not match.
    pub(super) fn for_case(&self, case: Option<&Case>) -> OsCondition {
        let os = if terms_match(&self.matrix, case) {
            self.os.clone().unwrap_or_else(|| vec!["*".into()])
        } else {
            vec![]
        };
        OsCondition {
            os,
            reason: self.reason.clone(),
        }
    }
}

/// `timeout`: one duration, or rules by matrix values (the first that holds wins) with an
/// optional duration for the cases no rule holds for.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Timeouts {
    pub(super) rules: Vec<(Vec<MatrixTerm>, Duration)>,
    pub(super) otherwise: Option<Duration>,
}

impl Timeouts {
    pub(super) fn for_case(&self, case: Option<&Case>) -> Option<Duration> {
        self.rules
            .iter()
            .find(|(terms, _)| terms_match(terms, case))
            .map(|(_, d)| *d)
            .or(self.otherwise)
    }

    /// Every matrix term, for checking that the keys exist.
    pub(super) fn terms(&self) -> impl Iterator<Item = &MatrixTerm> {
        self.rules.iter().flat_map(|(terms, _)| terms)
    }
}

const CONDITION_KEYS: &[&str] = &["os", "matrix", "reason"];
const TIMEOUT_KEYS: &[&str] = &["matrix", "timeout"];

/// Parses `skip`, `only` or (with `plain_reason`, where a string is a reason that always
/// holds) `todo`: one condition or a list of them.
pub(super) fn conditions(
    d: &mut Diagnostics,
    key: &str,
    value: &Value,
    plain_reason: bool,
) -> Option<Vec<Condition>> {
    match value.get_ref() {
        DeValue::String(_) if plain_reason => {
            let reason = non_empty_string(d, key, value, ": give the reason it fails")?;
            Some(vec![Condition {
                os: None,
                matrix: vec![],
                reason,
            }])
        }
        DeValue::Array(items) => {
            if items.is_empty() {
                d.error(
                    value.span(),
                    format!("'{key}' is an empty list of conditions"),
                );
                return None;
            }
            let parsed: Vec<_> = items.iter().map(|v| condition(d, key, v)).collect();
            parsed.into_iter().collect()
        }
        DeValue::Table(_) => condition(d, key, value).map(|c| vec![c]),
        other if plain_reason => {
            d.error(
                value.span(),
                format!(
                    "'{key}' must be the reason it fails (a string) or conditions like \
                     {{ os = [\"debian-*\"], reason = \"…\" }}, found {}",
                    a_type(other)
                ),
            );
            None
        }
        _ => condition(d, key, value).map(|c| vec![c]),
    }
}

/// One condition table.
fn condition(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Condition> {
    let expected = "a table like { os = [\"debian-*\"], reason = \"…\" }";
    let fields = table(d, key, value, expected)?;
    let (mut os, mut matrix, mut reason) = (None, None, None);
    let mut ok = true;
    for (field_key, field) in entries(fields) {
        match field_key.get_ref().as_ref() {
            "os" => os = Some(os_globs(d, &format!("{key}.os"), field)),
            "matrix" => matrix = Some(matrix_terms(d, &format!("{key}.matrix"), field)),
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
    if os.is_none() && matrix.is_none() {
        d.error(
            value.span(),
            format!(
                "'{key}' needs 'os', a list of TEST_OS globs (e.g. os = [\"debian-*\"]), or \
                 'matrix', values of the test's matrix (e.g. matrix = {{ fs = \"xfs\" }})"
            ),
        );
        ok = false;
    }
    if reason.is_none() {
        d.error(value.span(), format!("'{key}' needs a 'reason'"));
    }
    let condition = Condition {
        os: match os {
            Some(os) => Some(os?),
            None => None,
        },
        matrix: match matrix {
            Some(m) => m?,
            None => vec![],
        },
        reason: reason.flatten()?,
    };
    ok.then_some(condition)
}

/// Parses `timeout`: a duration, or a list of `{ matrix = {…}, timeout = … }` rules that
/// may end with a duration.
pub(super) fn timeouts(d: &mut Diagnostics, value: &Value) -> Option<Timeouts> {
    let DeValue::Array(items) = value.get_ref() else {
        return timeout(d, "timeout", value).map(|t| Timeouts {
            rules: vec![],
            otherwise: Some(t),
        });
    };
    let mut result = Timeouts {
        rules: vec![],
        otherwise: None,
    };
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let DeValue::Table(fields) = item.get_ref() else {
            if i + 1 == items.len() {
                result.otherwise = timeout(d, "timeout", item);
                ok &= result.otherwise.is_some();
            } else {
                d.error(
                    item.span(),
                    format!(
                        "'timeout' rules are tables like {{ matrix = {{ fs = \"xfs\" }}, timeout = \"15m\" }}, \
                         found {} (only the last item may be a plain duration)",
                        a_type(item.get_ref())
                    ),
                );
                ok = false;
            }
            continue;
        };
        let (mut terms, mut duration) = (None, None);
        for (field_key, field) in entries(fields) {
            match field_key.get_ref().as_ref() {
                "matrix" => terms = Some(matrix_terms(d, "timeout.matrix", field)),
                "timeout" => duration = Some(timeout(d, "timeout.timeout", field)),
                _ => {
                    unknown_nested_key(d, "timeout", field_key, TIMEOUT_KEYS);
                    ok = false;
                }
            }
        }
        match (terms, duration) {
            (Some(Some(terms)), Some(Some(duration))) => result.rules.push((terms, duration)),
            (t, dur) => {
                if t.is_none() {
                    d.error(
                        item.span(),
                        "a 'timeout' rule needs 'matrix', the values it is for",
                    );
                }
                if dur.is_none() {
                    d.error(
                        item.span(),
                        "a 'timeout' rule needs 'timeout', e.g. \"15m\"",
                    );
                }
                ok = false;
            }
        }
    }
    if items.is_empty() {
        d.error(value.span(), "'timeout' is an empty list of rules");
        ok = false;
    }
    ok.then_some(result)
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
    globs_checked(d, key, globs)
}

fn globs_checked(
    d: &mut Diagnostics,
    key: &str,
    globs: Vec<(&str, Range<usize>)>,
) -> Option<Vec<String>> {
    let mut ok = true;
    for (pattern, span) in &globs {
        if let Err(why) = name_glob(pattern) {
            d.error(span.clone(), format!("'{key}': {why}"));
            ok = false;
        }
    }
    ok.then(|| globs.into_iter().map(|(s, _)| s.to_owned()).collect())
}

/// `matrix = { key = "glob" | ["glob", …], … }` of a condition.
fn matrix_terms(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Vec<MatrixTerm>> {
    let fields = table(
        d,
        key,
        value,
        "a table of matrix values, e.g. { fs = \"xfs\", server = [\"debian-*\"] }",
    )?;
    if fields.is_empty() {
        d.error(value.span(), format!("'{key}' names no matrix key"));
        return None;
    }
    let mut terms = Vec::new();
    let mut ok = true;
    for (term_key, term) in entries(fields) {
        let name: &str = term_key.get_ref();
        let path = format!("{key}.{name}");
        let globs = match term.get_ref() {
            DeValue::String(s) => Some(vec![(s.as_ref(), term.span())]),
            DeValue::Array(_) => string_array(d, &path, term).filter(|g| {
                if g.is_empty() {
                    d.error(
                        term.span(),
                        format!("'{path}' must list at least one value"),
                    );
                }
                !g.is_empty()
            }),
            other => {
                d.error(
                    term.span(),
                    format!(
                        "'{path}' must be a value or a list of values (globs), found {}",
                        a_type(other)
                    ),
                );
                None
            }
        };
        match globs.and_then(|g| globs_checked(d, &path, g)) {
            Some(globs) => terms.push(MatrixTerm {
                key: name.to_owned(),
                globs,
                span: term_key.span(),
            }),
            None => ok = false,
        }
    }
    ok.then_some(terms)
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
        let result = conditions(&mut d, "skip", value, false).map(|c| c[0].for_case(None));
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
        let cases: [(&str, Expected); 12] = [
            (
                "skip = \"rhel-*\"",
                &[(
                    1,
                    8,
                    "'skip' must be a table like { os = [\"debian-*\"], reason = \"…\" }, found a string",
                )],
            ),
            (
                "skip = { reason = \"x\" }",
                &[(1, 8, "'skip' needs 'os', a list of TEST_OS globs")],
            ),
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
                &[(
                    1,
                    36,
                    "unknown key 'images' in 'skip' (valid: os, matrix, reason)",
                )],
            ),
            (
                "skip = []",
                &[(1, 8, "'skip' is an empty list of conditions")],
            ),
            (
                "skip = { matrix = {}, reason = \"x\" }",
                &[(1, 19, "'skip.matrix' names no matrix key")],
            ),
            (
                "skip = { matrix = { fs = 1 }, reason = \"x\" }",
                &[(
                    1,
                    26,
                    "'skip.matrix.fs' must be a value or a list of values (globs), found an integer",
                )],
            ),
            (
                "skip = [{ os = [\"a\"], reason = \"x\" }, \"y\"]",
                &[(1, 39, "'skip' must be a table like")],
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

    /// `(reason per case)` of `text`'s `key` for each case given as `k=v` pairs.
    fn resolved(text: &str, key: &str, case: &[(&str, &str)], test_os: &str) -> Option<String> {
        let doc = DeTable::parse(text).unwrap();
        let value = doc.get_ref().get(key).unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let parsed = conditions(&mut d, key, value, key == "todo").unwrap();
        assert!(d.finish().is_empty());
        let case = Case::new(
            case.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let os: Vec<OsCondition> = parsed.iter().map(|c| c.for_case(Some(&case))).collect();
        first_match(&os, test_os).map(str::to_owned)
    }

    #[test]
    fn matrix_conditions_hold_per_case() {
        let skip = r#"skip = [{ matrix = { server = "busybox", fs = ["xfs", "btr*"] }, reason = "no mkfs" },
                    { os = ["arch"], matrix = { fs = "ext4" }, reason = "arch ext4" }]"#;
        let cases = [
            (
                &[("server", "busybox"), ("fs", "xfs")][..],
                "debian-12",
                Some("no mkfs"),
            ),
            (
                &[("server", "busybox"), ("fs", "btrfs")][..],
                "debian-12",
                Some("no mkfs"),
            ),
            (
                &[("server", "debian"), ("fs", "xfs")][..],
                "debian-12",
                None,
            ),
            (
                &[("server", "busybox"), ("fs", "ext4")][..],
                "debian-12",
                None,
            ),
            (
                &[("server", "busybox"), ("fs", "ext4")][..],
                "arch",
                Some("arch ext4"),
            ),
            // A case without the key does not match.
            (&[("server", "busybox")][..], "arch", None),
        ];
        for (case, os, want) in cases {
            assert_eq!(
                resolved(skip, "skip", case, os).as_deref(),
                want,
                "{case:?} {os}"
            );
        }
        assert_eq!(
            resolved("todo = \"always\"", "todo", &[], "x").as_deref(),
            Some("always")
        );
    }

    #[test]
    fn timeouts_by_matrix_values() {
        let text = r#"timeout = [{ matrix = { server = "debian-*" }, timeout = "15m" }, "5m"]"#;
        let doc = DeTable::parse(text).unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let t = timeouts(&mut d, doc.get_ref().get("timeout").unwrap()).unwrap();
        let case = |v: &str| Case::new([("server".to_string(), v.to_string())].into());
        assert_eq!(
            t.for_case(Some(&case("debian-12"))),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            t.for_case(Some(&case("busybox"))),
            Some(Duration::from_secs(300))
        );
        assert_eq!(t.for_case(None), Some(Duration::from_secs(300)));
        for (bad, want) in [
            (
                "timeout = [\"5m\", { matrix = { a = \"b\" }, timeout = 1 }]",
                "only the last item may be a plain duration",
            ),
            (
                "timeout = [{ matrix = { a = \"b\" } }]",
                "a 'timeout' rule needs 'timeout'",
            ),
            (
                "timeout = [{ timeout = 5 }]",
                "a 'timeout' rule needs 'matrix'",
            ),
            ("timeout = []", "'timeout' is an empty list of rules"),
        ] {
            let doc = DeTable::parse(bad).unwrap();
            let mut d = Diagnostics::new(Path::new("f"), bad);
            assert!(timeouts(&mut d, doc.get_ref().get("timeout").unwrap()).is_none());
            let e = d.finish();
            assert!(e.iter().any(|e| e.message.contains(want)), "{bad}: {e:?}");
        }
    }
}
