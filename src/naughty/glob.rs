//! Shell globs with exactly the semantics of Python's `fnmatch.fnmatchcase` (Python 3.11's
//! `fnmatch.translate`), which Cockpit matches naughty patterns with:
//!
//! - the glob matches the **whole** text, case-sensitively;
//! - `*` matches any run of characters, newlines included;
//! - `?` matches exactly one character, a newline included;
//! - `[...]` matches one character of a class: `[!...]` negates it, `a-z` is a range (by code
//!   point), a `]` right after `[` or `[!` is a member, a `-` first or last is a member, and a
//!   reversed range such as `z-a` is dropped together with its two ends (Python removes
//!   "empty ranges" that way), so `[z-a]` matches nothing and `[!z-a]` anything;
//! - a `[` without a closing `]` is a literal `[`;
//! - there is no escape character: `\` is a literal backslash everywhere.
//!
//! Matching cannot blow up: the glob is split at its `*`s into pieces of one-character
//! tokens; the first piece must match at the start, the last at the end, and each middle
//! piece is matched at its leftmost possible place (which is always right for such pieces,
//! and is what Python's `(?>.*?piece)` atomic groups do). A piece is found through its
//! first literal run with `str::find`, so the usual case is linear in the text.

/// A compiled glob. [`Glob::is_match`] tests a whole text against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The pieces between `*`s, in order. Without any `*` there is exactly one piece and
    /// it must match the whole text.
    pieces: Vec<Piece>,
    has_star: bool,
}

/// Tests `text` against the glob `pattern` as Python's `fnmatch.fnmatchcase` does.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).is_match(text)
}

impl Glob {
    /// Compiles `pattern`. Every string is a valid glob.
    pub fn new(pattern: &str) -> Glob {
        let chars: Vec<char> = pattern.chars().collect();
        let mut pieces = vec![Vec::new()];
        let mut has_star = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            let token = match c {
                '*' => {
                    has_star = true;
                    pieces.push(Vec::new());
                    continue;
                }
                '?' => Token::Any,
                '[' => match parse_class(&chars, i) {
                    Some((class, next)) => {
                        i = next;
                        Token::Class(class)
                    }
                    None => Token::Char('['),
                },
                c => Token::Char(c),
            };
            pieces
                .last_mut()
                .expect("pieces is never empty")
                .push(token);
        }
        Glob {
            pieces: pieces.into_iter().map(Piece::new).collect(),
            has_star,
        }
    }

    /// Whether the glob matches all of `text`.
    pub fn is_match(&self, text: &str) -> bool {
        let first = &self.pieces[0];
        if !self.has_star {
            return first.match_at(text, 0) == Some(text.len());
        }
        let Some(mut pos) = first.match_at(text, 0) else {
            return false;
        };
        let last = self
            .pieces
            .last()
            .expect("a glob with a star has two pieces");
        let Some(tail) = back_chars(text, text.len(), last.tokens.len()) else {
            return false;
        };
        if tail < pos || last.match_at(text, tail).is_none() {
            return false;
        }
        // The middle pieces must fit, in order, between the first and the last.
        let middle_text = &text[..tail];
        for piece in &self.pieces[1..self.pieces.len() - 1] {
            match piece.find(middle_text, pos) {
                Some(end) => pos = end,
                None => return false,
            }
        }
        true
    }
}

/// What matches exactly one character.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    Any,
    Class(Class),
}

impl Token {
    fn matches(&self, c: char) -> bool {
        match self {
            Token::Char(x) => *x == c,
            Token::Any => true,
            Token::Class(class) => class.matches(c),
        }
    }
}

/// A character class: its members as inclusive ranges (a single character is a range of
/// one), possibly negated. No members and not negated matches nothing; no members and
/// negated matches any character.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Class {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        let member = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        member != self.negated
    }
}

