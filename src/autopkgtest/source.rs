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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_of_a_real_package() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/autopkgtest/nftables/debian-control");
        let s = parse_control(&path, &std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(s.name, "nftables");
        assert!(
            s.build_depends
                .as_deref()
                .unwrap()
                .starts_with("asciidoc-base,")
        );
        let names: Vec<(&str, &str)> = s
            .binaries
            .iter()
            .map(|b| (b.name.as_str(), b.architecture.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("nftables", "linux-any"),
                ("libnftables-dev", "linux-any"),
                ("libnftables1", "linux-any"),
                ("python3-nftables", "linux-any")
            ]
        );
        assert!(s.binaries.iter().all(|b| b.package_type == "deb"));
    }

    #[test]
    fn control_fields_and_errors() {
        let text = "Source: s\nBuild-Depends: a\nbuild-depends-indep: b\nBuild-Depends-Arch: c\n\
                    Testsuite: autopkgtest\n\n\
                    Package: s\nArchitecture: any\nRecommends: r\n\n\
                    Package: s-udeb\nPackage-Type: udeb\nArchitecture: linux-any\n\n\
                    Package: s-x\nXC-Package-Type: udeb\nArchitecture: all\n";
        let s = parse_control(Path::new("d/control"), text).unwrap();
        assert_eq!(
            (
                s.build_depends.as_deref(),
                s.build_depends_indep.as_deref(),
                s.build_depends_arch.as_deref(),
                s.testsuite.as_deref()
            ),
            (Some("a"), Some("b"), Some("c"), Some("autopkgtest"))
        );
        assert_eq!(s.recommends, ["r"]);
        let kinds: Vec<&str> = s.binaries.iter().map(|b| b.package_type.as_str()).collect();
        assert_eq!(kinds, ["deb", "udeb", "udeb"]);
        assert_eq!(s.binaries[1].line, 11);

        let e = parse_control(
            Path::new("d/control"),
            "Package: x\n\nArchitecture: any\n\nPackage: y\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "d/control:1: the first stanza has no Source field\n\
             d/control:3: a binary stanza without a Package field\n\
             d/control:5: binary package y has no Architecture field"
        );
        assert_eq!(
            parse_control(Path::new("d/control"), "\n")
                .unwrap_err()
                .to_string(),
            "d/control:1: no source stanza"
        );
    }

    #[test]
    fn changelog_first_line() {
        let p = Path::new("d/changelog");
        assert_eq!(
            parse_changelog(p, "hello (2.10-3) unstable; urgency=medium\n\n  * x\n").unwrap(),
            ("hello".into(), "2.10-3".into())
        );
        assert_eq!(
            parse_changelog(p, "util-linux (2.38.1-5+deb12u3) bookworm; urgency=medium").unwrap(),
            ("util-linux".into(), "2.38.1-5+deb12u3".into())
        );
        for bad in [
            "",
            "hello 2.10",
            "Hello (1) unstable;",
            "hello (1 2) x;",
            "hello (:1) x;",
        ] {
            let e = parse_changelog(p, bad).unwrap_err();
            assert_eq!(e.line, 1, "{bad}");
            assert!(
                e.to_string()
                    .starts_with("d/changelog:1: expected `NAME (VERSION)")
            );
        }
    }

    fn write_tree(root: &Path, name: &str) {
        std::fs::create_dir_all(root.join("debian/source")).unwrap();
        std::fs::write(
            root.join("debian/control"),
            format!(
                "Source: {name}\nMaintainer: A <a@example.org>\n\n\
                 Package: {name}\nArchitecture: all\nDescription: d\n d\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("debian/changelog"),
            format!(
                "{name} (1.0) unstable; urgency=medium\n\n  * Test.\n\n \
                 -- A <a@example.org>  Mon, 01 Jan 2024 00:00:00 +0000\n"
            ),
        )
        .unwrap();
        std::fs::write(root.join("debian/source/format"), "3.0 (native)\n").unwrap();
    }

    #[test]
    fn load_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        write_tree(dir.path(), "pkg");
        let s = SourcePackage::load(dir.path()).unwrap();
        assert_eq!((s.name.as_str(), s.version.as_str()), ("pkg", "1.0"));
        assert_eq!(s.root, dir.path());
        std::fs::write(
            dir.path().join("debian/changelog"),
            "other (1.0) unstable; urgency=medium\n",
        )
        .unwrap();
        let e = SourcePackage::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "debian/changelog:1: names source package other, but debian/control's Source is pkg"
            ),
            "{e}"
        );
        let e = SourcePackage::load(&dir.path().join("none")).unwrap_err();
        assert_eq!(e.0.len(), 2, "both files reported: {e}");
    }

    #[test]
    fn unpack_a_dsc_and_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("pkg-1.0");
        write_tree(&tree, "pkg");
        let built = Command::new("dpkg-source")
            .args(["-b", "pkg-1.0"])
            .current_dir(dir.path())
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("dpkg-source runs");
        assert!(built.status.success(), "{built:?}");
        let dsc = dir.path().join("pkg_1.0.dsc");

        let dest = dir.path().join("out");
        unpack_dsc(&dsc, &dest).unwrap();
        assert_eq!(SourcePackage::load(&dest).unwrap().name, "pkg");

        // The destination exists already: refused, and left alone.
        let e = unpack_dsc(&dsc, &dest).unwrap_err();
        assert!(e.message.contains("exists already"), "{e}");
        assert!(dest.join("debian/control").is_file());

        // A .dsc whose tarball is missing: the error names the .dsc and dpkg-source's words,
        // and nothing is left behind.
        std::fs::remove_file(dir.path().join("pkg_1.0.tar.xz")).unwrap();
        let dest2 = dir.path().join("out2");
        let e = unpack_dsc(&dsc, &dest2).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{}: dpkg-source -x failed", dsc.display())),
            "{shown}"
        );
        assert!(shown.contains("pkg_1.0.tar.xz"), "{shown}");
        assert!(!dest2.exists());

        let garbage = dir.path().join("garbage.dsc");
        std::fs::write(&garbage, "not a dsc\n").unwrap();
        let e = unpack_dsc(&garbage, &dest2).unwrap_err();
        assert!(e.to_string().contains("dpkg-source -x failed"), "{e}");
        assert!(!dest2.exists());
    }
}
