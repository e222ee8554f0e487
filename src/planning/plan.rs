//! The test plan: which loaded tests run (with their ids and any TEST_OS skip), which are
//! left out and why, and the order of the nondestructive queue.
//!
//! The main type is [`TestPlan`], built by [`plan`] from the tests of
//! [`checkfile::load`](crate::checkfile::load). It is plain data shared by `--list`, the
//! scheduler and the reporters, so they agree on every test's id and fate.
//!
//! A test whose `skip`/`only` excludes TEST_OS stays in the plan with a `skip_reason`
//! (it is reported as skipped, without booting anything); a test left out by the command
//! line is in `excluded` with an [`ExcludeReason`].

use crate::checkfile::TestDef;
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What to select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// The run's TEST_OS: one, or several separated by commas (`busybox,debian-12`), when
    /// every test runs on each (see [`run_oses`]).
    pub test_os: String,
    /// Keep only tests whose `Class.method` contains one of these; empty keeps all.
    pub filters: Vec<String>,
    /// Filters must equal the whole `Class.method` name (`--exact`).
    pub exact: bool,
    /// Leave out the tests with exactly these names: a test's (every case of its matrix),
    /// or one case's (`Class.method[fs=xfs]`).
    pub exclude: Vec<String>,
    /// Keep only matrix cases with these values (`--matrix KEY=VALUE`): one of the values
    /// given for a key, for every key given; empty keeps all.
    pub matrix: Vec<(String, String)>,
    /// Leave out destructive tests.
    pub nondestructive_only: bool,
}

/// The tests to run and the tests left out.
#[derive(Debug, Clone, Default)]
pub struct TestPlan {
    /// In the order given to [`plan`] (`load` sorts by file, class, method), ids from 1.
    pub tests: Vec<PlannedTest>,
    /// In the same order.
    pub excluded: Vec<Excluded>,
    /// Filters that match no test at all (probably typos), in the order given.
    pub unmatched_filters: Vec<String>,
    /// Exclude names that name no test at all (probably typos), in the order given.
    pub unknown_excludes: Vec<String>,
    /// `--matrix KEY=VALUE` that no test's case has (probably typos), in the order given.
    pub unmatched_matrix: Vec<String>,
}

/// A test that is part of the run.
#[derive(Debug, Clone)]
pub struct PlannedTest {
    /// 1-based, in plan order.
    pub id: usize,
    pub def: Arc<TestDef>,
    /// Set when `skip`/`only` excludes TEST_OS: `"<TEST_OS>: <reason>"`. Such a test is
    /// reported as skipped and never started.
    pub skip_reason: Option<String>,
}

/// A test left out of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    pub name: String,
    pub file: PathBuf,
    pub reason: ExcludeReason,
}

/// Why a test is not in the run. When several apply, the first in this order is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExcludeReason {
    /// Its name contains none of the filters.
    Filtered,
    /// Its name is one of the excluded names.
    Excluded,
    /// It is not a matrix case with the `--matrix` values.
    Matrix,
    /// It is destructive and only nondestructive tests were asked for.
    Destructive,
    /// `--shard K/N` put it in another shard.
    OtherShard,
}

impl fmt::Display for ExcludeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExcludeReason::Filtered => "does not match any filter",
            ExcludeReason::Excluded => "excluded by name",
            ExcludeReason::Matrix => "not a matrix case with the --matrix values",
            ExcludeReason::Destructive => {
                "destructive, and only nondestructive tests were asked for"
            }
            ExcludeReason::OtherShard => "in another shard",
        })
    }
}

/// The OSes of a run's TEST_OS (`busybox,debian-12`: both), in the order given. Several
/// make TEST_OS an axis of the run: each test runs on each, named for it
/// (`T.m[TEST_OS=busybox]`). The values must have been checked ([`check_test_os`]).
pub fn run_oses(test_os: &str) -> Vec<&str> {
    test_os.split(',').collect()
}

