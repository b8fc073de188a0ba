//! What the loop remembers across restarts, in `loop-state.json` in the log directory: the
//! pauses and finishes of each workspace (with their reason and end), the budgets an
//! operator waived until they clear, the runs in a row that made no progress, and the
//! announcements Zulip did not take yet. Every change is written at once (a new file
//! renamed over the old), so a Looper restarted by systemd starts nothing a pause forbids.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Local};
use serde::{Deserialize, Serialize};

use crate::os::logging::Q;

/// The loop's state, in the log directory.
pub const FILE_NAME: &str = "loop-state.json";

/// The most announcements kept for a Zulip that does not answer; the oldest go first.
pub const OUTBOX_MAX: usize = 50;

/// Why a workspace's loop starts nothing by itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hold {
    /// `finished` or `paused`.
    pub state: String,
    /// `todo_done`, `loop_done`, `no_progress`, `max_runs_per_day`, `max_tokens_per_day`,
    /// `rate_limit_percent` or `usage_limit`.
    pub reason: String,
    /// For people: what happened, and what ends it.
    pub detail: String,
    pub since: String,
    /// When it ends by itself (RFC 3339); `None`: when an operator resumes the loop.
    pub until: Option<String>,
    /// The run that ended the loop or paused it.
    pub run_id: Option<String>,
}

impl Hold {
    pub fn new(
        state: &str,
        reason: &str,
        detail: String,
        until: Option<DateTime<Local>>,
        run_id: Option<&str>,
    ) -> Hold {
        Hold {
            state: state.into(),
            reason: reason.into(),
            detail,
            since: Local::now().to_rfc3339(),
            until: until.map(|u| u.to_rfc3339()),
            run_id: run_id.map(str::to_string),
        }
    }

    pub fn until(&self) -> Option<DateTime<Local>> {
        let until = self.until.as_deref()?;
        DateTime::parse_from_rfc3339(until)
            .ok()
            .map(|t| t.with_timezone(&Local))
    }

    /// Whether its time is over at `now`.
    pub fn over(&self, now: DateTime<Local>) -> bool {
        self.until().is_some_and(|u| u <= now)
    }

    /// A budget's pause: `429` for a hand-off, the others `409`.
    pub fn is_budget(&self) -> bool {
        matches!(
            self.reason.as_str(),
            "max_runs_per_day" | "max_tokens_per_day" | "rate_limit_percent" | "usage_limit"
        )
    }
}

/// An announcement waiting for Zulip.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Queued {
    pub content: String,
    pub queued_at: String,
    pub request_id: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct Saved {
    /// By workspace.
    #[serde(default)]
    holds: BTreeMap<String, Hold>,
    /// `workspace` → `reason` → until: a budget an operator ended, not applied again before
    /// it clears.
    #[serde(default)]
    waived: BTreeMap<String, BTreeMap<String, String>>,
    /// `workspace` → the runs in a row that ended without progress.
    #[serde(default)]
    no_progress: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    outbox: Vec<Queued>,
}

/// The loop's memory, shared by the threads.
pub struct LoopState {
    path: PathBuf,
    saved: Mutex<Saved>,
    /// Whether a thread delivers the outbox (not kept: a new Looper starts its own).
    sender: Mutex<bool>,
    /// Held by whoever delivers queued messages now (so that none goes twice); holds
    /// whether the last try failed.
    delivery: Mutex<bool>,
}

fn key(workspace: &Path) -> String {
    workspace.to_string_lossy().into_owned()
}

