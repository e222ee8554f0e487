//! Cancellation: SIGINT, SIGTERM and SIGHUP become one [`Cancel`] token that every long
//! operation (image builds, boots, commands) watches, so that each cleans up after itself.
//!
//! A first signal cancels; a second one of any kind exits at once with
//! [`crate::exit_codes::INTERRUPTED`], after the [`at_forced_exit`] hooks have closed the
//! reports (TAP stays valid). Even then no qemu outlives vmcheck (its children die with it
//! through `PR_SET_PDEATHSIG`), and leftover run directories are swept by the next vmcheck
//! (see `machine::rundir`). Code cancels too, with a reason ([`Cancel::stop`]): a report
//! that cannot be written stops the run.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Why code cancelled ([`Cancel::stop`]).
    message: Mutex<Option<String>>,
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

    /// Cancel from code, saying why (`cannot write the JUnit report …`); the first reason
    /// to cancel is the one that stays.
    pub fn stop(&self, why: impl Into<String>) {
        let mut message = self.inner.message.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_cancelled() {
            *message = Some(why.into());
        }
        drop(message);
        self.cancel(-1);
    }

    /// Why the run was cancelled, for reports: `interrupted by SIGINT`, or the reason
    /// given to [`Cancel::stop`].
    pub fn describe(&self) -> String {
        if let Some(s) = self.signal() {
            return format!(
                "interrupted by {}",
                nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str())
                    .unwrap_or("a signal")
            );
        }
        self.stop_reason().unwrap_or_else(|| "cancelled".into())
    }

    /// The reason given to [`Cancel::stop`], if code stopped the run.
    pub fn stop_reason(&self) -> Option<String> {
        let message = self.inner.message.lock().unwrap_or_else(|e| e.into_inner());
        message.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.reason.load(Ordering::SeqCst) != 0
    }

    /// The signal that cancelled, if a signal did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.inner.reason.load(Ordering::SeqCst)).filter(|s| *s > 0)
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

type Hook = Box<dyn Fn() + Send + Sync>;

static FORCED_EXIT_HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Run `hook` before vmcheck exits on a second signal (e.g. the TAP reporter's closing
/// lines). Hooks must not wait for long: they run on the way out.
pub fn at_forced_exit(hook: impl Fn() + Send + Sync + 'static) {
    FORCED_EXIT_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(hook));
}

fn forced_exit() -> ! {
    crate::say!("vmcheck: second signal, exiting now");
    for hook in FORCED_EXIT_HOOKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        hook();
    }
    std::process::exit(crate::exit_codes::INTERRUPTED);
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
                forced_exit();
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
        assert_eq!(c.describe(), "interrupted by SIGTERM");
        c.cancelled().await; // already cancelled: returns at once
        assert_eq!(c.describe(), "interrupted by SIGTERM");
    }

    #[test]
    fn the_first_reason_to_stop_stays() {
        let c = Cancel::new();
        assert_eq!(c.describe(), "cancelled");
        c.stop("cannot write x.xml: disk full");
        c.stop("later");
        assert!(c.is_cancelled());
        assert_eq!(c.signal(), None);
        assert_eq!(c.describe(), "cannot write x.xml: disk full");
    }
}
