//! The stop rules at work: after each run's end (finished, stuck, over budget), at each
//! autopoll tick (a pause's end, a budget reached), for each hand-off (refused while the
//! loop is held, `429` past a budget) and for an operator, whose trigger or `looper resume`
//! ends every hold. The rules are [`crate::rules::stop`]'; the memory is [`crate::state::loopstate`].

use std::path::Path;

use chrono::{DateTime, Local};

use crate::error::ApiError;
use crate::os::logging::Q;
use crate::rules::stop::{self as rules, Counts, Over};
use crate::state::app::App;
use crate::state::history::Row;
use crate::state::loopstate::Hold;

/// When a hold ends, for people.
pub fn when(t: DateTime<Local>) -> String {
    t.format("%Y-%m-%d %H:%M %Z").to_string()
}

fn rows_of(app: &App, workspace: &Path) -> Vec<Row> {
    let mut rows = app.history().newest(crate::state::history::MAX_ROWS);
    rows.retain(|r| r.workspace == workspace);
    rows
}

/// The first budget `workspace` reached at `now` that no operator waived.
fn budget_over(app: &App, workspace: &Path, now: DateTime<Local>) -> Option<Over> {
    let r = &app.cfg().rules;
    if r.max_runs_per_day.is_none()
        && r.max_tokens_per_day.is_none()
        && r.pause_at_percent.is_none()
    {
        return None;
    }
    let over = rules::budget_over(r, &rows_of(app, workspace), now)?;
    (!app.loop_state().waived(workspace, over.reason, now)).then_some(over)
}

/// Holds `workspace` for a budget; the message to say when the pause is new.
fn pause_for(app: &App, workspace: &Path, over: &Over, run_id: Option<&str>) -> Option<String> {
    let hold = Hold::new(
        "paused",
        over.reason,
        over.detail.clone(),
        Some(over.until),
        run_id,
    );
    if !app.loop_state().hold(workspace, hold) {
        return None;
    }
    log::warn!(
        "loop.paused workspace={} reason={} until={} detail={}",
        Q(&workspace.to_string_lossy()),
        over.reason,
        over.until.to_rfc3339(),
        Q(&over.detail)
    );
    Some(format!(
        "Looper: the loop in {} is paused: {}. It goes on by itself at {}; `looper resume` or a trigger of yours goes on now.",
        workspace.display(),
        over.detail,
        when(over.until)
    ))
}

/// Holds `workspace` until an operator resumes it; the message when it is new.
fn hold_for_good(
    app: &App,
    workspace: &Path,
    state: &str,
    reason: &str,
    detail: String,
    run_id: &str,
) -> Option<String> {
    let hold = Hold::new(state, reason, detail.clone(), None, Some(run_id));
    if !app.loop_state().hold(workspace, hold) {
        return None;
    }
    log::warn!(
        "loop.{state} workspace={} reason={reason} run_id={run_id} detail={}",
        Q(&workspace.to_string_lossy()),
        Q(&detail)
    );
    let what = if state == "finished" {
        "is finished"
    } else {
        "is paused"
    };
    Some(format!(
        "Looper: the loop in {} {what}: {detail}. Autopoll starts nothing more there; `looper resume` or a trigger of yours starts it again.",
        workspace.display()
    ))
}

/// What a run's end meant for the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum News {
    /// The loop goes on.
    Nothing,
    /// The loop finished or paused with it: the message to say (the run's summary goes
    /// under it).
    Say(String),
    /// The run's own `loop_done` hand-off finished the loop, and said so then.
    SaidAlready,
}

impl From<Option<String>> for News {
    fn from(said: Option<String>) -> News {
        said.map_or(News::Nothing, News::Say)
    }
}

