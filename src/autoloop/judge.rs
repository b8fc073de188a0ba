//! The one room where the loop's holds are decided, each from one event:
//!
//! - a run's end ([`run_ended`]): the crash back-off, codex's usage limit (a pause until
//!   its reset; a run that exits 0 ends that pause), a finished TODO list, runs in a row
//!   that changed nothing, a budget reached;
//! - autopoll's tick ([`autopoll_gate`]): a pause whose time is over ends, a budget reached
//!   pauses;
//! - a hand-off ([`refuse_handoff`]): refused while the loop is held, `429` past a budget;
//! - the operator ([`resume`]), whose trigger or `looper resume` ends every hold; a run's
//!   own `loop_done` hand-off ([`finish_by_handoff`]).
//!
//! The rules themselves are pure ([`crate::rules`]); the holds are kept by
//! [`crate::state::holds`]. Nothing here says anything on Zulip: what to say is returned.

use std::path::Path;
use std::time::Instant;

use crate::error::{Refusal, Why};
use crate::model::{Hold, HoldReason, HoldState, Row, Stamp};
use crate::os::logging::Q;
use crate::rules::backoff::{Backoff, RunEnd, Settings};
use crate::rules::pace;
use crate::rules::stop::{self as rules, Over};
use crate::rules::usage_limit::UsageLimit;
use crate::state::app::App;
use crate::state::registry::Exited;

fn rows_of(app: &App, workspace: &Path) -> Vec<Row> {
    let mut rows = app.history().newest(crate::state::history::MAX_ROWS);
    rows.retain(|r| r.workspace == workspace);
    rows
}

/// The first budget `workspace` reached at `now` that no operator waived; then the
/// account's pace.
fn budget_over(app: &App, workspace: &Path, now: Stamp) -> Option<Over> {
    let r = &app.cfg().rules;
    let over = if r.max_runs_per_day.is_none()
        && r.max_tokens_per_day.is_none()
        && r.pause_at_percent.is_none()
    {
        None
    } else {
        let from = app.holds().counted_from(workspace).map(Stamp::local);
        rules::budget_over(r, &rows_of(app, workspace), now.local(), from)
    };
    let waived = |o: &Over| app.holds().waived(workspace, o.reason, now);
    over.filter(|o| !waived(o))
        .or_else(|| pace_over(app, now).filter(|o| !waived(o)))
}

/// The account's figures, read now, ahead of the pace line (`LOOPER_QUOTA_PACE`).
fn pace_over(app: &App, now: Stamp) -> Option<Over> {
    let policy = app.cfg().rules.pace?;
    let seen = app.account().refresh()?;
    let a = pace::ahead(
        &policy,
        &pace::spans(&seen.limits),
        now.timestamp(),
        &pace::local_wall,
    )?;
    let until = Stamp::from(pace::local(a.until));
    let detail = format!(
        "the account's {} window is {:.0}% used, ahead of the pace line ({:.0}% now{}); {}",
        a.name,
        a.used,
        a.line,
        pace::reserve_words(&policy),
        if a.at_reset {
            format!(
                "the line does not catch up before the window resets at {}",
                until.minute()
            )
        } else {
            format!("the line catches up at {}", until.minute())
        }
    );
    Some(Over {
        reason: HoldReason::QuotaPace,
        detail,
        until: until.local(),
    })
}

/// Holds `workspace` for a budget; the message to say when the pause is new.
fn pause_for(app: &App, workspace: &Path, over: &Over, run_id: Option<&str>) -> Option<String> {
    let until = Stamp::from(over.until);
    let hold = Hold::new(
        HoldState::Paused,
        over.reason,
        over.detail.clone(),
        Some(until),
        run_id,
    );
    if !app.holds().hold(workspace, hold) {
        return None;
    }
    log::warn!(
        "loop.paused workspace={} reason={} until={until} detail={}",
        Q(&workspace.to_string_lossy()),
        over.reason.as_str(),
        Q(&over.detail)
    );
    Some(format!(
        "Looper: the loop in {} is paused: {}. It goes on by itself at {}; `looper resume` or a trigger of yours goes on now.",
        workspace.display(),
        over.detail,
        until.minute()
    ))
}

