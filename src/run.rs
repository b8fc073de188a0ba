//! The `/run` pipeline: a request becomes a validated [`RunRequest`] before anything
//! happens, then, under the run guard: announce → stop → (delay → spawn → startup check).
//! Autopoll uses the same pipeline without the announcement.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::app::{App, Finished, LiveRun, StopReason};
use crate::codex;
use crate::config::StopScope;
use crate::config::MAX_SECONDS;
use crate::history::Row;
use crate::logging::Q;
use crate::output;
use crate::procs;
use crate::trust::Caller;

/// The prompt used when neither the request, `LOOPER_PROMPT_FILE` nor
/// `LOOPER_DEFAULT_PROMPT` gives one: the repeat-the-same-prompt pattern around `TODO.md`.
pub const BUILTIN_PROMPT: &str = "Read TODO.md in this repository. Take the first item that is not done, \
do it and check that it works, then update TODO.md: what you changed, what failed, and what is left. \
Keep TODO.md the single source of truth for the next run.";

/// Variables of Looper's that never reach a run: the Zulip credentials.
const SECRET_VARS: [&str; 3] = ["ZULIP_BOT_API_KEY", "ZULIP_BOT_EMAIL", "ZULIP_SITE"];

/// Lines of the run log quoted in an `exited early` error.
const EARLY_EXIT_TAIL_LINES: usize = 12;

/// An error that ends a request: an HTTP status and one sentence for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    pub fn body(&self) -> Value {
        json!({"ok": false, "error": self.message})
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

/// A validated `/run` request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    pub zulip_message: String,
    /// `None`: use the default prompt; `Some("")`: announce and stop only.
    pub prompt: Option<String>,
    pub workspace: Option<String>,
    pub codex_exec_binary: Option<String>,
    pub delay: Option<Duration>,
    pub startup_check: Option<Duration>,
    pub zulip_script_path: Option<String>,
    pub from_run_id: Option<String>,
    /// Fields of the body Looper does not know (a typo such as `codex_promt`, or a wrapper's
    /// extras): said in the log and the answer.
    pub ignored_fields: Vec<String>,
    /// The known fields the body sets (not `null`), by their names, for judging who may
    /// send them ([`crate::trust::admit`]).
    pub fields: Vec<&'static str>,
}

/// Every field `/run` reads.
const KNOWN_FIELDS: [&str; 13] = [
    "zulip_message",
    "codex_prompt",
    "prompt",
    "workspace",
    "codex_exec_binary",
    "codex_exec_delay_seconds",
    "startup_delay_seconds",
    "sidebar_delay_seconds",
    "new_task_delay_seconds",
    "prompt_send_delay_seconds",
    "codex_exec_startup_check_seconds",
    "zulip_script_path",
    "from_run_id",
];

/// Legacy delay fields, summed when `codex_exec_delay_seconds` is absent.
const LEGACY_DELAYS: [&str; 4] = [
    "startup_delay_seconds",
    "sidebar_delay_seconds",
    "new_task_delay_seconds",
    "prompt_send_delay_seconds",
];

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.contains('\0') {
                return Err(ApiError::bad_request(format!(
                    "{key} must not contain NUL bytes"
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ApiError::bad_request(format!("{key} must be a string"))),
    }
}

fn seconds_field(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(Some(v)),
            _ => Err(ApiError::bad_request(format!(
                "{key} must be a number of seconds from 0 to 86400"
            ))),
        },
        Some(_) => Err(ApiError::bad_request(format!(
            "{key} must be a number of seconds from 0 to 86400"
        ))),
    }
}

/// The error for a body that is not UTF-8, naming the field when the rest is JSON.
fn not_utf8(body: &[u8]) -> ApiError {
    let lossy = String::from_utf8_lossy(body);
    let field = serde_json::from_str::<Value>(&lossy).ok().and_then(|v| {
        v.as_object()?
            .iter()
            .find(|(_, v)| v.as_str().is_some_and(|s| s.contains('\u{FFFD}')))
            .map(|(k, _)| k.clone())
    });
    match field {
        Some(k) => ApiError::bad_request(format!("{k} must be valid UTF-8")),
        None => ApiError::bad_request("body is not valid UTF-8 JSON"),
    }
}

/// Parses and validates a `/run` body. Unknown fields are ignored.
pub fn parse_request(body: &[u8]) -> Result<RunRequest, ApiError> {
    if std::str::from_utf8(body).is_err() {
        return Err(not_utf8(body));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request("body must be a JSON object"));
    };
    let zulip_message = string_field(&obj, "zulip_message")?.unwrap_or_default();
    if zulip_message.trim().is_empty() {
        return Err(ApiError::bad_request(
            "zulip_message is required and must not be empty",
        ));
    }
    // Every field is checked, the aliases too, even when the field they stand in for wins.
    let legacy_prompt = string_field(&obj, "prompt")?;
    let prompt = string_field(&obj, "codex_prompt")?.or(legacy_prompt);
    let mut legacy_sum = None;
    for key in LEGACY_DELAYS {
        if let Some(d) = seconds_field(&obj, key)? {
            *legacy_sum.get_or_insert(0.0) += d;
        }
    }
    let delay = match seconds_field(&obj, "codex_exec_delay_seconds")? {
        Some(d) => Some(d),
        None => {
            if legacy_sum.is_some_and(|s| s > MAX_SECONDS) {
                return Err(ApiError::bad_request(
                    "the legacy delay fields add up to more than 86400 seconds",
                ));
            }
            legacy_sum
        }
    };
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(RunRequest {
        zulip_message,
        prompt,
        workspace: non_empty(string_field(&obj, "workspace")?),
        codex_exec_binary: non_empty(string_field(&obj, "codex_exec_binary")?),
        delay: delay.map(Duration::from_secs_f64),
        startup_check: seconds_field(&obj, "codex_exec_startup_check_seconds")?
            .map(Duration::from_secs_f64),
        zulip_script_path: non_empty(string_field(&obj, "zulip_script_path")?),
        from_run_id: non_empty(string_field(&obj, "from_run_id")?),
        ignored_fields: obj
            .keys()
            .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect(),
        fields: KNOWN_FIELDS
            .into_iter()
            .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
            .collect(),
    })
}

