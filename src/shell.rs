//! POSIX shell quoting for commands vmcheck sends to guests over SSH.

/// Quote `s` so that a POSIX shell reads it back as one word, unchanged.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn plain_words_stay_bare() {
        assert_eq!(quote("/tmp/a-b_c.txt"), "/tmp/a-b_c.txt");
    }

    #[test]
    fn special_characters_are_single_quoted() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME;rm"), "'$HOME;rm'");
    }
}
