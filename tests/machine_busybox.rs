//! End-to-end: the machine layer against real busybox guests under QEMU.

mod common;

use std::time::Duration;
use vmcheck::machine::qemu::PrivateNet;
use vmcheck::machine::ssh::ExitStatus;
use vmcheck::machine::switch::Switch;
use vmcheck::machine::vm::{MachineError, MachineSpec, VirtualMachine};
use vmcheck::signal::Cancel;

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);

use common::spec;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_execute_files_timeout_reboot_kill() {
    let image = common::image("busybox");
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    let mut m = VirtualMachine::start(&host, spec("e2e-life", &image))
        .await
        .unwrap();
    let boot_id = m.wait_boot(BOOT, &cancel).await.unwrap();
    assert_eq!(boot_id.len(), 36, "{boot_id}");

    // execute: output, stderr and exit codes
    let done = m
        .shell()
        .execute("echo hello; echo oops >&2; exit 7", CMD)
        .await
        .unwrap();
    assert_eq!(done.status, ExitStatus::Code(7));
    assert_eq!(done.stdout_text(), "hello\n");
    assert_eq!(String::from_utf8_lossy(&done.output.stderr), "oops\n");
    let done = m.shell().execute("id -u", CMD).await.unwrap();
    assert!(done.status.success());
    assert_eq!(done.stdout_text().trim(), "0");

    // upload / download round trip of binary data, permissions kept
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob");
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o750)).unwrap();
    m.shell()
        .upload(&local, "/var/tmp/sub dir/blob")
        .await
        .unwrap();
    let done = m
        .shell()
        .execute("stat -c %a '/var/tmp/sub dir/blob'", CMD)
        .await
        .unwrap();
    assert_eq!(done.stdout_text().trim(), "750");
    let back = dir.path().join("back");
    m.shell()
        .download("/var/tmp/sub dir/blob", &back)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let err = m.shell().download("/nonexistent", &back).await.unwrap_err();
    assert!(
        err.to_string().contains("downloading /nonexistent failed"),
        "{err}"
    );

    // a hanging command times out, and everything it started is killed
    times_out_and_leaves_nothing(&m).await;

    // reboot: a new boot id, and the connection works afterwards
    let new_id = m.reboot(BOOT, &cancel).await.unwrap();
    assert_ne!(new_id, boot_id);
    let done = m
        .shell()
        .execute("cat /proc/sys/kernel/random/boot_id", CMD)
        .await
        .unwrap();
    assert_eq!(done.stdout_text().trim(), new_id);

    // kill: no process, no run directory, port free again
    let pid = m.pid().unwrap();
    let port = m.ssh_port();
    let run_dir = m.run_dir().to_path_buf();
    assert!(run_dir.join("console.log").exists());
    m.kill().await;
    assert!(!common::process_alive(pid), "qemu {pid} still runs");
    assert!(common::qemu_pids_for_port(port).is_empty());
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

