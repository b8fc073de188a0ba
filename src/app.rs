//! The state one server shares between its threads: configuration, the run guard, the
//! shutdown signal, the runs Looper started, and request ids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::history::{History, Row};
use crate::limits::UsageLimit;

/// Exits we remember for the startup check and stale hand-offs.
const RECENT_EXITS: usize = 32;
/// Run tokens remembered, so that a run that just ended is still known as a run.
const RECENT_TOKENS: usize = 64;

/// A run's token and whose it is.
struct RunToken {
    token: String,
    run_id: String,
    workspace: PathBuf,
}

/// A run's cgroup.
#[derive(Debug, Clone)]
pub struct Group {
    pub run_id: String,
    pub workspace: PathBuf,
    pub path: PathBuf,
}
/// Workspaces whose inboxes are watched at once.
const MAX_INBOXES: usize = 32;

/// A run Looper started that has not exited yet.
#[derive(Debug, Clone)]
pub struct LiveRun {
    pub run_id: String,
    pub request_id: String,
    pub trigger: &'static str,
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
            trigger: self.trigger.to_string(),
            pid: self.pid,
            workspace: self.workspace.clone(),
            log_path: self.log_path.clone(),
            started_at: self.started_at.clone(),
            ended_at: None,
            return_code: None,
            duration_seconds: None,
            stop_reason: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    pub run_id: String,
    pub return_code: i32,
    pub ended_at: String,
    pub duration_seconds: f64,
}

/// The runs of this server, under one lock.
#[derive(Default)]
pub struct Runs {
    /// Oldest first; the last one is the active run.
    pub live: Vec<LiveRun>,
    /// Newest last.
    pub exits: VecDeque<Exit>,
    /// Basenames of every binary we launched, so that later stops recognise those runs.
    pub binaries: HashSet<String>,
    /// Runs Looper is stopping on purpose, with the reason: their deaths are no crashes.
    /// Set only when a stop actually begins.
    pub stopping: HashMap<String, StopReason>,
}

impl Runs {
    pub fn active(&self) -> Option<&LiveRun> {
        self.live.last()
    }

    pub fn exit_of(&self, run_id: &str) -> Option<&Exit> {
        self.exits.iter().rev().find(|e| e.run_id == run_id)
    }
}

/// Why Looper stopped one of its runs (the history row's `stop_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A fresh run replaced it.
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
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Replaced => "replaced",
            StopReason::Hung => "hung",
            StopReason::Shutdown => "shutdown",
            StopReason::External => "external",
            StopReason::UsageLimit => "usage_limit",
        }
    }
}

/// A run that exits non-zero sooner than this after its start counts as a crash.
pub const QUICK_EXIT: Duration = Duration::from_secs(60);
/// Crashes in a row before autopoll backs off.
pub const CRASH_LOOP_THRESHOLD: u32 = 3;
/// The back-off starts at the poll interval, but never below this: a failing codex is not
/// restarted more than a handful of times a minute, whatever the settings.
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What autopoll shows in `/status` and decides by.
#[derive(Debug, Default, Clone)]
pub struct AutopollState {
    pub next_tick_at: Option<String>,
    /// Crashes in a row (quick non-zero exits not caused by Looper).
    pub crashes: u32,
    pub backoff_until: Option<Instant>,
    pub backoff_until_text: Option<String>,
    /// Whether the current crash loop was announced already.
    pub announced: bool,
    /// Codex hit its usage limit: autopoll starts nothing before this time (the reset plus
    /// a margin).
    pub paused_until: Option<chrono::DateTime<chrono::Local>>,
}

/// What ending a run changed, for the watcher thread to announce outside the locks.
pub struct Finished {
    pub row: Row,
    /// Set when this exit started a back-off (announce it once).
    pub backoff_started: Option<Duration>,
    /// Set when this exit started a usage-limit pause (announce it once).
    pub pause_started: Option<UsageLimit>,
}

