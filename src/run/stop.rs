//! Stopping runs: finding every process a stop takes (the runs in scope, however they left
//! their session: by `LOOPER_RUN_ID`, by descent from a run of ours, by cgroup), ending them
//! (SIGTERM, a second look for what they started meanwhile, SIGKILL after the grace).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::StopScope;
use crate::error::{Refusal, Why};
use crate::model::StopReason;
use crate::os::logging::Q;
use crate::os::procs::{self, ProcInfo};
use crate::os::signals;
use crate::state::app::App;
use crate::state::registry::groups::Group;

/// What one stop takes, decided once at its start: the names that count as codex, the
/// scope, and with `LOOPER_STOP_SCOPE=workspace` the runs of that workspace (the history's
/// included, their paths resolved here, outside every lock).
struct Reach<'a> {
    app: &'a App,
    names: procs::Names,
    /// The workspace, canonical.
    dir: PathBuf,
    only_run_ids: Option<&'a HashSet<String>>,
    /// With the workspace scope: the run ids of `dir`, ours and earlier Loopers'.
    scope_ids: HashSet<String>,
}

impl<'a> Reach<'a> {
    fn new(
        app: &'a App,
        binary: Option<&Path>,
        only_run_ids: Option<&'a HashSet<String>>,
        workspace: &Path,
    ) -> Reach<'a> {
        let binaries = app.registry().binaries();
        let names = procs::Names::new(
            app.cfg().process_names.as_deref(),
            binaries
                .iter()
                .map(String::as_str)
                .chain(binary.and_then(|b| b.to_str())),
        );
        let dir = canonical(workspace);
        let mut reach = Reach {
            app,
            names,
            dir,
            only_run_ids,
            scope_ids: HashSet::new(),
        };
        if app.cfg().stop_scope == StopScope::Workspace {
            let mut resolved: HashMap<PathBuf, bool> = HashMap::new();
            let rows = app.history().newest(crate::state::history::MAX_ROWS);
            let live = app.registry().live();
            let runs = rows
                .iter()
                .map(|r| (&r.run_id, &r.workspace))
                .chain(live.iter().map(|r| (&r.run_id, &r.workspace)));
            for (id, w) in runs {
                let here = *resolved
                    .entry(w.clone())
                    .or_insert_with(|| canonical(w) == reach.dir);
                if here {
                    reach.scope_ids.insert(id.clone());
                }
            }
        }
        reach
    }

    /// Whether the run of `workspace` is in this stop's scope (only with the workspace scope
    /// does the workspace matter; stopping given runs, all of them are).
    fn in_scope(&self, workspace: &Path) -> bool {
        self.only_run_ids.is_some()
            || self.app.cfg().stop_scope != StopScope::Workspace
            || canonical(workspace) == self.dir
    }

    /// The cgroups this stop ends.
    fn groups(&self) -> Vec<Group> {
        let mut groups = self.app.registry().groups().all();
        groups.retain(|g| self.in_scope(&g.workspace));
        groups
    }

    /// Processes of ours in `table` that the stop takes whatever they look like: our live
    /// runs' own processes, and whatever sits in their cgroups, however it left their
    /// sessions.
    fn ours(&self, table: &[ProcInfo]) -> Vec<(i32, u64)> {
        let live = self.app.registry().live();
        let own = live
            .iter()
            .filter(|r| self.in_scope(&r.workspace))
            .filter_map(|r| Some((r.pid as i32, r.start_time?)));
        let grouped = self
            .groups()
            .into_iter()
            .flat_map(|g| crate::os::cgroup::members(&g.path))
            .filter_map(|pid| Some((pid, table.iter().find(|p| p.pid == pid)?.start_time)));
        own.chain(grouped).collect()
    }

    /// The processes of `table` this stop takes.
    fn select(&self, table: &[ProcInfo]) -> Vec<ProcInfo> {
        let scope = match self.app.cfg().stop_scope {
            StopScope::All => procs::Scope::All,
            StopScope::Own => procs::Scope::Own,
            StopScope::Workspace => procs::Scope::Workspace {
                dir: &self.dir,
                run_ids: &self.scope_ids,
            },
        };
        procs::select(
            table,
            &procs::Selector {
                names: &self.names,
                looper_url: self.app.url(),
                only_run_ids: self.only_run_ids,
                scope,
                extra_pids: &self.ours(table),
                self_pid: std::process::id() as i32,
            },
        )
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The processes a stop would take: the runs that match (all live codex exec runs, or only
/// `only_run_ids` of ours), Looper's own children, and all their descendants.
pub fn find_runs(
    app: &App,
    binary: Option<&Path>,
    only_run_ids: Option<&HashSet<String>>,
    workspace: &Path,
) -> Result<Vec<ProcInfo>, Refusal> {
    let table = scan_or_refuse(procs::scan(procs::current_uid()))?;
    Ok(Reach::new(app, binary, only_run_ids, workspace).select(&table))
}

fn scan_or_refuse(scanned: std::io::Result<Vec<ProcInfo>>) -> Result<Vec<ProcInfo>, Refusal> {
    scanned.map_err(|e| {
        Refusal::new(
            Why::Broken,
            format!(
                "cannot read /proc to find live codex runs ({e}); nothing was stopped or started"
            ),
        )
    })
}

/// Stops every live codex exec run in scope (`LOOPER_STOP_SCOPE`), or with `only_run_ids`
/// just those runs of ours. `binary` is the binary about to be used, whose name counts as
/// codex.
pub fn stop_runs(
    app: &App,
    binary: Option<&Path>,
    only_run_ids: Option<&HashSet<String>>,
    workspace: &Path,
    request_id: &str,
    reason: StopReason,
) -> Result<signals::StopReport, Refusal> {
    let reach = Reach::new(app, binary, only_run_ids, workspace);
    let mut table = scan_or_refuse(procs::scan(procs::current_uid()))?;
    let mut targets = reach.select(&table);
    // Our runs among the targets die on purpose: not crashes, and their history says why.
    let mark_ours = |targets: &[ProcInfo]| {
        let pids: Vec<i32> = targets.iter().map(|p| p.pid).collect();
        app.registry().mark_stopping(&pids, reason);
    };
    mark_ours(&targets);
    let pids: Vec<i32> = targets.iter().map(|p| p.pid).collect();
    log::info!(
        "process.kill.start request_id={request_id} count={} pids={}",
        targets.len(),
        Q(&join(&pids))
    );
    // SIGTERM, then look again until nothing of these runs is left or the grace is over:
    // a process started meanwhile (a trap that spawns, a tool forking as it dies) carries
    // the same run id or descends from a target, and is stopped too.
    let deadline = Instant::now() + app.cfg().stop_grace;
    let mut stop = signals::Stop::default();
    loop {
        stop.terminate(&targets);
        let left = deadline.saturating_duration_since(Instant::now());
        let all_gone = stop.wait(left.min(signals::RESCAN_EVERY));
        if Instant::now() >= deadline {
            break;
        }
        // New processes only: those already seen were judged above.
        table = match procs::rescan(procs::current_uid(), &table) {
            Ok(t) => t,
            Err(_) => break,
        };
        targets = reach.select(&table);
        mark_ours(&targets);
        if all_gone && targets.iter().all(|p| stop.covers(p)) {
            break;
        }
    }
    let report = stop.finish();
    // Last, each cgroup of these runs is ended whole and removed.
    for group in reach.groups() {
        if !app.registry().groups().release(&group.path, true) {
            log::warn!(
                "cgroup.kill_failed run_id={} path={}",
                group.run_id,
                Q(&group.path.to_string_lossy())
            );
        }
    }
    log::info!(
        "process.kill.done request_id={request_id} killed={} remaining={}",
        Q(&join(&report.killed)),
        Q(&join(&report.remaining))
    );
    Ok(report)
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
