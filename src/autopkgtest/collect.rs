//! The collector: source packages (trees or `.dsc` files) → tests for the plan, like the
//! tests of any other check file. Each test is named `SOURCE/NAME` and runs on a machine of
//! the test image restored with its dependencies in place (a machine layer): shared with
//! the other tests of that dependency set (nondestructive, in a pool of its own) unless it
//! `breaks-testbed`. It skips what autopkgtest skips, with its reasons, plus what this
//! testbed cannot offer.

use super::control::{self, TestBody, TestSpec};
use super::deps::{self, ResolveError, Resolved};
use super::restriction::{self, Capability, Restriction};
use super::source::{self, SourcePackage};
use super::test::{AptCommand, AptTest, Behaviour, Internet};
use crate::checkfile::{Body, MachineReq, OsCondition, TestDef};
use crate::machine::layer::Layer;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The architecture of every testbed.
const ARCH: &str = super::TESTBED_ARCH;
/// Memory of a testbed, as autopkgtest's qemu backend gives it.
pub const MEMORY_MIB: u32 = 1024;
/// Where the dependencies' files go in the guest, for the layer's script.
const DEBS: &str = "/var/cache/vmcheck-debs";
/// The longest installing one dependency set may take (autopkgtest's install timeout is
/// 3000 s).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(3000);

/// What the collector needs to know of the test image.
pub struct Testbed<'a> {
    /// `TEST_OS`.
    pub image: &'a str,
    /// The image's package database (`dpkg-status`), to resolve dependencies against.
    pub dpkg_status: &'a Path,
    /// vmcheck's cache of downloaded packages.
    pub cache: &'a Path,
    /// Where `.dsc` files are unpacked (lives as long as the run).
    pub scratch: &'a Path,
    /// Resolve (and download) the dependencies; a listing does not.
    pub resolve: bool,
    /// `--needs-internet`.
    pub internet: Internet,
}

impl Testbed<'_> {
    /// What a vmcheck machine offers, as autopkgtest's capabilities: a machine of its own
    /// per test, thrown away after it, rebootable, with root; the internet only when
    /// `--needs-internet` lets tests have it.
    fn capabilities(&self) -> Vec<Capability> {
        let mut caps = vec![
            Capability::RevertFullSystem,
            Capability::Reboot,
            Capability::RootOnTestbed,
            Capability::IsolationContainer,
            Capability::IsolationMachine,
        ];
        if self.internet != Internet::Skip {
            caps.push(Capability::HasInternet);
        }
        caps
    }
}

