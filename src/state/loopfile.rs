//! `loop-state.json` in the log directory: what the loop remembers across restarts — each
//! workspace's hold ([`crate::state::holds`]), the budgets an operator waived, the runs in a
//! row that made no progress, and the announcements Zulip did not take yet
//! ([`crate::state::outbox`]). One file, so that a change to both is saved at once.
//!
//! A change is made in memory under a lock and written after it (a new file beside the old,
//! synced, renamed over it), so that a reader — `/status`, the page — never waits for the
//! disk. Writes are serialized and never go backwards: a write that finds a newer state
//! written already does nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::model::{Hold, HoldReason, Stamp};
use crate::os::logging::Q;

/// The loop's state, in the log directory.
pub const FILE_NAME: &str = "loop-state.json";
/// The most of it read (a larger one is not Looper's).
const MAX_BYTES: u64 = 4 << 20;

/// An announcement waiting for Zulip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Queued {
    pub content: String,
    pub queued_at: Stamp,
    pub request_id: String,
}

/// What the file holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Saved {
    /// By workspace.
    #[serde(default)]
    pub holds: BTreeMap<String, Hold>,
    /// `workspace` → `reason` → until: a budget an operator ended, not applied again before
    /// it clears.
    #[serde(default)]
    pub waived: BTreeMap<String, BTreeMap<HoldReason, Stamp>>,
    /// `workspace` → the runs in a row that ended without progress.
    #[serde(default)]
    pub no_progress: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub outbox: Vec<Queued>,
}

/// The state and how far it was changed.
struct Current {
    saved: Saved,
    version: u64,
}

/// The file and its state in memory.
pub struct LoopFile {
    path: PathBuf,
    current: Mutex<Current>,
    /// Held while writing; holds the version last written.
    writer: Mutex<u64>,
}

/// A workspace as the file's keys name it.
pub fn key(workspace: &Path) -> String {
    workspace.to_string_lossy().into_owned()
}

impl LoopFile {
    /// Loads `loop-state.json` from `dir`; a missing file is a fresh loop, an unreadable one
    /// too (said in the log: an operator should know their pauses are gone).
    pub fn open(dir: &Path) -> LoopFile {
        let path = dir.join(FILE_NAME);
        let saved = match crate::os::paths::read_regular(&path, MAX_BYTES) {
            Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                log::error!(
                    "loop_state.unreadable path={} error={} hint=\"pauses and finishes were forgotten\"",
                    Q(&path.to_string_lossy()),
                    Q(&e.to_string())
                );
                Saved::default()
            }),
            None => Saved::default(),
        };
        LoopFile {
            path,
            current: Mutex::new(Current { saved, version: 0 }),
            writer: Mutex::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&Saved) -> T) -> T {
        f(&self.lock().saved)
    }

    /// Changes the state in memory, then, when anything changed, writes it (outside the
    /// state's lock).
    pub fn change<T>(&self, f: impl FnOnce(&mut Saved) -> T) -> T {
        let (out, snapshot) = {
            let mut current = self.lock();
            let before = current.saved.clone();
            let out = f(&mut current.saved);
            if current.saved == before {
                return out;
            }
            current.version += 1;
            (out, (current.saved.clone(), current.version))
        };
        self.save(snapshot.0, snapshot.1);
        out
    }

    /// Writes `saved` (state `version`) unless a newer one was written meanwhile: a new
    /// file beside the old, synced, renamed over it.
    fn save(&self, saved: Saved, version: u64) {
        let mut written = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if *written >= version {
            return;
        }
        let tmp = self.path.with_extension("json.new");
        let result = serde_json::to_vec_pretty(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let _ = std::fs::remove_file(&tmp);
                use std::io::Write;
                let mut f = crate::os::logging::create_new_log(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        match result {
            Ok(()) => *written = version,
            Err(e) => log::error!(
                "loop_state.write_failed path={} error={}",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string())
            ),
        }
    }
}
