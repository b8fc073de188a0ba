//! Each workspace's hold (finished, or paused until a time or an operator), the budgets an
//! operator waived until they clear, and the runs in a row that changed nothing: kept in
//! [`crate::state::loopfile`]. Reading a hold changes nothing; a hold's end is decided by
//! [`crate::autoloop::judge`] when something happens (autopoll's tick, a hand-off).

use std::path::Path;

use crate::model::{Hold, HoldReason, HoldState, Stamp};
use crate::state::loopfile::{key, LoopFile, Saved};

/// The key of a hold on every workspace.
pub const ALL: &str = "*";

/// The holds, over the loop's file.
pub struct Holds<'a>(pub(crate) &'a LoopFile);

impl Holds<'_> {
    /// The hold on `workspace`, as it is (its time may be over: its end is the judge's);
    /// the hold on every workspace ([`ALL`]) when it has none of its own.
    pub fn of(&self, workspace: &Path) -> Option<Hold> {
        self.0.read(|s| {
            s.holds
                .get(&key(workspace))
                .or_else(|| s.holds.get(ALL))
                .cloned()
        })
    }

    /// Holds every workspace's loop until an operator resumes one (a lost state).
    pub fn hold_all(&self, hold: Hold) {
        self.0.change(|s| s.holds.insert(ALL.to_string(), hold));
    }

    /// Every hold, by workspace.
    pub fn all(&self) -> Vec<(String, Hold)> {
        self.0.read(|s| {
            s.holds
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Ends the hold on `workspace` if its time is over at `now`; the hold that ended.
    pub fn end_if_over(&self, workspace: &Path, now: Stamp) -> Option<Hold> {
        self.0.change(|s| {
            let k = key(workspace);
            let ended = match s.holds.get(&k) {
                Some(h) if h.over(now) => s.holds.remove(&k),
                _ => None,
            }?;
            if let (true, Some(until)) = (ended.reason.is_daily(), ended.until) {
                s.day_ended
                    .entry(k)
                    .or_default()
                    .insert(ended.reason, until);
            }
            Some(ended)
        })
    }

    /// From when runs count toward `workspace`'s daily budgets: the end of their last
    /// pause (the day that paused them is over, in whatever zone it was counted).
    pub fn counted_from(&self, workspace: &Path) -> Option<Stamp> {
        self.0
            .read(|s| s.day_ended.get(&key(workspace))?.values().max().copied())
    }

    /// Holds `workspace`; `false` when the same reason held it already (not to be said
    /// again: its end is updated). A finish is never replaced by a pause.
    pub fn hold(&self, workspace: &Path, hold: Hold) -> bool {
        self.0.change(|s| hold_in(s, workspace, hold))
    }

    /// Ends `workspace`'s hold if it is for `reason`; the hold that ended.
    pub fn end_for(&self, workspace: &Path, reason: HoldReason) -> Option<Hold> {
        self.0.change(|s| {
            let k = key(workspace);
            match s.holds.get(&k) {
                Some(h) if h.reason == reason => s.holds.remove(&k),
                _ => None,
            }
        })
    }

    /// Ends the holds of `workspace` (every workspace: `None`), as an operator asked; a
    /// budget's pause is waived until it would have cleared, and the count of runs without
    /// progress starts again. The holds that ended.
    pub fn resume(&self, workspace: Option<&Path>) -> Vec<(String, Hold)> {
        self.0.change(|s| resume_in(s, workspace))
    }

    /// [`Holds::resume`], as an operator's request: saved before it is answered, or not
    /// made (`Err`: why the state could not be written).
    pub fn resume_or_refuse(
        &self,
        workspace: Option<&Path>,
    ) -> Result<Vec<(String, Hold)>, String> {
        self.0.change_or_refuse(|s| resume_in(s, workspace))
    }

    /// Holds `workspace` (as [`Holds::hold`]), saved before it is answered, or not at all.
    pub fn hold_or_refuse(&self, workspace: &Path, hold: Hold) -> Result<bool, String> {
        self.0.change_or_refuse(|s| hold_in(s, workspace, hold))
    }

    /// Whether an operator waived budget `reason` of `workspace` until after `now`.
    pub fn waived(&self, workspace: &Path, reason: HoldReason, now: Stamp) -> bool {
        self.0.read(|s| {
            s.waived
                .get(&key(workspace))
                .and_then(|w| w.get(&reason))
                .is_some_and(|u| *u > now)
        })
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
        self.0.change(|s| {
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
}

/// Ends the holds of `workspace` (every one: `None`) in `s`; see [`Holds::resume`].
fn resume_in(s: &mut Saved, workspace: Option<&Path>) -> Vec<(String, Hold)> {
    // The hold on every workspace ends with the operator's first word.
    let keys: Vec<String> = match workspace {
        Some(w) => vec![key(w), ALL.to_string()],
        None => s.holds.keys().cloned().collect(),
    };
    let mut ended = Vec::new();
    for k in keys {
        if let Some(h) = s.holds.remove(&k) {
            // Resumed from being stuck: the runs get their chance again. (Other
            // holds say nothing of the runs' progress: the count stays.)
            if h.reason == HoldReason::NoProgress {
                s.no_progress.remove(&k);
            }
            if let (true, Some(until)) = (h.reason.is_budget(), h.until) {
                s.waived
                    .entry(k.clone())
                    .or_default()
                    .insert(h.reason, until);
            }
            ended.push((k, h));
        }
    }
    ended
}

/// Holds `workspace` in `s`; see [`Holds::hold`].
fn hold_in(s: &mut Saved, workspace: &Path, hold: Hold) -> bool {
    let k = key(workspace);
    match s.holds.get_mut(&k) {
        Some(h) if h.reason == hold.reason => {
            // A day's pause keeps the end it was given (a restart in another time zone
            // would move it); another (codex's usage limit) takes the newer end.
            if !h.reason.is_daily() {
                h.until = hold.until;
            }
            false
        }
        // A finished loop stays finished as it was (a run's `--done` and its exit with an
        // empty list finish it once, said once); no pause replaces a finish.
        Some(h) if h.state == HoldState::Finished => false,
        _ => {
            s.holds.insert(k, hold);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("looper-holds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn later(now: Stamp, seconds: i64) -> Stamp {
        Stamp::from(now.local() + chrono::Duration::seconds(seconds))
    }

    fn paused(reason: HoldReason, until: Option<Stamp>) -> Hold {
        Hold::new(HoldState::Paused, reason, "x".into(), until, None)
    }

    #[test]
    fn holds_survive_a_restart_and_end_at_their_time_or_with_a_resume() {
        let d = dir("holds");
        let ws = Path::new("/w");
        let now = Stamp::now();
        let file = LoopFile::open(&d).unwrap().file;
        let holds = Holds(&file);
        let until = later(now, 3600);
        assert!(holds.hold(ws, paused(HoldReason::MaxRunsPerDay, Some(until))));
        assert!(!holds.hold(ws, paused(HoldReason::MaxRunsPerDay, Some(until))));
        let again = LoopFile::open(&d).unwrap().file;
        let holds = Holds(&again);
        assert_eq!(
            holds.of(ws).map(|h| h.reason),
            Some(HoldReason::MaxRunsPerDay)
        );
        // Reading changes nothing; its time over, the judge's call ends it.
        assert!(holds.end_if_over(ws, now).is_none());
        let after = later(until, 1);
        assert!(holds.of(ws).is_some());
        let ended = holds.end_if_over(ws, after);
        assert_eq!(ended.map(|h| h.reason), Some(HoldReason::MaxRunsPerDay));
        // A finish is no pause: it stays until resumed, and a pause does not replace it.
        let finish = Hold::new(
            HoldState::Finished,
            HoldReason::TodoDone,
            "y".into(),
            None,
            Some("r1"),
        );
        assert!(holds.hold(ws, finish));
        assert!(!holds.hold(ws, paused(HoldReason::NoProgress, None)));
        assert!(holds.end_if_over(ws, later(now, 400 * 86400)).is_none());
        assert_eq!(holds.of(ws).map(|h| h.state), Some(HoldState::Finished));
        assert_eq!(holds.resume(Some(ws)).len(), 1);
        assert!(Holds(&LoopFile::open(&d).unwrap().file).of(ws).is_none());
    }

    #[test]
    fn a_resumed_budget_is_waived_until_it_clears() {
        let file = LoopFile::open(&dir("waive")).unwrap().file;
        let holds = Holds(&file);
        let ws = Path::new("/w");
        let now = Stamp::now();
        let until = later(now, 7200);
        holds.hold(ws, paused(HoldReason::MaxTokensPerDay, Some(until)));
        holds.resume(None);
        assert!(holds.waived(ws, HoldReason::MaxTokensPerDay, now));
        assert!(!holds.waived(ws, HoldReason::MaxTokensPerDay, until));
        assert!(!holds.waived(ws, HoldReason::MaxRunsPerDay, now));
    }

    #[test]
    fn runs_without_progress_are_counted_until_one_makes_some() {
        let file = LoopFile::open(&dir("progress")).unwrap().file;
        let holds = Holds(&file);
        let ws = Path::new("/w");
        assert_eq!(holds.note_progress(ws, "a", Some(false)), ["a"]);
        assert_eq!(holds.note_progress(ws, "b", None), ["a"]);
        assert_eq!(holds.note_progress(ws, "c", Some(false)), ["a", "c"]);
        assert!(holds.note_progress(ws, "d", Some(true)).is_empty());
    }
}
