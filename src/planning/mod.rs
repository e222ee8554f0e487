//! Planning, the stage between check files and the scheduler: which tests run and in what
//! order (`plan.rs`: filters, excludes, the matrix, skip/only by TEST_OS, several TEST_OS as an
//! axis), which a change affects (`affected.rs`), named CI scenarios (`scenario.rs`), how long
//! each will take (`estimate.rs`) and a shard's part of the suite (`shard.rs`). Plain data in,
//! plain data out: nothing here boots or runs anything.

pub mod affected;
pub mod estimate;
pub mod plan;
pub mod scenario;
pub mod shard;
