//! Soak tests: a test that runs for a duration while named events fire at its start,
//! periodically and at its end (pytest-orchestration's model, without its defects: no event
//! error is lost, the kill switch acts at once, every execution is counted). This module
//! owns the plain data a check file's `soak` and `events` become ([`Soak`]); the schedule
//! (when each event runs, drawn from a seed) is [`schedule`]; the runner carries it out on
//! the test's machines (`runner/soak.rs`).

pub mod schedule;

use std::time::Duration;

/// A test's soak: how long, and its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soak {
    pub duration: Duration,
    /// Keep going after an event fails (and report every failure), instead of ending the
    /// soak at the first one. Default: false.
    pub keep_going: bool,
    /// In the order written; names are unique.
    pub events: Vec<SoakEvent>,
}

/// One named event of a soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoakEvent {
    pub name: String,
    pub action: Action,
    /// Runs every `interval` from the start; none: only at startup and/or teardown.
    pub interval: Option<Duration>,
    /// Runs when the soak starts. Default: true.
    pub at_startup: bool,
    /// Runs once more after the duration. Default: false.
    pub at_teardown: bool,
    /// One execution's limit. Default: 600 s.
    pub timeout: Duration,
    pub overlap: Overlap,
    /// A check that must pass after every fault: run again as each fault ends.
    pub invariant: bool,
    /// 1-based line of the event's table, for messages.
    pub line: usize,
}

/// What an event does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A script run as root in `machine` over SSH (`set -e`).
    Guest { machine: String, script: String },
    /// A script run on the host (`/bin/sh -e`), with the `vm` helper reaching the test's
    /// machines.
    Host { script: String },
    /// A fault done to `machine` from the host, with QEMU.
    Fault { machine: String, fault: Fault },
}

/// A machine fault, started by the host, never by the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// QMP `stop`, then `cont` after `for`.
    Pause { duration: Duration },
    /// Every NIC's link down (QMP `set_link`), up again after `for`.
    LinkDown { duration: Duration },
    /// A hard reset (QMP `system_reset`); the fault ends when the machine is back.
    Reboot,
    /// The guest's wall clock moved by `by` seconds (forward, or back if negative) at
    /// once. QEMU cannot set a running guest's clock (its RTC is read only at boot), so
    /// the host sets it through the machine's root channel with `date -s`.
    ClockJump { by: i64 },
}

/// The words check files name faults by.
pub const FAULTS: &[&str] = &["pause", "link-down", "reboot", "clock-jump"];

impl Fault {
    /// The word a check file names it by.
    pub fn word(&self) -> &'static str {
        match self {
            Fault::Pause { .. } => "pause",
            Fault::LinkDown { .. } => "link-down",
            Fault::Reboot => "reboot",
            Fault::ClockJump { .. } => "clock-jump",
        }
    }

    /// How long the fault is held before it is undone (zero: it is not undone).
    pub fn duration(&self) -> Duration {
        match self {
            Fault::Pause { duration } | Fault::LinkDown { duration } => *duration,
            Fault::Reboot | Fault::ClockJump { .. } => Duration::ZERO,
        }
    }

    /// The fault with its hold multiplied by `by` (a clock jump's size stays).
    fn scaled(self, by: impl Fn(Duration) -> Duration) -> Fault {
        match self {
            Fault::Pause { duration } => Fault::Pause {
                duration: by(duration),
            },
            Fault::LinkDown { duration } => Fault::LinkDown {
                duration: by(duration),
            },
            other => other,
        }
    }
}

/// What happens when an event is due while its previous execution still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// This run is skipped (counted as skipped).
    #[default]
    Skip,
    /// It runs as soon as the previous one ends (at most one waits).
    Queue,
}

impl Soak {
    /// The soak with its duration, intervals and fault durations multiplied by `scale`
    /// (`--soak-scale`: a two-hour soak as a one-minute one is 1/120); timeouts and clock
    /// jumps stay.
    pub fn scaled(&self, scale: f64) -> Soak {
        // Whole milliseconds: k × a scaled interval stays exact enough that no run is
        // gained or lost at the end.
        let by =
            |d: Duration| Duration::from_millis((d.as_secs_f64() * scale * 1000.0).round() as u64);
        Soak {
            duration: by(self.duration),
            keep_going: self.keep_going,
            events: self
                .events
                .iter()
                .map(|e| SoakEvent {
                    interval: e.interval.map(by),
                    action: match &e.action {
                        Action::Fault { machine, fault } => Action::Fault {
                            machine: machine.clone(),
                            fault: fault.scaled(by),
                        },
                        other => other.clone(),
                    },
                    ..e.clone()
                })
                .collect(),
        }
    }

    /// The machines the soak's events name (each once, in order; host events name none).
    pub fn machines(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.events {
            let m = match &e.action {
                Action::Guest { machine, .. } | Action::Fault { machine, .. } => machine.as_str(),
                Action::Host { .. } => continue,
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }
}