/// What a run's end means for the loop, its report in `row`.
pub fn after_run(app: &App, row: &Row) -> News {
    let ws = row.workspace.as_path();
    let (held, _) = app.loop_state().hold_of(ws, Local::now());
    if held
        .as_ref()
        .is_some_and(|h| h.reason == "loop_done" && h.run_id.as_deref() == Some(&row.run_id))
    {
        return News::SaidAlready;
    }
    let cfg = app.cfg();
    if let Some(name) = &cfg.report_sources.todo_file {
        if rules::todo_done(row.return_code, row.report.todo_after) {
            let done = row.report.todo_after.map_or(0, |t| t.done);
            let detail = format!(
                "{} has no open item ({done} done) after run {} exited 0",
                name.display(),
                row.run_id
            );
            return hold_for_good(app, ws, "finished", "todo_done", detail, &row.run_id).into();
        }
    }
    let n = cfg.rules.no_progress_runs as usize;
    if n > 0 && rules::counts(row.stop_reason.as_deref(), &row.report) == Counts::Yes {
        let streak = app
            .loop_state()
            .note_progress(ws, &row.run_id, row.report.progress);
        if row.report.progress == Some(false) && streak.len() >= n {
            let detail = format!(
                "{} runs in a row changed nothing (no commit, the TODO file and the work tree as they were): {}",
                streak.len(),
                streak[streak.len() - n..].join(", ")
            );
            return hold_for_good(app, ws, "paused", "no_progress", detail, &row.run_id).into();
        }
    }
    budget_over(app, ws, Local::now())
        .and_then(|over| pause_for(app, ws, &over, Some(&row.run_id)))
        .into()
}

/// What autopoll may do in `workspace` now: `Err(reason)` to skip, with the message of a
/// budget just reached; `Ok(ended)` to go on, `ended` the pause whose time just ended.
pub fn autopoll_gate(
    app: &App,
    workspace: &Path,
) -> Result<Option<Hold>, (String, Option<String>)> {
    let now = Local::now();
    let (held, ended) = app.loop_state().hold_of(workspace, now);
    if let Some(h) = &ended {
        log::info!(
            "loop.pause_ended workspace={} reason={}",
            Q(&workspace.to_string_lossy()),
            h.reason
        );
    }
    if let Some(h) = held {
        return Err((h.reason, None));
    }
    if let Some(over) = budget_over(app, workspace, now) {
        let said = pause_for(app, workspace, &over, None);
        return Err((over.reason.to_string(), said));
    }
    Ok(ended)
}

/// Why a hand-off may not start a run in `workspace`: the loop is finished or paused (a
/// budget's pause: `429`, saying when it clears), or the run would go past a budget (which
/// pauses the loop: the message to say comes with it). Nothing was stopped either way.
pub fn refuse_handoff(app: &App, workspace: &Path) -> Option<(ApiError, Option<String>)> {
    let now = Local::now();
    if let (Some(h), _) = app.loop_state().hold_of(workspace, now) {
        let status = if h.is_budget() { 429 } else { 409 };
        let ends = match h.until() {
            Some(u) => format!("it ends at {}, or", when(u)),
            None => "it ends".to_string(),
        };
        return Some((
            ApiError::new(
                status,
                format!(
                    "the loop is {} ({}: {}); a hand-off starts nothing. Nothing was stopped; {ends} with `looper resume` or a trigger of the operator",
                    h.state, h.reason, h.detail
                ),
            ),
            None,
        ));
    }
    let over = budget_over(app, workspace, now)?;
    let said = pause_for(app, workspace, &over, None);
    Some((
        ApiError::new(
            429,
            format!(
                "over budget: {}; no run starts before {} (or `looper resume`). Nothing was stopped",
                over.detail,
                when(over.until)
            ),
        ),
        said,
    ))
}

/// An operator's trigger or `looper resume` ends the holds of `workspace` (of every
/// workspace: `None`); the holds that ended.
pub fn resume(app: &App, workspace: Option<&Path>, by: &str) -> Vec<(String, Hold)> {
    let ended = app.loop_state().resume(workspace);
    for (ws, h) in &ended {
        log::info!(
            "loop.resumed workspace={} was={} reason={} by={by}",
            Q(ws),
            h.state,
            h.reason
        );
    }
    ended
}

/// Finishes the loop of `workspace` for run `run_id`'s `loop_done` hand-off.
pub fn finish_by_handoff(app: &App, workspace: &Path, run_id: &str) {
    let detail = format!("run {run_id} handed off with done");
    let hold = Hold::new("finished", "loop_done", detail.clone(), None, Some(run_id));
    app.loop_state().hold(workspace, hold);
    log::warn!(
        "loop.finished workspace={} reason=loop_done run_id={run_id} detail={}",
        Q(&workspace.to_string_lossy()),
        Q(&detail)
    );
}
