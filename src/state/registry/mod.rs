//! The run registry: the one owner of what Looper knows about its runs. Each run has one
//! handle here from its spawn (or, after a restart, its adoption) to its end; the registry
//! also holds the run guard ([`guard`]), the runs' tokens and ids ([`tokens`]), their
//! cgroups ([`groups`]), the recent exits and the counters `/status` and `/metrics` read.
//! Everything else asks it, or tells it what happened, through the methods below.
//!
//! A run's end comes in two steps, both told by its watcher (the one owner of its end,
//! [`crate::run::watch`]): [`Registry::exited`] when its process is gone (the startup check
//! and the stale check learn the exit code at once), then [`Registry::ended`] with its
//! history row, report included, which is when the run stops being Looper's.

pub(crate) mod groups;
pub(crate) mod guard;
pub(crate) mod tokens;

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::{Outcome, Report, Row, Stamp, StopReason, Trigger};
use crate::os::procs::ProcInfo;
use crate::os::shutdown::Shutdown;
use crate::os::signals::Process;
use crate::state::history::History;

/// Exits we remember for the startup check and stale hand-offs.
const RECENT_EXITS: usize = 32;

/// What is known of a run: a snapshot, cloned out of the registry.
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub run_id: String,
    pub request_id: String,
    pub trigger: Trigger,
    pub pid: u32,
    /// The process's start time (clock ticks since boot): with the pid, it names this
    /// process and no later one that gets the same pid.
    pub start_time: Option<u64>,
    pub workspace: PathBuf,
    pub log_path: PathBuf,
    pub started_at: Stamp,
    /// When it started on the monotonic clock (for an adopted run: reckoned back from
    /// `started_at` at its adoption).
    pub started: Instant,
    /// The prompt it was started with, so that a hung run can be replaced by its like;
    /// `None` for a run adopted after a restart (the default prompt replaces it).
    pub prompt: Option<String>,
    /// Started by an earlier Looper (adopted at this one's start): not our child, so its
    /// exit code cannot be learnt from the kernel.
    pub adopted: bool,
}

impl LiveRun {
    /// The history row of this run as it starts: what it started from (`start`: HEAD, the
    /// TODO counts) and nothing of its end.
    pub fn row(&self, start: Report) -> Row {
        Row {
            run_id: self.run_id.clone(),
            request_id: self.request_id.clone(),
            trigger: self.trigger,
            pid: self.pid,
            workspace: self.workspace.clone(),
            log_path: self.log_path.clone(),
            started_at: self.started_at,
            ended_at: None,
            return_code: None,
            duration_seconds: None,
            stop_reason: None,
            outcome: None,
            report: start,
        }
    }
}

/// How a run's process ended, as far as it is known.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub run_id: String,
    /// `None`: not known (an adopted run, which is not Looper's child).
    pub return_code: Option<i32>,
    pub ended_at: Stamp,
    pub duration_seconds: f64,
}

/// A run whose process is gone: what its end is, before its report is read.
#[derive(Debug, Clone)]
pub struct Exited {
    pub run: LiveRun,
    pub exit: Exit,
    /// Why it ended other than by itself, if it did.
    pub reason: Option<StopReason>,
    pub outcome: Outcome,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Exited {
    /// Its history row once its report is in.
    pub fn row(&self, report: Report) -> Row {
        Row {
            ended_at: Some(self.exit.ended_at),
            return_code: self.exit.return_code,
            duration_seconds: Some(self.exit.duration_seconds),
            stop_reason: self.reason,
            outcome: Some(self.outcome),
            ..self.run.row(report)
        }
    }
}

/// Runs started since this Looper started, by trigger, and ended, by outcome: every trigger
/// and every outcome, at 0 until it happens.
#[derive(Debug, Clone)]
pub struct RunCounts {
    pub started: Vec<(Trigger, u64)>,
    pub ended: Vec<(Outcome, u64)>,
}

/// One run, from its spawn (or adoption) to its recorded end.
struct RunHandle {
    run: LiveRun,
    /// The process itself, for a signal that cannot reach a later holder of its pid.
    process: Process,
    /// Set when Looper begins to stop it, with why: its death is no crash.
    stop_reason: Option<StopReason>,
    /// The thread that watches it and owns its end.
    watcher: Option<JoinHandle<()>>,
    /// Set when its process is gone; the handle goes once its row is recorded.
    exited: Option<Exit>,
}

/// The runs, under one lock.
struct Runs {
    /// Oldest first; the newest is the active run.
    handles: Vec<RunHandle>,
    /// Newest last.
    exits: VecDeque<Exit>,
    /// Basenames of every binary we launched, so that later stops recognise those runs.
    binaries: HashSet<String>,
    counts: RunCounts,
}

impl Runs {
    fn exit_of(&self, run_id: &str) -> Option<&Exit> {
        self.exits.iter().rev().find(|e| e.run_id == run_id)
    }

