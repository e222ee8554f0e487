//! `vmcheck autopkgtest`'s part of a run: its tests collected from source packages, their
//! dependencies resolved against the image's package database, and autopkgtest's summary.

use super::outputs::Output;
use crate::cli::errors::CliError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vmcheck::autopkgtest::test::Internet;
use vmcheck::checkfile::TestDef;
use vmcheck::image::Catalog;
use vmcheck::planning::plan::TestPlan;
use vmcheck::reporter::autopkgtest::Summary as AptSummary;
use vmcheck::reporter::file::ReportFile;
use vmcheck::signal::Cancel;

/// How `vmcheck autopkgtest` collects its tests.
pub(super) struct AptRun<'a> {
    pub(super) test_os: &'a str,
    /// Where `.dsc` files are unpacked.
    pub(super) scratch: &'a Path,
    /// Resolve the dependencies (not for a listing).
    pub(super) resolve: bool,
    pub(super) internet: Internet,
}

/// The tests of autopkgtest source packages, their dependencies resolved for the image
/// `test_os` (built first, if need be: its package database is what they are resolved
/// against). A listing resolves nothing.
pub(super) async fn collect_autopkgtests(
    catalog: &Arc<Catalog>,
    sources: &[PathBuf],
    how: &AptRun<'_>,
    cancel: &Cancel,
) -> Result<Vec<TestDef>, CliError> {
    let test_os = how.test_os;
    let (c, n, cancel2) = (catalog.clone(), test_os.to_string(), cancel.clone());
    let image = tokio::task::spawn_blocking(move || c.resolve(&n, &cancel2, false))
        .await
        .expect("image resolution panicked")?;
    let dpkg_status = image.dir.join("dpkg-status");
    if !dpkg_status.is_file() {
        return Err(CliError::Usage(format!(
            "image {test_os} has no dpkg-status: autopkgtests need a Debian image (TEST_OS=debian-12)"
        )));
    }
    let cache = vmcheck::image::cache_home().join("vmcheck/debs");
    let bed = vmcheck::autopkgtest::collect::Testbed {
        image: test_os,
        dpkg_status: &dpkg_status,
        cache: &cache,
        scratch: how.scratch,
        resolve: how.resolve,
        internet: how.internet,
    };
    vmcheck::autopkgtest::collect::collect(sources, &bed)
        .map_err(|errors| CliError::BadPackage(errors.join("\n")))
}

/// The reporter of autopkgtest's summary, and the summary it fills.
pub(super) fn autopkgtest_summary(
    plan: &TestPlan,
    file: Option<&Path>,
) -> Result<(Arc<Mutex<AptSummary>>, Output), CliError> {
    let superficial = plan
        .tests
        .iter()
        .filter(|t| match &t.def.body {
            vmcheck::checkfile::Body::Autopkgtest(a) => a.behaviour.superficial,
            _ => false,
        })
        .map(|t| t.def.name())
        .collect();
    let summary = Arc::new(Mutex::new(AptSummary::new(superficial)));
    let file = file
        .map(|p| {
            ReportFile::replaced(p)
                .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", p.display())))
        })
        .transpose()?;
    let reporter = vmcheck::reporter::autopkgtest::SummaryReporter {
        summary: summary.clone(),
        file,
    };
    Ok((summary, Output::new("the autopkgtest summary", reporter)))
}
