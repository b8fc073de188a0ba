//! The one run guard shared by `/run`, the inbox and autopoll: whoever holds it sets up a
//! run (announce, stop, spawn, startup check). A hand-off from the very run being set up
//! (the agent called back during its startup check) waits for that setup instead of being
//! refused as busy, and gets the guard next — unless the operator waits too: the operator's
//! trigger waits for a hand-off's setup and goes first, so that a loop whose runs hand off
//! within their startup checks can always be stopped.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::os::shutdown::Shutdown;

/// How often a hand-off waiting for a run's setup looks at the shutdown flag.
const HANDOFF_POLL: Duration = Duration::from_millis(100);
/// How long past the end of a run's startup check a hand-off from it waits for the setup
/// to release the guard (answering is all that is left to do by then).
const HANDOFF_SLACK: Duration = Duration::from_secs(10);
/// How long the operator's trigger waits for a hand-off's setup before it is told busy.
const OPERATOR_WAIT: Duration = Duration::from_secs(30);

/// The guard's state: who sets up a run, and who waits for that setup to end.
#[derive(Default)]
struct State {
    /// Someone (a `/run`, an inbox request, autopoll) is setting up a run.
    held: bool,
    /// The run being set up, once it was spawned (during its startup check).
    setting_up: Option<String>,
    /// When that setup's startup check ends.
    setup_ends: Option<Instant>,
    /// Hand-offs from `setting_up` that wait for its setup to end.
    waiting: usize,
    /// The guard was released while hand-offs from this run waited: it is theirs next.
    reserved_for: Option<String>,
    /// The holder serves a run's hand-off.
    held_for_handoff: bool,
    /// The operator's triggers waiting for a hand-off's setup to end: they go first.
    operators_waiting: usize,
}

/// The run guard.
#[derive(Default)]
pub struct Guard {
    state: Mutex<State>,
    /// Notified whenever the guard is released.
    released: Condvar,
}

/// The guard, held: released on drop, panics included.
pub struct Held<'a>(&'a Guard);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut g = self.0.state();
        g.held = false;
        let setting_up = g.setting_up.take();
        g.setup_ends = None;
        g.held_for_handoff = false;
        if g.waiting > 0 && g.operators_waiting == 0 {
            g.reserved_for = setting_up;
        }
        drop(g);
        self.0.released.notify_all();
    }
}

