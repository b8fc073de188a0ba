//! The run registry: the one owner of what Looper knows about its runs. Each run Looper
//! started has one [`RunHandle`] here from its spawn to its end; the registry also holds
//! the run guard, the ring of recent exits, the runs' tokens and cgroups, the counters and
//! the history. Everything else (status, metrics, autopoll, the stop) asks it, or tells it
//! what happened, through the methods below: no field is reachable from outside.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::os::procs::ProcInfo;
use crate::os::shutdown::Shutdown;
use crate::os::signals::Process;
use crate::run::request::Trigger;
use crate::state::history::{History, Row};

/// Exits we remember for the startup check and stale hand-offs.
const RECENT_EXITS: usize = 32;
/// Run tokens remembered, so that a run that just ended is still known as a run.
const RECENT_TOKENS: usize = 64;
/// How often a hand-off waiting for a run's setup looks at the shutdown flag.
const HANDOFF_POLL: Duration = Duration::from_millis(100);
/// How long past the end of a run's startup check a hand-off from it waits for the setup
/// to release the guard (answering is all that is left to do by then).
const HANDOFF_SLACK: Duration = Duration::from_secs(10);

/// What is known of a live run: a snapshot, cloned out of the registry.
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub run_id: String,
    pub request_id: String,
    pub trigger: Trigger,
    pub pid: u32,
    /// The child's start time (clock ticks since boot): with the pid, it names this process
    /// and no later one that gets the same pid.
    pub start_time: Option<u64>,
    pub workspace: PathBuf,
    pub log_path: PathBuf,
    pub started_at: String,
    pub started: Instant,
    /// The prompt it was started with, so that a hung run can be replaced by its like.
    pub prompt: String,
}

impl LiveRun {
    /// The history row of this run, as it stands while it runs.
    pub fn row(&self) -> Row {
        Row {
            run_id: self.run_id.clone(),
            request_id: self.request_id.clone(),
            trigger: self.trigger.as_str().to_string(),
            pid: self.pid,
            workspace: self.workspace.clone(),
            log_path: self.log_path.clone(),
            started_at: self.started_at.clone(),
            ended_at: None,
            return_code: None,
            duration_seconds: None,
            stop_reason: None,
            outcome: None,
            report: Default::default(),
        }
    }

    /// How long its log has not grown: since the log last changed, never more than the
    /// run's age (a log older than the run is the header Looper wrote just before the
    /// spawn), and the run's age when the log cannot be read. The one answer `/status`,
    /// `/metrics` and the hung-run check share.
    pub fn quiet(&self) -> Duration {
        let age = self.started.elapsed();
        std::fs::metadata(&self.log_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or(age, |d| d.min(age))
    }
}

/// One run Looper started, from its spawn to its end.
struct RunHandle {
    run: LiveRun,
    /// The process itself, for a signal that cannot reach a later holder of its pid.
    process: Process,
    /// Set when Looper begins to stop it, with why: its death is no crash.
    stop_reason: Option<StopReason>,
    /// The thread that mirrors its output and records its end (it drops this handle as
    /// its last step).
    watcher: Option<JoinHandle<()>>,
    /// HEAD and the TODO counts when it started, as its watcher read them.
    start: Option<crate::report::Start>,
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub run_id: String,
    pub return_code: i32,
    pub ended_at: String,
    pub duration_seconds: f64,
}

/// Why Looper stopped one of its runs (the history row's `stop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It asked for the next run (its hand-off), which replaced it: a success.
    HandedOff,
    /// A fresh run replaced it, asked for by someone else.
    Replaced,
    /// Its log stopped growing for `LOOPER_HUNG_RUN_SECONDS`.
    Hung,
    /// Looper shut down.
    Shutdown,
    /// Someone else ended it with SIGTERM, SIGINT or SIGHUP (a person, a script, the
    /// system): no crash.
    External,
    /// It ended on codex's usage limit: no crash either.
    UsageLimit,
}

impl StopReason {
    pub const ALL: [StopReason; 6] = [
        StopReason::HandedOff,
        StopReason::Replaced,
        StopReason::Hung,
        StopReason::External,
        StopReason::Shutdown,
        StopReason::UsageLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::HandedOff => "handed_off",
            StopReason::Replaced => "replaced",
            StopReason::Hung => "hung",
            StopReason::Shutdown => "shutdown",
            StopReason::External => "external",
            StopReason::UsageLimit => "usage_limit",
        }
    }
}

