//! Run ids and run tokens: an id no run in the history ever had, and the random token each
//! run gets as `LOOPER_RUN_TOKEN` (good for its hand-off only), remembered for the newest
//! runs so that a run that just ended is still known by its token.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Run tokens remembered, so that a run that just ended is still known as a run.
const RECENT_TOKENS: usize = 64;

/// Run ids and fallback randomness: splitmix64 over a random seed, each id mixed with
/// fresh bytes from the kernel, so that the ids an agent can read in the history tell
/// nothing of the next one (a hand-off naming a run not started yet could be taken as
/// that run's).
pub struct Ids {
    stream: AtomicU64,
    /// Whether each id takes fresh kernel randomness (off only in tests, to replay ids).
    fresh: bool,
}

impl Ids {
    pub fn new(seed: u64) -> Ids {
        Ids {
            stream: AtomicU64::new(seed),
            fresh: true,
        }
    }

    /// A stream that replays: the same seed, the same ids.
    #[cfg(test)]
    pub fn replayable(seed: u64) -> Ids {
        Ids {
            stream: AtomicU64::new(seed),
            fresh: false,
        }
    }

    fn next_random(&self) -> u64 {
        self.stream
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
    }

    /// Eight hex digits; [`crate::state::registry::Registry::new_id`] skips those the history
    /// held.
    pub fn next_id(&self) -> String {
        let mut z = self.next_random();
        let mut fresh = [0u8; 8];
        if self.fresh && crate::os::sys::random_bytes(&mut fresh).is_ok() {
            z ^= u64::from_le_bytes(fresh);
        }
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:08x}", (z ^ (z >> 31)) >> 32)
    }

    /// For tests: where the stream stands, and setting it back there.
    #[cfg(test)]
    pub fn position(&self) -> u64 {
        self.stream.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn rewind(&self, to: u64) {
        self.stream.store(to, Ordering::Relaxed)
    }
}

/// A run's token and whose it is.
struct RunToken {
    token: String,
    run_id: String,
    workspace: PathBuf,
}

/// The tokens of the newest runs, newest last.
#[derive(Default)]
pub struct Tokens(Mutex<VecDeque<RunToken>>);

impl Tokens {
    fn list(&self) -> std::sync::MutexGuard<'_, VecDeque<RunToken>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh random token for run `run_id` of `workspace`, remembered as that run's.
    /// Without kernel randomness: `ids`' stream, never a fixed value.
    pub fn issue(&self, run_id: &str, workspace: &Path, ids: &Ids) -> String {
        let token = crate::os::tokens::random_token()
            .unwrap_or_else(|| format!("{:016x}{:016x}", ids.next_random(), ids.next_random()));
        let mut list = self.list();
        list.push_back(RunToken {
            token: token.clone(),
            run_id: run_id.to_string(),
            workspace: workspace.to_path_buf(),
        });
        while list.len() > RECENT_TOKENS {
            list.pop_front();
        }
        token
    }

    /// Forgets run `run_id`'s token: its spawn failed, nobody holds it.
    pub fn forget(&self, run_id: &str) {
        self.list().retain(|t| t.run_id != run_id);
    }

    /// The run (id and workspace) whose token `offered` is, compared in constant time.
    pub fn run_of(&self, offered: &str) -> Option<(String, PathBuf)> {
        let mut found = None;
        for t in self.list().iter() {
            if crate::os::tokens::constant_time_eq(offered.as_bytes(), t.token.as_bytes()) {
                found = Some((t.run_id.clone(), t.workspace.clone()));
            }
        }
        found
    }

    /// The workspace run `run_id` was given its token for: a run being spawned is known by
    /// it before it is registered (its first hand-off may come that early).
    pub fn workspace_of(&self, run_id: &str) -> Option<PathBuf> {
        let list = self.list();
        let t = list.iter().rev().find(|t| t.run_id == run_id)?;
        Some(t.workspace.clone())
    }
}
