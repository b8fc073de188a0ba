//! The requests with an effect: `POST /run` (read on its connection's thread, then the
//! pipeline, at most [`MAX_INFLIGHT`] at once) and `POST /resume`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::caller::{caller_of, require_json};
use crate::error::{Refusal, Why};
use crate::http::Request;
use crate::model::Trigger;
use crate::os::logging::Q;
use crate::run::pipeline;
use crate::run::trust::Caller;
use crate::state::app::App;

/// `/run` requests being read or served at once; more get a 503.
const MAX_INFLIGHT: usize = 64;

/// A place among the `/run`s in flight, given back on drop (panics included).
struct Inflight<'a>(&'a AtomicUsize);

impl<'a> Inflight<'a> {
    fn take(count: &'a AtomicUsize) -> Option<Inflight<'a>> {
        let taken = count.fetch_add(1, Ordering::AcqRel) < MAX_INFLIGHT;
        let slot = Inflight(count);
        taken.then_some(slot)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `POST /run`: the body, then the pipeline. A panic anywhere in it is a JSON `500` (the
/// panic itself is a `thread.panicked` line in the log); the guards it held are released.
pub(super) fn serve_run(
    app: &Arc<App>,
    rq: &mut Request,
    request_id: &str,
) -> Result<Value, Refusal> {
    let Some(_slot) = Inflight::take(app.inflight()) else {
        return Err(Refusal::new(
            Why::Unavailable,
            "busy: too many requests in flight",
        ));
    };
    let caller = caller_of(app, rq)?;
    require_json(&rq.head)?;
    let body = rq.body()?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pipeline::submit(app, &body, request_id, Trigger::Http, &caller)
    }))
    .unwrap_or_else(|_| {
        Err(Refusal::new(
            Why::Broken,
            "internal error while serving this request (thread.panicked in the server log)",
        ))
    });
    if let Err(e) = &outcome {
        log::warn!(
            "run.fail request_id={request_id} status={} error={}",
            e.status(),
            Q(&e.message)
        );
    }
    outcome
}

/// Refuses a run what only the operator may do (`what`: resume, pause).
fn operator_only(app: &Arc<App>, rq: &Request, what: &str) -> Result<(), Refusal> {
    if let Caller::Run { run_id, .. } = caller_of(app, rq)? {
        return Err(Refusal::new(
            Why::NotAllowed,
            format!(
                "run {} may not {what} the loop: only the operator may (looper {what}, a trigger of theirs). Nothing was changed",
                run_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    Ok(())
}

/// The fields of a JSON object body with only `allowed` fields (of `path`).
fn object_body(
    rq: &mut Request,
    allowed: &[&str],
    path: &str,
) -> Result<serde_json::Map<String, Value>, Refusal> {
    require_json(&rq.head)?;
    let body = rq.body()?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        Refusal::bad_request(format!("the body is not JSON: {e}; nothing was changed"))
    })?;
    let Value::Object(fields) = value else {
        return Err(Refusal::bad_request(
            "the body is a JSON object ({} or {\"workspace\": \"<dir>\"}); nothing was changed",
        ));
    };
    if let Some(other) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Refusal::bad_request(format!(
            "{other} is not a {path} field (only {}); nothing was changed",
            allowed.join(", ")
        )));
    }
    Ok(fields)
}

/// The `workspace` field of a body, as the directory it names.
fn workspace_field(
    app: &App,
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<std::path::PathBuf>, Refusal> {
    match fields.get("workspace") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(w)) if !w.trim().is_empty() => {
            let w = crate::run::request::absolute_workspace(w.clone())?;
            Ok(Some(app.workspace_named(Some(&w))))
        }
        Some(_) => Err(Refusal::bad_request(
            "workspace is a directory's path (a non-empty string); nothing was changed",
        )),
    }
}

/// `POST /pause` (`looper pause`): the operator holds the loop of the workspace the body
/// names (else autopoll's): paused until `looper resume`, or with `"finish": true`
/// finished. It stops nothing. A run may not.
pub(super) fn serve_pause(
    app: &Arc<App>,
    rq: &mut Request,
    request_id: &str,
) -> Result<Value, Refusal> {
    operator_only(app, rq, "pause")?;
    let fields = object_body(rq, &["workspace", "finish"], "/pause")?;
    let finish = match fields.get("finish") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Refusal::bad_request(
                "finish is true or false; nothing was changed",
            ))
        }
    };
    let workspace = workspace_field(app, &fields)?
        .or_else(|| crate::autoloop::workspace(app))
        .unwrap_or_else(|| app.cfg().workspace.clone());
    let (hold, said) = crate::autoloop::judge::hold_by_operator(
        app,
        &workspace,
        finish,
        &format!("pause:{request_id}"),
    )?;
    crate::notify::say(app, &said, request_id);
    Ok(json!({
        "ok": true,
        "request_id": request_id,
        "workspace": workspace.to_string_lossy(),
        "loop_state": hold.state,
        "hold": hold,
    }))
}

/// `POST /resume` (`looper resume`): the operator ends the loop's holds, of the workspace
/// the body names (`{"workspace": …}`) or of every workspace (`{}`). A run may not: a
/// hand-off is good for asking for the next run only.
pub(super) fn serve_resume(
    app: &Arc<App>,
    rq: &mut Request,
    request_id: &str,
) -> Result<Value, Refusal> {
    operator_only(app, rq, "resume")?;
    let fields = object_body(rq, &["workspace"], "/resume")?;
    let workspace = workspace_field(app, &fields)?;
    let ended = crate::autoloop::judge::resume_or_refuse(
        app,
        workspace.as_deref(),
        &format!("resume:{request_id}"),
    )?;
    let resumed: Vec<Value> = ended
        .iter()
        .map(|(ws, h)| {
            json!({
                "workspace": ws,
                "state": h.state,
                "reason": h.reason,
                "detail": h.detail,
            })
        })
        .collect();
    if !ended.is_empty() {
        let names: Vec<String> = ended
            .iter()
            .map(|(ws, h)| format!("{ws} ({} {})", h.state.as_str(), h.reason.as_str()))
            .collect();
        crate::notify::say(
            app,
            &format!(
                "Looper: the operator resumed the loop in {}; autopoll goes on there.",
                names.join(", ")
            ),
            "resume",
        );
    }
    Ok(json!({
        "ok": true,
        "request_id": request_id,
        "workspace": workspace.map(|w| w.to_string_lossy().into_owned()),
        "resumed": resumed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inflight_slot_is_given_back_on_every_path() {
        let count = AtomicUsize::new(0);
        let held: Vec<_> = (0..MAX_INFLIGHT)
            .map(|_| Inflight::take(&count).unwrap())
            .collect();
        assert!(Inflight::take(&count).is_none(), "past the limit");
        drop(held);
        let _ = std::panic::catch_unwind(|| {
            let _slot = Inflight::take(&count).unwrap();
            panic!("a worker panics");
        });
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
