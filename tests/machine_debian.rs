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
