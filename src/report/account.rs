//! The account's rate-limit windows, as the newest codex session on this machine saw them.
//! They describe the account, not a run: every codex session of the user (this Looper's
//! runs, another Looper's, the owner's own codex) writes the same figures into its session
//! file's `token_count` events, so the newest such event under `$CODEX_HOME/sessions` is
//! the freshest view.
//!
//! Bounded like every reader here: three days' folders, at most [`MAX_ENTRIES`] names each,
//! the [`MAX_FILES`] newest files of this user only (not links, not FIFOs), and the last
//! [`TAIL_BYTES`] of each.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;

use super::RateLimits;

/// Names looked at in one day's folder.
const MAX_ENTRIES: usize = 4096;
/// Files read, newest first, until one holds the figures.
const MAX_FILES: usize = 8;
/// How much of a file's end is read.
const TAIL_BYTES: u64 = 256 * 1024;

/// The account's windows at an instant.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// When codex wrote them, Unix seconds (the event's time, else the file's).
    pub at: i64,
    pub limits: RateLimits,
}

/// The newest figures under `codex_home` in the folders of `today` and the two days before,
/// from files of user `uid` only.
pub fn newest(codex_home: &Path, today: NaiveDate, uid: u32) -> Option<Seen> {
    // By modification time to the nanosecond: two sessions often end in one second.
    let mut files: Vec<((i64, i64), PathBuf)> = Vec::new();
    for back in 0..3 {
        let Some(day) = today.checked_sub_days(chrono::Days::new(back)) else {
            continue;
        };
        let dir = codex_home
            .join("sessions")
            .join(day.format("%Y/%m/%d").to_string());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.take(MAX_ENTRIES).flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("rollout-") && name.ends_with(".jsonl")) {
                continue;
            }
            // `DirEntry::metadata` does not follow a link: a link is no file of ours.
            match e.metadata() {
                Ok(m) if m.is_file() && m.uid() == uid => {
                    files.push(((m.mtime(), m.mtime_nsec()), e.path()))
                }
                _ => {}
            }
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    files
        .into_iter()
        .take(MAX_FILES)
        .find_map(|((mtime, _), path)| last_figures(&path, mtime))
}

/// The last `token_count` event with rate limits in the end of the file at `path`.
fn last_figures(path: &Path, mtime: i64) -> Option<Seen> {
    let text = super::read_bounded_tail(path, TAIL_BYTES)?;
    text.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let payload = &v["payload"];
        if payload["type"] != "token_count" {
            return None;
        }
        let limits = super::rate_limits(&payload["rate_limits"])?;
        let at = v["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(mtime, |t| t.timestamp());
        Some(Seen { at, limits })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Window;

    fn event(percent: f64, timestamp: Option<&str>) -> String {
        let mut v = serde_json::json!({"type": "event_msg", "payload": {
            "type": "token_count",
            "rate_limits": {"secondary": {"used_percent": percent, "window_minutes": 10080, "resets_at": 2_000_000_000}}}});
        if let Some(t) = timestamp {
            v["timestamp"] = serde_json::json!(t);
        }
        v.to_string()
    }

    fn set_mtime(path: &Path, at: std::time::SystemTime) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(at).unwrap();
    }

    #[test]
    fn the_newest_file_of_ours_with_figures_speaks() {
        let home = std::env::temp_dir().join(format!("looper-account-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let day = |d: u32| home.join(format!("sessions/2026/12/{d:02}"));
        for d in [5, 7] {
            std::fs::create_dir_all(day(d)).unwrap();
        }
        let me = crate::os::procs::current_uid();
        assert_eq!(newest(&home, today, me), None);
        // Older: two days ago. Newer: today, the last event counts; a file without figures
        // (a run on a model that sends none) is passed over.
        let older = day(5).join("rollout-a-1.jsonl");
        std::fs::write(&older, event(10.0, None)).unwrap();
        let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        set_mtime(&older, earlier);
        let newer = format!(
            "{}\n{}\nnot json\n",
            event(20.0, None),
            event(30.0, Some("2026-12-07T10:00:00.000Z"))
        );
        std::fs::write(day(7).join("rollout-b-2.jsonl"), newer).unwrap();
        let seen = newest(&home, today, me).expect("figures");
        assert_eq!(seen.at, 1_796_637_600);
        assert_eq!(
            seen.limits.secondary,
            Some(Window {
                used_percent: 30.0,
                window_minutes: Some(10080),
                resets_at: Some(2_000_000_000)
            })
        );
        // A file with no figures that is newer changes nothing.
        let empty = day(7).join("rollout-c-3.jsonl");
        std::fs::write(&empty, "{}\n").unwrap();
        set_mtime(
            &empty,
            std::time::SystemTime::now() + std::time::Duration::from_secs(60),
        );
        assert_eq!(newest(&home, today, me).unwrap().limits, seen.limits);
        // Another user's file, or a link, is not read.
        assert_eq!(newest(&home, today, me + 1), None);
        std::fs::remove_file(day(7).join("rollout-b-2.jsonl")).unwrap();
        std::os::unix::fs::symlink(
            day(5).join("rollout-a-1.jsonl"),
            day(7).join("rollout-d-4.jsonl"),
        )
        .unwrap();
        let seen = newest(&home, today, me).expect("the older file's");
        assert_eq!(seen.limits.secondary.unwrap().used_percent, 10.0);
        let _ = std::fs::remove_dir_all(&home);
    }
}
