//! Test matrices: the `matrix`, `matrix_exclude`, `matrix_include` and `matrix_limit`
//! settings, and their expansion into cases ([`Case`]), each a test of its own with a
//! stable id (`TestClass.testMethod[fs=ext4,server=busybox]`).
//!
//! ```toml
//! matrix = { server = ["busybox", "debian-12"], fs = ["ext4", "xfs"] }
//! matrix_exclude = [{ server = "busybox", fs = "xfs" }]
//! matrix_include = [{ fs = "xfs", mkfs = "mkfs.xfs -f" }, { server = "debian-13" }]
//! matrix_limit = 2000        # most cases one test may have (default 1000)
//! ```
//!
//! The cases are the product of the axes (the first axis varies slowest), then GitHub
//! Actions' rules: an exclude entry removes every case whose values match all of its
//! pairs (a partial match); an include entry adds its pairs that are not axes to every
//! remaining product case whose axis values it does not contradict, and when it can be
//! added to none, it is a case of its own. Only the axis values (and all of an included
//! case's own values) make the id, keys sorted, so adding a value to an axis or an
//! include pair to existing cases changes no existing id.
//!
//! Axis names are `^[a-z][a-z0-9_]*$` (so that `VMCHECK_MATRIX_<NAME>` is a variable
//! name), not `os` (TEST_OS) or `repeat` (`run --repeat`). Values are strings, integers
//! or booleans, written in ids as they print: ASCII letters, digits and `._+:@-`, so that
//! an id is one word in every report and file name.

use super::error::Diagnostics;
use super::value::{Value, a_type, entries, integer, integer_in, table};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::de::DeValue;

/// Most cases one test may have unless `matrix_limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;
/// Largest `matrix_limit`.
const MAX_LIMIT: i64 = 1_000_000;
/// Keys no axis may have: they name TEST_OS and `run --repeat`'s runs.
const RESERVED: &[&str] = &["os", "repeat"];

/// One case of a test's matrix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Case {
    /// The values that make the case's id: its axis values (every value of a case that
    /// `matrix_include` added on its own).
    id_values: BTreeMap<String, String>,
    /// `id_values` written out once (ids are asked for in every report).
    id: String,
    /// Values `matrix_include` added to a product case: not part of its id.
    pub extra: BTreeMap<String, String>,
}

impl Case {
    /// The case with these id values (and nothing added yet).
    pub fn new(id_values: BTreeMap<String, String>) -> Case {
        let mut id = String::new();
        for (k, v) in &id_values {
            if !id.is_empty() {
                id.push(',');
            }
            id.push_str(k);
            id.push('=');
            id.push_str(v);
        }
        Case {
            id_values,
            id,
            extra: BTreeMap::new(),
        }
    }

    /// `fs=ext4,server=busybox`: the id values, keys sorted.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The values that make the id.
    pub fn id_values(&self) -> &BTreeMap<String, String> {
        &self.id_values
    }

    /// The case's value for `key`, an axis or an included pair.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.id_values
            .get(key)
            .or_else(|| self.extra.get(key))
            .map(String::as_str)
    }
}

/// A case name's matrix part split off: `T.m[fs=ext4]` → (`T.m`, Some(`fs=ext4`)).
/// A `[repeat=K]` suffix must have been split off first.
pub fn split_case(name: &str) -> (&str, Option<&str>) {
    if let Some(base) = name.strip_suffix(']')
        && let Some((base, id)) = base.rsplit_once('[')
        && id.contains('=')
        && !id.starts_with("repeat=")
    {
        return (base, Some(id));
    }
    (name, None)
}

/// `matrix`: the axes in the order written, and where the value is.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Axes {
    pub(super) axes: Vec<(String, Vec<String>)>,
    pub(super) span: Range<usize>,
}

