//! Reporters: each turns the run's [`Event`](crate::events::Event)s into one output.
//! `tap.rs` writes TAP to stdout; `json.rs` JSON lines; `junit.rs` JUnit XML; `live.rs`
//! streams test output to stderr; `progress.rs` shows progress on stderr; `summary.rs`
//! prints the end-of-run summary; `status.rs` keeps a JSON status file up to date. The CLI fans every event out to all active reporters; no
//! reporter looks at scheduler internals.

pub mod json;
pub mod junit;
pub mod live;
pub mod progress;
pub mod status;
pub mod summary;
pub mod tap;

use crate::events::Event;

/// A consumer of run events. A write error is returned so the run can stop reporting.
pub trait Reporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()>;
}
