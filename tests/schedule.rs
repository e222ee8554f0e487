//! End-to-end: the duration history a run leaves behind, and how it is read back (a corrupt
//! file, a named file); `--shard K/N` splitting the suite.

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
    assert!(busybox.boot(false).unwrap() > shared);
    assert_eq!(busybox.tests["TestHist.testOwn"].secs.len(), 1);
}

#[test]
fn cold_boots_and_restores_are_recorded_apart() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    write_suite(dir.path());
    let file = dir.path().join("h.json");
    let events = dir.path().join("events.json");
    let out = common::vmcheck()
        .args(["run", "-j", "1", "--cold-boot", "--test-dir"])
        .arg(dir.path())
        .arg("--events")
        .arg(&events)
        .env("VMCHECK_HISTORY", &file)
        .env("TEST_OS", "busybox")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    let text = std::fs::read_to_string(&events).unwrap();
    let ready: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "machine-ready")
        .collect();
    assert_eq!(ready.len(), 1, "{text}");
    assert_eq!(ready[0]["origin"], "cold", "{text}");
    let busybox = HistoryFile::named(file).load().unwrap().for_os("busybox");
    assert_eq!(busybox.boot.secs.len(), 1);
    assert!(busybox.restore.secs.is_empty(), "{busybox:?}");
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

/// `vmcheck run --list --shard SPEC` (and more arguments): its exit code, the listed names,
/// and stderr.
fn list_shard(spec: &str, more: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let bin = common::bin_without_qemu();
    let out = common::vmcheck()
        .args(["run", "--list", "--shard", spec])
        .args(more)
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    (
        out.status.code(),
        names,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shards_cover_the_suite_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("h.json");
    let history = history.to_str().unwrap();
    let all = |more: &[&str]| {
        let out = common::vmcheck()
            .args(["run", "--list", "--history", history])
            .args(more)
            .output()
            .unwrap();
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    for (dir_args, shards) in [(&[][..], 2), (&["--test-dir", "test/example"][..], 3)] {
        let mut union = Vec::new();
        let mut splits = Vec::new();
        for k in 1..=shards {
            let mut more = vec!["--history", history];
            more.extend(dir_args);
            let (code, names, err) = list_shard(&format!("{k}/{shards}"), &more);
            assert_eq!(code, Some(exit_codes::OK), "{err}");
            assert!(
                !names.is_empty(),
                "a shard of a suite bigger than N has tests"
            );
            assert!(
                err.starts_with(&format!("vmcheck: shard {k}/{shards}: ")),
                "{err}"
            );
            splits.push(err.rsplit_once("split ").unwrap().1.trim().to_string());
            union.extend(names);
        }
        union.sort();
        assert_eq!(union, all(dir_args), "every test in exactly one shard");
        assert!(splits.iter().all(|s| *s == splits[0]), "{splits:?}");
    }
    // Filters apply before the split: two shards of two tests get one each.
    let (_, a, _) = list_shard("1/2", &["TestShared.testA", "TestShared.testB"]);
    let (_, b, _) = list_shard("2/2", &["TestShared.testA", "TestShared.testB"]);
    assert_eq!((a.len(), b.len()), (1, 1), "{a:?} {b:?}");
    // More shards than tests: an empty shard is not an error.
    let (code, names, _) = list_shard("3/3", &["TestShared.testA", "TestShared.testB"]);
    assert_eq!((code, names.len()), (Some(exit_codes::OK), 0));
    // The environment variable works as the option.
    let out = common::vmcheck()
        .args(["run", "--list"])
        .env("VMCHECK_SHARD", "2/2")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("vmcheck: shard 2/2: "));
}

#[test]
fn bad_shard_specs_are_one_line_usage_errors() {
    for spec in ["0/3", "4/3", "x", "1/0", "/3"] {
        let (code, names, err) = list_shard(spec, &[]);
        assert_eq!(code, Some(exit_codes::INPUT_ERROR), "{spec}: {err}");
        assert!(names.is_empty());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!("vmcheck: error: --shard {spec}: ")),
            "{err}"
        );
    }
}