/// The tokens between two `*`s, each matching one character.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    tokens: Vec<Token>,
    /// For finding the piece quickly: the number of tokens before its first run of
    /// literal characters, and that run.
    literal: Option<(usize, String)>,
}

impl Piece {
    fn new(tokens: Vec<Token>) -> Piece {
        let literal = tokens
            .iter()
            .position(|t| matches!(t, Token::Char(_)))
            .map(|lead| {
                let run = tokens[lead..]
                    .iter()
                    .map_while(|t| match t {
                        Token::Char(c) => Some(*c),
                        _ => None,
                    })
                    .collect();
                (lead, run)
            });
        Piece { tokens, literal }
    }

    /// Matches the piece at byte offset `start` (a character boundary); returns the byte
    /// offset after it.
    fn match_at(&self, text: &str, start: usize) -> Option<usize> {
        let mut chars = text[start..].chars();
        let mut end = start;
        for token in &self.tokens {
            let c = chars.next()?;
            if !token.matches(c) {
                return None;
            }
            end += c.len_utf8();
        }
        Some(end)
    }

    /// Finds the leftmost match of the piece that starts at or after byte offset `from`;
    /// returns the byte offset after it.
    fn find(&self, text: &str, from: usize) -> Option<usize> {
        let Some((lead, run)) = &self.literal else {
            // Only `?` and classes (or nothing): try every position.
            let mut start = from;
            loop {
                if let Some(end) = self.match_at(text, start) {
                    return Some(end);
                }
                start += text[start..].chars().next()?.len_utf8();
            }
        };
        // Every match contains `run` after exactly `lead` characters.
        let mut search = from;
        loop {
            let at = search + text[search..].find(run.as_str())?;
            if let Some(start) = back_chars(text, at, *lead).filter(|&s| s >= from)
                && let Some(end) = self.match_at(text, start)
            {
                return Some(end);
            }
            search = at + text[at..].chars().next()?.len_utf8();
        }
    }
}

/// The byte offset `n` characters before byte offset `pos`, if there are that many.
fn back_chars(text: &str, mut pos: usize, n: usize) -> Option<usize> {
    for _ in 0..n {
        pos -= text[..pos].chars().next_back()?.len_utf8();
    }
    Some(pos)
}

/// Parses a character class whose `[` is just before `chars[start]`, exactly as Python's
/// `fnmatch.translate` and then `re` do. Returns the class and the index after its `]`, or
/// `None` if there is no closing `]` (then the `[` is literal).
fn parse_class(chars: &[char], start: usize) -> Option<(Class, usize)> {
    let n = chars.len();
    let mut j = start;
    if j < n && chars[j] == '!' {
        j += 1;
    }
    if j < n && chars[j] == ']' {
        j += 1;
    }
    while j < n && chars[j] != ']' {
        j += 1;
    }
    if j >= n {
        return None;
    }
    let stuff = &chars[start..j];
    // Python turns the class into a regex set: the text between `[` and `]` is cut at the
    // hyphens that form ranges into chunks; the chunks' own characters are literal and
    // each cut is a range from the end of one chunk to the start of the next.
    let chunks: Vec<Vec<char>> = if !stuff.contains(&'-') {
        vec![stuff.to_vec()]
    } else {
        let mut chunks: Vec<Vec<char>> = Vec::new();
        let mut i = start;
        let mut k = if chars[i] == '!' { i + 2 } else { i + 1 };
        while let Some(hyphen) = (k..j).find(|&x| chars[x] == '-') {
            chunks.push(chars[i..hyphen].to_vec());
            i = hyphen + 1;
            k = hyphen + 3;
        }
        if i < j {
            chunks.push(chars[i..j].to_vec());
        } else {
            // A trailing hyphen is a member.
            chunks
                .last_mut()
                .expect("a hyphen was cut, so there is a chunk")
                .push('-');
        }
        // Remove reversed ("empty") ranges together with their two ends.
        for k in (1..chunks.len()).rev() {
            if chunks[k - 1].last() > chunks[k].first() {
                let next = chunks.remove(k);
                let prev = &mut chunks[k - 1];
                prev.pop();
                prev.extend(next.iter().skip(1));
            }
        }
        chunks
    };
    // The regex set as items: a literal character, or a range hyphen between chunks.
    let mut items: Vec<Item> = Vec::new();
    for (index, chunk) in chunks.iter().enumerate() {
        if index > 0 {
            items.push(Item::Hyphen);
        }
        items.extend(chunk.iter().map(|&c| Item::Literal(c)));
    }
    let class = match items.as_slice() {
        [] => Class {
            negated: false,
            ranges: Vec::new(),
        },
        [Item::Literal('!')] => Class {
            negated: true,
            ranges: Vec::new(),
        },
        [Item::Literal('!'), rest @ ..] => Class {
            negated: true,
            ranges: set_ranges(rest),
        },
        all => Class {
            negated: false,
            ranges: set_ranges(all),
        },
    };
    Some((class, j + 1))
}