impl LoopState {
    /// Loads `loop-state.json` from `dir`; a missing file is a fresh loop, an unreadable one
    /// too (said in the log: an operator should know their pauses are gone).
    pub fn open(dir: &Path) -> LoopState {
        let path = dir.join(FILE_NAME);
        let saved = match crate::os::paths::read_regular(&path, 4 << 20) {
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
        LoopState {
            path,
            saved: Mutex::new(saved),
            sender: Mutex::new(false),
            delivery: Mutex::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Saved> {
        self.saved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the state: a new file beside the old, renamed over it.
    fn save(&self, saved: &Saved) {
        let tmp = self.path.with_extension("json.new");
        let written = serde_json::to_vec_pretty(saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let _ = std::fs::remove_file(&tmp);
                use std::io::Write;
                let mut f = crate::os::logging::create_new_log(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            log::error!(
                "loop_state.write_failed path={} error={}",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string())
            );
        }
    }

    fn change<T>(&self, f: impl FnOnce(&mut Saved) -> T) -> T {
        let mut saved = self.lock();
        let before = saved.clone();
        let out = f(&mut saved);
        if *saved != before {
            self.save(&saved);
        }
        out
    }

    /// The hold on `workspace` at `now`; one whose time is over ends here and is returned
    /// as the second value (for autopoll to say that the pause ended).
    pub fn hold_of(&self, workspace: &Path, now: DateTime<Local>) -> (Option<Hold>, Option<Hold>) {
        self.change(|s| match s.holds.get(&key(workspace)) {
            Some(h) if h.over(now) => (None, s.holds.remove(&key(workspace))),
            Some(h) => (Some(h.clone()), None),
            None => (None, None),
        })
    }

    /// Every hold, by workspace (for `/status`).
    pub fn holds(&self) -> Vec<(String, Hold)> {
        self.lock()
            .holds
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Holds `workspace`; `false` when the same reason held it already (not to be said
    /// again). A finish is never replaced by a pause.
    pub fn hold(&self, workspace: &Path, hold: Hold) -> bool {
        self.change(|s| {
            let k = key(workspace);
            match s.holds.get(&k) {
                Some(h) if h.reason == hold.reason => {
                    let mut h2 = h.clone();
                    h2.until = hold.until;
                    s.holds.insert(k, h2);
                    false
                }
                Some(h) if h.state == "finished" && hold.state != "finished" => false,
                _ => {
                    s.holds.insert(k, hold);
                    true
                }
            }
        })
    }

    /// Ends the holds of `workspace` (every workspace: `None`), as an operator asked; a
    /// budget's pause is waived until it would have cleared, and the count of runs without
    /// progress starts again. The holds that ended.
    pub fn resume(&self, workspace: Option<&Path>) -> Vec<(String, Hold)> {
        self.change(|s| {
            let keys: Vec<String> = match workspace {
                Some(w) => vec![key(w)],
                None => s.holds.keys().cloned().collect(),
            };
            let mut ended = Vec::new();
            for k in keys {
                if let Some(h) = s.holds.remove(&k) {
                    // Resumed from being stuck: the runs get their chance again. (Other
                    // holds say nothing of the runs' progress: the count stays.)
                    if h.reason == "no_progress" {
                        s.no_progress.remove(&k);
                    }
                    if let (true, Some(until)) = (h.is_budget(), &h.until) {
                        s.waived
                            .entry(k.clone())
                            .or_default()
                            .insert(h.reason.clone(), until.clone());
                    }
                    ended.push((k, h));
                }
            }
            ended
        })
    }

    /// Whether an operator waived budget `reason` of `workspace` until after `now`.
    pub fn waived(&self, workspace: &Path, reason: &str, now: DateTime<Local>) -> bool {
        self.lock()
            .waived
            .get(&key(workspace))
            .and_then(|w| w.get(reason))
            .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
            .is_some_and(|u| u > now)
    }

    /// Notes a run's end for the stuck rule: `Some(true)` progress (the count starts
    /// again), `Some(false)` none (the run joins the count), `None` a run that counts for
    /// nothing. The runs in a row without progress.
    pub fn note_progress(
        &self,
        workspace: &Path,
        run_id: &str,
        progress: Option<bool>,
    ) -> Vec<String> {
        self.change(|s| {
            let k = key(workspace);
            match progress {
                Some(true) => {
                    s.no_progress.remove(&k);
                }
                Some(false) => {
                    let runs = s.no_progress.entry(k.clone()).or_default();
                    if !runs.iter().any(|r| r == run_id) {
                        runs.push(run_id.to_string());
                    }
                    let len = runs.len();
                    runs.drain(
                        ..len.saturating_sub(crate::rules::stop::MAX_NO_PROGRESS_RUNS as usize),
                    );
                }
                None => {}
            }
            s.no_progress.get(&k).cloned().unwrap_or_default()
        })
    }

    /// Keeps an announcement for later; the oldest goes when the queue is full.
    pub fn queue(&self, q: Queued) {
        self.change(|s| {
            s.outbox.push(q);
            let len = s.outbox.len();
            s.outbox.drain(..len.saturating_sub(OUTBOX_MAX));
        })
    }

    /// The oldest queued announcement.
    pub fn next_queued(&self) -> Option<Queued> {
        self.lock().outbox.first().cloned()
    }

    /// Drops the oldest queued announcement, once delivered.
    pub fn delivered(&self, q: &Queued) {
        self.change(|s| {
            if s.outbox.first() == Some(q) {
                s.outbox.remove(0);
            }
        })
    }

    pub fn queued(&self) -> usize {
        self.lock().outbox.len()
    }

    /// Claims the outbox's delivery for one thread: `false` when one delivers it already,
    /// or nothing waits.
    pub fn claim_sender(&self) -> bool {
        let saved = self.lock();
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if *sender || saved.outbox.is_empty() {
            return false;
        }
        *sender = true;
        true
    }

    /// The right to deliver queued messages, with whether the last try failed. `wait`:
    /// until whoever delivers now is done; else `None` when someone delivers now.
    pub fn delivery(&self, wait: bool) -> Option<std::sync::MutexGuard<'_, bool>> {
        match wait {
            true => Some(self.delivery.lock().unwrap_or_else(|e| e.into_inner())),
            false => match self.delivery.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            },
        }
    }

    /// No thread delivers the outbox (its start failed).
    pub fn force_release_sender(&self) {
        *self.sender.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// The delivering thread may end: `true` when nothing waits (looked at under the same
    /// lock a new message is queued under, so that none is left behind).
    pub fn release_sender(&self) -> bool {
        let saved = self.lock();
        let mut sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        if saved.outbox.is_empty() {
            *sender = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("looper-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn holds_survive_a_restart_and_end_at_their_time_or_with_a_resume() {
        let d = dir("holds");
        let ws = Path::new("/w");
        let now = Local::now();
        let state = LoopState::open(&d);
        let until = now + chrono::Duration::hours(1);
        assert!(state.hold(
            ws,
            Hold::new("paused", "max_runs_per_day", "x".into(), Some(until), None)
        ));
        assert!(!state.hold(
            ws,
            Hold::new("paused", "max_runs_per_day", "x".into(), Some(until), None)
        ));
        let again = LoopState::open(&d);
        assert_eq!(
            again.hold_of(ws, now).0.map(|h| h.reason),
            Some("max_runs_per_day".into())
        );
        let (held, ended) = again.hold_of(ws, until + chrono::Duration::seconds(1));
        assert!(held.is_none());
        assert_eq!(ended.map(|h| h.reason), Some("max_runs_per_day".into()));
        // A finish is no pause: it stays until resumed, and a pause does not replace it.
        assert!(again.hold(
            ws,
            Hold::new("finished", "todo_done", "y".into(), None, Some("r1"))
        ));
        assert!(!again.hold(
            ws,
            Hold::new("paused", "no_progress", "z".into(), None, None)
        ));
        let far = now + chrono::Duration::days(400);
        assert_eq!(
            again.hold_of(ws, far).0.map(|h| h.state),
            Some("finished".into())
        );
        assert_eq!(again.resume(Some(ws)).len(), 1);
        assert!(LoopState::open(&d).hold_of(ws, now).0.is_none());
    }

    #[test]
    fn a_resumed_budget_is_waived_until_it_clears() {
        let d = dir("waive");
        let ws = Path::new("/w");
        let now = Local::now();
        let state = LoopState::open(&d);
        let until = now + chrono::Duration::hours(2);
        state.hold(
            ws,
            Hold::new(
                "paused",
                "max_tokens_per_day",
                "x".into(),
                Some(until),
                None,
            ),
        );
        state.resume(None);
        assert!(state.waived(ws, "max_tokens_per_day", now));
        assert!(!state.waived(ws, "max_tokens_per_day", until));
        assert!(!state.waived(ws, "max_runs_per_day", now));
    }

    #[test]
    fn runs_without_progress_are_counted_until_one_makes_some() {
        let state = LoopState::open(&dir("progress"));
        let ws = Path::new("/w");
        assert_eq!(state.note_progress(ws, "a", Some(false)), ["a"]);
        assert_eq!(state.note_progress(ws, "b", None), ["a"]);
        assert_eq!(state.note_progress(ws, "c", Some(false)), ["a", "c"]);
        assert!(state.note_progress(ws, "d", Some(true)).is_empty());
    }

    #[test]
    fn the_outbox_is_bounded_and_kept() {
        let d = dir("outbox");
        let state = LoopState::open(&d);
        for i in 0..OUTBOX_MAX + 5 {
            state.queue(Queued {
                content: format!("m{i}"),
                queued_at: String::new(),
                request_id: String::new(),
            });
        }
        let again = LoopState::open(&d);
        assert_eq!(again.queued(), OUTBOX_MAX);
        let first = again.next_queued().unwrap();
        assert_eq!(first.content, "m5");
        again.delivered(&first);
        assert_eq!(again.next_queued().unwrap().content, "m6");
    }
}