/// How a run ended, as `/metrics` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited 0 by itself.
    Ok,
    /// It exited non-zero by itself.
    Failed,
    Stopped(StopReason),
}

impl Outcome {
    /// Every outcome, in the order `/metrics` lists them.
    pub fn all() -> impl Iterator<Item = Outcome> {
        [Outcome::Ok, Outcome::Failed]
            .into_iter()
            .chain(StopReason::ALL.map(Outcome::Stopped))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Stopped(r) => r.as_str(),
        }
    }
}

/// Runs started by trigger, and ended by outcome.
pub type Counts = (Vec<(Trigger, u64)>, Vec<(Outcome, u64)>);

/// What the registry recorded when a run ended, for the watcher to act on outside its locks.
pub struct Ended {
    pub row: Row,
    pub reason: Option<StopReason>,
    /// How long it ran.
    pub elapsed: Duration,
}

/// A run's cgroup.
#[derive(Debug, Clone)]
pub struct Group {
    pub run_id: String,
    pub workspace: PathBuf,
    pub path: PathBuf,
}

/// A run's token and whose it is.
struct RunToken {
    token: String,
    run_id: String,
    workspace: PathBuf,
}

/// The runs, under one lock.
#[derive(Default)]
struct Runs {
    /// Oldest first; the last one is the active run.
    live: Vec<RunHandle>,
    /// Newest last.
    exits: VecDeque<Exit>,
    /// Basenames of every binary we launched, so that later stops recognise those runs.
    binaries: HashSet<String>,
    /// Runs started and ended since start, by trigger and by outcome.
    started: Vec<(Trigger, u64)>,
    ended: Vec<(Outcome, u64)>,
}

impl Runs {
    fn exit_of(&self, run_id: &str) -> Option<&Exit> {
        self.exits.iter().rev().find(|e| e.run_id == run_id)
    }

    fn handle(&mut self, run_id: &str) -> Option<&mut RunHandle> {
        self.live.iter_mut().find(|h| h.run.run_id == run_id)
    }
}

/// The run guard's state: who sets up a run, and who waits for that setup to end.
#[derive(Default)]
struct GuardState {
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
}

/// The one run guard shared by `/run`, the inbox and autopoll: whoever holds it sets up a
/// run. Released on drop, panics included.
pub struct RunGuard<'a>(&'a Registry);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.guard_state();
        g.held = false;
        let setting_up = g.setting_up.take();
        g.setup_ends = None;
        if g.waiting > 0 {
            g.reserved_for = setting_up;
        }
        drop(g);
        self.0.guard_released.notify_all();
    }
}

/// The registry of one server's runs.
pub struct Registry {
    history: History,
    runs: Mutex<Runs>,
    /// Notified whenever a run exits (and at shutdown).
    run_exited: Condvar,
    guard: Mutex<GuardState>,
    /// Notified whenever the run guard is released.
    guard_released: Condvar,
    /// The tokens of the newest runs (`LOOPER_RUN_TOKEN`), newest last.
    tokens: Mutex<VecDeque<RunToken>>,
    /// The cgroups of runs, until they are empty and removed (a run that exited may leave
    /// an escaped process in its group: the next stop ends it).
    groups: Mutex<Vec<Group>>,
    ids: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new(history: History, seed: u64) -> Registry {
        Registry {
            history,
            runs: Mutex::new(Runs {
                started: Trigger::ALL.map(|t| (t, 0)).to_vec(),
                ended: Outcome::all().map(|o| (o, 0)).collect(),
                ..Runs::default()
            }),
            run_exited: Condvar::new(),
            guard: Mutex::new(GuardState::default()),
            guard_released: Condvar::new(),
            tokens: Mutex::new(VecDeque::new()),
            groups: Mutex::new(Vec::new()),
            ids: AtomicU64::new(seed),
        }
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    fn runs(&self) -> MutexGuard<'_, Runs> {
        lock(&self.runs)
    }

    // --- The live runs ---

    /// The active run: the newest live one.
    pub fn active(&self) -> Option<LiveRun> {
        self.runs().live.last().map(|h| h.run.clone())
    }

