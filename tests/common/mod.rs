//! Helpers shared by the end-to-end tests: the project's real images (built on first use),
//! the host, the vmcheck binary, and probes for leftovers (qemu processes, run directories).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use vmcheck::image::{Catalog, Image, ImageStore};
use vmcheck::machine::vm::Host;
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

pub fn vmcheck() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vmcheck"));
    cmd.current_dir(project_root());
    cmd
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
        cold_boot: false,
    }
}

/// Assert that a guest's `date +%s` is the host's now, give or take 5 s.
pub fn assert_clock_is_now(guest: &str) {
    let guest: i64 = guest.trim().parse().expect("seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((guest - now).abs() <= 5, "guest clock {guest}, host {now}");
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
