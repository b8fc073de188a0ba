//! What one server's threads share: the configuration, the shutdown flag, the run
//! registry, autopoll's policy, the loop's memory, the inboxes being watched and the listening socket. Each
//! is reached through a method; the rooms that act on runs live elsewhere.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::inbox::{Doorbell, Inbox};
use crate::model::Stamp;
use crate::os::cgroup::Cgroups;
use crate::os::shutdown::Shutdown;
use crate::rules::backoff::Policy;
use crate::state::account::Account;
use crate::state::history::History;
use crate::state::holds::Holds;
use crate::state::loopfile::{LoopFile, SavedBackoff};
use crate::state::outbox::{Delivery, Outbox};
use crate::state::registry::Registry;

/// Workspaces whose inboxes are watched at once.
const MAX_INBOXES: usize = 32;

/// Everything the threads of one server share.
pub struct App {
    cfg: Config,
    /// `LOOPER_URL` for children: the full address of `/run`.
    url: String,
    shutdown: Shutdown,
    registry: Registry,
    policy: Mutex<Policy>,
    /// Holds and queued announcements, kept across restarts (`loop-state.json`).
    loop_file: LoopFile,
    /// Who delivers the queued announcements now.
    delivery: Delivery,
    /// The account's quota figures seen (`quota.jsonl`).
    account: Account,
    /// Autopoll's last start that failed before any run, until one works: when, and why.
    autopoll_failure: Mutex<Option<(Stamp, String)>>,
    /// `/run` requests being read or served on worker threads.
    inflight: AtomicUsize,
    /// `PATH` at start, for finding binaries.
    path_var: Option<String>,
    /// Inboxes of the workspaces Looper runs in, newest last (see [`crate::inbox`]).
    inboxes: Mutex<Vec<Arc<Inbox>>>,
    doorbell: Doorbell,
    /// Where runs get cgroups of their own; `None`: stops use `/proc` only.
    cgroups: Option<Cgroups>,
    /// Looper's own executable, for runs' `LOOPER_BIN`.
    self_exe: Option<PathBuf>,
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
    /// `cgroups`: where runs get cgroups of their own, when Looper can make them. `Err`: a
    /// state file that cannot be read (Looper must not start). With the app, the state files
    /// that were no state of Looper's, set aside (where, and why).
    pub fn new(
        cfg: Config,
        url: String,
        path_var: Option<String>,
        cgroups: Option<Cgroups>,
    ) -> Result<(App, Vec<(PathBuf, String)>), String> {
        let history = History::open(&cfg.log_dir)?;
        // Reading a long history freed more than it keeps: give it back to the system.
        crate::os::sys::trim_heap();
        let loop_file = LoopFile::open(&cfg.log_dir)?;
        let corrupt = history
            .corrupt
            .into_iter()
            .chain(loop_file.corrupt)
            .collect();
        // A crash loop's back-off goes on across a restart.
        let policy = loop_file
            .file
            .read(|s| s.backoff.clone())
            .map_or_else(Policy::default, |b| {
                let left = b.until.map_or(0.0, |u| u.seconds_since(Stamp::now()));
                Policy::restored(b.crashes, Duration::from_secs_f64(left), Instant::now())
            });
        let app = App {
            url,
            shutdown: Shutdown::default(),
            registry: Registry::new(history.history, seed()),
            policy: Mutex::new(policy),
            loop_file: loop_file.file,
            delivery: Delivery::default(),
            account: Account::open(&cfg.log_dir, cfg.report_sources.codex_home.clone()),
            autopoll_failure: Mutex::new(None),
            inflight: AtomicUsize::new(0),
            cfg,
            path_var,
            listener: Mutex::new(None),
            inboxes: Mutex::new(Vec::new()),
            doorbell: Doorbell::new(),
            cgroups,
            self_exe: std::env::current_exe().ok(),
        };
        Ok((app, corrupt))
    }

    /// Writes what a failed write left unsaved (the history's rows, the loop's state);
    /// whether everything is saved now.
    pub fn save_unsaved(&self) -> bool {
        let history = self.history().retry();
        let loop_state = self.loop_file.retry();
        history && loop_state
    }

