//! End-to-end faults of the machine layer, through `vmcheck run` on real busybox guests: a
//! hostile umask and hostile paths, a guest kernel panic, qemu killed, the host's run
//! directory full. Each checks the verdict names the cause, the run completes with the
//! documented exit code, and no qemu or run directory is left.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use vmcheck::exit_codes;

/// A project in a temporary directory: `images/busybox` links to the built image through
/// the image store `store` (a directory of links, so snapshots are made in it), and
/// `test/verify/check-faults` holds `check`.
struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: PathBuf,
    tmp: PathBuf,
}

impl Project {
    fn new(name: &str, check: &str) -> Project {
        Project::with_images(name, check, &["busybox"])
    }

    fn with_images(name: &str, check: &str, images: &[&str]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("project");
        let store = dir.path().join(name).join("store");
        let tmp = dir.path().join(name).join("tmp");
        for d in [
            root.join("bots/images"),
            root.join("images"),
            root.join("test/verify"),
            store.clone(),
            tmp.clone(),
        ] {
            std::fs::create_dir_all(&d).unwrap();
        }
        for name in images {
            let image = common::image(name);
            let linked = store.join(image.dir.file_name().unwrap());
            std::os::unix::fs::symlink(&image.dir, &linked).unwrap();
            std::os::unix::fs::symlink(&linked, root.join("images").join(name)).unwrap();
        }
        std::fs::write(root.join("test/verify/check-faults"), check).unwrap();
        Project {
            _dir: dir,
            root,
            store,
            tmp,
        }
    }

    /// `vmcheck run ARGS` in this project with `TMPDIR` in it and umask 000.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = common::vmcheck();
        cmd.arg("--project-dir")
            .arg(&self.root)
            .arg("run")
            .args(["--results-db"])
            .arg(self.root.join("outcomes/results.sqlite"))
            .args(args)
            .env("TMPDIR", &self.tmp)
            .env("TEST_OS", "busybox");
        // SAFETY: umask is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0);
                Ok(())
            });
        }
        cmd.output().unwrap()
    }

    /// The run directories of this project's machines (none once vmcheck ended).
    fn run_dirs(&self) -> Vec<PathBuf> {
        let base = self.tmp.join(format!("vmcheck-{}", nix::unistd::getuid()));
        std::fs::read_dir(base)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

/// Every file and directory below `dir` (symlinks not followed; `dir` itself is the
/// test's) whose mode lets group or others in.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    while let Some(p) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.mode() & 0o077 != 0 {
            found.push(format!("{:o} {}", meta.mode() & 0o7777, p.display()));
        }
        if meta.is_dir() {
            todo.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    found
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn everything_created_is_private_under_umask_000_and_hostile_paths_work() {
    // A host script looks at the live machine's files: run directory, console log, QMP
    // socket, overlays, and the host script's own directory.
    let check = r#"
[TestModes.testLive]
host = '''
vm exec machine1 true
# (Another test's machine may be going meanwhile: its files vanish under find.)
bad=$(find "$TMPDIR" ! -type l -perm /077 ! -path "$TMPDIR" 2>/dev/null || true)
test -z "$bad" || { echo "open to others: $bad"; exit 1; }
# This machine's QMP socket is there.
live=
for s in "$TMPDIR"/vmcheck-*/*/qmp.sock; do if test -S "$s"; then live=$s; fi; done
test -n "$live"
'''

[TestModes.testFails]
artifacts = ["/root/collected"]
run = "echo data > /root/collected; exit 1"
"#;
    let p = Project::new("a,b c'd\"e", check);
    let results = p.root.join("results");
    std::fs::create_dir(&results).unwrap();
    std::fs::set_permissions(&results, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (junit, events, artifacts) = (
        results.join("junit.xml"),
        results.join("events.jsonl"),
        results.join("artifacts"),
    );
    let args = [
        "--no-retry-fail",
        "--junit",
        junit.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ];
    // Twice: the first run makes the snapshot (in the hostile store), the second restores it.
    for round in 1..=2 {
        let out = p.run(&args);
        let (tap, err) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(exit_codes::TESTS_FAILED),
            "round {round}\n{tap}\n{err}"
        );
        assert!(tap.contains("ok 1 ") || tap.contains("ok 2 "), "{tap}");
        assert!(
            tap.lines()
                .any(|l| l.starts_with("ok ") && l.contains("TestModes.testLive")),
            "round {round}: {tap}\n{err}"
        );
        assert!(
            tap.lines()
                .any(|l| l.starts_with("not ok ") && l.contains("TestModes.testFails")),
            "{tap}"
        );
        assert!(!err.contains("snapshot"), "no snapshot trouble: {err}");
        assert!(p.run_dirs().is_empty(), "{:?}", p.run_dirs());
    }
    let snapshots = p.store.join("snapshots");
    assert!(
        std::fs::read_dir(&snapshots)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("busybox-")),
        "a snapshot was made"
    );
    let collected: Vec<_> = std::fs::read_dir(&artifacts).unwrap().flatten().collect();
    assert!(!collected.is_empty(), "artifacts were saved");
    for dir in [&results, &p.store, &p.tmp] {
        let open = open_to_others(dir);
        assert!(open.is_empty(), "open to others:\n{}", open.join("\n"));
    }
    let outcomes = p.root.join("outcomes");
    assert!(
        outcomes.join("results.sqlite").is_file(),
        "the run was recorded"
    );
    let mode = std::fs::metadata(&outcomes).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let open = open_to_others(&outcomes);
    assert!(open.is_empty(), "open to others:\n{}", open.join("\n"));
}

