//! How long ago a file last changed, on the monotonic clock: what the hung-run check and
//! autopoll's quiet-logs rule ask. A file's time is the wall clock's, which jumps (NTP, a
//! suspended laptop, an operator's `date -s`); compared with the wall clock now it made
//! every run look hung after a jump forward and held autopoll back after a jump back.
//! Here a change (the file's size or time differs from the last look) is dated on the
//! monotonic clock: at most as long before this look as the wall clock says, never before
//! the previous look, never in the future.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// The most files remembered (the run logs in use and the newest log of a directory).
const REMEMBERED: usize = 256;

/// What was seen of one file.
#[derive(Clone, Copy)]
struct Seen {
    size: u64,
    modified: SystemTime,
    /// When it changed, as well as can be told.
    changed: Instant,
    /// The last look at it.
    looked: Instant,
}

/// The files looked at, and when each last changed.
#[derive(Default)]
pub struct Freshness {
    seen: Mutex<HashMap<PathBuf, Seen>>,
}

impl Freshness {
    /// How long ago `path` last changed, at most `at_most` (a run's age: its log is not
    /// older than the run for this purpose). `None`: it cannot be read.
    pub fn quiet(&self, path: &Path, at_most: Option<Duration>) -> Option<Duration> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?;
        let size = meta.len();
        let now = Instant::now();
        // How long ago the wall clock says it changed (0 when its time is in the future).
        let wall = SystemTime::now()
            .duration_since(modified)
            .unwrap_or(Duration::ZERO);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match seen.get(path).copied() {
            Some(s) if s.size == size && s.modified == modified => Seen { looked: now, ..s },
            Some(s) => Seen {
                size,
                modified,
                // Changed since the last look: not before it.
                changed: now - wall.min(now - s.looked),
                looked: now,
            },
            None => {
                let back = at_most.map_or(wall, |m| wall.min(m));
                Seen {
                    size,
                    modified,
                    changed: now.checked_sub(back).unwrap_or(now),
                    looked: now,
                }
            }
        };
        if seen.len() >= REMEMBERED && !seen.contains_key(path) {
            let oldest = seen
                .iter()
                .min_by_key(|(_, s)| s.looked)
                .map(|(p, _)| p.clone());
            if let Some(p) = oldest {
                seen.remove(&p);
            }
        }
        seen.insert(path.to_path_buf(), entry);
        let quiet = now - entry.changed;
        Some(at_most.map_or(quiet, |m| quiet.min(m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, t: SystemTime) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.set_modified(t).unwrap();
    }

    /// A file's time that jumps (as the wall clock would) moves the answer no further than
    /// the time between two looks; a file dated in the future changed "just now".
    #[test]
    fn a_wall_clock_jump_is_bounded_by_the_time_between_looks() {
        let dir = std::env::temp_dir().join(format!("looper-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "a").unwrap();
        let f = Freshness::default();
        // Written an hour ago by the wall clock, but the run is ten seconds old.
        set_mtime(&path, SystemTime::now() - Duration::from_secs(3600));
        let q = f.quiet(&path, Some(Duration::from_secs(10))).unwrap();
        assert!(q <= Duration::from_secs(10), "{q:?}");
        // It changes, dated a day back (a jump): changed since the last look, no earlier.
        std::fs::write(&path, "ab").unwrap();
        set_mtime(&path, SystemTime::now() - Duration::from_secs(86400));
        let q = f.quiet(&path, None).unwrap();
        assert!(q < Duration::from_secs(5), "{q:?}");
        // Dated in the future (a jump back): it changed just now.
        std::fs::write(&path, "abc").unwrap();
        set_mtime(&path, SystemTime::now() + Duration::from_secs(3600));
        let q = f.quiet(&path, None).unwrap();
        assert!(q < Duration::from_secs(1), "{q:?}");
        // Unchanged: the monotonic clock counts on, whatever the wall clock says.
        std::thread::sleep(Duration::from_millis(20));
        let later = f.quiet(&path, None).unwrap();
        assert!(later >= q + Duration::from_millis(20), "{later:?} {q:?}");
        assert!(f.quiet(&dir.join("missing"), None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
