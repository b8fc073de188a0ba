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
    /// `workspace` → daily budget → when its last pause ended: the runs that paused it
    /// count no more (a restart in another time zone must not count that day again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub day_ended: BTreeMap<String, BTreeMap<HoldReason, Stamp>>,
    /// Autopoll's crash back-off, so that a restart does not forget a crash loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<SavedBackoff>,
}

/// A crash loop as the file keeps it: the crashes in a row and when the back-off ends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedBackoff {
    pub crashes: u32,
    pub until: Option<Stamp>,
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
    /// Held while writing: the version last written, and whether the last write failed.
    writer: Mutex<(u64, bool)>,
}

/// What opening the loop's file found.
pub struct Loaded {
    pub file: LoopFile,
    /// A file that was no state of Looper's, set aside here (with why).
    pub corrupt: Option<(PathBuf, String)>,
}

/// A workspace as the file's keys name it.
pub fn key(workspace: &Path) -> String {
    workspace.to_string_lossy().into_owned()
}

impl LoopFile {
    /// Loads `loop-state.json` from `dir`; a missing file is a fresh loop. `Err`: it is there
    /// but cannot be read (a directory, no permission): Looper must not start as if every
    /// pause and finish had never been. A file that is no state of Looper's (truncated,
    /// garbage, empty) is set aside as `loop-state.json.corrupt-<time>` and said
    /// ([`Loaded::corrupt`]): the loop waits for the operator rather than restart a finished
    /// loop.
    pub fn open(dir: &Path) -> Result<Loaded, String> {
        let path = dir.join(FILE_NAME);
        let cannot = |e: String| {
            format!(
                "{} cannot be read ({e}): move it away or give it back to Looper's user; Looper does not start without the loop's pauses and finishes",
                path.display()
            )
        };
        let text = match crate::os::paths::read_named_text(&path, MAX_BYTES) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
                ) && path.is_file() =>
            {
                // Not UTF-8, or too large: no state of Looper's.
                Some(String::from("\u{0}"))
            }
            Err(e) => return Err(cannot(e.to_string())),
        };
        let mut corrupt = None;
        let saved = match text.map(|t| serde_json::from_str::<Saved>(&t)) {
            None => Saved::default(),
            Some(Ok(saved)) => saved,
            Some(Err(e)) => {
                let aside = path.with_extension(format!(
                    "json.corrupt-{}",
                    chrono::Local::now().format("%Y%m%d-%H%M%S")
                ));
                std::fs::rename(&path, &aside).map_err(|e| cannot(e.to_string()))?;
                let why = e.to_string();
                log::error!(
                    "loop_state.corrupt path={} kept_as={} error={} hint=\"pauses, finishes and queued messages may be lost: autopoll starts nothing until the operator resumes (looper resume)\"",
                    Q(&path.to_string_lossy()),
                    Q(&aside.to_string_lossy()),
                    Q(&why)
                );
                corrupt = Some((aside, why));
                Saved::default()
            }
        };
        Ok(Loaded {
            file: LoopFile {
                path,
                current: Mutex::new(Current { saved, version: 0 }),
                writer: Mutex::new((0, false)),
            },
            corrupt,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&Saved) -> T) -> T {
        f(&self.lock().saved)
    }

    /// Changes the state in memory, then, when anything changed, writes it (outside the
    /// state's lock). A write that fails leaves the state unsaved, to be written again by
    /// [`LoopFile::retry`].
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
        let _ = self.save(snapshot.0, snapshot.1);
        out
    }

    /// [`LoopFile::change`] for what a request asks (a finish, a resume): it is written
    /// before the answer, or not made at all (`Err`: why it could not be written). Readers
    /// wait for that one write.
    pub fn change_or_refuse<T>(&self, f: impl FnOnce(&mut Saved) -> T) -> Result<T, String> {
        let mut current = self.lock();
        let before = current.saved.clone();
        let out = f(&mut current.saved);
        if current.saved == before {
            return Ok(out);
        }
        current.version += 1;
        match self.save(current.saved.clone(), current.version) {
            Ok(()) => Ok(out),
            Err(e) => {
                current.saved = before;
                Err(e)
            }
        }
    }

    /// Writes the state again if a write failed; whether it is saved now.
    pub fn retry(&self) -> bool {
        let (saved, version) = {
            let current = self.lock();
            (current.saved.clone(), current.version)
        };
        if self.writer.lock().unwrap_or_else(|e| e.into_inner()).0 >= version {
            return true;
        }
        self.save(saved, version).is_ok()
    }

    /// Whether the state in memory is the one on disk.
    pub fn saved(&self) -> bool {
        let version = self.lock().version;
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).0 >= version
    }

    /// Writes `saved` (state `version`) unless a newer one was written meanwhile: a new
    /// file beside the old, synced, renamed over it.
    fn save(&self, saved: Saved, version: u64) -> Result<(), String> {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if writer.0 >= version {
            return Ok(());
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
            Ok(()) => {
                if writer.1 {
                    log::info!("loop_state.written after=write_failed");
                }
                *writer = (version, false);
                Ok(())
            }
            Err(e) => {
                writer.1 = true;
                let _ = std::fs::remove_file(&tmp);
                log::error!(
                    "loop_state.write_failed path={} error={} hint=\"written again at the next tick\"",
                    Q(&self.path.to_string_lossy()),
                    Q(&e.to_string())
                );
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HoldState;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("looper-loopfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn finish(s: &mut Saved) {
        let hold = Hold::new(
            HoldState::Finished,
            HoldReason::LoopDone,
            "d".into(),
            None,
            None,
        );
        s.holds.insert("/w".into(), hold);
    }

    /// A write that fails (the directory is gone, as a full disk would fail it) leaves a
    /// change unsaved until a retry writes it; a request's change is refused and undone.
    #[test]
    fn a_failed_write_is_retried_or_refused() {
        let d = dir("retry");
        let file = LoopFile::open(&d).unwrap().file;
        std::fs::remove_dir_all(&d).unwrap();
        file.change(finish);
        assert!(!file.saved());
        assert!(!file.retry());
        let refused = file.change_or_refuse(|s| s.holds.clear());
        assert!(refused.is_err());
        assert_eq!(
            file.read(|s| s.holds.len()),
            1,
            "a refused change is undone"
        );
        std::fs::create_dir_all(&d).unwrap();
        assert!(file.retry() && file.saved());
        let again = LoopFile::open(&d).unwrap().file;
        assert_eq!(again.read(|s| s.holds.len()), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A file that is no state of Looper's is set aside, never read as empty and written
    /// over; one that cannot be read stops the start.
    #[test]
    fn a_corrupt_file_is_set_aside_and_an_unreadable_one_refused() {
        for junk in [&b"{\"holds\": {\"/w\": "[..], b"", b"\xff\xfe garbage"] {
            let d = dir("corrupt");
            std::fs::write(d.join(FILE_NAME), junk).unwrap();
            let loaded = LoopFile::open(&d).unwrap();
            let (aside, _why) = loaded.corrupt.expect("set aside");
            assert_eq!(std::fs::read(&aside).unwrap(), junk);
            assert!(!d.join(FILE_NAME).exists());
            std::fs::remove_dir_all(&d).unwrap();
        }
        let d = dir("unreadable");
        std::fs::create_dir(d.join(FILE_NAME)).unwrap();
        let err = LoopFile::open(&d).err().expect("refused");
        assert!(
            err.contains("loop-state.json") && err.contains("cannot be read"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
