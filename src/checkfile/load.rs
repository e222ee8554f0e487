//! The only I/O of check files: finding them in a directory ([`discover`]) and reading and
//! parsing a set of them into one sorted list of tests ([`load`]), which also rejects a
//! test name defined in two files.

use super::def::TestDef;
use super::error::{CheckFileError, Diagnostics};
use super::glob::name_glob;
use super::listing::{Kind, kind, list};
use super::parse::{FileRead, Parsed, parse_partial};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::path::{Path, PathBuf};

/// What [`discover`] found in a directory.
#[derive(Debug, Default)]
pub struct Discovered {
    /// The check files, sorted by name; each path is the directory joined with the name.
    pub files: Vec<PathBuf>,
    /// Editor backups (`check-foo~`) that match the glob but are not check files.
    pub ignored: Vec<PathBuf>,
    /// Files whose name cannot be shown in reports (not UTF-8, or with a control character,
    /// which could forge TAP lines), each an error naming the file.
    pub unusable: Vec<CheckFileError>,
}

/// Finds the check files in `dir`: regular files (or symlinks to them) whose name matches
/// `glob` (usually `"check-*"`; see the `glob` rules for names), whatever other characters
/// the name holds (`check-foo.bar`, `check-with space`). Unlike Cockpit, nothing is skipped
/// silently: editor backups (`~` at the end) are listed as ignored, and a name that cannot
/// be a check file's is an error.
pub fn discover(dir: &Path, glob: &str) -> io::Result<Discovered> {
    let matcher = name_glob(glob).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut found = Discovered::default();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let shown = name.to_string_lossy();
        if !matcher.is_match(shown.as_ref()) {
            continue;
        }
        match std::fs::metadata(entry.path()) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            // A dangling symlink is not a regular file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        let problem = match name.to_str() {
            None => Some("the file name is not UTF-8"),
            Some(n) if n.chars().any(char::is_control) => {
                Some("the file name has a control character, which reports cannot show")
            }
            Some(n) if n.ends_with('~') => {
                found.ignored.push(entry.path());
                continue;
            }
            Some(_) => None,
        };
        match problem {
            Some(problem) => found.unusable.push(CheckFileError::whole_file(
                &dir.join(shown.escape_debug().to_string()),
                format!("{problem}: rename it to be run as a check file"),
            )),
            None => names.push(shown.into_owned()),
        }
    }
    names.sort();
    found.ignored.sort();
    found.unusable.sort_by(|a, b| a.path.cmp(&b.path));
    found.files = names.into_iter().map(|name| dir.join(name)).collect();
    Ok(found)
}

/// Reads and parses every file, and returns all their tests sorted by (file, class,
/// method), or every error of every file (sorted by file, line, column).
///
/// A TOML check file is parsed; an executable check file (see `listing.rs`) is run to list
/// its tests, several at once. A file is shown (in `TestDef::file` and errors) relative to
/// `root` when it is under it, else as given. A file listed twice is read once. A test name
/// (`TestFoo.testBar`) defined in two files is an error at the second, naming the first.
pub fn load(files: &[PathBuf], root: &Path) -> Result<Loaded, Vec<CheckFileError>> {
    let mut seen = std::collections::HashSet::new();
    let sources: Vec<(&PathBuf, PathBuf)> = files
        .iter()
        .map(|file| (file, display_path(file, root)))
        .filter(|(_, display)| seen.insert(display.clone()))
        .collect();
    let python_path = std::sync::OnceLock::new();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    let workers = sources.len().min(LOAD_WORKERS);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((file, display)) = sources.get(i) else {
                        break;
                    };
                    let result = load_one(file, display, root, &python_path);
                    results.lock().expect("poisoned").push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("poisoned");
    results.sort_by_key(|(i, _)| *i);
    let mut tests = Vec::new();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (_, read) in results {
        tests.extend(read.tests);
        errors.extend(read.errors);
        warnings.extend(read.warnings);
    }
    // Stable, by reference (no copies per comparison): a test's cases keep their order.
    fn key(t: &Parsed) -> (&PathBuf, &String, &String) {
        (&t.def.file, &t.def.class, &t.def.method)
    }
    tests.sort_by(|a, b| key(a).cmp(&key(b)));

    let mut first: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for test in &tests {
        let def = &test.def;
        match first.entry(def.name()) {
            Entry::Vacant(entry) => {
                entry.insert((def.file.clone(), def.line));
            }
            Entry::Occupied(entry) => {
                let (file, line) = entry.get();
                errors.push(CheckFileError {
                    path: def.file.clone(),
                    line: def.line,
                    col: test.col,
                    message: format!(
                        "test {} is already defined in {}",
                        def.name(),
                        at(file, *line)
                    ),
                });
            }
        }
    }

    if errors.is_empty() {
        Ok(Loaded {
            tests: tests.into_iter().map(|t| t.def).collect(),
            warnings,
        })
    } else {
        errors.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
        Err(errors)
    }
}

