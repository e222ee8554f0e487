//! Which keys are valid at which level, the naming rules (classes, tests, machines,
//! environment variables), and the messages for keys that are unknown or misplaced, with a
//! "did you mean" suggestion for near misses.

use super::error::Diagnostics;
use super::value::{Key, Value};
use toml::de::DeValue;

/// The settings, valid at every level, in the order the documentation lists them.
pub(super) const SETTINGS: &[&str] = &[
    "nondestructive",
    "timeout",
    "provision",
    "todo",
    "skip",
    "only",
    "restore",
    "artifacts",
    "env",
    "no_retry_when_changed",
    "allow_journal",
    "browser",
    "matrix",
    "matrix_exclude",
    "matrix_include",
    "matrix_limit",
];

/// Keys valid only at the top level of a file.
pub(super) const FILE_ONLY: &[&str] = &["covers"];

/// Keys valid only in a test.
pub(super) const TEST_ONLY: &[&str] = &["run", "host", "soak", "events"];

/// Where a key is: the file's top level, a class, or a test.
#[derive(Debug, Clone, Copy)]
pub(super) enum Level<'a> {
    File,
    Class(&'a str),
    Test(&'a str, &'a str),
}

impl Level<'_> {
    /// "at the top level", "in class TestFoo", "in test TestFoo.testBar".
    pub(super) fn location(&self) -> String {
        match self {
            Level::File => "at the top level".to_owned(),
            Level::Class(class) => format!("in class {class}"),
            Level::Test(class, method) => format!("in test {class}.{method}"),
        }
    }

    /// Every plain key valid here.
    fn keys(&self) -> Vec<&'static str> {
        let extra = match self {
            Level::File => FILE_ONLY,
            Level::Class(_) => &[],
            Level::Test(..) => TEST_ONLY,
        };
        SETTINGS.iter().chain(extra).copied().collect()
    }

    /// The valid keys as a message lists them.
    fn valid(&self) -> String {
        let keys = self.keys().join(", ");
        match self {
            Level::File => format!("{keys}, and classes [Test…]"),
            Level::Class(class) => format!("{keys}, and tests [{class}.test…]"),
            Level::Test(..) => keys,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `^Test[A-Za-z0-9_]*$`
pub(super) fn is_class_name(name: &str) -> bool {
    name.strip_prefix("Test")
        .is_some_and(|rest| rest.chars().all(is_word_char))
}

/// `^test[A-Za-z0-9_]*$`
pub(super) fn is_test_name(name: &str) -> bool {
    name.strip_prefix("test")
        .is_some_and(|rest| rest.chars().all(is_word_char))
}

/// `^[a-z][a-z0-9_-]*$`
pub(super) fn is_machine_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`
pub(super) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(is_word_char)
}

/// Reports a key that is not valid at `level`: an unknown key, or a table whose name is
/// not a valid class (top level) or test (class) name.
pub(super) fn unknown_key(d: &mut Diagnostics, level: Level, key: &Key, value: &Value) {
    let name: &str = key.get_ref();
    let is_table = matches!(value.get_ref(), DeValue::Table(_));
    let naming = match level {
        Level::File => Some(("class", "Test", "e.g. [TestFoo]".to_owned())),
        Level::Class(class) => Some(("test", "test", format!("e.g. [{class}.testBar]"))),
        Level::Test(..) => None,
    };
    let message = match naming {
        Some((kind, prefix, example)) if is_table => {
            if name.starts_with(prefix) {
                format!(
                    "invalid {kind} name '{name}': {kind} names are '{prefix}' followed by \
                     ASCII letters, digits and '_' ({example})"
                )
            } else {
                let mut message = format!("unknown table '{name}' {}", level.location());
                if let Some(similar) = suggestion(name, &level.keys()) {
                    message.push_str(&format!(", did you mean '{similar}'?"));
                }
                message.push_str(&format!(" ({kind} names start with '{prefix}', {example})"));
                message
            }
        }
        _ => {
            let mut message = format!("unknown key '{name}' {}", level.location());
            if let Some(similar) = suggestion(name, &level.keys()) {
                message.push_str(&format!(", did you mean '{similar}'?"));
            }
            message.push_str(&format!(" (valid: {})", level.valid()));
            message
        }
    };
    d.error(key.span(), message);
}

/// Reports `covers`, `run` or `host` at a level where it is not valid.
pub(super) fn misplaced_key(d: &mut Diagnostics, level: Level, key: &Key) {
    let name: &str = key.get_ref();
    let message = if FILE_ONLY.contains(&name) {
        format!(
            "'{name}' is only valid at the top level of a check file, not {}",
            level.location()
        )
    } else {
        let class = match level {
            Level::Class(class) => class,
            _ => "TestFoo",
        };
        format!("'{name}' is only valid in a test, e.g. under [{class}.testBar]")
    };
    d.error(key.span(), message);
}

/// Reports an unknown key in a nested table such as `skip` or `provision.machine1`.
pub(super) fn unknown_nested_key(d: &mut Diagnostics, table: &str, key: &Key, valid: &[&str]) {
    let name: &str = key.get_ref();
    let mut message = format!("unknown key '{name}' in '{table}'");
    if let Some(similar) = suggestion(name, valid) {
        message.push_str(&format!(", did you mean '{similar}'?"));
    }
    message.push_str(&format!(" (valid: {})", valid.join(", ")));
    d.error(key.span(), message);
}

/// The candidate closest to `name`, if it is close enough to be a typo.
fn suggestion<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let name = name.to_ascii_lowercase();
    let max = match name.chars().count() {
        0..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (edit_distance(&name, c), *c))
        .filter(|(distance, _)| *distance <= max)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        type Rule = fn(&str) -> bool;
        let cases: [(Rule, &str, bool); 22] = [
            (is_class_name, "Test", true),
            (is_class_name, "TestFoo_2", true),
            (is_class_name, "Testé", false),
            (is_class_name, "Test-Foo", false),
            (is_class_name, "testFoo", false),
            (is_class_name, "Foo", false),
            (is_test_name, "test", true),
            (is_test_name, "testBar_1", true),
            (is_test_name, "TestBar", false),
            (is_test_name, "test.bar", false),
            (is_test_name, "tes", false),
            (is_machine_name, "machine1", true),
            (is_machine_name, "web-server_2", true),
            (is_machine_name, "Machine1", false),
            (is_machine_name, "1machine", false),
            (is_machine_name, "", false),
            (is_machine_name, "m.1", false),
            (is_env_name, "FOO_BAR", true),
            (is_env_name, "_x9", true),
            (is_env_name, "9X", false),
            (is_env_name, "A-B", false),
            (is_env_name, "", false),
        ];
        for (rule, name, expected) in cases {
            assert_eq!(rule(name), expected, "{name}");
        }
    }

    #[test]
    fn suggestions() {
        let cases = [
            ("timout", Some("timeout")),
            ("Timeout", Some("timeout")),
            ("provison", Some("provision")),
            ("nondestrutive", Some("nondestructive")),
            ("artifact", Some("artifacts")),
            ("cover", Some("covers")),
            ("rn", Some("run")),
            ("xyz", None),
            ("image", None),
        ];
        let mut candidates = SETTINGS.to_vec();
        candidates.extend(FILE_ONLY.iter().chain(TEST_ONLY));
        for (name, expected) in cases {
            assert_eq!(suggestion(name, &candidates), expected, "{name}");
        }
    }

    #[test]
    fn distances() {
        let cases = [
            ("", "", 0),
            ("abc", "", 3),
            ("kitten", "sitting", 3),
            ("timout", "timeout", 1),
            ("ab", "ba", 2),
        ];
        for (a, b, expected) in cases {
            assert_eq!(edit_distance(a, b), expected, "{a} {b}");
            assert_eq!(edit_distance(b, a), expected, "{b} {a}");
        }
    }
}
