//! The errors of the machine layer: one type for booting, connecting and running commands,
//! each carrying the machine's label so messages say which machine failed.

use super::agent::AgentError;
use super::fault::Fault;
use super::ssh::{Output, SshError};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(
        "{program} not found in PATH: install the Debian package {package} (or run bots/install-deps)"
    )]
    Missing {
        program: &'static str,
        package: &'static str,
    },
    #[error(
        "not enough memory for machine {label}: it needs {needed_mib} MiB ({memory_mib} MiB guest + qemu), the host has {available_mib} MiB available"
    )]
    OutOfMemory {
        label: String,
        memory_mib: u32,
        needed_mib: u64,
        available_mib: u64,
    },
    #[error("machine {label}: {context}: {source}")]
    Io {
        label: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// `status` says how and when, e.g. "exit status: 1, while booting".
    #[error("machine {label}: qemu exited ({status})\n{stderr}--- console tail ({}) ---\n{console}", .console_log.display())]
    QemuExited {
        label: String,
        status: String,
        stderr: String,
        console_log: PathBuf,
        console: String,
    },
    #[error("machine {label} did not boot within {}s (no ready marker on the console)\n--- console tail ({}) ---\n{console}", .after.as_secs(), .console_log.display())]
    BootTimeout {
        label: String,
        after: Duration,
        console_log: PathBuf,
        console: String,
    },
    #[error("machine {label}: {source}")]
    Ssh {
        label: String,
        #[source]
        source: SshError,
    },
    #[error("machine {label}: {source}")]
    Agent {
        label: String,
        #[source]
        source: AgentError,
    },
    #[error("machine {label}: command timed out after {}s: {command}", .after.as_secs())]
    CommandTimeout {
        label: String,
        command: String,
        after: Duration,
        output: Output,
    },
    #[error("machine {label}: {message}")]
    Failed { label: String, message: String },
    /// The machine went away (or its host failed it): the cause, not the lost connection.
    #[error("machine {label}: {fault}")]
    Died { label: String, fault: Fault },
    #[error("interrupted")]
    Cancelled,
}

impl MachineError {
    /// True for failures of the machine or the harness (as opposed to a test's own
    /// command failing or the user interrupting): the runner retries these on a fresh machine.
    pub fn is_infrastructure(&self) -> bool {
        !matches!(
            self,
            MachineError::Cancelled | MachineError::CommandTimeout { .. }
        )
    }

    /// False when another attempt on this host would fail the same way (its disk is full).
    pub fn retryable(&self) -> bool {
        match self {
            MachineError::Died { fault, .. } => fault.retryable(),
            MachineError::Io { source, .. } => source.raw_os_error() != Some(libc::ENOSPC),
            _ => true,
        }
    }
}
