//! Test restrictions (`Restrictions:`): every one autopkgtest 5.28 or the DEP-8 specification
//! names, with its meaning, and the testbed capabilities autopkgtest requires for them.

use std::fmt;

/// One restriction of a test.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Restriction {
    /// Output on stderr is not a failure.
    AllowStderr,
    /// The test may break the testbed: it needs a testbed of its own, thrown away afterwards
    /// (capability `revert-full-system`).
    BreaksTestbed,
    /// The test runs from a built source tree: the tree is built (with its build
    /// dependencies) before the test, which may not assume they are still installed.
    BuildNeeded,
    /// The test fails intermittently: a failure is reported `FLAKY` and counts as a skip.
    Flaky,
    /// Not a test: its Depends only feed dpkg-source's Testsuite-Triggers; never run.
    /// autopkgtest 5.28 does not know it, so it skips such a test as an unknown restriction.
    HintTestsuiteTriggers,
    /// The test starts services or opens ports: it needs its own container or machine.
    IsolationContainer,
    /// The test talks to the kernel or reboots: it needs its own machine.
    IsolationMachine,
    /// The test needs unrestricted internet access (capability `has_internet`).
    NeedsInternet,
    /// The test reboots the testbed with `/tmp/autopkgtest-reboot MARK` and is run again
    /// with `AUTOPKGTEST_REBOOT_MARK=MARK` (capability `reboot`).
    NeedsReboot,
    /// Deprecated: the Recommends of the source's binaries are installed too, as if the
    /// Depends ended with `@recommends@` (autopkgtest rewrites it so).
    NeedsRecommends,
    /// The test runs as root (capability `root-on-testbed`); otherwise it runs as a normal
    /// user (`AUTOPKGTEST_NORMAL_USER`).
    NeedsRoot,
    /// The test runs as a normal user in group `sudo` with password-less sudo; `sudo` is
    /// added to its dependencies.
    NeedsSudo,
    /// The test writes to the built source tree (so it may be copied first).
    RwBuildTree,
    /// Dependencies that cannot be installed make the test skipped, not failed.
    SkipNotInstallable,
    /// Exit status 77 means skipped.
    Skippable,
    /// The test gives little coverage: a pass is weak evidence, and a package whose
    /// non-superficial tests were all skipped counts as all skipped.
    Superficial,
    /// A restriction nobody defined: the test is skipped (`unknown restriction NAME`).
    Unknown(String),
}

/// What a testbed can do, as autopkgtest's virtualisation servers announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `revert-full-system`: the whole testbed can be thrown away after a test.
    RevertFullSystem,
    /// `has_internet`: the testbed reaches the internet.
    HasInternet,
    /// `reboot`: the testbed can be rebooted in the middle of a test.
    Reboot,
    /// `root-on-testbed`: commands can run as root.
    RootOnTestbed,
    /// `isolation-container`: the testbed is at least a container of its own.
    IsolationContainer,
    /// `isolation-machine`: the testbed is a machine of its own.
    IsolationMachine,
}

impl Capability {
    /// autopkgtest's name.
    pub fn name(self) -> &'static str {
        match self {
            Capability::RevertFullSystem => "revert-full-system",
            Capability::HasInternet => "has_internet",
            Capability::Reboot => "reboot",
            Capability::RootOnTestbed => "root-on-testbed",
            Capability::IsolationContainer => "isolation-container",
            Capability::IsolationMachine => "isolation-machine",
        }
    }
}

/// Every named restriction, in autopkgtest's (alphabetical) order.
pub const ALL: [Restriction; 16] = [
    Restriction::AllowStderr,
    Restriction::BreaksTestbed,
    Restriction::BuildNeeded,
    Restriction::Flaky,
    Restriction::HintTestsuiteTriggers,
    Restriction::IsolationContainer,
    Restriction::IsolationMachine,
    Restriction::NeedsInternet,
    Restriction::NeedsReboot,
    Restriction::NeedsRecommends,
    Restriction::NeedsRoot,
    Restriction::NeedsSudo,
    Restriction::RwBuildTree,
    Restriction::SkipNotInstallable,
    Restriction::Skippable,
    Restriction::Superficial,
];

impl Restriction {
    /// The restriction a `Restrictions:` word names (case-sensitive, as in autopkgtest).
    pub fn parse(word: &str) -> Restriction {
        ALL.iter()
            .find(|r| r.name() == word)
            .cloned()
            .unwrap_or_else(|| Restriction::Unknown(word.to_string()))
    }

    /// The name as written in `Restrictions:`.
    pub fn name(&self) -> &str {
        match self {
            Restriction::AllowStderr => "allow-stderr",
            Restriction::BreaksTestbed => "breaks-testbed",
            Restriction::BuildNeeded => "build-needed",
            Restriction::Flaky => "flaky",
            Restriction::HintTestsuiteTriggers => "hint-testsuite-triggers",
            Restriction::IsolationContainer => "isolation-container",
            Restriction::IsolationMachine => "isolation-machine",
            Restriction::NeedsInternet => "needs-internet",
            Restriction::NeedsReboot => "needs-reboot",
            Restriction::NeedsRecommends => "needs-recommends",
            Restriction::NeedsRoot => "needs-root",
            Restriction::NeedsSudo => "needs-sudo",
            Restriction::RwBuildTree => "rw-build-tree",
            Restriction::SkipNotInstallable => "skip-not-installable",
            Restriction::Skippable => "skippable",
            Restriction::Superficial => "superficial",
            Restriction::Unknown(name) => name,
        }
    }

