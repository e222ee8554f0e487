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
matrix_include = [{ n = 2, label = "two" }]

[TestM.testCase]
run = '''
test "$VMCHECK_MATRIX" = "n=$VMCHECK_MATRIX_N,size=small"
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
        "TestM.testCase[n=1,size=small]\nTestM.testCase[n=2,size=small]\nTestM.testCase[n=3,size=small]\n"
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
