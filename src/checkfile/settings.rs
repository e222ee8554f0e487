//! The settings, valid at the top level, in a class and in a test, and how a test's value
//! is chosen: the innermost level that sets a key wins and replaces the whole value (arrays
//! and tables are not merged).
//!
//! The small settings are parsed here; `timeout`, `provision`, `skip`/`only` have their own
//! files. Each setting's syntax is listed in the module documentation of `checkfile`.

use super::condition::{Condition, Timeouts, conditions, timeouts};
use super::error::Diagnostics;
use super::keys::is_env_name;
use super::matrix::{Axes, Combination, axes, combinations, limit};
use super::provision::{MachineReq, provision};
use super::value::{Key, Value, boolean, entries, string, string_array, table};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

/// The default `timeout`, as in Cockpit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Environment variables with this prefix belong to vmcheck and cannot be set by `env`.
const RESERVED_ENV_PREFIX: &str = "VMCHECK_";

/// One setting at one level.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) enum Slot<T> {
    /// Not written at this level.
    #[default]
    Unset,
    /// Written, but wrong (the error is already recorded).
    Invalid,
    /// Written and valid; `key` is the span of its key, for later errors.
    Set { value: T, key: Range<usize> },
}

impl<T> Slot<T> {
    fn new(parsed: Option<T>, key: Range<usize>) -> Self {
        match parsed {
            Some(value) => Slot::Set { value, key },
            None => Slot::Invalid,
        }
    }

    pub(super) fn value(&self) -> Option<&T> {
        match self {
            Slot::Set { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// The settings written at one level.
#[derive(Debug, Default)]
pub(super) struct Settings {
    pub(super) nondestructive: Slot<bool>,
    pub(super) timeout: Slot<Timeouts>,
    pub(super) provision: Slot<Vec<MachineReq>>,
    pub(super) todo: Slot<Vec<Condition>>,
    pub(super) skip: Slot<Vec<Condition>>,
    pub(super) only: Slot<Vec<Condition>>,
    pub(super) restore: Slot<Vec<String>>,
    pub(super) artifacts: Slot<Vec<String>>,
    pub(super) env: Slot<BTreeMap<String, String>>,
    pub(super) no_retry_when_changed: Slot<bool>,
    pub(super) allow_journal: Slot<Vec<String>>,
    pub(super) browser: Slot<bool>,
    pub(super) matrix: Slot<Axes>,
    pub(super) matrix_exclude: Slot<Vec<Combination>>,
    pub(super) matrix_include: Slot<Vec<Combination>>,
    pub(super) matrix_limit: Slot<usize>,
}

impl Settings {
    /// If `key` names a setting, parses `value` into it (recording any error) and returns
    /// true; otherwise returns false and changes nothing.
    pub(super) fn set(&mut self, d: &mut Diagnostics, key: &Key, value: &Value) -> bool {
        let span = key.span();
        let name: &str = key.get_ref();
        match name {
            "nondestructive" => self.nondestructive = Slot::new(boolean(d, name, value), span),
            "timeout" => self.timeout = Slot::new(timeouts(d, value), span),
            "provision" => self.provision = Slot::new(provision(d, value), span),
            "todo" => self.todo = Slot::new(conditions(d, name, value, true), span),
            "skip" => self.skip = Slot::new(conditions(d, name, value, false), span),
            "only" => self.only = Slot::new(conditions(d, name, value, false), span),
            "restore" => self.restore = Slot::new(guest_paths(d, name, value), span),
            "artifacts" => self.artifacts = Slot::new(guest_paths(d, name, value), span),
            "env" => self.env = Slot::new(env(d, value), span),
            "no_retry_when_changed" => {
                self.no_retry_when_changed = Slot::new(boolean(d, name, value), span);
            }
            "allow_journal" => self.allow_journal = Slot::new(regexes(d, name, value), span),
            "browser" => self.browser = Slot::new(boolean(d, name, value), span),
            "matrix" => self.matrix = Slot::new(axes(d, value), span),
            "matrix_exclude" => {
                self.matrix_exclude = Slot::new(combinations(d, name, value), span);
            }
            "matrix_include" => {
                self.matrix_include = Slot::new(combinations(d, name, value), span);
            }
            "matrix_limit" => self.matrix_limit = Slot::new(limit(d, value), span),
            _ => return false,
        }
        true
    }
}

/// A test's three levels, outermost first: file, class, test.
#[derive(Clone, Copy)]
pub(super) struct Levels<'a>(pub(super) [&'a Settings; 3]);

impl<'a> Levels<'a> {
    /// The innermost slot that is written (set or invalid), if any.
    pub(super) fn pick<T>(&self, field: fn(&Settings) -> &Slot<T>) -> Option<&'a Slot<T>> {
        self.0
            .iter()
            .rev()
            .map(|settings| field(settings))
            .find(|slot| !matches!(slot, Slot::Unset))
    }

    /// The innermost valid value, or `None` when unset or invalid.
    pub(super) fn value<T>(&self, field: fn(&Settings) -> &Slot<T>) -> Option<&'a T> {
        self.pick(field).and_then(Slot::value)
    }
}

