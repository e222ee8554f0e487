//! Test dependencies resolved by the host's apt for a machine's package database, against
//! the real Debian archive the host's apt configuration names.

use std::path::Path;
use vmcheck::autopkgtest::deps::{ResolveError, resolve};

/// A dpkg database with nothing installed but what `hello` needs from the base system.
fn base_status(dir: &Path) -> std::path::PathBuf {
    let status = dir.join("status");
    std::fs::write(&status, "").unwrap();
    status
}

#[test]
fn apt_resolves_and_downloads_exactly_what_a_machine_lacks() {
    let dir = tempfile::tempdir().unwrap();
    // Against the host's own database, `hello` (not installed here) is one file.
    let resolved = resolve(
        "hello",
        Path::new("/var/lib/dpkg/status"),
        &dir.path().join("cache"),
    )
    .unwrap();
    let names: Vec<&str> = resolved.debs.iter().map(|d| d.file_name.as_str()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("hello_"), "{names:?}");
    let deb = &resolved.debs[0];
    assert!(deb.path.is_file());
    let sum = std::process::Command::new("sha256sum")
        .arg(&deb.path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&deb.sha256));
    // Against an empty database, hello's dependencies (libc6, …) come too.
    let status = base_status(dir.path());
    let more = resolve("hello", &status, &dir.path().join("cache")).unwrap();
    assert!(more.debs.len() > 1, "{:?}", more.debs);
    assert!(more.debs.iter().any(|d| d.file_name.starts_with("hello_")));
    assert!(more.debs.iter().any(|d| d.file_name.starts_with("libc6_")));
    assert_ne!(more.key(), resolved.key());
    // Already satisfied: nothing to install.
    let none = resolve(
        "dpkg",
        Path::new("/var/lib/dpkg/status"),
        &dir.path().join("cache"),
    )
    .unwrap();
    assert!(none.debs.is_empty(), "{:?}", none.debs);
}

#[test]
fn uninstallable_dependencies_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = resolve(
        "vmcheck-no-such-package, hello (>= 999)",
        Path::new("/var/lib/dpkg/status"),
        &dir.path().join("cache"),
    )
    .unwrap_err();
    let ResolveError::NotInstallable { unmet } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        unmet,
        &[
            "vmcheck-no-such-package but it is not installable",
            "hello (>= 999)"
        ]
    );
    assert!(err.to_string().contains("vmcheck-no-such-package"), "{err}");
}