/// One entry of `matrix_exclude` or `matrix_include`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Combination {
    pub(super) values: BTreeMap<String, String>,
    /// Where each key is written.
    pub(super) keys: BTreeMap<String, Range<usize>>,
    pub(super) span: Range<usize>,
}

/// `^[a-z][a-z0-9_]*$`
fn is_axis_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `^[A-Za-z0-9._+:@-]+$`
fn is_axis_value(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+:@-".contains(c))
}

/// A key of `matrix` or of an exclude/include entry, checked; records the error.
fn axis_key(d: &mut Diagnostics, setting: &str, name: &str, span: Range<usize>) -> bool {
    if RESERVED.contains(&name) {
        let what = if name == "os" {
            "TEST_OS (condition on it with skip/only = { os = [...] })"
        } else {
            "the runs of `run --repeat`"
        };
        d.error(
            span,
            format!("'{setting}': '{name}' cannot be a matrix key: it names {what}"),
        );
        false
    } else if !is_axis_name(name) {
        d.error(
            span,
            format!(
                "'{setting}': invalid matrix key '{name}': keys are a lowercase ASCII letter \
                 followed by lowercase letters, digits and '_'"
            ),
        );
        false
    } else {
        true
    }
}

/// One value (a string, an integer or a boolean) as the text ids and variables show.
pub(super) fn axis_value(d: &mut Diagnostics, key: &str, value: &Value) -> Option<String> {
    let text = match value.get_ref() {
        DeValue::String(s) => s.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        v @ DeValue::Integer(_) => match integer(v) {
            Some(n) => n.to_string(),
            None => {
                d.error(value.span(), format!("'{key}': the integer is too large"));
                return None;
            }
        },
        other => {
            d.error(
                value.span(),
                format!(
                    "'{key}' values must be strings, integers or booleans, found {}",
                    a_type(other)
                ),
            );
            return None;
        }
    };
    if !is_axis_value(&text) {
        d.error(
            value.span(),
            format!(
                "'{key}': invalid value {text:?}: matrix values are ASCII letters, digits and \
                 '.', '_', '+', ':', '@', '-' (they are part of test ids)"
            ),
        );
        return None;
    }
    Some(text)
}

/// Parses `matrix`: a table of axes, each a non-empty array of distinct values.
pub(super) fn axes(d: &mut Diagnostics, value: &Value) -> Option<Axes> {
    let expected = "a table of axes, e.g. matrix = { fs = [\"ext4\", \"xfs\"] }";
    let fields = table(d, "matrix", value, expected)?;
    if fields.is_empty() {
        d.error(
            value.span(),
            format!("'matrix' has no axes: it must be {expected}"),
        );
        return None;
    }
    let mut axes = Vec::new();
    let mut ok = true;
    for (key, values) in entries(fields) {
        let name: &str = key.get_ref();
        let setting = format!("matrix.{name}");
        if !axis_key(d, "matrix", name, key.span()) {
            ok = false;
            continue;
        }
        let DeValue::Array(array) = values.get_ref() else {
            d.error(
                values.span(),
                format!(
                    "'{setting}' must be an array of values, found {}",
                    a_type(values.get_ref())
                ),
            );
            ok = false;
            continue;
        };
        if array.is_empty() {
            d.error(
                values.span(),
                format!("'{setting}' is empty: an axis needs at least one value"),
            );
            ok = false;
            continue;
        }
        let mut seen = BTreeSet::new();
        let mut list = Vec::new();
        for element in array.iter() {
            match axis_value(d, &setting, element) {
                Some(v) if !seen.insert(v.clone()) => {
                    d.error(
                        element.span(),
                        format!("'{setting}': {v:?} is listed twice (the ids would repeat)"),
                    );
                    ok = false;
                }
                Some(v) => list.push(v),
                None => ok = false,
            }
        }
        axes.push((name.to_owned(), list));
    }
    ok.then(|| Axes {
        axes,
        span: value.span(),
    })
}

