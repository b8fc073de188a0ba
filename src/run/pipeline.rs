//! The `/run` pipeline, shared by `POST /run`, the inbox and autopoll: what the caller may
//! ask ([`crate::run::trust::admit`]), the stale hand-off check and the run guard, then plan →
//! announce → stop → spawn → startup check, and the answer. The plan decides everything
//! before the first effect; after a shutdown began no step with an effect starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::error::{Refusal, Why};
use crate::model::{LoopState, Outcome, StopReason, Trigger};
use crate::os::logging::Q;
use crate::run::codex;
use crate::run::request::{parse_request, RunRequest};
use crate::run::spawn::{launch as launch_run, Launch, RunLog, Spawned};
use crate::run::stop::stop_runs;
use crate::run::trust::Caller;
use crate::state::app::App;

/// The prompt used when neither the request, `LOOPER_PROMPT_FILE` nor
/// `LOOPER_DEFAULT_PROMPT` gives one: the repeat-the-same-prompt pattern around `TODO.md`.
pub const BUILTIN_PROMPT: &str = "Read TODO.md in this repository. Take the first item that is not done, \
do it and check that it works, then update TODO.md: what you changed, what failed, and what is left. \
Keep TODO.md the single source of truth for the next run.";

/// The prompt for a run that named none: `LOOPER_PROMPT_FILE` (read now), else
/// `LOOPER_DEFAULT_PROMPT`, else [`BUILTIN_PROMPT`].
pub fn default_prompt(app: &App) -> Result<String, Refusal> {
    if let Some(path) = &app.cfg().prompt_file {
        // Read under the run guard, and maybe from the workspace: bounded, never blocking.
        let limit = codex::MAX_PROMPT_BYTES as u64;
        let too_long = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > limit);
        if too_long {
            let size = std::fs::metadata(path).map_or(0, |m| m.len());
            return Err(Refusal::bad_request(format!(
                "LOOPER_PROMPT_FILE {} is {size} bytes; codex exec takes at most {limit} (Linux passes no single argument of 128 KiB or more)",
                path.display()
            )));
        }
        return match crate::os::paths::read_named_text(path, limit) {
            Ok(text) if !text.trim().is_empty() => Ok(text),
            Ok(_) => Err(Refusal::new(
                Why::Broken,
                format!("LOOPER_PROMPT_FILE {} is empty", path.display()),
            )),
            Err(e) => Err(Refusal::new(
                Why::Broken,
                format!("cannot read LOOPER_PROMPT_FILE {}: {e}", path.display()),
            )),
        };
    }
    Ok(app
        .cfg()
        .default_prompt
        .clone()
        .unwrap_or_else(|| BUILTIN_PROMPT.to_string()))
}

/// Whether `from_run_id` may not hand off: an id Looper never gave out (its history keeps
/// every run, across restarts), or an old run calling late — another run is active, or,
/// with none active, a newer run than it started since. The newest run, live or just ended,
/// goes through.
pub fn stale_reason(app: &App, from_run_id: &str) -> Option<Refusal> {
    if app.registry().being_set_up(from_run_id) {
        // Its hand-off waits for its setup under the run guard, then is looked at again.
        return None;
    }
    let no_longer_active = || {
        Refusal::new(
            Why::Stale,
            format!("stale: run {from_run_id} is no longer active"),
        )
    };
    if let Some((reason, exited)) = app.registry().stopping(from_run_id) {
        // The operator (or another trigger) stops it: whatever it says as it dies (a TERM
        // trap's hand-off) starts nothing; nor once it is gone, before its row is ended.
        if exited {
            return Some(no_longer_active());
        }
        return Some(Refusal::new(
            Why::Stale,
            format!(
                "stale: run {from_run_id} is being stopped ({}); it can no longer hand off. Nothing was stopped",
                reason.as_str()
            ),
        ));
    }
    if !app.registry().gave_out(from_run_id) {
        return Some(Refusal::new(
            Why::UnknownRun,
            format!("unknown run: Looper never started a run {from_run_id}; a hand-off names the run that sends it. Nothing was stopped"),
        ));
    }
    let stale = match app.registry().active() {
        Some(active) => active.run_id != from_run_id,
        // The newest run that ended on its own may still be heard (its inbox file is read
        // after its exit); one that was stopped (replaced, by a person, at shutdown) is not.
        None => app.history().newest(1).first().is_none_or(|newest| {
            newest.run_id != from_run_id
                || !matches!(newest.stop_reason, None | Some(StopReason::UsageLimit))
        }),
    };
    stale.then(no_longer_active)
}

