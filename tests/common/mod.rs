//! Helpers shared by the end-to-end tests: the project's real images (built on first use),
//! the host, the vmcheck binary, and probes for leftovers (qemu processes, run directories).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmcheck::image::{Catalog, Image, ImageStore};
use vmcheck::machine::host::Host;
use vmcheck::project::Project;
use vmcheck::signal::Cancel;

pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn catalog() -> Catalog {
    let project = Project::discover(&project_root()).expect("the repository is a project");
    Catalog::new(project, ImageStore::from_env())
}

/// The project's image `name`, built if needed (one build at a time in this process).
pub fn image(name: &str) -> Image {
    static BUILDING: Mutex<()> = Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    catalog()
        .resolve(name, &Cancel::new(), false)
        .unwrap_or_else(|e| panic!("image {name}: {e}"))
}

pub async fn host(image: &Image) -> Host {
    Host::detect(&image.kernel(), &catalog().store.dir.join(".cache"))
        .await
        .expect("qemu is installed")
}

/// The vmcheck binary, run in the project, recording into the tests' own outcome store
/// (never the user's).
pub fn vmcheck() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vmcheck"));
    cmd.current_dir(project_root());
    cmd.env("VMCHECK_RESULTS_DB", tests_store());
    cmd
}

/// The outcome store the end-to-end tests' runs record into.
pub fn tests_store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("results.sqlite")
}

/// The durations the store at `path` holds for this project's tests on `os` (all of them).
pub fn durations(path: &Path, os: &str) -> vmcheck::results::durations::Durations {
    let tests: Vec<String> = {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT DISTINCT test FROM attempts").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let store = vmcheck::results::store::Store::open_existing(path)
        .unwrap()
        .expect("the run made the store");
    vmcheck::results::durations::Durations::read(
        &store,
        &project_name(),
        os,
        &tests,
        vmcheck::results::now_ms(),
    )
    .unwrap()
}

/// The project's name in the outcome store (its root directory's name).
pub fn project_name() -> String {
    project_root()
        .canonicalize()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Pids of qemu processes forwarding host port `port`.
pub fn qemu_pids_for_port(port: u16) -> Vec<u32> {
    let needle = format!("hostfwd=tcp:127.0.0.1:{port}-:22");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

pub fn process_alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Wait up to `secs` for `cond`, polling every 50 ms.
pub fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// Run directories that belong to process `pid`.
pub fn run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let base = vmcheck::machine::rundir::base_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{pid}.")))
        })
        .map(|e| e.path())
        .collect()
}

pub fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// The image `image` as seen from a store of its own (a link to it in a temporary directory),
/// so that its snapshots start from nothing and other tests do not share them.
pub fn in_own_store(image: &vmcheck::image::Image) -> (tempfile::TempDir, vmcheck::image::Image) {
    let store = tempfile::tempdir().unwrap();
    let dir = store.path().join(image.dir.file_name().unwrap());
    std::os::unix::fs::symlink(&image.dir, &dir).unwrap();
    let mut own = image.clone();
    own.dir = dir;
    (store, own)
}

/// A one-CPU machine of `image` with its default memory.
pub fn spec(label: &str, image: &Image) -> vmcheck::machine::vm::MachineSpec {
    vmcheck::machine::vm::MachineSpec {
        label: label.into(),
        image: image.clone(),
        memory_mib: None,
        cpus: 1,
        private_net: None,
        isolated: false,
        cold_boot: false,
        layer: None,
        revive: None,
        forward: Vec::new(),
    }
}

/// The host's clock in seconds since the epoch.
pub fn host_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Assert that a guest's `date +%s`, read by a command that ran between the host times
/// `before` and `after` (from [`host_secs`]), is the host's time then, give or take 1 s.
/// The window is measured, not assumed: on a loaded host a command can take seconds.
pub fn assert_clock_within(guest: &str, before: i64, after: i64) {
    let guest: i64 = guest.trim().parse().expect("seconds");
    assert!(
        before - 1 <= guest && guest <= after + 1,
        "guest clock {guest}, host {before}..{after}"
    );
}

/// Run prove on a TAP stream; return its output (asserting it found no parse errors).
pub fn prove(tap: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.tap");
    std::fs::write(&file, tap).unwrap();
    let out = std::process::Command::new("prove")
        .args(["-e", "cat"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("Parse errors"),
        "prove found parse errors:\n{text}\n{tap}"
    );
    (out.status.success(), text)
}

/// A private `TMPDIR` for one vmcheck run of the fault suite: everything the run puts there
/// (run directories, sockets, host-script directories) must be gone when it ends, which
/// [`assert_nothing_left`] checks.
pub fn private_tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmcheck-fault-")
        .tempdir()
        .unwrap()
}

