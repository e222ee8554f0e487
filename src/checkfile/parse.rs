//! [`parse_file`]: walks one check file level by level (top level, classes, tests),
//! records every error, checks the rules that span levels, and resolves each test into a
//! [`TestDef`].

use super::condition::{Condition, OsCondition};
use super::def::{Body, TestDef};
use super::error::{CheckFileError, Diagnostics};
use super::glob::path_glob;
use super::keys::{
    FILE_ONLY, Level, TEST_ONLY, is_class_name, is_test_name, misplaced_key, unknown_key,
};
use super::matrix::{self, Case, Declared};
use super::provision::{DEFAULT_MACHINE, MachineReq};
use super::settings::{DEFAULT_TIMEOUT, Levels, Settings, Slot};
use super::value::{Key, Value, a_type, entries, non_empty_string, string_array};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};

/// Parses one check file. `display_path` is used in the tests' `file` and in errors.
///
/// Returns the file's tests sorted by (class, method), or every error found in the file,
/// sorted by position. TOML syntax errors are reported alone (with toml's message), since
/// what follows a syntax error is unreliable.
pub fn parse_file(display_path: &Path, text: &str) -> Result<Vec<TestDef>, Vec<CheckFileError>> {
    let read = parse_partial(display_path, text);
    if read.errors.is_empty() {
        Ok(read.tests.into_iter().map(|t| t.def).collect())
    } else {
        Err(read.errors)
    }
}

/// What reading one check file gave: its tests (every test whose name is valid, even when
/// the file has errors, so that duplicates across files are found even then), its errors
/// and its warnings.
#[derive(Default)]
pub(super) struct FileRead {
    pub(super) tests: Vec<Parsed>,
    pub(super) errors: Vec<CheckFileError>,
    pub(super) warnings: Vec<CheckFileError>,
}

impl FileRead {
    /// A file that could not be read at all, for this reason.
    pub(super) fn failed(errors: Vec<CheckFileError>) -> FileRead {
        FileRead {
            errors,
            ..FileRead::default()
        }
    }
}

/// A test and the column of its name, for errors that point at it later (duplicates).
pub(super) struct Parsed {
    pub(super) def: TestDef,
    pub(super) col: usize,
}

/// Like [`parse_file`], but also returns the tests of a file that has errors, and its
/// warnings.
pub(super) fn parse_partial(path: &Path, text: &str) -> FileRead {
    parse_partial_with(path, text, None)
}

/// [`parse_partial`] of a TOML check file, or (with `executable`) of the document an
/// executable check file's listing stands for: its tests have no `run` or `host`, the
/// program runs them.
pub(super) fn parse_partial_with(path: &Path, text: &str, executable: Option<&Path>) -> FileRead {
    let mut d = Diagnostics::new(path, text);
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            d.error(error.span().unwrap_or(0..0), error.message());
        }
        return FileRead::failed(d.finish());
    }
    let mut walk = Walk {
        d,
        path,
        executable,
        file: Settings::default(),
        covers: Vec::new(),
        nondestructive_provision: BTreeMap::new(),
        run_without_machine1: BTreeMap::new(),
        tests: Vec::new(),
    };
    walk.file(doc.get_ref());
    walk.report_cross_level_errors();
    let mut tests = walk.tests;
    // Stable: a test's cases stay in matrix order.
    tests.sort_by(|a, b| (&a.def.class, &a.def.method).cmp(&(&b.def.class, &b.def.method)));
    let (errors, warnings) = walk.d.finish_with_warnings();
    FileRead {
        tests,
        errors,
        warnings,
    }
}

type NondestructiveProvision = BTreeMap<(usize, usize), (Range<usize>, Range<usize>, Vec<String>)>;
type RunWithoutMachine1 = BTreeMap<usize, (Range<usize>, Vec<String>)>;

/// The state of the walk over one file.
struct Walk<'a> {
    d: Diagnostics<'a>,
    path: &'a Path,
    /// The program that runs the tests, for an executable check file's listing.
    executable: Option<&'a Path>,
    file: Settings,
    covers: Vec<String>,
    /// `provision` key start and `nondestructive = true` key start → the spans and the
    /// tests where both apply; reported once per pair.
    nondestructive_provision: NondestructiveProvision,
    /// `provision` key start (lacking machine1) → its span and the tests with `run`.
    run_without_machine1: RunWithoutMachine1,
    tests: Vec<Parsed>,
}