/// Who asked for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    Http,
    /// A request file dropped into a run's inbox (the hand-off that needs no network).
    Inbox,
    Autopoll,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Inbox => "inbox",
            Trigger::Autopoll => "autopoll",
        }
    }
}

/// The prompt for a run that named none: `LOOPER_PROMPT_FILE` (read now), else
/// `LOOPER_DEFAULT_PROMPT`, else [`BUILTIN_PROMPT`].
pub fn default_prompt(app: &App) -> Result<String, ApiError> {
    if let Some(path) = &app.cfg.prompt_file {
        return match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(text),
            Ok(_) => Err(ApiError::new(
                500,
                format!("LOOPER_PROMPT_FILE {} is empty", path.display()),
            )),
            Err(e) => Err(ApiError::new(
                500,
                format!("cannot read LOOPER_PROMPT_FILE {}: {e}", path.display()),
            )),
        };
    }
    Ok(app
        .cfg
        .default_prompt
        .clone()
        .unwrap_or_else(|| BUILTIN_PROMPT.to_string()))
}

/// Whether `from_run_id` is an old run calling late: another run is active, or, with none
/// active, that run is known to have ended. (An id we never saw, with nothing active, is
/// let through: it may be a run of an earlier Looper on this address.)
pub fn stale_reason(app: &App, from_run_id: &str) -> Option<ApiError> {
    let stale = match app.runs().active() {
        Some(active) => active.run_id != from_run_id,
        None => app
            .history
            .get(from_run_id)
            .is_some_and(|row| row.return_code.is_some()),
    };
    stale.then(|| ApiError::new(409, format!("stale: run {from_run_id} is no longer active")))
}

/// Everything decided before the first effect.
struct Plan {
    prompt: String,
    workspace: PathBuf,
    workspace_from_request: bool,
    binary: Option<(PathBuf, codex::Source)>,
}

fn check_workspace(plan: &Plan) -> Result<(), ApiError> {
    if plan.workspace.is_dir() {
        return Ok(());
    }
    let status = if plan.workspace_from_request {
        400
    } else {
        500
    };
    Err(ApiError::new(
        status,
        format!("workspace is not a directory: {}", plan.workspace.display()),
    ))
}

fn plan(app: &App, req: &RunRequest) -> Result<Plan, ApiError> {
    let prompt = match &req.prompt {
        Some(p) => p.clone(),
        None => default_prompt(app)?,
    };
    if prompt.len() > codex::MAX_PROMPT_BYTES {
        let source = match (&req.prompt, &app.cfg.prompt_file) {
            (None, Some(file)) => format!("LOOPER_PROMPT_FILE {}", file.display()),
            _ => "the prompt".to_string(),
        };
        return Err(ApiError::bad_request(format!(
            "{source} is {} bytes; codex exec takes at most {} (Linux passes no single argument of 128 KiB or more)",
            prompt.len(),
            codex::MAX_PROMPT_BYTES
        )));
    }
    let named = match &req.workspace {
        // `~` as the original read it; `..` folded away so the answer names the directory.
        Some(w) => crate::config::normalize(
            &app.cfg
                .cwd
                .join(crate::config::expand_home(w, app.cfg.home.as_deref())),
        ),
        None => app.cfg.workspace.clone(),
    };
    // The directory itself, not a link to it: the run, its answer and its history name
    // the same place.
    let workspace = named.canonicalize().unwrap_or(named);
    let mut plan = Plan {
        prompt,
        workspace,
        workspace_from_request: req.workspace.is_some(),
        binary: None,
    };
    if !plan.prompt.is_empty() {
        check_workspace(&plan)?;
        check_own_files_outside(app, &plan.workspace)?;
        if app.cfg.require_git && !codex::inside_git_work_tree(&plan.workspace) {
            return Err(ApiError::bad_request(format!(
                "workspace is not inside a git work tree: {} (codex refuses to run outside git; run `git init` there, or set LOOPER_REQUIRE_GIT=0)",
                plan.workspace.display()
            )));
        }
        let found = codex::resolve(
            req.codex_exec_binary.as_deref(),
            app.cfg.codex_exec_binary.as_deref(),
            &app.cfg.cwd,
            app.own_dir(),
            app.path_var.as_deref(),
            &plan.workspace,
        )
        .map_err(|name| match &req.codex_exec_binary {
            Some(_) => ApiError::bad_request(format!(
                "codex_exec_binary not found: {name} (give a path to an executable, or a name on the server's PATH)"
            )),
            None => ApiError::new(500, format!("required tool is missing from PATH: {name}")),
        })?;
        plan.binary = Some(found);
    }
    Ok(plan)
}