/// Holds `workspace` until an operator resumes it; the message when it is new.
fn hold_for_good(
    app: &App,
    workspace: &Path,
    state: HoldState,
    reason: HoldReason,
    detail: String,
    run_id: &str,
) -> Option<String> {
    let hold = Hold::new(state, reason, detail.clone(), None, Some(run_id));
    if !app.holds().hold(workspace, hold) {
        return None;
    }
    log::warn!(
        "loop.{} workspace={} reason={} run_id={run_id} detail={}",
        state.as_str(),
        Q(&workspace.to_string_lossy()),
        reason.as_str(),
        Q(&detail)
    );
    let what = match state {
        HoldState::Finished => "is finished",
        HoldState::Paused => "is paused",
    };
    Some(format!(
        "Looper: the loop in {} {what}: {detail}. Autopoll starts nothing more there; `looper resume` or a trigger of yours starts it again.",
        workspace.display()
    ))
}

/// What a run's end meant for the loop's stop rules.
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

/// Codex's usage limit, as it paused the loop.
#[derive(Debug, Clone)]
pub struct UsagePause {
    pub limit: UsageLimit,
    /// A new pause (to be said once), not one that held already.
    pub new: bool,
}

/// Everything a run's end decided.
#[derive(Debug, Clone)]
pub struct AfterRun {
    /// The stop rules: the loop finished or paused, or goes on.
    pub news: News,
    /// Codex's usage limit ended the run and pauses the loop.
    pub usage_pause: Option<UsagePause>,
    /// A crash loop backs off.
    pub backoff: Option<Backoff>,
    /// The run counted as a crash (a quick non-zero exit nobody asked for).
    pub crash: bool,
}

/// An autopoll start that failed before any run: counted as a crash, backing off as a
/// crash loop does.
pub fn start_failed(app: &App) {
    let settings = Settings {
        idle_poll: app.cfg().idle_poll,
        usage_limit_margin: app.cfg().usage_limit_margin,
    };
    let verdict = app.policy().start_failed(settings, Instant::now());
    app.remember_backoff();
    if let Some(b) = verdict.backoff {
        log::warn!(
            "codex.exec.autopoll.backoff crashes={} backoff_s={:.1} reason=start_failed",
            b.crashes,
            b.length.as_secs_f64()
        );
    }
}

/// Decides what run `ended`'s end means for the loop, its row (report included) in `row`
/// and codex's usage limit in `limit` when that is how it ended: the crash back-off, the
/// usage-limit pause (and its end, when a run exits 0), then the stop rules.
pub fn run_ended(app: &App, ended: &Exited, row: &Row, limit: Option<UsageLimit>) -> AfterRun {
    let ws = row.workspace.as_path();
    let settings = Settings {
        idle_poll: app.cfg().idle_poll,
        usage_limit_margin: app.cfg().usage_limit_margin,
    };
    let end = RunEnd {
        return_code: ended.exit.return_code,
        elapsed: ended.elapsed,
        explained: ended.reason.is_some(),
        usage_limit: limit.clone(),
    };
    let verdict = app.policy().on_end(&end, settings, Instant::now());
    if verdict.crash || verdict.reset_after.is_some() {
        app.remember_backoff();
    }
    if let Some(b) = verdict.backoff {
        log::warn!(
            "codex.exec.autopoll.backoff crashes={} backoff_s={:.1}",
            b.crashes,
            b.length.as_secs_f64()
        );
    }
    if let Some(crashes) = verdict.reset_after {
        log::info!("codex.exec.autopoll.backoff_reset after_crashes={crashes}");
    }
    let usage_pause = match (limit, verdict.pause_until) {
        (Some(limit), Some(until)) => Some(pause_for_usage_limit(
            app,
            ws,
            &row.run_id,
            limit,
            until.into(),
        )),
        _ => None,
    };
    if row.return_code == Some(0) {
        // Someone's run worked (bought credits, or the reset came early): go on.
        if app.holds().end_for(ws, HoldReason::UsageLimit).is_some() {
            log::info!(
                "codex.exec.autopoll.resume reason=run_succeeded run_id={}",
                row.run_id
            );
        }
    }
    AfterRun {
        news: stop_rules(app, row),
        usage_pause,
        backoff: verdict.backoff,
        crash: verdict.crash,
    }
}

