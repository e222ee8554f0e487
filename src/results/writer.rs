//! A run recording itself in the outcome store as it goes, on a thread of its own, so that
//! the run never waits for the disk or for another vmcheck holding the store's lock. A store
//! that cannot be opened or written (locked, corrupt, on a read-only disk) is one warning
//! line, and the run goes on unrecorded.

use super::record::{Fallback, Recorder, Source};
use super::store::Store;
use crate::events::Event;
use std::path::PathBuf;
use std::sync::mpsc;

/// The recording thread of a live run.
pub struct LiveStore {
    tx: Option<mpsc::Sender<Event>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LiveStore {
    /// Start recording into the store at `path`.
    pub fn start(path: PathBuf, fallback: Fallback) -> LiveStore {
        let (tx, rx) = mpsc::channel::<Event>();
        let thread = std::thread::Builder::new()
            .name("outcome-store".into())
            .spawn(move || {
                let mut store = match Store::open(&path) {
                    Ok(s) => s,
                    Err(e) => return warn(&e),
                };
                let mut recorder = Recorder::new(Source::Live, fallback);
                for event in rx {
                    if let Err(e) = recorder.record(&mut store, &event) {
                        return warn(&e);
                    }
                }
            })
            .ok();
        LiveStore {
            tx: thread.is_some().then_some(tx),
            thread,
        }
    }

    /// Record nothing (the store could not be read: already warned about).
    pub fn disabled() -> LiveStore {
        LiveStore {
            tx: None,
            thread: None,
        }
    }

    /// Record `event` (only the events that add rows are passed on).
    pub fn send(&self, event: &Event) {
        if let Some(tx) = &self.tx
            && matches!(
                event,
                Event::RunStarted { .. } | Event::MachineReady { .. } | Event::TestFinished { .. }
            )
        {
            let _ = tx.send(event.clone());
        }
    }

    /// Wait until everything sent is written.
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn warn(e: &dyn std::fmt::Display) {
    crate::say!("vmcheck: warning: outcome store {e}; the rest of this run is not recorded");
}