/// Everything decided before the first effect.
struct Plan {
    prompt: String,
    workspace: PathBuf,
    workspace_from_request: bool,
    binary: Option<(PathBuf, codex::Source)>,
}

fn check_workspace(plan: &Plan) -> Result<(), Refusal> {
    if plan.workspace.is_dir() {
        return Ok(());
    }
    // The request's mistake, or the configuration's.
    let why = if plan.workspace_from_request {
        Why::Invalid
    } else {
        Why::Broken
    };
    Err(Refusal::new(
        why,
        format!("workspace is not a directory: {}", plan.workspace.display()),
    ))
}

fn plan(app: &App, req: &RunRequest) -> Result<Plan, Refusal> {
    let prompt = match &req.prompt {
        Some(p) => p.clone(),
        None => default_prompt(app)?,
    };
    if prompt.len() > codex::MAX_PROMPT_BYTES {
        let source = match (&req.prompt, &app.cfg().prompt_file) {
            (None, Some(file)) => format!("LOOPER_PROMPT_FILE {}", file.display()),
            _ => "the prompt".to_string(),
        };
        return Err(Refusal::bad_request(format!(
            "{source} is {} bytes; codex exec takes at most {} (Linux passes no single argument of 128 KiB or more)",
            prompt.len(),
            codex::MAX_PROMPT_BYTES
        )));
    }
    let workspace = target_workspace(app, req);
    let mut plan = Plan {
        prompt,
        workspace,
        workspace_from_request: req.workspace.is_some(),
        binary: None,
    };
    if !plan.prompt.is_empty() {
        check_workspace(&plan)?;
        check_own_files_outside(app, &plan.workspace)?;
        if app.cfg().require_git && !crate::report::git::inside_git_work_tree(&plan.workspace) {
            return Err(Refusal::bad_request(format!(
                "workspace is not inside a git work tree: {} (codex refuses to run outside git; run `git init` there, or set LOOPER_REQUIRE_GIT=0)",
                plan.workspace.display()
            )));
        }
        let found = codex::resolve(
            req.codex_exec_binary.as_deref(),
            app.cfg().codex_exec_binary.as_deref(),
            &app.cfg().cwd,
            app.own_dir(),
            app.path_var(),
            &plan.workspace,
        )
        .map_err(|name| match &req.codex_exec_binary {
            Some(_) => Refusal::bad_request(format!(
                "codex_exec_binary not found: {name} (give a path to an executable, or a name on the server's PATH)"
            )),
            None => Refusal::new(Why::Broken, missing_codex(app.cfg().codex_exec_binary.as_deref(), &name)),
        })?;
        plan.binary = Some(found);
    }
    Ok(plan)
}

/// What a missing codex is called: "missing from PATH" (the original's words) only when PATH
/// was where it was looked for; a `CODEX_EXEC_BINARY` that leads nowhere is named as such.
pub fn missing_codex(configured: Option<&str>, name: &str) -> String {
    match configured {
        Some(setting) => format!(
            "required tool is missing: CODEX_EXEC_BINARY={setting} is not an executable (fix CODEX_EXEC_BINARY, or unset it to use codex from PATH)"
        ),
        None => format!("required tool is missing from PATH: {name}"),
    }
}

