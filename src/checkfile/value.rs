//! Typed access to toml's spanned values: each getter either returns the value or records
//! a "wrong type" error at the value's position and returns `None`.

use super::error::Diagnostics;
use std::ops::{Range, RangeInclusive};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

pub(super) type Key<'i> = Spanned<DeString<'i>>;
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// A table's entries in the order they are written (toml's map is sorted by name).
pub(super) fn entries<'a, 'i>(table: &'a DeTable<'i>) -> Vec<(&'a Key<'i>, &'a Value<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// The type of a value with its article, for messages: "a string", "an integer", ….
pub(super) fn a_type(value: &DeValue) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// An integer value, if it is one and fits in an `i64`.
pub(super) fn integer(value: &DeValue) -> Option<i64> {
    match value {
        DeValue::Integer(n) => i64::from_str_radix(n.as_str(), n.radix()).ok(),
        _ => None,
    }
}

pub(super) fn boolean(d: &mut Diagnostics, key: &str, value: &Value) -> Option<bool> {
    match value.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            let found = a_type(other);
            d.error(
                value.span(),
                format!("'{key}' must be true or false, found {found}"),
            );
            None
        }
    }
}

pub(super) fn string<'v>(d: &mut Diagnostics, key: &str, value: &'v Value) -> Option<&'v str> {
    match value.get_ref() {
        DeValue::String(s) => Some(s),
        other => {
            let found = a_type(other);
            d.error(
                value.span(),
                format!("'{key}' must be a string, found {found}"),
            );
            None
        }
    }
}

/// A string that must not be empty or only whitespace; `what` completes "must not be empty".
pub(super) fn non_empty_string(
    d: &mut Diagnostics,
    key: &str,
    value: &Value,
    hint: &str,
) -> Option<String> {
    let s = string(d, key, value)?;
    if s.trim().is_empty() {
        d.error(value.span(), format!("'{key}' must not be empty{hint}"));
        return None;
    }
    Some(s.to_owned())
}

/// A table; `expected` describes it for the error, e.g. "a table of machines".
pub(super) fn table<'v, 'i>(
    d: &mut Diagnostics,
    key: &str,
    value: &'v Value<'i>,
    expected: &str,
) -> Option<&'v DeTable<'i>> {
    match value.get_ref() {
        DeValue::Table(t) => Some(t),
        other => {
            let found = a_type(other);
            d.error(
                value.span(),
                format!("'{key}' must be {expected}, found {found}"),
            );
            None
        }
    }
}

/// An array of strings with each element's span. Every wrong element is reported.
pub(super) fn string_array<'v>(
    d: &mut Diagnostics,
    key: &str,
    value: &'v Value,
) -> Option<Vec<(&'v str, Range<usize>)>> {
    let DeValue::Array(array) = value.get_ref() else {
        let found = a_type(value.get_ref());
        d.error(
            value.span(),
            format!("'{key}' must be an array of strings, found {found}"),
        );
        return None;
    };
    let mut strings = Vec::with_capacity(array.len());
    let mut ok = true;
    for element in array.iter() {
        match element.get_ref() {
            DeValue::String(s) => strings.push((s.as_ref(), element.span())),
            other => {
                let found = a_type(other);
                d.error(
                    element.span(),
                    format!("'{key}' must be an array of strings, found {found} in it"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(strings)
}

/// An integer within `range`.
pub(super) fn integer_in(
    d: &mut Diagnostics,
    key: &str,
    value: &Value,
    range: RangeInclusive<i64>,
) -> Option<i64> {
    let (min, max) = (range.start(), range.end());
    match (value.get_ref(), integer(value.get_ref())) {
        (_, Some(n)) if range.contains(&n) => Some(n),
        (DeValue::Integer(n), _) => {
            d.error(
                value.span(),
                format!("'{key}' must be between {min} and {max}, found {n}"),
            );
            None
        }
        (other, _) => {
            let found = a_type(other);
            d.error(
                value.span(),
                format!("'{key}' must be an integer between {min} and {max}, found {found}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Parses `key = <value>` and returns the value.
    fn value_of(text: &str) -> Value<'_> {
        let doc = DeTable::parse(text).unwrap().into_inner();
        doc.into_iter().next().unwrap().1
    }

    #[test]
    fn entries_keep_the_written_order() {
        let doc = DeTable::parse("b = 1\na = 2\nc = 3\n").unwrap();
        let names: Vec<_> = entries(doc.get_ref())
            .into_iter()
            .map(|(k, _)| k.get_ref().to_string())
            .collect();
        assert_eq!(names, ["b", "a", "c"]);
    }

    #[test]
    fn integers_in_every_radix() {
        let cases = [
            ("x = 42", Some(42)),
            ("x = -7", Some(-7)),
            ("x = 1_000", Some(1000)),
            ("x = 0x1f", Some(31)),
            ("x = 0o17", Some(15)),
            ("x = 0b101", Some(5)),
            ("x = 'a'", None),
        ];
        for (text, expected) in cases {
            assert_eq!(integer(value_of(text).get_ref()), expected, "{text}");
        }
    }

    #[test]
    fn wrong_types_are_reported_at_the_value() {
        type Check = fn(&mut Diagnostics, &Value) -> bool;
        let cases: [(&str, Check, &str); 9] = [
            (
                "k = 1",
                |d, v| boolean(d, "k", v).is_some(),
                "'k' must be true or false, found an integer",
            ),
            (
                "k = true",
                |d, v| string(d, "k", v).is_some(),
                "'k' must be a string, found a boolean",
            ),
            (
                "k = ' '",
                |d, v| non_empty_string(d, "k", v, "").is_some(),
                "'k' must not be empty",
            ),
            (
                "k = []",
                |d, v| table(d, "k", v, "a table of x").is_some(),
                "'k' must be a table of x, found an array",
            ),
            (
                "k = 'a'",
                |d, v| string_array(d, "k", v).is_some(),
                "'k' must be an array of strings, found a string",
            ),
            (
                "k =     ['a', 1]",
                |d, v| string_array(d, "k", v).is_some(),
                "'k' must be an array of strings, found an integer in it",
            ),
            (
                "k = 0",
                |d, v| integer_in(d, "k", v, 1..=64).is_some(),
                "'k' must be between 1 and 64, found 0",
            ),
            (
                "k = 1.0",
                |d, v| integer_in(d, "k", v, 1..=64).is_some(),
                "'k' must be an integer between 1 and 64, found a float",
            ),
            (
                "k = 1979-05-27",
                |d, v| string(d, "k", v).is_some(),
                "'k' must be a string, found a date-time",
            ),
        ];
        for (text, check, message) in cases {
            let value = value_of(text);
            let mut d = Diagnostics::new(Path::new("f"), text);
            assert!(!check(&mut d, &value), "{text}");
            let errors = d.finish();
            assert_eq!(errors.len(), 1, "{text}");
            assert_eq!(errors[0].message, message, "{text}");
            let col = if text.contains("'a', 1") { 15 } else { 5 };
            assert_eq!((errors[0].line, errors[0].col), (1, col), "{text}");
        }
    }
}
