//! The watcher of one run: the one owner of its end. It waits for the run's process to exit
//! (mirroring its output meanwhile), writes the log's trailer, tells the registry the exit
//! (the startup check learns it at once), reads what the run did, records the end and its
//! report together, has the loop's judge decide what the end means, and says it.
//!
//! A run an earlier Looper started is adopted at start ([`take_over`]) and watched the same
//! way through its pidfd (its exit code cannot be learnt: it is not our child); a run that
//! ended while no Looper watched gets its end recorded from its log and session file.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::model::{Outcome, Row, Stamp};
use crate::os::logging::Q;
use crate::os::signals::Waiter;
use crate::report::StartState;
use crate::run::output;
use crate::state::app::App;
use crate::state::registry::{Exited, LiveRun};

/// The most a run's last line quoted after its end holds (characters).
const LAST_LINE_CHARS: usize = 300;
/// How long what asks git for a run's report waits for a run's setup under way (a startup
/// check lasts a second by default).
const YIELD_TO_SETUP: Duration = Duration::from_secs(2);

/// What is watched: Looper's own child (reaped here, its exit code known, the trailer
/// written into its log), or a run adopted from an earlier Looper.
pub enum Watched {
    Child { child: Child, log: File },
    Adopted,
}

/// One run's watcher.
pub struct Watcher {
    pub app: Arc<App>,
    pub run: LiveRun,
    /// Where the run's output starts in its log (after the header).
    pub output_start: u64,
    /// Its cgroup, if it has one.
    pub group_path: Option<PathBuf>,
    /// What it started from, read before it was spawned.
    pub start: StartState,
}

impl Watcher {
    /// Starts the watcher's thread and gives it to the registry. Without a thread, Looper's
    /// child is stopped and reaped here (no orphan, no zombie), its end recorded.
    pub fn start(self, watched: Watched) -> std::io::Result<()> {
        let app = Arc::clone(&self.app);
        let run_id = self.run.run_id.clone();
        // The closure (and the child in it) comes back with a failed spawn: the child is
        // still unreaped then, and its pid ours.
        let pid = self.run.pid;
        let log_path = self.run.log_path.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("watch-{run_id}"))
            .spawn(move || self.watch(watched));
        match spawned {
            Ok(handle) => {
                app.registry().attach_watcher(&run_id, handle);
                Ok(())
            }
            Err(e) => {
                crate::os::signals::kill_and_reap_child(pid);
                let _ = crate::os::logging::open_append(&log_path)
                    .and_then(|mut f| f.write_all(output::trailer(-libc::SIGKILL).as_bytes()));
                if let Some(exited) = app.registry().exited(&run_id, Some(-libc::SIGKILL), false) {
                    app.registry()
                        .ended(&run_id, exited.row(Default::default()));
                }
                Err(e)
            }
        }
    }

    fn watch(self, watched: Watched) {
        let app = &self.app;
        let rid = &self.run.run_id;
        let mut start = self.start.clone();
        // The work tree's fingerprint asks git, which may be slow (a big repository) or made
        // to hang by the agent: read beside the watch, so that the exit is noticed at once.
        let tree = match &watched {
            Watched::Child { .. } => self.read_start_tree(),
            Watched::Adopted => None,
        };
        log::info!(
            "run.start_state run_id={rid} head={} todo={}",
            start.head.as_deref().unwrap_or("-"),
            start
                .todo
                .map(|t| format!("{}/{}", t.open, t.open + t.done))
                .unwrap_or_else(|| "-".into())
        );
        let mirror = app.cfg().mirror_output;
        let return_code = match watched {
            Watched::Child { mut child, mut log } => {
                let (rc, bytes) = output::watch(
                    &mut child,
                    rid,
                    &self.run.log_path,
                    self.output_start,
                    mirror,
                );
                if let Err(e) = log.write_all(output::trailer(rc).as_bytes()) {
                    log::error!(
                        "codex.exec.output.write_failed request_id={rid} error={}",
                        Q(&e.to_string())
                    );
                }
                log::info!(
                    "codex.exec.exit request_id={rid} run_id={rid} pid={} return_code={rc} bytes={bytes}",
                    self.run.pid
                );
                Some(rc)
            }
            Watched::Adopted => {
                let from = std::fs::metadata(&self.run.log_path).map_or(0, |m| m.len());
                output::mirror_until_exit(
                    &Waiter::new(self.run.pid as i32),
                    rid,
                    &self.run.log_path,
                    from,
                    mirror,
                );
                log::info!(
                    "codex.exec.exit request_id={rid} run_id={rid} pid={} return_code=unknown adopted=true",
                    self.run.pid
                );
                None
            }
        };
        // An empty cgroup goes; one that something escaped into waits for the next stop.
        if let Some(path) = &self.group_path {
            if !app.registry().groups().release(path, false) {
                log::info!("cgroup.lingering run_id={rid} hint=\"a process the run left is stopped with the next stop\"");
            }
        }
        // HEAD and the TODO list as the run left them (files: read at once, before the
        // next run can change them).
        let end = app.cfg().report_sources.at_start(&self.run.workspace);
        let limit = usage_limit(&self.run, self.output_start, return_code);
        let Some(exited) = app.registry().exited(rid, return_code, limit.is_some()) else {
            return;
        };
        start.tree = tree.and_then(|t| t.join().ok()).flatten();
        // The report asks git: not while a run is being set up (it is often the run that
        // replaced this one).
        app.registry().guard().wait_free(YIELD_TO_SETUP);
        let report = report(app, &self.run, self.output_start, &start, end);
        let row = exited.row(report);
        finish(app, &exited, row, limit, self.output_start);
        // A run's report and messages came and went: what the heap freed goes back.
        crate::os::sys::trim_heap();
    }

    /// Starts reading the work tree's fingerprint at the run's start, for the stuck rule
    /// (bounded by its git budget); `None` when it is not wanted or no thread could start.
    fn read_start_tree(&self) -> Option<JoinHandle<Option<u64>>> {
        let sources = &self.app.cfg().report_sources;
        if !(sources.git && sources.fingerprints) {
            return None;
        }
        let (sources, workspace) = (sources.clone(), self.run.workspace.clone());
        let app = Arc::clone(&self.app);
        std::thread::Builder::new()
            .name(format!("start-{}", self.run.run_id))
            .spawn(move || {
                // After the run's own setup (its startup check): codex takes seconds to
                // reach its model before it changes anything.
                app.registry().guard().wait_free(YIELD_TO_SETUP);
                let mut start = StartState::default();
                sources.tree_at_start(&workspace, &mut start);
                start.tree
            })
            .ok()
    }
}

