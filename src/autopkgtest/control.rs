//! `debian/tests/control` → the tests of a source package, as autopkgtest 5.28's
//! `parse_debian_source` reads them (`lib/testdesc.py`).
//!
//! - `Tests:` names scripts in the tests directory (`Tests-Directory:`, default
//!   `debian/tests`), split at commas and whitespace; `Test-Command:` is one shell command,
//!   named `command1`, `command2`, ... by a counter over the `Test-Command` stanzas that have
//!   no `Features: test-name=NAME` (which names it instead). Exactly one of the two.
//! - `Depends:` defaults to `@`; `needs-recommends` appends `@recommends@`.
//! - Tests autopkgtest would skip carry its reason, checked in its order: an unknown field
//!   (`unknown field NAME`), the `Architecture:` field for the testbed, a `/` in the name, an
//!   unknown restriction (`unknown restriction NAME`). Capability checks depend on the
//!   testbed and are left to [`super::restriction::testbed_skip_reason`].
//! - What autopkgtest rejects as invalid control data is an error here, with its words:
//!   neither or both of `Tests`/`Test-Command`, an empty `Tests`, a bad `test-name` feature,
//!   an invalid dependency. autopkgtest stops at the first; every error of the file is
//!   collected here. Stricter than autopkgtest: lines that are neither fields nor
//!   continuations and duplicate fields (see `deb822.rs`), an empty `test-name=`, two tests
//!   of the same name, a `Tests-Directory` that is absolute or leaves the tree.
//! - [`load`] also reports a script that does not exist for a test that would run
//!   (autopkgtest's badpkg `PATH does not exist`).

use super::arch;
use super::deb822::{self, Stanza};
use super::depends::{self, TestDepend};
use super::error::{ControlError, ControlErrors};
use super::restriction::{self, Restriction};
use std::path::{Component, Path, PathBuf};

/// What a test runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBody {
    /// A script, by its path relative to the source tree's root (`debian/tests/NAME`).
    Script(PathBuf),
    /// A shell command, run with `bash -e`.
    Command(String),
}

/// One test of `debian/tests/control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSpec {
    /// autopkgtest's name: the `Tests:` entry, `commandN`, or `test-name=`.
    pub name: String,
    /// Line of the stanza that defines it.
    pub line: usize,
    pub body: TestBody,
    /// In file order, without duplicates.
    pub restrictions: Vec<Restriction>,
    /// `Features:` words (including `test-name=NAME`); unknown ones mean nothing.
    pub features: Vec<String>,
    /// `Depends:` checked (default `@`, `needs-recommends` appended `@recommends@`).
    pub depends: Vec<TestDepend>,
    /// Line of the `Depends:` field, if given.
    pub depends_line: Option<usize>,
    /// `Classes:` words: informational.
    pub classes: Vec<String>,
    /// `Architecture:` words (`any`, `linux-any`, `!i386`); empty means any.
    pub architecture: Vec<String>,
    /// Why autopkgtest would skip it (its words), before looking at the testbed.
    pub skip: Option<String>,
}

impl TestSpec {
    pub fn has(&self, r: &Restriction) -> bool {
        self.restrictions.contains(r)
    }
}

/// The tests of one control file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestControl {
    pub path: PathBuf,
    pub tests: Vec<TestSpec>,
}

const KNOWN_FIELDS: [&str; 8] = [
    "Tests",
    "Test-Command",
    "Restrictions",
    "Features",
    "Depends",
    "Tests-Directory",
    "Classes",
    "Architecture",
];