impl Walk<'_> {
    fn file(&mut self, doc: &DeTable) {
        let mut classes = Vec::new();
        let mut saw_class = false;
        for (key, value) in entries(doc) {
            let name: &str = key.get_ref();
            if self.file.set(&mut self.d, key, value) {
                continue;
            }
            saw_class |= value.get_ref().is_table() || is_class_name(name);
            if FILE_ONLY.contains(&name) {
                if let Some(covers) = covers(&mut self.d, value) {
                    self.covers = covers;
                }
            } else if TEST_ONLY.contains(&name) {
                misplaced_key(&mut self.d, Level::File, key);
            } else if is_class_name(name) {
                match value.get_ref() {
                    DeValue::Table(table) => classes.push((key, table)),
                    other => self.d.error(
                        value.span(),
                        format!(
                            "class {name} must be a table [{name}], found {}",
                            a_type(other)
                        ),
                    ),
                }
            } else {
                unknown_key(&mut self.d, Level::File, key, value);
            }
        }
        if !saw_class && !self.d.has_errors() {
            self.d.error(
                0..0,
                "no tests in this file: write each test as a [TestClass.testMethod] table",
            );
        }
        for (key, table) in classes {
            self.class(key, table);
        }
    }

    fn class(&mut self, class_key: &Key, table: &DeTable) {
        let class: &str = class_key.get_ref();
        let level = Level::Class(class);
        let mut settings = Settings::default();
        let mut tests = Vec::new();
        let mut saw_test = false;
        for (key, value) in entries(table) {
            let name: &str = key.get_ref();
            if settings.set(&mut self.d, key, value) {
                continue;
            }
            saw_test |= value.get_ref().is_table() || is_test_name(name);
            if FILE_ONLY.contains(&name) || TEST_ONLY.contains(&name) {
                misplaced_key(&mut self.d, level, key);
            } else if is_test_name(name) {
                match value.get_ref() {
                    DeValue::Table(table) => tests.push((key, value, table)),
                    other => self.d.error(
                        value.span(),
                        format!(
                            "test {class}.{name} must be a table [{class}.{name}], found {}",
                            a_type(other)
                        ),
                    ),
                }
            } else {
                unknown_key(&mut self.d, level, key, value);
            }
        }
        if !saw_test {
            self.d.error(
                class_key.span(),
                format!("class {class} has no tests: add one as [{class}.testSomething]"),
            );
        }
        for (key, value, table) in tests {
            self.test(class, &settings, key, value, table);
        }
    }

    fn test(
        &mut self,
        class: &str,
        class_settings: &Settings,
        method_key: &Key,
        value: &Value,
        table: &DeTable,
    ) {
        let method: &str = method_key.get_ref();
        let name = format!("{class}.{method}");
        let level = Level::Test(class, method);
        let mut settings = Settings::default();
        let (mut run, mut host) = (None, None);
        let (mut soak_value, mut events_value) = (None, None);
        let mut has_script = false;
        for (key, value) in entries(table) {
            let key_name: &str = key.get_ref();
            if settings.set(&mut self.d, key, value) {
                continue;
            }
            let script = match key_name {
                "run" | "host" if self.executable.is_some() => {
                    self.d.error(
                        key.span(),
                        format!(
                            "'{key_name}' belongs in TOML check files: an executable check \
                             file runs test {name} itself"
                        ),
                    );
                    continue;
                }
                "soak" | "events" if self.executable.is_some() => {
                    self.d.error(
                        key.span(),
                        format!(
                            "'{key_name}': soaks are declared in TOML check files (test {name} \
                             of an executable check file cannot be one yet)"
                        ),
                    );
                    continue;
                }
                "run" => &mut run,
                "host" => &mut host,
                "soak" => {
                    soak_value = Some(value);
                    continue;
                }
                "events" => {
                    events_value = Some(value);
                    continue;
                }
                _ if FILE_ONLY.contains(&key_name) => {
                    misplaced_key(&mut self.d, level, key);
                    continue;
                }
                _ => {
                    unknown_key(&mut self.d, level, key, value);
                    continue;
                }
            };
            has_script = true;
            *script = non_empty_string(&mut self.d, key_name, value, ": write the script to run");
        }
        if !has_script && self.executable.is_none() && soak_value.is_none() {
            self.d.error(
                method_key.span(),
                format!(
                    "test {name} has nothing to run: add 'run' (a script run as root in \
                     machine1) or 'host' (a script run on the host)"
                ),
            );
        }

        let levels = Levels([&self.file, class_settings, &settings]);
        check_cross_level(
            &name,
            levels,
            run.is_some(),
            &mut self.nondestructive_provision,
            &mut self.run_without_machine1,
        );

        let (line, _) = self.d.position(value.span().start);
        let (_, col) = self.d.position(method_key.span().start);
        let Some(cases) = matrix_cases(&mut self.d, &name, levels) else {
            return;
        };
        let provision = levels
            .value(|s| &s.provision)
            .cloned()
            .unwrap_or_else(|| vec![MachineReq::default_machine()]);
        let machine_names: Vec<&str> = provision.iter().map(|m| m.name.as_str()).collect();
        let soak = super::soak::soak(&mut self.d, &name, soak_value, events_value, &machine_names)
            .map(std::sync::Arc::new);
        if let (Some(v), true) = (
            soak_value,
            levels
                .value(|s| &s.nondestructive)
                .copied()
                .unwrap_or(false),
        ) {
            self.d.error(
                v.span(),
                format!(
                    "test {name} is a soak: its faults and hours are not for a shared machine; \
                     make it destructive"
                ),
            );
        }
        let per_case = |conditions: Option<&Vec<Condition>>, case: Option<&Case>, keep_never| {
            conditions
                .into_iter()
                .flatten()
                .map(|c| c.for_case(case))
                .filter(|c: &OsCondition| keep_never || !c.os.is_empty())
                .collect::<Vec<_>>()
        };
        for case in cases {
            let case = case.as_ref();
            let Some(provision) = provision_for(&mut self.d, &name, &provision, case) else {
                // One error for the test, not one per case.
                return;
            };
            let mut env = levels.value(|s| &s.env).cloned().unwrap_or_default();
            if let Some(case) = case {
                env.insert("VMCHECK_MATRIX".into(), case.id().to_owned());
                for (k, v) in case.id_values().iter().chain(&case.extra) {
                    env.insert(
                        format!("VMCHECK_MATRIX_{}", k.to_ascii_uppercase()),
                        v.clone(),
                    );
                }
            }
            let def = TestDef {
                file: self.path.to_path_buf(),
                class: class.to_owned(),
                method: method.to_owned(),
                line,
                nondestructive: levels
                    .value(|s| &s.nondestructive)
                    .copied()
                    .unwrap_or(false),
                timeout: levels
                    .value(|s| &s.timeout)
                    .and_then(|t| t.for_case(case))
                    .unwrap_or(DEFAULT_TIMEOUT),
                provision,
                todo: per_case(levels.value(|s| &s.todo), case, false),
                skip: per_case(levels.value(|s| &s.skip), case, false),
                // A case that no `only` condition can hold for is skipped on every TEST_OS.
                only: per_case(levels.value(|s| &s.only), case, true),
                restore: levels.value(|s| &s.restore).cloned().unwrap_or_default(),
                artifacts: levels.value(|s| &s.artifacts).cloned().unwrap_or_default(),
                env,
                no_retry_when_changed: levels
                    .value(|s| &s.no_retry_when_changed)
                    .copied()
                    .unwrap_or(false),
                allow_journal: levels
                    .value(|s| &s.allow_journal)
                    .cloned()
                    .unwrap_or_default(),
                browser: levels.value(|s| &s.browser).copied().unwrap_or(false),
                body: match self.executable {
                    Some(program) => Body::Executable(program.to_path_buf()),
                    None => Body::Scripts {
                        run: run.clone(),
                        host: host.clone(),
                    },
                },
                covers: self.covers.clone(),
                repeat: None,
                os: None,
                case: case.cloned(),
                soak: soak.clone(),
            };
            self.tests.push(Parsed { def, col });
        }
    }

    fn report_cross_level_errors(&mut self) {
        for (provision_key, nondestructive_key, tests) in
            std::mem::take(&mut self.nondestructive_provision).into_values()
        {
            let line = self.d.line(nondestructive_key.start);
            self.d.error(
                provision_key,
                format!(
                    "'provision' conflicts with 'nondestructive = true' (line {line}) for {}: \
                     nondestructive tests run on shared machines and cannot provision their own \
                     (they may only have machine1 forward ports: provision.machine1 = \
                     {{ forward = [9090] }})",
                    test_list(&tests)
                ),
            );
        }
        for (provision_key, tests) in std::mem::take(&mut self.run_without_machine1).into_values() {
            self.d.error(
                provision_key,
                format!(
                    "'provision' has no {DEFAULT_MACHINE}, which 'run' needs ({}): add \
                     {DEFAULT_MACHINE} or use 'host' instead of 'run'",
                    test_list(&tests)
                ),
            );
        }
    }
}

