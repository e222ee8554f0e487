//! The normalisation applied to both a failure's output and every naughty pattern before
//! they are matched: exactly Cockpit's `normalize_traceback` (bots `test-failure-policy`).
//!
//! The rules, applied in this order, each left to right over the whole text without
//! overlapping (as Python's `re.sub`):
//!
//! 1. Strip leading and trailing whitespace, as Python's `str.strip()`: Unicode whitespace
//!    plus the control characters U+001C..U+001F.
//! 2. `File "<path>"` whose path (any characters except `"`, newlines included) contains a
//!    `/` that is not its last character becomes `File "<text after the last />"`, so
//!    `File "/build/ci/test/verify/check-foo"` and `File "test/verify/check-foo"` both read
//!    `File "check-foo"` (regex `File "[^"]*/([^/"]+)"` → `File "\1"`).
//! 3. `audit(` + one or more of `0-9 . :` + `)` becomes `audit(0)` (regex
//!    `audit\([0-9.:]+\)`).
//! 4. `pid=` or `ino=` + one or more ASCII digits + one space becomes `pid=0 ` / `ino=0 `
//!    when the `p`/`i` does not follow a word character (Unicode letter or digit, or `_`),
//!    so `ppid=12 ` stays (regex `\b(pid|ino)=[0-9]+ ` → `\1=0 `).
//! 5. `testlib.Error` becomes `Error`.

/// Normalises a failure's output or a pattern (see the module documentation).
pub fn normalize(text: &str) -> String {
    let text = text.trim_matches(is_python_space);
    let text = file_basenames(text);
    let text = audit_stamps(&text);
    let text = pid_ino(&text);
    text.replace("testlib.Error", "Error")
}

