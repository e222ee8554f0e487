//! End-to-end: the durations a run leaves in the outcome store, and how they are read back
//! (a corrupt or locked store is a warning); `--shard K/N` splitting the suite.

mod common;

use std::path::Path;
use vmcheck::exit_codes;
use vmcheck::results::durations::Durations;
use vmcheck::results::store::Store;

/// The durations recorded in the store at `path` on busybox.
fn busybox_durations(path: &Path) -> Durations {
    common::durations(path, "busybox")
}

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
    let file = dir.path().join("store/results.sqlite");
    let out = common::vmcheck()
        .args(["run", "-j", "1", "--test-dir"])
        .arg(dir.path())
        .env("VMCHECK_RESULTS_DB", &file)
        .env("TEST_OS", "busybox")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    let busybox = busybox_durations(&file);
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
    assert_eq!(busybox.tests["TestHist.testOwn"].len(), 1);
}

#[test]
fn cold_boots_and_restores_are_recorded_apart() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    write_suite(dir.path());
    let file = dir.path().join("results.sqlite");
    let events = dir.path().join("events.json");
    let out = common::vmcheck()
        .args(["run", "-j", "1", "--cold-boot", "--test-dir"])
        .arg(dir.path())
        .arg("--events")
        .arg(&events)
        .env("VMCHECK_RESULTS_DB", &file)
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
    let busybox = busybox_durations(&file);
    assert_eq!(busybox.boot.len(), 1);
    assert!(busybox.restore.is_empty(), "{busybox:?}");
}

#[test]
fn a_corrupt_store_is_one_warning_and_listing_creates_none() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("results.sqlite");
    std::fs::write(&corrupt, "{\"version\": 1, \"os\": [").unwrap();
    // A verbose listing shows estimates: it reads durations, and warns once.
    for how in ["env", "option"] {
        let mut cmd = common::vmcheck();
        cmd.args(["-v", "run", "--list"]);
        if how == "env" {
            cmd.env("VMCHECK_RESULTS_DB", &corrupt);
        } else {
            cmd.arg("--results-db").arg(&corrupt);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with(&format!(
                "vmcheck: warning: outcome store {}: not a vmcheck outcome store: ",
                corrupt.display()
            )) && err.contains("ordering tests without durations"),
            "{err}"
        );
        assert!(!out.stdout.is_empty());
    }
    // A plain listing shows no estimate: it does not open the store at all.
    let out = common::vmcheck()
        .args(["run", "--list", "--results-db"])
        .arg(&corrupt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    // Neither listing creates a store.
    let new = dir.path().join("new/results.sqlite");
    for verbose in [false, true] {
        let mut cmd = common::vmcheck();
        if verbose {
            cmd.arg("-v");
        }
        let out = cmd
            .args(["run", "--list", "--results-db"])
            .arg(&new)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
        assert!(out.stderr.is_empty(), "{out:?}");
        assert!(!new.exists() && !new.parent().unwrap().exists());
    }
}

/// A run whose store is corrupt, locked by another process for longer than a write waits,
/// or on a read-only file system, still runs and passes; the store is one warning line.
#[test]
fn a_run_goes_on_when_its_store_is_corrupt_locked_or_read_only() {
    common::image("busybox");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("check-one"),
        "[TestOne.testIt]\nrun = \"true\"\n",
    )
    .unwrap();
    let corrupt = dir.path().join("corrupt.sqlite");
    std::fs::write(&corrupt, vec![0xffu8; 4096]).unwrap();
    let locked = dir.path().join("locked.sqlite");
    drop(Store::open(&locked).unwrap());
    let holder = rusqlite::Connection::open(&locked).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // A store on a file system mounted read-only (as root; elsewhere this case is left out).
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&ro)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    struct Unmount(std::path::PathBuf, bool);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if self.1 {
                let _ = std::process::Command::new("umount").arg(&self.0).status();
            }
        }
    }
    let _unmount = Unmount(ro.clone(), mounted);
    let mut cases = vec![
        (corrupt.clone(), "not a vmcheck outcome store"),
        (locked.clone(), "locked"),
    ];
    if mounted {
        let on_ro = ro.join("results.sqlite");
        drop(Store::open(&on_ro).unwrap());
        let remounted = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&ro)
            .status()
            .unwrap();
        assert!(remounted.success());
        cases.push((on_ro, ""));
    } else {
        eprintln!("not root: the read-only case is left out");
    }
    for (store, why) in &cases {
        let out = common::vmcheck()
            .args(["run", "--progress", "none", "--test-dir"])
            .arg(dir.path())
            .arg("--results-db")
            .arg(store)
            .env("TEST_OS", "busybox")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("outcome store"))
            .collect();
        assert_eq!(warnings.len(), 1, "{err}");
        assert!(
            warnings[0].starts_with(&format!(
                "vmcheck: warning: outcome store {}: ",
                store.display()
            )) && warnings[0].contains(why),
            "{err}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok 1 "),
            "{out:?}"
        );
    }
    holder.execute_batch("ROLLBACK").unwrap();
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
    let store = dir.path().join("results.sqlite");
    let store = store.to_str().unwrap();
    let all = |more: &[&str]| {
        let out = common::vmcheck()
            .args(["run", "--list", "--results-db", store])
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
            let mut more = vec!["--results-db", store];
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
