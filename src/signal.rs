//! Cancellation: SIGINT, SIGTERM and SIGHUP become one [`Cancel`] token that every long
//! operation (image builds, boots, commands) watches, so that each cleans up after itself.
//!
//! A first signal cancels; a second one of any kind exits at once with
//! [`crate::exit_codes::INTERRUPTED`]. Even then no qemu outlives vmcheck (its children
//! die with it through `PR_SET_PDEATHSIG`), and leftover run directories are swept by the
//! next vmcheck (see `machine::rundir`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use tokio::sync::Notify;

/// A cancellation token, cheap to clone; cancelled at most once, by a signal or by code.
#[derive(Clone, Default, Debug)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default, Debug)]
struct Inner {
    /// The signal number that cancelled, or -1 for a cancel from code; 0 while not cancelled.
    reason: AtomicI32,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancel because of signal `signo` (or -1: for another reason).
    pub fn cancel(&self, signo: i32) {
        if self
            .inner
            .reason
            .compare_exchange(0, signo, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.inner.notify.notify_waiters();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.reason.load(Ordering::SeqCst) != 0
    }

    /// The signal that cancelled, if a signal did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.inner.reason.load(Ordering::SeqCst)).filter(|s| *s > 0)
    }

    /// Why, for reports: `interrupted by SIGINT`, or `cancelled` (by code).
    pub fn reason(&self) -> String {
        match self.signal() {
            Some(s) => format!(
                "interrupted by {}",
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal")
            ),
            None => "cancelled".into(),
        }
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.inner.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Route SIGINT, SIGTERM and SIGHUP to `cancel`. Must be called inside a tokio runtime.
pub fn install(cancel: &Cancel) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = [
        (libc::SIGINT, signal(SignalKind::interrupt())?),
        (libc::SIGTERM, signal(SignalKind::terminate())?),
        (libc::SIGHUP, signal(SignalKind::hangup())?),
    ];
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            let signo = {
                let [(a, sa), (b, sb), (c, sc)] = &mut streams;
                tokio::select! {
                    _ = sa.recv() => *a,
                    _ = sb.recv() => *b,
                    _ = sc.recv() => *c,
                }
            };
            if cancel.is_cancelled() {
                eprintln!("vmcheck: second signal, exiting now");
                std::process::exit(crate::exit_codes::INTERRUPTED);
            }
            cancel.cancel(signo);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_wakes_waiters_once() {
        let c = Cancel::new();
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.cancelled().await });
        tokio::task::yield_now().await;
        assert!(!c.is_cancelled());
        c.cancel(libc::SIGTERM);
        c.cancel(libc::SIGINT);
        waiter.await.unwrap();
        assert_eq!(c.signal(), Some(libc::SIGTERM));
        assert_eq!(c.reason(), "interrupted by SIGTERM");
        c.cancelled().await; // already cancelled: returns at once
    }
}
