//! After the run: what is kept of it. The outcome store ([`store`]: every attempt of every
//! run in one SQLite file), the rows a run's events become ([`record`], the same for a live
//! run and an imported stream), what later runs read back from it (the durations that order
//! and shard tests, [`durations`]), the flakiness statistics computed from it ([`stats`])
//! and known issues' occurrences ([`known`]), where a failure rate changed along commits
//! ([`changepoint`], for `vmcheck hunt`). A live run writes on a thread of its own
//! ([`writer`]). Recorded event streams are read and combined into one run's by [`merge`]
//! (`vmcheck merge`, `vmcheck report`, `results import`).

pub mod changepoint;
pub mod durations;
pub mod known;
pub mod merge;
pub mod record;
pub mod stats;
pub mod store;
pub mod writer;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
