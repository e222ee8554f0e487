//! The runner: schedules a test plan onto machines, runs attempts, applies policy and emits
//! events. `state.rs` owns all run state and decides (a state machine without I/O);
//! `dispatcher.rs` drives it; `attempt.rs` runs one attempt, with `output.rs` (its output,
//! bounded), `host.rs` (host scripts and executable check files' tests, with `topology.rs`
//! for the machines they are told about), `control.rs` (their protocol with the runner),
//! `restore.rs` (a shared machine's paths saved and put back),
//! `artifacts.rs` (what a failed attempt leaves) and `sit.rs` (`--sit`); `ledger.rs` is the
//! capacity accounting; `order.rs` decides what runs next from estimated durations;
//! `pools.rs` names the kinds of global machine a run boots; `boots.rs` paces cold boots.

pub mod artifacts;
pub mod attempt;
pub mod autopkgtest;
pub mod bodies;
pub mod boots;
pub mod control;
pub mod dispatcher;
pub mod fresh;
pub mod guest_log;
pub mod host;
pub mod journal;
pub mod kept;
pub mod ledger;
pub mod net;
pub mod order;
pub mod outcomes;
pub mod output;
pub mod pools;
pub mod restore;
pub mod sit;
pub mod soak;
pub mod state;
pub mod topology;

/// The `image` of a [`MachineReady`](crate::events::Event::MachineReady) event for an
/// existing host (`--machine`), which was not booted.
pub const EXISTING_HOST: &str = "existing host";
