//! The naughty database: every pattern of every OS directory under `bots/naughty/`, the
//! symlinked aliases between them, and matching one failure against all of it.
//!
//! Directory entries of `bots/naughty/`:
//!
//! - a real directory `<os>/` holds pattern files; it applies to `TEST_OS=<os>` and is
//!   searched as "another OS" for every other `TEST_OS`;
//! - a symlink to a sibling directory (`centos-10 -> rhel-10`) is an alias: `centos-10`
//!   uses `rhel-10`'s patterns (their `os` stays `rhel-10`), and it is not searched again
//!   as another OS;
//! - a symlink to a directory elsewhere applies to its own name only;
//! - anything else (a file, a broken symlink) is an error.
//!
//! Everything is loaded and checked at once, so every bad file is reported before anything
//! boots, and matching never touches the file system.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::NaughtyError;
use super::normalize::normalize;
use super::pattern::{Compiled, Naughty, issue_number};
use super::pixel::is_pixel_failure;

/// Where a project keeps its naughty patterns, relative to the project root.
pub const NAUGHTY_DIR: &str = "bots/naughty";

/// All patterns of all OS directories. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct NaughtyDb {
    dirs: BTreeMap<String, OsDir>,
}

#[derive(Debug, Clone)]
enum OsDir {
    /// A real directory, sorted by (issue, path).
    Real(Vec<Compiled>),
    /// A symlink to the sibling directory of this name.
    Alias(String),
    /// A symlink to a directory outside, sorted by (issue, path).
    Linked(Vec<Compiled>),
}

/// The patterns that match one failure, each list sorted by (issue, path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NaughtyMatches {
    /// Patterns of the failure's own OS (through its alias, if it is one).
    pub own: Vec<Naughty>,
    /// Patterns of the other real OS directories.
    pub other: Vec<Naughty>,
}

impl NaughtyMatches {
    /// Nothing matched.
    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.other.is_empty()
    }

    /// The known issue: the first own match (lowest issue number).
    pub fn known_issue(&self) -> Option<&Naughty> {
        self.own.first()
    }

    /// The first match on another OS (lowest issue number).
    pub fn known_elsewhere(&self) -> Option<&Naughty> {
        self.other.first()
    }

    /// The distinct issue numbers of the own matches, sorted.
    pub fn own_issues(&self) -> Vec<u64> {
        let mut issues: Vec<u64> = self.own.iter().map(|n| n.issue).collect();
        issues.dedup();
        issues
    }

    /// The distinct (issue, OS directory) of the other OSes' matches, sorted by issue.
    pub fn other_issues(&self) -> Vec<(u64, String)> {
        let mut issues: Vec<(u64, String)> =
            self.other.iter().map(|n| (n.issue, n.os.clone())).collect();
        issues.dedup();
        issues
    }

    /// Cockpit's wording: `Known issue #N` for an own match, else `Known issue #N in <os>`
    /// for another OS's; further distinct issues are listed as ` (also #M, #K)`.
    pub fn summary(&self) -> Option<String> {
        let (issues, suffix) = if !self.own.is_empty() {
            (self.own_issues(), String::new())
        } else {
            let first = self.other.first()?;
            let mut issues: Vec<u64> = self.other.iter().map(|n| n.issue).collect();
            issues.dedup();
            (issues, format!(" in {}", first.os))
        };
        let mut text = format!("Known issue #{}{suffix}", issues[0]);
        if issues.len() > 1 {
            let also: Vec<String> = issues[1..].iter().map(|i| format!("#{i}")).collect();
            text.push_str(&format!(" (also {})", also.join(", ")));
        }
        Some(text)
    }
}

