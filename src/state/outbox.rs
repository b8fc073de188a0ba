//! The announcements Zulip did not take (a hand-off's, during an outage), kept in
//! [`crate::state::loopfile`] across restarts, oldest first and at most [`OUTBOX_MAX`], and
//! who delivers them: one thread at a time, so that none goes twice.

use std::sync::{Mutex, MutexGuard, TryLockError};

use crate::state::loopfile::{LoopFile, Queued};

/// The most announcements kept for a Zulip that does not answer; the oldest go first.
pub const OUTBOX_MAX: usize = 50;

/// Who delivers the outbox now (not kept: a new Looper starts its own).
#[derive(Default)]
pub struct Delivery {
    /// Whether a thread is the outbox's deliverer.
    sender: Mutex<bool>,
    /// Held by whoever delivers queued messages now; holds whether the last try failed.
    delivering: Mutex<bool>,
}

/// The outbox, over the loop's file.
pub struct Outbox<'a> {
    pub(crate) file: &'a LoopFile,
    pub(crate) delivery: &'a Delivery,
}

impl Outbox<'_> {
    /// Keeps an announcement for later; the oldest goes when the queue is full.
    pub fn queue(&self, q: Queued) {
        self.file.change(|s| {
            s.outbox.push(q);
            let len = s.outbox.len();
            s.outbox.drain(..len.saturating_sub(OUTBOX_MAX));
        })
    }

    /// The oldest queued announcement.
    pub fn next(&self) -> Option<Queued> {
        self.file.read(|s| s.outbox.first().cloned())
    }

    /// Drops the oldest queued announcement, once delivered.
    pub fn delivered(&self, q: &Queued) {
        self.file.change(|s| {
            if s.outbox.first() == Some(q) {
                s.outbox.remove(0);
            }
        })
    }

    pub fn len(&self) -> usize {
        self.file.read(|s| s.outbox.len())
    }

    fn sender(&self) -> MutexGuard<'_, bool> {
        self.delivery
            .sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the outbox's delivery for one thread: `false` when one delivers it already,
    /// or nothing waits (looked at under the state's lock, as a message is queued).
    pub fn claim_sender(&self) -> bool {
        self.file.read(|s| {
            let mut sender = self.sender();
            if *sender || s.outbox.is_empty() {
                return false;
            }
            *sender = true;
            true
        })
    }

    /// The right to deliver queued messages, with whether the last try failed. `wait`:
    /// until whoever delivers now is done; else `None` when someone delivers now.
    pub fn delivery(&self, wait: bool) -> Option<MutexGuard<'_, bool>> {
        let delivering = &self.delivery.delivering;
        match wait {
            true => Some(delivering.lock().unwrap_or_else(|e| e.into_inner())),
            false => match delivering.try_lock() {
                Ok(g) => Some(g),
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            },
        }
    }

    /// No thread delivers the outbox (its start failed).
    pub fn force_release_sender(&self) {
        *self.sender() = false;
    }

    /// The delivering thread may end: `true` when nothing waits (looked at under the same
    /// lock a new message is queued under, so that none is left behind).
    pub fn release_sender(&self) -> bool {
        self.file.read(|s| {
            let mut sender = self.sender();
            if s.outbox.is_empty() {
                *sender = false;
                return true;
            }
            false
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stamp;

    #[test]
    fn the_outbox_is_bounded_and_kept() {
        let d = std::env::temp_dir().join(format!("looper-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let (file, delivery) = (LoopFile::open(&d).unwrap().file, Delivery::default());
        let outbox = Outbox {
            file: &file,
            delivery: &delivery,
        };
        for i in 0..OUTBOX_MAX + 5 {
            outbox.queue(Queued {
                content: format!("m{i}"),
                queued_at: Stamp::now(),
                request_id: String::new(),
            });
        }
        let again = LoopFile::open(&d).unwrap().file;
        let outbox = Outbox {
            file: &again,
            delivery: &delivery,
        };
        assert_eq!(outbox.len(), OUTBOX_MAX);
        let first = outbox.next().unwrap();
        assert_eq!(first.content, "m5");
        outbox.delivered(&first);
        assert_eq!(outbox.next().unwrap().content, "m6");
    }
}
