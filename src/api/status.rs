//! What Looper shows of itself: `GET /status` (what runs, what ended last, what autopoll
//! will do, the loop's hold) and `GET /runs` (the history, newest first). Both only read.

use serde_json::{json, Value};

use crate::error::Refusal;
use crate::http::Head;
use crate::model::{Hold, HoldState, LoopState, Stamp};
use crate::state::app::App;

/// The loop of the workspace autopoll serves, for `/status` and the page: `running`,
/// `idle`, `paused` or `finished`, with the hold's reason, detail and times.
fn loop_status(app: &App, holds: &[(String, Hold)]) -> Value {
    let ws = crate::autoloop::workspace(app);
    let key = ws.as_ref().map(|w| w.to_string_lossy().into_owned());
    let hold = holds
        .iter()
        .find(|(w, _)| Some(w) == key.as_ref())
        .map(|(_, h)| h);
    let state = LoopState::of(hold.map(|h| h.state), app.registry().active().is_some());
    json!({
        "workspace": key,
        "state": state,
        "reason": hold.map(|h| h.reason),
        "detail": hold.map(|h| &h.detail),
        "since": hold.map(|h| h.since),
        "until": hold.and_then(|h| h.until),
        "run_id": hold.and_then(|h| h.run_id.as_ref()),
    })
}

/// The TODO list as the newest run that counted it left it (`null` without
/// `LOOPER_TODO_FILE` or before a count).
fn todo_status(app: &App) -> Value {
    let file = app.cfg().report_sources.todo_file.as_ref();
    let counted = file.and_then(|_| {
        app.history()
            .newest(crate::state::history::MAX_ROWS)
            .into_iter()
            .find_map(|r| Some((r.report.todo_after?, r.run_id)))
    });
    match (file, counted) {
        (Some(file), Some((t, run_id))) => json!({
            "file": file.to_string_lossy(), "open": t.open, "done": t.done, "after_run": run_id
        }),
        _ => Value::Null,
    }
}

/// `GET /status`: what runs, what ended last, what autopoll will do.
pub(super) fn status(app: &App) -> Value {
    let active = app.registry().active().map(|r| {
        let last_output_at = std::fs::metadata(&r.log_path)
            .and_then(|m| m.modified())
            .ok()
            .map(Stamp::from);
        json!({
            "run_id": r.run_id,
            "request_id": r.request_id,
            "pid": r.pid,
            "workspace": r.workspace.to_string_lossy(),
            "log_path": r.log_path.to_string_lossy(),
            "started_at": r.started_at,
            "last_output_at": last_output_at,
            // Started by an earlier Looper, adopted at this one's start.
            "adopted": r.adopted,
        })
    });
    let last_exit = app.registry().last_exit().or_else(|| {
        // After a restart: the newest finished run in the history.
        let row = app.history().last_finished()?;
        Some(crate::state::registry::Exit {
            return_code: row.return_code,
            ended_at: row.ended_at?,
            duration_seconds: row.duration_seconds.unwrap_or(0.0),
            run_id: row.run_id,
        })
    });
    let poll = app.policy().view(std::time::Instant::now());
    let holds = app.holds().all();
    let state = loop_status(app, &holds);
    let in_time = |d: std::time::Duration| Stamp::after(d);
    let paused = state["state"] == HoldState::Paused.as_str();
    let unsaved = app.unsaved();
    json!({
        "ok": true,
        "run_in_progress": app.registry().guard().held(),
        "active": active,
        "last_exit": last_exit,
        "todo": todo_status(app),
        "autopoll": {
            "enabled": app.cfg().autopoll,
            "interval_seconds": app.cfg().idle_poll.as_secs_f64(),
            "stale_seconds": app.cfg().idle_stale.as_secs_f64(),
            "next_tick_at": if app.cfg().autopoll { poll.next_tick_in.map(in_time) } else { None },
            "backoff_until": poll.backoff_left.map(in_time),
            "consecutive_crashes": poll.crashes,
            "paused_until": if paused { state["until"].clone() } else { Value::Null },
            "pause_reason": if paused { state["reason"].clone() } else { Value::Null },
            "last_start_failure": app.autopoll_failure().map(|(at, why)| json!({"at": at, "error": why})),
        },
        "loop": state,
        "holds": holds
            .iter()
            .map(|(w, h)| {
                let mut v = json!(h);
                v["workspace"] = json!(w);
                v
            })
            .collect::<Vec<_>>(),
        "stop_scope": app.cfg().stop_scope.as_str(),
        "quota": super::quota::status(app),
        "stop_method": app.stop_method(),
        "helper_jail": crate::os::jail::helpers().map_or("none", |h| h.method.as_str()),
        "helper_seccomp": crate::os::seccomp::available(),
        // State a failed write (a full disk) left in memory only, written again each
        // few seconds.
        "state_saved": unsaved.is_empty(),
        "unsaved": unsaved,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /runs?limit=N`: the newest runs first.
pub(super) fn runs(app: &App, head: &Head) -> Result<Value, Refusal> {
    let limit = match head.query("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::state::history::MAX_ROWS).contains(n))
            .ok_or_else(|| Refusal::bad_request("limit must be a whole number from 1 to 1000"))?,
    };
    Ok(json!({"ok": true, "runs": app.history().newest(limit)}))
}
