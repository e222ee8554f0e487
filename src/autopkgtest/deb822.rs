//! The deb822 stanza syntax of `debian/control` and `debian/tests/control`, read as
//! autopkgtest 5.28 reads it (its `parse_rfc822` over python-debian's `Deb822`), with every
//! field's line kept.
//!
//! - Lines end at `\n`, `\r\n` or `\r` (Python's universal newlines).
//! - A line starting with `#` is dropped; elsewhere a `#` starts a comment that runs to the
//!   end of the line, and a line that is only whitespace once its comment is cut is dropped
//!   too (so it does not end the stanza). A `#` inside a value is therefore a comment, as in
//!   autopkgtest (`Test-Command: echo '#'` runs `echo '`).
//! - Stanzas are separated by lines that are empty or only whitespace.
//! - `Name: value` starts a field (the name has no colon or whitespace; names compare without
//!   regard to case); a line starting with whitespace continues the previous field.
//! - A value is its lines joined without their line ends, then every run of two spaces is made
//!   one (Python's `replace('  ', ' ')`), exactly as autopkgtest un-escapes continuation lines.
//!
//! Where python-debian silently drops a line, this parser reports an error instead: a line
//! that is neither a field nor a continuation, a continuation with no field before it, and a
//! field given twice in one stanza (python-debian keeps the last).

use super::error::ControlError;
use std::path::Path;

/// One field of a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The name as written (compare with [`Field::is`]).
    pub name: String,
    /// 1-based line of the name.
    pub line: usize,
    /// The value, continuation lines joined as autopkgtest joins them.
    pub value: String,
}

impl Field {
    /// Whether this field is `name`, without regard to case.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// One stanza (paragraph): its fields in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// 1-based line of the first field.
    pub line: usize,
    pub fields: Vec<Field>,
}

impl Stanza {
    /// The field `name` (case-insensitive), if present.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.is(name))
    }

    /// The value of the field `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.field(name).map(|f| f.value.as_str())
    }
}

/// Python's `str.isspace` for one character (Unicode whitespace and the ASCII separators).
pub(crate) fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The lines of `text` as Python's universal newlines split them, without their ends.
fn lines(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                out.push(&text[start..i]);
                i += 1;
                start = i;
            }
            b'\r' => {
                out.push(&text[start..i]);
                i += if bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        out.push(&text[start..]);
    }
    out
}

/// `Name: value` as python-debian matches it: the name, and the value trimmed.
fn field_line(line: &str) -> Option<(&str, &str)> {
    let colon = line.find(':')?;
    let name = line[..colon].trim_end_matches(py_space);
    if name.is_empty() || name.contains([' ', '\t', '\n', '\r', '\x0b', '\x0c']) {
        return None;
    }
    // The name must be followed only by whitespace before the colon.
    if line[..colon].len() != name.len() && !line[name.len()..colon].chars().all(py_space) {
        return None;
    }
    Some((name, line[colon + 1..].trim_matches(py_space)))
}

/// Parses `text` (the contents of `path`) into stanzas, with every error of the file.
pub fn parse(path: &Path, text: &str) -> (Vec<Stanza>, Vec<ControlError>) {
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut errors = Vec::new();
    let mut current: Option<Stanza> = None;
    // The raw value of the field being read: its first line, then "\n" + each continuation.
    let mut raw: Option<String> = None;

    fn finish_field(current: &mut Option<Stanza>, raw: &mut Option<String>) {
        if let (Some(stanza), Some(value)) = (current.as_mut(), raw.take()) {
            let field = stanza.fields.last_mut().expect("a field is being read");
            field.value = value.split('\n').collect::<String>().replace("  ", " ");
        }
    }

    for (index, original) in lines(text).into_iter().enumerate() {
        let number = index + 1;
        if original.starts_with('#') {
            continue;
        }
        let line = match original.find('#') {
            Some(at) => {
                let cut = &original[..at];
                if cut.chars().all(py_space) {
                    continue;
                }
                cut
            }
            None => original,
        };
        if line.chars().all(py_space) {
            finish_field(&mut current, &mut raw);
            stanzas.extend(current.take());
            continue;
        }
        if line.starts_with(py_space) {
            match raw.as_mut() {
                Some(value) => {
                    value.push('\n');
                    value.push_str(line);
                }
                None => errors.push(ControlError::new(
                    path,
                    number,
                    "continuation line (starting with whitespace) without a field before it",
                )),
            }
            continue;
        }
        let Some((name, value)) = field_line(line) else {
            errors.push(ControlError::new(
                path,
                number,
                format!(
                    "expected a field (`Name: value`) or a continuation line, found {:?}",
                    line.trim_end_matches(py_space)
                ),
            ));
            // Lines after it are not continuations of the field before it.
            finish_field(&mut current, &mut raw);
            continue;
        };
        finish_field(&mut current, &mut raw);
        let stanza = current.get_or_insert_with(|| Stanza {
            line: number,
            fields: Vec::new(),
        });
        if let Some(first) = stanza.field(name) {
            errors.push(ControlError::new(
                path,
                number,
                format!("duplicate field {name} (first at line {})", first.line),
            ));
            continue;
        }
        stanza.fields.push(Field {
            name: name.to_string(),
            line: number,
            value: String::new(),
        });
        raw = Some(value.to_string());
    }
    finish_field(&mut current, &mut raw);
    stanzas.extend(current.take());
    (stanzas, errors)
}

