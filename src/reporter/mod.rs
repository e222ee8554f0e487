//! Reporters: each turns the run's [`Event`](crate::events::Event)s into one output.
//! `tap.rs` writes TAP to stdout; `live.rs` streams test output to stderr. The CLI fans
//! every event out to all active reporters; no reporter looks at scheduler internals.

pub mod json;
pub mod live;
pub mod tap;

use crate::events::Event;

/// A consumer of run events. A write error is returned so the run can stop reporting.
pub trait Reporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()>;
}
