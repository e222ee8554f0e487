//! The three kinds of glob in check files, each with its matching rules in one place:
//! TEST_OS globs (`skip`/`only`), source globs (`covers`) and the file-name glob of discovery.
//!
//! All use globset's syntax: `*`, `?`, `[abc]`, `[!abc]`, `{a,b}`, and `\` to escape. In
//! TEST_OS and file-name globs `*` matches any characters (as Python's `fnmatch` does for
//! Cockpit's `skipImage`); in `covers` `*` and `?` stay within one path component and `**`
//! crosses directories.

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

fn build(pattern: &str, literal_separator: bool) -> Result<Glob, String> {
    if pattern.is_empty() {
        return Err("invalid glob \"\": it is empty".to_owned());
    }
    GlobBuilder::new(pattern)
        .literal_separator(literal_separator)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob \"{pattern}\": {}", e.kind()))
}

/// A glob matched against a whole TEST_OS name, or a file name.
pub(super) fn name_glob(pattern: &str) -> Result<GlobMatcher, String> {
    build(pattern, false).map(|g| g.compile_matcher())
}

/// A `covers` glob, matched against a path relative to the project root.
pub(super) fn path_glob(pattern: &str) -> Result<Glob, String> {
    build(pattern, true)
}

/// Compiles a file's `covers` into one matcher for paths relative to the project root
/// (e.g. `src/foo/bar.rs`). `covers` from a parsed [`TestDef`](super::TestDef) always compile.
pub fn covers_matcher(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(path_glob(pattern)?);
    }
    set.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_globs() {
        let cases = [
            ("debian-*", "debian-12", true),
            ("debian-*", "debian-testing", true),
            ("debian-*", "fedora-40", false),
            ("fedora-4?", "fedora-40", true),
            ("fedora-4?", "fedora-400", false),
            ("rhel-[89]*", "rhel-9-4", true),
            ("rhel-[89]*", "rhel-10-0", false),
            ("rhel-[!8]*", "rhel-9-4", true),
            ("{arch,fedora-*}", "arch", true),
            ("a*", "a/b", true),
            ("busybox", "busybox", true),
            ("busybox", "busybox-2", false),
            (r"a\*", "a*", true),
            (r"a\*", "ab", false),
        ];
        for (pattern, name, expected) in cases {
            let glob = name_glob(pattern).unwrap();
            assert_eq!(glob.is_match(name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn invalid_globs() {
        let cases = [
            ("", "it is empty"),
            ("debian-[", "unclosed character class"),
            ("{a,b", "unclosed alternate group"),
            ("a]b}", "unopened alternate group"),
            ("x\\", "dangling"),
        ];
        for (pattern, expected) in cases {
            let err = name_glob(pattern).unwrap_err();
            assert!(err.starts_with("invalid glob"), "{err}");
            assert!(err.contains(expected), "{pattern}: {err}");
        }
    }

    #[test]
    fn covers() {
        let set = covers_matcher(&["src/foo/**".into(), "src/*.rs".into()]).unwrap();
        let cases = [
            ("src/foo/a.rs", true),
            ("src/foo/deep/b.rs", true),
            ("src/lib.rs", true),
            ("src/bar/lib.rs", false),
            ("test/x", false),
        ];
        for (path, expected) in cases {
            assert_eq!(set.is_match(path), expected, "{path}");
        }
        assert!(covers_matcher(&["src/[".into()]).is_err());
    }
}