    /// The state files whose latest state is not on disk yet (a write failed).
    pub fn unsaved(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.history().saved() {
            out.push(crate::state::history::FILE_NAME);
        }
        if !self.loop_file.saved() {
            out.push(crate::state::loopfile::FILE_NAME);
        }
        out
    }

    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// The address of `/run` that runs are given as `LOOPER_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn history(&self) -> &History {
        self.registry.history()
    }

    /// Each workspace's hold (see [`crate::state::holds`]).
    /// Notes how autopoll's start went: `Some(why)` it failed, `None` a run started.
    pub fn note_autopoll_failure(&self, why: Option<String>) {
        let mut last = self
            .autopoll_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *last = why.map(|w| (Stamp::now(), w));
    }

    /// Autopoll's last start that failed, since no start worked: when, and why.
    pub fn autopoll_failure(&self) -> Option<(Stamp, String)> {
        self.autopoll_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The account's quota figures: read from codex's session files, kept.
    pub fn account(&self) -> &Account {
        &self.account
    }

    pub fn holds(&self) -> Holds<'_> {
        Holds(&self.loop_file)
    }

    /// The announcements Zulip did not take yet (see [`crate::state::outbox`]).
    pub fn outbox(&self) -> Outbox<'_> {
        Outbox {
            file: &self.loop_file,
            delivery: &self.delivery,
        }
    }

    /// Keeps autopoll's crash count and back-off in the loop's file (after a change of
    /// the policy), so that a restart goes on with them.
    pub fn remember_backoff(&self) {
        let remembered = self.policy().remembered(Instant::now());
        let saved = remembered.map(|(crashes, left)| SavedBackoff {
            crashes,
            until: (!left.is_zero()).then(|| Stamp::after(left)),
        });
        self.loop_file.change(|s| s.backoff = saved);
    }

    /// Autopoll's policy, to ask or to tell (see [`crate::rules::backoff`]).
    pub fn policy(&self) -> MutexGuard<'_, Policy> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The count of `/run`s being served, for the in-flight cap.
    pub fn inflight(&self) -> &AtomicUsize {
        &self.inflight
    }

    /// `PATH` as Looper started with it.
    pub fn path_var(&self) -> Option<&str> {
        self.path_var.as_deref()
    }

    pub fn cgroups(&self) -> Option<&Cgroups> {
        self.cgroups.as_ref()
    }

    /// Looper's own executable.
    pub fn self_exe(&self) -> Option<&Path> {
        self.self_exe.as_deref()
    }

    /// The directory of Looper's own executable: local codex checkouts are looked for there.
    pub fn own_dir(&self) -> Option<&Path> {
        self.self_exe.as_deref().and_then(|e| e.parent())
    }

    /// The workspace a request names (relative to Looper's directory, `~` expanded), as the
    /// loop's state knows it: canonical, `..` folded away; `None`: the configured one.
    pub fn workspace_named(&self, workspace: Option<&str>) -> PathBuf {
        let named = match workspace {
            Some(w) => crate::os::paths::normalize(
                &self
                    .cfg
                    .cwd
                    .join(crate::os::paths::expand_home(w, self.cfg.home.as_deref())),
            ),
            None => self.cfg.workspace.clone(),
        };
        named.canonicalize().unwrap_or(named)
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

    /// Sets the shutdown flag and wakes every thread that waits: exit waiters, the accept
    /// loop, the inbox thread.
    pub fn begin_shutdown(&self) {
        self.shutdown.trigger();
        self.registry.wake_exit_waiters();
        self.unblock_server();
        self.doorbell.ring();
    }

    /// What wakes the inbox thread.
    pub fn doorbell(&self) -> &Doorbell {
        &self.doorbell
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
            crate::os::sys::shutdown_socket(l.as_raw_fd());
        }
    }

    /// Looks into `inbox` from now on (the most recent [`MAX_INBOXES`] are watched).
    pub fn watch_inbox(&self, inbox: Inbox) {
        self.doorbell.watch(&inbox);
        let mut list = self.inboxes.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|i| i.workspace != inbox.workspace);
        list.push(Arc::new(inbox));
        let excess = list.len().saturating_sub(MAX_INBOXES);
        list.drain(..excess);
        drop(list);
        // Whatever already waits in it is taken now.
        self.doorbell.ring();
    }

    /// The inboxes to look into.
    pub fn inboxes(&self) -> Vec<Arc<Inbox>> {
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