/// The cases of test `name`'s matrix (`[None]` without one), after checking that every
/// matrix key its settings name is one; `None` when the matrix is wrong.
fn matrix_cases(d: &mut Diagnostics, name: &str, levels: Levels) -> Option<Vec<Option<Case>>> {
    let cases: Vec<Option<Case>> = match levels.pick(|s| &s.matrix) {
        Some(Slot::Set { value: axes, .. }) => {
            let (cases, problems) = matrix::expand(&Declared {
                axes,
                exclude: levels
                    .value(|s| &s.matrix_exclude)
                    .map_or(&[], Vec::as_slice),
                include: levels
                    .value(|s| &s.matrix_include)
                    .map_or(&[], Vec::as_slice),
                limit: levels
                    .value(|s| &s.matrix_limit)
                    .copied()
                    .unwrap_or(matrix::DEFAULT_LIMIT),
            });
            let mut failed = false;
            for p in problems {
                if p.warning {
                    d.warn(p.span, format!("test {name}: {}", p.message));
                } else {
                    d.error(p.span, p.message);
                    failed = true;
                }
            }
            if failed {
                return None;
            }
            cases.into_iter().map(Some).collect()
        }
        Some(_) => return None,
        None => {
            for (setting, slot) in [
                (
                    "matrix_exclude",
                    levels.pick(|s| &s.matrix_exclude).map(slot_key),
                ),
                (
                    "matrix_include",
                    levels.pick(|s| &s.matrix_include).map(slot_key),
                ),
            ] {
                if let Some(Some(key)) = slot {
                    d.error(
                        key,
                        format!("'{setting}' applies to test {name}, which has no 'matrix'"),
                    );
                }
            }
            vec![None]
        }
    };
    // Every matrix key a condition names must be one of the test's.
    let some: Vec<Case> = cases.iter().flatten().cloned().collect();
    let known = matrix::keys(&some);
    let mut terms = Vec::new();
    for (setting, field) in [
        (
            "skip",
            (|s| &s.skip) as fn(&Settings) -> &Slot<Vec<Condition>>,
        ),
        ("only", |s| &s.only),
        ("todo", |s| &s.todo),
    ] {
        for c in levels.value(field).into_iter().flatten() {
            terms.extend(c.matrix.iter().map(|t| (setting, t)));
        }
    }
    if let Some(t) = levels.value(|s| &s.timeout) {
        terms.extend(t.terms().map(|t| ("timeout", t)));
    }
    let mut ok = true;
    for (setting, term) in terms {
        if !known.contains(term.key.as_str()) {
            d.error(
                term.span.clone(),
                format!(
                    "'{setting}': '{}' is not a matrix key of test {name} ({})",
                    term.key,
                    keys_of(&known)
                ),
            );
            ok = false;
        }
    }
    ok.then_some(cases)
}