/// After a run with `TMPDIR=tmp`: no file is left below `tmp` (an empty per-user base
/// directory may stay), and no process (qemu, a host script, a child of one) still has
/// `tmp` in its command line or environment.
pub fn assert_nothing_left(tmp: &Path) {
    let needle = tmp.to_string_lossy().into_owned();
    let clean = eventually(10, || {
        let files: Vec<PathBuf> = walk(tmp)
            .into_iter()
            .filter(|p| !p.is_dir() || std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some()))
            .filter(|p| p.parent() != Some(tmp) || !p.is_dir())
            .collect();
        files.is_empty() && processes_mentioning(&needle).is_empty()
    });
    assert!(
        clean,
        "left behind below {needle}: files {:?}, processes {:?}",
        walk(tmp),
        processes_mentioning(&needle)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

/// `pid (comm)` of every process whose command line or environment contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| *p != me)
        .filter(|p| {
            ["cmdline", "environ"].iter().any(|f| {
                std::fs::read(format!("/proc/{p}/{f}"))
                    .is_ok_and(|b| String::from_utf8_lossy(&b).contains(needle))
            })
        })
        // Zombies have no command line: they are already gone.
        .filter(|p| {
            !std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| s.contains(") Z "))
        })
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{p} ({})", comm.trim())
        })
        .collect()
}

/// Every test in `names` has exactly one result in each report given: one TAP line, one
/// JUnit `<testcase>`, one `test-finished` event; and nothing else has one.
pub fn assert_each_test_once(
    tap: &str,
    junit: Option<&Path>,
    events: Option<&Path>,
    names: &[&str],
) {
    let mut in_tap: Vec<String> = tap
        .lines()
        .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
        .filter_map(|l| {
            let rest = l.trim_start_matches("not ").trim_start_matches("ok ");
            rest.split(' ').nth(2).map(String::from)
        })
        .collect();
    in_tap.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(in_tap, want, "TAP results:\n{tap}");
    if let Some(junit) = junit {
        let xml = std::fs::read_to_string(junit).unwrap();
        let mut cases: Vec<String> = xml
            .split("<testcase ")
            .skip(1)
            .map(|c| {
                let attr = |a: &str| {
                    c.split(&format!("{a}=\""))
                        .nth(1)
                        .and_then(|v| v.split('"').next())
                        .unwrap_or("")
                        .to_string()
                };
                format!("{}.{}", attr("classname"), attr("name"))
            })
            .collect();
        cases.sort();
        assert_eq!(cases, want, "JUnit test cases:\n{xml}");
    }
    if let Some(events) = events {
        let stream = vmcheck::results::merge::read(events).unwrap();
        let mut finished: Vec<String> = stream
            .events
            .iter()
            .filter_map(|e| match e {
                vmcheck::events::Event::TestFinished { test, .. } => Some(test.name.clone()),
                _ => None,
            })
            .collect();
        finished.sort();
        assert_eq!(finished, want, "test-finished events");
    }
}

/// A directory of check files holding `text` as `check-faults`.
pub fn check_dir(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("check-faults"), text).unwrap();
    dir
}