/// Looper's own files (run logs, the history, the server log) never lie inside a workspace
/// it runs: the agent writes anything there, links included, and would rewrite them.
fn check_own_files_outside(app: &App, workspace: &Path) -> Result<(), Refusal> {
    for (setting, dir) in app.cfg().own_dirs() {
        let dir = dir.canonicalize().unwrap_or(dir);
        if dir.starts_with(workspace) {
            return Err(Refusal::bad_request(format!(
                "workspace {} holds Looper's own files ({setting} is {}): the agent could rewrite them. Move {setting} out of the workspace",
                workspace.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Takes a `/run` body, from HTTP or an inbox file, through everything `POST /run` does:
/// validation, what `caller` may ask for ([`crate::run::trust::admit`]), the stale hand-off
/// check, the run guard (a hand-off from the run still being set up waits for that setup),
/// the pipeline.
pub fn submit(
    app: &Arc<App>,
    body: &[u8],
    request_id: &str,
    trigger: Trigger,
    caller: &Caller,
) -> Result<Value, Refusal> {
    let mut req = parse_request(body)?;
    crate::run::trust::admit(caller, &mut req, |id| {
        app.registry()
            .workspace_of(id)
            .and_then(|w| w.canonicalize().ok())
    })
    .inspect_err(|e| {
        log::warn!(
            "run.refused request_id={request_id} caller={} status={} error={}",
            Q(&caller.describe()),
            e.status(),
            Q(&e.message)
        )
    })?;
    req.handed_off_by = match caller {
        Caller::Run {
            run_id: Some(id), ..
        } => Some(id.clone()),
        // An inbox file names the run that wrote it: who reads it when is no evidence (a
        // run being replaced could leave one to be read after the next run started).
        Caller::Run { .. } => match &req.from_run_id {
            Some(id) => Some(id.clone()),
            None => {
                return Err(Refusal::new(
                    Why::Invalid,
                    "an inbox request names the run that sends it: from_run_id (`looper trigger` sends $LOOPER_RUN_ID). Nothing was changed",
                ))
            }
        },
        _ => None,
    }
    .or_else(|| req.from_run_id.clone());
    // The run that sends it, by its own word or by where it comes from.
    let sender = req
        .from_run_id
        .clone()
        .or_else(|| req.handed_off_by.clone());
    // A late call from an old run is refused as stale even while another run is being set
    // up, so that its caller learns why.
    let stale = || sender.as_deref().and_then(|from| stale_reason(app, from));
    if let Some(e) = stale() {
        return Err(e);
    }
    let guard = match (sender.as_deref(), caller) {
        (Some(from), _) => app
            .registry()
            .guard()
            .take_for_handoff(from, app.shutdown()),
        // The operator goes before a chain of hand-offs (it can always stop the loop).
        (None, Caller::Operator | Caller::Local) => {
            app.registry().guard().take_for_operator(app.shutdown())
        }
        (None, Caller::Run { .. }) => app.registry().guard().try_take(),
    };
    let Some(_guard) = guard else {
        return Err(Refusal::new(Why::Busy, "busy: another run is in progress"));
    };
    // Looked at again under the guard: a run may have been replaced meanwhile.
    if let Some(e) = stale() {
        return Err(e);
    }
    let handoff = matches!(caller, Caller::Run { .. }) || req.from_run_id.is_some();
    let workspace = target_workspace(app, &req);
    if req.loop_done {
        return finish_loop(app, &req, request_id, &workspace, handoff);
    }
    if handoff {
        if let Some((e, said)) = crate::autoloop::judge::refuse_handoff(app, &workspace) {
            if let Some(message) = said {
                crate::notify::say(app, &message, request_id);
            }
            log::warn!(
                "run.refused request_id={request_id} caller={} status={} error={}",
                Q(&caller.describe()),
                e.status(),
                Q(&e.message)
            );
            return Err(e);
        }
    } else if req.prompt.as_deref() != Some("") {
        // The operator's own trigger that starts a run: the loop goes on, whatever held it.
        // (One that only stops runs holds what held: "stop and pause" stays paused.)
        crate::autoloop::judge::resume(app, Some(&workspace), &caller.describe());
    }
    let value = execute(app, &req, request_id, trigger)?;
    log::info!(
        "run.success request_id={request_id} started={} pid={}",
        value["codex_exec_started"],
        value["codex_exec_result"]["pid"]
    );
    Ok(value)
}

/// The directory a request runs in: `~` as the original read it, `..` folded away so the
/// answer names the directory, and the directory itself, not a link to it (the run, its
/// answer, its history and the loop's holds name the same place).
fn target_workspace(app: &App, req: &RunRequest) -> PathBuf {
    app.workspace_named(req.workspace.as_deref())
}

/// A hand-off with `loop_done`: the live run that sends it says the task is done. The loop
/// finishes: nothing is stopped (the run ends by itself), nothing starts, autopoll leaves
/// the workspace alone, and the announcement says so with the run's summary.
fn finish_loop(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    workspace: &Path,
    handoff: bool,
) -> Result<Value, Refusal> {
    refuse_after_shutdown(app)?;
    // Saved before it is said: a finish that could not be written is no finish.
    let line = match req.handed_off_by.as_deref().filter(|_| handoff) {
        // The stale check passed: the run is the live one, or the newest, ended on its own
        // (its inbox file may be read after its exit).
        Some(run_id) => {
            crate::autoloop::judge::finish_by_handoff(app, workspace, run_id)?;
            format!(
                "Looper: the loop in {} is finished: run {run_id} handed off with done. Autopoll starts nothing more there; `looper resume` or a trigger of yours starts it again.",
                workspace.display()
            )
        }
        // The operator's own `--done`: they finish the loop (a run's hand-off names its run).
        None if !handoff => {
            crate::autoloop::judge::hold_by_operator(app, workspace, true, request_id)?.1
        }
        None => {
            return Err(Refusal::new(
                Why::NotAHandOff,
                "loop_done comes only with the hand-off of the run that finished the task (send it from the run, or with its from_run_id); nothing was changed",
            ))
        }
    };
    let mut announced = req.clone();
    announced.zulip_message = format!("{}\n{line}", req.zulip_message);
    let zulip_output = announce(app, &announced, request_id, true)?;
    Ok(json!({
        "ok": true,
        "request_id": request_id,
        "loop_done": true,
        "loop_state": LoopState::Finished,
        "run_id": Value::Null,
        "zulip_output": zulip_output,
        "killed_codex_exec_pids": [],
        "remaining_codex_exec_pids": [],
        "workspace": workspace.to_string_lossy(),
        "codex_exec_started": false,
        "codex_exec_result": Value::Null,
        "codex_prompt_sent": false,
    }))
}

/// Runs the whole pipeline for a validated request; the caller holds the run guard.
pub fn execute(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    trigger: Trigger,
) -> Result<Value, Refusal> {
    execute_replacing(app, req, request_id, trigger, StopReason::Replaced)
}

/// [`execute`], with the reason the runs it stops get (hung-run replacement says `hung`).
pub fn execute_replacing(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    trigger: Trigger,
    stop_reason: StopReason,
) -> Result<Value, Refusal> {
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

    // Everything the run needs written is made first: a full disk refuses it here, before
    // anything is announced or stopped.
    let launch = (!plan.prompt.is_empty())
        .then(|| {
            let Some((binary, source)) = plan.binary.clone() else {
                return Err(Refusal::new(Why::Broken, "no codex binary was resolved"));
            };
            let start = Launch {
                binary,
                source,
                prompt: plan.prompt.clone(),
                workspace: plan.workspace.clone(),
                delay: req.delay.unwrap_or(app.cfg().exec_delay),
                startup_check: req.startup_check.unwrap_or(app.cfg().startup_check),
            };
            let log = RunLog::create(app, &start, request_id)?;
            Ok((start, log))
        })
        .transpose()?;

    refuse_after_shutdown(app)?;
    log::info!("run.step request_id={request_id} action=announce");
    let zulip_output = if trigger == Trigger::Autopoll {
        // Autopoll says why it starts a run; a Zulip failure does not hold the run back.
        crate::notify::say(app, &req.zulip_message, request_id)
    } else {
        // A run's hand-off goes on when Zulip fails (whether its run still lives or has
        // ended: it passed the stale check): its message waits in the outbox.
        announce(app, req, request_id, req.handed_off_by.is_some())?
    };

    refuse_after_shutdown(app)?;
    log::info!("run.step request_id={request_id} action=stop");
    if let Some(run_id) = &req.handed_off_by {
        app.registry().mark_handed_off(run_id);
    }
    // With an empty prompt nothing replaces what is stopped: it is stopped.
    let stop_reason = match (stop_reason, plan.prompt.is_empty()) {
        (StopReason::Replaced, true) => StopReason::Stopped,
        (reason, _) => reason,
    };
    let stopped = stop_runs(
        app,
        plan.binary.as_ref().map(|b| b.0.as_path()),
        None,
        &plan.workspace,
        request_id,
        stop_reason,
    )?;

    let spawned = match launch {
        None => {
            log::info!("run.step request_id={request_id} action=skip_launch reason=empty_prompt");
            None
        }
        Some((start, log)) => {
            // The workspace may have gone while we announced and stopped.
            check_workspace(&plan)?;
            Some(launch_run(app, &start, request_id, trigger, log)?)
        }
    };
    Ok(answer(
        req,
        request_id,
        &plan,
        zulip_output,
        &stopped,
        spawned.as_ref(),
    ))
}

/// The answer to a request that went through: every field the original's wrappers read.
fn answer(
    req: &RunRequest,
    request_id: &str,
    plan: &Plan,
    zulip_output: String,
    stopped: &crate::os::signals::StopReport,
    spawned: Option<&Spawned>,
) -> Value {
    let result = spawned.map(|s| {
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
    json!({
        "ok": true,
        "request_id": request_id,
        "run_id": spawned.map(|s| s.run_id.clone()),
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
    })
}

/// A trigger's announcement, said the configured way (or by the request's own
/// `zulip_script_path`, the operator's): a hand-off's carries the summary of the run that
/// asked for it under its text. Its failure is a `502` (nothing was stopped), except for a
/// live run's hand-off (`queue`), whose message waits for Zulip.
fn announce(
    app: &Arc<App>,
    req: &RunRequest,
    request_id: &str,
    queue: bool,
) -> Result<String, Refusal> {
    let text = match handoff_summary(app, req) {
        Some(summary) => format!("{}\n{summary}", req.zulip_message),
        None => req.zulip_message.clone(),
    };
    let script = req.zulip_script_path.as_deref();
    crate::notify::announce(app, &text, script, request_id, queue).map_err(|e| {
        Refusal::new(
            Why::ZulipFailed,
            format!("Zulip announcement failed, nothing was stopped: {e}"),
        )
    })
}

/// The summary of the live run that hands off (`req.handed_off_by`), as it stands: the
/// line under the caller's text. `None` with `LOOPER_RUN_REPORTS=0`.
fn handoff_summary(app: &App, req: &RunRequest) -> Option<String> {
    if !app.cfg().run_reports {
        return None;
    }
    let run_id = req.handed_off_by.as_deref()?;
    let live = app
        .registry()
        .live()
        .into_iter()
        .find(|r| r.run_id == run_id)?;
    // What it started from, as its row says.
    let start = app
        .history()
        .get(run_id)
        .map(|r| crate::report::StartState::from_row(&r.report))
        .unwrap_or_default();
    let output = crate::report::Output::read(&live.log_path, 0);
    let now = app
        .cfg()
        .report_sources
        .so_far(&live.workspace, &output, &start);
    let seconds = live.started.elapsed().as_secs_f64();
    // A run that finishes the loop is not handed off: nothing replaces it.
    let how = if req.loop_done {
        "finished the loop"
    } else {
        Outcome::HandedOff.as_str()
    };
    Some(format!(
        "↳ {}",
        crate::report::summary(run_id, how, seconds, &now)
    ))
}

/// After SIGTERM no step with an effect begins.
fn refuse_after_shutdown(app: &App) -> Result<(), Refusal> {
    if app.shutdown().is_set() {
        return Err(Refusal::shutting_down());
    }
    Ok(())
}
