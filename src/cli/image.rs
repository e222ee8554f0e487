//! `vmcheck image list` and `vmcheck image build`, and resolving an image (built if missing
//! or stale) off the async runtime, for the commands that boot one.

use super::errors::CliError;
use std::io::Write;
use std::sync::Arc;
use vmcheck::exit_codes;
use vmcheck::image::{Catalog, Image, ImageStatus};
use vmcheck::signal::Cancel;

pub(super) fn image_list(catalog: &Catalog) -> Result<i32, CliError> {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<16} {:<9} {:<22} {:>9}  PATH",
        "NAME", "STATE", "ID", "SIZE"
    );
    for row in catalog.list() {
        let (state, id, size, path) = match &row.status {
            ImageStatus::Current(i) => (
                "built",
                i.short_id(),
                size_of(i),
                i.dir.display().to_string(),
            ),
            ImageStatus::Stale(i) => (
                "stale",
                i.short_id(),
                size_of(i),
                i.dir.display().to_string(),
            ),
            ImageStatus::Missing if row.has_recipe => {
                ("not built", "-".into(), "-".into(), "-".into())
            }
            ImageStatus::Missing => ("missing", "-".into(), "-".into(), "-".into()),
            ImageStatus::Broken(e) => ("broken", "-".into(), "-".into(), e.to_string()),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:<22} {:>9}  {}",
            row.name, state, id, size, path
        );
    }
    let snapshots = vmcheck::machine::snapshot::list(&catalog.store.dir);
    if !snapshots.is_empty() {
        let _ = writeln!(out, "\n{:<49} {:>9}  PATH", "BOOTED SNAPSHOT", "SIZE");
        for (name, dir, bytes) in snapshots {
            let _ = writeln!(
                out,
                "{name:<49} {:>9}  {}",
                human_size(bytes),
                dir.display()
            );
        }
    }
    Ok(exit_codes::OK)
}

fn size_of(image: &Image) -> String {
    let bytes: u64 = image
        .manifest
        .files
        .keys()
        .filter_map(|f| std::fs::metadata(image.file(f)).ok())
        .map(|m| m.len())
        .sum();
    human_size(bytes)
}

fn human_size(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) async fn image_build(
    catalog: Arc<Catalog>,
    names: Vec<String>,
    verbose: bool,
    cancel: &Cancel,
) -> Result<i32, CliError> {
    let names = if names.is_empty() {
        catalog.recipes()
    } else {
        names
    };
    for name in names {
        vmcheck::say!("vmcheck: building image {name} ...");
        let (catalog, cancel) = (catalog.clone(), cancel.clone());
        let image = tokio::task::spawn_blocking(move || catalog.build(&name, &cancel, verbose))
            .await
            .expect("image build panicked")?;
        out!("{} {}", image.name, image.dir.display());
    }
    Ok(exit_codes::OK)
}

/// Resolve an image (building it if needed) without blocking the async runtime.
pub(super) async fn resolve(
    catalog: &Arc<Catalog>,
    name: &str,
    verbose: bool,
    cancel: &Cancel,
) -> Result<Image, CliError> {
    let (catalog, cancel, name) = (catalog.clone(), cancel.clone(), name.to_string());
    let image = tokio::task::spawn_blocking(move || catalog.resolve(&name, &cancel, verbose))
        .await
        .expect("image resolution panicked")?;
    Ok(image)
}