/// The machines of one case: `{matrix.KEY}` in images replaced by the case's values.
fn provision_for(
    d: &mut Diagnostics,
    name: &str,
    machines: &[MachineReq],
    case: Option<&Case>,
) -> Option<Vec<MachineReq>> {
    let mut result = Vec::with_capacity(machines.len());
    let mut ok = true;
    for m in machines {
        let mut m = m.clone();
        if let Some(image) = m.image.as_deref().filter(|i| i.contains('{')) {
            let at = m.image_at.unwrap_or((0, 0));
            let id = case.map(|c| format!(" [{}]", c.id())).unwrap_or_default();
            match matrix::substitute(image, case) {
                Ok(value) if super::provision::is_image_name(&value) => m.image = Some(value),
                Ok(value) => {
                    d.error_at(
                        at,
                        format!(
                            "'provision.{}.image' is \"{value}\" for test {name}{id}: image \
                             names are ASCII letters, digits, '.', '_' and '-'",
                            m.name
                        ),
                    );
                    ok = false;
                }
                Err(key) => {
                    d.error_at(
                        at,
                        format!(
                            "'provision.{}.image': test {name}{id} has no matrix value \
                             '{key}'",
                            m.name
                        ),
                    );
                    ok = false;
                }
            }
        }
        result.push(m);
    }
    ok.then_some(result)
}

/// Records the rules between settings of possibly different levels, as resolved for
/// one test; reported later, once per pair of keys.
fn check_cross_level(
    name: &str,
    levels: Levels,
    has_run: bool,
    nondestructive_provision: &mut NondestructiveProvision,
    run_without_machine1: &mut RunWithoutMachine1,
) {
    let Some(Slot::Set {
        value: machines,
        key: provision_key,
    }) = levels.pick(|s| &s.provision)
    else {
        return;
    };
    // A shared machine may forward ports: `provision.machine1 = { forward = [9090] }` alone
    // is what a nondestructive test may ask of its machine.
    let forwards_only = matches!(machines.as_slice(), [m] if !m.forward.is_empty() && MachineReq {
        forward: m.forward.clone(),
        ..MachineReq::default_machine()
    } == MachineReq { image_at: None, ..m.clone() });
    if let Some(Slot::Set {
        value: true,
        key: nondestructive_key,
    }) = levels.pick(|s| &s.nondestructive)
        && !forwards_only
    {
        nondestructive_provision
            .entry((provision_key.start, nondestructive_key.start))
            .or_insert_with(|| {
                (
                    provision_key.clone(),
                    nondestructive_key.clone(),
                    Vec::new(),
                )
            })
            .2
            .push(name.to_owned());
    }
    if has_run && !machines.iter().any(|m| m.name == DEFAULT_MACHINE) {
        run_without_machine1
            .entry(provision_key.start)
            .or_insert_with(|| (provision_key.clone(), Vec::new()))
            .1
            .push(name.to_owned());
    }
}

/// Where a setting is written, when it is (valid or not).
fn slot_key<T>(slot: &Slot<T>) -> Option<Range<usize>> {
    match slot {
        Slot::Set { key, .. } => Some(key.clone()),
        _ => None,
    }
}

/// "its keys: a, b" or "it has no matrix".
fn keys_of(known: &std::collections::BTreeSet<&str>) -> String {
    if known.is_empty() {
        "it has no matrix".into()
    } else {
        format!(
            "its keys: {}",
            known.iter().copied().collect::<Vec<_>>().join(", ")
        )
    }
}

/// "test A" or "tests A, B".
fn test_list(tests: &[String]) -> String {
    match tests {
        [one] => format!("test {one}"),
        _ => format!("tests {}", tests.join(", ")),
    }
}