/// Run `cmd` (a vmcheck command) to its end in a private TMPDIR, without progress display
/// or input, and check that it leaves nothing behind ([`assert_nothing_left`]).
pub fn output_leaving_nothing(cmd: &mut std::process::Command) -> std::process::Output {
    let tmp = private_tmp();
    let out = cmd
        .env("VMCHECK_PROGRESS", "none")
        .env("TMPDIR", tmp.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_nothing_left(tmp.path());
    out
}

/// qemu processes of runs in the private TMPDIR `tmp`.
pub fn qemus_in(tmp: &Path) -> usize {
    processes_mentioning(&tmp.to_string_lossy())
        .iter()
        .filter(|p| p.contains("(qemu"))
        .count()
}

/// Start `cmd` (a vmcheck run) in the private TMPDIR `tmp` with its output piped, and wait
/// until `machines` of its qemus are up (panics if it ends first). Waits long: booting is
/// slow on a loaded host, and this is a precondition, not a timing.
pub fn spawn_with_machines_up(
    cmd: &mut std::process::Command,
    tmp: &Path,
    machines: usize,
) -> std::process::Child {
    use std::process::Stdio;
    let mut child = cmd
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = eventually(300, || {
        qemus_in(tmp) >= machines || child.try_wait().unwrap().is_some()
    });
    assert!(
        up && child.try_wait().unwrap().is_none(),
        "{machines} machines start"
    );
    child
}

/// After a vmcheck in the private TMPDIR `tmp` was killed: its qemus are gone, and the next
/// vmcheck there (one quick test) sweeps the run directories it could not remove.
pub fn assert_next_run_sweeps(tmp: &Path) {
    assert!(
        eventually(10, || qemus_in(tmp) == 0),
        "qemu dies with vmcheck"
    );
    let quick = check_dir("[TestQuick.testA]\nnondestructive = true\nrun = 'true'\n");
    let next = vmcheck()
        .args(["run", "--test-dir"])
        .arg(quick.path())
        .env("TMPDIR", tmp)
        .output()
        .unwrap();
    assert_eq!(
        next.status.code(),
        Some(vmcheck::exit_codes::OK),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert_nothing_left(tmp);
}

/// `vmcheck vm-run IMAGE`, up and waiting for Enter on its stdin (write a line to it, then
/// wait), and the arguments of the `vmcheck run` line it printed for its machine.
pub fn vm_run(image: &str) -> (std::process::Child, Vec<String>) {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut vm = vmcheck()
        .args(["vm-run", image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(vm.stdout.take().unwrap()).lines();
    let args = lines.find_map(|line| {
        let cmd = line.ok()?;
        let cmd = cmd.strip_prefix("  run tests: vmcheck run ")?;
        Some(cmd.split(' ').map(String::from).collect())
    });
    // What it prints later is read too, so that it never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    match args {
        Some(args) => (vm, args),
        None => {
            let _ = vm.kill();
            let _ = vm.wait();
            panic!("vm-run {image} printed no run line");
        }
    }
}

/// JUnit XML that the project's schema (`test/junit.xsd`) accepts.
pub fn assert_valid_junit(junit: &Path) {
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(project_root().join("test/junit.xsd"))
        .arg(junit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not valid JUnit: {}",
        junit.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throw-away project (`bots/images/`, `test/verify/`) using the real busybox image.
pub fn busybox_project() -> tempfile::TempDir {
    let image = image("busybox");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("bots/images")).unwrap();
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("test/verify")).unwrap();
    std::os::unix::fs::symlink(&image.dir, root.join("images/busybox")).unwrap();
    dir
}

/// The real busybox image under another name, `name`, in `root/images` (a store of its own
/// in `root/store`): a second TEST_OS that boots as fast. Its files are hard links (copies
/// across file systems); its manifest names it, and its directory is named for the
/// manifest's hash, as the store checks.
pub fn busybox_as(root: &Path, name: &str) {
    let image = image("busybox");
    let tmp = root.join("store").join(format!("{name}-new"));
    std::fs::create_dir_all(&tmp).unwrap();
    for entry in std::fs::read_dir(&image.dir).unwrap() {
        let entry = entry.unwrap();
        let to = tmp.join(entry.file_name());
        if entry.file_name() == "manifest.toml" {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let renamed = text.replacen("name = \"busybox\"", &format!("name = \"{name}\""), 1);
            assert_ne!(renamed, text, "the manifest names its image");
            std::fs::write(&to, renamed).unwrap();
        } else if std::fs::hard_link(entry.path(), &to).is_err() {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    let manifest = std::fs::read(tmp.join("manifest.toml")).unwrap();
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&manifest));
    let dir = root.join("store").join(format!("{name}-{hash}"));
    std::fs::rename(&tmp, &dir).unwrap();
    std::os::unix::fs::symlink(&dir, root.join("images").join(name)).unwrap();
}

/// [`busybox_project`] with one check file, `test/verify/NAME`, holding `check`.
pub fn busybox_project_with(name: &str, check: &str) -> tempfile::TempDir {
    let dir = busybox_project();
    std::fs::write(dir.path().join("test/verify").join(name), check).unwrap();
    dir
}

/// A busybox project whose `test/verify/<name>` is the executable check file `text`.
pub fn busybox_project_with_executable(name: &str, text: &str) -> tempfile::TempDir {
    let dir = busybox_project_with(name, text);
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(dir.path().join("test/verify").join(name), mode).unwrap();
    dir
}

/// `vmcheck --project-dir ROOT run`, with the progress display left to the caller.
pub fn vmcheck_run_in(root: &Path) -> std::process::Command {
    let mut cmd = vmcheck();
    cmd.arg("--project-dir")
        .arg(root)
        .arg("run")
        .env_remove("VMCHECK_PROGRESS");
    cmd
}

/// `PATH` with this build's vmcheck first, as after `cargo install`.
pub fn path_with_vmcheck() -> String {
    format!(
        "{}:{}",
        Path::new(env!("CARGO_BIN_EXE_vmcheck"))
            .parent()
            .unwrap()
            .display(),
        std::env::var("PATH").unwrap()
    )
}

/// Assert a run's exit code, showing its TAP and stderr when it differs.
pub fn assert_code(out: &std::process::Output, tap: &str, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{tap}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How many tests `vmcheck run ARGS` would run (the own suites grow: count, do not assume).
pub fn planned(args: &[&str]) -> usize {
    let out = vmcheck()
        .arg("run")
        .args(args)
        .arg("--list")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A directory for `PATH` holding only what the own check files need to list their tests
/// (`sh`, `cat`, `env`, `python3`): no qemu, so nothing can boot.
pub fn bin_without_qemu() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in ["sh", "cat", "env", "python3"] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no {tool}"));
        std::os::unix::fs::symlink(real, dir.path().join(tool)).unwrap();
    }
    dir
}

/// Start `cmd` with piped standard streams; return it and its stderr, line by line.
pub fn spawn_reading_stderr(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
    (child, err)
}

/// Read a `--sit` prompt from `err`: the lines up to and including "Press Enter …".
pub fn sit_prompt(err: &mut impl Iterator<Item = std::io::Result<String>>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = err.next().expect("sit prompt").unwrap();
        let done = line.starts_with("Press Enter");
        lines.push(line);
        if done {
            return lines;
        }
    }
}