/// Pauses `workspace` until codex's usage limit resets (`until`, margin included).
fn pause_for_usage_limit(
    app: &App,
    workspace: &Path,
    run_id: &str,
    limit: UsageLimit,
    until: Stamp,
) -> UsagePause {
    let resets = Stamp::from(limit.resets_at);
    let detail = format!(
        "codex hit its usage limit (run {run_id}); it resets at {}{}",
        resets.minute(),
        if limit.stated {
            ""
        } else {
            " (codex named no time: Looper's guess)"
        }
    );
    let hold = Hold::new(
        HoldState::Paused,
        HoldReason::UsageLimit,
        detail,
        Some(until),
        Some(run_id),
    );
    let new = app.holds().hold(workspace, hold);
    log::warn!(
        "codex.exec.usage_limit run_id={run_id} resets_at={resets} stated={} paused_until={until}",
        limit.stated
    );
    UsagePause { limit, new }
}

/// The stop rules on a run's end, its report in `row`: a finished TODO list finishes the
/// loop, runs in a row that changed nothing pause it, a budget reached pauses it.
fn stop_rules(app: &App, row: &Row) -> News {
    let ws = row.workspace.as_path();
    let held = app.holds().of(ws);
    if held.as_ref().is_some_and(|h| {
        h.reason == HoldReason::LoopDone && h.run_id.as_deref() == Some(&row.run_id)
    }) {
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
            let said = hold_for_good(
                app,
                ws,
                HoldState::Finished,
                HoldReason::TodoDone,
                detail,
                &row.run_id,
            );
            return said.into();
        }
    }
    let n = cfg.rules.no_progress_runs as usize;
    if n > 0 && rules::counts_for_stuck(row.stop_reason, &row.report) {
        let streak = app
            .holds()
            .note_progress(ws, &row.run_id, row.report.progress);
        if row.report.progress == Some(false) && streak.len() >= n {
            let detail = format!(
                "{} runs in a row changed nothing (no commit, the TODO file and the work tree as they were): {}",
                streak.len(),
                streak[streak.len() - n..].join(", ")
            );
            let said = hold_for_good(
                app,
                ws,
                HoldState::Paused,
                HoldReason::NoProgress,
                detail,
                &row.run_id,
            );
            return said.into();
        }
    }
    budget_over(app, ws, Stamp::now())
        .and_then(|over| pause_for(app, ws, &over, Some(&row.run_id)))
        .into()
}

/// Ends `workspace`'s hold when its time is over at `now` (logged): the hold that ended.
fn end_if_over(app: &App, workspace: &Path, now: Stamp) -> Option<Hold> {
    let ended = app.holds().end_if_over(workspace, now)?;
    log::info!(
        "loop.pause_ended workspace={} reason={}",
        Q(&workspace.to_string_lossy()),
        ended.reason.as_str()
    );
    Some(ended)
}

/// What autopoll may do in a workspace at its tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Go on; `ended`: the pause whose time just ended (a run starts at once).
    Go { ended: Option<Hold> },
    /// The loop is held.
    Held(HoldReason),
    /// A budget is reached now: the loop pauses, and `said` is the message when new.
    OverBudget {
        reason: HoldReason,
        said: Option<String>,
    },
}

/// What autopoll may do in `workspace` now: a pause whose time is over ends here.
pub fn autopoll_gate(app: &App, workspace: &Path) -> Gate {
    let now = Stamp::now();
    let ended = end_if_over(app, workspace, now);
    if let Some(h) = app.holds().of(workspace) {
        return Gate::Held(h.reason);
    }
    if let Some(over) = budget_over(app, workspace, now) {
        let said = pause_for(app, workspace, &over, None);
        return Gate::OverBudget {
            reason: over.reason,
            said,
        };
    }
    Gate::Go { ended }
}

/// Why a hand-off may not start a run in `workspace`: the loop is finished or paused (a
/// budget's pause: `429`, saying when it clears), or the run would go past a budget (which
/// pauses the loop: the message to say comes with it). A pause whose time is over ends
/// here. Nothing was stopped either way.
pub fn refuse_handoff(app: &App, workspace: &Path) -> Option<(Refusal, Option<String>)> {
    let now = Stamp::now();
    end_if_over(app, workspace, now);
    if let Some(h) = app.holds().of(workspace) {
        let why = if h.reason.is_budget() {
            Why::OverBudget
        } else if h.reason.asks_to_wait(h.state) {
            Why::Paused
        } else {
            Why::Held
        };
        let ends = match h.until {
            Some(u) => format!("it ends at {}, or", u.minute()),
            None => "it ends".to_string(),
        };
        return Some((
            Refusal::new(
                why,
                format!(
                    "the loop is {} ({}: {}); a hand-off starts nothing. Nothing was stopped; {ends} with `looper resume` or a trigger of the operator",
                    h.state.as_str(),
                    h.reason.as_str(),
                    h.detail
                ),
            ),
            None,
        ));
    }
    let over = budget_over(app, workspace, now)?;
    let said = pause_for(app, workspace, &over, None);
    Some((
        Refusal::new(
            Why::OverBudget,
            format!(
                "over budget: {}; no run starts before {} (or `looper resume`). Nothing was stopped",
                over.detail,
                Stamp::from(over.until).minute()
            ),
        ),
        said,
    ))
}