/// The error in a TEST_OS value, if any: every OS a valid image name, none twice.
pub fn check_test_os(test_os: &str) -> Result<(), String> {
    let oses = run_oses(test_os);
    for (i, os) in oses.iter().enumerate() {
        if !crate::image::valid_name(os) {
            return Err(format!(
                "TEST_OS={test_os}: \"{os}\" is not an image name (lower-case letters, \
                 digits, '.' and '-'; several are separated by commas)"
            ));
        }
        if oses[..i].contains(os) {
            return Err(format!("TEST_OS={test_os}: {os} is given twice"));
        }
    }
    Ok(())
}

/// Selects the tests to run, keeping their order, and numbers them from 1. With several
/// TEST_OS, each test is there once per OS, next to each other.
pub fn plan(tests: Vec<TestDef>, opts: &PlanOptions) -> TestPlan {
    let oses = run_oses(&opts.test_os);
    let tests: Box<dyn Iterator<Item = TestDef>> = if oses.len() > 1 {
        Box::new(tests.into_iter().flat_map(move |def| {
            oses.iter()
                .map(|os| TestDef {
                    os: Some(os.to_string()),
                    ..def.clone()
                })
                .collect::<Vec<_>>()
        }))
    } else {
        Box::new(tests.into_iter())
    };
    let mut result = TestPlan::default();
    let mut matched_filters = HashSet::new();
    let mut names = HashSet::new();
    let mut matrix_seen = HashSet::new();
    for def in tests {
        let name = def.name();
        let method = def.method_name();
        for (k, v) in &opts.matrix {
            if axis_value(&def, k) == Some(v.as_str()) {
                matrix_seen.insert((k.as_str(), v.as_str()));
            }
        }
        let matching: Vec<&str> = opts
            .filters
            .iter()
            .map(String::as_str)
            .filter(|f| {
                if opts.exact {
                    name == *f
                } else {
                    name.contains(f)
                }
            })
            .collect();
        let filtered_out = !opts.filters.is_empty() && matching.is_empty();
        matched_filters.extend(matching);
        let reason = if filtered_out {
            Some(ExcludeReason::Filtered)
        } else if opts
            .exclude
            .iter()
            .any(|e| *e == name || *e == method || (def.os.is_some() && *e == def.base_name()))
        {
            Some(ExcludeReason::Excluded)
        } else if !matrix_selects(&def, &opts.matrix) {
            Some(ExcludeReason::Matrix)
        } else if opts.nondestructive_only && !def.nondestructive {
            Some(ExcludeReason::Destructive)
        } else {
            None
        };
        if def.os.is_some() {
            names.insert(def.base_name());
        }
        names.insert(name.clone());
        names.insert(method);
        match reason {
            Some(reason) => result.excluded.push(Excluded {
                name,
                file: def.file,
                reason,
            }),
            None => result.tests.push(PlannedTest {
                id: result.tests.len() + 1,
                skip_reason: skip_reason(&def, def.os(&opts.test_os)),
                def: Arc::new(def),
            }),
        }
    }
    result.unmatched_filters = opts
        .filters
        .iter()
        .filter(|f| !matched_filters.contains(f.as_str()))
        .cloned()
        .collect();
    result.unknown_excludes = opts
        .exclude
        .iter()
        .filter(|e| !names.contains(e.as_str()))
        .cloned()
        .collect();
    result.unmatched_matrix = opts
        .matrix
        .iter()
        .filter(|(k, v)| !matrix_seen.contains(&(k.as_str(), v.as_str())))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    result
}

/// A test's value on axis `key`: its matrix case's, or its TEST_OS when the run has
/// several (`TEST_OS`).
fn axis_value<'a>(def: &'a TestDef, key: &str) -> Option<&'a str> {
    if key == crate::checkfile::OS_KEY {
        return def.os.as_deref();
    }
    def.case.as_ref().and_then(|case| case.get(key))
}