/// The tests of `sources`, or every problem found (each one line naming the file).
pub fn collect(sources: &[PathBuf], bed: &Testbed) -> Result<Vec<TestDef>, Vec<String>> {
    let mut tests = Vec::new();
    let mut errors = Vec::new();
    let mut resolved: HashMap<String, Result<Resolved, ResolveError>> = HashMap::new();
    for (i, given) in sources.iter().enumerate() {
        let root = match tree(given, bed.scratch, i) {
            Ok(root) => root,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let (source, control) = match (SourcePackage::load(&root), control::load(&root, ARCH)) {
            (Ok(s), Ok(c)) => (s, c),
            (s, c) => {
                for e in s.err().into_iter().chain(c.err()) {
                    errors.extend(e.0.iter().map(ToString::to_string));
                }
                continue;
            }
        };
        for spec in &control.tests {
            match test(given, &source, spec, bed, &mut resolved) {
                Ok(t) => tests.push(t),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(tests)
    } else {
        Err(errors)
    }
}

/// The source tree of `given`: the directory itself, or a `.dsc` unpacked into `scratch`.
fn tree(given: &Path, scratch: &Path, i: usize) -> Result<PathBuf, String> {
    if given.extension().is_some_and(|e| e == "dsc") && given.is_file() {
        let dest = scratch.join(format!("source-{i}"));
        source::unpack_dsc(given, &dest).map_err(|e| e.to_string())?;
        Ok(dest)
    } else if given.join("debian").is_dir() {
        Ok(given.to_path_buf())
    } else {
        Err(format!(
            "{}: not a source package: neither a directory with debian/ nor a .dsc file",
            given.display()
        ))
    }
}

/// One test of a source package.
fn test(
    given: &Path,
    source: &SourcePackage,
    spec: &TestSpec,
    bed: &Testbed,
    resolved: &mut HashMap<String, Result<Resolved, ResolveError>>,
) -> Result<TestDef, String> {
    let has = |r: Restriction| spec.restrictions.contains(&r);
    let mut skip = spec
        .skip
        .clone()
        .or_else(|| restriction::testbed_skip_reason(&spec.restrictions, &bed.capabilities()));
    let mut badpkg = None;
    let mut layer = None;
    if skip.is_none() && bed.resolve {
        let clauses = super::depends::resolve(&spec.depends, &spec.restrictions, source, ARCH)
            .map_err(|e| format!("{}: test {}: {e}", given.display(), spec.name))?;
        let expr = clauses.join(", ");
        let got = resolved
            .entry(expr.clone())
            .or_insert_with(|| deps::resolve(&expr, bed.dpkg_status, bed.cache));
        match got {
            Ok(r) if r.debs.is_empty() => {}
            Ok(r) => layer = Some(Arc::new(deps_layer(r))),
            Err(ResolveError::NotInstallable { .. }) if has(Restriction::SkipNotInstallable) => {
                skip = Some("installation fails and skip-not-installable set".into());
            }
            Err(e @ ResolveError::NotInstallable { .. }) => badpkg = Some(e.to_string()),
            Err(e) => return Err(format!("{}: test {}: {e}", given.display(), spec.name)),
        }
    }
    let command = match &spec.body {
        TestBody::Script(path) => AptCommand::Script(path.to_string_lossy().into_owned()),
        TestBody::Command(c) => AptCommand::Shell(c.clone()),
    };
    Ok(TestDef {
        file: given.to_path_buf(),
        class: source.name.clone(),
        method: spec.name.clone(),
        line: spec.line,
        // Tests that leave the testbed usable share machines (of their dependency set), as
        // they share autopkgtest's testbed; the others get a fresh one.
        nondestructive: !has(Restriction::BreaksTestbed),
        timeout: crate::checkfile::DEFAULT_TIMEOUT,
        provision: vec![MachineReq {
            memory_mib: Some(MEMORY_MIB),
            ..MachineReq::default_machine()
        }],
        todo: vec![],
        skip: skip.into_iter().map(OsCondition::always).collect(),
        only: vec![],
        restore: vec![],
        artifacts: vec!["/tmp/autopkgtest/artifacts".into()],
        env: Default::default(),
        no_retry_when_changed: false,
        // autopkgtest judges a test by its exit status and stderr alone.
        allow_journal: vec![".*".into()],
        browser: false,
        body: Body::Autopkgtest(Box::new(AptTest {
            tree: source.root.clone(),
            command,
            behaviour: Behaviour {
                root: has(Restriction::NeedsRoot),
                allow_stderr: has(Restriction::AllowStderr),
                skippable: has(Restriction::Skippable),
                flaky: has(Restriction::Flaky),
                superficial: has(Restriction::Superficial),
                sudo: has(Restriction::NeedsSudo),
                build: has(Restriction::BuildNeeded),
                internet_try: has(Restriction::NeedsInternet) && bed.internet == Internet::Try,
            },
            internet: has(Restriction::NeedsInternet) && bed.internet != Internet::Skip,
            layer,
            badpkg,
        })),
        covers: vec![],
        repeat: None,
        case: None,
        os: None,
        soak: None,
    })
}

/// The layer that installs a resolved dependency set, offline, with apt.
fn deps_layer(r: &Resolved) -> Layer {
    // apt sees no archive, only these files: it must not fetch what it prefers from one (it
    // does, for a version a file also has), and the guest has no network. dpkg does not
    // sync each file, as in autopkgtest's own testbeds (force-unsafe-io); the snapshot is
    // saved after a sync.
    let script = format!(
        "export DEBIAN_FRONTEND=noninteractive\n\
         mkdir -p {DEBS}/lists/partial\n\
         apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-unsafe-io \
         -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/dev/null \
         -o Dir::State::Lists={DEBS}/lists {DEBS}/*.deb\n\
         rm -rf {DEBS}\n\
         sync\n"
    );
    // Named by the packages and by how they are installed.
    let how = crate::image::hash::sha256_bytes(script.as_bytes());
    Layer {
        key: format!("deps-{}-{}", r.key(), &how[..8]),
        files: r
            .debs
            .iter()
            .map(|d| (d.path.clone(), format!("{DEBS}/{}", d.file_name)))
            .collect(),
        script,
        timeout: INSTALL_TIMEOUT,
    }
}