/// How often a hand-off waiting for a run's setup looks at the shutdown flag.
const HANDOFF_POLL: Duration = Duration::from_millis(100);
/// How long past the end of a run's startup check a hand-off from it waits for the setup
/// to release the guard (answering is all that is left to do by then).
const HANDOFF_SLACK: Duration = Duration::from_secs(10);

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
pub struct RunGuard<'a>(&'a App);

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

/// A flag that long waits can be woken from.
#[derive(Default)]
pub struct Shutdown {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Shutdown {
    pub fn trigger(&self) {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.flag.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `limit`; true when shutdown was asked for meanwhile.
    pub fn wait(&self, limit: Duration) -> bool {
        let set = self.flag.lock().unwrap_or_else(|e| e.into_inner());
        let (set, _) = self
            .cv
            .wait_timeout_while(set, limit, |set| !*set)
            .unwrap_or_else(|e| e.into_inner());
        *set
    }
}

/// Everything the threads of one server share.
pub struct App {
    pub cfg: Config,
    /// `LOOPER_URL` for children: the full address of `/run`.
    pub url: String,
    guard: Mutex<GuardState>,
    /// Notified whenever the run guard is released.
    guard_released: Condvar,
    pub shutdown: Shutdown,
    runs: Mutex<Runs>,
    /// Notified whenever a run exits (and at shutdown).
    pub run_exited: Condvar,
    /// `/run` requests being read or served on worker threads.
    pub inflight: AtomicUsize,
    ids: AtomicU64,
    /// `PATH` at start, for finding binaries.
    pub path_var: Option<String>,
    pub history: History,
    pub autopoll: Mutex<AutopollState>,
    /// Runs started and ended since start, for `/metrics`.
    counters: Mutex<crate::metrics::Counters>,
    /// Inboxes of the workspaces Looper runs in, newest last (see [`crate::inbox`]).
    inboxes: Mutex<Vec<Arc<crate::inbox::Inbox>>>,
    /// The tokens of the newest runs (`LOOPER_RUN_TOKEN`), newest last: a hand-off over
    /// HTTP presents its run's.
    run_tokens: Mutex<VecDeque<RunToken>>,
    /// Where runs get cgroups of their own; `None`: stops use `/proc` only.
    pub cgroups: Option<crate::cgroup::Cgroups>,
    /// The cgroups of runs, until they are empty and removed (a run that exited may leave
    /// an escaped process in its group: the next stop ends it).
    groups: Mutex<Vec<Group>>,
    /// Looper's own executable, for runs' `LOOPER_BIN`.
    pub self_exe: Option<PathBuf>,
    /// The listening socket, so that shutdown can wake the accept loop.
    listener: Mutex<Option<Arc<std::net::TcpListener>>>,
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

impl App {
    pub fn new(cfg: Config, url: String, path_var: Option<String>) -> App {
        App {
            url,
            guard: Mutex::new(GuardState::default()),
            guard_released: Condvar::new(),
            shutdown: Shutdown::default(),
            runs: Mutex::new(Runs::default()),
            run_exited: Condvar::new(),
            inflight: AtomicUsize::new(0),
            ids: AtomicU64::new(seed()),
            history: History::open(&cfg.log_dir),
            cfg,
            path_var,
            autopoll: Mutex::new(AutopollState::default()),
            listener: Mutex::new(None),
            inboxes: Mutex::new(Vec::new()),
            run_tokens: Mutex::new(VecDeque::new()),
            cgroups: None,
            groups: Mutex::new(Vec::new()),
            counters: Mutex::default(),
            self_exe: std::env::current_exe().ok(),
        }
    }

    /// The directory of Looper's own executable: local codex checkouts are looked for there.
    pub fn own_dir(&self) -> Option<&std::path::Path> {
        self.self_exe.as_deref().and_then(|e| e.parent())
    }