    /// Every live run of ours, oldest first.
    pub fn live(&self) -> Vec<LiveRun> {
        self.runs().live.iter().map(|h| h.run.clone()).collect()
    }

    pub fn any_live(&self) -> bool {
        !self.runs().live.is_empty()
    }

    pub fn live_ids(&self) -> HashSet<String> {
        self.runs()
            .live
            .iter()
            .map(|h| h.run.run_id.clone())
            .collect()
    }

    /// The newest exit remembered.
    pub fn last_exit(&self) -> Option<Exit> {
        self.runs().exits.back().cloned()
    }

    /// Basenames of the binaries Looper launched.
    pub fn binaries(&self) -> Vec<String> {
        self.runs().binaries.iter().cloned().collect()
    }

    /// The workspace of run `run_id`, live or in the history.
    pub fn workspace_of(&self, run_id: &str) -> Option<PathBuf> {
        if let Some(h) = self.runs().live.iter().find(|h| h.run.run_id == run_id) {
            return Some(h.run.workspace.clone());
        }
        self.history
            .get(run_id)
            .map(|r| r.workspace)
            .or_else(|| self.token_workspace(run_id))
    }

    /// The workspace of run `run_id` as its token was given out: a run being spawned is
    /// known by it before it is registered (its first hand-off may come that early).
    fn token_workspace(&self, run_id: &str) -> Option<PathBuf> {
        let tokens = lock(&self.tokens);
        let t = tokens.iter().rev().find(|t| t.run_id == run_id)?;
        Some(t.workspace.clone())
    }

    /// Whether Looper ever gave out run id `run_id` (as a token, or in its history).
    pub fn gave_out(&self, run_id: &str) -> bool {
        self.token_workspace(run_id).is_some() || self.history.knows_id(run_id)
    }

    /// Whether run `run_id` is being spawned: its token is out, it is neither live nor in
    /// the history yet.
    pub fn being_set_up(&self, run_id: &str) -> bool {
        self.token_workspace(run_id).is_some()
            && !self.runs().live.iter().any(|h| h.run.run_id == run_id)
            && !self.history.knows_id(run_id)
    }

    /// Takes a freshly spawned run in: live from now on, counted, and in the history.
    /// `binary`: the basename it was started as, recognised by later stops.
    pub fn register(&self, run: LiveRun, binary: Option<&str>) {
        let row = run.row();
        {
            let mut runs = self.runs();
            if let Some(name) = binary {
                runs.binaries.insert(name.to_string());
            }
            if let Some(c) = runs.started.iter_mut().find(|(t, _)| *t == run.trigger) {
                c.1 += 1;
            }
            let process = Process::of_child(run.pid, run.start_time);
            runs.live.push(RunHandle {
                run,
                process,
                stop_reason: None,
                watcher: None,
                start: None,
            });
        }
        self.history.record(row);
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
        for h in self.runs().live.iter_mut() {
            if pids.contains(&(h.run.pid as i32)) {
                h.stop_reason.get_or_insert(reason);
            }
        }
    }

    /// Why live run `run_id` is being stopped by Looper, if it is.
    pub fn stopping(&self, run_id: &str) -> Option<StopReason> {
        self.runs().handle(run_id).and_then(|h| h.stop_reason)
    }

    /// Keeps what run `run_id`'s watcher read at its start.
    pub fn note_start(&self, run_id: &str, start: crate::report::Start) {
        if let Some(h) = self.runs().handle(run_id) {
            h.start = Some(start);
        }
    }

    /// What live run `run_id` started from, once its watcher read it.
    pub fn start_of(&self, run_id: &str) -> Option<crate::report::Start> {
        self.runs().handle(run_id).and_then(|h| h.start.clone())
    }

    /// Marks live run `run_id` as ending by its own hand-off, before the stop that ends it.
    pub fn mark_handed_off(&self, run_id: &str) {
        if let Some(h) = self.runs().handle(run_id) {
            h.stop_reason.get_or_insert(StopReason::HandedOff);
        }
    }

