//! Machines: QEMU guests booted from images, and existing hosts reached over SSH.

pub mod accel;
pub mod access;
pub mod agent;
pub mod console;
pub mod deadline;
pub mod error;
pub mod fault;
pub mod host;
pub mod kmsg;
pub mod layer;
pub mod lines;
pub mod ports;
pub mod qemu;
pub mod qmp;
pub mod remote;
mod restore;
pub mod rundir;
pub mod shell;
pub mod snapshot;
pub mod spawn;
pub mod ssh;
pub mod switch;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

/// Longest line vmcheck takes from a guest (a conversation's, a kernel log record, a log
/// line looked at): vmcheck's own are short, and a guest that sends without end is not read
/// into memory without end.
pub const MAX_GUEST_LINE: usize = 64 * 1024;

/// A machine the runner can use: one it booted, or an existing host.
pub enum Machine {
    Virtual(Box<vm::VirtualMachine>),
    Remote(Box<remote::RemoteMachine>),
}

impl Machine {
    pub fn label(&self) -> &str {
        match self {
            Machine::Virtual(m) => &m.label,
            Machine::Remote(m) => &m.label,
        }
    }

    pub fn shell(&self) -> &shell::Shell {
        match self {
            Machine::Virtual(m) => m.shell(),
            Machine::Remote(m) => m.shell(),
        }
    }

    pub fn ssh_command(&self) -> String {
        self.ssh_access().command()
    }

    /// How programs outside vmcheck reach this machine over SSH.
    pub fn ssh_access(&self) -> access::SshAccess {
        match self {
            Machine::Virtual(m) => m.ssh_access(),
            Machine::Remote(m) => m.ssh_access(),
        }
    }

    /// How it came up: restored from a booted snapshot, booted cold, or an existing host.
    pub fn origin(&self) -> crate::events::BootOrigin {
        use crate::events::BootOrigin;
        match self {
            Machine::Virtual(m) if m.restored() => BootOrigin::Restored,
            Machine::Virtual(_) => BootOrigin::Cold,
            Machine::Remote(_) => BootOrigin::Existing,
        }
    }

    /// Run one QMP command on a machine vmcheck booted (a fault done from the host); an
    /// existing host has no QMP.
    pub async fn qmp(
        &self,
        command: &str,
        arguments: serde_json::Value,
        limit: std::time::Duration,
    ) -> Result<serde_json::Value, String> {
        match self {
            Machine::Virtual(m) => m.qmp(command, arguments, limit).await,
            Machine::Remote(m) => Err(format!(
                "{} is an existing host: faults need a machine vmcheck booted",
                m.label
            )),
        }
    }

    /// Each forwarded guest port and the host's 127.0.0.1 port it is reached on (machines
    /// vmcheck booted; an existing host is reached directly).
    pub fn forwards(&self) -> Vec<(u16, u16)> {
        match self {
            Machine::Virtual(m) => m.forwards(),
            Machine::Remote(_) => Vec::new(),
        }
    }

    /// The guest kernel's log stream, while it is live (see `kmsg.rs`).
    pub fn kmsg(&self) -> Option<&kmsg::KmsgStream> {
        match self {
            Machine::Virtual(m) => m.kmsg(),
            Machine::Remote(_) => None,
        }
    }

    /// The serial console log, for machines vmcheck booted.
    pub fn console_log(&self) -> Option<PathBuf> {
        match self {
            Machine::Virtual(m) => Some(m.console_log()),
            Machine::Remote(_) => None,
        }
    }

    pub async fn reboot(
        &mut self,
        timeout: Duration,
        cancel: &crate::signal::Cancel,
    ) -> Result<String, error::MachineError> {
        self.shell().request_reboot().await;
        self.wait_reboot(timeout, cancel).await
    }

    pub async fn wait_reboot(
        &mut self,
        timeout: Duration,
        cancel: &crate::signal::Cancel,
    ) -> Result<String, error::MachineError> {
        match self {
            Machine::Virtual(m) => m.wait_reboot(timeout, cancel).await,
            Machine::Remote(m) => m.wait_reboot(timeout, cancel).await,
        }
    }

    /// Stop a booted machine and remove its files; just disconnect from an existing host.
    pub async fn kill(self) {
        match self {
            Machine::Virtual(m) => m.kill().await,
            Machine::Remote(m) => m.shell().disconnect().await,
        }
    }
}