/// Codex's usage limit, when that is how a run that did not exit 0 ended (its log's end).
fn usage_limit(
    run: &LiveRun,
    output_start: u64,
    return_code: Option<i32>,
) -> Option<crate::rules::usage_limit::UsageLimit> {
    if return_code == Some(0) {
        return None;
    }
    let tail = output::tail(&run.log_path, output_start, 40);
    crate::rules::usage_limit::detect(&tail, chrono::Local::now())
}

/// What the run did (`end`: as it left HEAD and the TODO list), its last message kept
/// beside its log.
fn report(
    app: &App,
    run: &LiveRun,
    output_start: u64,
    start: &StartState,
    end: StartState,
) -> crate::model::Report {
    let output = crate::report::Output::read(&run.log_path, output_start);
    let mut report = app
        .cfg()
        .report_sources
        .report(&run.workspace, &output, start, Some(end));
    crate::report::keep_last_message(&mut report, &run.log_path);
    report
}

/// The last line a run printed (not Looper's trailer), for the messages after its end.
fn last_line(run: &LiveRun, output_start: u64) -> String {
    output::tail(&run.log_path, output_start, 3)
        .lines()
        .rfind(|l| !l.starts_with("# codex_exec_return_code=") && !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(LAST_LINE_CHARS)
        .collect()
}

/// A run's end, its report in `row`: recorded (the run stops being ours), decided on by
/// the loop's judge, and said.
fn finish(
    app: &App,
    exited: &Exited,
    row: Row,
    limit: Option<crate::rules::usage_limit::UsageLimit>,
    output_start: u64,
) {
    app.registry().ended(&exited.run.run_id, row.clone());
    let after = crate::autoloop::judge::run_ended(app, exited, &row, limit);
    crate::notify::after_run::tell(app, &row, &after, &last_line(&exited.run, output_start));
}

/// At start: the runs the history has not seen end. One whose process still lives (it
/// carries its run id) is adopted: live from now on, watched through its pidfd, its end
/// recorded as any run's. One that ended while no Looper watched gets its end now: the
/// return code from its log's trailer where it has one (else `unknown`), the end time from
/// the log's last change, its report from its log and session file.
pub fn take_over(app: &Arc<App>) {
    crate::run::output::sweep_orphan_logs(&app.cfg().log_dir, |id| app.history().knows_id(id));
    let open: Vec<Row> = app
        .history()
        .newest(crate::state::history::MAX_ROWS)
        .into_iter()
        .filter(|r| !r.ended())
        .collect();
    if open.is_empty() {
        return;
    }
    let Ok(table) = crate::os::procs::scan(crate::os::procs::current_uid()) else {
        log::warn!("run.take_over_failed reason=proc_unreadable hint=\"open history rows stay open until /proc can be read\"");
        return;
    };
    for mut row in open.into_iter().rev() {
        let process = if row.pid == 0 {
            // Recorded before its spawn, and the Looper died before it knew the pid: the
            // run's first process carries its id, and its parent does not.
            let ours = |pid: i32| {
                table
                    .iter()
                    .any(|p| p.pid == pid && p.run_id.as_deref() == Some(&row.run_id))
            };
            table
                .iter()
                .find(|p| p.run_id.as_deref() == Some(&row.run_id) && !ours(p.ppid))
        } else {
            table
                .iter()
                .find(|p| p.pid as u32 == row.pid && p.run_id.as_deref() == Some(&row.run_id))
        };
        match process {
            Some(p) => {
                if row.pid == 0 {
                    row.pid = p.pid as u32;
                    app.history().record(row.clone());
                }
                adopt(app, &row, p.start_time)
            }
            None => settle(app, row),
        }
    }
}

/// Adopts the live run of `row` (its process started at `start_time`).
fn adopt(app: &Arc<App>, row: &Row, start_time: u64) {
    let age = Stamp::now().seconds_since(row.started_at);
    let started = Instant::now()
        .checked_sub(Duration::from_secs_f64(age))
        .unwrap_or_else(Instant::now);
    let run = LiveRun {
        run_id: row.run_id.clone(),
        request_id: row.request_id.clone(),
        trigger: row.trigger,
        pid: row.pid,
        start_time: Some(start_time),
        workspace: row.workspace.clone(),
        log_path: row.log_path.clone(),
        started_at: row.started_at,
        started,
        // Not kept in the history: a hung adopted run is replaced with the default prompt.
        prompt: None,
        adopted: true,
    };
    if app.registry().adopt(run.clone()).is_none() {
        return settle(app, row.clone());
    }
    log::info!(
        "run.adopted run_id={} pid={} age_s={age:.1} hint=\"a run an earlier Looper started: watched until it ends; its exit code cannot be learnt\"",
        row.run_id,
        row.pid
    );
    let watcher = Watcher {
        app: Arc::clone(app),
        output_start: output_start(&row.log_path),
        start: StartState::from_row(&row.report),
        group_path: None,
        run,
    };
    if let Err(e) = watcher.start(Watched::Adopted) {
        log::error!(
            "run.adopt_failed run_id={} error={}",
            row.run_id,
            Q(&e.to_string())
        );
    }
}

/// Records the end of `row`'s run, which ended while no Looper watched it.
fn settle(app: &Arc<App>, row: Row) {
    let return_code = output::logged_return_code(&row.log_path);
    let ended_at = std::fs::metadata(&row.log_path)
        .and_then(|m| m.modified())
        .map(Stamp::from)
        .unwrap_or_else(|_| Stamp::now());
    let output_start = output_start(&row.log_path);
    let start = StartState::from_row(&row.report);
    let output = crate::report::Output::read(&row.log_path, output_start);
    let mut report = app
        .cfg()
        .report_sources
        .report(&row.workspace, &output, &start, None);
    crate::report::keep_last_message(&mut report, &row.log_path);
    let (run_id, pid) = (row.run_id.clone(), row.pid);
    let settled = Row {
        ended_at: Some(ended_at),
        return_code,
        duration_seconds: Some(ended_at.seconds_since(row.started_at)),
        outcome: Some(Outcome::of(row.stop_reason, return_code)),
        report,
        ..row
    };
    if app.history().record_end_once(settled) {
        log::info!(
            "codex.exec.exit_unwatched run_id={run_id} pid={pid} return_code={}",
            return_code.map_or("unknown".to_string(), |c| c.to_string())
        );
    }
}

/// Where a run's output starts in its log: after Looper's header (three `# ` lines and a
/// blank one).
fn output_start(log_path: &std::path::Path) -> u64 {
    let head = crate::os::paths::read_regular(log_path, 64 * 1024).unwrap_or_default();
    let mut at = 0;
    for line in head.split_inclusive('\n').take(4) {
        if line.starts_with("# ") || line == "\n" {
            at += line.len();
        } else {
            break;
        }
    }
    at as u64
}