/// The qemu processes of a project (their command lines name its `TMPDIR`).
fn qemus_of(p: &Project) -> Vec<u32> {
    let needle = p.tmp.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.starts_with("qemu-system") || cmdline.contains("/qemu-system")
        })
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}

/// Wait until a machine of `p` printed `marker` on its console; returns its qemu's pid.
fn wait_for_console(p: &Project, marker: &str, child: &mut std::process::Child) -> u32 {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while std::time::Instant::now() < until {
        if child.try_wait().unwrap().is_some() {
            let out = String::from_utf8_lossy(
                &std::io::Read::bytes(child.stdout.take().unwrap())
                    .map_while(Result::ok)
                    .collect::<Vec<u8>>(),
            )
            .into_owned();
            panic!("vmcheck ended before {marker}:\n{out}");
        }
        for dir in p.run_dirs() {
            let log = std::fs::read(dir.join("console.log")).unwrap_or_default();
            if String::from_utf8_lossy(&log).contains(marker)
                && let Some(pid) = qemus_of(p).first()
            {
                return *pid;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no machine printed {marker}");
}

/// After a run: no qemu and no run directory of the project left.
fn assert_nothing_left(p: &Project) {
    assert!(
        common::eventually(10, || qemus_of(p).is_empty()),
        "qemu left: {:?}",
        qemus_of(p)
    );
    assert!(p.run_dirs().is_empty(), "run dirs left: {:?}", p.run_dirs());
}

/// The TAP result lines and comments of `test` (its attempts' output).
fn assert_tap(tap: &str, test: &str, result: &str, says: &str) {
    let lines: Vec<&str> = tap.lines().filter(|l| l.contains(test)).collect();
    assert!(
        lines
            .iter()
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.starts_with(result)),
        "{test} is '{result}':\n{tap}"
    );
    assert!(tap.contains(says), "the TAP says '{says}':\n{tap}");
}

#[test]
fn a_guest_kernel_panic_is_named_as_such() {
    let check = r#"
[TestPanic.testPanic]
run = "sleep 1; echo c > /proc/sysrq-trigger; sleep 60"
"#;
    let p = Project::new("panic", check);
    let events = p.root.join("events.jsonl");
    let out = p.run(&["--events", events.to_str().unwrap()]);
    let (tap, err) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INFRASTRUCTURE),
        "{tap}\n{err}"
    );
    let cause = "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash";
    assert_tap(&tap, "TestPanic.testPanic", "not ok", cause);
    assert!(!tap.contains("SSH connection"), "{tap}");
    let events = std::fs::read_to_string(&events).unwrap();
    assert!(events.contains(cause), "{events}");
    assert_nothing_left(&p);
}

/// A machine that dies under a host script's `vm exec` is a machine failure, named and
/// retried, not a failed host script.
#[test]
fn a_machine_that_dies_under_a_host_script_is_named() {
    let check = r#"
[TestHostPanic.testPanic]
host = '''
if [ "$VMCHECK_ATTEMPT" = 1 ]; then vm exec machine1 'sleep 1; echo c > /proc/sysrq-trigger; sleep 60'; fi
vm exec machine1 true
'''
"#;
    let p = Project::new("hostpanic", check);
    let out = p.run(&[]);
    let (tap, err) = text(&out);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{tap}\n{err}");
    let line = tap.lines().find(|l| l.starts_with("ok 1 ")).unwrap();
    assert!(
        line.contains("# machine failed on attempt 1: ")
            && line.contains("the guest kernel panicked: Kernel panic - not syncing: sysrq"),
        "{tap}"
    );
    assert!(!tap.contains("the host script failed"), "{tap}");
    assert_nothing_left(&p);
}

#[test]
fn qemu_killed_mid_test_is_named_with_its_signal_and_retried() {
    let check = r#"
[TestKilled.testKilled]
run = '''
if [ "$VMCHECK_ATTEMPT" = 1 ]; then echo body-started > /dev/console; sleep 120; fi
'''
"#;
    let p = Project::new("killed", check);
    let mut child = spawn_run(&p);
    let qemu = wait_for_console(&p, "body-started", &mut child);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let (tap, err) = text(&out);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{tap}\n{err}");
    assert_tap(
        &tap,
        "TestKilled.testKilled",
        "ok",
        "qemu was killed by signal 9 (SIGKILL)",
    );
    assert!(!tap.contains("SSH connection"), "{tap}");
    // Passed, but not silently: its result line says the machine failed, and why.
    let line = tap.lines().find(|l| l.starts_with("ok 1 ")).unwrap();
    assert!(
        line.contains("TestKilled.testKilled")
            && line.contains("# machine failed on attempt 1: ")
            && line.contains("signal 9"),
        "{tap}"
    );
    assert_nothing_left(&p);
}

