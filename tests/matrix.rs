//! Test matrices end to end: cases selected, listed, run on real busybox machines and
//! reported under their ids; the first case in line says why it waits; bad matrices and
//! cases bigger than the host stop everything before anything starts.

mod common;

use std::path::Path;
use std::process::Command;
use vmcheck::exit_codes;

/// A throw-away project with the real busybox image and one check file, `check-m`.
fn project(check: &str) -> tempfile::TempDir {
    common::busybox_project_with("check-m", check)
}

fn vmcheck_in(root: &Path) -> Command {
    let mut cmd = common::vmcheck_run_in(root);
    cmd.env("TEST_OS", "busybox");
    cmd
}

const CASES: &str = r#"
[TestM]
matrix = { n = [1, 2, 3], size = ["small"] }
matrix_include = [{ n = 2, label = "two" }, { n = 4, size = "big" }]

[TestM.testCase]
run = '''
test "$VMCHECK_MATRIX" = "n=$VMCHECK_MATRIX_N,size=$VMCHECK_MATRIX_SIZE"
test "$VMCHECK_TEST" = "TestM.testCase[$VMCHECK_MATRIX]"
if [ "$VMCHECK_MATRIX_N" = 2 ]; then test "$VMCHECK_MATRIX_LABEL" = two; fi
echo "case $VMCHECK_MATRIX ran"
'''
"#;

#[test]
fn cases_run_under_their_ids_one_waiting_for_the_other() {
    let dir = project(CASES);
    let root = dir.path();
    // Listing: every case, and --matrix selects (values of one key are alternatives).
    let out = vmcheck_in(root).arg("--list").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TestM.testCase[n=1,size=small]\nTestM.testCase[n=2,size=small]\nTestM.testCase[n=3,size=small]\n\
         TestM.testCase[n=4,size=big]\n"
    );
    // The include that fits no case is a case of its own, and runs as one.
    let out = common::output_leaving_nothing(vmcheck_in(root).args(["--matrix", "size=big"]));
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
    assert!(
        tap.contains("ok 1 test/verify/check-m TestM.testCase[n=4,size=big]"),
        "{tap}"
    );
    let junit = root.join("junit.xml");
    let out = common::output_leaving_nothing(
        vmcheck_in(root)
            .args(["-j", "1", "--progress", "lines", "--no-retry-fail"])
            .args(["--matrix", "n=1", "--matrix", "n=2", "--junit"])
            .arg(&junit),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    common::assert_code(&out, &tap, exit_codes::OK);
    assert!(common::prove(&tap).0, "{tap}");
    let oks: Vec<&str> = tap.lines().filter(|l| l.starts_with("ok ")).collect();
    assert_eq!(
        oks,
        [
            "ok 1 test/verify/check-m TestM.testCase[n=1,size=small] (0.4GB)",
            "ok 2 test/verify/check-m TestM.testCase[n=2,size=small] (0.4GB)"
        ],
        "{tap}"
    );
    // With one job, the second case waited for the first, and said why, once.
    assert_eq!(
        err.matches("WAIT TestM.testCase[n=2,size=small]: 1 of 1 jobs (-j) are running")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("matrix values (cases failed / cases):"),
        "{err}"
    );
    assert!(err.contains("n=2         0/1"), "{err}");
    common::assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"name="testCase[n=1,size=small]" classname="TestM""#),
        "{xml}"
    );
    // A value no case has is a warning; with nothing left, no tests.
    let out = vmcheck_in(root)
        .args(["--list", "--matrix", "n=7"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: --matrix n=7 matches no matrix case"),
        "{err}"
    );
    assert_eq!(out.status.code(), Some(exit_codes::NO_TESTS), "{err}");
}

