//! Reporters: each turns the run's [`Event`]s into one output.
//! `tap.rs` writes TAP to stdout; `json.rs` JSON lines; `junit.rs` JUnit XML; `live.rs`
//! streams test output to stderr; `progress.rs` shows progress on stderr; `summary.rs`
//! prints the end-of-run summary; `status.rs` keeps a JSON status file up to date; `html.rs` writes the HTML report. The CLI fans every event out to all active reporters; no
//! reporter looks at scheduler internals.

pub mod autopkgtest;
pub mod file;
pub mod html;
pub mod json;
pub mod junit;
pub mod live;
pub mod progress;
pub mod status;
pub mod summary;
pub mod tap;
pub mod text;

use crate::events::Event;

/// A consumer of run events. A write error is returned so the run can stop reporting.
pub trait Reporter {
    fn report(&mut self, event: &Event) -> std::io::Result<()>;
}

/// A reporter that something else must also reach (the TAP reporter, which a forced exit
/// closes from the signal task).
impl<R: Reporter> Reporter for std::sync::Arc<std::sync::Mutex<R>> {
    fn report(&mut self, event: &Event) -> std::io::Result<()> {
        self.lock().unwrap_or_else(|e| e.into_inner()).report(event)
    }
}
