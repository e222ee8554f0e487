//! Durations as people write them in check files: `"90s"`, `"10m"`, `"1h30m"`, and the
//! `timeout` setting, which also takes an integer number of seconds.

use super::error::Diagnostics;
use super::value::{Value, a_type, integer};
use std::time::Duration;
use toml::de::DeValue;

const EXAMPLES: &str = "as in \"90s\", \"10m\" or \"1h30m\"";

/// Parses a duration: one or more `<number><unit>` with the units `h`, `m` and `s`, largest
/// first, each at most once, without spaces (`"90s"`, `"10m"`, `"1h30m"`, `"2h5s"`).
/// It must be greater than zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: String| format!("invalid duration \"{s}\": {why}");
    if s.is_empty() {
        return Err(invalid(format!(
            "it is empty; write a number and a unit, {EXAMPLES}"
        )));
    }
    let mut total: u64 = 0;
    // Index in "hms" of the last unit seen; units must strictly increase.
    let mut last_unit: Option<usize> = None;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            let why = match rest.chars().next() {
                Some(c) if c.is_whitespace() => format!("remove the spaces, {EXAMPLES}"),
                c => format!(
                    "expected a number at '{}'; write a number and a unit, {EXAMPLES}",
                    c.unwrap_or(' ')
                ),
            };
            return Err(invalid(why));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("the number is too large".into()))?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = rest.split_at(letters);
        if unit.is_empty() {
            let why = match after.chars().next() {
                None => format!(
                    "missing unit after {number}; use h, m or s, {EXAMPLES} (or an integer \
                     number of seconds)"
                ),
                Some('.' | ',') => format!("use whole numbers of each unit, {EXAMPLES}"),
                Some(c) if c.is_whitespace() => format!("remove the spaces, {EXAMPLES}"),
                Some(c) => format!("unexpected '{c}'; use h, m or s, {EXAMPLES}"),
            };
            return Err(invalid(why));
        }
        let Some(index) = ["h", "m", "s"].iter().position(|u| *u == unit) else {
            return Err(invalid(format!(
                "unknown unit \"{unit}\"; use h, m or s, {EXAMPLES}"
            )));
        };
        if last_unit.is_some_and(|last| last >= index) {
            return Err(invalid(
                "units must go from largest to smallest, each at most once (h, m, s)".into(),
            ));
        }
        last_unit = Some(index);
        rest = after;
        let seconds_per_unit = [3600, 60, 1][index];
        total = number
            .checked_mul(seconds_per_unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| invalid("it is too large".into()))?;
    }
    if total == 0 {
        return Err(invalid("it must be greater than zero".into()));
    }
    Ok(Duration::from_secs(total))
}

/// The `timeout` setting: a duration string or an integer number of seconds, > 0.
pub(super) fn timeout(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Duration> {
    let result = match value.get_ref() {
        DeValue::String(s) => parse_duration(s),
        DeValue::Integer(_) => match integer(value.get_ref()) {
            Some(n) if n > 0 => Ok(Duration::from_secs(n as u64)),
            Some(n) => Err(format!("{n} seconds: it must be greater than zero")),
            None => Err("the number is too large".into()),
        },
        other => Err(format!(
            "it must be a duration string {EXAMPLES}, or an integer number of seconds; found {}",
            a_type(other)
        )),
    };
    result
        .map_err(|why| d.error(value.span(), format!("'{key}': {why}")))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid() {
        let cases = [
            ("90s", 90),
            ("10m", 600),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2h5s", 7205),
            ("1h1m1s", 3661),
            ("1m90s", 150),
            ("007s", 7),
        ];
        for (s, secs) in cases {
            assert_eq!(parse_duration(s), Ok(Duration::from_secs(secs)), "{s}");
        }
    }

    #[test]
    fn invalid() {
        let cases = [
            ("", "it is empty"),
            ("600", "missing unit after 600"),
            ("5x", "unknown unit \"x\""),
            ("5ms", "unknown unit \"ms\""),
            ("10min", "unknown unit \"min\""),
            ("5M", "unknown unit \"M\""),
            ("m", "expected a number at 'm'"),
            ("1h 30m", "remove the spaces"),
            ("10 minutes", "remove the spaces"),
            (" 5m", "remove the spaces"),
            ("1.5h", "use whole numbers"),
            ("-5s", "expected a number at '-'"),
            ("5s!", "expected a number at '!'"),
            ("5_000s", "unexpected '_'"),
            ("30m1h", "largest to smallest"),
            ("1m1m", "largest to smallest"),
            ("0s", "greater than zero"),
            ("0h0m0s", "greater than zero"),
            ("99999999999999999999s", "the number is too large"),
            ("9999999999999999h", "too large"),
        ];
        for (s, expected) in cases {
            let err = parse_duration(s).unwrap_err();
            assert!(
                err.starts_with(&format!("invalid duration \"{s}\": ")),
                "{err}"
            );
            assert!(err.contains(expected), "{s}: {err}");
        }
    }
}
