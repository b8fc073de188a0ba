//! The account's rate-limit figures as Looper has seen them (`quota.jsonl` in the log
//! directory): enough to draw the use against the pace line and to extrapolate, kept across
//! restarts. Read from codex's session files ([`crate::report::account`]) when something
//! asks: autopoll's tick, a hand-off, a run's end.
//!
//! Observations, not answers: a line cut short by a crash, or one that is not Looper's, is
//! skipped (and said); a write that fails (a full disk) keeps the figure in memory only.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::report::account::Seen;

pub const FILE_NAME: &str = "quota.jsonl";
/// Figures kept: a week at one every five minutes.
const KEEP: usize = 2016;
/// Figures as they were are noted again after this long (a flat line is a fact too).
const NOTE_AGAIN_SECONDS: i64 = 600;
/// The most of the file read at start.
const LOAD_BYTES: u64 = 2 * 1024 * 1024;

/// The latest time a figure may carry: now (one dated later counts as seen now).
fn latest_believable() -> i64 {
    crate::model::Stamp::now().timestamp()
}

/// The figures seen, newest last.
pub struct Account {
    file: PathBuf,
    codex_home: Option<PathBuf>,
    inner: Mutex<Inner>,
}

struct Inner {
    seen: VecDeque<Seen>,
    /// Lines in the file, to know when to write it shorter.
    lines: usize,
    /// A write failed (said once until one works again).
    failing: bool,
}

impl Account {
    /// The figures kept in `dir`, read from the session files under `codex_home`.
    pub fn open(dir: &Path, codex_home: Option<PathBuf>) -> Account {
        let file = dir.join(FILE_NAME);
        let text = crate::report::read_bounded_tail(&file, LOAD_BYTES).unwrap_or_default();
        let (mut seen, mut skipped) = (VecDeque::new(), 0);
        let latest = latest_believable();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // A figure dated in the future (a clock once ahead) would hide every later one.
            match serde_json::from_str::<Seen>(line) {
                Ok(s) if s.at <= latest => seen.push_back(s),
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            log::warn!(
                "quota.history_skipped file={} lines={skipped} (not figures of Looper's, or dated in the future: left out)",
                file.display()
            );
        }
        let lines = seen.len() + skipped;
        while seen.len() > KEEP {
            seen.pop_front();
        }
        Account {
            file,
            codex_home,
            inner: Mutex::new(Inner {
                seen,
                lines,
                failing: false,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest figures, read from the session files now (a hand-off that comes a
    /// moment after its run's turn is judged by that turn's figures).
    pub fn refresh(&self) -> Option<Seen> {
        // Read without the lock: `/status` and `/quota` wait for no directory listing.
        let found = self.codex_home.as_deref().and_then(|home| {
            crate::report::account::newest(
                home,
                chrono::Local::now().date_naive(),
                crate::os::procs::current_uid(),
            )
        });
        // A figure dated in the future counts as seen now: later figures stay newer.
        let found = found.map(|mut s| {
            s.at = s.at.min(latest_believable());
            s
        });
        let mut inner = self.inner();
        if let Some(new) = found {
            let note = match inner.seen.back() {
                None => true,
                // Figures of the same second may differ (two sessions); older ones are
                // history already.
                Some(last) => {
                    (new.at >= last.at && new.limits != last.limits)
                        || new.at.saturating_sub(last.at) >= NOTE_AGAIN_SECONDS
                }
            };
            if note {
                self.note(&mut inner, new);
            }
        }
        inner.seen.back().cloned()
    }

    /// Every figure kept, oldest first.
    pub fn history(&self) -> Vec<Seen> {
        self.inner().seen.iter().cloned().collect()
    }

    fn note(&self, inner: &mut Inner, new: Seen) {
        let Ok(mut line) = serde_json::to_string(&new) else {
            return;
        };
        line.push('\n');
        inner.seen.push_back(new);
        if inner.seen.len() > KEEP {
            inner.seen.pop_front();
        }
        let written = if inner.lines + 1 > 2 * KEEP {
            self.rewrite(&inner.seen)
                .map(|()| inner.lines = inner.seen.len())
        } else {
            crate::state::history::append_whole(&self.file, line.as_bytes())
                .map(|_| inner.lines += 1)
        };
        match written {
            Ok(()) => inner.failing = false,
            Err(e) if !inner.failing => {
                inner.failing = true;
                log::warn!(
                    "quota.history_write_failed file={} error={} (figures kept in memory)",
                    self.file.display(),
                    crate::os::logging::Q(&e.to_string())
                );
            }
            Err(_) => {}
        }
    }

    /// The file, written again with the figures kept (beside it, then moved over it).
    fn rewrite(&self, seen: &VecDeque<Seen>) -> std::io::Result<()> {
        let mut text = String::new();
        for s in seen {
            if let Ok(line) = serde_json::to_string(s) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let tmp = self.file.with_extension("jsonl.new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = crate::os::logging::create_new_log(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.file)
    }
}
