//! End-to-end: the machine layer against a real debian-12 guest (systemd, journald, OpenSSH,
//! a qcow2 disk behind a per-boot overlay).

mod common;

use std::time::Duration;
use vmcheck::machine::vm::{MachineSpec, VirtualMachine};
use vmcheck::signal::Cancel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_boots_runs_commands_keeps_its_disk_across_reboot() {
    let image = common::image("debian-12");
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    let spec = MachineSpec {
        label: "e2e-debian".into(),
        image: image.clone(),
        memory_mib: None,
        cpus: 1,
        private_net: None,
        isolated: false,
        cold_boot: false,
        layer: None,
        revive: None,
        forward: Vec::new(),
    };
    let mut m = VirtualMachine::start(&host, spec).await.unwrap();
    let overlay = m.run_dir().join("overlay.qcow2");
    assert!(
        overlay.exists(),
        "a per-boot overlay, never the image itself"
    );
    let first = m
        .wait_boot(Duration::from_secs(180), &cancel)
        .await
        .unwrap();
    let cmd = Duration::from_secs(60);
    let sh = m.shell();
    let done = sh.execute("systemctl is-system-running --wait; journalctl -b -q --no-pager -n 1 >/dev/null && echo journal ok", cmd).await.unwrap();
    assert!(
        done.stdout_text().contains("journal ok"),
        "{:?}",
        done.output
    );
    let done = sh.execute("exit 9", cmd).await.unwrap();
    assert_eq!(done.status, vmcheck::machine::ssh::ExitStatus::Code(9));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"persisted\n").unwrap();
    sh.upload(&dir.path().join("f"), "/var/lib/vmcheck-e2e")
        .await
        .unwrap();

    // The disk survives a reboot (the overlay stays), the boot id changes.
    let second = m.reboot(Duration::from_secs(180), &cancel).await.unwrap();
    assert_ne!(first, second);
    m.shell()
        .download("/var/lib/vmcheck-e2e", &dir.path().join("back"))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("back")).unwrap(),
        b"persisted\n"
    );
    let done = m
        .shell()
        .execute("journalctl --list-boots --no-pager | wc -l", cmd)
        .await
        .unwrap();
    assert!(
        done.stdout_text().trim().parse::<u32>().unwrap() >= 2,
        "{}",
        done.stdout_text()
    );

    let (pid, run_dir) = (m.pid().unwrap(), m.run_dir().to_path_buf());
    m.kill().await;
    assert!(!common::process_alive(pid));
    assert!(!run_dir.exists(), "overlay left behind");
    image.dir.join("root.qcow2").metadata().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_debian_machines_have_their_own_machine_id_journal_clock_and_disk() {
    let (_store, image) = common::in_own_store(&common::image("debian-12"));
    let host = common::host(&image).await;
    let cancel = Cancel::new();
    let boot = Duration::from_secs(180);
    let cmd = Duration::from_secs(60);
    let spec = |label: &str| common::spec(label, &image);
    let mut first = VirtualMachine::start(&host, spec("e2e-deb-snap-1"))
        .await
        .unwrap();
    first.wait_boot(boot, &cancel).await.unwrap();
    assert!(
        !first.restored(),
        "the first machine boots and saves the snapshot"
    );
    let mut ids = Vec::new();
    let mut machines = Vec::new();
    for (i, label) in ["e2e-deb-snap-2", "e2e-deb-snap-3"].into_iter().enumerate() {
        let mut m = VirtualMachine::start(&host, spec(label)).await.unwrap();
        m.wait_boot(boot, &cancel).await.unwrap();
        assert!(m.restored(), "{label}");
        let before = common::host_secs();
        let done = m
            .shell()
            .execute(
                &format!(
                    "cat /etc/machine-id; date +%s; echo only-in-{i} > /root/mine; ls /root; \
                     echo vmcheck-e2e-mark-{i} >/dev/kmsg; journalctl --sync; \
                     journalctl -b -q --no-pager -o cat | grep -c vmcheck-e2e-mark-{i}"
                ),
                cmd,
            )
            .await
            .unwrap();
        let after = common::host_secs();
        let out = done.stdout_text();
        let lines: Vec<&str> = out.lines().collect();
        assert!(done.status.success(), "{out} {:?}", done.output);
        ids.push(lines[0].to_string());
        common::assert_clock_within(lines[1], before, after);
        assert_eq!(lines[2], "mine", "a disk of its own: {out}");
        assert_eq!(
            lines[3], "1",
            "the journal is read under the new machine id: {out}"
        );
        machines.push(m);
    }
    let original = first
        .shell()
        .execute("cat /etc/machine-id", cmd)
        .await
        .unwrap()
        .stdout_text();
    assert_eq!(ids[0].len(), 32);
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[0], original.trim());
    first.kill().await;
    for m in machines {
        m.kill().await;
    }
}
