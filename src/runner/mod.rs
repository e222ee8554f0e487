//! The runner: schedules a test plan onto machines, runs attempts, applies policy and emits
//! events. `dispatcher.rs` owns all run state; `attempt.rs` runs one attempt; `control.rs`
//! serves the `vm` helper of host scripts; `ledger.rs` is the capacity accounting.

pub mod attempt;
pub mod control;
pub mod dispatcher;
pub mod journal;
pub mod ledger;

/// The `image` of a [`MachineReady`](crate::events::Event::MachineReady) event for an
/// existing host (`--machine`), which was not booted.
pub const EXISTING_HOST: &str = "existing host";