    fn handle(&mut self, run_id: &str) -> Option<&mut RunHandle> {
        self.handles.iter_mut().find(|h| h.run.run_id == run_id)
    }

    /// The handles whose process lives.
    fn live(&self) -> impl Iterator<Item = &RunHandle> {
        self.handles.iter().filter(|h| h.exited.is_none())
    }
}

/// The registry of one server's runs.
pub struct Registry {
    history: History,
    runs: Mutex<Runs>,
    /// Notified whenever a run exits or ends (and at shutdown).
    run_exited: Condvar,
    guard: guard::Guard,
    tokens: tokens::Tokens,
    groups: groups::Groups,
    ids: tokens::Ids,
    /// When run logs last changed, on the monotonic clock.
    freshness: crate::os::freshness::Freshness,
}

impl Registry {
    pub fn new(history: History, seed: u64) -> Registry {
        Registry {
            history,
            runs: Mutex::new(Runs {
                handles: Vec::new(),
                exits: VecDeque::new(),
                binaries: HashSet::new(),
                counts: RunCounts {
                    started: Trigger::ALL.map(|t| (t, 0)).to_vec(),
                    ended: Outcome::ALL.map(|o| (o, 0)).to_vec(),
                },
            }),
            run_exited: Condvar::new(),
            guard: guard::Guard::default(),
            tokens: tokens::Tokens::default(),
            groups: groups::Groups::default(),
            ids: tokens::Ids::new(seed),
            freshness: crate::os::freshness::Freshness::default(),
        }
    }

    /// How long `run`'s log has been silent, counting from the run's start when it never
    /// wrote, on the monotonic clock (see [`crate::os::freshness`]). The one answer
    /// `/status`, `/metrics` and the hung-run check share.
    pub fn quiet(&self, run: &LiveRun) -> Duration {
        let age = run.started.elapsed();
        self.freshness
            .quiet(&run.log_path, Some(age))
            .unwrap_or(age)
    }