/// `restore` and `artifacts`: absolute paths in the guest.
fn guest_paths(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Vec<String>> {
    let paths = string_array(d, key, value)?;
    let mut ok = true;
    for (path, span) in &paths {
        let problem = if !path.starts_with('/') {
            Some("is not an absolute path (it must start with '/')")
        } else if path.contains(['\n', '\0']) {
            Some("contains a newline or NUL")
        } else {
            None
        };
        if let Some(problem) = problem {
            d.error(span.clone(), format!("'{key}': {path:?} {problem}"));
            ok = false;
        }
    }
    ok.then(|| paths.into_iter().map(|(p, _)| p.to_owned()).collect())
}

/// `env`: a table of variable names to string values.
fn env(d: &mut Diagnostics, value: &Value) -> Option<BTreeMap<String, String>> {
    let vars = table(
        d,
        "env",
        value,
        "a table of strings, e.g. env = { LANG = \"C.UTF-8\" }",
    )?;
    let mut result = BTreeMap::new();
    let mut ok = true;
    for (key, var) in entries(vars) {
        let name: &str = key.get_ref();
        if !is_env_name(name) {
            d.error(
                key.span(),
                format!(
                    "invalid environment variable name '{name}' in 'env': names are an ASCII \
                     letter or '_' followed by letters, digits and '_'"
                ),
            );
            ok = false;
        } else if name.starts_with(RESERVED_ENV_PREFIX) {
            d.error(
                key.span(),
                format!(
                    "'env': names starting with {RESERVED_ENV_PREFIX} are reserved for vmcheck"
                ),
            );
            ok = false;
        } else if let Some(s) = string(d, &format!("env.{name}"), var) {
            result.insert(name.to_owned(), s.to_owned());
        } else {
            ok = false;
        }
    }
    ok.then_some(result)
}

/// `allow_journal`: regular expressions (the `regex` crate's syntax) that must compile.
fn regexes(d: &mut Diagnostics, key: &str, value: &Value) -> Option<Vec<String>> {
    let patterns = string_array(d, key, value)?;
    let mut ok = true;
    for (pattern, span) in &patterns {
        let problem = if pattern.is_empty() {
            Some("an empty pattern would allow every message".to_owned())
        } else {
            regex::Regex::new(pattern).err().map(|e| regex_error(&e))
        };
        if let Some(problem) = problem {
            d.error(
                span.clone(),
                format!("'{key}': invalid regex {pattern:?}: {problem}"),
            );
            ok = false;
        }
    }
    ok.then(|| patterns.into_iter().map(|(p, _)| p.to_owned()).collect())
}

/// The one-line cause of a regex error (the crate's message spans several lines).
fn regex_error(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or(text.lines().last().unwrap_or_default())
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use toml::de::DeTable;

    /// Parses every top-level key of `text` as a setting.
    fn parse(text: &str) -> (Settings, Vec<(usize, usize, String)>) {
        let doc = DeTable::parse(text).unwrap();
        let mut d = Diagnostics::new(Path::new("f"), text);
        let mut settings = Settings::default();
        for (key, value) in entries(doc.get_ref()) {
            assert!(settings.set(&mut d, key, value), "not a setting: {key:?}");
        }
        let errors = d
            .finish()
            .into_iter()
            .map(|e| (e.line, e.col, e.message))
            .collect();
        (settings, errors)
    }

    #[test]
    fn valid() {
        let (s, errors) = parse(
            r#"
nondestructive = true
timeout = "1h30m"
provision.machine1 = { memory = "1G" }
todo = "fails on arch (#12)"
skip = { os = ["arch"], reason = "no" }
only = { os = ["debian-*"], reason = "apt" }
restore = ["/etc/motd", "/var/lib/x"]
artifacts = []
env = { LANG = "C.UTF-8", _X1 = "" }
no_retry_when_changed = false
allow_journal = ['audit: .*denied', '^kernel: x\d+$']
"#,
        );
        assert_eq!(errors, []);
        assert_eq!(s.nondestructive.value(), Some(&true));
        assert_eq!(
            s.timeout.value().unwrap().for_case(None),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(s.provision.value().unwrap()[0].memory_mib, Some(1024));
        assert_eq!(s.todo.value().unwrap()[0].reason, "fails on arch (#12)");
        assert_eq!(s.skip.value().unwrap()[0].os, Some(vec!["arch".into()]));
        assert_eq!(s.only.value().unwrap()[0].reason, "apt");
        assert_eq!(s.restore.value().unwrap(), &["/etc/motd", "/var/lib/x"]);
        assert_eq!(s.artifacts.value().unwrap(), &Vec::<String>::new());
        let env = s.env.value().unwrap();
        assert_eq!(env.get("LANG").unwrap(), "C.UTF-8");
        assert_eq!(env.get("_X1").unwrap(), "");
        assert_eq!(s.no_retry_when_changed.value(), Some(&false));
        assert_eq!(s.allow_journal.value().unwrap().len(), 2);
        // The key's span is kept for later errors.
        assert!(matches!(&s.timeout, Slot::Set { key, .. } if key.start == 23));
    }

    #[test]
    fn invalid() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            (
                "nondestructive = 'yes'",
                (1, 18),
                "'nondestructive' must be true or false, found a string",
            ),
            (
                "no_retry_when_changed = 1",
                (1, 25),
                "'no_retry_when_changed' must be true or false, found an integer",
            ),
            (
                "timeout = '5x'",
                (1, 11),
                "'timeout': invalid duration \"5x\": unknown unit \"x\"",
            ),
            (
                "timeout = 0",
                (1, 11),
                "'timeout': 0 seconds: it must be greater than zero",
            ),
            (
                "timeout = -5",
                (1, 11),
                "'timeout': -5 seconds: it must be greater than zero",
            ),
            (
                "timeout = 1.5",
                (1, 11),
                "'timeout': it must be a duration string as in \"90s\", \"10m\" or \"1h30m\", or an integer number of seconds; found a float",
            ),
            (
                "todo = ''",
                (1, 8),
                "'todo' must not be empty: give the reason it fails",
            ),
            (
                "todo = true",
                (1, 8),
                "'todo' must be the reason it fails (a string) or conditions like { os = [\"debian-*\"], reason = \"…\" }, found a boolean",
            ),
            (
                "restore = ['etc/motd']",
                (1, 12),
                "'restore': \"etc/motd\" is not an absolute path (it must start with '/')",
            ),
            (
                "artifacts = ['/a', \"/b\\n\"]",
                (1, 20),
                "'artifacts': \"/b\\n\" contains a newline or NUL",
            ),
            (
                "artifacts = '/a'",
                (1, 13),
                "'artifacts' must be an array of strings, found a string",
            ),
            ("env = ['A']", (1, 7), "'env' must be a table of strings"),
            (
                "env = { 1A = 'x' }",
                (1, 9),
                "invalid environment variable name '1A' in 'env'",
            ),
            (
                "env = { A = 1 }",
                (1, 13),
                "'env.A' must be a string, found an integer",
            ),
            (
                "env = { VMCHECK_X = 'x' }",
                (1, 9),
                "'env': names starting with VMCHECK_ are reserved for vmcheck",
            ),
            (
                "allow_journal = ['ok', '(unclosed']",
                (1, 24),
                "'allow_journal': invalid regex \"(unclosed\": unclosed group",
            ),
            (
                "allow_journal = ['']",
                (1, 18),
                "'allow_journal': invalid regex \"\": an empty pattern would allow every message",
            ),
            (
                "allow_journal = 'x'",
                (1, 17),
                "'allow_journal' must be an array of strings, found a string",
            ),
        ];
        for (text, position, message) in cases {
            let (_, errors) = parse(text);
            assert_eq!(errors.len(), 1, "{text}: {errors:?}");
            let (line, col, actual) = &errors[0];
            assert_eq!((*line, *col), *position, "{text}: {actual}");
            assert!(actual.starts_with(message), "{text}: {actual}");
        }
    }

    #[test]
    fn invalid_settings_are_marked_invalid() {
        let (s, errors) = parse("timeout = 'x'\nnondestructive = true");
        assert_eq!(errors.len(), 1);
        assert_eq!(s.timeout, Slot::Invalid);
        assert_eq!(s.todo, Slot::Unset);
    }

    #[test]
    fn the_innermost_written_level_wins() {
        let (file, _) = parse("timeout = 10\nenv = { A = 'file' }\ntodo = 'f'");
        let (class, _) = parse("timeout = 20\nenv = { B = 'class' }");
        let (test, _) = parse("timeout = 'bad'");
        let levels = Levels([&file, &class, &test]);
        // Invalid at the test level: picked, but no value.
        assert_eq!(levels.pick(|s| &s.timeout), Some(&Slot::Invalid));
        assert_eq!(levels.value(|s| &s.timeout), None);
        // Class replaces the file's env as a whole.
        let env = levels.value(|s| &s.env).unwrap();
        assert_eq!(env.keys().collect::<Vec<_>>(), ["B"]);
        assert_eq!(levels.value(|s| &s.todo).unwrap()[0].reason, "f");
        assert_eq!(levels.pick(|s| &s.skip), None);
    }

    #[test]
    fn regex_errors_are_one_line() {
        let pattern = String::from("a{2,1}");
        let e = regex::Regex::new(&pattern).unwrap_err();
        let message = regex_error(&e);
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.is_empty());
    }
}