#[test]
fn bad_matrices_and_cases_bigger_than_the_host_start_nothing() {
    let cases = [
        (
            "[TestM.testA]\nmatrix = { n = [1] }\nskip = { matrix = { m = \"1\" }, reason = \"r\" }\nrun = 'true'\n",
            "test/verify/check-m:3:21: 'skip': 'm' is not a matrix key of test TestM.testA (its keys: n)",
        ),
        (
            "[TestM.testA]\nmatrix = { n = [] }\nrun = 'true'\n",
            "test/verify/check-m:2:16: 'matrix.n' is empty: an axis needs at least one value",
        ),
        (
            "[TestM.testA]\nmatrix = { n = [1, 2], m = [1, 2] }\nmatrix_limit = 3\nrun = 'true'\n",
            "test/verify/check-m:2:10: the matrix has 4 cases, more than the limit of 3",
        ),
        (
            "[TestM.testA]\nmatrix = { n = [1] }\nmatrix_include = [{ n = 2 }, { n = 2 }]\nrun = 'true'\n",
            "test/verify/check-m:3:30: 'matrix_include': the case [n=2] is already in the matrix",
        ),
        (
            // 64 GiB machines: more than any host this runs on has in all.
            "[TestM.testA]\nmatrix = { n = [1, 2] }\nprovision.machine1 = { memory = 65536 }\nrun = 'true'\n",
            "test/verify/check-m:1:1: TestM.testA[n=1] needs 64.",
        ),
    ];
    for (text, want) in cases {
        let dir = project(text);
        let out = common::output_leaving_nothing(vmcheck_in(dir.path()).args(["--junit", "j.xml"]));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(exit_codes::INPUT_ERROR),
            "{text}: {err}"
        );
        assert!(err.contains(want), "{text}: {err}");
        assert!(out.stdout.is_empty(), "{text}: nothing ran");
        assert!(!dir.path().join("j.xml").exists(), "{text}");
    }
    // An exclude entry that removes nothing is a warning, and the run goes on.
    let dir = project(
        "[TestM.testA]\nmatrix = { n = [1] }\nmatrix_exclude = [{ n = 2 }]\nrun = 'true'\n",
    );
    let out = vmcheck_in(dir.path()).arg("--list").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("vmcheck: warning: test/verify/check-m:3:19: test TestM.testA: 'matrix_exclude': this entry matches no case of the matrix"),
        "{err}"
    );
}

const ON_EACH_OS: &str = r#"
[TestOs.testShared]
nondestructive = true
run = '''
echo "shared on $TEST_OS"
test "$VMCHECK_TEST" = TestOs.testShared
'''

[TestOs.testOwn]
matrix = { fs = ["ext4", "xfs"] }
run = '''
echo "own on $TEST_OS $VMCHECK_MATRIX"
if [ "$TEST_OS" = tiny ] && [ "$VMCHECK_MATRIX_FS" = xfs ]; then echo "tiny xfs trouble"; exit 1; fi
'''

[TestOs.testOnlyBusybox]
only = [{ os = ["busybox"], reason = "busybox only" }]
run = "test $TEST_OS = busybox"
"#;

