//! The QEMU command line of a machine, built from plain data ([`QemuConfig`]), and the host
//! facts it needs (where qemu is, how much memory is free).
//!
//! Choices, measured on TCG hosts (see ARCHITECTURE.md): q35; the uncompressed kernel booted
//! through PVH; virtio-rng so sshd does not wait for entropy; no option ROMs; the serial
//! console on qemu's stdout (read by `console.rs`); `-no-reboot` plus pvpanic with
//! `-action panic=exit-failure`, so a panicking or resetting guest ends qemu instead of
//! hanging or boot-looping (a reboot the guest asked for is a relaunch, see `vm.rs`); disks as
//! a throw-away qcow2 overlay with `cache=unsafe`.

use super::accel::Accel;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The kernel command line vmcheck always uses; an image's own `cmdline` is appended.
/// `no_timer_check`: the kernel's boot-time check that the timer interrupt arrives assumes
/// a CPU that runs; a TCG guest on a loaded host fails it and panics ("IO-APIC + timer
/// doesn't work!"), as virtualized guests commonly do (cloud images set it too).
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 no_timer_check";
/// Added under TCG: an emulated CPU does not speculate, so the kernel's Spectre mitigations
/// (retpolines, RSB filling on every context switch) guard against nothing there, and they
/// cost: with them off a debian-12 guest ran 20 `/bin/true`s in 0.50-0.63 s instead of
/// 0.72-0.80 s, restarted journald in 0.40-0.56 s instead of 0.60-0.86 s, and booted in 15.2 s
/// instead of 17.5 s. Under KVM the CPU is real, and the guest keeps its defaults.
pub const TCG_CMDLINE: &str = "mitigations=off";

/// A second NIC on the private network of a test's machines: a port of the attempt's
/// switch (`switch.rs`), reached through a pair of Unix datagram sockets in a private
/// directory (`-netdev dgram`, QEMU 7.2 and later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateNet {
    /// The machine's socket, which qemu binds and receives its frames on.
    pub socket: PathBuf,
    /// The switch's socket, which qemu sends the guest's frames to.
    pub switch: PathBuf,
    pub mac: String,
}

/// Everything that decides a machine's QEMU command line.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The per-boot qcow2 overlay of the image's disk.
    pub disk: Option<PathBuf>,
    /// Host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// More forwards: (host port on 127.0.0.1, guest port).
    pub forwards: Vec<(u16, u16)>,
    /// The guest reaches nothing through its first NIC (slirp's `restrict=on`): only the SSH
    /// forward from the host comes in.
    pub isolated: bool,
    pub private_net: Option<PrivateNet>,
    /// A QMP socket to listen on (to save the machine, or to resume a restored one).
    pub qmp: Option<PathBuf>,
    /// Start from this saved state (`-incoming`) instead of booting: see `snapshot.rs`.
    pub incoming: Option<PathBuf>,
    /// The guest agent's port (see `agent.rs`): the base path of its two FIFOs.
    pub agent: Option<PathBuf>,
    /// The port of the guest kernel's log stream (see `kmsg.rs`): the base path of its
    /// FIFOs. Only with `agent`.
    pub kmsg: Option<PathBuf>,
}