/// An operator's trigger or `looper resume` ends the holds of `workspace` (of every
/// workspace: `None`); the holds that ended.
pub fn resume(app: &App, workspace: Option<&Path>, by: &str) -> Vec<(String, Hold)> {
    let ended = app.holds().resume(workspace);
    log_resumed(&ended, by);
    ended
}

/// [`resume`] for `POST /resume`: the loop's state is saved before the answer, or nothing
/// is resumed (`Err`: a refusal saying why).
pub fn resume_or_refuse(
    app: &App,
    workspace: Option<&Path>,
    by: &str,
) -> Result<Vec<(String, Hold)>, Refusal> {
    let ended = app
        .holds()
        .resume_or_refuse(workspace)
        .map_err(|e| cannot_save(&e))?;
    log_resumed(&ended, by);
    Ok(ended)
}

/// The refusal of a change to the loop's state that could not be written.
fn cannot_save(e: &str) -> Refusal {
    Refusal::new(
        Why::CannotSave,
        format!("cannot save the loop's state ({e}); nothing was changed"),
    )
}

fn log_resumed(ended: &[(String, Hold)], by: &str) {
    for (ws, h) in ended {
        log::info!(
            "loop.resumed workspace={} was={} reason={} by={by}",
            Q(ws),
            h.state.as_str(),
            h.reason.as_str()
        );
    }
}

/// The operator holds the loop of `workspace`: paused (until `looper resume`) or, with
/// `finish`, finished. It stops nothing. Saved before the answer, or not at all (`Err`).
/// The hold, and the message to say.
pub fn hold_by_operator(
    app: &App,
    workspace: &Path,
    finish: bool,
    by: &str,
) -> Result<(Hold, String), Refusal> {
    let (state, detail) = if finish {
        (HoldState::Finished, "finished by the operator")
    } else {
        (HoldState::Paused, "paused by the operator")
    };
    let hold = Hold::new(state, HoldReason::Operator, detail.to_string(), None, None);
    app.holds()
        .hold_or_refuse(workspace, hold.clone())
        .map_err(|e| cannot_save(&e))?;
    log::warn!(
        "loop.{} workspace={} reason=operator by={by}",
        if finish { "finished" } else { "paused" },
        Q(&workspace.to_string_lossy())
    );
    let said = if finish {
        format!(
            "Looper: the operator finished the loop in {}. Autopoll starts nothing more there and a run's hand-off is refused; runs go on. `looper resume` or a trigger of theirs starts it again.",
            workspace.display()
        )
    } else {
        format!(
            "Looper: the operator paused the loop in {}. Autopoll starts nothing and a run's hand-off is answered 429 (the run goes on) until `looper resume` or a trigger of theirs.",
            workspace.display()
        )
    };
    Ok((hold, said))
}

/// Finishes the loop of `workspace` for run `run_id`'s `loop_done` hand-off: saved before
/// the answer, or not at all (`Err`).
pub fn finish_by_handoff(app: &App, workspace: &Path, run_id: &str) -> Result<(), Refusal> {
    let detail = format!("run {run_id} handed off with done");
    let hold = Hold::new(
        HoldState::Finished,
        HoldReason::LoopDone,
        detail.clone(),
        None,
        Some(run_id),
    );
    app.holds()
        .hold_or_refuse(workspace, hold)
        .map_err(|e| cannot_save(&e))?;
    log::warn!(
        "loop.finished workspace={} reason=loop_done run_id={run_id} detail={}",
        Q(&workspace.to_string_lossy()),
        Q(&detail)
    );
    Ok(())
}

/// The local time of day now, for the words autopoll says about a pause's end.
pub fn clock(at: Stamp) -> String {
    at.local().format("%H:%M").to_string()
}