/// The tests of a set of check files, and what is worth a warning in them.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Sorted by (file, class, method); a test's matrix cases in matrix order.
    pub tests: Vec<TestDef>,
    /// Problems that do not stop the run (`path:line:col: message`), e.g. a
    /// `matrix_exclude` entry that matches no case.
    pub warnings: Vec<CheckFileError>,
}

/// Check files read (and executable ones listed) at once, at most.
const LOAD_WORKERS: usize = 8;

/// `file:line`, or `file` when the line is not known.
fn at(file: &Path, line: usize) -> String {
    if line == 0 {
        file.display().to_string()
    } else {
        format!("{}:{line}", file.display())
    }
}

/// The tests and errors of one check file, of either kind. `python_path` is the
/// `PYTHONPATH` of listings, made when the first executable check file needs it.
fn load_one(
    file: &Path,
    display: &Path,
    root: &Path,
    python_path: &std::sync::OnceLock<Result<std::ffi::OsString, String>>,
) -> FileRead {
    let whole_file = |message: String| CheckFileError::whole_file(display, message);
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return FileRead::failed(vec![whole_file(format!("cannot read: {e}"))]),
    };
    match kind(file, &bytes) {
        Kind::Toml => match utf8(bytes, display) {
            Ok(text) => parse_partial(display, &text),
            Err(e) => FileRead::failed(vec![e]),
        },
        Kind::Executable => {
            let path = python_path.get_or_init(|| {
                crate::testlib::python_path_env()
                    .map_err(|e| format!("cannot write vmcheck's Python testlib: {e}"))
            });
            match path {
                Ok(path) => list(file, display, root, path),
                Err(e) => FileRead::failed(vec![whole_file(e.clone())]),
            }
        }
        Kind::NotExecutable { program } => FileRead::failed(vec![whole_file(format!(
            "its #! line names {program}, but it is not executable: `chmod +x` it to run \
                 it as an executable check file (a TOML check file's #! line names vmcheck)"
        ))]),
    }
}

fn display_path(file: &Path, root: &Path) -> PathBuf {
    match file.strip_prefix(root) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.to_path_buf(),
        _ => file.to_path_buf(),
    }
}

