//! What Looper says on Zulip: a trigger's announcement (before anything is stopped), and
//! after a run's end the news autopoll has (a crash loop, a usage-limit pause) and, with
//! `LOOPER_NOTIFY_ON_EXIT`, every end.

use std::path::Path;

use crate::app::App;
use crate::error::ApiError;
use crate::limits::UsageLimit;
use crate::logging::Q;
use crate::output;
use crate::policy::Verdict;
use crate::registry::Ended;
use crate::request::RunRequest;

/// A trigger's announcement, before anything is stopped: its failure stops the request
/// (`502`, nothing stopped). The `zulip_output` of the answer on success.
pub fn announce(app: &App, req: &RunRequest, request_id: &str) -> Result<String, ApiError> {
    let script = req
        .zulip_script_path
        .as_ref()
        .or(app.cfg().zulip_script.as_ref());
    let (via, outcome) = match script {
        Some(script) => (
            "script",
            crate::zulip::run_script(script, &req.zulip_message),
        ),
        None => ("api", app.cfg().zulip.send(&req.zulip_message)),
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

/// After a run ended: announce a new usage-limit pause and a new crash-loop back-off once,
/// and with `LOOPER_NOTIFY_ON_EXIT` the end of every run. Failures are logged, nothing more.
pub fn after_end(
    app: &App,
    done: &Ended,
    verdict: &Verdict,
    limit: Option<&UsageLimit>,
    log_path: &Path,
    output_start: u64,
) {
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
    let new_pause = verdict.pause.is_some_and(|(_, new)| new);
    if let Some(limit) = limit.filter(|_| new_pause) {
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
    if let Some((_, backoff, true)) = verdict.backoff {
        messages.push(format!(
            "Looper: codex keeps failing right after start (last rc={}); autopoll backs off for {:.0} s and longer while it goes on. Last output: {}",
            done.row.return_code.unwrap_or(0),
            backoff.as_secs_f64(),
            last_line()
        ));
    }
    if app.cfg().notify_on_exit {
        messages.push(format!(
            "Looper: run {} ended with rc={} after {:.1} s. Last line: {}",
            done.row.run_id,
            done.row.return_code.unwrap_or(0),
            done.row.duration_seconds.unwrap_or(0.0),
            last_line()
        ));
    }
    for m in messages {
        match app.cfg().zulip.send(&m) {
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