    /// Whether autopkgtest 5.28 knows it (its `known_restrictions`); a test with one it does
    /// not know is skipped. `hint-testsuite-triggers` is not known to 5.28.
    pub fn known_to_autopkgtest(&self) -> bool {
        !matches!(
            self,
            Restriction::HintTestsuiteTriggers | Restriction::Unknown(_)
        )
    }

    /// The testbed capabilities it needs (autopkgtest's `RESTRICTIONS_REQUIRE_CAPS`): every
    /// inner list is one requirement that any of its capabilities satisfies.
    pub fn required_capabilities(&self) -> &'static [&'static [Capability]] {
        use Capability::*;
        match self {
            Restriction::BreaksTestbed => &[&[RevertFullSystem]],
            Restriction::NeedsInternet => &[&[HasInternet]],
            Restriction::NeedsReboot => &[&[Reboot]],
            Restriction::NeedsRoot => &[&[RootOnTestbed]],
            Restriction::IsolationContainer => &[&[IsolationContainer, IsolationMachine]],
            Restriction::IsolationMachine => &[&[IsolationMachine]],
            _ => &[],
        }
    }
}

impl fmt::Display for Restriction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The words of a `Restrictions:` (or `Features:`, `Classes:`, `Architecture:`) value: split at
/// commas and whitespace, duplicates dropped, first occurrence kept.
pub fn words(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in value
        .split(|c: char| c == ',' || super::deb822::py_space(c))
        .filter(|w| !w.is_empty())
    {
        if !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

/// The first restriction autopkgtest 5.28 does not know, as its skip reason
/// (`unknown restriction NAME`).
pub fn unknown_reason(restrictions: &[Restriction]) -> Option<String> {
    restrictions
        .iter()
        .find(|r| !r.known_to_autopkgtest())
        .map(|r| format!("unknown restriction {}", r.name()))
}

/// autopkgtest's `check_testbed_compat`: `None` if a testbed with `caps` can run a test with
/// `restrictions`, else the skip reason in autopkgtest's words (an unknown restriction first,
/// then the first missing capability in restriction order).
pub fn testbed_skip_reason(restrictions: &[Restriction], caps: &[Capability]) -> Option<String> {
    if let Some(reason) = unknown_reason(restrictions) {
        return Some(reason);
    }
    for r in restrictions {
        for need in r.required_capabilities() {
            if need.iter().any(|c| caps.contains(c)) {
                continue;
            }
            let mut names: Vec<String> = need.iter().map(|c| format!("\"{}\"", c.name())).collect();
            names.sort();
            let needed = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => {
                    format!("{} and/or {last}", rest.join(", "))
                }
                _ => names.concat(),
            };
            return Some(format!(
                "Test restriction \"{}\" requires testbed capability {needed}",
                r.name()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for r in ALL.iter() {
            assert_eq!(&Restriction::parse(r.name()), r);
        }
        assert_eq!(
            Restriction::parse("Needs-Root"),
            Restriction::Unknown("Needs-Root".into())
        );
        assert_eq!(Restriction::parse("x").to_string(), "x");
    }

    #[test]
    fn words_split_at_commas_and_space() {
        assert_eq!(words(" a, b ,c\td,,a "), ["a", "b", "c", "d"]);
        assert!(words(" , ").is_empty());
    }

    #[test]
    fn skip_reasons_are_autopkgtests() {
        let r = |s: &str| {
            words(s)
                .iter()
                .map(|w| Restriction::parse(w))
                .collect::<Vec<_>>()
        };
        assert_eq!(unknown_reason(&r("needs-root allow-stderr")), None);
        assert_eq!(
            unknown_reason(&r("needs-root hint-testsuite-triggers")).unwrap(),
            "unknown restriction hint-testsuite-triggers"
        );
        let qemu = [
            Capability::RevertFullSystem,
            Capability::RootOnTestbed,
            Capability::IsolationMachine,
            Capability::Reboot,
        ];
        assert_eq!(
            testbed_skip_reason(&r("isolation-container needs-reboot breaks-testbed"), &qemu),
            None
        );
        assert_eq!(
            testbed_skip_reason(&r("needs-root needs-internet"), &qemu).unwrap(),
            "Test restriction \"needs-internet\" requires testbed capability \"has_internet\""
        );
        assert_eq!(
            testbed_skip_reason(&r("isolation-container"), &[]).unwrap(),
            "Test restriction \"isolation-container\" requires testbed capability \
             \"isolation-container\" and/or \"isolation-machine\""
        );
        assert_eq!(
            testbed_skip_reason(&r("bogus needs-internet"), &[]).unwrap(),
            "unknown restriction bogus"
        );
    }
}