/// Looper's own files (run logs, the history, the server log) never lie inside a workspace
/// it runs: the agent writes anything there, links included, and would rewrite them.
fn check_own_files_outside(app: &App, workspace: &Path) -> Result<(), ApiError> {
    for (setting, dir) in app.cfg.own_dirs() {
        let dir = dir.canonicalize().unwrap_or(dir);
        if dir.starts_with(workspace) {
            return Err(ApiError::bad_request(format!(
                "workspace {} holds Looper's own files ({setting} is {}): the agent could rewrite them. Move {setting} out of the workspace",
                workspace.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// The processes a stop would take: the runs that match (all live codex exec runs, or only
/// `only_run_ids` of ours), Looper's own children, and all their descendants.
pub fn find_runs(
    app: &App,
    binary: Option<&Path>,
    only_run_ids: Option<&HashSet<String>>,
    workspace: &Path,
) -> Result<Vec<procs::ProcInfo>, ApiError> {
    let table = scan_or_refuse(procs::scan(procs::current_uid()))?;
    Ok(select_runs(app, &table, binary, only_run_ids, workspace))
}

fn scan_or_refuse(
    scanned: std::io::Result<Vec<procs::ProcInfo>>,
) -> Result<Vec<procs::ProcInfo>, ApiError> {
    scanned.map_err(|e| {
        ApiError::new(
            500,
            format!(
                "cannot read /proc to find live codex runs ({e}); nothing was stopped or started"
            ),
        )
    })
}

/// The processes of `table` a stop takes (see [`find_runs`]).
fn select_runs(
    app: &App,
    table: &[procs::ProcInfo],
    binary: Option<&Path>,
    only_run_ids: Option<&HashSet<String>>,
    workspace: &Path,
) -> Vec<procs::ProcInfo> {
    let (names, ours) = {
        let runs = app.runs();
        let binaries = runs
            .binaries
            .iter()
            .map(String::as_str)
            .chain(binary.and_then(|b| b.to_str()));
        let names = procs::Names::new(app.cfg.process_names.as_deref(), binaries);
        let ours: Vec<(i32, u64)> = runs
            .live
            .iter()
            .filter_map(|r| Some((r.pid as i32, r.start_time?)))
            .collect();
        (names, ours)
    };
    // LOOPER_STOP_SCOPE=workspace: the runs of this workspace only, ours and earlier
    // Loopers' (known from the history) included.
    let dir = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    let same_dir = |w: &Path| w.canonicalize().is_ok_and(|w| w == dir);
    let (scope_ids, ours): (HashSet<String>, Vec<(i32, u64)>) = match app.cfg.stop_scope {
        StopScope::Workspace => {
            let runs = app.runs();
            let ids = app
                .history
                .newest(crate::history::MAX_ROWS)
                .into_iter()
                .filter(|r| same_dir(&r.workspace))
                .map(|r| r.run_id)
                .chain(
                    runs.live
                        .iter()
                        .filter(|r| same_dir(&r.workspace))
                        .map(|r| r.run_id.clone()),
                )
                .collect();
            let pids = runs
                .live
                .iter()
                .filter(|r| same_dir(&r.workspace))
                .filter_map(|r| Some((r.pid as i32, r.start_time?)))
                .collect();
            (ids, pids)
        }
        _ => (HashSet::new(), ours),
    };
    // Whatever sits in the cgroups of these runs, however it left their sessions.
    let mut ours = ours;
    for group in groups_in_scope(app, only_run_ids, &dir) {
        for pid in crate::cgroup::members(&group.path) {
            if let Some(p) = table.iter().find(|p| p.pid == pid) {
                ours.push((pid, p.start_time));
            }
        }
    }
    let scope = match app.cfg.stop_scope {
        StopScope::All => procs::Scope::All,
        StopScope::Own => procs::Scope::Own,
        StopScope::Workspace => procs::Scope::Workspace {
            dir: &dir,
            run_ids: &scope_ids,
        },
    };
    procs::select(
        table,
        &procs::Selector {
            names: &names,
            looper_url: &app.url,
            only_run_ids,
            scope,
            extra_pids: &ours,
            self_pid: std::process::id() as i32,
        },
    )
}

/// The cgroups a stop takes: every one of ours (for `only_run_ids`, at shutdown, too),
/// or with `LOOPER_STOP_SCOPE=workspace` those of runs in `dir` (canonical).
fn groups_in_scope(
    app: &App,
    only_run_ids: Option<&HashSet<String>>,
    dir: &Path,
) -> Vec<crate::app::Group> {
    let mut groups = app.groups();
    if only_run_ids.is_none() && app.cfg.stop_scope == StopScope::Workspace {
        groups.retain(|g| g.workspace.canonicalize().is_ok_and(|w| w == dir));
    }
    groups
}

/// Stops every live codex exec run of this user (SPEC §3), or with `only_run_ids` just
/// those runs of ours. `binary` is the binary about to be used, whose name counts as codex.
pub fn stop_runs(
    app: &App,
    binary: Option<&Path>,
    only_run_ids: Option<&HashSet<String>>,
    workspace: &Path,
    request_id: &str,
    reason: StopReason,
) -> Result<procs::StopReport, ApiError> {
    let mut table = scan_or_refuse(procs::scan(procs::current_uid()))?;
    let mut targets = select_runs(app, &table, binary, only_run_ids, workspace);
    let mark_ours = |targets: &[procs::ProcInfo]| {
        // Our runs among the targets die on purpose: not crashes, and their history says why.
        let mut runs = app.runs();
        let ours: Vec<String> = runs
            .live
            .iter()
            .filter(|r| targets.iter().any(|p| p.pid == r.pid as i32))
            .map(|r| r.run_id.clone())
            .collect();
        for id in ours {
            runs.stopping.entry(id).or_insert(reason);
        }
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
    let deadline = Instant::now() + app.cfg.stop_grace;
    let mut stop = procs::Stop::default();
    let mut stopped_ids: HashSet<String> = HashSet::new();
    loop {
        stopped_ids.extend(targets.iter().filter_map(|p| p.run_id.clone()));
        stop.terminate(&targets);
        let left = deadline.saturating_duration_since(Instant::now());
        let all_gone = stop.wait(left.min(procs::RESCAN_EVERY));
        if Instant::now() >= deadline {
            break;
        }
        // New processes only: those already seen were judged above.
        table = match procs::rescan(procs::current_uid(), &table) {
            Ok(t) => t,
            Err(_) => break,
        };
        targets = select_runs(app, &table, binary, only_run_ids, workspace);
        mark_ours(&targets);
        if all_gone && targets.iter().all(|p| stop.covers(p)) {
            break;
        }
    }
    let report = stop.finish();
    // Last, each cgroup of these runs is ended whole and removed.
    let dir = workspace
        .canonicalize()
        .unwrap_or_else(|_| workspace.to_path_buf());
    for group in groups_in_scope(app, only_run_ids, &dir) {
        if !app.release_group(&group.path, true) {
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
    // Runs a previous Looper started have no watcher here to record their end.
    settle_unwatched(app, Some((&stopped_ids, reason)));
    Ok(report)
}

/// Completes the history rows of runs that ended while no Looper watched them: started by
/// a previous Looper (killed, or crashed) and gone now, or never recorded as ended. A row
/// is left open while a process still carries its run id. The return code comes from the
/// log's trailer when it has one, else stays `null`; `ended_at` is the log's last change.
/// The runs in `stopped` were just stopped by us, for its reason. Costs nothing (no `/proc`
/// scan) when every open row is a live run of ours.
pub fn settle_unwatched(app: &App, stopped: Option<(&HashSet<String>, StopReason)>) {
    let open = app.history.unended();
    let ours: HashSet<String> = app.runs().live.iter().map(|r| r.run_id.clone()).collect();
    let candidates: Vec<_> = open
        .into_iter()
        .filter(|r| !ours.contains(&r.run_id))
        .collect();
    if candidates.is_empty() {
        return;
    }
    // Unreadable /proc: nothing can be told about them now; look again later.
    let Ok(table) = procs::scan(procs::current_uid()) else {
        return;
    };
    let alive: HashSet<String> = table.into_iter().filter_map(|p| p.run_id).collect();
    for row in candidates {
        if alive.contains(&row.run_id) {
            continue;
        }
        let return_code = output::logged_return_code(&row.log_path);
        let ended = std::fs::metadata(&row.log_path)
            .and_then(|m| m.modified())
            .map(chrono::DateTime::<chrono::Local>::from)
            .unwrap_or_else(|_| chrono::Local::now());
        let duration_seconds = chrono::DateTime::parse_from_rfc3339(&row.started_at)
            .ok()
            .map(|started| {
                let ms = (ended.fixed_offset() - started).num_milliseconds().max(0);
                ms as f64 / 1000.0
            });
        let stop_reason = stopped
            .filter(|(ids, _)| ids.contains(&row.run_id))
            .map(|(_, reason)| reason.as_str().to_string())
            .or(row.stop_reason.clone());
        let (run_id, pid) = (row.run_id.clone(), row.pid);
        let settled = Row {
            ended_at: Some(ended.to_rfc3339()),
            return_code,
            duration_seconds,
            stop_reason,
            ..row
        };
        if app.history.record_end_once(settled) {
            log::info!(
                "codex.exec.exit_unwatched run_id={run_id} pid={pid} return_code={}",
                return_code.map_or("unknown".to_string(), |c| c.to_string())
            );
        }
    }
}

fn join(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Takes a `/run` body, from HTTP or an inbox file, through everything `POST /run` does:
/// validation, what `caller` may ask for ([`crate::trust::admit`]), the stale hand-off
/// check, the run guard (a hand-off from the run still being set up waits for that setup),
/// the pipeline.
pub fn submit(
    app: &Arc<App>,
    body: &[u8],
    request_id: &str,
    trigger: Trigger,
    caller: &Caller,
) -> Result<Value, ApiError> {
    let mut req = parse_request(body)?;
    crate::trust::admit(caller, &mut req, |id| {
        app.workspace_of(id).and_then(|w| w.canonicalize().ok())
    })
    .inspect_err(|e| {
        log::warn!(
            "run.refused request_id={request_id} caller={} status={} error={}",
            Q(&caller.describe()),
            e.status,
            Q(&e.message)
        )
    })?;
    // A late call from an old run is refused as stale even while another run is being set
    // up, so that its caller learns why.
    let stale = || {
        req.from_run_id
            .as_deref()
            .and_then(|from| stale_reason(app, from))
    };
    if let Some(e) = stale() {
        return Err(e);
    }
    let guard = match req.from_run_id.as_deref() {
        Some(from) => app.handoff_guard(from),
        None => app.try_guard(),
    };
    let Some(_guard) = guard else {
        return Err(ApiError::new(409, "busy: another run is in progress"));
    };
    // Looked at again under the guard: a run may have been replaced meanwhile.
    if let Some(e) = stale() {
        return Err(e);
    }
    let value = execute(app, &req, request_id, trigger)?;
    log::info!(
        "run.success request_id={request_id} started={} pid={}",
        value["codex_exec_started"],
        value["codex_exec_result"]["pid"]
    );
    Ok(value)
}

/// A run that was spawned: what the response reports.
pub struct Spawned {
    pub run_id: String,
    pub pid: u32,
    pub log_path: PathBuf,
    pub command: String,
    pub startup_return_code: Option<i32>,
}

/// Runs the whole pipeline for a validated request; the caller holds the run guard.
pub fn execute(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    trigger: Trigger,
) -> Result<Value, ApiError> {
    execute_replacing(app, req, request_id, trigger, StopReason::Replaced)
}

/// [`execute`], with the reason the runs it stops get (hung-run replacement says `hung`).
pub fn execute_replacing(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    trigger: Trigger,
    stop_reason: StopReason,
) -> Result<Value, ApiError> {
    log::info!(
        "run.start request_id={request_id} trigger={} prompt={} workspace={}",
        trigger.as_str(),
        match &req.prompt {
            None => "default".to_string(),
            Some(p) if p.is_empty() => "empty".to_string(),
            Some(p) => format!("{}_chars", p.chars().count()),
        },
        Q(req.workspace.as_deref().unwrap_or("default"))
    );
    let plan = plan(app, req)?;
    if !req.ignored_fields.is_empty() {
        log::warn!(
            "run.ignored_fields request_id={request_id} fields={} hint=\"not /run fields; a typo?\"",
            Q(&req.ignored_fields.join(","))
        );
    }

    refuse_after_shutdown(app)?;
    log::info!("run.step request_id={request_id} action=announce");
    let zulip_output = if trigger == Trigger::Autopoll {
        "skipped: autopoll does not announce".to_string()
    } else {
        announce(app, req, request_id)?
    };

    refuse_after_shutdown(app)?;
    log::info!("run.step request_id={request_id} action=stop");
    let stopped = stop_runs(
        app,
        plan.binary.as_ref().map(|b| b.0.as_path()),
        None,
        &plan.workspace,
        request_id,
        stop_reason,
    )?;

    let spawned = if plan.prompt.is_empty() {
        log::info!("run.step request_id={request_id} action=skip_launch reason=empty_prompt");
        None
    } else {
        Some(launch(app, req, &plan, request_id, trigger)?)
    };

    let result = spawned.as_ref().map(|s| {
        json!({
            "pid": s.pid,
            "log_path": s.log_path.to_string_lossy(),
            "command": s.command,
            "startup_return_code": s.startup_return_code,
        })
    });
    let killed = &stopped.killed;
    let remaining = &stopped.remaining;
    let (binary, source) = match &plan.binary {
        Some((b, s)) => (json!(b.to_string_lossy()), json!(s.as_str())),
        None => (Value::Null, Value::Null),
    };
    Ok(json!({
        "ok": true,
        "request_id": request_id,
        "run_id": spawned.as_ref().map(|s| s.run_id.clone()),
        "zulip_output": zulip_output,
        "killed_codex_exec_pids": killed,
        "remaining_codex_exec_pids": remaining,
        "workspace": plan.workspace.to_string_lossy(),
        "codex_exec_binary": binary,
        "codex_exec_binary_source": source,
        "codex_exec_started": spawned.is_some(),
        "codex_exec_result": result,
        "codex_exec_approval_policy": "never",
        "codex_exec_sandbox": "workspace-write",
        "killed_vscode_pids": killed,
        "remaining_vscode_pids": remaining,
        "codex_prompt_sent": spawned.is_some(),
        "codex_send_result": result,
        "ignored_fields": req.ignored_fields,
    }))
}

/// After SIGTERM no step with an effect begins.
fn refuse_after_shutdown(app: &App) -> Result<(), ApiError> {
    if app.shutdown.is_set() {
        return Err(shutting_down());
    }
    Ok(())
}

fn shutting_down() -> ApiError {
    ApiError::new(503, "Looper is shutting down")
}

fn announce(app: &App, req: &RunRequest, request_id: &str) -> Result<String, ApiError> {
    let script = req
        .zulip_script_path
        .as_ref()
        .or(app.cfg.zulip_script.as_ref());
    let (via, outcome) = match script {
        Some(script) => (
            "script",
            crate::zulip::run_script(script, &req.zulip_message),
        ),
        None => ("api", app.cfg.zulip.send(&req.zulip_message)),
    };
    match outcome {
        Ok(output) => {
            log::info!(
                "zulip.send.ok request_id={request_id} via={via} output={}",
                Q(&output)
            );
            Ok(output)
        }
        Err(e) => {
            log::error!(
                "zulip.send.fail request_id={request_id} via={via} error={}",
                Q(&e.0)
            );
            Err(ApiError::new(
                502,
                format!("Zulip announcement failed, nothing was stopped: {e}"),
            ))
        }
    }
}

fn launch(
    app: &Arc<App>,
    req: &RunRequest,
    plan: &Plan,
    request_id: &str,
    trigger: Trigger,
) -> Result<Spawned, ApiError> {
    // The workspace may have gone while we announced and stopped.
    check_workspace(plan)?;
    let Some((binary, source)) = plan.binary.clone() else {
        return Err(ApiError::new(500, "no codex binary was resolved"));
    };
    let delay = req.delay.unwrap_or(app.cfg.exec_delay);
    if !delay.is_zero() {
        log::info!(
            "run.step request_id={request_id} action=delay seconds={:.3}",
            delay.as_secs_f64()
        );
        if app.shutdown.wait(delay) {
            return Err(shutting_down());
        }
    }

    let args = codex::exec_args(&plan.workspace, &plan.prompt);
    let command = codex::command_line(&binary, &args);
    let now = chrono::Local::now();
    let log_path = app.cfg.log_dir.join(output::log_file_name(now, request_id));
    let header = output::header(request_id, &plan.workspace, &command);
    // The log directory may have been removed while we ran: make it again.
    let file = std::fs::create_dir_all(&app.cfg.log_dir)
        .and_then(|_| crate::logging::create_new_log(&log_path))
        .and_then(|mut f| {
            f.write_all(header.as_bytes())?;
            Ok(f)
        })
        .map_err(|e| {
            ApiError::new(
                500,
                format!("cannot write the run log {}: {e}", log_path.display()),
            )
        })?;

    let run_id = request_id.to_string();
    log::info!(
        "run.step request_id={request_id} action=spawn binary={} source={}",
        Q(&binary.to_string_lossy()),
        source.as_str()
    );
    let launch = Launch {
        binary: &binary,
        args: &args,
        plan,
        run_id: &run_id,
        request_id,
        trigger,
        log_path: &log_path,
        output_start: header.len() as u64,
    };
    let live = match spawn(app, &launch, &file) {
        Ok(live) => live,
        Err(e) => {
            // When nothing ran, no log is left behind to look like a run (or like activity
            // to autopoll); a run that did start keeps its log beside its history row.
            drop(file);
            if app.history.get(&run_id).is_none() {
                let _ = std::fs::remove_file(&log_path);
            }
            return Err(e);
        }
    };
    drop(file);
    let pid = live.pid;
    if app.cfg.log_retention > 0 {
        prune_logs(app);
    }

    let check = req.startup_check.unwrap_or(app.cfg.startup_check);
    app.setting_up(&run_id, check);
    log::debug!(
        "run.step request_id={request_id} action=startup_check seconds={:.3}",
        check.as_secs_f64()
    );
    let exit = app.wait_exit(&run_id, check);
    if let Some(exit) = &exit {
        if exit.return_code != 0 {
            let tail: Vec<String> =
                output::tail(&log_path, header.len() as u64, EARLY_EXIT_TAIL_LINES + 2)
                    .lines()
                    .filter(|l| !l.starts_with("# codex_exec_return_code="))
                    .map(str::to_string)
                    .collect();
            let tail = tail[tail.len().saturating_sub(EARLY_EXIT_TAIL_LINES)..].join("\n");
            return Err(ApiError::new(
                500,
                format!(
                    "codex exec exited early (rc={}, log_path={}, tail={})",
                    exit.return_code,
                    log_path.display(),
                    tail.trim()
                ),
            ));
        }
    }
    Ok(Spawned {
        run_id,
        pid,
        log_path,
        command,
        startup_return_code: exit.map(|e| e.return_code),
    })
}

/// Keeps the `LOOPER_LOG_RETENTION` newest run logs, never removing a live run's log.
///
/// "Newest" is by start: the time in the file name, then, within one second, the order the
/// history holds (a stopped run's trailer lands after its successor started, so the time a
/// log last changed would rank it wrongly), then, for logs the history no longer holds, the
/// time they last changed.
fn prune_logs(app: &App) {
    let live: HashSet<PathBuf> = app.runs().live.iter().map(|r| r.log_path.clone()).collect();
    let rank: HashMap<PathBuf, usize> = app
        .history
        .newest(crate::history::MAX_ROWS)
        .into_iter()
        .enumerate()
        .map(|(i, row)| (row.log_path, i))
        .collect();
    let Ok(dir) = std::fs::read_dir(&app.cfg.log_dir) else {
        return;
    };
    type Age = (
        std::cmp::Reverse<String>,
        usize,
        std::cmp::Reverse<std::time::SystemTime>,
    );
    let mut logs: Vec<(Age, PathBuf)> = dir
        .flatten()
        .filter(|e| crate::output::is_run_log(&e.file_name()))
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            let path = e.path();
            let stamp = crate::output::log_name_stamp(&e.file_name()).unwrap_or_default();
            let known = rank.get(&path).copied().unwrap_or(usize::MAX);
            let age = (std::cmp::Reverse(stamp), known, std::cmp::Reverse(modified));
            Some((age, path))
        })
        .collect();
    logs.sort();
    for (_, path) in logs.into_iter().skip(app.cfg.log_retention) {
        if live.contains(&path) {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => log::debug!("codex.exec.log.pruned path={}", Q(&path.to_string_lossy())),
            Err(e) => log::warn!(
                "codex.exec.log.prune_failed path={} error={}",
                Q(&path.to_string_lossy()),
                Q(&e.to_string())
            ),
        }
    }
}

/// Everything one spawn needs.
struct Launch<'a> {
    binary: &'a Path,
    args: &'a [std::ffi::OsString],
    plan: &'a Plan,
    run_id: &'a str,
    request_id: &'a str,
    trigger: Trigger,
    log_path: &'a Path,
    /// Where the output starts in the log (after the header).
    output_start: u64,
}

/// Spawns the child in its own session, writing its combined output into its log itself,
/// registers it as live, and hands it to a watcher thread that mirrors its output, reaps it
/// and writes the trailer.
fn spawn(app: &Arc<App>, l: &Launch, file: &File) -> Result<LiveRun, ApiError> {
    let fail = |what: &str, e: std::io::Error| {
        ApiError::new(
            500,
            format!("could not start {}: {what}: {e}", l.binary.display()),
        )
    };
    let stdout = file.try_clone().map_err(|e| fail("log file", e))?;
    let stderr = file.try_clone().map_err(|e| fail("log file", e))?;
    let mut cmd = Command::new(l.binary);
    cmd.args(l.args)
        .current_dir(&l.plan.workspace)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .env("LOOPER_RUN_ID", l.run_id)
        .env("LOOPER_URL", &app.url);
    // Looper's own secrets stay with Looper. The run gets a token of its own instead of the
    // operator's: good for its hand-off only, and under both names, so that a wrapper that
    // sends $LOOPER_API_TOKEN (the original's does) keeps working from inside a run.
    for secret in SECRET_VARS {
        cmd.env_remove(secret);
    }
    let token = app.new_run_token(l.run_id, &l.plan.workspace);
    cmd.env("LOOPER_RUN_TOKEN", &token)
        .env("LOOPER_API_TOKEN", &token);
    if let Some(exe) = &app.self_exe {
        cmd.env("LOOPER_BIN", exe);
    }
    match crate::inbox::prepare(&l.plan.workspace) {
        Ok(inbox) => {
            cmd.env("LOOPER_INBOX", &inbox.path);
            app.watch_inbox(inbox);
        }
        Err(e) => {
            cmd.env_remove("LOOPER_INBOX");
            log::warn!(
                "inbox.unavailable request_id={} workspace={} error={} hint=\"the run can hand off over HTTP only\"",
                l.request_id,
                Q(&l.plan.workspace.to_string_lossy()),
                Q(&e.to_string())
            );
        }
    }
    // Its own cgroup where Looper can make one: whatever it starts stays inside.
    let group = app.cgroups.as_ref().and_then(|c| {
        c.create(l.run_id)
            .inspect_err(|e| {
                log::warn!(
                    "cgroup.create_failed run_id={} error={} hint=\"this run is stopped by the /proc method only\"",
                    l.run_id,
                    Q(&e.to_string())
                )
            })
            .ok()
    });
    procs::detach_on_spawn(&mut cmd, group.as_ref().map(|g| g.procs_fd()));
    let mut file = file.try_clone().map_err(|e| fail("log file", e))?;

    refuse_after_shutdown(app)?;
    // Forked outside any lock; registered right after.
    let spawned = cmd.spawn();
    drop(cmd);
    if let Some(g) = &group {
        match &spawned {
            Ok(_) => app.add_group(crate::app::Group {
                run_id: l.run_id.to_string(),
                workspace: l.plan.workspace.clone(),
                path: g.path.clone(),
            }),
            Err(_) => {
                crate::cgroup::remove(&g.path);
            }
        }
    }
    let mut child = spawned.map_err(|e| fail("spawn", e))?;
    let pid = child.id();
    let live = LiveRun {
        run_id: l.run_id.to_string(),
        request_id: l.request_id.to_string(),
        trigger: l.trigger.as_str(),
        pid,
        // Our unreaped child: the pid cannot be anyone else's yet.
        start_time: procs::start_time(pid as i32),
        workspace: l.plan.workspace.clone(),
        log_path: l.log_path.to_path_buf(),
        started_at: chrono::Local::now().to_rfc3339(),
        started: Instant::now(),
        prompt: l.plan.prompt.clone(),
    };
    {
        let mut runs = app.runs();
        if let Some(name) = l.binary.file_name().and_then(|n| n.to_str()) {
            runs.binaries.insert(name.to_string());
        }
        runs.live.push(live.clone());
    }
    app.counters().started(l.trigger.as_str());
    app.history.record(live.row());
    log::info!(
        "codex.exec.spawn request_id={} run_id={} pid={pid} log_path={}",
        l.request_id,
        l.run_id,
        Q(&l.log_path.to_string_lossy())
    );

    let thread_app = Arc::clone(app);
    let rid = l.run_id.to_string();
    let req_id = l.request_id.to_string();
    let log_path = l.log_path.to_path_buf();
    let output_start = l.output_start;
    let mirror = app.cfg.mirror_output;
    let group_path = group.map(|g| g.path);
    let watcher = std::thread::Builder::new()
        .name(format!("watch-{}", l.run_id))
        .spawn(move || {
            let (return_code, bytes) = output::watch(&mut child, &log_path, output_start, mirror);
            if let Err(e) = file.write_all(output::trailer(return_code).as_bytes()) {
                log::error!(
                    "codex.exec.output.write_failed request_id={req_id} error={}",
                    Q(&e.to_string())
                );
            }
            drop(file);
            log::info!(
                "codex.exec.exit request_id={req_id} run_id={rid} pid={pid} return_code={return_code} bytes={bytes}"
            );
            // An empty cgroup goes; one that something escaped into waits for the next stop.
            if let Some(path) = &group_path {
                if !thread_app.release_group(path, false) {
                    log::info!("cgroup.lingering run_id={rid} hint=\"a process the run left is stopped with the next stop\"");
                }
            }
            let limit = (return_code != 0)
                .then(|| {
                    let tail = output::tail(&log_path, output_start, 40);
                    crate::limits::detect(&tail, chrono::Local::now())
                })
                .flatten();
            if let Some(done) = thread_app.finish_run(&rid, return_code, limit) {
                announce_exit(&thread_app, &done, &log_path, output_start);
            }
        });
    if let Err(e) = watcher {
        // No thread to watch it: stop and reap it ourselves rather than leave an orphan or
        // a zombie. Its log keeps what it wrote, with a trailer.
        procs::kill_and_reap_child(pid);
        let _ = crate::logging::open_append(l.log_path)
            .and_then(|mut f| f.write_all(output::trailer(-libc::SIGKILL).as_bytes()));
        app.finish_run(l.run_id, -libc::SIGKILL, None);
        return Err(fail("watcher thread", e));
    }
    // A shutdown that looked at the live runs before this one was registered would leave
    // it running: stop it here.
    if app.shutdown.is_set() {
        procs::signal_child(pid, libc::SIGTERM);
        return Err(shutting_down());
    }
    Ok(live)
}

/// After a run ended: announce a new crash-loop back-off once, and with
/// `LOOPER_NOTIFY_ON_EXIT` the end of every run. Failures are logged, nothing more.
fn announce_exit(app: &App, done: &Finished, log_path: &Path, output_start: u64) {
    let last_line = || {
        output::tail(log_path, output_start, 3)
            .lines()
            .rfind(|l| !l.starts_with("# codex_exec_return_code=") && !l.trim().is_empty())
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>()
    };
    let mut messages = Vec::new();
    if let Some(limit) = &done.pause_started {
        let when = if limit.stated {
            format!("at {}", limit.resets_at.format("%Y-%m-%d %H:%M %Z"))
        } else {
            format!(
                "at an unknown time (codex did not say; Looper tries again at {})",
                limit.resets_at.format("%Y-%m-%d %H:%M %Z")
            )
        };
        messages.push(format!(
            "Looper: codex hit its usage limit (run {}). It resets {when}; autopoll starts nothing until then and resumes the loop by itself. A /run of your own still goes through.",
            done.row.run_id
        ));
    }
    if let Some(backoff) = done.backoff_started {
        messages.push(format!(
            "Looper: codex keeps failing right after start (last rc={}); autopoll backs off for {:.0} s and longer while it goes on. Last output: {}",
            done.row.return_code.unwrap_or(0),
            backoff.as_secs_f64(),
            last_line()
        ));
    }
    if app.cfg.notify_on_exit {
        messages.push(format!(
            "Looper: run {} ended with rc={} after {:.1} s. Last line: {}",
            done.row.run_id,
            done.row.return_code.unwrap_or(0),
            done.row.duration_seconds.unwrap_or(0.0),
            last_line()
        ));
    }
    for m in messages {
        match app.cfg.zulip.send(&m) {
            Ok(out) => log::info!(
                "zulip.send.ok run_id={} via=api output={}",
                done.row.run_id,
                Q(&out)
            ),
            Err(e) => log::error!(
                "zulip.send.fail run_id={} via=api error={}",
                done.row.run_id,
                Q(&e.0)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RunRequest, ApiError> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn accepts_every_field_and_ignores_unknown_ones() {
        let r = parse(
            r#"{"zulip_message":"hi","codex_prompt":"p","prompt":"legacy","workspace":"/w",
                "codex_exec_binary":"cx","codex_exec_delay_seconds":0.5,
                "codex_exec_startup_check_seconds":2,"zulip_script_path":"s.js",
                "from_run_id":"abc","password_store":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.as_deref(), Some("p"));
        assert_eq!(r.delay, Some(Duration::from_millis(500)));
        assert_eq!(r.startup_check, Some(Duration::from_secs(2)));
        assert_eq!(r.from_run_id.as_deref(), Some("abc"));
    }

    #[test]
    fn legacy_prompt_and_delays() {
        let r = parse(r#"{"zulip_message":"hi","prompt":"old","startup_delay_seconds":1,"prompt_send_delay_seconds":0.5}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("old"));
        assert_eq!(r.delay, Some(Duration::from_millis(1500)));
        let r = parse(
            r#"{"zulip_message":"hi","codex_exec_delay_seconds":0,"sidebar_delay_seconds":9}"#,
        )
        .unwrap();
        assert_eq!(r.delay, Some(Duration::ZERO));
        let r = parse(r#"{"zulip_message":"hi","codex_prompt":""}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some(""));
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        for (body, field) in [
            (r#"{}"#, "zulip_message"),
            (r#"{"zulip_message":"  "}"#, "zulip_message"),
            (r#"{"zulip_message":5}"#, "zulip_message"),
            (
                r#"{"zulip_message":"m","codex_prompt":["a"]}"#,
                "codex_prompt",
            ),
            (r#"{"zulip_message":"m","workspace":{}}"#, "workspace"),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":-1}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":"2"}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":86401}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","new_task_delay_seconds":true}"#,
                "new_task_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_startup_check_seconds":1e999}"#,
                "JSON",
            ),
            (
                r#"{"zulip_message":"m","codex_prompt":"a\u0000b"}"#,
                "codex_prompt",
            ),
            (r#"[1,2]"#, "object"),
            (r#"{"zulip_message":"m""#, "JSON"),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
            assert!(err.message.contains(field), "{body}: {}", err.message);
        }
        let err = parse_request(b"{\"zulip_message\":\"\xff\"}").unwrap_err();
        assert_eq!(err.message, "zulip_message must be valid UTF-8");
        let err = parse_request(b"\xff\xfe").unwrap_err();
        assert_eq!(err.status, 400);
    }

    /// Random JSON objects over the known fields, with values of every type: the validator
    /// accepts exactly those an independent reading of the rules accepts, and keeps what
    /// they say.
    #[test]
    fn random_requests_are_judged_by_the_rules() {
        let mut x: u64 = 0x5DEE_CE66_D1CE_4E5B;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let strings = [
            "zulip_message",
            "codex_prompt",
            "prompt",
            "workspace",
            "codex_exec_binary",
            "zulip_script_path",
            "from_run_id",
        ];
        let seconds = [
            "codex_exec_delay_seconds",
            "codex_exec_startup_check_seconds",
            "startup_delay_seconds",
            "sidebar_delay_seconds",
            "new_task_delay_seconds",
            "prompt_send_delay_seconds",
        ];
        let values = [
            json!(null),
            json!("m"),
            json!("  "),
            json!(""),
            json!("a\0b"),
            json!(0),
            json!(1.5),
            json!(-1),
            json!(86400),
            json!(86400.5),
            json!(50000),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("7"),
        ];
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut obj = Map::new();
            for (n, key) in strings
                .iter()
                .chain(&seconds)
                .chain(&["unknown_field"])
                .enumerate()
            {
                if next(2) == 0 {
                    // Mostly a value of the field's own kind, sometimes anything at all.
                    let pool: &[Value] = match (next(8), n < strings.len()) {
                        (0, _) => &values,
                        (_, true) => &values[..5],
                        (_, false) => &values[5..11],
                    };
                    obj.insert(
                        key.to_string(),
                        pool[next(pool.len() as u64) as usize].clone(),
                    );
                }
            }
            let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
            let string_ok =
                |k: &str| get(k).is_none_or(|v| v.as_str().is_some_and(|s| !s.contains('\0')));
            let secs = |k: &str| get(k).map(|v| v.as_f64());
            let secs_ok =
                |k: &str| secs(k).is_none_or(|v| v.is_some_and(|v| (0.0..=86400.0).contains(&v)));
            let message_ok = get("zulip_message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.trim().is_empty());
            let legacy_sum: f64 = seconds[2..].iter().filter_map(|k| secs(k).flatten()).sum();
            let delay_given = get("codex_exec_delay_seconds").is_some();
            // The legacy delays are summed only when the modern field is absent.
            let legacy_ok =
                seconds[2..].iter().all(|k| secs_ok(k)) && (delay_given || legacy_sum <= 86400.0);
            let expect_ok = message_ok
                && strings.iter().all(|k| string_ok(k))
                && secs_ok("codex_exec_delay_seconds")
                && secs_ok("codex_exec_startup_check_seconds")
                && legacy_ok;
            let body = Value::Object(obj.clone()).to_string();
            match parse_request(body.as_bytes()) {
                Ok(r) => {
                    assert!(expect_ok, "accepted {body}");
                    accepted += 1;
                    let prompt = get("codex_prompt")
                        .or(get("prompt"))
                        .and_then(Value::as_str);
                    assert_eq!(r.prompt.as_deref(), prompt, "{body}");
                    assert_eq!(
                        Some(r.zulip_message.as_str()),
                        get("zulip_message").and_then(Value::as_str)
                    );
                }
                Err(e) => {
                    assert!(!expect_ok, "refused {body}: {}", e.message);
                    assert_eq!(e.status, 400, "{body}");
                    refused += 1;
                }
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn random_bytes_give_a_request_or_a_400() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..3000usize {
            let body: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            if let Err(e) = parse_request(&body) {
                assert_eq!(e.status, 400);
            }
        }
    }

    #[test]
    fn any_bytes_give_a_request_or_a_400() {
        // A small deterministic fuzz over the validator: it must never panic.
        let mut x: u64 = 0x1234_5678;
        let pieces: [&[u8]; 8] = [
            b"{\"zulip_message\":",
            b"\"m\"",
            b",\"codex_exec_delay_seconds\":",
            b"1e308",
            b"}",
            b"\xff\xfe",
            b"[null]",
            b"\"\\u0000\"",
        ];
        for _ in 0..5000 {
            let mut body = Vec::new();
            for _ in 0..6 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.extend_from_slice(pieces[(x % 8) as usize]);
            }
            if let Err(e) = parse_request(&body) {
                assert_eq!(e.status, 400);
            }
        }
    }
}