    /// When files last changed, on the monotonic clock (autopoll's quiet-logs rule).
    pub fn freshness(&self) -> &crate::os::freshness::Freshness {
        &self.freshness
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// The run guard `/run`, the inbox and autopoll share.
    pub fn guard(&self) -> &guard::Guard {
        &self.guard
    }

    /// The runs' tokens.
    pub fn tokens(&self) -> &tokens::Tokens {
        &self.tokens
    }

    /// The runs' cgroups.
    pub fn groups(&self) -> &groups::Groups {
        &self.groups
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    // --- The runs ---

    /// The active run: the newest one whose process lives.
    pub fn active(&self) -> Option<LiveRun> {
        self.runs().live().last().map(|h| h.run.clone())
    }

    /// Every run whose process lives, oldest first.
    pub fn live(&self) -> Vec<LiveRun> {
        self.runs().live().map(|h| h.run.clone()).collect()
    }

    /// Whether any run of ours lives or has its end still to be recorded.
    pub fn busy(&self) -> bool {
        !self.runs().handles.is_empty()
    }

    /// The newest exit remembered.
    pub fn last_exit(&self) -> Option<Exit> {
        self.runs().exits.back().cloned()
    }

    /// Basenames of the binaries Looper launched.
    pub fn binaries(&self) -> Vec<String> {
        self.runs().binaries.iter().cloned().collect()
    }

    /// The workspace of run `run_id`, live, in the history, or being spawned.
    pub fn workspace_of(&self, run_id: &str) -> Option<PathBuf> {
        if let Some(h) = self.runs().handle(run_id) {
            return Some(h.run.workspace.clone());
        }
        self.history
            .get(run_id)
            .map(|r| r.workspace)
            .or_else(|| self.tokens.workspace_of(run_id))
    }

    /// Whether Looper ever gave out run id `run_id` (as a token, or in its history).
    pub fn gave_out(&self, run_id: &str) -> bool {
        self.tokens.workspace_of(run_id).is_some() || self.history.knows_id(run_id)
    }

    /// Whether run `run_id` is being spawned: its token is out, it is neither registered
    /// nor in the history yet.
    pub fn being_set_up(&self, run_id: &str) -> bool {
        self.tokens.workspace_of(run_id).is_some()
            && self.runs().handle(run_id).is_none()
            && !self.history.knows_id(run_id)
    }

    /// Takes a freshly spawned run in: live from now on, counted, and in the history with
    /// what it started from (`start`). `binary`: the basename it was started as, recognised
    /// by later stops.
    /// Records run `run` before its spawn (its pid not known yet, 0): a run that outlives
    /// a Looper killed right after the spawn has its row, and its hand-off is no stranger's.
    pub fn record_before_spawn(&self, run: &LiveRun, start: Report) {
        self.history.record(run.row(start));
    }

    pub fn register(&self, run: LiveRun, binary: Option<&str>, start: Report) {
        let row = run.row(start);
        {
            let mut runs = self.runs();
            if let Some(name) = binary {
                runs.binaries.insert(name.to_string());
            }
            if let Some(c) = runs
                .counts
                .started
                .iter_mut()
                .find(|(t, _)| *t == run.trigger)
            {
                c.1 += 1;
            }
            let process = Process::of_child(run.pid, run.start_time);
            runs.handles.push(RunHandle {
                run,
                process,
                stop_reason: None,
                watcher: None,
                exited: None,
            });
        }
        self.history.record(row);
    }

    /// Takes in a run an earlier Looper started that still lives (found at start): live
    /// from now on, like any run, its row as the history has it. `None`: its process could
    /// not be pinned (it is gone).
    pub fn adopt(&self, run: LiveRun) -> Option<()> {
        let process = Process::adopt(run.pid, run.start_time?)?;
        self.runs().handles.push(RunHandle {
            run,
            process,
            stop_reason: None,
            watcher: None,
            exited: None,
        });
        Some(())
    }

    /// Gives run `run_id` the thread that watches it.
    pub fn attach_watcher(&self, run_id: &str, watcher: JoinHandle<()>) {
        if let Some(h) = self.runs().handle(run_id) {
            h.watcher = Some(watcher);
        }
    }

    /// Marks the live runs among `pids` as stopped by Looper for `reason` (the first
    /// reason given stays).
    pub fn mark_stopping(&self, pids: &[i32], reason: StopReason) {
        let mut runs = self.runs();
        for h in runs.handles.iter_mut().filter(|h| h.exited.is_none()) {
            if pids.contains(&(h.run.pid as i32)) {
                h.stop_reason.get_or_insert(reason);
            }
        }
    }

    /// Why run `run_id` is being stopped by Looper, if it is, and whether it has exited
    /// already (its row is not ended yet: its report is being read).
    pub fn stopping(&self, run_id: &str) -> Option<(StopReason, bool)> {
        self.runs()
            .handle(run_id)
            .and_then(|h| Some((h.stop_reason?, h.exited.is_some())))
    }

    /// Marks live run `run_id` as ending by its own hand-off, before the stop that ends it.
    pub fn mark_handed_off(&self, run_id: &str) {
        if let Some(h) = self.runs().handle(run_id) {
            h.stop_reason.get_or_insert(StopReason::HandedOff);
        }
    }

    /// Sends `sig` to run `run_id`'s own process; false when it is not live or gone.
    pub fn signal(&self, run_id: &str, sig: i32) -> bool {
        self.runs()
            .handle(run_id)
            .filter(|h| h.exited.is_none())
            .is_some_and(|h| h.process.signal(sig))
    }

    /// Tells that run `run_id`'s process is gone, with its return code (`None`: not known)
    /// and whether codex's usage limit ended it. Decides how it ended (Looper's stop reason
    /// first, then an outside signal, the usage limit, its exit code) and wakes whoever
    /// waits for its exit. `None` when it is not ours or has exited already.
    pub fn exited(
        &self,
        run_id: &str,
        return_code: Option<i32>,
        usage_limit: bool,
    ) -> Option<Exited> {
        let mut runs = self.runs();
        let h = runs.handle(run_id).filter(|h| h.exited.is_none())?;
        // Ended by a polite signal Looper did not send: stopped from outside.
        let external = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].map(|sig| -sig);
        let reason = h.stop_reason.or_else(|| {
            if usage_limit {
                Some(StopReason::UsageLimit)
            } else {
                return_code
                    .filter(|rc| external.contains(rc))
                    .map(|_| StopReason::External)
            }
        });
        let outcome = Outcome::of(reason, return_code);
        let ended_at = Stamp::now();
        let elapsed = h.run.started.elapsed();
        let exit = Exit {
            run_id: run_id.to_string(),
            return_code,
            ended_at,
            duration_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        };
        h.exited = Some(exit.clone());
        let run = h.run.clone();
        runs.exits.push_back(exit.clone());
        while runs.exits.len() > RECENT_EXITS {
            runs.exits.pop_front();
        }
        drop(runs);
        self.run_exited.notify_all();
        Some(Exited {
            run,
            exit,
            reason,
            outcome,
            elapsed,
        })
    }

    /// Records run `run_id`'s end, its report in `row`: the history row first, then the run
    /// stops being ours (so whoever waits for that finds it recorded), counted under its
    /// outcome.
    pub fn ended(&self, run_id: &str, row: Row) {
        let outcome = row.outcome;
        self.history.record(row);
        let mut runs = self.runs();
        if let Some(c) = runs
            .counts
            .ended
            .iter_mut()
            .find(|(o, _)| Some(*o) == outcome)
        {
            c.1 += 1;
        }
        runs.handles.retain(|h| h.run.run_id != run_id);
        drop(runs);
        self.run_exited.notify_all();
    }

    pub fn counts(&self) -> RunCounts {
        self.runs().counts.clone()
    }

    /// Wakes whoever waits for a run's exit (at shutdown). The lock their condition is read
    /// under is taken first, so that a waiter between its check and its wait is not missed.
    pub fn wake_exit_waiters(&self) {
        drop(self.runs());
        self.run_exited.notify_all();
    }

    /// Waits up to `limit` (or until `shutdown`) for `run_id`'s process to exit; its exit
    /// when it did.
    pub fn wait_exit(&self, run_id: &str, limit: Duration, shutdown: &Shutdown) -> Option<Exit> {
        let runs = self.runs();
        let (runs, _) = self
            .run_exited
            .wait_timeout_while(runs, limit, |r| {
                r.exit_of(run_id).is_none() && !shutdown.is_set()
            })
            .unwrap_or_else(|e| e.into_inner());
        runs.exit_of(run_id).cloned()
    }

    /// Waits up to `limit` until every run's end is recorded; true when it is.
    pub fn wait_all_ended(&self, limit: Duration) -> bool {
        let runs = self.runs();
        let (runs, _) = self
            .run_exited
            .wait_timeout_while(runs, limit, |r| !r.handles.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        runs.handles.is_empty()
    }

    // --- Ids ---

    /// A fresh 8-hex-digit id that the history has never held, in either form a run id
    /// takes (`<id>`, or `auto<id>` for autopoll): 8 hex digits collide often enough over a
    /// long-lived history (about 25 % by 50,000 runs).
    pub fn new_id(&self) -> String {
        loop {
            let id = self.ids.next_id();
            if !self.history.knows_id(&id) && !self.history.knows_id(&format!("auto{id}")) {
                return id;
            }
        }
    }

    /// A fresh token for run `run_id` of `workspace` (its `LOOPER_RUN_TOKEN`).
    pub fn new_run_token(&self, run_id: &str, workspace: &Path) -> String {
        self.tokens.issue(run_id, workspace, &self.ids)
    }

    /// For every run of ours, the pids in `table` that belong to it: its live process and
    /// their descendants, and whatever sits in its cgroup.
    pub fn members(&self, table: &[ProcInfo]) -> Vec<(String, Vec<i32>)> {
        let mut out: Vec<(String, Vec<i32>)> = self
            .live()
            .into_iter()
            .filter_map(|r| {
                let root = (r.pid as i32, r.start_time?);
                Some((r.run_id, crate::os::procs::descendants(table, root)))
            })
            .collect();
        out.extend(self.groups.members());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        // History writes go nowhere: the directory does not exist.
        let mut r = Registry::new(History::detached(), 7);
        r.ids = tokens::Ids::replayable(7);
        r
    }

    fn live(id: &str) -> LiveRun {
        LiveRun {
            run_id: id.into(),
            request_id: id.into(),
            trigger: Trigger::Autopoll,
            // Not ours to signal: no pidfd is opened on a pid that is no child (see below).
            pid: u32::MAX >> 1,
            start_time: None,
            workspace: "/w".into(),
            log_path: "/nonexistent/l".into(),
            started_at: Stamp::now(),
            started: Instant::now(),
            prompt: None,
            adopted: false,
        }
    }

    /// Ends run `id` as its watcher would: exited, then its row recorded.
    fn end(r: &Registry, id: &str, rc: i32, limit: bool) -> Option<Exited> {
        let exited = r.exited(id, Some(rc), limit)?;
        r.ended(id, exited.row(Report::default()));
        Some(exited)
    }

    #[test]
    fn ids_are_eight_hex_digits_and_differ() {
        let r = registry();
        let ids: HashSet<String> = (0..1000).map(|_| r.new_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 8 && i.chars().all(|c| c.is_ascii_hexdigit())));
    }

    /// An id the history already holds is never handed out again.
    #[test]
    fn ids_the_history_holds_are_skipped() {
        let r = registry();
        let seed = r.ids.position();
        let first = r.ids.next_id();
        let second = r.ids.next_id();
        r.ids.rewind(seed);
        r.history.record(live(&first).row(Report::default()));
        assert_eq!(r.new_id(), second, "the held id was handed out again");
        r.ids.rewind(seed);
        r.history
            .record(live(&format!("auto{second}")).row(Report::default()));
        let third = r.new_id();
        assert!(third != first && third != second);
    }

    /// Shutdown wakes a startup check waiting for its run's exit, wherever the waiter is
    /// (before its check, between its check and its wait, or waiting): the check ends with
    /// no exit instead of sitting out its limit.
    #[test]
    fn shutdown_wakes_whoever_waits_for_an_exit() {
        let limit = Duration::from_secs(20);
        for i in 0..100 {
            let r = std::sync::Arc::new(registry());
            let shutdown = std::sync::Arc::new(Shutdown::default());
            let (b, s) = (r.clone(), shutdown.clone());
            let waiter = std::thread::spawn(move || {
                let since = Instant::now();
                let exit = b.wait_exit("r", limit, &s);
                (exit, since.elapsed())
            });
            // Now at once, now once the waiter is most likely waiting.
            std::thread::sleep(Duration::from_millis(i % 3));
            shutdown.trigger();
            r.wake_exit_waiters();
            let (exit, waited) = waiter.join().unwrap();
            assert!(exit.is_none(), "round {i}");
            assert!(waited < limit, "round {i}: the wake-up was lost");
        }
    }

    /// Whoever waits for every run's end finds each row complete.
    #[test]
    fn an_end_is_in_the_history_before_waiters_wake() {
        let r = std::sync::Arc::new(registry());
        for i in 0..300 {
            let id = format!("r{i}");
            r.register(live(&id), None, Report::default());
            let (b, wid) = (r.clone(), id.clone());
            let waiter = std::thread::spawn(move || {
                assert!(b.wait_all_ended(Duration::from_secs(30)));
                b.history.get(&wid).and_then(|r| r.return_code)
            });
            end(&r, &id, -15, false);
            assert_eq!(waiter.join().unwrap(), Some(-15), "round {i}");
        }
    }

    /// A run's end is counted under its outcome: Looper's stop reason first, then an
    /// outside signal, the usage limit, its exit code; every outcome is listed, at 0 until
    /// it happens. A run whose process exited is no longer live, but busy until its row is
    /// recorded.
    #[test]
    fn ends_are_counted_by_outcome() {
        let r = registry();
        for (id, rc) in [("a", 0), ("b", 1), ("c", -15)] {
            r.register(live(id), None, Report::default());
            end(&r, id, rc, false);
        }
        r.register(live("d"), None, Report::default());
        r.mark_stopping(&[live("d").pid as i32], StopReason::Replaced);
        let d = r.exited("d", Some(-15), false).unwrap();
        assert_eq!(
            (d.reason, d.outcome),
            (Some(StopReason::Replaced), Outcome::Replaced)
        );
        assert!(r.live().is_empty() && r.busy(), "exited but not ended");
        assert!(r.active().is_none(), "exited: no longer active");
        r.ended("d", d.row(Report::default()));
        assert!(!r.busy());
        // Its own hand-off: the stop that follows does not make it "replaced".
        r.register(live("f"), None, Report::default());
        r.mark_handed_off("f");
        r.mark_stopping(&[live("f").pid as i32], StopReason::Replaced);
        let f = end(&r, "f", -15, false).unwrap();
        assert_eq!(f.outcome, Outcome::HandedOff);
        r.register(live("e"), None, Report::default());
        assert_eq!(
            end(&r, "e", 1, true).unwrap().reason,
            Some(StopReason::UsageLimit)
        );
        assert!(r.exited("e", Some(1), false).is_none(), "ended twice");
        let counts = r.counts();
        assert_eq!(
            counts.started,
            vec![
                (Trigger::Http, 0),
                (Trigger::Inbox, 0),
                (Trigger::Autopoll, 6)
            ]
        );
        let count = |o: Outcome| counts.ended.iter().find(|(x, _)| *x == o).unwrap().1;
        assert_eq!(
            [
                Outcome::Ok,
                Outcome::Failed,
                Outcome::External,
                Outcome::Replaced,
                Outcome::UsageLimit,
                Outcome::Hung,
                Outcome::HandedOff
            ]
            .map(count),
            [1, 1, 1, 1, 1, 0, 1]
        );
        assert_eq!(counts.ended.len(), Outcome::ALL.len());
    }
}