    /// Makes `listener` the socket that [`App::unblock_server`] wakes.
    pub fn set_listener(&self, listener: &Arc<std::net::TcpListener>) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(listener));
    }

    /// Wakes the accept loop (at shutdown): shutting the listening socket makes a blocked
    /// `accept` return at once. The socket stays open (we hold it) until the loop is done.
    pub fn unblock_server(&self) {
        use std::os::fd::AsRawFd;
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            crate::sys::shutdown_socket(l.as_raw_fd());
        }
    }

    /// Looks into `inbox` from now on (the most recent [`MAX_INBOXES`] are watched).
    pub fn watch_inbox(&self, inbox: crate::inbox::Inbox) {
        let mut list = self.inboxes.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|i| i.workspace != inbox.workspace);
        list.push(Arc::new(inbox));
        let excess = list.len().saturating_sub(MAX_INBOXES);
        list.drain(..excess);
    }

    /// The inboxes to look into.
    pub fn inboxes(&self) -> Vec<Arc<crate::inbox::Inbox>> {
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A fresh random token for run `run_id` of `workspace`, remembered as that run's.
    pub fn new_run_token(&self, run_id: &str, workspace: &std::path::Path) -> String {
        let mut bytes = [0u8; 16];
        if crate::sys::random_bytes(&mut bytes).is_err() {
            // No kernel randomness: the id generator's stream, never a fixed value.
            for chunk in bytes.chunks_mut(8) {
                let v = self.ids.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
            }
        }
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut list = self.run_tokens.lock().unwrap_or_else(|e| e.into_inner());
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

    /// The run (id and workspace) whose token `offered` is, compared in constant time.
    pub fn run_of_token(&self, offered: &str) -> Option<(String, PathBuf)> {
        let list = self.run_tokens.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for t in list.iter() {
            if crate::api::constant_time_eq(offered.as_bytes(), t.token.as_bytes()) {
                found = Some((t.run_id.clone(), t.workspace.clone()));
            }
        }
        found
    }

    /// The workspace of run `run_id`, live or in the history.
    pub fn workspace_of(&self, run_id: &str) -> Option<PathBuf> {
        if let Some(live) = self.runs().live.iter().find(|r| r.run_id == run_id) {
            return Some(live.workspace.clone());
        }
        self.history.get(run_id).map(|r| r.workspace)
    }

    /// How runs are stopped here: `cgroup` (each run in a cgroup of its own, ended whole)
    /// or `proc` (processes found through `/proc` only).
    pub fn stop_method(&self) -> &'static str {
        if self.cgroups.is_some() {
            "cgroup"
        } else {
            "proc"
        }
    }

    /// Remembers the cgroup of a run.
    pub fn add_group(&self, group: Group) {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(group);
    }

    /// The cgroups of runs that still exist, `only` those of the given runs when set.
    pub fn groups(&self) -> Vec<Group> {
        self.groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Removes the cgroup at `path` when it is empty (`kill`: ends what is in it first);
    /// whether it is gone.
    pub fn release_group(&self, path: &std::path::Path, kill: bool) -> bool {
        let gone = if kill {
            crate::cgroup::kill_and_remove(path)
        } else {
            crate::cgroup::remove(path)
        };
        if gone {
            self.groups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|g| g.path != path);
        }
        gone
    }

    /// For every run of ours, the pids in `table` that belong to it: its live process and
    /// their descendants, and whatever sits in its cgroup.
    pub fn run_members(&self, table: &[crate::procs::ProcInfo]) -> Vec<(String, Vec<i32>)> {
        let live: Vec<(String, i32, Option<u64>)> = self
            .runs()
            .live
            .iter()
            .map(|r| (r.run_id.clone(), r.pid as i32, r.start_time))
            .collect();
        let mut out: Vec<(String, Vec<i32>)> = live
            .into_iter()
            .filter_map(|(id, pid, start)| {
                Some((id, crate::procs::descendants(table, (pid, start?))))
            })
            .collect();
        for g in self.groups() {
            out.push((g.run_id.clone(), crate::cgroup::members(&g.path)));
        }
        out
    }

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
        let mut z = self
            .ids
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:08x}", (z ^ (z >> 31)) >> 32)
    }

    fn guard_state(&self) -> MutexGuard<'_, GuardState> {
        self.guard.lock().unwrap_or_else(|e| e.into_inner())
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
    pub fn handoff_guard(&self, from: &str) -> Option<RunGuard<'_>> {
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
            if !wait || now >= deadline || self.shutdown.is_set() {
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

    pub fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn counters(&self) -> MutexGuard<'_, crate::metrics::Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn autopoll_state(&self) -> MutexGuard<'_, AutopollState> {
        self.autopoll.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a run's exit (history, crash-loop accounting) and wakes whoever waits for it.
    /// The history row is written before the run stops counting as live, so that whoever
    /// waits for the exit (shutdown, say, before the process ends) finds it recorded.
    /// `limit`: the run ended on codex's usage limit.
    pub fn finish_run(
        &self,
        run_id: &str,
        return_code: i32,
        limit: Option<UsageLimit>,
    ) -> Option<Finished> {
        let (live, reason) = {
            let runs = self.runs();
            let live = runs.live.iter().find(|r| r.run_id == run_id)?.clone();
            (live, runs.stopping.get(run_id).copied())
        };
        // Ended by a polite signal Looper did not send: stopped from outside.
        let external = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].map(|sig| -sig);
        let reason = reason.or_else(|| {
            if limit.is_some() {
                Some(StopReason::UsageLimit)
            } else {
                external
                    .contains(&return_code)
                    .then_some(StopReason::External)
            }
        });
        let elapsed = live.started.elapsed();
        let duration_seconds = (elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
        let ended_at = chrono::Local::now().to_rfc3339();
        let row = Row {
            ended_at: Some(ended_at.clone()),
            return_code: Some(return_code),
            duration_seconds: Some(duration_seconds),
            stop_reason: reason.map(|r| r.as_str().to_string()),
            ..live.row()
        };
        self.history.record(row.clone());
        self.counters().ended(match reason {
            Some(r) => r.as_str(),
            None if return_code == 0 => "ok",
            None => "failed",
        });

        let mut runs = self.runs();
        runs.live.retain(|r| r.run_id != run_id);
        runs.stopping.remove(run_id);
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

        let quick = elapsed < QUICK_EXIT;
        let mut state = self.autopoll_state();
        let mut backoff_started = None;
        let mut pause_started = None;
        let paused_until = state.paused_until;
        if let Some(limit) = &limit {
            // Not a crash: codex will not work before the reset, whatever we do.
            let margin =
                chrono::Duration::from_std(self.cfg.usage_limit_margin).unwrap_or_default();
            let until = limit.resets_at + margin;
            let now = chrono::Local::now();
            log::warn!(
                "codex.exec.usage_limit run_id={run_id} resets_at={} stated={} paused_until={}",
                limit.resets_at.to_rfc3339(),
                limit.stated,
                until.to_rfc3339()
            );
            if paused_until.is_none_or(|p| p <= now) {
                pause_started = Some(limit.clone());
            }
            state.paused_until = Some(until);
        } else if quick && reason.is_some() {
            // Looper stopped it: says nothing about codex's health.
        } else if quick && return_code != 0 {
            state.crashes += 1;
            if state.crashes >= CRASH_LOOP_THRESHOLD {
                let base = self.cfg.idle_poll.max(MIN_BACKOFF);
                let doublings = (state.crashes - CRASH_LOOP_THRESHOLD).min(16);
                let backoff = base.saturating_mul(1 << doublings).min(MAX_BACKOFF);
                let until = Instant::now() + backoff;
                state.backoff_until = Some(until);
                state.backoff_until_text = Some(crate::autopoll::at(until));
                log::warn!(
                    "codex.exec.autopoll.backoff crashes={} backoff_s={:.1}",
                    state.crashes,
                    backoff.as_secs_f64()
                );
                if !state.announced {
                    state.announced = true;
                    backoff_started = Some(backoff);
                }
            }
        } else if state.crashes > 0 || state.backoff_until.is_some() {
            log::info!(
                "codex.exec.autopoll.backoff_reset after_crashes={}",
                state.crashes
            );
            *state = AutopollState {
                next_tick_at: state.next_tick_at.take(),
                paused_until,
                ..AutopollState::default()
            };
        }
        if return_code == 0 && state.paused_until.take().is_some() {
            // Someone's run worked (bought credits, or the reset came early): go on.
            log::info!("codex.exec.autopoll.resume reason=run_succeeded run_id={run_id}");
        }
        Some(Finished {
            pause_started,
            row,
            backoff_started,
        })
    }

    /// Wakes whoever waits for a run's exit (at shutdown). The lock their condition is read
    /// under is taken first, so that a waiter between its check and its wait is not missed.
    pub fn wake_exit_waiters(&self) {
        drop(self.runs());
        self.run_exited.notify_all();
    }

    /// Waits up to `limit` (or until shutdown) for `run_id` to exit; its exit when it did.
    pub fn wait_exit(&self, run_id: &str, limit: Duration) -> Option<Exit> {
        let runs = self.runs();
        let (runs, _) = self
            .run_exited
            .wait_timeout_while(runs, limit, |r| {
                r.exit_of(run_id).is_none() && !self.shutdown.is_set()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> App {
        // History writes go nowhere: the log directory does not exist.
        let env: HashMap<String, String> = [
            ("HOME".to_string(), "/nonexistent".to_string()),
            (
                "CODEX_EXEC_LOG_DIR".to_string(),
                "/nonexistent/logs".to_string(),
            ),
        ]
        .into();
        let cfg = Config::from_env(&env, std::path::Path::new("/tmp")).unwrap();
        App::new(cfg, "http://127.0.0.1:1/run".into(), None)
    }

    #[test]
    fn ids_are_eight_hex_digits_and_differ() {
        let a = app();
        let ids: HashSet<String> = (0..1000).map(|_| a.new_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids
            .iter()
            .all(|i| i.len() == 8 && i.chars().all(|c| c.is_ascii_hexdigit())));
    }

    /// An id the history already holds is never handed out again.
    #[test]
    fn ids_the_history_holds_are_skipped() {
        let a = app();
        let seed = a.ids.load(Ordering::Relaxed);
        let first = a.next_id();
        let second = a.next_id();
        a.ids.store(seed, Ordering::Relaxed);
        a.history.record(live(&first).row());
        assert_eq!(a.new_id(), second, "the held id was handed out again");
        a.ids.store(seed, Ordering::Relaxed);
        a.history.record(live(&format!("auto{second}")).row());
        let third = a.new_id();
        assert!(third != first && third != second);
    }

    #[test]
    fn the_guard_is_exclusive_until_dropped() {
        let a = app();
        let g = a.try_guard().expect("free");
        assert!(a.try_guard().is_none());
        drop(g);
        assert!(a.try_guard().is_some());
    }

    fn live(id: &str) -> LiveRun {
        LiveRun {
            run_id: id.into(),
            request_id: id.into(),
            trigger: "autopoll",
            pid: 1,
            start_time: None,
            workspace: "/w".into(),
            log_path: "/nonexistent/l".into(),
            started_at: String::new(),
            started: Instant::now(),
            prompt: String::new(),
        }
    }

    /// Shutdown wakes a startup check waiting for its run's exit, wherever the waiter is
    /// (before its check, between its check and its wait, or waiting): the check ends with
    /// no exit instead of sitting out its limit.
    #[test]
    fn shutdown_wakes_whoever_waits_for_an_exit() {
        let limit = Duration::from_secs(20);
        for i in 0..100 {
            let a = std::sync::Arc::new(app());
            let b = a.clone();
            let waiter = std::thread::spawn(move || {
                let since = std::time::Instant::now();
                let exit = b.wait_exit("r", limit);
                (exit, since.elapsed())
            });
            // Now at once, now once the waiter is most likely waiting.
            std::thread::sleep(Duration::from_millis(i % 3));
            a.shutdown.trigger();
            a.wake_exit_waiters();
            let (exit, waited) = waiter.join().unwrap();
            assert!(exit.is_none(), "round {i}");
            assert!(waited < limit, "round {i}: the wake-up was lost");
        }
    }

    /// Whoever sees a run exit (shutdown, before the process ends) finds its history row
    /// complete.
    #[test]
    fn an_exit_is_in_the_history_before_waiters_wake() {
        let a = std::sync::Arc::new(app());
        for i in 0..300 {
            let id = format!("r{i}");
            a.runs().live.push(live(&id));
            let (b, wid) = (a.clone(), id.clone());
            let waiter = std::thread::spawn(move || {
                assert!(b.wait_all_exited(Duration::from_secs(30)));
                b.history.get(&wid).and_then(|r| r.return_code)
            });
            a.finish_run(&id, -15, None);
            assert_eq!(waiter.join().unwrap(), Some(-15), "round {i}");
        }
    }

    #[test]
    fn quick_crashes_back_off_and_a_healthy_run_resets() {
        let a = app();
        let mut announced = 0;
        for i in 0..5 {
            let id = format!("c{i}");
            a.runs().live.push(live(&id));
            if a.finish_run(&id, 1, None)
                .unwrap()
                .backoff_started
                .is_some()
            {
                announced += 1;
            }
        }
        let state = a.autopoll_state().clone();
        assert_eq!(state.crashes, 5);
        let until = state.backoff_until.expect("backing off");
        // base max(300 s, 10 s), doubled twice.
        assert!(until > Instant::now() + Duration::from_secs(1100));
        assert_eq!(announced, 1, "announced once");
        // A run Looper stopped itself is no crash; a clean exit resets.
        a.runs().live.push(live("s"));
        a.runs().stopping.insert("s".into(), StopReason::Replaced);
        a.finish_run("s", -15, None);
        assert_eq!(a.autopoll_state().crashes, 5);
        a.runs().live.push(live("ok"));
        a.finish_run("ok", 0, None);
        assert_eq!(a.autopoll_state().crashes, 0);
        assert!(a.autopoll_state().backoff_until.is_none());
    }

    /// A hand-off from the run being set up waits for the guard and gets it before anyone
    /// else; a trigger from any other run is refused at once.
    #[test]
    fn a_handoff_from_the_run_being_set_up_waits_for_the_guard() {
        let a = std::sync::Arc::new(app());
        let setup = a.try_guard().expect("free");
        a.setting_up("r1", Duration::from_secs(5));
        assert!(
            a.handoff_guard("other").is_none(),
            "another run's hand-off waited"
        );
        let b = a.clone();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::spawn(move || {
            let guard = b.handoff_guard("r1");
            let _ = released.recv();
            guard.is_some()
        });
        while a.guard_state().waiting == 0 {
            std::thread::yield_now();
        }
        drop(setup);
        // Promised to the waiting hand-off (or taken by it): nobody else slips in.
        assert!(a.try_guard().is_none(), "the guard went to someone else");
        release.send(()).unwrap();
        assert!(waiter.join().unwrap(), "the hand-off did not get the guard");
        assert!(!a.guard_held());
        assert!(a.try_guard().is_some());
    }

    #[test]
    fn shutdown_wakes_a_waiter() {
        let a = std::sync::Arc::new(app());
        let b = a.clone();
        let t = std::thread::spawn(move || b.shutdown.wait(Duration::from_secs(30)));
        a.shutdown.trigger();
        assert!(t.join().unwrap());
    }
}
