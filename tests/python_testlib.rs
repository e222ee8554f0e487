//! The Python test library of executable check files (`python/testlib.py`): its unit tests
//! (`python/test_testlib.py`, no VM needed) run here so that `cargo test` covers them.

use std::path::Path;
use std::process::Command;

#[test]
fn python_testlib_unit_tests_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_testlib"])
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 runs (install the Debian package python3)");
    assert!(
        out.status.success(),
        "python3 -m unittest -v test_testlib in {} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}
