//! Faults of one attempt, end to end on real busybox machines: hostile artifacts, huge and
//! binary output, a SIGKILLed vmcheck with a host script's children running, a control
//! client that never writes, `--sit` on a machine that died. Each checks what the user
//! gets and that nothing is left behind.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmcheck::exit_codes;

/// A throw-away project with the real busybox image and one check file.
fn project(check: &str) -> tempfile::TempDir {
    common::busybox_project_with("check-fault", check)
}

fn vmcheck_in(root: &Path) -> Command {
    let mut cmd = common::vmcheck_run_in(root);
    cmd.args(["--progress", "none"]);
    cmd
}

/// Wait for `child` at most `secs`; kill it (and fail) if it takes longer.
fn wait_within(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs}s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file and directory below `dir` (not following links).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A failing test leaves a setuid file, a 0777 directory, a symlink to /etc/shadow, a name
/// with a newline and a declared path with `..`: the host gets private plain data only.
#[test]
fn hostile_artifacts_land_as_private_plain_data() {
    let project = project(
        r#"
[TestHostile.testArtifacts]
artifacts = ["/var/tmp/art", "/var/tmp/art/../../../etc/passwd"]
run = '''
mkdir -p /var/tmp/art/open
chmod 0777 /var/tmp/art/open
echo payload > /var/tmp/art/open/suid
chmod 4777 /var/tmp/art/open/suid
ln -s /etc/shadow /var/tmp/art/shadow
ln -s ../../.. /var/tmp/art/up
echo nl > "/var/tmp/art/new
line"
exit 1
'''
"#,
    );
    let root = project.path();
    let out = vmcheck_in(root).args(["--no-retry-fail"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(exit_codes::TESTS_FAILED),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let artifacts = root.join("vmcheck-results/artifacts");
    let attempt = artifacts.join("TestHostile.testArtifacts/attempt-1");
    let files = attempt.join("machine1/files");
    let suid = files.join("var/tmp/art/open/suid");
    assert_eq!(std::fs::read_to_string(&suid).unwrap(), "payload\n");
    let me = nix::unistd::getuid().as_raw();
    for p in walk(&artifacts) {
        let m = p.symlink_metadata().unwrap();
        assert!(m.is_dir() || m.is_file(), "not plain data: {}", p.display());
        assert_eq!(m.uid(), me, "owned by the invoking user: {}", p.display());
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            m.permissions().mode() & 0o7777,
            want,
            "private mode: {}",
            p.display()
        );
    }
    assert!(files.join("var/tmp/art/new\nline").is_file());
    let listed = std::fs::read_to_string(attempt.join("machine1/files.txt")).unwrap();
    assert!(
        listed.contains("symlink var/tmp/art/shadow -> /etc/shadow"),
        "{listed}"
    );
    assert!(
        listed.contains("symlink var/tmp/art/up -> ../../.."),
        "{listed}"
    );
    // Nothing of the guest's /etc outside files/ (the `..` path is refused or confined).
    for p in walk(root) {
        if p.ends_with("passwd") {
            assert!(
                p.starts_with(&files),
                "outside the directory: {}",
                p.display()
            );
        }
    }
}

/// Peak resident memory (VmHWM, KiB) of `pid` while it runs, sampled until it exits.
fn peak_rss(child: &mut Child, secs: u64) -> (u64, std::process::ExitStatus) {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            for l in status.lines() {
                if let Some(v) = l.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap();
                    peak = peak.max(kib);
                }
            }
        }
        if let Some(s) = child.try_wait().unwrap() {
            return (peak, s);
        }
        assert!(Instant::now() < end, "still running after {secs}s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// 200 MB of output from a host script and 30 MB from the guest (SSH under TCG moves
/// about 1 MB/s), some of it binary: vmcheck's memory stays bounded, the events file small,
/// the cut is stated, and TAP, JUnit and events stay valid.
#[test]
fn huge_and_binary_output_stays_bounded() {
    let project = project(
        r#"
[TestHuge.testGuest]
run = '''
printf 'binary: \000\033[31mred\033[0m \377\376 \r\n'
head -c 30000000 /dev/zero | tr '\0' 'y' | fold -w 100
printf '\nlast words, no final newline'
exit 1
'''

[TestHuge.testHost]
host = '''
printf 'binary: \000\033[31mred\033[0m \377\376 \r\n'
head -c 200000000 /dev/zero | tr '\0' 'y' | fold -w 100
printf '\nhost: last words, no final newline'
exit 1
'''
"#,
    );
    let root = project.path();
    let events = root.join("events.jsonl");
    let junit = root.join("junit.xml");
    let mut child = vmcheck_in(root)
        .args(["--no-retry-fail", "--events"])
        .arg(&events)
        .arg("--junit")
        .arg(&junit)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let tap = std::thread::spawn(move || {
        let mut s = Vec::new();
        stdout.read_to_end(&mut s).unwrap();
        s
    });
    let (peak_kib, status) = peak_rss(&mut child, 600);
    let tap = String::from_utf8(tap.join().unwrap()).expect("TAP is UTF-8");
    assert_eq!(
        status.code(),
        Some(exit_codes::TESTS_FAILED),
        "{tap}\n{}",
        std::fs::read_to_string(root.join("stderr")).unwrap()
    );
    eprintln!("peak RSS of vmcheck: {} MiB", peak_kib / 1024);
    assert!(peak_kib < 150 * 1024, "peak RSS {peak_kib} KiB");

    for (test, size) in [
        ("TestHuge.testGuest", 30_000_000),
        ("TestHuge.testHost", 200_000_000),
    ] {
        let output = root.join(format!(
            "vmcheck-results/artifacts/{test}/attempt-1/output.txt"
        ));
        let whole = std::fs::metadata(&output).unwrap().len();
        assert!(whole > size, "the whole output is kept: {whole}");
        assert!(
            tap.contains(&format!(
                "of output cut; the whole output is in {}]",
                output.display()
            )),
            "the cut is stated: {}",
            &tap[tap.len().saturating_sub(3000)..]
        );
    }
    assert!(tap.contains("# last words, no final newline\n# vmcheck: the test failed in machine1"));
    assert!(
        tap.contains("# host: last words, no final newline\n# vmcheck: the host script failed")
    );
    // Every line of captured output is a comment: nothing forges a result.
    for l in tap.lines() {
        assert!(
            l.is_empty()
                || l.starts_with('#')
                || l.starts_with("ok ")
                || l.starts_with("not ok ")
                || l.starts_with("1.."),
            "{l:?}"
        );
    }
    let prove = Command::new("prove")
        .args(["-e", "cat"])
        .arg({
            let f = root.join("run.tap");
            std::fs::write(&f, &tap).unwrap();
            f
        })
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&prove.stdout).contains("Parse errors"),
        "{prove:?}"
    );

    let size = std::fs::metadata(&events).unwrap().len();
    assert!(size < 1_000_000, "events file {size} bytes");
    let text = std::fs::read_to_string(&events).unwrap();
    for l in text.lines() {
        serde_json::from_str::<serde_json::Value>(l).expect("each event is JSON");
    }
    assert_eq!(
        text.matches("last words, no final newline").count(),
        2,
        "each output is in the events once"
    );
    let merged = common::vmcheck()
        .arg("merge")
        .arg(&events)
        .output()
        .unwrap();
    let merged_tap = String::from_utf8_lossy(&merged.stdout);
    assert!(
        merged_tap.contains("# last words, no final newline"),
        "merge rebuilds the output: {merged_tap}"
    );
    common::assert_valid_junit(&junit);
}