/// Parses `matrix_exclude` or `matrix_include` (`setting`): an array of tables of values.
pub(super) fn combinations(
    d: &mut Diagnostics,
    setting: &str,
    value: &Value,
) -> Option<Vec<Combination>> {
    let expected = "an array of tables, e.g. [{ fs = \"xfs\", server = \"busybox\" }]";
    let DeValue::Array(array) = value.get_ref() else {
        d.error(
            value.span(),
            format!(
                "'{setting}' must be {expected}, found {}",
                a_type(value.get_ref())
            ),
        );
        return None;
    };
    let mut result = Vec::new();
    let mut ok = true;
    for element in array.iter() {
        let Some(pairs) = table(d, setting, element, expected) else {
            ok = false;
            continue;
        };
        if pairs.is_empty() {
            d.error(element.span(), format!("'{setting}': an empty entry"));
            ok = false;
            continue;
        }
        let mut combination = Combination {
            values: BTreeMap::new(),
            keys: BTreeMap::new(),
            span: element.span(),
        };
        for (key, v) in entries(pairs) {
            let name: &str = key.get_ref();
            if !axis_key(d, setting, name, key.span()) {
                ok = false;
                continue;
            }
            match axis_value(d, &format!("{setting}.{name}"), v) {
                Some(v) => {
                    combination.values.insert(name.to_owned(), v);
                    combination.keys.insert(name.to_owned(), key.span());
                }
                None => ok = false,
            }
        }
        result.push(combination);
    }
    ok.then_some(result)
}

/// Parses `matrix_limit`.
pub(super) fn limit(d: &mut Diagnostics, value: &Value) -> Option<usize> {
    integer_in(d, "matrix_limit", value, 1..=MAX_LIMIT).map(|n| n as usize)
}

/// What one test's matrix settings are, as resolved from its levels.
pub(super) struct Declared<'a> {
    pub(super) axes: &'a Axes,
    pub(super) exclude: &'a [Combination],
    pub(super) include: &'a [Combination],
    pub(super) limit: usize,
}

/// A problem of one test's matrix, at a position of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Problem {
    pub(super) span: Range<usize>,
    pub(super) message: String,
    /// A warning (the cases are still made), not an error.
    pub(super) warning: bool,
}

