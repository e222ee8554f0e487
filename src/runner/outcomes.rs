//! What an attempt's outcome is made of when something other than the test decided it: a
//! failure of vmcheck's own (harness), a machine that failed (a host fault is marked so that
//! policy does not retry it), a command in a machine that did not end (the deadline, or the
//! machine), a skip (exit code 77), a helper command that failed.

use super::output::Log;
use crate::events::AttemptOutcome;
use crate::machine::error::MachineError;
use std::time::Duration;

/// A failure of vmcheck's own around the test (not the test's, not a machine's).
pub(super) fn harness(message: String) -> AttemptOutcome {
    AttemptOutcome::Harness {
        message,
        host_fault: false,
    }
}

/// A machine's failure as the attempt's outcome: its message names the cause, and a host
/// fault (a full disk) is marked so that policy does not retry it.
pub(super) fn machine_failed(e: &MachineError) -> AttemptOutcome {
    AttemptOutcome::Harness {
        message: e.to_string(),
        host_fault: !e.retryable(),
    }
}

/// `None` if the command ran and succeeded, else what went wrong.
pub(super) fn command_problem(
    done: Result<crate::machine::shell::Completed, MachineError>,
    what: &str,
) -> Option<String> {
    match done {
        Ok(d) if d.status.success() => None,
        Ok(d) => Some(format!(
            "{what} failed ({}): {}",
            d.status,
            String::from_utf8_lossy(&d.output.stderr).trim()
        )),
        Err(e) => Some(format!("{what}: {e}")),
    }
}

/// The outcome of a command in a machine that did not end: the test's deadline (`timeout`)
/// passed, or the machine failed.
pub(super) fn guest_error(e: MachineError, timeout: Duration, log: &Log) -> AttemptOutcome {
    match e {
        MachineError::CommandTimeout { .. } => {
            log.note(&format!("vmcheck: timed out after {}s", timeout.as_secs()));
            AttemptOutcome::TimedOut { after: timeout }
        }
        e => {
            log.note(&format!("vmcheck: {e}"));
            machine_failed(&e)
        }
    }
}

pub(super) fn skipped(log: &Log) -> AttemptOutcome {
    AttemptOutcome::Skipped {
        reason: log.last_line(),
    }
}
