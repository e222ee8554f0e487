//! The runner: schedules a test plan onto machines, runs attempts, applies policy and emits
//! events. `state.rs` owns all run state and decides (a state machine without I/O);
//! `dispatcher.rs` drives it; `attempt.rs` runs one attempt; `control.rs`
//! serves the `vm` helper of host scripts; `ledger.rs` is the capacity accounting; `order.rs` decides
//! what runs next from estimated durations; `boots.rs` paces cold boots.

pub mod artifacts;
pub mod attempt;
pub mod boots;
pub mod control;
pub mod dispatcher;
pub mod journal;
pub mod ledger;
pub mod order;
pub mod state;

/// The `image` of a [`MachineReady`](crate::events::Event::MachineReady) event for an
/// existing host (`--machine`), which was not booted.
pub const EXISTING_HOST: &str = "existing host";
