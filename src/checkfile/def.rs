//! [`TestDef`]: one test of a check file with every setting resolved, plain data for the
//! planner, the scheduler and the reporters.

use super::condition::{OsCondition, first_match};
use super::matrix::Case;
use super::provision::MachineReq;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// One test, `TestClass.testMethod`, with its settings resolved from the file, class and
/// test levels (the innermost wins) and defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDef {
    /// The file as it is displayed: relative to the project root when under it, e.g.
    /// `test/verify/check-foo`.
    pub file: PathBuf,
    pub class: String,
    pub method: String,
    /// 1-based line of the test's table header.
    pub line: usize,
    /// Runs on a shared machine that it must leave as it found it. Default: false.
    pub nondestructive: bool,
    /// Hard limit for one attempt. Default: 600 s.
    pub timeout: Duration,
    /// The machines to boot, in the order written; never empty (default: `machine1`).
    /// Always `[machine1]` for a nondestructive test.
    pub provision: Vec<MachineReq>,
    /// Expected to fail where one of these holds on TEST_OS, with the first one's reason.
    pub todo: Vec<OsCondition>,
    /// Skipped where one of these holds on TEST_OS.
    pub skip: Vec<OsCondition>,
    /// Skipped unless one of these holds on TEST_OS (none: never skipped).
    pub only: Vec<OsCondition>,
    /// Absolute guest paths a nondestructive test changes, restored after it.
    pub restore: Vec<String>,
    /// Absolute guest paths collected after each attempt.
    pub artifacts: Vec<String>,
    /// Exported to `run` and `host`.
    pub env: BTreeMap<String, String>,
    /// Do not rerun this test when it is affected by a change.
    pub no_retry_when_changed: bool,
    /// Regexes (validated) of journal messages the test may cause.
    pub allow_journal: Vec<String>,
    /// The test drives a browser on the host: its memory counts in the test's cost.
    pub browser: bool,
    /// What runs the test.
    pub body: Body,
    /// The file's `covers` globs (the same for every test of a file).
    pub covers: Vec<String>,
    /// Which run of a repeated test this is (`run --repeat N`); its name says so.
    pub repeat: Option<Repeat>,
    /// The case of the test's matrix this is; its name says so.
    pub case: Option<Case>,
    /// Its TEST_OS, when the run has several (`TEST_OS=busybox,debian-12`): TEST_OS is then
    /// an axis of the run, and the test's name says which
    /// (`TestClass.testMethod[TEST_OS=busybox,fs=ext4]`).
    pub os: Option<String>,
    /// A soak: the test runs for a duration while its events fire (`soak.rs`).
    pub soak: Option<std::sync::Arc<crate::soak::Soak>>,
}

/// The key of the run's TEST_OS axis in a test's name (`T.m[TEST_OS=busybox]`).
pub const OS_KEY: &str = "TEST_OS";

/// Run `index` (from 1) of `total` runs of one test (`run --repeat N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeat {
    pub index: u32,
    pub total: u32,
}

/// A repeated test's name, `TestClass.testMethod[repeat=3]`, split into the test's own name
/// and the index (0 for a name without one).
pub fn split_repeat(name: &str) -> (&str, u32) {
    if let Some(base) = name.strip_suffix(']')
        && let Some((base, index)) = base.rsplit_once("[repeat=")
        && !index.starts_with(['0', '+'])
        && let Ok(index) = index.parse::<u32>()
    {
        return (base, index);
    }
    (name, 0)
}

/// A test's name without its TEST_OS `os` (`T.m[TEST_OS=busybox,fs=ext4]` →
/// `T.m[fs=ext4]`, `T.m[TEST_OS=busybox][repeat=2]` → `T.m[repeat=2]`): what its outcomes
/// are recorded under, beside the OS.
pub fn strip_os(name: &str, os: &str) -> String {
    let alone = format!("[{OS_KEY}={os}]");
    let first = format!("[{OS_KEY}={os},");
    if let Some(i) = name.find(&first) {
        format!("{}[{}", &name[..i], &name[i + first.len()..])
    } else if let Some(i) = name.find(&alone) {
        format!("{}{}", &name[..i], &name[i + alone.len()..])
    } else {
        name.to_string()
    }
}