/// Whether a test is selected by `--matrix` values: for every key given, its value is one
/// of those given for the key.
fn matrix_selects(def: &TestDef, wanted: &[(String, String)]) -> bool {
    let keys: std::collections::BTreeSet<&str> = wanted.iter().map(|(k, _)| k.as_str()).collect();
    keys.into_iter().all(|key| {
        wanted
            .iter()
            .any(|(k, v)| k == key && axis_value(def, k) == Some(v.as_str()))
    })
}

/// Every test of `plan` `n` times (`run --repeat N`): its runs one after the other, each
/// its own test (`TestClass.testMethod[repeat=K]`), renumbered from 1.
pub fn repeat(mut plan: TestPlan, n: u32) -> TestPlan {
    let tests = std::mem::take(&mut plan.tests);
    for t in tests {
        for index in 1..=n {
            let def = TestDef {
                repeat: Some(crate::checkfile::Repeat { index, total: n }),
                ..(*t.def).clone()
            };
            plan.tests.push(PlannedTest {
                id: plan.tests.len() + 1,
                def: Arc::new(def),
                skip_reason: t.skip_reason.clone(),
            });
        }
    }
    plan
}

/// The check file's reason, as written, when `skip` matches TEST_OS or `only` does not
/// (`# SKIP <reason>`; the run's TEST_OS is in its report already).
pub fn skip_reason(def: &TestDef, test_os: &str) -> Option<String> {
    if let Some(reason) = crate::checkfile::first_match(&def.skip, test_os) {
        return Some(reason.to_owned());
    }
    match def.only.first() {
        Some(first) if crate::checkfile::first_match(&def.only, test_os).is_none() => {
            Some(first.reason.clone())
        }
        _ => None,
    }
}

/// Whether the nondestructive queue runs in descending name order on `test_os`: when
/// CRC-32 of TEST_OS is odd, as Cockpit does, so that half of the images run each
/// direction and tests that depend on each other's order are exposed.
pub fn nondestructive_descending(test_os: &str) -> bool {
    crc32fast::hash(test_os.as_bytes()) & 1 == 1
}