/// `vmcheck run` of project `p` on busybox, in its TMPDIR, with its output piped.
fn spawn_run(p: &Project) -> std::process::Child {
    common::vmcheck()
        .arg("--project-dir")
        .arg(&p.root)
        .arg("run")
        .env("TMPDIR", &p.tmp)
        .env("TEST_OS", "busybox")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A small tmpfs mounted on `dir` while it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {} (needs root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    /// Write zeros into `name` until the file system is full.
    fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join(name)).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_host_disk_is_named_and_not_retried() {
    // The guest writes to its disk once the host's TMPDIR (its overlay) is full: qemu pauses
    // it on the write error, and the test times out on a paused machine.
    let check = r#"
[TestDiskFull.testDiskFull]
provision.machine1 = { image = "debian-12" }
timeout = "40s"
run = '''
echo body-started > /dev/console
sleep 4
dd if=/dev/urandom of=/root/big bs=1M count=100 conv=fsync
echo the write went through
'''
"#;
    let p = Project::with_images("full", check, &["busybox", "debian-12"]);
    let tmpfs = Tmpfs::mount(&p.tmp, "64m");
    let mut child = spawn_run(&p);
    wait_for_console(&p, "body-started", &mut child);
    tmpfs.fill("filler");
    let full = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let (tap, err) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(exit_codes::INFRASTRUCTURE),
        "{tap}\n{err}"
    );
    assert_tap(
        &tap,
        "TestDiskFull.testDiskFull",
        "not ok",
        "the host's disk is full: no space left for",
    );
    let tmp = p.tmp.to_string_lossy().into_owned();
    assert!(tap.contains(&tmp), "names the path: {tap}");
    assert!(!tap.contains("attempt 2"), "not retried: {tap}");
    // One attempt: the test's 40 s timeout, then its verdict (not 3 × a lost connection).
    assert!(
        full.elapsed() < std::time::Duration::from_secs(120),
        "took {:?} after the disk filled",
        full.elapsed()
    );
    assert_nothing_left(&p);
    drop(tmpfs);
}

/// A memory cgroup below this process's own, limited to `mib` MiB, removed on drop (the
/// tests run as root, as CI does; cgroup v1 or v2).
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    fn new(mib: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("vmcheck-oom-{}", std::process::id());
        let v1 = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
        let (dir, limit_file) = match v1 {
            Some(path) => (
                PathBuf::from(format!("/sys/fs/cgroup/memory{path}")).join(&name),
                "memory.limit_in_bytes",
            ),
            None => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
                (
                    PathBuf::from(format!("/sys/fs/cgroup{path}")).join(&name),
                    "memory.max",
                )
            }
        };
        std::fs::create_dir(&dir).expect("create a memory cgroup (the tests run as root)");
        std::fs::write(dir.join(limit_file), format!("{}", mib << 20)).unwrap();
        MemoryCgroup(dir)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once its processes are gone.
        common::eventually(10, || std::fs::remove_dir(&self.0).is_ok());
    }
}

/// qemu killed by the kernel's out-of-memory killer (the machine's memory cgroup is too
/// small for what the guest writes to its RAM disk) is named as such, from the kernel log,
/// not as a lost connection nor a bare SIGKILL; the retry on a fresh machine passes.
#[test]
fn the_out_of_memory_killer_is_named() {
    let check = r#"
[TestOom.testFillsRam]
run = '''
if [ "$VMCHECK_ATTEMPT" = 1 ]; then
    mkdir -p /mnt/fill && mount -t tmpfs -o size=300m tmpfs /mnt/fill
    dd if=/dev/zero of=/mnt/fill/zeros bs=1M count=280
fi
'''
"#;
    let p = Project::new("oom", check);
    let cgroup = MemoryCgroup::new(260);
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cgroup.0)
        .arg(env!("CARGO_BIN_EXE_vmcheck"))
        .arg("--project-dir")
        .arg(&p.root)
        .arg("run")
        .env("TMPDIR", &p.tmp)
        .env("TEST_OS", "busybox")
        .env("VMCHECK_PROGRESS", "none")
        .output()
        .unwrap();
    let (tap, err) = text(&out);
    assert_eq!(out.status.code(), Some(exit_codes::OK), "{tap}\n{err}");
    let line = tap.lines().find(|l| l.starts_with("ok 1 ")).unwrap();
    assert!(
        line.contains("# machine failed on attempt 1: ")
            && line.contains("the host ran out of memory: the kernel killed qemu (")
            && line.contains("Killed process"),
        "{tap}"
    );
    assert!(!tap.contains("SSH connection"), "{tap}");
    assert_nothing_left(&p);
    drop(cgroup);
}
