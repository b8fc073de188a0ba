//! The state one server shares between its threads: configuration, the run guard, the
//! shutdown signal, the runs Looper started, and request ids.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

/// Exits we remember for the startup check and stale hand-offs.
const RECENT_EXITS: usize = 32;

/// A run Looper started that has not exited yet.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRun {
    pub run_id: String,
    pub request_id: String,
    pub pid: u32,
    pub workspace: PathBuf,
    pub log_path: PathBuf,
    pub started_at: String,
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
}

impl Runs {
    pub fn active(&self) -> Option<&LiveRun> {
        self.live.last()
    }

    pub fn exit_of(&self, run_id: &str) -> Option<&Exit> {
        self.exits.iter().rev().find(|e| e.run_id == run_id)
    }
}

/// The one run guard shared by `/run` and autopoll: whoever holds it sets up a run.
pub struct RunGuard<'a>(&'a AtomicBool);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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
    guard: AtomicBool,
    pub shutdown: Shutdown,
    runs: Mutex<Runs>,
    /// Notified whenever a run exits (and at shutdown).
    pub run_exited: Condvar,
    /// `/run` requests being read or served on worker threads.
    pub inflight: AtomicUsize,
    ids: AtomicU64,
    /// `PATH` at start, for finding binaries.
    pub path_var: Option<String>,
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
            cfg,
            url,
            guard: AtomicBool::new(false),
            shutdown: Shutdown::default(),
            runs: Mutex::new(Runs::default()),
            run_exited: Condvar::new(),
            inflight: AtomicUsize::new(0),
            ids: AtomicU64::new(seed()),
            path_var,
        }
    }

    /// A fresh 8-hex-digit id (splitmix64 over a random seed).
    pub fn new_id(&self) -> String {
        let mut z = self
            .ids
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        format!("{:08x}", (z ^ (z >> 31)) >> 32)
    }

    /// The run guard, unless someone else holds it.
    pub fn try_guard(&self) -> Option<RunGuard<'_>> {
        self.guard
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| RunGuard(&self.guard))
    }

    pub fn guard_held(&self) -> bool {
        self.guard.load(Ordering::Acquire)
    }

    pub fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a run's exit and wakes whoever waits for it.
    pub fn finish_run(&self, exit: Exit) {
        let mut runs = self.runs();
        runs.live.retain(|r| r.run_id != exit.run_id);
        runs.exits.push_back(exit);
        while runs.exits.len() > RECENT_EXITS {
            runs.exits.pop_front();
        }
        drop(runs);
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
    use std::collections::HashMap;

    fn app() -> App {
        let env: HashMap<String, String> =
            [("HOME".to_string(), "/nonexistent".to_string())].into();
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

    #[test]
    fn the_guard_is_exclusive_until_dropped() {
        let a = app();
        let g = a.try_guard().expect("free");
        assert!(a.try_guard().is_none());
        drop(g);
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
