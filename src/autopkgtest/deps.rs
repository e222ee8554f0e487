//! Test dependencies resolved on the host: apt, with the host's archive configuration, is
//! asked what satisfying a dependency expression (`foo (>= 1.2) | bar, baz`) would install
//! into a machine whose package database is the given `dpkg` status file, and downloads
//! exactly those `.deb` files into vmcheck's cache. The guest needs no network: the files
//! are uploaded and installed offline. The resolved set (its files' hashes) names the
//! machine layer that holds them, so each distinct set is installed once.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One package file to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    /// `hello_2.10-3_amd64.deb`
    pub file_name: String,
    /// Where it is in the cache.
    pub path: PathBuf,
    pub sha256: String,
}

/// What satisfying the dependencies takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// In apt's order (not an installation order: they are installed together).
    pub debs: Vec<Deb>,
}

impl Resolved {
    /// A name for the set: the SHA-256 of its files' hashes, sorted (16 hex digits).
    pub fn key(&self) -> String {
        let mut hashes: Vec<&str> = self.debs.iter().map(|d| d.sha256.as_str()).collect();
        hashes.sort();
        crate::image::hash::sha256_bytes(hashes.join("\n").as_bytes())[..16].to_owned()
    }
}

/// Why the dependencies cannot be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// apt knows no way to install these (autopkgtest's "badpkg").
    #[error("the test dependencies cannot be installed: {}", .unmet.join("; "))]
    NotInstallable { unmet: Vec<String> },
    /// apt itself failed (the archive unreachable, a download broken, no apt).
    #[error("resolving the test dependencies with apt failed: {0}")]
    Apt(String),
}

/// Resolve `depends` against the machine whose dpkg database is `status`, downloading what
/// is missing into `cache` (a directory vmcheck owns).
pub fn resolve(depends: &str, status: &Path, cache: &Path) -> Result<Resolved, ResolveError> {
    let archives = cache.join("archives");
    std::fs::create_dir_all(archives.join("partial"))
        .map_err(|e| ResolveError::Apt(format!("creating {}: {e}", archives.display())))?;
    // apt leaves out what is already in its archives directory: list against an empty one.
    let empty = tempfile::tempdir()
        .map_err(|e| ResolveError::Apt(format!("creating a scratch directory: {e}")))?;
    std::fs::create_dir(empty.path().join("partial"))
        .map_err(|e| ResolveError::Apt(format!("creating a scratch directory: {e}")))?;
    let listed = apt(status, empty.path(), &["--print-uris", "satisfy", depends])?;
    let wanted = parse_uris(&listed);
    if !wanted.is_empty() {
        apt(status, &archives, &["--download-only", "satisfy", depends])?;
    }
    let mut debs = Vec::new();
    for file_name in wanted {
        let path = archives.join(&file_name);
        let sha256 = crate::image::hash::sha256_file(&path)
            .map_err(|e| ResolveError::Apt(format!("{}: {e}", path.display())))?;
        debs.push(Deb {
            file_name,
            path,
            sha256,
        });
    }
    Ok(Resolved { debs })
}

/// Run `apt-get ARGS` for the machine's database, into `archives`; its stdout, or why not.
fn apt(status: &Path, archives: &Path, args: &[&str]) -> Result<String, ResolveError> {
    let out = Command::new("apt-get")
        .args(["-q", "-y"])
        .arg(format!("-oDir::State::status={}", status.display()))
        .arg(format!("-oDir::Cache::archives={}", archives.display()))
        .args([
            "-oDebug::NoLocking=1",
            "-oAPT::Install-Recommends=false",
            "-oAPT::Get::AllowUnauthenticated=false",
        ])
        .args(args)
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| ResolveError::Apt(format!("cannot run apt-get: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let unmet = unmet(&stdout);
    if !unmet.is_empty() {
        return Err(ResolveError::NotInstallable { unmet });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ResolveError::Apt(format!(
        "apt-get {} ({}): {}",
        args.join(" "),
        out.status,
        crate::reporter::text::one_line(&said)
    )))
}

/// The file names of `apt-get --print-uris` lines (`'URI' FILE SIZE [HASH]`), in order.
fn parse_uris(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('\''))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|f| f.ends_with(".deb") && !f.contains('/') && !f.starts_with('.'))
        .map(str::to_owned)
        .collect()
}

/// The unmet dependencies apt lists after "The following packages have unmet
/// dependencies:", e.g. `nonexistent-pkg-x but it is not installable`.
fn unmet(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("The following packages have unmet dependencies"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .filter_map(|l| {
            let (_, dep) = l.split_once("Depends: ")?;
            Some(dep.trim().to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_uris_lines() {
        let text = "'http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb' hello_2.10-3_amd64.deb 53456 MD5Sum:abc\n\
                    'http://x/y/z_1_all.deb' z_1_all.deb 10 \n\
                    'http://x/evil' ../evil.deb 10\n\
                    Reading package lists...\n";
        assert_eq!(parse_uris(text), ["hello_2.10-3_amd64.deb", "z_1_all.deb"]);
    }

    #[test]
    fn unmet_dependencies() {
        let text = "Reading package lists...\n\
The following packages have unmet dependencies:\n \
satisfy:command-line : Depends: nonexistent-pkg-x but it is not installable\n                        \
Depends: hello (>= 9)\n\
E: Unable to correct problems, you have held broken packages.\n";
        assert_eq!(
            unmet(text),
            [
                "nonexistent-pkg-x but it is not installable",
                "hello (>= 9)"
            ]
        );
    }

    #[test]
    fn the_key_ignores_order() {
        let deb = |h: &str| Deb {
            file_name: format!("{h}.deb"),
            path: PathBuf::from(h),
            sha256: h.repeat(8),
        };
        let a = Resolved {
            debs: vec![deb("a"), deb("b")],
        };
        let b = Resolved {
            debs: vec![deb("b"), deb("a")],
        };
        assert_eq!(a.key(), b.key());
        assert_ne!(
            a.key(),
            Resolved {
                debs: vec![deb("a")]
            }
            .key()
        );
    }
}