/// Python's `str.isspace()`.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `\w` in a `str` pattern, for `\b`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Rule 2: `File "<dir>/<base>"` → `File "<base>"`.
fn file_basenames(text: &str) -> String {
    const OPEN: &str = "File \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let body_start = at + OPEN.len();
        // The path runs to the next quote; without one, nothing later can match either.
        let Some(len) = rest[body_start..].find('"') else {
            break;
        };
        let body = &rest[body_start..body_start + len];
        match body.rfind('/') {
            Some(slash) if slash + 1 < body.len() => {
                out.push_str(&rest[..body_start]);
                out.push_str(&body[slash + 1..]);
                out.push('"');
                rest = &rest[body_start + len + 1..];
            }
            _ => {
                // No match here: go on from the next character, as a regex search does.
                out.push_str(&rest[..at + 1]);
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Rule 3: `audit(1700000000.123:456)` → `audit(0)`.
fn audit_stamps(text: &str) -> String {
    const OPEN: &str = "audit(";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let body_start = at + OPEN.len();
        let stamp = rest[body_start..]
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b':')
            .count();
        if stamp > 0 && rest[body_start + stamp..].starts_with(')') {
            out.push_str(&rest[..body_start]);
            out.push_str("0)");
            rest = &rest[body_start + stamp + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Rule 4: `pid=1234 ` → `pid=0 `, `ino=5678 ` → `ino=0 `.
fn pid_ino(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        // ASCII needles never match inside a multi-byte character, so `i` is a boundary.
        let key = &bytes[i..];
        if (key.starts_with(b"pid=") || key.starts_with(b"ino="))
            && !text[..i].chars().next_back().is_some_and(is_word)
        {
            let digits = key[4..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 && key.get(4 + digits) == Some(&b' ') {
                out.push_str(&text[copied..i + 4]);
                out.push_str("0 ");
                i += 4 + digits + 1;
                copied = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cases: &[(&str, &str)]) {
        for &(input, expected) in cases {
            assert_eq!(normalize(input), expected, "normalising {input:?}");
        }
    }

    #[test]
    fn strips_surrounding_whitespace_only() {
        check(&[
            ("  a b  ", "a b"),
            ("\n\t\r\n line one\n  line two \n\n", "line one\n  line two"),
            ("\u{a0}\u{2003}x\u{3000}", "x"),
            ("\u{1c}\u{1f}x\u{1e}", "x"),
            ("\u{200b}x", "\u{200b}x"),
            ("   ", ""),
            ("", ""),
        ]);
    }

    #[test]
    fn file_paths_become_base_names() {
        check(&[
            (
                r#"  File "/work/ci/test/verify/check-storage", line 12, in testPool"#,
                r#"File "check-storage", line 12, in testPool"#,
            ),
            (
                r#"File "test/verify/check-storage", line *"#,
                r#"File "check-storage", line *"#,
            ),
            (r#"File "check-storage""#, r#"File "check-storage""#),
            (r#"File "/usr/lib/""#, r#"File "/usr/lib/""#),
            (r#"File """#, r#"File """#),
            (r#"File "/a/b" and File "/c/d""#, r#"File "b" and File "d""#),
            // the path may span lines: only a quote ends it
            ("File \"/a\nb/c\"", "File \"c\""),
            // no closing quote: left alone
            (r#"File "/a/b"#, r#"File "/a/b"#),
            // a failed candidate does not hide a later one
            (r#"File "x" File "/y/z""#, r#"File "x" File "z""#),
            (r#"File "a/File "b/c""#, r#"File "File "b/c""#),
            // case-sensitive, exact spelling
            (r#"file "/a/b""#, r#"file "/a/b""#),
            (r#"File '/a/b'"#, r#"File '/a/b'"#),
        ]);
    }

    #[test]
    fn audit_stamps_become_zero() {
        check(&[
            (
                "type=1400 audit(1700000000.123:456): avc:  denied",
                "type=1400 audit(0): avc:  denied",
            ),
            ("audit(12)", "audit(0)"),
            ("audit(...:)", "audit(0)"),
            ("audit() audit(1a) audit(1", "audit() audit(1a) audit(1"),
            ("audit(audit(7)", "audit(audit(0)"),
            ("xaudit(1.2)", "xaudit(0)"),
            ("Audit(1)", "Audit(1)"),
        ]);
    }

    #[test]
    fn pid_and_ino_become_zero() {
        check(&[
            (
                "avc:  denied  { read } for  pid=1234 comm=\"x\" ino=98765 dev=\"dm-0\"",
                "avc:  denied  { read } for  pid=0 comm=\"x\" ino=0 dev=\"dm-0\"",
            ),
            ("pid=1 pid=2 ino=3 x", "pid=0 pid=0 ino=0 x"),
            ("(pid=42 )", "(pid=0 )"),
            // needs a trailing space (not a newline), digits, and a word boundary
            ("x pid=12\ny", "x pid=12\ny"),
            ("pid=12 at the end pid=34", "pid=0 at the end pid=34"),
            ("pid= 1", "pid= 1"),
            ("pid=12a ", "pid=12a"),
            ("ppid=12 x", "ppid=12 x"),
            ("_pid=12 x", "_pid=12 x"),
            ("épid=12 x", "épid=12 x"),
            ("auid=12 x", "auid=12 x"),
            (".pid=12 x", ".pid=0 x"),
            ("ino=١٢ x", "ino=١٢ x"),
            ("PID=12 x", "PID=12 x"),
        ]);
    }

    #[test]
    fn testlib_error_becomes_error() {
        check(&[
            ("testlib.Error: timeout", "Error: timeout"),
            ("a testlib.Error b testlib.Error", "a Error b Error"),
            ("mytestlib.Errors", "myErrors"),
            ("testlib.error", "testlib.error"),
        ]);
    }

    #[test]
    fn rules_apply_in_order_to_a_whole_failure() {
        let output = "\
# testPool (__main__.TestStorage.testPool)
Traceback (most recent call last):
  File \"/home/ci/work/test/verify/check-storage\", line 88, in testPool
    b.wait_visible('#pool')
  File \"/home/ci/work/test/common/testlib.py\", line 420, in wait_visible
    raise testlib.Error('timeout')
testlib.Error: timeout
type=1400 audit(1712345678.910:77): avc:  denied  { write } for  pid=4242 comm=\"x\" ino=7 scontext=y

not ok 3 test/verify/check-storage TestStorage.testPool
";
        let expected = "\
# testPool (__main__.TestStorage.testPool)
Traceback (most recent call last):
  File \"check-storage\", line 88, in testPool
    b.wait_visible('#pool')
  File \"testlib.py\", line 420, in wait_visible
    raise Error('timeout')
Error: timeout
type=1400 audit(0): avc:  denied  { write } for  pid=0 comm=\"x\" ino=0 scontext=y

not ok 3 test/verify/check-storage TestStorage.testPool";
        assert_eq!(normalize(output), expected);
        // Normalising is idempotent on its output.
        assert_eq!(normalize(expected), expected);
    }
}