/// `covers`: globs of source paths, relative to the project root.
fn covers(d: &mut Diagnostics, value: &Value) -> Option<Vec<String>> {
    let globs = string_array(d, "covers", value)?;
    let mut ok = true;
    for (pattern, span) in &globs {
        if let Err(why) = path_glob(pattern) {
            d.error(span.clone(), format!("'covers': {why}"));
            ok = false;
        }
    }
    ok.then(|| globs.into_iter().map(|(g, _)| g.to_owned()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EXAMPLE: &str = r#"#!/usr/bin/env -S vmcheck exec
# Top-level keys are defaults for every test in the file.
timeout = "5m"
covers = ["src/foo/**"]

[TestFoo]
nondestructive = true
restore = ["/etc/motd"]

[TestFoo.testBasic]
run = '''
echo hi > /etc/motd
grep -q hi /etc/motd
'''

[TestFoo.testReboot]
nondestructive = false
provision.machine1 = { memory = "512M" }
provision.machine2 = { image = "debian-12", cpus = 1 }
host = '''
vm exec machine1 'echo hello'
vm reboot machine2
'''
"#;

    fn parse(text: &str) -> Vec<TestDef> {
        match parse_file(Path::new("test/verify/check-foo"), text) {
            Ok(tests) => tests,
            Err(errors) => panic!("{errors:#?}"),
        }
    }

    /// Every error as "line:col: message".
    fn errors(text: &str) -> Vec<String> {
        let errors = parse_file(Path::new("check-x"), text).unwrap_err();
        errors
            .iter()
            .map(|e| {
                assert_eq!(e.path, Path::new("check-x"));
                format!("{}:{}: {}", e.line, e.col, e.message)
            })
            .collect()
    }

    #[test]
    fn a_nondestructive_test_may_have_its_shared_machine_forward_ports() {
        let text = "[TestA.testB]\nnondestructive = true\nprovision.machine1 = { forward = [80] }\nhost = 'x'\n";
        let tests = parse_file(Path::new("check-a"), text).unwrap();
        assert!(tests[0].nondestructive);
        assert_eq!(tests[0].provision[0].forward, [80]);
    }

    #[test]
    fn the_example() {
        let tests = parse(EXAMPLE);
        assert_eq!(tests.len(), 2);
        let basic = &tests[0];
        assert_eq!(basic.name(), "TestFoo.testBasic");
        assert_eq!(basic.file, Path::new("test/verify/check-foo"));
        assert_eq!(basic.line, 10);
        assert!(basic.nondestructive);
        assert_eq!(basic.timeout, Duration::from_secs(300));
        assert_eq!(basic.provision, [MachineReq::default_machine()]);
        assert_eq!(basic.restore, ["/etc/motd"]);
        assert_eq!(
            basic.body,
            Body::Scripts {
                run: Some("echo hi > /etc/motd\ngrep -q hi /etc/motd\n".into()),
                host: None
            }
        );
        assert_eq!(basic.covers, ["src/foo/**"]);

        let reboot = &tests[1];
        assert_eq!(reboot.name(), "TestFoo.testReboot");
        assert_eq!(reboot.line, 16);
        assert!(!reboot.nondestructive);
        assert_eq!(reboot.timeout, Duration::from_secs(300));
        let machines: Vec<_> = reboot
            .provision
            .iter()
            .map(|m| (m.name.as_str(), m.image.as_deref(), m.memory_mib, m.cpus))
            .collect();
        assert_eq!(
            machines,
            [
                ("machine1", None, Some(512), 1),
                ("machine2", Some("debian-12"), None, 1)
            ]
        );
        assert_eq!(reboot.restore, ["/etc/motd"]);
        let Body::Scripts {
            run: None,
            host: Some(host),
        } = &reboot.body
        else {
            panic!("{:?}", reboot.body);
        };
        assert!(host.starts_with("vm exec machine1"));
        assert_eq!(reboot.covers, ["src/foo/**"]);
    }

    #[test]
    fn defaults() {
        let t = &parse("[TestA.testB]\nhost = 'true'\n")[0];
        assert!(!t.nondestructive);
        assert_eq!(t.timeout, DEFAULT_TIMEOUT);
        assert_eq!(t.provision, [MachineReq::default_machine()]);
        assert!(t.todo.is_empty() && t.skip.is_empty() && t.only.is_empty());
        assert!(t.restore.is_empty() && t.artifacts.is_empty() && t.allow_journal.is_empty());
        assert!(t.env.is_empty() && t.covers.is_empty());
        assert!(!t.no_retry_when_changed);
        assert_eq!(
            t.body,
            Body::Scripts {
                run: None,
                host: Some("true".into())
            }
        );
    }

    #[test]
    fn the_innermost_level_wins_and_replaces_the_whole_value() {
        let tests = parse(
            r#"
timeout = 60
env = { A = "file", B = "file" }
todo = "file"
artifacts = ["/var/log/a"]

[TestA]
env = { B = "class" }
timeout = "2m"

[TestA.testClass]
run = "x"

[TestA.testTest]
run = "x"
env = {}
timeout = "3m"
todo = "test"
artifacts = []
no_retry_when_changed = true
allow_journal = ["x"]

[TestB.testFile]
run = "x"
"#,
        );
        let summary: Vec<_> = tests
            .iter()
            .map(|t| {
                let env: Vec<_> = t.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (
                    t.name(),
                    t.timeout.as_secs(),
                    env.join(","),
                    t.todo_reason("any").unwrap_or_default().to_owned(),
                    t.artifacts.len(),
                    t.no_retry_when_changed,
                    t.allow_journal.len(),
                )
            })
            .collect();
        let expected = [
            ("TestA.testClass", 120, "B=class", "file", 1, false, 0),
            ("TestA.testTest", 180, "", "test", 0, true, 1),
            ("TestB.testFile", 60, "A=file,B=file", "file", 1, false, 0),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(n, t, e, todo, a, r, j)| {
                (
                    n.to_string(),
                    *t,
                    e.to_string(),
                    todo.to_string(),
                    *a,
                    *r,
                    *j,
                )
            })
            .collect();
        assert_eq!(summary, expected);
    }

    #[test]
    fn other_spellings_of_the_same_tests() {
        let tests = parse(
            r#"
TestZ.testDotted.run = "dotted"

[TestA]
testInline = { host = "inline", skip = { os = ["arch"], reason = "r" } }

[TestA.testHeader]
run = "header"
[TestA.testHeader.provision.machine1]
memory = 1024
"#,
        );
        let names: Vec<_> = tests.iter().map(|t| (t.name(), t.line)).collect();
        assert_eq!(
            names,
            [
                ("TestA.testHeader".to_owned(), 7),
                ("TestA.testInline".to_owned(), 5),
                ("TestZ.testDotted".to_owned(), 2),
            ]
        );
        assert_eq!(tests[0].provision[0].memory_mib, Some(1024));
        assert_eq!(tests[1].skip[0].reason, "r");
    }

    #[test]
    fn provision_may_omit_machine1_without_run() {
        let t = &parse("[TestA.testB]\nprovision.server = {}\nhost = 'x'\n")[0];
        assert_eq!(t.provision[0].name, "server");
    }

    #[test]
    fn a_nondestructive_class_may_have_destructive_tests_that_provision() {
        let tests = parse(
            "[TestA]\nnondestructive = true\n[TestA.testB]\nnondestructive = false\nprovision.machine1 = {}\nrun = 'x'\n",
        );
        assert!(!tests[0].nondestructive);
    }

    #[test]
    fn invalid() {
        let valid_top = "nondestructive, timeout, provision, todo, skip, only, restore, \
                         artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, \
                         matrix_exclude, matrix_include, matrix_limit, covers, and classes \
                         [Test…]";
        let valid_class = "nondestructive, timeout, provision, todo, skip, only, restore, \
                           artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, \
                           matrix_exclude, matrix_include, matrix_limit, and tests [TestA.test…]";
        let valid_test = "nondestructive, timeout, provision, todo, skip, only, restore, \
                          artifacts, env, no_retry_when_changed, allow_journal, browser, matrix, \
                          matrix_exclude, matrix_include, matrix_limit, run, host, soak, events";
        let cases: Vec<(&str, Vec<String>)> = vec![
            // TOML syntax errors keep toml's message.
            (
                "[TestA.testB]\nrun = 'x\n",
                vec!["2:9: invalid literal string, expected `'`".into()],
            ),
            (
                "[TestA.testB]\nrun = 'x'\n[TestA.testB]\nrun = 'y'\n",
                vec!["3:8: duplicate key".into(), "4:1: duplicate key".into()],
            ),
            (
                "timeout = 5m\n[TestA.testB]\nrun = 'x'\n",
                vec!["1:11: string values must be quoted, expected literal string".into()],
            ),
            // Unknown keys and tables at each level.
            (
                "timout = '5m'\n[TestA.testB]\nrun = 'x'\n",
                vec![format!("1:1: unknown key 'timout' at the top level, did you mean 'timeout'? (valid: {valid_top})")],
            ),
            (
                "[Foo]\nx = 1\n",
                vec!["1:2: unknown table 'Foo' at the top level (class names start with 'Test', e.g. [TestFoo])".into()],
            ),
            (
                "[provison.machine1]\n",
                vec!["1:2: unknown table 'provison' at the top level, did you mean 'provision'? (class names start with 'Test', e.g. [TestFoo])".into()],
            ),
            (
                "[Test-Foo.testB]\nrun = 'x'\n",
                vec!["1:2: invalid class name 'Test-Foo': class names are 'Test' followed by ASCII letters, digits and '_' (e.g. [TestFoo])".into()],
            ),
            (
                "TestFoo = 1\n",
                vec!["1:11: class TestFoo must be a table [TestFoo], found an integer".into()],
            ),
            (
                "[TestA]\nrestor = []\n[TestA.testB]\nrun = 'x'\n",
                vec![format!("2:1: unknown key 'restor' in class TestA, did you mean 'restore'? (valid: {valid_class})")],
            ),
            (
                "[TestA.Basic]\nrun = 'x'\n",
                vec!["1:8: unknown table 'Basic' in class TestA (test names start with 'test', e.g. [TestA.testBar])".into()],
            ),
            (
                "[TestA.test-b]\nrun = 'x'\n",
                vec!["1:8: invalid test name 'test-b': test names are 'test' followed by ASCII letters, digits and '_' (e.g. [TestA.testBar])".into()],
            ),
            (
                "[TestA]\ntestB = 'x'\n",
                vec!["2:9: test TestA.testB must be a table [TestA.testB], found a string".into()],
            ),
            (
                "[[TestA.testB]]\nrun = 'x'\n",
                vec!["1:1: test TestA.testB must be a table [TestA.testB], found an array".into()],
            ),
            (
                "[TestA.testB]\ntimout = '5m'\nrun = 'x'\n",
                vec![format!("2:1: unknown key 'timout' in test TestA.testB, did you mean 'timeout'? (valid: {valid_test})")],
            ),
            (
                "[TestA.testB.extra]\nrun = 'x'\n",
                vec![
                    "1:8: test TestA.testB has nothing to run: add 'run' (a script run as root in machine1) or 'host' (a script run on the host)".into(),
                    format!("1:14: unknown key 'extra' in test TestA.testB (valid: {valid_test})"),
                ],
            ),
            // Keys at the wrong level.
            (
                "run = 'x'\n[TestA.testB]\nrun = 'x'\n",
                vec!["1:1: 'run' is only valid in a test, e.g. under [TestFoo.testBar]".into()],
            ),
            (
                "[TestA]\nhost = 'x'\n[TestA.testB]\nrun = 'x'\n",
                vec!["2:1: 'host' is only valid in a test, e.g. under [TestA.testBar]".into()],
            ),
            (
                "[TestA]\ncovers = []\n[TestA.testB]\nrun = 'x'\ncovers = []\n",
                vec![
                    "2:1: 'covers' is only valid at the top level of a check file, not in class TestA".into(),
                    "5:1: 'covers' is only valid at the top level of a check file, not in test TestA.testB".into(),
                ],
            ),
            // covers.
            (
                "covers = ['src/**', 'src/[']\n[TestA.testB]\nrun = 'x'\n",
                vec!["1:21: 'covers': invalid glob \"src/[\": unclosed character class; missing ']'".into()],
            ),
            (
                "covers = 'src/**'\n[TestA.testB]\nrun = 'x'\n",
                vec!["1:10: 'covers' must be an array of strings, found a string".into()],
            ),
            // Scripts.
            (
                "[TestA.testB]\nnondestructive = true\n",
                vec!["1:8: test TestA.testB has nothing to run: add 'run' (a script run as root in machine1) or 'host' (a script run on the host)".into()],
            ),
            (
                "[TestA.testB]\nrun = '''\n  \n'''\n",
                vec!["2:7: 'run' must not be empty: write the script to run".into()],
            ),
            (
                "[TestA.testB]\nhost = ['ls']\n",
                vec!["2:8: 'host' must be a string, found an array".into()],
            ),
            // Settings are checked at every level.
            (
                "nondestructive = 1\n[TestA]\ntimeout = '1x'\n[TestA.testB]\nrun = 'x'\nmemory = 5\nskip = {}\n",
                vec![
                    "1:18: 'nondestructive' must be true or false, found an integer".into(),
                    "3:11: 'timeout': invalid duration \"1x\": unknown unit \"x\"; use h, m or s, as in \"90s\", \"10m\" or \"1h30m\"".into(),
                    format!("6:1: unknown key 'memory' in test TestA.testB (valid: {valid_test})"),
                    "7:8: 'skip' needs 'os', a list of TEST_OS globs (e.g. os = [\"debian-*\"]), or 'matrix', values of the test's matrix (e.g. matrix = { fs = \"xfs\" })".into(),
                    "7:8: 'skip' needs a 'reason'".into(),
                ],
            ),
            // nondestructive with provision, on the resolved test, once per pair of keys.
            (
                "[TestA.testB]\nnondestructive = true\nprovision.machine1 = {}\nrun = 'x'\n",
                vec!["3:1: 'provision' conflicts with 'nondestructive = true' (line 2) for test TestA.testB: nondestructive tests run on shared machines and cannot provision their own (they may only have machine1 forward ports: provision.machine1 = { forward = [9090] })".into()],
            ),
            (
                "nondestructive = true\n[TestA]\nprovision.machine1 = {}\n[TestA.testB]\nrun = 'x'\n[TestA.testC]\nhost = 'x'\n[TestA.testD]\nhost = 'x'\nnondestructive = false\n",
                vec!["3:1: 'provision' conflicts with 'nondestructive = true' (line 1) for tests TestA.testB, TestA.testC: nondestructive tests run on shared machines and cannot provision their own (they may only have machine1 forward ports: provision.machine1 = { forward = [9090] })".into()],
            ),
            // run needs machine1.
            (
                "[TestA]\nprovision.server = {}\n[TestA.testB]\nrun = 'x'\n[TestA.testC]\nhost = 'x'\n",
                vec!["2:1: 'provision' has no machine1, which 'run' needs (test TestA.testB): add machine1 or use 'host' instead of 'run'".into()],
            ),
            // Empty classes and files.
            (
                "[TestA]\nnondestructive = true\n[TestB.testC]\nrun = 'x'\n",
                vec!["1:2: class TestA has no tests: add one as [TestA.testSomething]".into()],
            ),
            (
                "#!/usr/bin/env -S vmcheck exec\ntimeout = 5\n",
                vec!["1:1: no tests in this file: write each test as a [TestClass.testMethod] table".into()],
            ),
            ("", vec!["1:1: no tests in this file: write each test as a [TestClass.testMethod] table".into()]),
        ];
        let mut failures = Vec::new();
        for (text, expected) in cases {
            let actual = errors(text);
            if actual != expected {
                failures.push(format!(
                    "{text}\n  expected: {expected:#?}\n  actual:   {actual:#?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn every_error_of_a_file_is_reported_in_order() {
        let text = "\
timeout = 0
[TestA]
provision.Bad = {}
[TestA.testOne]
run = 'x'
env = { 'A-B' = 'x' }
restore = ['relative']
[TestA.testTwo]
allow_journal = ['(']
";
        let lines: Vec<_> = errors(text)
            .into_iter()
            .map(|e| e.split(':').take(2).collect::<Vec<_>>().join(":"))
            .collect();
        assert_eq!(lines, ["1:11", "3:11", "6:9", "7:12", "8:8", "9:18"]);
    }

    #[test]
    fn tests_of_a_file_with_errors_are_still_returned_internally() {
        let FileRead { tests, errors, .. } =
            parse_partial(Path::new("f"), "[TestA.testB]\ntimout = 1\nrun = 'x'\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(tests.len(), 1);
        assert_eq!((tests[0].def.line, tests[0].col), (1, 8));
    }

    const MATRIX: &str = r#"
matrix = { server = ["busybox", "debian-12"], client = ["busybox", "debian-12"] }
timeout = [{ matrix = { server = "debian-*" }, timeout = "15m" }, "5m"]

[TestNet]
matrix_exclude = [{ server = "busybox", client = "busybox" }]
matrix_include = [{ client = "debian-12", extra = "yes" }, { server = "debian-13", client = "debian-12" }]

[TestNet.testPing]
skip = { matrix = { server = "debian-13" }, reason = "no image yet" }
todo = { matrix = { client = "busybox", server = "debian-12" }, reason = "bug #7" }
provision.server = { image = "{matrix.server}" }
provision.client = { image = "{matrix.client}", memory = "256M" }
host = "vm exec client ping -c1 $VMCHECK_SERVER_IP"

[TestNet.testPlain]
matrix = { fs = ["ext4"] }
timeout = "5m"
matrix_exclude = [{ fs = "xfs" }]
matrix_include = []
only = [{ matrix = { fs = "btrfs" }, reason = "btrfs only" }]
run = "true"
"#;

    #[test]
    fn matrix_cases_are_tests_with_their_values() {
        let read = parse_partial(Path::new("check-m"), MATRIX);
        assert!(read.errors.is_empty(), "{:?}", read.errors);
        let rows: Vec<String> = read
            .tests
            .iter()
            .map(|p| {
                let t = &p.def;
                let images: Vec<_> = t.provision.iter().map(|m| m.image_or("-")).collect();
                format!(
                    "{} {}s {} skip={:?} todo={:?} extra={:?}",
                    t.name(),
                    t.timeout.as_secs(),
                    images.join(","),
                    plan_skip(t),
                    t.todo_reason("debian-12"),
                    t.env.get("VMCHECK_MATRIX_EXTRA"),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                "TestNet.testPing[client=debian-12,server=busybox] 300s busybox,debian-12 skip=None todo=None extra=Some(\"yes\")",
                "TestNet.testPing[client=busybox,server=debian-12] 900s debian-12,busybox skip=None todo=Some(\"bug #7\") extra=None",
                "TestNet.testPing[client=debian-12,server=debian-12] 900s debian-12,debian-12 skip=None todo=None extra=Some(\"yes\")",
                "TestNet.testPing[client=debian-12,server=debian-13] 900s debian-13,debian-12 skip=Some(\"no image yet\") todo=None extra=None",
                "TestNet.testPlain[fs=ext4] 300s - skip=Some(\"btrfs only\") todo=None extra=None",
            ]
        );
        let ping = &read.tests[0].def;
        assert_eq!(
            ping.env["VMCHECK_MATRIX"],
            "client=debian-12,server=busybox"
        );
        assert_eq!(ping.env["VMCHECK_MATRIX_SERVER"], "busybox");
        assert_eq!(ping.base_name(), ping.name());
        assert_eq!(ping.method_name(), "TestNet.testPing");
        // The exclude entry of testPlain matches nothing: a warning, not an error.
        let warnings: Vec<String> = read.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            [
                "check-m:19:19: test TestNet.testPlain: 'matrix_exclude': this entry matches no case of the matrix"
            ]
        );
    }

    fn plan_skip(t: &TestDef) -> Option<String> {
        crate::planning::plan::skip_reason(t, "debian-12")
    }

    #[test]
    fn matrix_references_must_be_declared() {
        let cases = [
            (
                "[TestA.testB]\nmatrix = { a = [1] }\nskip = { matrix = { b = \"1\" }, reason = \"r\" }\nrun = 'x'\n",
                "3:21: 'skip': 'b' is not a matrix key of test TestA.testB (its keys: a)",
            ),
            (
                "[TestA.testB]\ntodo = { matrix = { b = \"1\" }, reason = \"r\" }\nrun = 'x'\n",
                "2:21: 'todo': 'b' is not a matrix key of test TestA.testB (it has no matrix)",
            ),
            (
                "[TestA.testB]\nmatrix = { a = [1] }\ntimeout = [{ matrix = { c = \"1\" }, timeout = 5 }]\nrun = 'x'\n",
                "3:25: 'timeout': 'c' is not a matrix key of test TestA.testB (its keys: a)",
            ),
            (
                "[TestA.testB]\nmatrix = { a = [1] }\nprovision.machine1 = { image = \"{matrix.b}\" }\nrun = 'x'\n",
                "3:32: 'provision.machine1.image': test TestA.testB [a=1] has no matrix value 'b'",
            ),
            (
                "[TestA.testB]\nmatrix = { a = [\"x\"] }\nmatrix_include = [{ b = \"y\" }]\nprovision.machine1 = { image = \"img-{matrix.b}\" }\nrun = 'x'\n",
                "",
            ),
            (
                "[TestA]\nmatrix_exclude = [{ a = 1 }]\n[TestA.testB]\nrun = 'x'\n",
                "2:1: 'matrix_exclude' applies to test TestA.testB, which has no 'matrix'",
            ),
            (
                "[TestA.testB]\nprovision.machine1 = { image = \"{matrix}\" }\nrun = 'x'\n",
                "2:32: 'provision.machine1.image': invalid image name \"{matrix}\"",
            ),
        ];
        for (text, want) in cases {
            let read = parse_partial(Path::new("f"), text);
            let errors: Vec<String> = read
                .errors
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
                .collect();
            if want.is_empty() {
                assert!(errors.is_empty(), "{text}: {errors:?}");
                let images: Vec<_> = read
                    .tests
                    .iter()
                    .map(|t| t.def.provision[0].image.clone())
                    .collect();
                assert_eq!(images, [None.or(Some("img-y".into())); 1], "{text}");
                continue;
            }
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "{text}: {errors:?}"
            );
        }
    }
}