impl NaughtyDb {
    /// Loads every pattern under `dir` (e.g. `bots/naughty`). A missing `dir` is an empty
    /// database. On failure returns every error, sorted by path.
    pub fn load(dir: &Path) -> Result<NaughtyDb, Vec<NaughtyError>> {
        let meta = match fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(NaughtyDb::default()),
            Err(e) => return Err(vec![cannot_read(dir, e)]),
            Ok(meta) => meta,
        };
        if !meta.is_dir() {
            return Err(vec![NaughtyError::new(dir, "is not a directory")]);
        }
        let mut errors = Vec::new();
        let mut db = NaughtyDb::default();
        let canonical_dir = fs::canonicalize(dir).map_err(|e| vec![cannot_read(dir, e)])?;
        for (name, path) in sorted_entries(dir, &mut errors) {
            if let Some(os_dir) = load_os_dir(&canonical_dir, &path, &name, &mut errors) {
                db.dirs.insert(name, os_dir);
            }
        }
        if errors.is_empty() {
            Ok(db)
        } else {
            errors.sort_by(|a, b| a.path.cmp(&b.path));
            Err(errors)
        }
    }

    /// Adds the pattern `text` as the file `file_name` of the real OS directory `os` (for
    /// tests and tools that build a database without files). Its path is `<os>/<file_name>`.
    pub fn add(&mut self, os: &str, file_name: &str, text: &str) -> Result<(), NaughtyError> {
        let path = Path::new(os).join(file_name);
        let error = |message| NaughtyError::new(&path, message);
        let issue = issue_number(file_name).map_err(error)?;
        let compiled = Compiled::new(issue, os, &path, text).map_err(error)?;
        match self
            .dirs
            .entry(os.to_owned())
            .or_insert_with(|| OsDir::Real(Vec::new()))
        {
            OsDir::Real(patterns) => {
                patterns.push(compiled);
                sort(patterns);
                Ok(())
            }
            _ => Err(error(format!("{os} is an alias, not a directory"))),
        }
    }

    /// Makes `alias` an alias of the real OS directory `target` (see [`NaughtyDb::add`]).
    pub fn add_alias(&mut self, alias: &str, target: &str) {
        self.dirs
            .insert(alias.to_owned(), OsDir::Alias(target.to_owned()));
    }

    /// The name of the directory whose patterns apply to `os`: `os` itself, or the target
    /// of its alias. `None` if there is no such directory.
    pub fn resolve<'a>(&'a self, os: &'a str) -> Option<&'a str> {
        match self.dirs.get(os)? {
            OsDir::Real(_) | OsDir::Linked(_) => Some(os),
            OsDir::Alias(target) => Some(target),
        }
    }

    /// The aliases, as (alias, target), sorted.
    pub fn aliases(&self) -> Vec<(&str, &str)> {
        self.dirs
            .iter()
            .filter_map(|(name, dir)| match dir {
                OsDir::Alias(target) => Some((name.as_str(), target.as_str())),
                _ => None,
            })
            .collect()
    }

    /// The patterns that apply to `os` (its own directory, following a symlinked alias),
    /// sorted by (issue, path).
    pub fn for_os(&self, os: &str) -> Vec<&Naughty> {
        self.own_patterns(os).iter().map(|c| &c.naughty).collect()
    }

    /// Every pattern once (aliases are not repeated), sorted by (os, issue, path).
    pub fn all(&self) -> Vec<&Naughty> {
        self.dirs
            .values()
            .flat_map(|dir| match dir {
                OsDir::Real(patterns) | OsDir::Linked(patterns) => patterns.as_slice(),
                OsDir::Alias(_) => &[],
            })
            .map(|c| &c.naughty)
            .collect()
    }

    /// Matches one failure's output: the patterns of `os` (through its alias) that match,
    /// then those of every other real OS directory, each sorted by (issue, path). A
    /// pixel-test failure matches nothing.
    pub fn matches(&self, os: &str, output: &str) -> NaughtyMatches {
        let output = normalize(output);
        if is_pixel_failure(&output) {
            return NaughtyMatches::default();
        }
        let matching = |patterns: &[Compiled]| -> Vec<Naughty> {
            patterns
                .iter()
                .filter(|c| c.is_match(&output))
                .map(|c| c.naughty.clone())
                .collect()
        };
        let own = matching(self.own_patterns(os));
        let own_dir = self.resolve(os);
        let mut other: Vec<Naughty> = self
            .dirs
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != own_dir)
            .flat_map(|(_, dir)| match dir {
                OsDir::Real(patterns) => matching(patterns),
                OsDir::Alias(_) | OsDir::Linked(_) => Vec::new(),
            })
            .collect();
        other.sort_by(|a, b| (a.issue, &a.path).cmp(&(b.issue, &b.path)));
        NaughtyMatches { own, other }
    }

    /// The number of patterns (each file once).
    pub fn len(&self) -> usize {
        self.all().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn own_patterns(&self, os: &str) -> &[Compiled] {
        match self.resolve(os).and_then(|name| self.dirs.get(name)) {
            Some(OsDir::Real(patterns) | OsDir::Linked(patterns)) => patterns,
            _ => &[],
        }
    }
}