impl QemuConfig {
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
        push(&["-accel", self.accel.as_str()]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-machine", "q35", "-nodefaults", "-no-user-config"]);
        push(&[
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            &self.cpus.to_string(),
        ]);
        push(&["-display", "none", "-monitor", "none", "-no-reboot"]);
        push(&[
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ]);
        push(&["-device", "virtio-rng-pci"]);
        // A new generation id on every start, restores included: the guest kernel reseeds
        // its random number generator when it changes, so restored machines do not share
        // random numbers (or boot ids, which are drawn on first read).
        push(&["-device", "vmgenid,guid=auto"]);
        push(&["-device", "pvpanic-pci", "-action", "panic=exit-failure"]);
        let forwards: String = self
            .forwards
            .iter()
            .map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"))
            .collect();
        push(&[
            "-netdev",
            &format!(
                "user,id=n0,{}hostfwd=tcp:127.0.0.1:{}-:22{forwards}",
                if self.isolated { "restrict=on," } else { "" },
                self.ssh_port
            ),
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
        let tcg = if self.accel == Accel::Tcg {
            TCG_CMDLINE
        } else {
            ""
        };
        let cmdline = [BASE_CMDLINE, tcg, self.cmdline.trim()]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        push(&["-append", &cmdline]);
        // After the last `push`: the value holds paths (OsString). Its place among the
        // `-device`s is what decides the NIC's PCI slot (and name, `eth1`), as before.
        if let Some(net) = &self.private_net {
            let mut netdev = OsString::from("dgram,id=n1,local.type=unix,local.path=");
            netdev.push(escape_commas(&net.socket));
            netdev.push(",remote.type=unix,remote.path=");
            netdev.push(escape_commas(&net.switch));
            a.push("-netdev".into());
            a.push(netdev);
            a.push("-device".into());
            a.push(format!("virtio-net-pci,netdev=n1,mac={},romfile=", net.mac).into());
        }
        a.push("-kernel".into());
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        // Options whose value holds a path (kept as an OsString: paths need not be UTF-8).
        // `-kernel` and `-initrd` take a bare file name; a path inside a `key=value,…`
        // option has its commas doubled, as qemu's option syntax requires.
        let mut with_path = |option: &str, before: &str, path: OsString, after: &str| {
            let mut value = OsString::from(before);
            value.push(path);
            value.push(after);
            a.push(option.into());
            a.push(value);
        };
        if let Some(disk) = &self.disk {
            let opts = ",if=virtio,id=disk0,format=qcow2,cache=unsafe,discard=unmap";
            with_path("-drive", "file=", escape_commas(disk), opts);
        }
        if let Some(qmp) = &self.qmp {
            with_path("-qmp", "unix:", escape_commas(qmp), ",server=on,wait=off");
        }
        if let Some(state) = &self.incoming {
            // QEMU 7.2 has no `file:` migration; `exec:` runs this through /bin/sh, so the
            // path is shell-quoted (the URI itself is not option-parsed).
            with_path("-incoming", "", exec_cat_from(state).into(), "");
        }
        if let Some(agent) = &self.agent {
            a.push("-device".into());
            a.push("virtio-serial-pci,id=vmcheck-serial".into());
            // A virtio-serial port named `name`, its host side `backend` on `path`.
            let mut port = |backend: &str, id: &str, path: &Path, name: &str| {
                let mut chardev = OsString::from(format!("{backend},id={id},path="));
                chardev.push(escape_commas(path));
                a.extend([
                    "-chardev".into(),
                    chardev,
                    "-device".into(),
                    format!("virtserialport,bus=vmcheck-serial.0,chardev={id},name={name}").into(),
                ]);
            };
            port("pipe", "agent", agent, super::agent::PORT);
            if let Some(kmsg) = &self.kmsg {
                port("pipe", "kmsg", kmsg, super::kmsg::PORT);
            }
        }
        a
    }
}

/// A path as a value inside a qemu `key=value,…` option: every `,` doubled.
pub fn escape_commas(path: &Path) -> OsString {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    // SAFETY: only ASCII commas were inserted after ASCII commas of a valid OsStr.
    unsafe { OsString::from_encoded_bytes_unchecked(out) }
}

/// The `exec:` migration URI that reads a saved state from `path` (incoming); a `.zst`
/// file (a kept failed machine's) is decompressed on the way.
pub fn exec_cat_from(path: &Path) -> String {
    let quoted = crate::shell::quote(&path.to_string_lossy());
    if path.extension().is_some_and(|e| e == "zst") {
        format!("exec:zstd -dcq {quoted}")
    } else {
        format!("exec:cat {quoted}")
    }
}

/// The `exec:` migration URI that writes the state compressed to `path` (outgoing): fast
/// zstd, most of a guest's memory being zero pages or text.
pub fn exec_zstd_to(path: &Path) -> String {
    format!(
        "exec:zstd -1 -q -f -T0 -o {}",
        crate::shell::quote(&path.to_string_lossy())
    )
}

/// The `exec:` migration URI that writes the state to `path` (outgoing).
pub fn exec_cat_to(path: &Path) -> String {
    format!(
        "exec:cat > {}",
        crate::shell::quote(&path.to_string_lossy())
    )
}

/// Find `qemu-system-x86_64` on `PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    find_in_path("qemu-system-x86_64")
}

pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Memory QEMU itself needs beyond the guest's RAM (measured RSS overhead, rounded up).
pub const QEMU_OVERHEAD_MIB: u64 = 128;

/// `MemAvailable` from `/proc/meminfo`, in MiB.
pub fn mem_available_mib() -> Option<u64> {
    parse_meminfo(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

/// The host's memory in all, in MiB (`MemTotal` of `/proc/meminfo`).
pub fn mem_total_mib() -> Option<u64> {
    parse_meminfo(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:")
}

/// A field of `/proc/meminfo` (`field` with its colon), in MiB.
fn parse_meminfo(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initrd".into(),
            cmdline: "root=/dev/vda rw".into(),
            disk: Some("/run/x/overlay.qcow2".into()),
            ssh_port: 22022,
            forwards: Vec::new(),
            isolated: false,
            private_net: None,
            qmp: None,
            incoming: None,
            agent: None,
            kmsg: None,
        }
    }

    fn joined(c: &QemuConfig) -> String {
        c.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_command_line() {
        let s = joined(&config());
        assert!(s.starts_with("-accel tcg -machine q35 -nodefaults"), "{s}");
        assert!(!s.contains("-cpu host"));
        assert!(s.contains("-m 256 -smp 1"));
        assert!(
            s.contains("-netdev user,id=n0,hostfwd=tcp:127.0.0.1:22022-:22 "),
            "{s}"
        );
        assert!(s.contains(
            "-append console=ttyS0 quiet panic=-1 no_timer_check mitigations=off root=/dev/vda rw"
        ));
        assert!(s.contains(
            "-drive file=/run/x/overlay.qcow2,if=virtio,id=disk0,format=qcow2,cache=unsafe"
        ));
        assert!(s.contains("-action panic=exit-failure"));
        assert!(!s.contains("dgram"));
        assert!(s.contains("-device vmgenid,guid=auto"));
        assert!(!s.contains("-incoming") && !s.contains("-qmp"));
    }

    #[test]
    fn an_isolated_guest_keeps_only_its_ssh_forward() {
        let c = QemuConfig {
            isolated: true,
            ..config()
        };
        let s = joined(&c);
        assert!(
            s.contains("-netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:22022-:22 "),
            "{s}"
        );
    }

    #[test]
    fn restore_from_saved_state() {
        let mut c = config();
        c.qmp = Some("/run/x/qmp.sock".into());
        c.incoming = Some("/snap/it's/state.mig".into());
        let s = joined(&c);
        assert!(
            s.contains("-qmp unix:/run/x/qmp.sock,server=on,wait=off"),
            "{s}"
        );
        assert!(
            s.ends_with(r#"-incoming exec:cat '/snap/it'\''s/state.mig'"#),
            "{s}"
        );
    }

    #[test]
    fn paths_with_commas_quotes_and_spaces_stay_one_value() {
        let mut c = config();
        let dir = "/tmp/a,b 'c\"d,,e";
        c.disk = Some(format!("{dir}/overlay.qcow2").into());
        c.qmp = Some(format!("{dir}/qmp.sock").into());
        c.incoming = Some(format!("{dir}/state.mig").into());
        c.agent = Some(format!("{dir}/agent").into());
        c.kmsg = Some(format!("{dir}/kmsg").into());
        c.kernel = format!("{dir}/vmlinux").into();
        let args: Vec<String> = c
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let value = |option: &str| {
            let i = args.iter().position(|a| a == option).unwrap();
            args[i + 1].clone()
        };
        let escaped = "/tmp/a,,b 'c\"d,,,,e";
        assert_eq!(
            value("-drive"),
            format!(
                "file={escaped}/overlay.qcow2,if=virtio,id=disk0,format=qcow2,cache=unsafe,discard=unmap"
            )
        );
        assert_eq!(
            value("-qmp"),
            format!("unix:{escaped}/qmp.sock,server=on,wait=off")
        );
        assert_eq!(
            value("-kernel"),
            format!("{dir}/vmlinux"),
            "a bare file name"
        );
        assert_eq!(
            value("-chardev").as_str(),
            "stdio,id=con0,signal=off",
            "the console first"
        );
        let agent = args
            .iter()
            .position(|a| a.starts_with("pipe,id=agent"))
            .unwrap();
        assert_eq!(args[agent - 1], "-chardev");
        assert_eq!(args[agent], format!("pipe,id=agent,path={escaped}/agent"));
        let kmsg = args.iter().rposition(|a| a == "-chardev").unwrap();
        assert_eq!(args[kmsg + 1], format!("pipe,id=kmsg,path={escaped}/kmsg"));
        assert!(
            args[kmsg..].contains(
                &"virtserialport,bus=vmcheck-serial.0,chardev=kmsg,name=org.vmcheck.kmsg.0"
                    .to_string()
            ),
            "{args:?}"
        );
        assert!(
            args[agent..].contains(
                &"virtserialport,bus=vmcheck-serial.0,chardev=agent,name=org.vmcheck.agent.0"
                    .to_string()
            ),
            "{args:?}"
        );
        // The exec: command line is run by /bin/sh: it must give cat exactly the path.
        let uri = value("-incoming");
        let command = uri.strip_prefix("exec:").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command.replacen("cat", "printf %s", 1))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{dir}/state.mig")
        );
        let to = exec_cat_to(Path::new(&format!("{dir}/x")));
        assert_eq!(
            to,
            format!("exec:cat > {}", crate::shell::quote(&format!("{dir}/x")))
        );
    }

    #[test]
    fn kvm_private_net_and_no_disk() {
        let mut c = config();
        c.accel = Accel::Kvm;
        c.disk = None;
        c.private_net = Some(PrivateNet {
            socket: "/run/a,b/machine-2.sock".into(),
            switch: "/run/a,b/switch-2.sock".into(),
            mac: "52:54:01:00:00:02".into(),
        });
        let s = joined(&c);
        assert!(s.contains("-accel kvm -cpu host"));
        assert!(!s.contains("-drive"));
        assert!(!s.contains("mitigations"), "a real CPU keeps them: {s}");
        assert!(
            s.contains(
                "-netdev dgram,id=n1,local.type=unix,local.path=/run/a,,b/machine-2.sock,\
                 remote.type=unix,remote.path=/run/a,,b/switch-2.sock -device \
                 virtio-net-pci,netdev=n1,mac=52:54:01:00:00:02,romfile="
            ),
            "{s}"
        );
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(parse_meminfo(text, "MemAvailable:"), Some(2048));
        assert_eq!(parse_meminfo("MemTotal: 5120 kB\n", "MemAvailable:"), None);
        assert_eq!(parse_meminfo("MemTotal: 5120 kB\n", "MemTotal:"), Some(5));
    }
}