/// The cases of a test's matrix, in order: the product cases (first axis slowest) that no
/// exclude entry removed, then the cases include entries added; or the problems.
pub(super) fn expand(m: &Declared) -> (Vec<Case>, Vec<Problem>) {
    let mut problems = Vec::new();
    let error = |span: Range<usize>, message: String| Problem {
        span,
        message,
        warning: false,
    };
    let axis_names: BTreeSet<&str> = m.axes.axes.iter().map(|(k, _)| k.as_str()).collect();
    let count = m
        .axes
        .axes
        .iter()
        .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()));
    let over = |n: usize| {
        format!(
            "the matrix has {n} cases, more than the limit of {}: set matrix_limit to allow more",
            m.limit
        )
    };
    match count {
        Some(n) if n <= m.limit => {}
        Some(n) => return (vec![], vec![error(m.axes.span.clone(), over(n))]),
        None => return (vec![], vec![error(m.axes.span.clone(), over(usize::MAX))]),
    }
    for entry in m.exclude {
        for (key, span) in &entry.keys {
            if !axis_names.contains(key.as_str()) {
                problems.push(error(
                    span.clone(),
                    format!(
                        "'matrix_exclude': '{key}' is not an axis of the matrix (axes: {})",
                        axis_names.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
    }
    if !problems.is_empty() {
        return (vec![], problems);
    }

    // The product, first axis slowest.
    let mut product: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (name, values) in &m.axes.axes {
        product = product
            .into_iter()
            .flat_map(|case| {
                values.iter().map(move |v| {
                    let mut case = case.clone();
                    case.insert(name.clone(), v.clone());
                    case
                })
            })
            .collect();
    }
    let matches = |case: &BTreeMap<String, String>, entry: &Combination| {
        entry
            .values
            .iter()
            .all(|(k, v)| case.get(k).is_none_or(|c| c == v))
    };
    let mut cases: Vec<Case> = Vec::with_capacity(product.len());
    let mut excluded_by = vec![false; m.exclude.len()];
    for values in product {
        match m.exclude.iter().position(|e| matches(&values, e)) {
            Some(i) => {
                excluded_by[i] = true;
                for (j, e) in m.exclude.iter().enumerate().skip(i + 1) {
                    excluded_by[j] |= matches(&values, e);
                }
            }
            None => cases.push(Case::new(values)),
        }
    }
    for (entry, used) in m.exclude.iter().zip(excluded_by) {
        if !used {
            problems.push(Problem {
                span: entry.span.clone(),
                message: "'matrix_exclude': this entry matches no case of the matrix".into(),
                warning: true,
            });
        }
    }
    let products = cases.len();
    for entry in m.include {
        let mut added = false;
        for case in &mut cases[..products] {
            if matches(&case.id_values, entry) {
                for (k, v) in &entry.values {
                    if !axis_names.contains(k.as_str()) {
                        case.extra.insert(k.clone(), v.clone());
                    }
                }
                added = true;
            }
        }
        if !added {
            let case = Case::new(entry.values.clone());
            if cases.contains(&case) {
                problems.push(error(
                    entry.span.clone(),
                    format!(
                        "'matrix_include': the case [{}] is already in the matrix",
                        case.id()
                    ),
                ));
                continue;
            }
            cases.push(case);
        }
    }
    if cases.len() > m.limit {
        return (vec![], vec![error(m.axes.span.clone(), over(cases.len()))]);
    }
    (cases, problems)
}

/// A value that may name matrix values, `"{matrix.server}"`, with each one replaced by the
/// case's value; `Err` names a key the case has no value for.
pub(super) fn substitute(text: &str, case: Option<&Case>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{matrix.") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{matrix.".len()..];
        let Some(end) = after.find('}') else {
            return Err("'{matrix.' is not closed with '}'".into());
        };
        let key = &after[..end];
        match case.and_then(|c| c.get(key)) {
            Some(v) => out.push_str(v),
            None => return Err(key.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The matrix keys a value refers to (`{matrix.KEY}`), in order.
pub(super) fn references(text: &str) -> Vec<&str> {
    let mut keys = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{matrix.") {
        let after = &rest[start + "{matrix.".len()..];
        let Some(end) = after.find('}') else { break };
        keys.push(&after[..end]);
        rest = &after[end + 1..];
    }
    keys
}

/// Every key the cases have a value for.
pub(super) fn keys(cases: &[Case]) -> BTreeSet<&str> {
    cases
        .iter()
        .flat_map(|c| c.id_values.keys().chain(c.extra.keys()))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use toml::de::DeTable;

    /// The cases (as `id [+extra]`) and problems (`line:col: message`) of a test whose
    /// settings are `text`.
    fn run(text: &str) -> (Vec<String>, Vec<String>) {
        let doc = DeTable::parse(text).unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let get = |k: &str| doc.get_ref().get(k);
        let axes = axes(&mut d, get("matrix").unwrap());
        let exclude = get("matrix_exclude")
            .map(|v| combinations(&mut d, "matrix_exclude", v).unwrap_or_default())
            .unwrap_or_default();
        let include = get("matrix_include")
            .map(|v| combinations(&mut d, "matrix_include", v).unwrap_or_default())
            .unwrap_or_default();
        let limit = get("matrix_limit")
            .and_then(|v| limit(&mut d, v))
            .unwrap_or(DEFAULT_LIMIT);
        let mut problems: Vec<String> = Vec::new();
        let mut cases = Vec::new();
        if let Some(axes) = &axes {
            let (c, p) = expand(&Declared {
                axes,
                exclude: &exclude,
                include: &include,
                limit,
            });
            cases = c
                .iter()
                .map(|c| {
                    let extra: Vec<String> =
                        c.extra.iter().map(|(k, v)| format!("+{k}={v}")).collect();
                    format!("{} {}", c.id(), extra.join(" ")).trim().to_owned()
                })
                .collect();
            for p in p {
                let (line, col) = d.position(p.span.start);
                let kind = if p.warning { "warning: " } else { "" };
                problems.push(format!("{line}:{col}: {kind}{}", p.message));
            }
        }
        for e in d.finish() {
            problems.push(format!("{}:{}: {}", e.line, e.col, e.message));
        }
        (cases, problems)
    }

    #[test]
    fn the_product_first_axis_slowest_with_sorted_ids() {
        let (cases, problems) =
            run("matrix = { server = [\"busybox\", \"debian-12\"], fs = [\"ext4\", \"xfs\"] }");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cases,
            [
                "fs=ext4,server=busybox",
                "fs=xfs,server=busybox",
                "fs=ext4,server=debian-12",
                "fs=xfs,server=debian-12"
            ]
        );
    }

    #[test]
    fn github_actions_include_and_exclude() {
        // GitHub Actions' documented example ("Expanding or adding matrix configurations"):
        // {apple, cat, pink, circle}, {apple, dog, green, circle}, {pear, cat, pink},
        // {pear, dog, green}, {banana}, {banana, cat}.
        let (cases, problems) = run(r#"
matrix = { fruit = ["apple", "pear"], animal = ["cat", "dog"] }
matrix_include = [
  { color = "green" },
  { color = "pink", animal = "cat" },
  { fruit = "apple", shape = "circle" },
  { fruit = "banana" },
  { fruit = "banana", animal = "cat" },
]
"#);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cases,
            [
                "animal=cat,fruit=apple +color=pink +shape=circle",
                "animal=dog,fruit=apple +color=green +shape=circle",
                "animal=cat,fruit=pear +color=pink",
                "animal=dog,fruit=pear +color=green",
                "fruit=banana",
                "animal=cat,fruit=banana",
            ]
        );
        // Partial matches exclude; an entry that matches nothing is a warning.
        let (cases, problems) = run(r#"
matrix = { os = ["a"] }
"#);
        assert!(cases.is_empty());
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("'os' cannot be a matrix key"),
            "{problems:?}"
        );
        let (cases, problems) = run(r#"
matrix = { a = [1, 2], b = [true, false] }
matrix_exclude = [{ a = 1 }, { b = "maybe" }]
"#);
        assert_eq!(cases, ["a=2,b=true", "a=2,b=false"]);
        assert_eq!(
            problems,
            ["3:30: warning: 'matrix_exclude': this entry matches no case of the matrix"]
        );
    }

    #[test]
    fn adding_a_value_keeps_every_existing_id() {
        let before = run("matrix = { a = [\"x\", \"y\"], b = [\"1\"] }\nmatrix_include = [{ a = \"x\", c = \"3\" }]").0;
        let after = run("matrix = { a = [\"x\", \"y\", \"z\"], b = [\"1\"] }\nmatrix_include = [{ a = \"x\", c = \"3\" }, { d = \"4\" }]").0;
        let ids = |cases: &[String]| -> Vec<String> {
            cases
                .iter()
                .map(|c| c.split(' ').next().unwrap().to_owned())
                .collect()
        };
        for id in ids(&before) {
            assert!(ids(&after).contains(&id), "{id} in {after:?}");
        }
    }

    #[test]
    fn bad_matrices_are_errors_at_their_place() {
        let cases = [
            ("matrix = {}", "1:10: 'matrix' has no axes"),
            ("matrix = { a = [] }", "1:16: 'matrix.a' is empty"),
            (
                "matrix = { a = \"x\" }",
                "1:16: 'matrix.a' must be an array of values, found a string",
            ),
            (
                "matrix = { A = [\"x\"] }",
                "1:12: 'matrix': invalid matrix key 'A'",
            ),
            (
                "matrix = { repeat = [\"x\"] }",
                "1:12: 'matrix': 'repeat' cannot be a matrix key",
            ),
            (
                "matrix = { a = [\"x\", \"x\"] }",
                "1:22: 'matrix.a': \"x\" is listed twice",
            ),
            (
                "matrix = { a = [\"x y\"] }",
                "1:17: 'matrix.a': invalid value \"x y\"",
            ),
            (
                "matrix = { a = [\"x]\"] }",
                "1:17: 'matrix.a': invalid value \"x]\"",
            ),
            (
                "matrix = { a = [1.5] }",
                "1:17: 'matrix.a' values must be strings, integers or booleans, found a float",
            ),
            (
                "matrix = { a = [\"x\"] }\nmatrix_exclude = [{ b = \"x\" }]",
                "2:21: 'matrix_exclude': 'b' is not an axis of the matrix (axes: a)",
            ),
            (
                "matrix = { a = [\"x\"] }\nmatrix_include = [{ a = \"y\" }, { a = \"y\" }]",
                "2:32: 'matrix_include': the case [a=y] is already in the matrix",
            ),
            (
                "matrix = { a = [1, 2, 3], b = [1, 2, 3] }\nmatrix_limit = 8",
                "1:10: the matrix has 9 cases, more than the limit of 8",
            ),
            (
                "matrix = { a = [1] }\nmatrix_include = [{ a = 2 }, { a = 3 }]\nmatrix_limit = 2",
                "1:10: the matrix has 3 cases, more than the limit of 2",
            ),
            (
                "matrix = { a = [1] }\nmatrix_limit = 0",
                "2:16: 'matrix_limit' must be between 1 and 1000000",
            ),
            (
                "matrix = { a = [1] }\nmatrix_include = [{}]",
                "2:19: 'matrix_include': an empty entry",
            ),
        ];
        for (text, want) in cases {
            let (_, problems) = run(text);
            assert!(
                problems.iter().any(|p| p.starts_with(want)),
                "{text}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_huge_product_is_refused_before_it_is_made() {
        let axis = format!(
            "[{}]",
            (0..100)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let text =
            format!("matrix = {{ a = {axis}, b = {axis}, c = {axis}, d = {axis}, e = {axis} }}");
        let (cases, problems) = run(&text);
        assert!(cases.is_empty());
        assert!(problems[0].contains("10000000000 cases"), "{problems:?}");
    }

    #[test]
    fn substitution_and_references() {
        let mut case = Case::new([("server".to_string(), "busybox".to_string())].into());
        case.extra = [("v".to_string(), "12".to_string())].into();
        assert_eq!(
            substitute("{matrix.server}", Some(&case)).unwrap(),
            "busybox"
        );
        assert_eq!(
            substitute("debian-{matrix.v}-x", Some(&case)).unwrap(),
            "debian-12-x"
        );
        assert_eq!(substitute("plain", None).unwrap(), "plain");
        assert_eq!(
            substitute("{matrix.nope}", Some(&case)).unwrap_err(),
            "nope"
        );
        assert_eq!(substitute("{matrix.server}", None).unwrap_err(), "server");
        assert_eq!(references("{matrix.a}-{matrix.b}"), ["a", "b"]);
    }

    #[test]
    fn case_names_split() {
        assert_eq!(split_case("T.m[fs=ext4,s=b]"), ("T.m", Some("fs=ext4,s=b")));
        assert_eq!(split_case("T.m"), ("T.m", None));
        assert_eq!(split_case("T.m[repeat=2]"), ("T.m[repeat=2]", None));
        assert_eq!(split_case("T.m[x]"), ("T.m[x]", None));
    }
}