/// One entry of `bots/naughty/`, or `None` after recording why it is unusable.
fn load_os_dir(
    canonical_dir: &Path,
    path: &Path,
    name: &str,
    errors: &mut Vec<NaughtyError>,
) -> Option<OsDir> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            errors.push(cannot_read(path, e));
            return None;
        }
    };
    if meta.is_dir() {
        return Some(OsDir::Real(load_patterns(path, name, errors)));
    }
    if !meta.is_symlink() {
        errors.push(NaughtyError::new(
            path,
            "is not a directory; the naughty directory holds one directory of patterns per OS",
        ));
        return None;
    }
    let link = fs::read_link(path).unwrap_or_default();
    let target = match fs::canonicalize(path) {
        Ok(target) => target,
        Err(e) => {
            errors.push(NaughtyError::new(
                path,
                format!("broken symlink to {}: {e}", link.display()),
            ));
            return None;
        }
    };
    if !target.is_dir() {
        errors.push(NaughtyError::new(
            path,
            format!("symlink to {}, which is not a directory", link.display()),
        ));
        return None;
    }
    let sibling = target
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|_| target.parent() == Some(canonical_dir));
    match sibling {
        Some(sibling) => Some(OsDir::Alias(sibling.to_owned())),
        None => Some(OsDir::Linked(load_patterns(path, name, errors))),
    }
}

/// The pattern files of one OS directory, sorted by (issue, path).
fn load_patterns(dir: &Path, os: &str, errors: &mut Vec<NaughtyError>) -> Vec<Compiled> {
    let mut patterns: Vec<Compiled> = sorted_entries(dir, errors)
        .into_iter()
        .filter_map(|(_, path)| Compiled::load(&path, os).map_err(|e| errors.push(e)).ok())
        .collect();
    sort(&mut patterns);
    patterns
}

/// The entries of `dir` as (name, path), sorted by name; entries whose name is not UTF-8
/// are errors.
fn sorted_entries(dir: &Path, errors: &mut Vec<NaughtyError>) -> Vec<(String, PathBuf)> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) => {
            errors.push(cannot_read(dir, e));
            return Vec::new();
        }
    };
    let mut entries = Vec::new();
    for entry in read {
        match entry {
            Ok(entry) => match entry.file_name().into_string() {
                Ok(name) => entries.push((name, entry.path())),
                Err(_) => errors.push(NaughtyError::new(entry.path(), "the name is not UTF-8")),
            },
            Err(e) => errors.push(cannot_read(dir, e)),
        }
    }
    entries.sort();
    entries
}

fn sort(patterns: &mut [Compiled]) {
    patterns.sort_by(|a, b| {
        (a.naughty.issue, &a.naughty.path).cmp(&(b.naughty.issue, &b.naughty.path))
    });
}

