//! Where a run's tests run: the images its tests boot (an unknown one is an input error at
//! the line that names it), the existing hosts of `--machine`, and the destructive tests that
//! could never fit in this host's memory.

use crate::cli::args::RunArgs;
use crate::cli::errors::CliError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use vmcheck::checkfile;
use vmcheck::image::{Catalog, Image, ImageError};
use vmcheck::machine::host::Host;
use vmcheck::machine::remote::parse_address;
use vmcheck::machine::ssh::{HostKeyCheck, SshTarget};
use vmcheck::planning::plan::TestPlan;
use vmcheck::runner::attempt::AttemptContext;
use vmcheck::signal::Cancel;

/// The images the tests that will run boot, sorted. One that is neither built nor has a
/// recipe is an input error, at the `image = …` that names it (or TEST_OS's name).
pub(crate) fn needed_images(
    plan: &TestPlan,
    test_os: &str,
    known: &[String],
) -> Result<Vec<String>, CliError> {
    let unknown = |name: &str| ImageError::Unknown {
        name: name.to_string(),
        known: known.to_vec(),
    };
    let mut needed = std::collections::BTreeSet::new();
    let mut errors = Vec::new();
    for t in plan.tests.iter().filter(|t| t.skip_reason.is_none()) {
        let os = t.def.os(test_os);
        if t.def.nondestructive {
            needed.insert(os.to_string());
            continue;
        }
        for m in &t.def.provision {
            let name = m.image_or(os);
            match m.image_at {
                Some((line, col)) if !known.iter().any(|k| k == name) => {
                    errors.push(checkfile::CheckFileError {
                        path: t.def.file.clone(),
                        line,
                        col,
                        message: unknown(name).to_string(),
                    });
                }
                _ => {
                    needed.insert(name.to_string());
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
        errors.dedup();
        return Err(CliError::CheckFiles(errors));
    }
    match needed.iter().find(|n| !known.contains(n)) {
        Some(name) => Err(unknown(name).into()),
        None => Ok(needed.into_iter().collect()),
    }
}

/// The images `needed` (built if missing or stale) and the host's side of their machines; an
/// interrupted build leaves the rest out (the run then reports every test as interrupted),
/// and so is the host then.
pub(crate) async fn images_and_host(
    catalog: &Arc<Catalog>,
    needed: &[String],
    cancel: &Cancel,
    verbose: bool,
) -> Result<(BTreeMap<String, Image>, Option<Host>), CliError> {
    let mut images = BTreeMap::new();
    for name in needed {
        let (c, n, cancel2) = (catalog.clone(), name.clone(), cancel.clone());
        let image = tokio::task::spawn_blocking(move || c.resolve(&n, &cancel2, verbose))
            .await
            .expect("image resolution panicked");
        match image {
            Ok(image) => images.insert(name.clone(), image),
            Err(ImageError::Interrupted { .. }) => break,
            Err(e) => return Err(e.into()),
        };
    }
    let host = match images.values().next() {
        Some(image) if !cancel.is_cancelled() => {
            Some(Host::detect(&image.kernel(), &catalog.store.dir.join(".cache")).await?)
        }
        _ => None,
    };
    Ok((images, host))
}

/// The existing hosts of `--machine`, each with `--identity` and the host key check.
pub(crate) fn remote_targets(args: &RunArgs) -> Result<Vec<SshTarget>, CliError> {
    if args.machine.is_empty() {
        return Ok(Vec::new());
    }
    let identity = args.identity.clone().ok_or_else(|| {
        CliError::Usage("--machine needs --identity FILE: the private key to log in with".into())
    })?;
    std::fs::metadata(&identity).map_err(|e| {
        CliError::Usage(format!("cannot read identity {}: {e}", identity.display()))
    })?;
    let host_key = if args.insecure_host_key {
        HostKeyCheck::Insecure
    } else {
        let file = match &args.known_hosts {
            Some(f) => f.clone(),
            None => {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".ssh/known_hosts")
            }
        };
        std::fs::metadata(&file).map_err(|e| {
            CliError::Usage(format!(
                "cannot read known hosts {}: {e} (give --known-hosts FILE, or --insecure-host-key)",
                file.display()
            ))
        })?;
        HostKeyCheck::KnownHosts(file)
    };
    args.machine
        .iter()
        .map(|m| {
            let (host, port) = parse_address(m).map_err(CliError::Usage)?;
            Ok(SshTarget {
                host,
                port,
                user: args.user.clone(),
                identity: identity.clone(),
                host_key: host_key.clone(),
            })
        })
        .collect()
}

/// The destructive tests whose machines need more RAM than the host has in all
/// (`total_mib`): they could never start, so they are errors before anything starts
/// rather than a wait without end (Trafficlight's defect). A test bigger than what is free
/// now only waits, and one bigger than the run's budget runs alone.
pub(crate) fn never_fits(
    plan: &vmcheck::planning::plan::TestPlan,
    ctx: &AttemptContext,
    total_mib: Option<u64>,
) -> Result<(), Vec<vmcheck::checkfile::CheckFileError>> {
    let Some(total) = total_mib else {
        return Ok(());
    };
    let gib = |mib: u64| mib as f64 / 1024.0;
    let errors: Vec<_> = plan
        .tests
        .iter()
        .filter(|t| !t.def.nondestructive && t.skip_reason.is_none())
        .filter_map(|t| {
            let need = vmcheck::runner::dispatcher::test_cost(&t.def, ctx).ram_mib;
            (need > total).then(|| vmcheck::checkfile::CheckFileError {
                path: t.def.file.clone(),
                line: t.def.line,
                col: usize::from(t.def.line > 0),
                message: format!(
                    "{} needs {:.1} GiB of RAM for its machines (with qemu's own), more than \
                     this host's {:.1} GiB in all: it can never run here",
                    t.def.name(),
                    gib(need),
                    gib(total)
                ),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