/// A file's bytes as UTF-8 text; a decoding error points at the first bad byte.
fn utf8(bytes: Vec<u8>, display: &Path) -> Result<String, CheckFileError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let valid = std::str::from_utf8(valid).unwrap_or_default();
        let (line, col) = Diagnostics::new(display, valid).position(valid.len());
        CheckFileError {
            path: display.to_path_buf(),
            line,
            col,
            message: "not UTF-8 text".to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    const VALID: &str = "[TestA.testOne]\nrun = 'true'\n";

    #[test]
    fn discover_filters_and_sorts() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "check-b",
            "check-a",
            "check-c_2",
            "check-x.py",
            "check-x~",
            "check-é",
            "check-with space",
            "other",
            "CHECK-upper",
        ] {
            write(dir.path(), name, VALID);
        }
        fs::create_dir(dir.path().join("check-dir")).unwrap();
        std::os::unix::fs::symlink("check-a", dir.path().join("check-link")).unwrap();
        std::os::unix::fs::symlink("missing", dir.path().join("check-dangling")).unwrap();

        let names = |glob: &str| -> Vec<String> {
            discover(dir.path(), glob)
                .unwrap()
                .files
                .iter()
                .map(|p| {
                    assert_eq!(p.parent(), Some(dir.path()));
                    p.file_name().unwrap().to_string_lossy().into_owned()
                })
                .collect()
        };
        assert_eq!(
            names("check-*"),
            [
                "check-a",
                "check-b",
                "check-c_2",
                "check-link",
                "check-with space",
                "check-x.py",
                "check-é"
            ]
        );
        assert_eq!(names("check-[ab]"), ["check-a", "check-b"]);
        assert_eq!(names("*").len(), 9);
        let found = discover(dir.path(), "check-*").unwrap();
        assert_eq!(found.ignored, [dir.path().join("check-x~")]);
        assert!(found.unusable.is_empty());

        let err = discover(dir.path(), "check-[").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(discover(&dir.path().join("missing"), "*").is_err());
    }

    #[test]
    fn discover_names_unusable_file_names() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "check-a\nok 1 forged", VALID);
        fs::write(
            dir.path().join(std::ffi::OsStr::from_bytes(b"check-\xff")),
            VALID,
        )
        .unwrap();
        let found = discover(dir.path(), "check-*").unwrap();
        assert!(found.files.is_empty(), "{:?}", found.files);
        let errors: Vec<String> = found.unusable.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].ends_with("/check-a\\nok 1 forged: the file name has a control character, which reports cannot show: rename it to be run as a check file"), "{}", errors[0]);
        assert!(!errors[0].contains('\n'));
        assert!(
            errors[1].ends_with(
                "/check-\u{fffd}: the file name is not UTF-8: rename it to be run as a check file"
            ),
            "{}",
            errors[1]
        );
    }

    #[test]
    fn load_sorts_and_relativizes() {
        let root = tempfile::tempdir().unwrap();
        let verify = root.path().join("test/verify");
        fs::create_dir_all(&verify).unwrap();
        let b = write(
            &verify,
            "check-b",
            "[TestB.testZ]\nrun = 'z'\n[TestB.testA]\nrun = 'a'\n",
        );
        let a = write(&verify, "check-a", "[TestZ.testOne]\nrun = '1'\n");
        let tests = load(&[b.clone(), a.clone(), b], root.path()).unwrap().tests;
        let names: Vec<_> = tests
            .iter()
            .map(|t| format!("{} {}", t.file.display(), t.name()))
            .collect();
        assert_eq!(
            names,
            [
                "test/verify/check-a TestZ.testOne",
                "test/verify/check-b TestB.testA",
                "test/verify/check-b TestB.testZ",
            ]
        );
        // Outside the root: shown as given.
        let elsewhere = tempfile::tempdir().unwrap();
        let tests = load(std::slice::from_ref(&a), elsewhere.path())
            .unwrap()
            .tests;
        assert_eq!(tests[0].file, a);
    }

    #[test]
    fn load_collects_every_error_of_every_file() {
        let root = tempfile::tempdir().unwrap();
        let one = write(
            root.path(),
            "check-1",
            "[TestA.testOne]\nrun = 'x'\ntimout = 5\n",
        );
        let two = write(root.path(), "check-2", "x = \n[TestB.testTwo]\n");
        let three = write(
            root.path(),
            "check-3",
            "[TestC.testThree]\nrun = 'y'\n\n[TestA.testOne]\nhost = 'z'\n",
        );
        let four = write(root.path(), "check-4", "[TestD.testFour]\nrun = 'x'\n");
        let mut bytes = fs::read(&four).unwrap();
        bytes.extend_from_slice(b"# \xff\n");
        fs::write(&four, bytes).unwrap();
        let missing = root.path().join("check-missing");

        let errors = load(&[one, two, three, four, missing], root.path()).unwrap_err();
        let rendered: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(rendered.len(), 5, "{rendered:#?}");
        assert!(
            rendered[0].starts_with(
                "check-1:3:1: unknown key 'timout' in test TestA.testOne, did you mean 'timeout'?"
            ),
            "{}",
            rendered[0]
        );
        assert!(rendered[1].starts_with("check-2:1:5: "), "{}", rendered[1]);
        assert_eq!(
            rendered[2],
            "check-3:4:8: test TestA.testOne is already defined in check-1:1"
        );
        assert_eq!(rendered[3], "check-4:3:3: not UTF-8 text");
        assert!(
            rendered[4].starts_with("check-missing: cannot read: "),
            "{}",
            rendered[4]
        );
    }
}