/// What runs a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A TOML test's scripts (at least one): `run` as root in `machine1` over SSH, then
    /// `host` on the host.
    Scripts {
        run: Option<String>,
        host: Option<String>,
    },
    /// The executable check file (absolute) that runs the test: `FILE --vmcheck-run NAME`
    /// (see `listing.rs`).
    Executable(PathBuf),
    /// A Debian autopkgtest of a source package (`class`: the source, `method`: the test).
    Autopkgtest(Box<crate::autopkgtest::test::AptTest>),
}

impl Body {
    /// The script run in `machine1`, if the test has one.
    pub fn guest_script(&self) -> Option<&str> {
        match self {
            Body::Scripts { run, .. } => run.as_deref(),
            Body::Executable(_) | Body::Autopkgtest(_) => None,
        }
    }
}

impl TestDef {
    /// The test's id in this run, in every report: its own name ([`TestDef::base_name`]),
    /// and for a repeated test which run it is (`TestClass.testMethod[repeat=3]`).
    pub fn name(&self) -> String {
        match self.repeat {
            Some(r) => format!("{}[repeat={}]", self.case_name(), r.index),
            None => self.case_name(),
        }
    }

    /// The name of the test's case in this run: [`TestDef::base_name`], with its TEST_OS
    /// when the run has several (`TestClass.testMethod[TEST_OS=busybox,fs=ext4]`); what its
    /// estimated duration is known by.
    pub fn case_name(&self) -> String {
        match (&self.os, &self.case) {
            // Upper case sorts before every matrix key (lower case): keys stay sorted.
            (Some(os), Some(case)) => {
                format!("{}[{OS_KEY}={os},{}]", self.method_name(), case.id())
            }
            (Some(os), None) => format!("{}[{OS_KEY}={os}]", self.method_name()),
            (None, _) => self.base_name(),
        }
    }

    /// The test's TEST_OS: its own when the run has several, else the run's `run_os`.
    pub fn os<'a>(&'a self, run_os: &'a str) -> &'a str {
        self.os.as_deref().unwrap_or(run_os)
    }

    /// The test's own name: [`TestDef::method_name`], and for a case of a matrix its
    /// values (`TestClass.testMethod[fs=ext4,server=busybox]`): `VMCHECK_TEST`, and what
    /// its durations and outcomes are recorded under (with its TEST_OS beside it, not in it).
    pub fn base_name(&self) -> String {
        match &self.case {
            Some(case) => format!("{}[{}]", self.method_name(), case.id()),
            None => self.method_name(),
        }
    }

    /// `TestClass.testMethod`; for an autopkgtest `source/test`, as autopkgtest names it:
    /// the name the check file knows (what `--vmcheck-run NAME` runs).
    pub fn method_name(&self) -> String {
        let separator = match self.body {
            Body::Autopkgtest(_) => '/',
            _ => '.',
        };
        format!("{}{separator}{}", self.class, self.method)
    }

    /// The reason the test is expected to fail on `test_os`, if it is.
    pub fn todo_reason(&self, test_os: &str) -> Option<&str> {
        first_match(&self.todo, test_os)
    }

    /// The memory all of the test's machines need together, in MiB: each machine's
    /// `memory`, or else `default_for_image` of its image (TEST_OS unless it names one).
    pub fn memory_mib(&self, default_for_image: impl Fn(&str) -> u32, test_os: &str) -> u32 {
        self.provision
            .iter()
            .map(|m| {
                m.memory_mib
                    .unwrap_or_else(|| default_for_image(m.image_or(test_os)))
            })
            .sum()
    }
}

