//! Memory sizes of machines: `"512M"`, `"2G"`, or an integer number of MiB, within
//! 64..=65536 MiB.

use super::error::Diagnostics;
use super::value::{Value, a_type, integer};
use toml::de::DeValue;

/// The smallest and largest memory a machine may ask for, in MiB.
pub const MEMORY_RANGE_MIB: std::ops::RangeInclusive<u32> = 64..=65536;

const EXAMPLES: &str = "as in \"512M\" or \"2G\"";

/// Parses a memory size: a whole number followed by `M` (MiB) or `G` (GiB), in MiB.
/// It must lie within [`MEMORY_RANGE_MIB`].
pub fn parse_memory(s: &str) -> Result<u32, String> {
    let invalid = |why: String| format!("invalid memory size \"{s}\": {why}");
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(invalid(format!(
            "expected a whole number followed by M or G, {EXAMPLES}"
        )));
    }
    let unit = &s[digits..];
    let factor: u64 = match unit {
        "M" => 1,
        "G" => 1024,
        "" => {
            return Err(invalid(format!(
                "missing unit; use M or G, {EXAMPLES} (or an integer number of MiB)"
            )));
        }
        _ if unit.starts_with(['.', ',']) => {
            return Err(invalid(
                "use a whole number, e.g. \"1536M\" rather than \"1.5G\"".to_owned(),
            ));
        }
        _ if unit.starts_with(char::is_whitespace) => {
            return Err(invalid(format!("remove the space, {EXAMPLES}")));
        }
        _ => {
            return Err(invalid(format!(
                "unknown unit \"{unit}\"; use M (MiB) or G (GiB), {EXAMPLES}"
            )));
        }
    };
    let mib = s[..digits]
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .unwrap_or(u64::MAX);
    check_range(mib).map_err(invalid)
}

fn check_range(mib: u64) -> Result<u32, String> {
    match u32::try_from(mib) {
        Ok(mib) if MEMORY_RANGE_MIB.contains(&mib) => Ok(mib),
        _ => Err(format!(
            "it must be between {} MiB and {} MiB (64G)",
            MEMORY_RANGE_MIB.start(),
            MEMORY_RANGE_MIB.end()
        )),
    }
}

/// A `memory` value in a check file: a size string or an integer number of MiB.
pub(super) fn memory(d: &mut Diagnostics, key: &str, value: &Value) -> Option<u32> {
    let result = match value.get_ref() {
        DeValue::String(s) => parse_memory(s),
        DeValue::Integer(n) => {
            let mib = integer(value.get_ref()).and_then(|n| u64::try_from(n).ok());
            check_range(mib.unwrap_or(0)).map_err(|why| format!("{why}, found {n} (MiB)"))
        }
        other => Err(format!(
            "it must be a size string {EXAMPLES}, or an integer number of MiB; found {}",
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
            ("512M", 512),
            ("1G", 1024),
            ("1536M", 1536),
            ("64M", 64),
            ("64G", 65536),
        ];
        for (s, mib) in cases {
            assert_eq!(parse_memory(s), Ok(mib), "{s}");
        }
    }

    #[test]
    fn invalid() {
        let cases = [
            ("", "expected a whole number"),
            ("M", "expected a whole number"),
            ("1.5G", "use a whole number"),
            ("512", "missing unit"),
            ("512m", "unknown unit \"m\""),
            ("512MiB", "unknown unit \"MiB\""),
            ("512 M", "remove the space"),
            ("-1G", "expected a whole number"),
            ("63M", "between 64 MiB and 65536 MiB"),
            ("0G", "between 64 MiB and 65536 MiB"),
            ("65G", "between 64 MiB and 65536 MiB"),
            ("99999999999999999999999G", "between 64 MiB and 65536 MiB"),
        ];
        for (s, expected) in cases {
            let err = parse_memory(s).unwrap_err();
            assert!(err.contains(expected), "{s}: {err}");
        }
    }
}