/// Reads `path` as UTF-8 (as autopkgtest opens it); an error names the line of the first
/// byte that is not.
pub fn read(path: &Path) -> Result<String, ControlError> {
    let bytes =
        std::fs::read(path).map_err(|e| ControlError::new(path, 0, format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
        ControlError::new(path, line, "not valid UTF-8")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> (Vec<Stanza>, Vec<String>) {
        let (s, e) = parse(Path::new("c"), text);
        (s, e.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn stanzas_fields_lines_and_case() {
        let (s, e) = p("\n\nTests: a b\nDEPENDS: x,\n y\n\n \t\nTest-Command: true\n");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].line, 3);
        assert_eq!(s[0].get("depends"), Some("x, y"));
        assert_eq!(s[0].field("Depends").unwrap().line, 4);
        assert_eq!(s[1].line, 8);
        assert_eq!(s[1].get("test-command"), Some("true"));
    }

    #[test]
    fn comments_as_autopkgtest_cuts_them() {
        let (s, e) = p("Tests: a # c\n# whole\n   # indented comment\nDepends: x,\n  # gone\n y\n");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(s.len(), 1, "a comment-only line does not end the stanza");
        assert_eq!(s[0].get("Tests"), Some("a"));
        assert_eq!(s[0].get("Depends"), Some("x, y"));
        let (s, _) = p("Test-Command: echo '#' done\n");
        assert_eq!(s[0].get("Test-Command"), Some("echo '"));
    }

    #[test]
    fn continuation_joining_is_pythons() {
        // ''.join(v.split('\n')).replace('  ', ' '): three spaces become two.
        let (s, _) = p("Test-Command: a\n   b\n\tc\n");
        assert_eq!(s[0].get("Test-Command"), Some("a  b\tc"));
        let (s, _) = p("A:\n b\n");
        assert_eq!(s[0].get("A"), Some(" b"));
    }

    #[test]
    fn line_ends() {
        let (s, e) = p("A: 1\r\nB: 2\rC: 3\r\n\r\nD: 4");
        assert!(e.is_empty());
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].field("C").unwrap().line, 3);
        assert_eq!(s[1].field("D").unwrap().line, 5);
    }

    #[test]
    fn malformed_lines_are_errors_with_lines() {
        let (_, e) = p(" orphan\nA: 1\nnot a field\nA: 2\n\n b\n");
        assert_eq!(
            e,
            [
                "c:1: continuation line (starting with whitespace) without a field before it",
                "c:3: expected a field (`Name: value`) or a continuation line, found \"not a field\"",
                "c:4: duplicate field A (first at line 2)",
                "c:6: continuation line (starting with whitespace) without a field before it",
            ]
        );
    }

    #[test]
    fn name_may_have_space_before_colon_only() {
        let (s, e) = p("Tests : a\n");
        assert!(e.is_empty());
        assert_eq!(s[0].get("Tests"), Some("a"));
        let (_, e) = p("Te sts: a\n");
        assert_eq!(e.len(), 1);
    }
}