async fn ping(from: &VirtualMachine, to: &str, count: u32) -> vmcheck::machine::vm::Completed {
    let command = format!("ping -c {count} -W 2 {to}");
    from.shell().execute(&command, CMD).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_on_a_private_network_one_booted_one_restored() {
    // In a store of its own: the first machine boots and saves a snapshot with the second
    // NIC, the second is restored from it (onto its own sockets to the switch) and must
    // still get its own address.
    let (_store, image) = common::in_own_store(&common::image("busybox"));
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    // A directory with a comma in its name: qemu's option syntax must keep the path whole.
    let net_dir = tempfile::Builder::new().prefix("net,").tempdir().unwrap();
    let switch = Switch::start(net_dir.path(), 2, 1).unwrap();
    let mut machines = Vec::new();
    let mut boot_ids = Vec::new();
    for n in 1..=2 {
        let mut s = spec(&format!("e2e-pair{n}"), &image);
        let port = switch.port(n - 1);
        s.private_net = Some(PrivateNet {
            socket: port.machine.clone(),
            switch: port.switch.clone(),
            mac: format!("52:54:01:00:00:0{n}"),
        });
        let mut m = VirtualMachine::start(&host, s).await.unwrap();
        boot_ids.push(m.wait_boot(BOOT, &cancel).await.unwrap());
        assert_eq!(m.restored(), n == 2, "machine {n}");
        machines.push(m);
    }
    let [a, b] = &machines[..] else {
        unreachable!()
    };
    assert_ne!(a.ssh_port(), b.ssh_port());
    assert_ne!(boot_ids[0], boot_ids[1]);
    for (n, m, ip) in [(1, a, "10.111.0.1"), (2, b, "10.111.0.2")] {
        let done = m
            .shell()
            .execute(
                &format!(
                    "cat /sys/class/net/eth1/address && ip link set eth1 up && ip addr add {ip}/24 dev eth1"
                ),
                CMD,
            )
            .await
            .unwrap();
        assert!(done.status.success(), "{:?}", done.output);
        assert_eq!(done.stdout_text().trim(), format!("52:54:01:00:00:0{n}"));
    }
    for (from, to) in [(a, "10.111.0.2"), (b, "10.111.0.1")] {
        let done = ping(from, to, 2).await;
        assert!(done.status.success(), "ping failed: {}", done.stdout_text());
    }
    // The switch between them: a block cuts them apart, a heal joins them again.
    switch.update(0, 1, |l| l.blocked = true);
    assert!(!ping(a, "10.111.0.2", 1).await.status.success());
    assert!(switch.counts(0, 1).blocked > 0);
    switch.heal();
    assert!(ping(a, "10.111.0.2", 1).await.status.success());
    let pids: Vec<u32> = machines.iter().filter_map(|m| m.pid()).collect();
    for m in machines {
        m.kill().await;
    }
    assert!(pids.iter().all(|p| !common::process_alive(*p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_panics_ends_qemu_with_the_console_tail() {
    let mut image = common::image("busybox");
    // No init to run: the kernel panics, pvpanic tells qemu, qemu exits.
    image.manifest.boot.cmdline = "rdinit=/vmcheck-none init=/vmcheck-none".into();
    let host = common::host(&image).await;
    let mut m = VirtualMachine::start(&host, spec("e2e-panic", &image))
        .await
        .unwrap();
    let err = m.wait_boot(BOOT, &Cancel::new()).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, MachineError::QemuExited { .. }), "{text}");
    assert!(
        text.contains("the guest kernel panicked: Kernel panic - not syncing: "),
        "{text}"
    );
    let dir = m.run_dir().to_path_buf();
    m.kill().await;
    assert!(!dir.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boot_timeout_reports_the_console_and_cleans_up() {
    let image = common::image("busybox");
    let host = common::host(&image).await;
    // A restore could beat the deadline: this is about booting.
    let slow = MachineSpec {
        cold_boot: true,
        ..spec("e2e-slow", &image)
    };
    let mut m = VirtualMachine::start(&host, slow).await.unwrap();
    let pid = m.pid().unwrap();
    let err = m
        .wait_boot(Duration::from_millis(500), &Cancel::new())
        .await
        .unwrap_err();
    assert!(matches!(err, MachineError::BootTimeout { .. }), "{err}");
    assert!(err.to_string().contains("console tail"), "{err}");
    m.kill().await;
    assert!(!common::process_alive(pid));
}

/// The snapshots published in `dir` (not the hidden lock and stale markers).
/// A command that hangs times out after 2 s with its output so far, and nothing it started
/// keeps running.
async fn times_out_and_leaves_nothing(m: &VirtualMachine) {
    let started = std::time::Instant::now();
    let err = m
        .shell()
        .execute(
            "echo started; sleep 1001 & sleep 1002; echo never",
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15));
    match &err {
        MachineError::CommandTimeout { output, after, .. } => {
            assert_eq!(*after, Duration::from_secs(2));
            assert_eq!(String::from_utf8_lossy(&output.stdout), "started\n");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert_eq!(
        run(m, "ps -o args | grep -c '^sleep 100[12]' || true").await,
        "0",
        "the timed-out command's processes survived"
    );
}

fn snapshot_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

async fn run(m: &VirtualMachine, cmd: &str) -> String {
    succeeded(cmd, m.shell().execute(cmd, CMD).await)
}

/// The trimmed stdout of `cmd`, which must have run and succeeded.
fn succeeded(cmd: &str, done: Result<vmcheck::machine::vm::Completed, MachineError>) -> String {
    let done = done.unwrap();
    assert!(done.status.success(), "{cmd}: {:?}", done.output);
    done.stdout_text().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_start_from_a_booted_snapshot_with_their_own_clock_and_identity() {
    let (store, image) = common::in_own_store(&common::image("busybox"));
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    let snapshots = store.path().join("snapshots");

    // The first machine boots, and saves the snapshot once it is ready.
    let mut first = VirtualMachine::start(&host, spec("e2e-snap-1", &image))
        .await
        .unwrap();
    let first_id = first.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(!first.restored());
    let saved = snapshot_names(&snapshots);
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert!(saved[0].starts_with("busybox-256m1c-"), "{saved:?}");
    let snapshot = snapshots.join(&saved[0]);
    assert!(snapshot.join("state.mig").is_file());
    // The machine that was saved goes on working.
    assert_eq!(run(&first, "echo still here").await, "still here");

    // Later machines are restored: already booted, each with its own boot id and random
    // numbers, and the clock of now rather than of the snapshot.
    let mut restored = Vec::new();
    for label in ["e2e-snap-2", "e2e-snap-3"] {
        let mut m = VirtualMachine::start(&host, spec(label, &image))
            .await
            .unwrap();
        let id = m.wait_boot(BOOT, &cancel).await.unwrap();
        assert!(m.restored(), "{label} was restored");
        assert_ne!(id, first_id);
        restored.push((m, id));
    }
    assert_ne!(restored[0].1, restored[1].1, "boot ids of their own");
    let random = "head -c 16 /dev/urandom | od -An -tx1";
    assert_ne!(
        run(&restored[0].0, random).await,
        run(&restored[1].0, random).await
    );
    for (m, _) in &restored {
        let before = common::host_secs();
        let guest = run(m, "date +%s").await;
        common::assert_clock_within(&guest, before, common::host_secs());
    }

    // A restored machine reboots for real: a cold boot on its own overlay, a new boot id.
    let (mut m, id) = restored.remove(0);
    let rebooted = m.reboot(BOOT, &cancel).await.unwrap();
    assert_ne!(rebooted, id);
    assert!(!m.restored());
    assert_eq!(run(&m, "echo back").await, "back");
    m.kill().await;

    // --cold-boot boots even though there is a snapshot.
    let cold = MachineSpec {
        cold_boot: true,
        ..spec("e2e-snap-cold", &image)
    };
    let mut c = VirtualMachine::start(&host, cold).await.unwrap();
    c.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(!c.restored());
    c.kill().await;

    // A snapshot whose saved state changed by one byte is caught before use: one line, a
    // cold boot. A restored machine still uses it, so it is kept (no longer found) ...
    let state = snapshot.join("state.mig");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut bytes = std::fs::read(&state).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&state, &bytes).unwrap();
    let mut broken = VirtualMachine::start(&host, spec("e2e-snap-broken", &image))
        .await
        .unwrap();
    broken.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(!broken.restored());
    assert!(state.exists(), "kept while a restored machine uses it");
    assert_eq!(run(&restored[0].0, "echo in use").await, "in use");
    assert_eq!(run(&broken, "echo booted").await, "booted");

    let pids: Vec<u32> = [&first, &broken]
        .into_iter()
        .chain(restored.iter().map(|(m, _)| m))
        .filter_map(|m| m.pid())
        .collect();
    first.kill().await;
    broken.kill().await;
    for (m, _) in restored {
        m.kill().await;
    }
    assert!(pids.iter().all(|p| !common::process_alive(*p)));
    // ... and removed by the next machine once nothing uses it; that machine saves a new one.
    let mut again = VirtualMachine::start(&host, spec("e2e-snap-again", &image))
        .await
        .unwrap();
    again.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(!again.restored());
    let fresh = std::fs::read(&state).unwrap_or_default();
    assert_ne!(
        fresh, bytes,
        "the corrupt snapshot was removed and made anew"
    );
    again.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_is_installed_once_and_restored_with_its_snapshot() {
    let (store, image) = common::in_own_store(&common::image("busybox"));
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    let files = tempfile::tempdir().unwrap();
    let payload = files.path().join("payload");
    std::fs::write(&payload, "from the host\n").unwrap();
    let layer = |script: &str| {
        std::sync::Arc::new(vmcheck::machine::layer::Layer {
            key: "deps-0123456789abcdef".into(),
            files: vec![(payload.clone(), "/opt/layer/payload".into())],
            script: script.into(),
            timeout: Duration::from_secs(60),
        })
    };
    let with = |label: &str, layer| MachineSpec {
        layer: Some(layer),
        ..spec(label, &image)
    };
    // The first machine boots, installs the layer (the script counts its runs), saves it.
    let installing = layer("cat /opt/layer/payload >> /opt/layer/installed");
    let mut first = VirtualMachine::start(&host, with("e2e-layer-1", installing.clone()))
        .await
        .unwrap();
    first.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(!first.restored());
    assert_eq!(
        run(&first, "cat /opt/layer/installed").await,
        "from the host"
    );
    let names = snapshot_names(&store.path().join("snapshots"));
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with("busybox+deps-0123456789abcdef-256m1c-"),
        "{names:?}"
    );
    // The next machine with the layer is restored with it in place: the script did not run
    // again.
    let mut second = VirtualMachine::start(&host, with("e2e-layer-2", installing))
        .await
        .unwrap();
    second.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(second.restored());
    assert_eq!(
        run(&second, "cat /opt/layer/installed").await,
        "from the host"
    );
    // A machine without it does not have it (and is not restored from the layer's snapshot).
    let mut plain = VirtualMachine::start(&host, spec("e2e-layer-plain", &image))
        .await
        .unwrap();
    plain.wait_boot(BOOT, &cancel).await.unwrap();
    assert_eq!(
        run(&plain, "test -e /opt/layer && echo yes || echo no").await,
        "no"
    );
    // A layer whose script fails fails the boot, naming the layer and the script's output.
    let failing = std::sync::Arc::new(vmcheck::machine::layer::Layer {
        key: "deps-fedcba9876543210".into(),
        files: vec![],
        script: "echo 'E: cannot install frob' >&2; exit 100".into(),
        timeout: Duration::from_secs(60),
    });
    let mut bad = VirtualMachine::start(&host, with("e2e-layer-bad", failing))
        .await
        .unwrap();
    let err = bad.wait_boot(BOOT, &cancel).await.unwrap_err().to_string();
    assert!(
        err.contains("installing layer deps-fedcba9876543210: the script failed")
            && err.contains("E: cannot install frob"),
        "{err}"
    );
    for m in [first, second, plain, bad] {
        m.kill().await;
    }
}

/// The guest agent's process, killed over SSH (a pattern that does not match itself).
const KILL_AGENT: &str = "for p in /proc/[0-9]*; do grep -q 'org[.]vmcheck[.]agent' $p/cmdline 2>/dev/null && kill -9 ${p#/proc/}; done; true";

/// Run `cmd` over SSH whatever the shell would choose (a command with stdin never goes to
/// the agent).
async fn over_ssh(m: &VirtualMachine, cmd: &str) -> String {
    let req = vmcheck::machine::vm::Exec {
        stdin: Some(b""),
        ..vmcheck::machine::vm::Exec::new(cmd, CMD)
    };
    succeeded(cmd, m.shell().run(req).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_machines_answer_through_the_guest_agent_and_fall_back_to_ssh() {
    let (_store, image) = common::in_own_store(&common::image("busybox"));
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    // The first machine boots and saves the snapshot, with the agent waiting in it.
    let mut first = VirtualMachine::start(&host, spec("e2e-agent-1", &image))
        .await
        .unwrap();
    first.wait_boot(BOOT, &cancel).await.unwrap();
    first.kill().await;

    let mut m = VirtualMachine::start(&host, spec("e2e-agent-2", &image))
        .await
        .unwrap();
    m.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(m.restored());
    let steps: Vec<&str> = m.phases().iter().map(|(step, _)| *step).collect();
    assert!(
        !steps.contains(&"ssh connected"),
        "restored without connecting over SSH: {steps:?}"
    );
    // vmcheck's own commands come through the agent: not an SSH session ...
    assert_eq!(run(&m, "echo ${SSH_CONNECTION-none}").await, "none");
    // ... what users and tests run comes over SSH, as on a booted machine.
    let user = vmcheck::machine::vm::Exec::new("echo ${SSH_CONNECTION-none}", CMD);
    let done = m.shell().run(user).await.unwrap();
    assert_ne!(done.stdout_text().trim(), "none");

    // Exactly the bytes, stdout and stderr apart, and the status.
    let done = m
        .shell()
        .execute(
            "printf 'a\\0b\\n\\nc'; printf 'x\\ny' >&2; printf '\\nv1 1\\n'; exit 5",
            CMD,
        )
        .await
        .unwrap();
    assert_eq!(done.status, ExitStatus::Code(5));
    assert_eq!(done.output.stdout, b"a\0b\n\nc\nv1 1\n");
    assert_eq!(done.output.stderr, b"x\ny");
    // A MiB of random bytes, as the guest's own sha256sum sees them.
    let sum = run(
        &m,
        "head -c 1048576 /dev/urandom >/tmp/blob && sha256sum /tmp/blob",
    )
    .await;
    let done = m.shell().execute("cat /tmp/blob", CMD).await.unwrap();
    use sha2::Digest;
    let mine = hex::encode(sha2::Sha256::digest(&done.output.stdout));
    assert_eq!(done.output.stdout.len(), 1 << 20);
    assert_eq!(sum.split_whitespace().next(), Some(mine.as_str()));
    // A command of several lines, quotes and backslashes.
    assert_eq!(
        run(&m, "a='it'\\''s'\nb=\"\\\\n\"\necho \"$a $b\"").await,
        "it's \\n"
    );

    // A conversation (the restore step's kind, over SSH for snapshots without the agent):
    // a line without end is an error, not memory without end.
    let mut talk = m
        .shell()
        .converse("head -c 300000 /dev/zero | tr '\\0' x; sleep 5")
        .await
        .unwrap();
    let err = talk.read_line().await.unwrap_err();
    assert!(err.to_string().contains("more than 65536 bytes"), "{err}");

    // A command that outlives its timeout: killed, its output so far kept, and the agent
    // (whose answer may still come) no longer used.
    times_out_and_leaves_nothing(&m).await;
    assert_ne!(run(&m, "echo ${SSH_CONNECTION-none}").await, "none");
    m.kill().await;

    // A test that kills the agent costs the next command a moment, not its answer.
    let mut m = VirtualMachine::start(&host, spec("e2e-agent-3", &image))
        .await
        .unwrap();
    m.wait_boot(BOOT, &cancel).await.unwrap();
    assert!(m.restored());
    assert_eq!(run(&m, "echo ${SSH_CONNECTION-none}").await, "none");
    over_ssh(&m, KILL_AGENT).await;
    let started = std::time::Instant::now();
    assert_ne!(run(&m, "echo ${SSH_CONNECTION-none}").await, "none");
    assert!(started.elapsed() < Duration::from_secs(15));
    // And a reboot leaves no agent behind: SSH it is, at once.
    m.reboot(BOOT, &cancel).await.unwrap();
    assert_ne!(run(&m, "echo ${SSH_CONNECTION-none}").await, "none");
    m.kill().await;
}