/// Pids listed (one a line) in `file`.
fn pids(file: &Path) -> Vec<u32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// SIGKILL of vmcheck while a host script's background children run: the next vmcheck
/// kills them and removes the script's directory.
#[test]
fn host_script_children_do_not_outlive_a_killed_vmcheck() {
    let project = project(
        r#"
[TestHost.testChildren]
host = '''
sleep 1000 & echo $! >> "$FAULT_DIR/pids"
sleep 1000 & echo $! >> "$FAULT_DIR/pids"
echo $$ >> "$FAULT_DIR/pids"
echo "$VMCHECK_CONTROL" > "$FAULT_DIR/control"
sleep 1000
'''

[TestHost.testQuick]
run = "true"
"#,
    );
    let root = project.path();
    let fault = tempfile::tempdir().unwrap();
    let mut child = vmcheck_in(root)
        .arg("--exact")
        .arg("TestHost.testChildren")
        .env("FAULT_DIR", fault.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listed = fault.path().join("pids");
    assert!(
        common::eventually(120, || pids(&listed).len() == 3),
        "the host script started"
    );
    let script_dir = PathBuf::from(
        std::fs::read_to_string(fault.path().join("control"))
            .unwrap()
            .trim(),
    )
    .parent()
    .unwrap()
    .to_path_buf();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    // Everything the script started dies with vmcheck, at once.
    for pid in pids(&listed) {
        assert!(
            common::eventually(5, || !common::process_alive(pid)),
            "host script process {pid} left running"
        );
    }
    // The next vmcheck that starts a machine sweeps the directory the killed one left.
    let out = vmcheck_in(root)
        .args(["--exact", "TestHost.testQuick"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{out:?}");
    assert!(!script_dir.exists(), "{} left", script_dir.display());
    assert!(common::run_dirs_of(child.id()).is_empty());
}

/// A client that connects to the control socket and never writes freezes nothing: other
/// `vm` requests are answered and the script ends in time.
#[test]
fn a_silent_control_client_blocks_nothing() {
    let project = project(
        r#"
[TestHost.testSilentClient]
timeout = "60s"
host = '''
python3 -c 'import os, socket, time
s = socket.socket(socket.AF_UNIX)
s.connect(os.environ["VMCHECK_CONTROL"])
time.sleep(1000)' &
sleep 1
vm exec machine1 echo answered
'''
"#,
    );
    let root = project.path();
    let mut child = vmcheck_in(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Boot (under load) plus a few seconds, well below the test's 60 s timeout.
    let status = wait_within(&mut child, 50, "vmcheck with a silent control client");
    let mut tap = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut tap)
        .unwrap();
    assert_eq!(status.code(), Some(exit_codes::OK), "{tap}");
}

/// `--sit` on a machine that died: said once per attempt, with no ssh line and no prompt.
#[test]
fn sit_on_a_dead_machine_offers_no_ssh_line() {
    let project = project(
        r#"
[TestSit.testMachineDies]
run = '''
poweroff -f
sleep 30
'''
"#,
    );
    let root = project.path();
    let mut child = vmcheck_in(root)
        .arg("--sit")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(err)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // Standard input stays open: a prompt would wait for ever.
    let status = wait_within(&mut child, 300, "vmcheck --sit on a dead machine");
    let lines = lines.join().unwrap();
    let text = lines.join("\n");
    assert_eq!(status.code(), Some(exit_codes::INFRASTRUCTURE), "{text}");
    assert!(!text.contains("ssh -F"), "{text}");
    assert!(!text.contains("Press Enter"), "{text}");
    let gone: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("its machine machine1 is gone"))
        .collect();
    assert_eq!(gone.len(), 3, "once per attempt: {text}");
    assert!(
        gone.iter().all(|l| l.contains("nothing to sit on")),
        "{text}"
    );
}

/// A `vm exec` answer is bounded: a command printing more than 16 MiB gives the script the
/// first 16 MiB and a note on stderr saying how much was cut, and vmcheck's memory stays
/// bounded (the answer travels as one JSON message).
#[test]
fn a_huge_vm_exec_answer_is_cut_and_says_so() {
    let project = project(
        r#"
[TestHost.testHugeAnswer]
host = '''
n=$(vm exec machine1 'head -c 17825792 /dev/zero' 2> "$VMCHECK_RUN_DIR/err" | wc -c)
test "$n" -eq 16777216
grep -q "vmcheck: 1048576 bytes of the command's stdout cut" "$VMCHECK_RUN_DIR/err"
'''
"#,
    );
    let out = vmcheck_in(project.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let tap = String::from_utf8_lossy(&out.stdout);
    common::assert_code(&out, &tap, exit_codes::OK);
}
