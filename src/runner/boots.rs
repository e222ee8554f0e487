//! Pacing cold boots: at most N virtual CPUs boot at once (default: one per host CPU, as
//! a booting guest keeps its vCPUs busy under TCG), so a burst of starts (the shared
//! machines at the beginning, several multi-machine tests) does not starve running tests
//! or make boots time out. Cockpit sleeps 15 s after each destructive start instead, which
//! also stops its loop.
//!
//! A boot waits for its permit in its own task: the dispatcher never waits, so it keeps
//! reaping finished tests and starting other work meanwhile.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared by every boot of a run; cloning shares the limit.
#[derive(Debug, Clone)]
pub struct BootGate {
    permits: Arc<Semaphore>,
    size: u32,
}

impl BootGate {
    /// Allow `vcpus` virtual CPUs to boot at once (at least 1).
    pub fn new(vcpus: u32) -> BootGate {
        let size = vcpus.max(1);
        BootGate {
            permits: Arc::new(Semaphore::new(size as usize)),
            size,
        }
    }

    /// Wait until a machine with `vcpus` CPUs may boot; it boots while the permit lives. A
    /// machine bigger than the whole limit waits for all of it.
    pub async fn enter(&self, vcpus: u32) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_many_owned(vcpus.clamp(1, self.size))
            .await
            .expect("the boot semaphore is never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn limits_booting_vcpus_and_never_deadlocks_on_big_machines() {
        let gate = BootGate::new(2);
        let a = gate.enter(1).await;
        let b = gate.enter(1).await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.enter(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a third boot waits");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a freed permit lets it boot")
            .unwrap();
        drop((b, c));
        // A 4-vCPU machine on a limit of 2 takes the whole limit rather than waiting forever.
        let big = tokio::time::timeout(Duration::from_secs(5), gate.enter(4))
            .await
            .expect("big machines boot alone");
        drop(big);
    }
}