/// One element of the regex set Python builds for a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// A character standing for itself (escaped in the regex if it is special).
    Literal(char),
    /// An unescaped `-`: a range if it sits between two characters.
    Hyphen,
}

/// The members of a regex set, read as Python's `re` reads `[...]`: `x-y` is a range; a
/// hyphen with nothing after it is a member.
fn set_ranges(items: &[Item]) -> Vec<(char, char)> {
    let as_char = |item: Item| match item {
        Item::Literal(c) => c,
        Item::Hyphen => '-',
    };
    let mut ranges = Vec::new();
    let mut rest = items;
    while let Some((&this, tail)) = rest.split_first() {
        let lo = as_char(this);
        match tail {
            [Item::Hyphen, that, after @ ..] => {
                let hi = as_char(*that);
                // Python would reject a reversed range here; fnmatch never produces one.
                if lo <= hi {
                    ranges.push((lo, hi));
                }
                rest = after;
            }
            [Item::Hyphen] => {
                ranges.push((lo, lo));
                ranges.push(('-', '-'));
                rest = &[];
            }
            _ => {
                ranges.push((lo, lo));
                rest = tail;
            }
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn check(cases: &[(&str, &str, bool)]) {
        for &(pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern, text),
                expected,
                "glob {pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn literals_match_the_whole_text_case_sensitively() {
        check(&[
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc", "xabc", false),
            ("abc", "ABC", false),
            ("", "", true),
            ("", "a", false),
            ("a", "", false),
            ("é✓", "é✓", true),
            (r"a\b", r"a\b", true),
            (r"a\*", "a*", false),
            (r"a\*", r"a\xyz", true),
        ]);
    }

    #[test]
    fn star_matches_any_run_including_newlines() {
        check(&[
            ("*", "", true),
            ("*", "anything\nat all", true),
            ("**", "", true),
            ("a*", "a", true),
            ("a*", "a\nb\n", true),
            ("*b", "a\nb", true),
            ("*b", "b\na", false),
            ("a*c", "a\n\n\nc", true),
            ("a*c", "a\n\n\nc\n", false),
            ("*x*", "line 1\nx\nline 3", true),
            ("*x*", "line 1\nline 3", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("a*b*c", "a-b-b-c-c", true),
            ("*ab*ab*", "abab", true),
            ("*ab*ab*", "aba", false),
            ("*aab", "aaab", true),
            ("a**b", "ab", true),
            ("*é*", "caffè é", true),
        ]);
    }

    #[test]
    fn question_mark_matches_one_character() {
        check(&[
            ("?", "a", true),
            ("?", "\n", true),
            ("?", "é", true),
            ("?", "", false),
            ("?", "ab", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*?", "", false),
            ("*?", "x", true),
            ("??*", "é✓", true),
            ("*?✓", "é✓", true),
            ("*???x", "abx", false),
        ]);
    }

    #[test]
    fn classes_ranges_and_negation() {
        check(&[
            ("[abc]", "b", true),
            ("[abc]", "d", false),
            ("[abc]", "", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[0-9][0-9]", "42", true),
            ("[!0-9]", "a", true),
            ("[!0-9]", "5", false),
            ("[!a]", "\n", true),
            ("[a-cx-z]", "y", true),
            ("[a-cx-z]", "m", false),
            // `]` first is a member; `-` first or last is a member
            ("[]]", "]", true),
            ("[]a]", "a", true),
            ("[!]]", "]", false),
            ("[!]]", "x", true),
            ("[-a]", "-", true),
            ("[a-]", "-", true),
            ("[a-]", "b", false),
            ("[!-a]", "-", false),
            // after a range, a hyphen is a member
            ("[a-c-e]", "-", true),
            ("[a-c-e]", "d", false),
            ("[a-c-e]", "e", true),
            // reversed ranges are dropped with their ends
            ("[z-a]", "z", false),
            ("[z-a]", "a", false),
            ("[z-a]", "-", false),
            ("[!z-a]", "q", true),
            ("[xz-ab]", "x", true),
            ("[xz-ab]", "b", true),
            ("[xz-ab]", "z", false),
            // no escapes: `\` is a plain member (here a range from `\` to `a`)
            (r"[\]", r"\", true),
            (r"[\-a]", "-", false),
            (r"[\-a]", "]", true),
            (r"[\-a]", "A", false),
            ("[^a]", "^", true),
            ("[^a]", "b", false),
            ("[a^]", "^", true),
            ("[[]", "[", true),
            ("[&&]", "&", true),
            ("[é-ë]", "ê", true),
            // case-sensitive
            ("[a-z]", "A", false),
        ]);
    }

    #[test]
    fn unclosed_brackets_are_literal() {
        check(&[
            ("[", "[", true),
            ("[abc", "[abc", true),
            ("[abc", "a", false),
            ("[]", "[]", true),
            ("[!]", "[!]", true),
            ("*[*", "a[b", true),
            ("[  12.34] BUG", "[  12.34] BUG", false),
            ("[  12.34] BUG", "1 BUG", true),
        ]);
    }

    #[test]
    fn python_fnmatchcase_agrees() {
        // Expected values computed with Python 3.11's fnmatch.fnmatchcase.
        check(&[
            ("[z-a!x]", "y", true),
            ("[z-a!x]", "x", false),
            ("[a-zx-b]", "x", true),
            ("[a-zx-b]", "-", false),
            ("[!z-a]", "-", true),
            ("*[!]*", "[!]", true),
            ("a[]-b]", "a-", false),
            ("a[]-b]", "a^", true),
            ("a[]-b]", "ac", false),
        ]);
    }

    #[test]
    fn pathological_patterns_finish_fast() {
        let long = "a".repeat(200_000);
        let started = Instant::now();
        assert!(!glob_match("*a*a*a*a*b", &long));
        assert!(!glob_match("*a*a*a*a*a*a*a*a*a*a*b*", &long));
        assert!(!glob_match("*?a?*?a?*b", &long));
        assert!(!glob_match("*[a]*[a]*[b]*", &long));
        assert!(glob_match("*a*a*a*a*a", &long));
        let tricky = format!("{}b", "ab".repeat(50_000));
        assert!(glob_match("*abab*b", &tricky));
        assert!(!glob_match(&format!("*{}c*", "ab".repeat(50)), &tricky));
        // Backtracking would take longer than the age of the universe; linear matching takes
        // milliseconds. The bound only tells the two apart, however loaded the host.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn compiled_glob_is_reusable() {
        let glob = Glob::new("*Traceback*\nError: timeout*");
        assert!(
            glob.is_match("x\nTraceback (most recent call last):\n  …\nError: timeout\nnot ok 1")
        );
        assert!(!glob.is_match("Traceback\nError: other"));
    }
}
