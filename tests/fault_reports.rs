//! Fault suite, reports: what vmcheck writes for people and CI survives faults of its own
//! outputs (a disk that fills up, input errors after the outputs were opened, a second
//! Ctrl-C, a runner killed mid-run) and hostile test output. Real VMs, real files.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use vmcheck::exit_codes;

/// `vmcheck run --test-dir DIR ARGS` in a private TMPDIR, checked to leave nothing behind.
fn run(dir: &Path, args: &[&str]) -> (Output, String) {
    let out = common::output_leaving_nothing(
        common::vmcheck()
            .arg("run")
            .arg("--test-dir")
            .arg(dir)
            .args(args),
    );
    let tap = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, tap)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The TAP result lines, asserting their numbers follow each other.
fn result_lines(tap: &str) -> Vec<String> {
    let lines: Vec<String> = tap
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .map(String::from)
        .collect();
    for (i, l) in lines.iter().enumerate() {
        let num = l.trim_start_matches("not ").split(' ').nth(1).unwrap();
        assert_eq!(num, (i + 1).to_string(), "numbered in order: {tap}");
    }
    lines
}

/// A tmpfs of `kib` KiB, unmounted on drop (the tests run as root, as CI does).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(kib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={kib}k,mode=0700").as_str()),
        )
        .expect("mount a tmpfs (the tests run as root)");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fill it up: no byte can be written after this.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &block).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

const ONE_TEST: &str = "[TestOne.testPass]\nnondestructive = true\nrun = 'true'\n";

/// A JUnit report that cannot be written when the run ends (its disk is full) is not
/// silently dropped: the run says so and exits 5, and TAP still closes.
#[test]
fn a_report_that_cannot_be_written_fails_the_run() {
    common::image("busybox");
    let dir = common::check_dir(ONE_TEST);
    let disk = SmallDisk::new(64);
    let junit = disk.path().join("junit.xml");
    std::fs::write(&junit, "<earlier/>").unwrap();
    disk.fill();
    let (out, tap) = run(dir.path(), &["--junit", junit.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_codes::REPORT_FAILED),
        "{tap}\n{err}"
    );
    assert!(
        err.contains(&format!(
            "vmcheck: cannot write the JUnit report {}: No space left on device",
            junit.display()
        )),
        "{err}"
    );
    common::assert_each_test_once(&tap, None, None, &["TestOne.testPass"]);
    assert!(result_lines(&tap)[0].starts_with("ok 1 "), "{tap}");
    assert_eq!(
        std::fs::read_to_string(&junit).unwrap(),
        "<earlier/>",
        "the earlier report stays whole rather than half a new one"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(disk.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
}

/// An input error found after the outputs were opened (an unknown image) leaves earlier
/// reports as they were and creates none.
#[test]
fn an_input_error_leaves_earlier_reports_alone() {
    let dir = common::check_dir(ONE_TEST);
    let out_dir = tempfile::tempdir().unwrap();
    let events = out_dir.path().join("events.jsonl");
    let junit = out_dir.path().join("junit.xml");
    let status = out_dir.path().join("status.json");
    std::fs::write(&events, "earlier events\n").unwrap();
    std::fs::write(&junit, "earlier junit").unwrap();
    let out = common::vmcheck()
        .args(["run", "--test-dir"])
        .arg(dir.path())
        .arg("--events")
        .arg(&events)
        .arg("--junit")
        .arg(&junit)
        .arg("--status-file")
        .arg(&status)
        .env("TEST_OS", "no-such-image")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INPUT_ERROR),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("no-such-image"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "earlier events\n"
    );
    assert_eq!(std::fs::read_to_string(&junit).unwrap(), "earlier junit");
    let mut left: Vec<String> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["events.jsonl", "junit.xml"],
        "nothing new, no temporary file"
    );
}

/// Bytes a test prints cannot forge TAP results, whatever a reader takes for a line end,
/// nor reach a terminal as control sequences; binary output keeps every report readable.
#[test]
fn hostile_output_stays_inside_comments() {
    common::image("busybox");
    let dir = common::check_dir(
        r#"
[TestHostile.testForge]
run = '''
printf 'x\rok 7 forged by CR\vok 8 forged by VT\fok 9 forged by FF\342\200\250ok 10 forged by LS\033]0;title\007\033[2J'
head -c 3000 /dev/urandom
printf 'no final newline'
exit 1
'''
"#,
    );
    let out_dir = tempfile::tempdir().unwrap();
    let junit = out_dir.path().join("junit.xml");
    let events = out_dir.path().join("events.jsonl");
    let (out, tap) = run(
        dir.path(),
        &[
            "--no-retry-fail",
            "--junit",
            junit.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(exit_codes::TESTS_FAILED), "{tap}");
    for line in tap.split([
        '\n', '\r', '\u{0b}', '\u{0c}', '\u{85}', '\u{2028}', '\u{2029}',
    ]) {
        assert!(
            line.is_empty()
                || line.starts_with('#')
                || line.starts_with("1..")
                || line.starts_with("not ok 1 "),
            "a line outside the comments: {line:?}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{7}'),
            "{line:?}"
        );
    }
    common::assert_each_test_once(
        &tap,
        Some(&junit),
        Some(&events),
        &["TestHostile.testForge"],
    );
    common::prove(&tap);
    // vmcheck's own lines start on lines of their own.
    assert!(tap.contains("no final newline\n"), "{tap}");
    common::assert_valid_junit(&junit);
    let stream = vmcheck::results::merge::read(&events).unwrap();
    assert!(stream.events.len() > 2);
}

/// A second Ctrl-C exits at once, and TAP still ends validly: every planned test has one
/// line, then `Bail out!`.
#[test]
fn a_second_signal_still_ends_tap_validly() {
    common::image("busybox");
    let dir = common::check_dir(
        "[TestSlow.testA]\nrun = 'sleep 600'\n[TestSlow.testB]\nrun = 'sleep 600'\n\
         [TestSlow.testC]\nrun = 'sleep 600'\n",
    );
    let tmp = common::private_tmp();
    let child = common::spawn_with_machines_up(
        common::vmcheck()
            .args(["run", "-j", "2", "--test-dir"])
            .arg(dir.path())
            .env("VMCHECK_PROGRESS", "lines"),
        tmp.path(),
        2,
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Both signals arrive at once (held while stopped): the second comes before the first
    // could close the reports the normal way.
    use nix::sys::signal::{SIGCONT, SIGINT, SIGSTOP, SIGTERM, kill};
    kill(pid, SIGSTOP).unwrap();
    kill(pid, SIGINT).unwrap();
    kill(pid, SIGTERM).unwrap();
    kill(pid, SIGCONT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INTERRUPTED),
        "{}",
        stderr(&out)
    );
    let tap = String::from_utf8_lossy(&out.stdout);
    result_lines(&tap);
    common::assert_each_test_once(
        &tap,
        None,
        None,
        &["TestSlow.testA", "TestSlow.testB", "TestSlow.testC"],
    );
    assert!(tap.contains("\nBail out! "), "{tap}");
    common::prove(&tap);
    common::assert_next_run_sweeps(tmp.path());
}