/// `TEST_OS=busybox,tiny`: every test runs on each OS, on shared machines and machines of its
/// own booted from that OS's image, named for it in every report; skips and known issues
/// are per OS; the outcome store keeps each OS's outcomes apart, under the tests' own names.
#[test]
fn several_test_os_are_an_axis_of_the_run() {
    let dir = project(ON_EACH_OS);
    let root = dir.path();
    common::busybox_as(root, "tiny");
    std::fs::create_dir_all(root.join("bots/naughty/tiny")).unwrap();
    std::fs::write(
        root.join("bots/naughty/tiny/42-xfs"),
        "*tiny xfs trouble*\n",
    )
    .unwrap();
    let store = root.join("results.sqlite");
    let run = || {
        let mut cmd = common::vmcheck_run_in(root);
        cmd.env("TEST_OS", "busybox,tiny")
            .arg("--results-db")
            .arg(&store);
        cmd
    };
    let out = run().arg("--list").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TestOs.testOnlyBusybox[TEST_OS=busybox]\n\
         TestOs.testOnlyBusybox[TEST_OS=tiny]\n\
         TestOs.testOwn[TEST_OS=busybox,fs=ext4]\n\
         TestOs.testOwn[TEST_OS=tiny,fs=ext4]\n\
         TestOs.testOwn[TEST_OS=busybox,fs=xfs]\n\
         TestOs.testOwn[TEST_OS=tiny,fs=xfs]\n\
         TestOs.testShared[TEST_OS=busybox]\n\
         TestOs.testShared[TEST_OS=tiny]\n"
    );
    let out = run()
        .args(["--list", "--matrix", "TEST_OS=tiny", "--exclude"])
        .arg("TestOs.testOwn[fs=ext4]")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TestOs.testOnlyBusybox[TEST_OS=tiny]\n\
         TestOs.testOwn[TEST_OS=tiny,fs=xfs]\n\
         TestOs.testShared[TEST_OS=tiny]\n"
    );

    let junit = root.join("junit.xml");
    let out = common::output_leaving_nothing(
        run()
            .args(["--progress", "lines", "--no-retry-fail", "--junit"])
            .arg(&junit),
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    common::assert_code(&out, &tap, exit_codes::OK);
    assert!(common::prove(&tap).0, "{tap}");
    let mut results: Vec<&str> = tap
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .map(|l| l.split_once(" test/verify/check-m ").unwrap().1)
        .collect();
    results.sort();
    assert_eq!(
        results,
        [
            "TestOs.testOnlyBusybox[TEST_OS=busybox] (0.4GB)",
            "TestOs.testOnlyBusybox[TEST_OS=tiny] # SKIP busybox only",
            "TestOs.testOwn[TEST_OS=busybox,fs=ext4] (0.4GB)",
            "TestOs.testOwn[TEST_OS=busybox,fs=xfs] (0.4GB)",
            "TestOs.testOwn[TEST_OS=tiny,fs=ext4] (0.4GB)",
            "TestOs.testOwn[TEST_OS=tiny,fs=xfs] (0.4GB) # SKIP Known issue #42",
            "TestOs.testShared[TEST_OS=busybox] [ND@1]",
            "TestOs.testShared[TEST_OS=tiny] [ND@2]",
        ],
        "{tap}"
    );
    // Each OS's machines booted its own image.
    assert!(tap.contains("machine1 booted (tiny-"), "{tap}");
    assert!(err.contains("TEST_OS=busybox  0/4"), "{err}");
    assert!(err.contains("TEST_OS=tiny     0/4"), "{err}");
    common::assert_valid_junit(&junit);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("name=\"testOwn[TEST_OS=tiny,fs=xfs]\""),
        "{xml}"
    );

    // The store: a run per OS, the tests under their own names.
    let conn = rusqlite::Connection::open(&store).unwrap();
    let rows: Vec<(String, String, String)> = conn
        .prepare(
            "SELECT r.os, a.test, a.outcome FROM attempts a JOIN runs r ON r.id = a.run \
             ORDER BY r.os, a.test",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let rows: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("busybox", "TestOs.testOnlyBusybox", "passed"),
            ("busybox", "TestOs.testOwn[fs=ext4]", "passed"),
            ("busybox", "TestOs.testOwn[fs=xfs]", "passed"),
            ("busybox", "TestOs.testShared", "passed"),
            ("tiny", "TestOs.testOwn[fs=ext4]", "passed"),
            ("tiny", "TestOs.testOwn[fs=xfs]", "failed"),
            ("tiny", "TestOs.testShared", "passed"),
        ]
    );
    // A later run on one OS, or on both, estimates each case from what its OS recorded.
    let recorded = |os: &str| -> String {
        let ms: i64 = conn
            .query_row(
                "SELECT a.duration_ms FROM attempts a JOIN runs r ON r.id = a.run \
                 WHERE r.os = ?1 AND a.test = 'TestOs.testOwn[fs=ext4]'",
                [os],
                |r| r.get(0),
            )
            .unwrap();
        format!("estimate={:.1}s", ms as f64 / 1000.0)
    };
    for test_os in ["tiny", "tiny,busybox"] {
        let out = common::vmcheck()
            .args(["-v", "--project-dir"])
            .arg(root)
            .args(["run", "--list", "--exact", "--results-db"])
            .arg(&store)
            .args(if test_os == "tiny" {
                &["TestOs.testOwn[fs=ext4]"][..]
            } else {
                &[
                    "TestOs.testOwn[TEST_OS=busybox,fs=ext4]",
                    "TestOs.testOwn[TEST_OS=tiny,fs=ext4]",
                ][..]
            })
            .env("TEST_OS", test_os)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        let estimates: Vec<&str> = list
            .lines()
            .map(|l| l.split(' ').find(|w| w.starts_with("estimate=")).unwrap())
            .collect();
        let expected = if test_os == "tiny" {
            vec![recorded("tiny")]
        } else {
            vec![recorded("tiny"), recorded("busybox")]
        };
        assert_eq!(estimates, expected, "{list}");
    }
}

/// A TEST_OS that is not a list of image names, or names one twice, is an input error
/// before anything starts; so are several with existing hosts or autopkgtest.
#[test]
fn bad_test_os_lists_start_nothing() {
    let dir = project(ON_EACH_OS);
    let root = dir.path();
    for (test_os, args, says) in [
        (
            "busybox,",
            &[][..],
            "TEST_OS=busybox,: \"\" is not an image name",
        ),
        (
            "busybox,busybox",
            &[][..],
            "TEST_OS=busybox,busybox: busybox is given twice",
        ),
        (
            "busybox,debian-12",
            &["--machine", "127.0.0.1:22"][..],
            "--machine runs on existing hosts of one TEST_OS",
        ),
    ] {
        let out = common::output_leaving_nothing(
            common::vmcheck_run_in(root)
                .env("TEST_OS", test_os)
                .args(args),
        );
        assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(says), "{err}");
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}
