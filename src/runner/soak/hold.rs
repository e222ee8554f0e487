//! A soak's machines, shared by its concurrent executions: each check, `vm` request and
//! held fault takes a machine for reading ([`Held::hold`]); a reboot takes it whole, after
//! telling everything that runs on it to stop ([`Held::reboot`]). So nothing runs on a
//! machine while it reboots: what is due on it then waits until it is back, and what ran on
//! it when the reboot began ends as `interrupted`, not as a failure.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, watch};

/// One machine of a soak (`T`: the attempt's `Named`).
pub(in crate::runner) struct Held<'m, T> {
    pub name: String,
    lock: RwLock<&'m mut T>,
    /// Reboots of this machine waiting or under way.
    reboots: watch::Sender<u32>,
}

/// A machine held for reading, and the signal that a reboot wants it.
pub(in crate::runner) struct Hold<'h, 'm, T> {
    guard: RwLockReadGuard<'h, &'m mut T>,
    reboots: watch::Receiver<u32>,
}

impl<'m, T> Held<'m, T> {
    pub fn new(name: &str, machine: &'m mut T) -> Held<'m, T> {
        Held {
            name: name.to_owned(),
            lock: RwLock::new(machine),
            reboots: watch::channel(0).0,
        }
    }

    /// The machine, once no reboot of it waits or runs.
    pub async fn hold(&self) -> Hold<'_, 'm, T> {
        let mut reboots = self.reboots.subscribe();
        loop {
            let _ = reboots.wait_for(|n| *n == 0).await;
            let guard = self.lock.read().await;
            // A reboot that began while this waited for the lock goes first.
            if *reboots.borrow_and_update() == 0 {
                return Hold { guard, reboots };
            }
        }
    }

    /// The machine whole, for a reboot: what holds it is told to stop, and nothing new
    /// starts on it until the returned guard is dropped.
    pub async fn reboot(&self) -> Rebooting<'_, 'm, T> {
        self.reboots.send_modify(|n| *n += 1);
        // Counted down even if this future is dropped while it waits.
        let counted = Counted(&self.reboots);
        let guard = self.lock.write().await;
        Rebooting {
            guard,
            _counted: counted,
        }
    }
}

impl<T> Hold<'_, '_, T> {
    /// The machine, and what resolves when a reboot of it begins (the holder must then let
    /// go).
    pub fn parts(&mut self) -> (&T, impl std::future::Future<Output = ()> + Send + '_)
    where
        T: Sync,
    {
        let reboots = &mut self.reboots;
        (&self.guard, async move {
            let _ = reboots.wait_for(|n| *n > 0).await;
        })
    }
}

/// A machine taken whole for a reboot.
pub(in crate::runner) struct Rebooting<'h, 'm, T> {
    guard: RwLockWriteGuard<'h, &'m mut T>,
    _counted: Counted<'h>,
}

impl<T> Rebooting<'_, '_, T> {
    pub fn machine(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Counts a reboot down when it ends (after the lock is released: fields drop in order).
struct Counted<'h>(&'h watch::Sender<u32>);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_reboot_stops_holders_and_holds_new_ones_until_it_ends() {
        let mut machine = String::from("machine1");
        let held = Held::new("machine1", &mut machine);
        let mut first = held.hold().await;
        let reboot = held.reboot();
        tokio::pin!(reboot);
        // The reboot waits for the holder, which is told to stop.
        tokio::select! {
            _ = &mut reboot => panic!("took the machine while it was held"),
            _ = first.parts().1 => {}
        }
        drop(first);
        let mut rebooting = reboot.await;
        assert_eq!(rebooting.machine(), "machine1");
        // New holders wait until the reboot ends.
        let waiting = held.hold();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        drop(rebooting);
        let mut after = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("held once the reboot ended");
        // And are not told to stop by the reboot that ended.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), after.parts().1)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_reboot_given_up_while_it_waits_stops_nobody() {
        let mut machine = String::from("machine1");
        let held = Held::new("machine1", &mut machine);
        let first = held.hold().await;
        let _ = tokio::time::timeout(Duration::from_millis(20), held.reboot()).await;
        drop(first);
        let mut next = tokio::time::timeout(Duration::from_secs(5), held.hold())
            .await
            .expect("held");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), next.parts().1)
                .await
                .is_err()
        );
    }
}
