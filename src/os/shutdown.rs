//! The shutdown flag: set once by the signal thread, waited on by every long wait, so that
//! nothing sleeps through a shutdown.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A flag that long waits can be woken from.
#[derive(Default)]
pub struct Shutdown {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    pub fn trigger(&self) {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `limit`; true when shutdown was asked for meanwhile.
    pub fn wait(&self, limit: Duration) -> bool {
        let set = self.flag.lock().unwrap_or_else(|e| e.into_inner());
        let (set, _) = self
            .cv
            .wait_timeout_while(set, limit, |set| !*set)
            .unwrap_or_else(|e| e.into_inner());
        *set
    }
}
