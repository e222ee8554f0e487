//! Benchmark floors: plain QEMU doing the least a vmcheck machine start needs, with exactly
//! the command line vmcheck gives such a machine (the same [`QemuConfig`]), to compare whole
//! `vmcheck vm-run` processes against (`bench/run floors`).
//!
//! `cargo run --release --example qemu_floor -- restore [IMAGE] [N]`: restores IMAGE's
//! (default busybox) booted snapshot of its default size and 1 CPU, the one vmcheck would
//! restore (run `vmcheck vm-run IMAGE -e true` once first so that it exists), N times
//! (default 1): from creating the disk overlay (if the image has a disk; it is backed by the
//! snapshot's disk, as `vm.rs` does) and spawning qemu until QMP says the guest runs (`cont`
//! sent if it is paused after loading, as `vm.rs` resumes restored machines); then qemu is
//! killed.
//!
//! `... -- answer [IMAGE] [N]`: the same restore, until the guest agent waiting in the
//! snapshot (`src/machine/agent.rs`) answers a ping through its port: the least any use of a
//! restored guest costs, its first code run after the restore included (under TCG all of it
//! is translated anew).
//!
//! `... -- cold IMAGE INITRD [N]`: boots IMAGE's kernel (PVH, `-kernel`) with INITRD in place
//! of the image's initramfs, otherwise the same command line, N times: the whole qemu
//! process, from spawning it until it exits (INITRD's `/init` is expected to power off).
//!
//! Prints `IMAGE: ... N runs: median S s (min, max)`, in seconds. The image is not verified
//! and nothing here is timed but qemu (and the overlay): image and snapshot lookups are
//! before the clock starts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use vmcheck::image::{Catalog, Image, ImageStatus, ImageStore};
use vmcheck::machine::agent::Agent;
use vmcheck::machine::host::Host;
use vmcheck::machine::ports::{self, PortKind};
use vmcheck::machine::qemu::QemuConfig;
use vmcheck::machine::qmp::Qmp;
use vmcheck::machine::snapshot::{Found, SnapshotKey};
use vmcheck::machine::spawn::spawn_tied;
use vmcheck::machine::vm;
use vmcheck::project::Project;

const USAGE: &str =
    "usage: qemu_floor restore|answer [IMAGE] [N] | qemu_floor cold IMAGE INITRD [N]";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("restore");
    let name = args.get(1).cloned().unwrap_or_else(|| "busybox".into());
    let (initrd, n) = match mode {
        "restore" | "answer" => (None, args.get(2)),
        "cold" => (Some(PathBuf::from(args.get(2).expect(USAGE))), args.get(3)),
        _ => panic!("{USAGE}"),
    };
    let n: usize = n.map_or(1, |s| s.parse().expect(USAGE));
    let (image, host) = image_and_host(&name).await;
    let memory_mib = image.manifest.boot.memory_mib;
    let mut times = Vec::new();
    let what = match &initrd {
        None => {
            let key = SnapshotKey::new(
                &image,
                memory_mib,
                1,
                host.accel,
                &host.qemu_version,
                false,
                None,
            );
            // Hashes the snapshot's files (once per process), holds its shared lock.
            let snapshot = match tokio::task::spawn_blocking(move || key.find())
                .await
                .unwrap()
            {
                Found::Some(s) => s,
                Found::None => panic!(
                    "no booted snapshot of {name} (run `vmcheck vm-run {name} -e true` first)"
                ),
                Found::Corrupt(_, why) => panic!("the snapshot of {name} is corrupt: {why}"),
            };
            for _ in 0..n {
                let disk = image.disk().map(|_| snapshot.disk());
                let answer = mode == "answer";
                times.push(restore(&host, &image, disk, &snapshot.state(), answer).await);
            }
            if mode == "answer" {
                "plain QEMU restore until the guest agent answers"
            } else {
                "plain QEMU restore until QMP says running"
            }
        }
        Some(initrd) => {
            for _ in 0..n {
                times.push(cold(&host, &image, initrd).await);
            }
            "plain QEMU boot of its kernel with a poweroff initramfs, whole process"
        }
    };
    times.sort_by(f64::total_cmp);
    println!(
        "{name}: {what}, {n} runs: median {:.3} s (min {:.3}, max {:.3})",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
}

