//! A Debian source tree as autopkgtest reads it: `debian/control` (the source stanza's name
//! and build dependencies, every binary stanza's name, architecture and package type, and
//! every stanza's Recommends) and the first line of `debian/changelog` (name and version);
//! and unpacking a `.dsc` with `dpkg-source -x` into a directory of the caller's.

use super::deb822::{self, Stanza};
use super::error::{ControlError, ControlErrors};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One binary package stanza of `debian/control`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryPackage {
    pub name: String,
    /// The `Architecture:` value as written (`any`, `all`, `linux-any`, `amd64 i386`).
    pub architecture: String,
    /// `deb` unless `Package-Type:` or `XC-Package-Type:` says otherwise (`udeb`); only
    /// `deb` packages are what `@` stands for.
    pub package_type: String,
    /// Line of its `Package:` field.
    pub line: usize,
}

/// What autopkgtest needs of a source tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePackage {
    /// The tree's root (the directory holding `debian/`).
    pub root: PathBuf,
    /// `Source:` of `debian/control`.
    pub name: String,
    /// The version of the first `debian/changelog` entry.
    pub version: String,
    pub binaries: Vec<BinaryPackage>,
    pub build_depends: Option<String>,
    pub build_depends_indep: Option<String>,
    pub build_depends_arch: Option<String>,
    /// The `Recommends:` of every stanza that has one, in file order.
    pub recommends: Vec<String>,
    /// `Testsuite:` of the source stanza (`autopkgtest`, `autopkgtest-pkg-python`, ...).
    pub testsuite: Option<String>,
}

/// `debian/control` parsed: everything of [`SourcePackage`] but the root and the version.
pub fn parse_control(path: &Path, text: &str) -> Result<SourcePackage, ControlErrors> {
    let (stanzas, mut errors) = deb822::parse(path, text);
    let mut source = SourcePackage {
        root: PathBuf::new(),
        name: String::new(),
        version: String::new(),
        binaries: Vec::new(),
        build_depends: None,
        build_depends_indep: None,
        build_depends_arch: None,
        recommends: Vec::new(),
        testsuite: None,
    };
    let get = |s: &Stanza, name: &str| s.get(name).map(str::to_string);
    match stanzas.first() {
        None => errors.push(ControlError::new(path, 1, "no source stanza")),
        Some(first) => match first.get("Source") {
            Some(name) if !name.is_empty() => {
                source.name = name.to_string();
                source.build_depends = get(first, "Build-Depends");
                source.build_depends_indep = get(first, "Build-Depends-Indep");
                source.build_depends_arch = get(first, "Build-Depends-Arch");
                source.testsuite = get(first, "Testsuite");
            }
            _ => errors.push(ControlError::new(
                path,
                first.line,
                "the first stanza has no Source field",
            )),
        },
    }
    for stanza in &stanzas {
        if let Some(r) = stanza.get("Recommends") {
            source.recommends.push(r.to_string());
        }
    }
    for stanza in stanzas.iter().skip(1) {
        let Some(package) = stanza.field("Package") else {
            errors.push(ControlError::new(
                path,
                stanza.line,
                "a binary stanza without a Package field",
            ));
            continue;
        };
        let Some(architecture) = stanza.get("Architecture") else {
            errors.push(ControlError::new(
                path,
                stanza.line,
                format!("binary package {} has no Architecture field", package.value),
            ));
            continue;
        };
        let package_type = [stanza.get("XC-Package-Type"), stanza.get("Package-Type")]
            .into_iter()
            .flatten()
            .find(|t| *t != "deb")
            .unwrap_or("deb");
        source.binaries.push(BinaryPackage {
            name: package.value.clone(),
            architecture: architecture.to_string(),
            package_type: package_type.to_string(),
            line: package.line,
        });
    }
    if errors.is_empty() {
        Ok(source)
    } else {
        Err(ControlErrors(errors))
    }
}

/// The name and version of the first line of `debian/changelog`
/// (`hello (2.10-3) unstable; urgency=medium`).
pub fn parse_changelog(path: &Path, text: &str) -> Result<(String, String), ControlError> {
    let first = text.lines().next().unwrap_or("");
    let bad = || {
        ControlError::new(
            path,
            1,
            format!("expected `NAME (VERSION) DISTRIBUTION; urgency=...`, found {first:?}"),
        )
    };
    let (name, rest) = first.split_once(" (").ok_or_else(bad)?;
    let (version, _) = rest.split_once(')').ok_or_else(bad)?;
    let name_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !name_ok || !super::depends::valid_version(version) {
        return Err(bad());
    }
    Ok((name.to_string(), version.to_string()))
}

impl SourcePackage {
    /// Reads the tree at `root`: `debian/control` and `debian/changelog` (whose name must be
    /// the control file's `Source:`). Every error found is returned.
    pub fn load(root: &Path) -> Result<SourcePackage, ControlErrors> {
        let control_path = root.join("debian/control");
        let changelog_path = root.join("debian/changelog");
        let mut errors = Vec::new();
        let source = match deb822::read(&control_path) {
            Ok(text) => match parse_control(&control_path, &text) {
                Ok(s) => Some(s),
                Err(ControlErrors(e)) => {
                    errors.extend(e);
                    None
                }
            },
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let changelog = deb822::read(&changelog_path)
            .and_then(|text| parse_changelog(&changelog_path, &text))
            .map_err(|e| errors.push(e))
            .ok();
        match (source, changelog) {
            (Some(mut source), Some((name, version))) => {
                if name != source.name {
                    return Err(ControlError::new(
                        &changelog_path,
                        1,
                        format!(
                            "names source package {name}, but debian/control's Source is {}",
                            source.name
                        ),
                    )
                    .into());
                }
                source.root = root.to_path_buf();
                source.version = version;
                Ok(source)
            }
            _ => Err(ControlErrors(errors)),
        }
    }
}

/// The last `lines` lines of `text`, trimmed.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Unpacks the source package `dsc` with `dpkg-source -x --no-check` into `dest`, which must
/// not exist yet (its parent must). On failure the error names the `.dsc` and ends with the
/// tail of dpkg-source's stderr, and `dest` is removed again.
pub fn unpack_dsc(dsc: &Path, dest: &Path) -> Result<(), ControlError> {
    let fail = |message: String| ControlError::new(dsc, 0, message);
    if dest.symlink_metadata().is_ok() {
        return Err(fail(format!(
            "cannot unpack into {}: it exists already",
            dest.display()
        )));
    }
    // Paths that cannot be read as options.
    let dotted = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            Path::new(".").join(p)
        }
    };
    let output = Command::new("dpkg-source")
        .args(["-x", "--no-check"])
        .arg(dotted(dsc))
        .arg(dotted(dest))
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output();
    let message = match output {
        Ok(out) if out.status.success() && dest.join("debian").is_dir() => return Ok(()),
        Ok(out) if out.status.success() => "dpkg-source -x left no debian/ directory".to_string(),
        Ok(out) => format!(
            "dpkg-source -x failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 5)
        ),
        Err(e) => format!("cannot run dpkg-source: {e}"),
    };
    if dest.symlink_metadata().is_ok() {
        let _ = std::fs::remove_dir_all(dest);
    }
    Err(fail(message))
}