/// Sorts nondestructive test names (`Class.method`) into run order on `test_os`:
/// ascending, or descending when [`nondestructive_descending`].
pub fn nondestructive_order<T: AsRef<str>>(test_os: &str, names: &mut [T]) {
    names.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    if nondestructive_descending(test_os) {
        names.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkfile::OsCondition;

    fn def(file: &str, name: &str, nondestructive: bool) -> TestDef {
        TestDef {
            nondestructive,
            ..TestDef::sample(file, name)
        }
    }

    fn tests() -> Vec<TestDef> {
        vec![
            def("check-a", "TestA.testOne", true),
            def("check-a", "TestA.testTwo", false),
            def("check-b", "TestB.testOne", true),
            def("check-b", "TestB.testThree", false),
        ]
    }

    fn opts(filters: &[&str], exclude: &[&str], nondestructive_only: bool) -> PlanOptions {
        PlanOptions {
            test_os: "debian-12".into(),
            filters: filters.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            nondestructive_only,
            ..Default::default()
        }
    }

    #[test]
    fn exact_filters_match_whole_names_only() {
        let tests = vec![
            TestDef::sample("check-a", "TestA.testOne"),
            TestDef::sample("check-a", "TestA.testOneMore"),
        ];
        let mut o = opts(&["TestA.testOne"], &[], false);
        assert_eq!(
            plan(tests.clone(), &o).tests.len(),
            2,
            "substring by default"
        );
        o.exact = true;
        let p = plan(tests, &o);
        let names: Vec<String> = p.tests.iter().map(|t| t.def.name()).collect();
        assert_eq!(names, ["TestA.testOne"]);
    }

    #[test]
    fn selection() {
        use ExcludeReason::*;
        type Case<'a> = (PlanOptions, &'a [&'a str], &'a [(&'a str, ExcludeReason)]);
        let cases: &[Case] = &[
            (
                opts(&[], &[], false),
                &[
                    "TestA.testOne",
                    "TestA.testTwo",
                    "TestB.testOne",
                    "TestB.testThree",
                ],
                &[],
            ),
            (
                opts(&["testOne"], &[], false),
                &["TestA.testOne", "TestB.testOne"],
                &[("TestA.testTwo", Filtered), ("TestB.testThree", Filtered)],
            ),
            (
                opts(&["TestB", "A.testT"], &[], false),
                &["TestA.testTwo", "TestB.testOne", "TestB.testThree"],
                &[("TestA.testOne", Filtered)],
            ),
            (
                // Exclusion is by exact name only.
                opts(&[], &["TestA.testOne", "TestB"], false),
                &["TestA.testTwo", "TestB.testOne", "TestB.testThree"],
                &[("TestA.testOne", Excluded)],
            ),
            (
                opts(&[], &[], true),
                &["TestA.testOne", "TestB.testOne"],
                &[
                    ("TestA.testTwo", Destructive),
                    ("TestB.testThree", Destructive),
                ],
            ),
            (
                // The first reason wins: filtered, then excluded, then destructive.
                opts(&["TestA"], &["TestB.testOne", "TestA.testTwo"], true),
                &["TestA.testOne"],
                &[
                    ("TestA.testTwo", Excluded),
                    ("TestB.testOne", Filtered),
                    ("TestB.testThree", Filtered),
                ],
            ),
        ];
        for (opts, kept, excluded) in cases {
            let plan = plan(tests(), opts);
            let names: Vec<_> = plan.tests.iter().map(|t| t.def.name()).collect();
            assert_eq!(names, *kept, "{opts:?}");
            let ids: Vec<_> = plan.tests.iter().map(|t| t.id).collect();
            assert_eq!(ids, (1..=kept.len()).collect::<Vec<_>>(), "{opts:?}");
            let out: Vec<_> = plan
                .excluded
                .iter()
                .map(|e| (e.name.as_str(), e.reason))
                .collect();
            assert_eq!(out, *excluded, "{opts:?}");
        }
    }

    #[test]
    fn excluded_tests_keep_their_file() {
        let plan = plan(tests(), &opts(&["TestA"], &[], false));
        assert_eq!(plan.excluded[0].file, PathBuf::from("check-b"));
    }

    #[test]
    fn typos_in_filters_and_excludes_are_reported() {
        let plan = plan(
            tests(),
            &opts(
                &["TestA", "TestZ", "testOne"],
                &["TestA.testTwo", "TestA.testTow"],
                false,
            ),
        );
        assert_eq!(plan.unmatched_filters, ["TestZ"]);
        assert_eq!(plan.unknown_excludes, ["TestA.testTow"]);
    }

    #[test]
    fn skip_and_only_by_test_os() {
        let condition = |os: &[&str], reason: &str| OsCondition {
            os: os.iter().map(|s| s.to_string()).collect(),
            reason: reason.into(),
        };
        let mut skipped = def("check-a", "TestA.testSkip", false);
        skipped.skip = vec![condition(&["debian-*"], "no apt")];
        let mut only = def("check-a", "TestA.testOnly", false);
        only.only = vec![condition(&["fedora-*", "rhel-*"], "needs dnf")];
        let mut both = def("check-a", "TestA.testBoth", false);
        both.only = vec![condition(&["debian-*"], "needs apt")];
        both.skip = vec![condition(&["debian-12"], "broken on 12")];

        let cases = [
            (
                "debian-12",
                [Some("no apt"), Some("needs dnf"), Some("broken on 12")],
            ),
            ("debian-13", [Some("no apt"), Some("needs dnf"), None]),
            ("fedora-40", [None, None, Some("needs apt")]),
        ];
        for (test_os, expected) in cases {
            let mut o = opts(&[], &[], false);
            o.test_os = test_os.into();
            let plan = plan(vec![skipped.clone(), only.clone(), both.clone()], &o);
            let reasons: Vec<_> = plan
                .tests
                .iter()
                .map(|t| t.skip_reason.as_deref())
                .collect();
            assert_eq!(reasons, expected, "{test_os}");
        }
    }

    #[test]
    fn several_test_os_are_an_axis_of_the_run() {
        let condition = |os: &[&str], reason: &str| OsCondition {
            os: os.iter().map(|s| s.to_string()).collect(),
            reason: reason.into(),
        };
        let mut only = def("check-a", "TestA.testOnly", false);
        only.only = vec![condition(&["debian-*"], "needs apt")];
        let mut case = def("check-b", "TestB.testCase", true);
        case.case = Some(crate::checkfile::Case::new(
            [("fs".to_string(), "xfs".to_string())].into(),
        ));
        let mut o = opts(&[], &[], false);
        o.test_os = "busybox,debian-12".into();
        let all = plan(vec![only.clone(), case.clone()], &o);
        let got: Vec<(usize, String, Option<&str>)> = all
            .tests
            .iter()
            .map(|t| (t.id, t.def.name(), t.skip_reason.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    "TestA.testOnly[TEST_OS=busybox]".into(),
                    Some("needs apt")
                ),
                (2, "TestA.testOnly[TEST_OS=debian-12]".into(), None),
                (3, "TestB.testCase[TEST_OS=busybox,fs=xfs]".into(), None),
                (4, "TestB.testCase[TEST_OS=debian-12,fs=xfs]".into(), None),
            ]
        );
        assert_eq!(all.tests[1].def.os("busybox,debian-12"), "debian-12");
        let names = |p: TestPlan| -> Vec<String> { p.tests.iter().map(|t| t.def.name()).collect() };
        // --matrix TEST_OS=… picks one OS's cases, with other keys too.
        o.matrix = vec![("TEST_OS".into(), "debian-12".into())];
        assert_eq!(
            names(plan(vec![only.clone(), case.clone()], &o)),
            [
                "TestA.testOnly[TEST_OS=debian-12]",
                "TestB.testCase[TEST_OS=debian-12,fs=xfs]"
            ]
        );
        o.matrix.push(("fs".into(), "xfs".into()));
        assert_eq!(
            names(plan(vec![only.clone(), case.clone()], &o)),
            ["TestB.testCase[TEST_OS=debian-12,fs=xfs]"]
        );
        // --exclude takes a test on every OS, a case on every OS, or one OS's.
        o.matrix.clear();
        for (exclude, left) in [
            ("TestA.testOnly", 2),
            ("TestB.testCase[fs=xfs]", 2),
            ("TestB.testCase[TEST_OS=busybox,fs=xfs]", 3),
        ] {
            o.exclude = vec![exclude.into()];
            let p = plan(vec![only.clone(), case.clone()], &o);
            assert_eq!(p.tests.len(), left, "{exclude}");
            assert!(p.unknown_excludes.is_empty(), "{exclude}");
        }
        // One TEST_OS: names as ever, and TEST_OS is no axis.
        o.exclude.clear();
        o.test_os = "debian-12".into();
        o.matrix = vec![("TEST_OS".into(), "debian-12".into())];
        let p = plan(vec![only, case], &o);
        assert!(p.tests.is_empty());
        assert_eq!(p.unmatched_matrix, ["TEST_OS=debian-12"]);
    }

    #[test]
    fn test_os_values_are_image_names_given_once() {
        assert_eq!(check_test_os("debian-12"), Ok(()));
        assert_eq!(check_test_os("busybox,debian-12"), Ok(()));
        for (bad, says) in [
            ("busybox,", "\"\" is not an image name"),
            ("busybox,,debian-12", "\"\" is not an image name"),
            ("busybox, debian-12", "\" debian-12\" is not an image name"),
            ("Debian", "\"Debian\" is not an image name"),
            ("a]b", "\"a]b\" is not an image name"),
            ("busybox,busybox", "busybox is given twice"),
        ] {
            let err = check_test_os(bad).unwrap_err();
            assert!(err.starts_with(&format!("TEST_OS={bad}: ")), "{err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn nondestructive_direction_follows_crc32_parity() {
        // CRC-32 values as Python's binascii.crc32 computes them, as Cockpit uses.
        let cases = [
            ("", 0, false),
            ("arch", 4161937994, false),
            ("busybox", 2231892705, true),
            ("debian-12", 233518283, true),
            ("fedora-40", 2060362247, true),
        ];
        for (test_os, crc, descending) in cases {
            assert_eq!(crc32fast::hash(test_os.as_bytes()), crc, "{test_os}");
            assert_eq!(nondestructive_descending(test_os), descending, "{test_os}");
        }
    }

    #[test]
    fn nondestructive_order_sorts_by_name() {
        let mut names = vec!["TestB.testA", "TestA.testB", "TestA.testA"];
        nondestructive_order("arch", &mut names);
        assert_eq!(names, ["TestA.testA", "TestA.testB", "TestB.testA"]);
        nondestructive_order("busybox", &mut names);
        assert_eq!(names, ["TestB.testA", "TestA.testB", "TestA.testA"]);
        let mut owned = vec![String::from("b"), String::from("a")];
        nondestructive_order("arch", &mut owned);
        assert_eq!(owned, ["a", "b"]);
    }

    #[test]
    fn matrix_values_and_whole_tests_select_cases() {
        let case = |name: &str, values: &[(&str, &str)]| TestDef {
            case: Some(crate::checkfile::Case::new(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )),
            ..TestDef::sample("check-m", name)
        };
        let tests = vec![
            case("TestM.testA", &[("fs", "ext4"), ("s", "busybox")]),
            case("TestM.testA", &[("fs", "xfs"), ("s", "busybox")]),
            case("TestM.testA", &[("fs", "xfs"), ("s", "debian")]),
            TestDef::sample("check-m", "TestM.testPlain"),
        ];
        let names = |o: &PlanOptions| -> Vec<String> {
            plan(tests.clone(), o)
                .tests
                .iter()
                .map(|t| t.def.name())
                .collect()
        };
        let mut o = opts(&[], &[], false);
        o.matrix = vec![("fs".into(), "xfs".into())];
        assert_eq!(
            names(&o),
            [
                "TestM.testA[fs=xfs,s=busybox]",
                "TestM.testA[fs=xfs,s=debian]"
            ]
        );
        // Values of one key are alternatives; keys must all match.
        o.matrix.push(("fs".into(), "ext4".into()));
        o.matrix.push(("s".into(), "busybox".into()));
        assert_eq!(
            names(&o),
            [
                "TestM.testA[fs=ext4,s=busybox]",
                "TestM.testA[fs=xfs,s=busybox]"
            ]
        );
        o.matrix.push(("s".into(), "nope".into()));
        assert_eq!(plan(tests.clone(), &o).unmatched_matrix, ["s=nope"]);
        assert_eq!(
            plan(tests.clone(), &o).excluded.last().unwrap().reason,
            ExcludeReason::Matrix
        );
        // --exclude takes a test (all of its cases) or one case; filters match ids.
        let o = opts(&[], &["TestM.testA", "TestM.testPlain[x=y]"], false);
        assert_eq!(names(&o), ["TestM.testPlain"]);
        assert_eq!(
            plan(tests.clone(), &o).unknown_excludes,
            ["TestM.testPlain[x=y]"]
        );
        let o = opts(&["s=debian"], &["TestM.testA[fs=ext4,s=busybox]"], false);
        assert_eq!(names(&o), ["TestM.testA[fs=xfs,s=debian]"]);
    }
}
