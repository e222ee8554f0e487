//! Why a machine went away. When a command's SSH connection is lost (or a command times
//! out), the cause is rarely SSH: [`diagnose`] looks at the machine's qemu and host and names
//! the real one ([`Fault`]): the guest kernel panicked (its first line, from the console),
//! qemu was killed by a signal, or by the kernel's out-of-memory killer (the kernel log says
//! so; a host or a memory cgroup out of memory), qemu exited, or
//! the host disk under the machine's run directory is full (qemu paused the guest on the
//! write error). A full host disk is not worth a retry on the same host
//! ([`Fault::retryable`]).

use super::console::ConsoleState;
use super::qmp::Qmp;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What ended a machine, in words users act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `line` is the kernel's (`Kernel panic - not syncing: …`).
    KernelPanic {
        line: String,
    },
    /// qemu was killed by `signal`; `available_mib` is set when the host was short of memory.
    QemuKilled {
        signal: String,
        available_mib: Option<u64>,
    },
    QemuExited {
        status: String,
        stderr: String,
    },
    /// The kernel's out-of-memory killer killed qemu; `line` is the kernel's own.
    OutOfMemory {
        line: String,
    },
    /// The file system holding `path` (the run directory: disk overlay, logs) is full.
    HostDiskFull {
        path: PathBuf,
    },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::KernelPanic { line } => write!(f, "the guest kernel panicked: {line}"),
            Fault::QemuKilled {
                signal,
                available_mib,
            } => {
                write!(f, "qemu was killed by signal {signal}")?;
                if let Some(mib) = available_mib {
                    write!(f, " (the host is out of memory: {mib} MiB available)")?;
                }
                Ok(())
            }
            Fault::QemuExited { status, stderr } => {
                write!(f, "qemu exited ({status})")?;
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
            Fault::OutOfMemory { line } => write!(
                f,
                "the host ran out of memory: the kernel killed qemu ({line})"
            ),
            Fault::HostDiskFull { path } => write!(
                f,
                "the host's disk is full: no space left for {} (not retried on this host)",
                path.display()
            ),
        }
    }
}

impl Fault {
    /// Whether another attempt (on a fresh machine of this host) can do better.
    pub fn retryable(&self) -> bool {
        !matches!(self, Fault::HostDiskFull { .. })
    }
}

/// What [`diagnose`] looks at: the machine's current qemu (updated on a relaunch).
#[derive(Debug, Clone)]
pub struct Probe {
    pub pid: u32,
    pub console: watch::Receiver<ConsoleState>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
    pub run_dir: PathBuf,
    pub qmp: PathBuf,
}

/// Below this much free space, a file system counts as full.
const FULL_BYTES: u64 = 1 << 20;
/// Below this much available host memory, a killed qemu is put down to memory.
const LOW_MEMORY_MIB: u64 = 256;

/// Why the machine of `probe` failed a command, if it did: waits up to `patience` for a
/// dying qemu to finish dying (the connection drops a moment before qemu exits).
pub async fn diagnose(probe: &Probe, patience: Duration) -> Option<Fault> {
    let until = Instant::now() + patience;
    loop {
        if let Some(status) = exit_status(probe.pid) {
            return Some(of_exit(probe, status).await);
        }
        if let Some(full) = disk_full(&probe.run_dir) {
            return Some(full);
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Alive: paused on an I/O error (a full disk that was freed since is still that).
    let limit = Instant::now() + Duration::from_secs(2);
    let mut qmp = Qmp::connect(&probe.qmp, limit).await.ok()?;
    let status = qmp
        .execute("query-status", serde_json::json!({}), limit)
        .await
        .ok()?;
    (status["status"] == "io-error").then(|| Fault::HostDiskFull {
        path: probe.run_dir.clone(),
    })
}

/// `Some` when the file system holding `path` is full.
pub fn disk_full(path: &Path) -> Option<Fault> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    let free = s.blocks_available() as u64 * s.fragment_size() as u64;
    (free < FULL_BYTES).then(|| Fault::HostDiskFull {
        path: path.to_path_buf(),
    })
}

/// The kernel log's line saying that its out-of-memory killer killed `pid`, if it did
/// (`Out of memory: Killed process 123 (qemu-system-x86)`, or `Memory cgroup out of
/// memory: …` when a cgroup's limit was hit). Read from `/dev/kmsg` without blocking;
/// `None` when the log cannot be read (an unprivileged user on a restricted host).
fn oom_kill_line(pid: u32) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut found = None;
    // One record per read; the end of the log is EAGAIN. A record lost to the ring
    // buffer's wrap-around (EPIPE) is skipped.
    let mut buf = vec![0u8; 8192];
    for _ in 0..100_000 {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                if let Some(line) = oom_kill_of(&record, pid) {
                    found = Some(line);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    found
}

/// The message of kernel log record `record` (`6,342,1366582,-;text`) if it says the
/// out-of-memory killer killed `pid`.
fn oom_kill_of(record: &str, pid: u32) -> Option<String> {
    let text = record.split_once(';').map_or(record, |(_, t)| t);
    let text = text.lines().next()?.trim();
    let killed = format!("Killed process {pid} (");
    text.contains(&killed)
        .then(|| text.chars().take(200).collect())
}

/// How qemu `pid` ended, without reaping it (its owner still waits for it); `None` while
/// it runs.
fn exit_status(pid: u32) -> Option<nix::sys::wait::WaitStatus> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(nix::unistd::Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) => None,
        Ok(status) => Some(status),
        // Reaped already (or not our child): gone, how is unknown.
        Err(_) => Some(WaitStatus::StillAlive),
    }
}

