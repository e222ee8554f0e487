//! Text from tests and guests made safe for reports: split into lines at every character a
//! reader might take for a line end, and every other control character written as a visible
//! escape. TAP, the live output and the progress lines all go through here, so that no byte a
//! test prints can end a comment line early (a forged `ok 1`), move a terminal's cursor or
//! set its title.

/// Characters that some reader treats as the end of a line: LF, CR, VT, FF, NEL and the
/// Unicode line and paragraph separators.
fn is_line_end(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

/// `c` as it may appear inside a line: itself, or `\xNN` / `\u{NNNN}` for control
/// characters other than tab (ESC, BEL, NUL, DEL, C1 controls, bidi overrides).
fn push_visible(out: &mut String, c: char) {
    let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if c == '\t' || !(c.is_control() || bidi) {
        out.push(c);
    } else if (c as u32) < 0x100 {
        out.push_str(&format!("\\x{:02x}", c as u32));
    } else {
        out.push_str(&format!("\\u{{{:04x}}}", c as u32));
    }
}

/// The lines of `text`, split at every line end (a CRLF is one line end), each free of
/// control characters. A final line end does not start another line.
pub fn safe_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_line_end(c) {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            lines.push(std::mem::take(&mut line));
        } else {
            push_visible(&mut line, c);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// `text` without terminal escape sequences (colours, cursor moves, titles: CSI, OSC and
/// two-character escapes), for reports that show output as plain text.
pub fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters and intermediates up to a final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC (and DCS, PM, APC): up to BEL or ST (ESC \\).
            Some(']' | 'P' | '^' | '_') => {
                while let Some(c) = chars.next() {
                    if c == '\u{07}' {
                        break;
                    }
                    if c == '\u{1b}' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            // nF escapes (`ESC ( B`): intermediates up to a final byte.
            Some(' '..='/') => {
                for c in chars.by_ref() {
                    if ('0'..='~').contains(&c) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `text` as one line: line ends become spaces and control characters visible escapes.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_line_end(c) {
            out.push(' ');
        } else {
            push_visible(&mut out, c);
        }
    }
    out
}

/// The first line of `text`, trimmed and safe.
pub fn first_line(text: &str) -> String {
    safe_lines(text)
        .into_iter()
        .map(|l| l.trim().to_string())
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// A TAP description: one safe line with `#` and `\` escaped as TAP 14 says, so that a
/// name can never start a directive (`# SKIP`, `# TODO`).
pub fn tap_description(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in one_line(text).chars() {
        if c == '#' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_line_end_splits_and_controls_are_visible() {
        assert_eq!(
            safe_lines("a\r\nb\rok 1 forged\nc\u{0b}d\u{2028}e\x1b[2Jf\0g\u{7f}\u{202e}h\tt\n"),
            [
                "a",
                "b",
                "ok 1 forged",
                "c",
                "d",
                "e\\x1b[2Jf\\x00g\\x7f\\u{202e}h\tt"
            ]
        );
        assert_eq!(safe_lines("x\n\n"), ["x", ""]);
        assert_eq!(safe_lines(""), Vec::<String>::new());
        assert_eq!(one_line("a\rb\x07"), "a b\\x07");
        assert_eq!(first_line("\n  reason \r more"), "reason");
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(
            strip_escapes(
                "\x1b[1;31mred\x1b[0m \x1b]0;title\x07t \x1b]8;;http://x\x1b\\l\x1b(Bz\x1b"
            ),
            "red t lz"
        );
        assert_eq!(strip_escapes("plain\ttext"), "plain\ttext");
    }

    #[test]
    fn descriptions_cannot_start_directives() {
        assert_eq!(
            tap_description("check-a # SKIP x\\y\nok 2"),
            "check-a \\# SKIP x\\\\y ok 2"
        );
    }

    proptest! {
        #[test]
        fn no_line_end_or_control_survives(s in any::<String>()) {
            for l in safe_lines(&s).iter().chain([one_line(&s), tap_description(&s)].iter()) {
                prop_assert!(!l.chars().any(|c| is_line_end(c) || (c.is_control() && c != '\t')), "{l:?}");
            }
        }

        #[test]
        fn printable_text_is_kept(s in "[ -~]{0,40}(\n[ -~]{0,40}){0,4}") {
            prop_assert_eq!(safe_lines(&format!("{s}\n")).join("\n"), s);
        }
    }
}