fn cannot_read(path: &Path, e: io::Error) -> NaughtyError {
    NaughtyError::new(path, format!("cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRASH: &str = "Process * (pmproxy) of user * terminated abnormally with signal 6/ABRT";
    const OUTPUT: &str = "\
Jan 01 00:00:00 host systemd-coredump[99]: Process 1234 (pmproxy) of user 0 terminated abnormally with signal 6/ABRT
Traceback (most recent call last):
  File \"/ci/test/verify/check-metrics\", line 50, in testPmproxy
testlib.Error: timeout
not ok 1 test/verify/check-metrics TestMetrics.testPmproxy";

    fn db() -> NaughtyDb {
        let mut db = NaughtyDb::default();
        db.add("fedora-44", "9336-pmproxy-abort", CRASH).unwrap();
        db.add("fedora-44", "200-timeout", "Error: timeout")
            .unwrap();
        db.add("fedora-44", "200-another", "File \"check-metrics\", line *")
            .unwrap();
        db.add("fedora-44", "17-unrelated", "Error: something else")
            .unwrap();
        db.add("rhel-10", "500-pmproxy", "(pmproxy) of user 0 terminated")
            .unwrap();
        db.add("rhel-10", "40-timeout-rhel", "testlib.Error: timeout")
            .unwrap();
        db.add("debian-12", "7-nothing", "no such thing").unwrap();
        db.add_alias("centos-10", "rhel-10");
        db.add_alias("fedora-rawhide", "fedora-44");
        db
    }

    fn names(list: &[Naughty]) -> Vec<String> {
        list.iter()
            .map(|n| format!("{} {}", n.issue, n.path.display()))
            .collect()
    }

    #[test]
    fn every_match_is_reported_in_order() {
        let m = db().matches("fedora-44", OUTPUT);
        assert_eq!(
            names(&m.own),
            [
                "200 fedora-44/200-another",
                "200 fedora-44/200-timeout",
                "9336 fedora-44/9336-pmproxy-abort",
            ]
        );
        assert_eq!(
            names(&m.other),
            ["40 rhel-10/40-timeout-rhel", "500 rhel-10/500-pmproxy"]
        );
        assert_eq!(m.known_issue().unwrap().issue, 200);
        assert_eq!(m.own_issues(), [200, 9336]);
        assert_eq!(
            m.other_issues(),
            [(40, "rhel-10".to_owned()), (500, "rhel-10".to_owned())]
        );
        assert_eq!(m.summary().unwrap(), "Known issue #200 (also #9336)");
    }

    #[test]
    fn aliases_use_their_targets_patterns() {
        let db = db();
        let own: Vec<_> = db.for_os("centos-10").iter().map(|n| n.issue).collect();
        assert_eq!(own, [40, 500]);
        assert!(db.for_os("centos-10").iter().all(|n| n.os == "rhel-10"));
        assert_eq!(db.resolve("centos-10"), Some("rhel-10"));
        assert_eq!(db.resolve("rhel-10"), Some("rhel-10"));
        assert_eq!(db.resolve("arch"), None);
        assert_eq!(
            db.aliases(),
            [("centos-10", "rhel-10"), ("fedora-rawhide", "fedora-44")]
        );

        let m = db.matches("centos-10", OUTPUT);
        assert_eq!(
            names(&m.own),
            ["40 rhel-10/40-timeout-rhel", "500 rhel-10/500-pmproxy"]
        );
        // rhel-10 is its own directory, so it is not "another OS"; aliases are never searched.
        assert_eq!(
            names(&m.other),
            [
                "200 fedora-44/200-another",
                "200 fedora-44/200-timeout",
                "9336 fedora-44/9336-pmproxy-abort",
            ]
        );
    }

    #[test]
    fn other_os_matches_are_reported_when_own_has_none() {
        let m = db().matches("debian-12", OUTPUT);
        assert!(m.own.is_empty());
        assert_eq!(m.known_issue(), None);
        assert_eq!(m.known_elsewhere().unwrap().issue, 40);
        assert_eq!(
            m.summary().unwrap(),
            "Known issue #40 in rhel-10 (also #200, #500, #9336)"
        );
        // An OS without a directory still gets the others' matches.
        let m = db().matches("arch", OUTPUT);
        assert!(m.own.is_empty());
        assert_eq!(m.other.len(), 5);
    }

    #[test]
    fn no_match_and_pixel_failures() {
        let db = db();
        let m = db.matches("fedora-44", "Error: other\nnot ok 1 x TestA.testB");
        assert!(m.is_empty());
        assert_eq!(m.summary(), None);
        let pixel = format!("{OUTPUT}\nPixel test TestMetrics-graph-pixels.png failed: 99 pixels");
        assert!(db.matches("fedora-44", &pixel).is_empty());
    }

    #[test]
    fn counts_and_listing() {
        let db = db();
        assert_eq!(db.len(), 7);
        assert!(!db.is_empty());
        assert!(NaughtyDb::default().is_empty());
        let all: Vec<_> = db
            .all()
            .iter()
            .map(|n| format!("{} {}", n.os, n.issue))
            .collect();
        assert_eq!(
            all,
            [
                "debian-12 7",
                "fedora-44 17",
                "fedora-44 200",
                "fedora-44 200",
                "fedora-44 9336",
                "rhel-10 40",
                "rhel-10 500",
            ]
        );
        assert!(db.for_os("arch").is_empty());
    }

    #[test]
    fn add_rejects_what_load_rejects() {
        let mut db = db();
        let e = db.add("fedora-44", "readme", "x").unwrap_err();
        assert_eq!(e.path, Path::new("fedora-44/readme"));
        assert!(e.message.contains("issue number"));
        let e = db.add("fedora-44", "1-empty", "\n\n").unwrap_err();
        assert_eq!(e.to_string(), "fedora-44/1-empty: the pattern is empty");
        assert!(db.add("centos-10", "1-x", "x").is_err());
    }

    #[test]
    fn summary_of_one_issue() {
        let m = NaughtyMatches {
            own: Vec::new(),
            other: vec![Naughty {
                issue: 5,
                os: "rhel-9".into(),
                path: "rhel-9/5-x".into(),
                pattern: "x".into(),
            }],
        };
        assert_eq!(m.summary().unwrap(), "Known issue #5 in rhel-9");
    }
}