async fn of_exit(probe: &Probe, status: nix::sys::wait::WaitStatus) -> Fault {
    use nix::sys::wait::WaitStatus;
    // The console reader may still be reading qemu's last output: wait for its end.
    let mut console = probe.console.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while console.changed().await.is_ok() {}
    })
    .await;
    if let Some(line) = console.borrow().panic_line.clone() {
        return Fault::KernelPanic { line };
    }
    match status {
        WaitStatus::Signaled(_, signal, _) => match oom_kill_line(probe.pid) {
            Some(line) => Fault::OutOfMemory { line },
            None => Fault::QemuKilled {
                signal: format!("{} ({signal})", signal as i32),
                available_mib: super::qemu::mem_available_mib().filter(|m| *m < LOW_MEMORY_MIB),
            },
        },
        other => {
            let stderr = String::from_utf8_lossy(&probe.stderr.lock().expect("poisoned"))
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            let status = match other {
                WaitStatus::Exited(_, 0) if console.borrow().restarts > 0 => {
                    "exit status 0: the guest rebooted (qemu runs with -no-reboot)".to_string()
                }
                WaitStatus::Exited(_, 0) => "exit status 0: the guest powered off".to_string(),
                WaitStatus::Exited(_, code) => format!("exit status {code}"),
                _ => "gone".to_string(),
            };
            if stderr.contains("No space left on device")
                && let Some(full) = disk_full(&probe.run_dir)
            {
                return full;
            }
            Fault::QemuExited { status, stderr }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_killer_is_found_in_the_kernel_log() {
        let global = "3,1234,99,-;Out of memory: Killed process 4242 (qemu-system-x86) total-vm:1000kB, anon-rss:900kB";
        assert_eq!(
            oom_kill_of(global, 4242).as_deref(),
            Some(
                "Out of memory: Killed process 4242 (qemu-system-x86) total-vm:1000kB, anon-rss:900kB"
            )
        );
        let cgroup = "3,1235,99,-;Memory cgroup out of memory: Killed process 4242 (qemu-system-x86) total-vm:1kB\n SUBSYSTEM=x";
        assert_eq!(
            oom_kill_of(cgroup, 4242).as_deref(),
            Some("Memory cgroup out of memory: Killed process 4242 (qemu-system-x86) total-vm:1kB")
        );
        assert_eq!(oom_kill_of(global, 424), None, "another pid");
        assert_eq!(oom_kill_of("6,1,1,-;EXT4-fs mounted", 4242), None);
        let fault = Fault::OutOfMemory {
            line: "Out of memory: Killed process 4242 (qemu-system-x86)".into(),
        };
        assert_eq!(
            fault.to_string(),
            "the host ran out of memory: the kernel killed qemu (Out of memory: Killed process 4242 (qemu-system-x86))"
        );
        assert!(fault.retryable());
    }

    #[test]
    fn only_a_full_host_disk_is_not_worth_a_retry() {
        let full = Fault::HostDiskFull {
            path: "/tmp/x".into(),
        };
        assert!(!full.retryable());
        assert!(full.to_string().contains("/tmp/x"), "{full}");
        let killed = Fault::QemuKilled {
            signal: "9 (SIGKILL)".into(),
            available_mib: Some(100),
        };
        assert!(killed.retryable());
        assert_eq!(
            killed.to_string(),
            "qemu was killed by signal 9 (SIGKILL) (the host is out of memory: 100 MiB available)"
        );
    }

    #[tokio::test]
    async fn a_killed_process_is_named_with_its_signal_and_a_live_one_is_no_fault() {
        let child = tokio::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (_tx, console) = watch::channel(ConsoleState::default());
        let probe = Probe {
            pid: child.id().unwrap(),
            console,
            stderr: Arc::default(),
            run_dir: dir.path().into(),
            qmp: dir.path().join("qmp.sock"),
        };
        assert_eq!(diagnose(&probe, Duration::from_millis(100)).await, None);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(probe.pid as i32),
            nix::sys::signal::SIGKILL,
        )
        .unwrap();
        drop(_tx);
        let fault = diagnose(&probe, Duration::from_secs(5)).await.unwrap();
        assert!(
            matches!(&fault, Fault::QemuKilled { signal, .. } if signal == "9 (SIGKILL)"),
            "{fault:?}"
        );
        drop(child);
    }
}