/// The project's image `name` as it is built (not verified, not built if missing), and the
/// host facts.
async fn image_and_host(name: &str) -> (Image, Host) {
    let project =
        Project::discover(&std::env::current_dir().unwrap()).expect("run inside the project");
    let store = ImageStore::from_env();
    let catalog = Catalog::new(project, store.clone());
    let image = match catalog.status(name) {
        ImageStatus::Current(image) | ImageStatus::Stale(image) => image,
        _ => panic!("image {name} is not built (vmcheck image build {name})"),
    };
    let host = Host::detect(&image.kernel(), &store.dir.join(".cache"))
        .await
        .expect("host");
    (image, host)
}

/// vmcheck's command line for a one-CPU machine of `image` with its default memory, run in
/// `dir` (the FIFOs of its serial ports made there, as for every machine).
fn config(image: &Image, host: &Host, dir: &Path, ssh_port: u16) -> QemuConfig {
    vm::make_port_fifos(dir).expect("FIFOs");
    let memory_mib = image.manifest.boot.memory_mib;
    vm::machine_config(host, image, memory_mib, 1, dir, ssh_port)
}

/// A run directory for the QMP socket and the overlay.
fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmcheck-floor-")
        .tempdir()
        .expect("temporary directory")
}

/// A qcow2 overlay of `backing` at `overlay`, as `vm.rs` makes them.
async fn create_overlay(host: &Host, backing: &Path, overlay: &Path) {
    let out = tokio::process::Command::new(&host.qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(backing)
        .arg(overlay)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Spawn qemu with `config` as vmcheck does (own process group, dies with us); its console
/// (stdout) is discarded, its stderr piped.
async fn spawn(host: &Host, config: &QemuConfig) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(&host.qemu);
    cmd.args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    spawn_tied(cmd).await.expect("starting qemu")
}

async fn stderr_of(child: &mut tokio::process::Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text).await;
    }
    text
}

/// Seconds from creating the overlay (if any) until the restored guest runs, or (`answer`)
/// until its agent answers.
async fn restore(
    host: &Host,
    image: &Image,
    snapshot_disk: Option<PathBuf>,
    state: &Path,
    answer: bool,
) -> f64 {
    let dir = run_dir();
    let port = ports::lease(PortKind::Tcp).expect("port");
    let mut config = config(image, host, dir.path(), port.port);
    config.incoming = Some(state.to_path_buf());
    let t = Instant::now();
    if let Some(backing) = snapshot_disk {
        let overlay = dir.path().join("overlay.qcow2");
        create_overlay(host, &backing, &overlay).await;
        config.disk = Some(overlay);
    }
    let mut child = spawn(host, &config).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = async {
        let mut qmp = Qmp::connect(config.qmp.as_ref().unwrap(), deadline).await?;
        match qmp.wait_incoming(deadline).await?.as_str() {
            "running" => Ok(()),
            "paused" | "postmigrate" | "prelaunch" => qmp
                .execute("cont", serde_json::json!({}), deadline)
                .await
                .map(drop),
            other => Err(format!("qemu is {other} after loading the state")),
        }?;
        if answer {
            let mut agent = Agent::open(dir.path()).map_err(|e| e.to_string())?;
            agent
                .ping(Duration::from_secs(10))
                .await
                .map_err(|e| format!("{e} (is the snapshot of an image with virtio_console?)"))?;
        }
        Ok::<(), String>(())
    }
    .await;
    let secs = t.elapsed().as_secs_f64();
    let _ = child.start_kill();
    if let Err(why) = resumed {
        let _ = child.wait().await;
        panic!("restoring failed: {why}: {}", stderr_of(&mut child).await);
    }
    let _ = child.wait().await;
    secs
}

/// Seconds the whole qemu process takes to boot the kernel with `initrd` until it exits.
async fn cold(host: &Host, image: &Image, initrd: &Path) -> f64 {
    let dir = run_dir();
    let port = ports::lease(PortKind::Tcp).expect("port");
    let mut config = config(image, host, dir.path(), port.port);
    config.initrd = initrd.to_path_buf();
    if let Some(backing) = image.disk() {
        let overlay = dir.path().join("overlay.qcow2");
        create_overlay(host, &backing, &overlay).await;
        config.disk = Some(overlay);
    }
    let t = Instant::now();
    let mut child = spawn(host, &config).await;
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await;
    let secs = t.elapsed().as_secs_f64();
    match status {
        Ok(Ok(s)) if s.success() => secs,
        other => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!(
                "qemu did not power off cleanly ({other:?}): {}",
                stderr_of(&mut child).await
            )
        }
    }
}