/// Python's `string.capwords` of a field name, as autopkgtest names an unknown field.
fn capwords(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// Parses the control file text of `path` for a testbed of architecture `host`.
pub fn parse(path: &Path, text: &str, host: &str) -> Result<TestControl, ControlErrors> {
    let (stanzas, mut errors) = deb822::parse(path, text);
    let mut tests: Vec<TestSpec> = Vec::new();
    let mut command_counter = 0;
    for stanza in &stanzas {
        parse_stanza(
            path,
            stanza,
            host,
            &mut command_counter,
            &mut tests,
            &mut errors,
        );
    }
    for (i, t) in tests.iter().enumerate() {
        if let Some(first) = tests[..i].iter().find(|o| o.name == t.name) {
            errors.push(ControlError::new(
                path,
                t.line,
                format!(
                    "duplicate test name {} (first at line {})",
                    t.name, first.line
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(TestControl {
            path: path.to_path_buf(),
            tests,
        })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(ControlErrors(errors))
    }
}

fn parse_stanza(
    path: &Path,
    stanza: &Stanza,
    host: &str,
    command_counter: &mut usize,
    tests: &mut Vec<TestSpec>,
    errors: &mut Vec<ControlError>,
) {
    let line = stanza.line;
    let mut err = |at: usize, message: String| errors.push(ControlError::new(path, at, message));
    // Whether this stanza had an error already: it then defines no test.
    let mut failed = false;

    let restrictions: Vec<Restriction> =
        restriction::words(stanza.get("Restrictions").unwrap_or(""))
            .iter()
            .map(|w| Restriction::parse(w))
            .collect();

    let mut test_name: Option<String> = None;
    let features = restriction::words(stanza.get("Features").unwrap_or(""));
    let features_line = stanza.field("Features").map_or(line, |f| f.line);
    for feature in &features {
        let (key, value) = match feature.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (feature.as_str(), None),
        };
        if key != "test-name" {
            continue;
        }
        match value {
            None => {
                err(features_line, "test-name feature with no argument".into());
                failed = true;
            }
            Some(_) if test_name.is_some() => {
                err(features_line, "only one test-name feature allowed".into());
                failed = true;
            }
            Some("") => {
                err(features_line, "test-name feature with an empty name".into());
                failed = true;
            }
            Some(v) => test_name = Some(v.to_string()),
        }
    }
    let architecture = restriction::words(stanza.get("Architecture").unwrap_or(""));
    let classes = restriction::words(stanza.get("Classes").unwrap_or(""));

    let depends_field = stanza.field("Depends");
    let mut depends_text = depends_field.map_or("@".to_string(), |f| f.value.clone());
    if restrictions.contains(&Restriction::NeedsRecommends) {
        depends_text.push_str(",@recommends@");
    }
    let depends_line = depends_field.map(|f| f.line);
    let depends = match depends::parse_test_depends(&depends_text) {
        Ok(d) => d,
        Err(messages) => {
            for m in messages {
                err(depends_line.unwrap_or(line), m);
            }
            failed = true;
            Vec::new()
        }
    };

    let tests_directory = match stanza.field("Tests-Directory") {
        None => PathBuf::from("debian/tests"),
        Some(f) => {
            let dir = PathBuf::from(f.value.trim());
            if dir.is_absolute() || f.value.trim().is_empty() {
                err(f.line, "Tests-Directory must be a relative path".into());
                failed = true;
            } else if dir.components().any(|c| c == Component::ParentDir) {
                err(
                    f.line,
                    "Tests-Directory must stay inside the source tree".into(),
                );
                failed = true;
            }
            dir
        }
    };

    let unknown_field = stanza
        .fields
        .iter()
        .find(|f| !KNOWN_FIELDS.iter().any(|k| f.is(k)))
        .map(|f| format!("unknown field {}", capwords(&f.name)));

    let skip_for = |name: &str| -> Option<String> {
        unknown_field
            .clone()
            .or_else(|| arch::skip_reason(host, &architecture))
            .or_else(|| {
                name.contains('/')
                    .then(|| "test name may not contain / character".to_string())
            })
            .or_else(|| restriction::unknown_reason(&restrictions))
    };
    let spec = |name: String, body: TestBody, skip: Option<String>| TestSpec {
        name,
        line,
        body,
        restrictions: restrictions.clone(),
        features: features.clone(),
        depends: depends.clone(),
        depends_line,
        classes: classes.clone(),
        architecture: architecture.clone(),
        skip,
    };

    match (stanza.field("Tests"), stanza.field("Test-Command")) {
        (Some(_), Some(_)) => {
            err(
                line,
                "Only one of \"Tests\" or \"Test-Command\" may be given".into(),
            );
        }
        (None, None) => {
            err(line, "missing \"Tests\" or \"Test-Command\" field".into());
        }
        (Some(field), None) => {
            // Not deduplicated: autopkgtest defines a test per word.
            let names: Vec<String> = field
                .value
                .split(|c: char| c == ',' || deb822::py_space(c))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect();
            if names.is_empty() {
                err(field.line, "\"Tests\" field is empty".into());
                return;
            }
            if test_name.is_some() {
                err(
                    features_line,
                    "test-name feature incompatible with Tests".into(),
                );
                return;
            }
            if failed {
                return;
            }
            for name in names {
                let skip = skip_for(&name);
                let body = TestBody::Script(tests_directory.join(&name));
                tests.push(spec(name, body, skip));
            }
        }
        (None, Some(field)) => {
            let name = match test_name {
                Some(n) => n,
                None => {
                    *command_counter += 1;
                    format!("command{command_counter}")
                }
            };
            if failed {
                return;
            }
            let skip = skip_for(&name);
            tests.push(spec(name, TestBody::Command(field.value.clone()), skip));
        }
    }
}

/// Reads `ROOT/debian/tests/control` of the source tree at `root` for a testbed of
/// architecture `host`, and checks that the script of every test that would run exists.
pub fn load(root: &Path, host: &str) -> Result<TestControl, ControlErrors> {
    let path = root.join("debian/tests/control");
    let text = deb822::read(&path)?;
    let control = parse(&path, &text, host)?;
    let missing: Vec<ControlError> = control
        .tests
        .iter()
        .filter(|t| t.skip.is_none())
        .filter_map(|t| match &t.body {
            TestBody::Script(script) if !root.join(script).is_file() => Some(ControlError::new(
                &path,
                t.line,
                format!("{} does not exist", script.display()),
            )),
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        Ok(control)
    } else {
        Err(ControlErrors(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<TestSpec> {
        match parse(Path::new("t/control"), text, "amd64") {
            Ok(c) => c.tests,
            Err(e) => panic!("{e}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("t/control"), text, "amd64") {
            Ok(c) => panic!("parsed: {c:?}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn names(tests: &[TestSpec]) -> Vec<&str> {
        tests.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn tests_and_commands_are_named_as_autopkgtest_names_them() {
        let t = ok("Tests: a, b\tc\n\n\
                    Test-Command: true\n\n\
                    Test-Command: echo x\nFeatures: test-name=named\n\n\
                    test-command: false\n\n\
                    Tests: d\nTests-Directory: tests/dep8\n");
        assert_eq!(
            names(&t),
            ["a", "b", "c", "command1", "named", "command2", "d"]
        );
        assert_eq!(t[0].body, TestBody::Script("debian/tests/a".into()));
        assert_eq!(t[3].body, TestBody::Command("true".into()));
        assert_eq!(t[5].body, TestBody::Command("false".into()));
        assert_eq!(t[6].body, TestBody::Script("tests/dep8/d".into()));
        assert_eq!(t[3].line, 3);
        assert_eq!(t[4].features, ["test-name=named"]);
        assert!(
            t.iter()
                .all(|t| t.depends == [TestDepend::Binaries] && t.skip.is_none())
        );
    }

    #[test]
    fn unnamed_commands_count_even_when_skipped() {
        let t = ok("Test-Command: a\nRestrictions: bogus\n\nTest-Command: b\n");
        assert_eq!(names(&t), ["command1", "command2"]);
        assert_eq!(t[0].skip.as_deref(), Some("unknown restriction bogus"));
    }

    #[test]
    fn restrictions_features_classes_depends() {
        let t = ok("Tests: t\n\
                    Restrictions: needs-root,allow-stderr\n  breaks-testbed needs-root\n\
                    Features: foo\n\
                    Classes: desktop, graphics-driver\n\
                    Depends: @, @builddeps@, foo (>= 1.2) | bar [amd64], baz:any\n");
        let t = &t[0];
        assert_eq!(
            t.restrictions,
            [
                Restriction::NeedsRoot,
                Restriction::AllowStderr,
                Restriction::BreaksTestbed
            ]
        );
        assert!(t.has(&Restriction::BreaksTestbed));
        assert_eq!(t.features, ["foo"]);
        assert_eq!(t.classes, ["desktop", "graphics-driver"]);
        assert_eq!(t.depends_line, Some(6));
        assert_eq!(
            t.depends,
            [
                TestDepend::Binaries,
                TestDepend::BuildDeps,
                TestDepend::Clause("foo (>= 1.2) | bar [amd64]".into()),
                TestDepend::Clause("baz:any".into()),
            ]
        );
    }

    #[test]
    fn needs_recommends_appends_recommends() {
        let t = ok("Tests: a\nRestrictions: needs-recommends\n\n\
                    Tests: b\nRestrictions: needs-recommends\nDepends: x\n");
        assert_eq!(t[0].depends, [TestDepend::Binaries, TestDepend::Recommends]);
        assert_eq!(
            t[1].depends,
            [TestDepend::Clause("x".into()), TestDepend::Recommends]
        );
        assert!(t[0].skip.is_none());
    }

    #[test]
    fn skips_in_autopkgtests_order_and_words() {
        let t = ok(
            "Tests: a\nFoo-BAR: 1\nArchitecture: !amd64\nRestrictions: bogus\n\n\
                    Tests: b\nArchitecture: !amd64\nRestrictions: bogus\n\n\
                    Test-Command: x\nFeatures: test-name=c/d\nRestrictions: bogus\n\n\
                    Tests: e\nRestrictions: needs-root hint-testsuite-triggers\n\n\
                    Tests: f\nArchitecture: arm64 s390x\n\n\
                    Tests: g\nArchitecture: linux-any\n\n\
                    Tests: h\nArchitecture: any-i386, !amd64\n\n\
                    Tests: i\nArchitecture: all\n",
        );
        let skips: Vec<Option<&str>> = t.iter().map(|t| t.skip.as_deref()).collect();
        assert_eq!(
            skips,
            [
                Some("unknown field Foo-bar"),
                Some("Test declares architecture as not supported: amd64"),
                Some("test name may not contain / character"),
                Some("unknown restriction hint-testsuite-triggers"),
                Some(
                    "Test lists explicitly supported architectures, but the current \
                     architecture amd64 isn't listed."
                ),
                None,
                Some("Test declares architecture as not supported: amd64"),
                Some("Arch 'all' not allowed in Architecture field"),
            ]
        );
        assert_eq!(t[6].architecture, ["any-i386", "!amd64"]);
    }

    #[test]
    fn invalid_control_is_every_error_with_its_line() {
        let e = errors(
            "Depends: foo\n\n\
             Tests: a\nTest-Command: b\n\n\
             Tests: ,\n\n\
             Tests: a\nFeatures: test-name=x\n\n\
             Test-Command: a\nFeatures: test-name test-name=y\n\n\
             Test-Command: a\nFeatures: test-name=y, test-name=z\n\n\
             Test-Command: a\nFeatures: test-name=\n\n\
             Tests: a\nDepends: Foo, bar (>= 1.0 ), @ | x, baz <!nocheck>, ok (<< 2)\n\n\
             Tests: p\nTests-Directory: /abs\n\n\
             Tests: q\nTests-Directory: ../up\n\n\
             Tests: r r\n\n\
             bad line\n",
        );
        assert_eq!(
            e,
            [
                "t/control:1: missing \"Tests\" or \"Test-Command\" field",
                "t/control:3: Only one of \"Tests\" or \"Test-Command\" may be given",
                "t/control:6: \"Tests\" field is empty",
                "t/control:9: test-name feature incompatible with Tests",
                "t/control:12: test-name feature with no argument",
                "t/control:15: only one test-name feature allowed",
                "t/control:18: test-name feature with an empty name",
                "t/control:21: Test Depends field contains an invalid dependency `Foo'",
                "t/control:21: Test Depends field contains dependency `bar (>= 1.0 )' with an \
                 invalid version",
                "t/control:21: Test Depends field contains an invalid dependency `@'",
                "t/control:21: Test Depends field contains an invalid dependency `baz <!nocheck>'",
                "t/control:24: Tests-Directory must be a relative path",
                "t/control:27: Tests-Directory must stay inside the source tree",
                "t/control:29: duplicate test name r (first at line 29)",
                "t/control:31: expected a field (`Name: value`) or a continuation line, found \
                 \"bad line\"",
            ]
        );
    }

    #[test]
    fn empty_file_has_no_tests() {
        assert!(ok("").is_empty());
        assert!(ok("# only a comment\n\n").is_empty());
    }

    fn fixture(package: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/autopkgtest")
            .join(package)
    }

    fn fixture_tests(package: &str) -> Vec<TestSpec> {
        let path = fixture(package).join("control");
        let text = deb822::read(&path).unwrap();
        match parse(&path, &text, "amd64") {
            Ok(c) => c.tests,
            Err(e) => panic!("{e}"),
        }
    }

    fn summary(t: &TestSpec) -> String {
        let body = match &t.body {
            TestBody::Script(p) => p.display().to_string(),
            TestBody::Command(c) => c.clone(),
        };
        let mut r: Vec<&str> = t.restrictions.iter().map(Restriction::name).collect();
        r.sort();
        format!("{} | {body} | {r:?} | {:?}", t.name, t.features)
    }

    /// The expected lines are what autopkgtest 5.28's own `testdesc.parse_debian_source`
    /// printed for the same files (name | path or command | sorted restrictions | features).
    #[test]
    fn real_bookworm_control_files() {
        let cases: [(&str, &[&str]); 6] = [
            (
                "hello",
                &[
                    "command1 | hello | [] | []",
                    "upstream-tests | debian/tests/upstream-tests | [] | []",
                ],
            ),
            (
                "grep",
                &[
                    "upstream-test-suite | debian/tests/upstream-test-suite | [\"allow-stderr\"] | []",
                    "egrep-fgrep | debian/tests/egrep-fgrep | [] | []",
                    "stray-backlash-warn | debian/tests/stray-backlash-warn | [] | []",
                ],
            ),
            (
                "iproute2",
                &[
                    "testsuite.sh | debian/tests/testsuite.sh | [\"allow-stderr\", \
                   \"isolation-machine\", \"needs-root\", \"rw-build-tree\"] | []",
                ],
            ),
            (
                "libzstd",
                &[
                    "zstd-selftest | zstd -b1 >/dev/null 2>&1 | [] | [\"test-name=zstd-selftest\"]",
                    "build-pkg-config | env PYTHONPATH=\"$(pwd)/debian/tests/python\" python3 -B -u \
                     -m check_build -c debian/tests/ztest/programs.toml -v -- pkg-make | \
                     [\"allow-stderr\"] | [\"test-name=build-pkg-config\"]",
                    "build-cmake | env PYTHONPATH=\"$(pwd)/debian/tests/python\" python3 -B -u -m \
                     check_build -c debian/tests/ztest/programs.toml -v -- cmake | \
                     [\"allow-stderr\"] | [\"test-name=build-cmake\"]",
                ],
            ),
            (
                "gnutls28",
                &[
                    "run-upstream-testsuite | debian/tests/run-upstream-testsuite | \
                   [\"allow-stderr\", \"rw-build-tree\"] | []",
                ],
            ),
            (
                "nftables",
                &[
                    "command1 | nft -h | [\"needs-root\", \"superficial\"] | []",
                    "internaltest-shell.sh | debian/tests/internaltest-shell.sh | [\"allow-stderr\", \
                     \"flaky\", \"isolation-container\", \"needs-root\"] | []",
                    "internaltest-monitor.sh | debian/tests/internaltest-monitor.sh | \
                     [\"allow-stderr\", \"flaky\", \"isolation-container\", \"needs-root\"] | []",
                    "systemd-service-test.sh | debian/tests/systemd-service-test.sh | \
                     [\"allow-stderr\", \"isolation-container\", \"needs-root\"] | []",
                ],
            ),
        ];
        for (package, expected) in cases {
            let tests = fixture_tests(package);
            let got: Vec<String> = tests.iter().map(summary).collect();
            assert_eq!(got, expected, "{package}");
            assert!(tests.iter().all(|t| t.skip.is_none()), "{package}");
        }
        let grep = fixture_tests("grep");
        assert_eq!(grep[0].line, 1);
        assert_eq!(grep[1].line, 7);
        assert_eq!(grep[0].depends_line, Some(2));
        assert_eq!(grep[1].depends, [TestDepend::Binaries]);
        let iproute2 = fixture_tests("iproute2");
        assert_eq!(iproute2[0].line, 3, "after the leading comment");
        assert!(iproute2[0].depends.contains(&TestDepend::BuildDeps));
        let gnutls = fixture_tests("gnutls28");
        assert!(gnutls[0].depends.contains(&TestDepend::Clause(
            "freebsd-net-tools [kfreebsd-i386 kfreebsd-amd64]".into()
        )));
    }

    #[test]
    fn load_reports_missing_scripts_of_tests_that_run() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("debian/tests")).unwrap();
        std::fs::write(
            root.path().join("debian/tests/control"),
            "Tests: here, gone\n\nTests: skipped\nRestrictions: bogus\n\nTest-Command: true\n",
        )
        .unwrap();
        std::fs::write(root.path().join("debian/tests/here"), "#!/bin/sh\n").unwrap();
        let e = load(root.path(), "amd64").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}:1: debian/tests/gone does not exist",
                root.path().join("debian/tests/control").display()
            )
        );
        std::fs::write(root.path().join("debian/tests/gone"), "").unwrap();
        let c = load(root.path(), "amd64").unwrap();
        assert_eq!(names(&c.tests), ["here", "gone", "skipped", "command1"]);
        let missing = load(&root.path().join("nowhere"), "amd64").unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("nowhere/debian/tests/control: cannot read")
        );
    }
}