impl Guard {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits at most `step` for the guard's release (or any change of its state).
    fn wait_released<'a>(
        &'a self,
        g: MutexGuard<'a, State>,
        step: Duration,
    ) -> MutexGuard<'a, State> {
        self.released
            .wait_timeout(g, step)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// The guard, unless someone else holds it (or it is promised to a hand-off).
    pub fn try_take(&self) -> Option<Held<'_>> {
        let mut g = self.state();
        if g.held || g.reserved_for.is_some() {
            return None;
        }
        g.held = true;
        Some(Held(self))
    }

    /// The guard for a trigger sent by run `from`: when `from` is the run whose setup holds
    /// the guard, waits for that setup to end instead of answering busy. `None`: busy, or
    /// shutdown.
    pub fn take_for_handoff(&self, from: &str, shutdown: &Shutdown) -> Option<Held<'_>> {
        let mut g = self.state();
        let mut waited = false;
        let taken = loop {
            let free = !g.held
                && g.reserved_for.as_deref().is_none_or(|r| r == from)
                && g.operators_waiting == 0;
            if free {
                g.held = true;
                g.held_for_handoff = true;
                g.reserved_for = None;
                break true;
            }
            let wait = g.held && g.setting_up.as_deref() == Some(from);
            let now = Instant::now();
            let deadline = g.setup_ends.unwrap_or(now) + HANDOFF_SLACK;
            if !wait || now >= deadline || shutdown.is_set() {
                break false;
            }
            if !waited {
                waited = true;
                g.waiting += 1;
            }
            g = self.wait_released(g, (deadline - now).min(HANDOFF_POLL));
        };
        if waited {
            g.waiting -= 1;
        }
        if !taken && g.waiting == 0 && g.reserved_for.as_deref() == Some(from) {
            g.reserved_for = None;
        }
        taken.then(|| Held(self))
    }

    /// The guard for the operator's trigger: at once when it is free; while a run's
    /// hand-off holds it (or is promised it), after that setup, before any other hand-off,
    /// waiting at most [`OPERATOR_WAIT`]. `None`: busy (another trigger of the operator's
    /// or autopoll sets up a run), or shutdown.
    pub fn take_for_operator(&self, shutdown: &Shutdown) -> Option<Held<'_>> {
        let deadline = Instant::now() + OPERATOR_WAIT;
        let mut g = self.state();
        let mut waited = false;
        let taken = loop {
            if !g.held && g.reserved_for.is_none() {
                g.held = true;
                break true;
            }
            let handoff = (g.held && g.held_for_handoff) || g.reserved_for.is_some();
            let now = Instant::now();
            if !handoff || now >= deadline || shutdown.is_set() {
                break false;
            }
            if !waited {
                waited = true;
                g.operators_waiting += 1;
                // A promise to a hand-off that has not taken the guard yet is void.
                if !g.held {
                    g.reserved_for = None;
                }
            }
            g = self.wait_released(g, (deadline - now).min(HANDOFF_POLL));
        };
        if waited {
            g.operators_waiting -= 1;
        }
        drop(g);
        if waited {
            // Hand-offs that stood aside for this one look again.
            self.released.notify_all();
        }
        taken.then(|| Held(self))
    }

    /// Marks `run_id` as the run whose setup the holder is doing, its startup check lasting
    /// `check` from now: hand-offs from it wait instead of being refused.
    pub fn setting_up(&self, run_id: &str, check: Duration) {
        let mut g = self.state();
        g.setting_up = Some(run_id.to_string());
        g.setup_ends = Some(Instant::now() + check);
    }

    pub fn held(&self) -> bool {
        self.state().held
    }

    /// Waits, at most `max`, while someone sets up a run: what can wait (the git of a run's
    /// report, the fingerprint of its start) leaves the machine to the spawn under way.
    pub fn wait_free(&self, max: Duration) {
        let deadline = Instant::now() + max;
        let mut g = self.state();
        while g.held {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self.wait_released(g, deadline - now);
        }
    }

    /// Hand-offs waiting for the setup now (for tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.state().waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_is_exclusive_until_dropped() {
        let g = Guard::default();
        let held = g.try_take().expect("free");
        assert!(g.try_take().is_none());
        drop(held);
        assert!(g.try_take().is_some());
    }

    /// The operator's trigger waits for a hand-off's setup and goes before the next
    /// hand-off, which is refused: a loop of runs that hand off within their startup checks
    /// can be stopped. Anyone else's trigger is busy at once.
    #[test]
    fn the_operator_goes_before_a_chain_of_handoffs() {
        let g = std::sync::Arc::new(Guard::default());
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let h1 = g.take_for_handoff("r0", &shutdown).expect("free");
        g.setting_up("r1", Duration::from_secs(5));
        // r1 hands off during its setup: it waits.
        let (b, s) = (g.clone(), shutdown.clone());
        let handoff = std::thread::spawn(move || b.take_for_handoff("r1", &s).is_some());
        while g.waiting() == 0 {
            std::thread::yield_now();
        }
        let (b, s) = (g.clone(), shutdown.clone());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let operator = std::thread::spawn(move || {
            let held = b.take_for_operator(&s);
            let _ = released.recv();
            held.is_some()
        });
        while g.state().operators_waiting == 0 {
            std::thread::yield_now();
        }
        assert!(g.try_take().is_none(), "autopoll is busy meanwhile");
        drop(h1);
        // While the operator holds the guard, the hand-off is told busy.
        assert!(
            !handoff.join().unwrap(),
            "the hand-off went before the operator"
        );
        release.send(()).unwrap();
        assert!(
            operator.join().unwrap(),
            "the operator did not get the guard"
        );
    }

    /// A hand-off from the run being set up waits for the guard and gets it before anyone
    /// else; a trigger from any other run is refused at once.
    #[test]
    fn a_handoff_from_the_run_being_set_up_waits_for_the_guard() {
        let g = std::sync::Arc::new(Guard::default());
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let setup = g.try_take().expect("free");
        g.setting_up("r1", Duration::from_secs(5));
        assert!(
            g.take_for_handoff("other", &shutdown).is_none(),
            "another run's hand-off waited"
        );
        let (b, s) = (g.clone(), shutdown.clone());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let held = b.take_for_handoff("r1", &s);
            let _ = released.recv();
            held.is_some()
        });
        while g.waiting() == 0 {
            std::thread::yield_now();
        }
        drop(setup);
        // Promised to the waiting hand-off (or taken by it): nobody else slips in.
        assert!(g.try_take().is_none(), "the guard went to someone else");
        release.send(()).unwrap();
        assert!(waiter.join().unwrap(), "the hand-off did not get the guard");
        assert!(!g.held());
        assert!(g.try_take().is_some());
    }
}