    /// The newest live run in `workspace` (canonical), for an inbox file, which names only
    /// its workspace.
    pub fn live_in(&self, workspace: &Path) -> Option<String> {
        // Canonicalised outside the lock: it asks the file system.
        self.live()
            .into_iter()
            .rev()
            .find(|r| r.workspace.canonicalize().is_ok_and(|w| w == workspace))
            .map(|r| r.run_id)
    }

    /// Sends `sig` to run `run_id`'s own process; false when it is not live or gone.
    pub fn signal(&self, run_id: &str, sig: i32) -> bool {
        self.runs()
            .handle(run_id)
            .is_some_and(|h| h.process.signal(sig))
    }

    /// Records a run's end: the history row first, then it stops being live (so whoever
    /// waits for the exit finds it recorded), then the waiters wake. `usage_limit`: it
    /// ended on codex's usage limit. `None` when the run is not ours or already ended.
    pub fn finish(&self, run_id: &str, return_code: i32, usage_limit: bool) -> Option<Ended> {
        let (run, reason) = {
            let mut runs = self.runs();
            let h = runs.handle(run_id)?;
            (h.run.clone(), h.stop_reason)
        };
        // Ended by a polite signal Looper did not send: stopped from outside.
        let external = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].map(|sig| -sig);
        let reason = reason.or_else(|| {
            if usage_limit {
                Some(StopReason::UsageLimit)
            } else {
                external
                    .contains(&return_code)
                    .then_some(StopReason::External)
            }
        });
        let outcome = match reason {
            Some(r) => Outcome::Stopped(r),
            None if return_code == 0 => Outcome::Ok,
            None => Outcome::Failed,
        };
        let elapsed = run.started.elapsed();
        let duration_seconds = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
        let ended_at = chrono::Local::now().to_rfc3339();
        let row = Row {
            ended_at: Some(ended_at.clone()),
            return_code: Some(return_code),
            duration_seconds: Some(duration_seconds),
            stop_reason: reason.map(|r| r.as_str().to_string()),
            outcome: Some(outcome.as_str().to_string()),
            ..run.row()
        };
        self.history.record(row.clone());

