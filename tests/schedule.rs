//! End-to-end: the duration history a run leaves behind, and how it is read back (a corrupt
//! file, a named file).

mod common;

use std::path::Path;
use vmcheck::exit_codes;
use vmcheck::history::{History, HistoryFile};

/// A check file with one nondestructive and one destructive trivial test.
fn write_suite(dir: &Path) {
    std::fs::write(
        dir.join("check-hist"),
        "[TestHist.testShared]\nnondestructive = true\nrun = \"true\"\n\n\
         [TestHist.testOwn]\nrun = \"true\"\n\n\
         [TestHist.testSkipsItself]\nrun = \"exit 77\"\n",
    )
    .unwrap();
}

#[test]
fn a_run_records_its_tests_and_the_shared_boot() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    write_suite(dir.path());
    let file = dir.path().join("history/h.json");
    let out = common::vmcheck()
        .args(["run", "-j", "1", "--test-dir"])
        .arg(dir.path())
        .env("VMCHECK_HISTORY", &file)
        .env("TEST_OS", "busybox")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    let history = HistoryFile {
        path: file,
        explicit: true,
    }
    .load()
    .unwrap();
    let busybox = history.for_os("busybox");
    let names: Vec<&str> = busybox.tests.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["TestHist.testOwn", "TestHist.testShared"],
        "skips are not durations"
    );
    let own = busybox.test("TestHist.testOwn").unwrap();
    let shared = busybox.test("TestHist.testShared").unwrap();
    assert!(
        own > shared,
        "a destructive test includes its boot: {own:?} {shared:?}"
    );
    assert!(busybox.boot().unwrap() > shared);
    assert_eq!(busybox.tests["TestHist.testOwn"].secs.len(), 1);
}

#[test]
fn a_corrupt_history_is_a_warning_unless_it_was_named() {
    let cache = tempfile::tempdir().unwrap();
    let root = common::project_root().canonicalize().unwrap();
    let default = HistoryFile::default_for(&root).path;
    let key = default.file_name().unwrap();
    let corrupt = cache.path().join("vmcheck/history").join(key);
    std::fs::create_dir_all(corrupt.parent().unwrap()).unwrap();
    std::fs::write(&corrupt, "{\"version\": 1, \"os\": [").unwrap();

    // The default file: one warning line naming it, and the run goes on.
    let out = common::vmcheck()
        .args(["run", "--list"])
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("VMCHECK_HISTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "vmcheck: warning: {}: not a vmcheck duration history: ",
            corrupt.display()
        )) && err.contains("starting with an empty duration history"),
        "{err}"
    );
    assert!(!out.stdout.is_empty());

    // A file given by name: an input error, and nothing runs.
    let out = common::vmcheck()
        .args(["run", "--list", "--history"])
        .arg(&corrupt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("--history {}: not a vmcheck", corrupt.display())));
    assert!(out.stdout.is_empty());
    // A named file that does not exist yet is an empty history (a first CI run).
    let out = common::vmcheck()
        .args(["run", "--list", "--history"])
        .arg(cache.path().join("new.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    assert_eq!(
        History::default(),
        HistoryFile {
            path: cache.path().join("new.json"),
            explicit: true
        }
        .load()
        .unwrap(),
        "listing writes nothing"
    );
}
