//! One autopkgtest as the runner runs it ([`AptTest`]): plain data made by the collector
//! from a source tree's `debian/tests/control`, carried in the test's `Body`.

use crate::machine::layer::Layer;
use std::path::PathBuf;
use std::sync::Arc;

/// What runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptCommand {
    /// A `Tests:` script: its path relative to the tree (`debian/tests/smoke`).
    Script(String),
    /// A `Test-Command:`, run with `bash -ec`.
    Shell(String),
}

/// The restrictions that change how vmcheck runs a test (the others only decide whether
/// it runs, in the collector).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// `needs-root`: else the test runs as `AUTOPKGTEST_NORMAL_USER`.
    pub root: bool,
    /// `allow-stderr`: output on stderr does not fail the test.
    pub allow_stderr: bool,
    /// `skippable`: exit status 77 skips the test.
    pub skippable: bool,
    /// `flaky`: a failure is reported as FLAKY and counts like a skip.
    pub flaky: bool,
    /// `superficial`: a pass says little (autopkgtest's exit code 8 when only these pass).
    pub superficial: bool,
    /// `needs-sudo`: the normal user may use sudo without a password.
    pub sudo: bool,
    /// `build-needed`: the tree is built (`debian/rules build`) before the test runs.
    pub build: bool,
    /// `needs-internet` run with `--needs-internet=try`: a failure is a skip.
    pub internet_try: bool,
}

/// What `--needs-internet` (autopkgtest's option) does with tests that need the internet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Internet {
    /// Skip them, and let no guest out: vmcheck's default (autopkgtest's is `run`).
    #[default]
    Skip,
    /// Run them with the network open to their machine; a failure is reported as a skip.
    Try,
    /// Run them with the network open to their machine.
    Run,
}

/// An autopkgtest of a source package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptTest {
    /// The source tree on the host; in the guest it is the test's working directory.
    pub tree: PathBuf,
    pub command: AptCommand,
    pub behaviour: Behaviour,
    /// The test's dependencies, installed as a layer of the machine (`None`: nothing to
    /// install).
    pub layer: Option<Arc<Layer>>,
    /// Its machine's network is open (a `needs-internet` test, run by choice); every other
    /// autopkgtest's machine reaches nothing but the host's SSH forward.
    pub internet: bool,
    /// Why its dependencies cannot be installed (autopkgtest's "badpkg"): the test fails
    /// with this, without running.
    pub badpkg: Option<String>,
}
