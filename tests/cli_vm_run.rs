//! End-to-end: `vmcheck vm-run` and `vmcheck image` as a user runs them, including signals
//! and bad input. Every test checks that nothing is left behind.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use vmcheck::exit_codes;

/// Start `vm-run busybox` interactively and read its banner; returns the child, the SSH
/// port and the console log path.
fn start_interactive() -> (Child, u16, std::path::PathBuf) {
    common::image("busybox");
    let mut child = common::vmcheck()
        .args(["vm-run", "busybox"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut port, mut console, mut banner) = (0, None, String::new());
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "vm-run ended early:\n{banner}"
        );
        banner.push_str(&line);
        if let Some(a) = line.strip_prefix("  address:  127.0.0.1:") {
            port = a.trim().parse().unwrap();
        }
        if let Some(c) = line.strip_prefix("  console:  ") {
            console = Some(std::path::PathBuf::from(c.trim()));
        }
        if line.starts_with("Press Enter") {
            break;
        }
    }
    assert_eq!(common::qemu_pids_for_port(port).len(), 1, "{banner}");
    (child, port, console.expect("console line"))
}

fn assert_nothing_left(port: u16, console: &std::path::Path, owner: u32) {
    assert!(
        common::eventually(10, || common::qemu_pids_for_port(port).is_empty()),
        "qemu on port {port} outlived vmcheck"
    );
    assert!(
        !console.parent().unwrap().exists(),
        "run dir left: {}",
        console.display()
    );
    assert!(common::run_dirs_of(owner).is_empty());
}

#[test]
fn printed_ssh_command_works_and_enter_stops_the_machine() {
    let (mut child, port, console) = start_interactive();
    // The printed ssh line connects (host key checked against the image's key).
    let ssh = format!(
        "ssh -F none -i {} -p {port} -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} root@127.0.0.1 echo reached",
        common::image("busybox").client_key().display(),
        console.parent().unwrap().join("known_hosts").display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &ssh])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reached",
        "{out:?}"
    );
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(exit_codes::OK));
    assert_nothing_left(port, &console, child.id());
}

#[test]
fn sigterm_stops_the_machine_and_leaves_nothing() {
    let (mut child, port, console) = start_interactive();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(exit_codes::INTERRUPTED));
    assert_nothing_left(port, &console, child.id());
}

#[test]
fn sigkill_of_vmcheck_takes_qemu_along() {
    let (mut child, port, console) = start_interactive();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        common::eventually(10, || common::qemu_pids_for_port(port).is_empty()),
        "qemu survived SIGKILL of vmcheck"
    );
    // The run directory of a killed vmcheck is swept by the next vmcheck that starts a machine.
    assert!(console.parent().unwrap().exists());
    let out = common::vmcheck()
        .args(["vm-run", "busybox", "-e", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        !console.parent().unwrap().exists(),
        "stale run dir not swept"
    );
}

#[test]
fn execute_passes_output_and_exit_code() {
    common::image("busybox");
    let out = common::vmcheck()
        .args(["vm-run", "busybox", "-e", "echo out; echo err >&2; exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
}

#[test]
fn unknown_image_lists_the_known_ones() {
    let out = common::vmcheck()
        .args(["vm-run", "fedora-99", "-e", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unknown image 'fedora-99' (known images: busybox, debian-12"),
        "{err}"
    );
}

#[test]
fn invalid_options_are_usage_errors() {
    for args in [
        &["vm-run", "-m", "1"][..],
        &["vm-run", "--cpus", "x"],
        &["image", "frobnicate"],
    ] {
        let out = common::vmcheck().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR), "{args:?}");
    }
}

#[test]
fn too_much_memory_is_refused_before_starting() {
    common::image("busybox");
    let child = common::vmcheck()
        .args(["vm-run", "busybox", "-m", "1000000", "-e", "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INFRASTRUCTURE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not enough memory for machine busybox-1"),
        "{err}"
    );
    assert!(common::run_dirs_of(pid).is_empty());
}

#[test]
fn missing_qemu_names_the_package() {
    common::image("busybox");
    let out = common::vmcheck()
        .args(["vm-run", "busybox", "-e", "true"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INFRASTRUCTURE));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "qemu-system-x86_64 not found in PATH: install the Debian package qemu-system-x86"
        ),
        "{err}"
    );
}

#[test]
fn a_corrupt_image_is_refused() {
    let image = common::image("busybox");
    let tmp = tempfile::tempdir().unwrap();
    // A project without recipes whose images/busybox points at a tampered copy.
    let store = tmp.path().join("store");
    let copy = store.join(image.dir.file_name().unwrap());
    std::fs::create_dir_all(&copy).unwrap();
    for f in image
        .manifest
        .files
        .keys()
        .chain(std::iter::once(&"manifest.toml".to_string()))
    {
        std::fs::copy(image.file(f), copy.join(f)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(copy.join("initrd"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(copy.join("initrd"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let project = tmp.path().join("project");
    std::fs::create_dir_all(project.join("bots/images")).unwrap();
    std::fs::create_dir_all(project.join("images")).unwrap();
    std::os::unix::fs::symlink(&copy, project.join("images/busybox")).unwrap();
    let out = common::vmcheck()
        .args(["vm-run", "busybox", "-e", "true"])
        .arg("--project-dir")
        .arg(&project)
        .env("VMCHECK_IMAGES_DIR", &store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("initrd has sha256"), "{err}");
    assert!(
        err.contains("rebuild it with `vmcheck image build busybox`"),
        "{err}"
    );
}

#[test]
fn image_list_shows_built_images_and_booted_snapshots() {
    common::image("busybox");
    // A machine started means a snapshot of busybox exists (made or restored).
    let out = common::vmcheck()
        .args(["vm-run", "busybox", "-e", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let vm_run = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = common::vmcheck().args(["image", "list"]).output().unwrap();
    assert!(out.status.success());
    let text = format!(
        "{}\nvm-run said: {vm_run}",
        String::from_utf8_lossy(&out.stdout)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with("busybox "))
        .expect("busybox row");
    assert!(row.contains(" built "), "{text}");
    assert!(text.contains("\nBOOTED SNAPSHOT "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("busybox-256m1c-") && l.contains("/snapshots/busybox-256m1c-")),
        "{text}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    let out = common::vmcheck()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vm-run") && text.contains("--nondestructive"),
        "{text}"
    );
    let out = common::vmcheck().arg("man").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH vmcheck"),
        "{text}"
    );
    assert!(text.contains("vm\\-run"), "subcommands are listed");
    let out = common::vmcheck()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(exit_codes::INPUT_ERROR));
}