#[cfg(test)]
impl TestDef {
    /// A destructive test `Class.method` in `file` with every setting at its default and
    /// `run = "true"`: the base that unit tests change what they need in.
    pub(crate) fn sample(file: &str, name: &str) -> TestDef {
        let (class, method) = name.split_once('.').expect("Class.method");
        TestDef {
            file: file.into(),
            class: class.into(),
            method: method.into(),
            line: 1,
            nondestructive: false,
            timeout: Duration::from_secs(600),
            provision: vec![MachineReq::default_machine()],
            todo: vec![],
            skip: vec![],
            only: vec![],
            restore: vec![],
            artifacts: vec![],
            env: BTreeMap::new(),
            no_retry_when_changed: false,
            allow_journal: vec![],
            browser: false,
            body: Body::Scripts {
                run: Some("true".into()),
                host: None,
            },
            covers: vec![],
            repeat: None,
            case: None,
            os: None,
            soak: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_with_several_test_os_names_each_tests_os() {
        let mut t = TestDef::sample("check-a", "TestA.testB");
        t.os = Some("busybox".into());
        assert_eq!(t.name(), "TestA.testB[TEST_OS=busybox]");
        assert_eq!(t.base_name(), "TestA.testB");
        assert_eq!(t.os("debian-12"), "busybox");
        t.case = Some(Case::new(BTreeMap::from([
            ("fs".to_string(), "ext4".to_string()),
            ("a".to_string(), "1".to_string()),
        ])));
        assert_eq!(t.case_name(), "TestA.testB[TEST_OS=busybox,a=1,fs=ext4]");
        assert_eq!(t.base_name(), "TestA.testB[a=1,fs=ext4]");
        t.repeat = Some(Repeat { index: 2, total: 3 });
        let name = t.name();
        assert_eq!(name, "TestA.testB[TEST_OS=busybox,a=1,fs=ext4][repeat=2]");
        assert_eq!(
            strip_os(&name, "busybox"),
            "TestA.testB[a=1,fs=ext4][repeat=2]"
        );
        t.case = None;
        let name = t.name();
        assert_eq!(strip_os(&name, "busybox"), "TestA.testB[repeat=2]");
        // Another OS, or a name without one, is left as it is.
        assert_eq!(strip_os(&name, "debian-12"), name);
        assert_eq!(strip_os("TestA.testB", "busybox"), "TestA.testB");
        t.os = None;
        assert_eq!(t.os("debian-12"), "debian-12");
    }

    #[test]
    fn repeated_names_split_back() {
        let mut t = TestDef::sample("check-a", "TestA.testB");
        assert_eq!(t.name(), "TestA.testB");
        t.repeat = Some(Repeat { index: 3, total: 5 });
        assert_eq!(
            (t.name().as_str(), t.base_name().as_str()),
            ("TestA.testB[repeat=3]", "TestA.testB")
        );
        assert_eq!(split_repeat(&t.name()), ("TestA.testB", 3));
        for plain in [
            "TestA.testB",
            "T.m[repeat=]",
            "T.m[repeat=03]",
            "T.m[repeat=x]",
            "T.m[fs=xfs]",
        ] {
            assert_eq!(split_repeat(plain), (plain, 0));
        }
    }

    fn def(provision: Vec<MachineReq>) -> TestDef {
        TestDef {
            line: 3,
            provision,
            ..TestDef::sample("test/verify/check-foo", "TestFoo.testBar")
        }
    }

    #[test]
    fn name() {
        assert_eq!(def(vec![]).name(), "TestFoo.testBar");
    }

    #[test]
    fn memory_sums_overrides_and_image_defaults() {
        let defaults = |image: &str| match image {
            "busybox" => 256,
            "debian-12" => 512,
            _ => 1024,
        };
        let machine = |image: Option<&str>, memory_mib| MachineReq {
            image: image.map(Into::into),
            memory_mib,
            ..MachineReq::default_machine()
        };
        let cases = [
            (vec![machine(None, None)], "busybox", 256),
            (vec![machine(None, None)], "debian-12", 512),
            (vec![machine(None, Some(2048))], "busybox", 2048),
            (
                vec![machine(None, None), machine(Some("debian-12"), None)],
                "busybox",
                768,
            ),
            (
                vec![machine(None, Some(100)), machine(Some("other"), None)],
                "busybox",
                1124,
            ),
        ];
        for (provision, test_os, expected) in cases {
            assert_eq!(
                def(provision.clone()).memory_mib(defaults, test_os),
                expected,
                "{provision:?} on {test_os}"
            );
        }
    }
}