        let mut runs = self.runs();
        if let Some(c) = runs.ended.iter_mut().find(|(o, _)| *o == outcome) {
            c.1 += 1;
        }
        runs.live.retain(|h| h.run.run_id != run_id);
        runs.exits.push_back(Exit {
            run_id: run_id.to_string(),
            return_code,
            ended_at,
            duration_seconds,
        });
        while runs.exits.len() > RECENT_EXITS {
            runs.exits.pop_front();
        }
        drop(runs);
        self.run_exited.notify_all();
        Some(Ended {
            row,
            reason,
            elapsed,
        })
    }

    /// Runs started and ended since start: every trigger and every outcome, at 0 until
    /// they happen.
    pub fn counts(&self) -> Counts {
        let runs = self.runs();
        (runs.started.clone(), runs.ended.clone())
    }

    /// Wakes whoever waits for a run's exit (at shutdown). The lock their condition is read
    /// under is taken first, so that a waiter between its check and its wait is not missed.
    pub fn wake_exit_waiters(&self) {
        drop(self.runs());
        self.run_exited.notify_all();
    }

    /// Waits up to `limit` (or until `shutdown`) for `run_id` to exit; its exit when it did.
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

    /// Waits up to `limit` until no run of ours is live; true when none is.
    pub fn wait_all_exited(&self, limit: Duration) -> bool {
        let runs = self.runs();
        let (runs, _) = self
            .run_exited
            .wait_timeout_while(runs, limit, |r| !r.live.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        runs.live.is_empty()
    }

    // --- Ids and tokens ---

    /// A fresh 8-hex-digit id (splitmix64 over a random seed) that the history has never
    /// held, in either form a run id takes (`<id>`, or `auto<id>` for autopoll): 8 hex
    /// digits collide often enough over a long-lived history (about 25 % by 50,000 runs).
    pub fn new_id(&self) -> String {
        loop {
            let id = self.next_id();
            if !self.history.knows_id(&id) && !self.history.knows_id(&format!("auto{id}")) {
                return id;
            }
        }
    }

    fn next_id(&self) -> String {
        let mut z = self.next_random();
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:08x}", (z ^ (z >> 31)) >> 32)
    }

    fn next_random(&self) -> u64 {
        self.ids
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
    }

    /// A fresh random token for run `run_id` of `workspace`, remembered as that run's.
    pub fn new_run_token(&self, run_id: &str, workspace: &Path) -> String {
        // No kernel randomness: the id generator's stream, never a fixed value.
        let token = crate::os::tokens::random_token()
            .unwrap_or_else(|| format!("{:016x}{:016x}", self.next_random(), self.next_random()));
        let mut list = lock(&self.tokens);
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
    pub fn forget_token(&self, run_id: &str) {
        lock(&self.tokens).retain(|t| t.run_id != run_id);
    }

    /// The run (id and workspace) whose token `offered` is, compared in constant time.
    pub fn run_of_token(&self, offered: &str) -> Option<(String, PathBuf)> {
        let mut found = None;
        for t in lock(&self.tokens).iter() {
            if crate::os::tokens::constant_time_eq(offered.as_bytes(), t.token.as_bytes()) {
                found = Some((t.run_id.clone(), t.workspace.clone()));
            }
        }
        found
    }

    // --- Cgroups ---

    /// Remembers the cgroup of a run.
    pub fn add_group(&self, group: Group) {
        lock(&self.groups).push(group);
    }

    /// The cgroups of runs that still exist.
    pub fn groups(&self) -> Vec<Group> {
        lock(&self.groups).clone()
    }

    /// Removes the cgroup at `path` when it is empty (`kill`: ends what is in it first);
    /// whether it is gone.
    pub fn release_group(&self, path: &Path, kill: bool) -> bool {
        let gone = if kill {
            crate::os::cgroup::kill_and_remove(path)
        } else {
            crate::os::cgroup::remove(path)
        };
        if gone {
            lock(&self.groups).retain(|g| g.path != path);
        }
        gone
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
        for g in self.groups() {
            out.push((g.run_id.clone(), crate::os::cgroup::members(&g.path)));
        }
        out
    }

    // --- The run guard ---

    fn guard_state(&self) -> MutexGuard<'_, GuardState> {
        lock(&self.guard)
    }

    /// The run guard, unless someone else holds it (or it is promised to a hand-off).
    pub fn try_guard(&self) -> Option<RunGuard<'_>> {
        let mut g = self.guard_state();
        if g.held || g.reserved_for.is_some() {
            return None;
        }
        g.held = true;
        Some(RunGuard(self))
    }

    /// The run guard for a trigger sent by run `from`: when `from` is the run whose setup
    /// holds the guard (the agent called back during the startup check), waits for that
    /// setup to end instead of answering busy. `None`: busy, or shutdown.
    pub fn handoff_guard(&self, from: &str, shutdown: &Shutdown) -> Option<RunGuard<'_>> {
        let mut g = self.guard_state();
        let mut waited = false;
        let taken = loop {
            let free = !g.held && g.reserved_for.as_deref().is_none_or(|r| r == from);
            if free {
                g.held = true;
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
            let step = (deadline - now).min(HANDOFF_POLL);
            g = self
                .guard_released
                .wait_timeout(g, step)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        if waited {
            g.waiting -= 1;
        }
        if !taken && g.waiting == 0 && g.reserved_for.as_deref() == Some(from) {
            g.reserved_for = None;
        }
        taken.then(|| RunGuard(self))
    }

    /// Marks `run_id` as the run whose setup the guard holder is doing, its startup check
    /// lasting `check` from now: hand-offs from it wait instead of being refused.
    pub fn setting_up(&self, run_id: &str, check: Duration) {
        let mut g = self.guard_state();
        g.setting_up = Some(run_id.to_string());
        g.setup_ends = Some(Instant::now() + check);
    }

    pub fn guard_held(&self) -> bool {
        self.guard_state().held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        // History writes go nowhere: the directory does not exist.
        Registry::new(History::open(Path::new("/nonexistent/logs")), 7)
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
            started_at: String::new(),
            started: Instant::now(),
            prompt: String::new(),
        }
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
        let seed = r.ids.load(Ordering::Relaxed);
        let first = r.next_id();
        let second = r.next_id();
        r.ids.store(seed, Ordering::Relaxed);
        r.history.record(live(&first).row());
        assert_eq!(r.new_id(), second, "the held id was handed out again");
        r.ids.store(seed, Ordering::Relaxed);
        r.history.record(live(&format!("auto{second}")).row());
        let third = r.new_id();
        assert!(third != first && third != second);
    }

    #[test]
    fn the_guard_is_exclusive_until_dropped() {
        let r = registry();
        let g = r.try_guard().expect("free");
        assert!(r.try_guard().is_none());
        drop(g);
        assert!(r.try_guard().is_some());
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

    /// Whoever sees a run exit (shutdown, before the process ends) finds its history row
    /// complete.
    #[test]
    fn an_exit_is_in_the_history_before_waiters_wake() {
        let r = std::sync::Arc::new(registry());
        for i in 0..300 {
            let id = format!("r{i}");
            r.register(live(&id), None);
            let (b, wid) = (r.clone(), id.clone());
            let waiter = std::thread::spawn(move || {
                assert!(b.wait_all_exited(Duration::from_secs(30)));
                b.history.get(&wid).and_then(|r| r.return_code)
            });
            r.finish(&id, -15, false);
            assert_eq!(waiter.join().unwrap(), Some(-15), "round {i}");
        }
    }

    /// A run's end is counted under its outcome: Looper's stop reason first, then an
    /// outside signal, then its exit code; every outcome is listed, at 0 until it happens.
    #[test]
    fn ends_are_counted_by_outcome() {
        let r = registry();
        for (id, rc, stopped) in [("a", 0, None), ("b", 1, None), ("c", -15, None)] {
            r.register(live(id), None);
            if let Some(reason) = stopped {
                r.mark_stopping(&[live(id).pid as i32], reason);
            }
            r.finish(id, rc, false);
        }
        r.register(live("d"), None);
        r.mark_stopping(&[live("d").pid as i32], StopReason::Replaced);
        assert_eq!(
            r.finish("d", -15, false).unwrap().reason,
            Some(StopReason::Replaced)
        );
        // Its own hand-off: the stop that follows does not make it "replaced".
        r.register(live("f"), None);
        r.mark_handed_off("f");
        r.mark_stopping(&[live("f").pid as i32], StopReason::Replaced);
        let f = r.finish("f", -15, false).unwrap();
        assert_eq!(f.reason, Some(StopReason::HandedOff));
        assert_eq!(f.row.outcome.as_deref(), Some("handed_off"));
        r.register(live("e"), None);
        assert_eq!(
            r.finish("e", 1, true).unwrap().reason,
            Some(StopReason::UsageLimit)
        );
        assert!(r.finish("e", 1, false).is_none(), "ended twice");
        let (started, ended) = r.counts();
        assert_eq!(
            started,
            vec![
                (Trigger::Http, 0),
                (Trigger::Inbox, 0),
                (Trigger::Autopoll, 6)
            ]
        );
        let count = |name: &str| ended.iter().find(|(o, _)| o.as_str() == name).unwrap().1;
        assert_eq!(
            [
                count("ok"),
                count("failed"),
                count("external"),
                count("replaced"),
                count("usage_limit"),
                count("hung"),
                count("handed_off")
            ],
            [1, 1, 1, 1, 1, 0, 1]
        );
        assert_eq!(ended.len(), 8);
    }

    /// A hand-off from the run being set up waits for the guard and gets it before anyone
    /// else; a trigger from any other run is refused at once.
    #[test]
    fn a_handoff_from_the_run_being_set_up_waits_for_the_guard() {
        let r = std::sync::Arc::new(registry());
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let setup = r.try_guard().expect("free");
        r.setting_up("r1", Duration::from_secs(5));
        assert!(
            r.handoff_guard("other", &shutdown).is_none(),
            "another run's hand-off waited"
        );
        let (b, s) = (r.clone(), shutdown.clone());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let guard = b.handoff_guard("r1", &s);
            let _ = released.recv();
            guard.is_some()
        });
        while r.guard_state().waiting == 0 {
            std::thread::yield_now();
        }
        drop(setup);
        // Promised to the waiting hand-off (or taken by it): nobody else slips in.
        assert!(r.try_guard().is_none(), "the guard went to someone else");
        release.send(()).unwrap();
        assert!(waiter.join().unwrap(), "the hand-off did not get the guard");
        assert!(!r.guard_held());
        assert!(r.try_guard().is_some());
    }
}
