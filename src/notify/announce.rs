//! What Looper says on Zulip: a trigger's announcement (before anything is stopped; a
//! hand-off's carries the summary of the run that asked for it), and after a run's end the
//! news autopoll has (a crash loop, a usage-limit pause), the summary of a run after which
//! nothing starts and, with `LOOPER_NOTIFY_ON_EXIT`, every end.

use std::path::Path;

use crate::error::ApiError;
use crate::os::logging::Q;
use crate::report;
use crate::rules::backoff::Verdict;
use crate::rules::usage_limit::UsageLimit;
use crate::run::output;
use crate::run::request::RunRequest;
use crate::run::trust::quote_run_text;
use crate::state::app::App;
use crate::state::registry::Ended;

/// A trigger's announcement, before anything is stopped: its failure stops the request
/// (`502`, nothing stopped), except for the hand-off of a live run (`queue`): its message is
/// kept and delivered, marked late, once Zulip answers, and the loop goes on. The
/// `zulip_output` of the answer on success.
pub fn announce(
    app: &std::sync::Arc<App>,
    req: &RunRequest,
    request_id: &str,
    queue: bool,
) -> Result<String, ApiError> {
    let script = req
        .zulip_script_path
        .as_ref()
        .or(app.cfg().zulip_script.as_ref());
    let text = match handoff_summary(app, req) {
        Some(summary) => format!("{}\n{summary}", req.zulip_message),
        None => req.zulip_message.clone(),
    };
    // What Zulip did not take before goes first, in order; unless the outbox delivers it
    // now or its last try failed (Zulip is down: one timeout under the run guard, not two).
    if let Some(mut last_failed) = app.loop_state().delivery(false) {
        if !*last_failed {
            deliver_queued(app, &mut last_failed);
        }
    }
    let (via, outcome) = send_via(app, script.map(String::as_str), &text);
    match outcome {
        Ok(output) => {
            log::info!(
                "zulip.send.ok request_id={request_id} via={via} output={}",
                Q(&output)
            );
            // Zulip answers again: what waits follows now, not at the outbox's next try.
            if app.loop_state().queued() > 0 {
                if let Some(mut last_failed) = app.loop_state().delivery(false) {
                    deliver_queued(app, &mut last_failed);
                }
            }
            Ok(output)
        }
        Err(e) if queue => {
            log::error!(
                "zulip.send.queued request_id={request_id} via={via} error={} hint=\"the hand-off goes on; the message is delivered, marked late, when Zulip answers\"",
                Q(&e.0)
            );
            app.loop_state().queue(crate::state::loopstate::Queued {
                content: text,
                queued_at: chrono::Local::now().to_rfc3339(),
                request_id: request_id.to_string(),
            });
            start_outbox(app);
            Ok(format!(
                "queued: the announcement failed ({e}); Looper delivers it, marked late, once Zulip answers"
            ))
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

fn send_via(
    app: &App,
    script: Option<&str>,
    text: &str,
) -> (&'static str, Result<String, crate::zulip::ZulipError>) {
    // No control character has any business in a chat message (a run's are dropped before,
    // with its quote).
    let text = &crate::os::visible::strip_controls(text);
    match script {
        Some(script) => {
            let node = crate::os::jail::helpers().and_then(|h| h.node.as_deref());
            ("script", crate::zulip::run_script(script, text, node))
        }
        None => ("api", app.cfg().zulip.send(text)),
    }
}

/// Delivers the queued announcements, oldest first, each marked late, until Zulip fails
/// again (noted in `last_failed`, the delivery right); how many are left.
fn deliver_queued(app: &App, last_failed: &mut bool) -> usize {
    *last_failed = false;
    while let Some(q) = app.loop_state().next_queued() {
        let queued = chrono::DateTime::parse_from_rfc3339(&q.queued_at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S %Z").to_string())
            .unwrap_or_else(|_| q.queued_at.clone());
        let text = format!(
            "{}\n(late: queued at {queued}, while Zulip did not answer)",
            q.content
        );
        let script = app.cfg().zulip_script.as_deref();
        match send_via(app, script, &text) {
            (via, Ok(out)) => {
                log::info!(
                    "zulip.send.late request_id={} via={via} output={}",
                    q.request_id,
                    Q(&out)
                );
                app.loop_state().delivered(&q);
            }
            (via, Err(e)) => {
                log::warn!(
                    "zulip.send.retry_failed request_id={} via={via} queued={} error={}",
                    q.request_id,
                    app.loop_state().queued(),
                    Q(&e.0)
                );
                *last_failed = true;
                break;
            }
        }
    }
    app.loop_state().queued()
}

/// Starts the outbox thread unless it runs: while announcements wait, it tries Zulip again,
/// first after [`RETRY_FIRST`], doubling to [`RETRY_MAX`], and ends when none is left. It
/// waits on the shutdown signal, never in a bare sleep.
pub fn start_outbox(app: &std::sync::Arc<App>) {
    if !app.loop_state().claim_sender() {
        return;
    }
    let mine = std::sync::Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || {
            let app = mine;
            let mut wait = RETRY_FIRST;
            loop {
                if app.shutdown().wait(wait) {
                    break;
                }
                let left = match app.loop_state().delivery(true) {
                    Some(mut last_failed) => deliver_queued(&app, &mut last_failed),
                    None => app.loop_state().queued(),
                };
                if left == 0 && app.loop_state().release_sender() {
                    break;
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        });
    if let Err(e) = spawned {
        // Claimed, but no thread: the next queued message tries again.
        app.loop_state().force_release_sender();
        log::error!("zulip.outbox.fail error={}", Q(&e.to_string()));
    }
}

/// How soon the outbox tries a queued announcement again, and the longest it waits.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(2);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// The summary of the live run that hands off (`req.handed_off_by`), as it stands: the
/// line under the caller's own first line. `None` with `LOOPER_RUN_REPORTS=0`.
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
    let start = app.registry().start_of(run_id).unwrap_or_default();
    let output = report::Output::read(&live.log_path, 0);
    let now = app
        .cfg()
        .report_sources
        .so_far(&live.workspace, &output, &start);
    let seconds = live.started.elapsed().as_secs_f64();
    Some(format!(
        "↳ {}",
        report::summary(run_id, "handed_off", seconds, &now)
    ))
}

/// After a run ended: announce what the stop rules made of it (`news`: the loop finished or
/// paused, or finished by the run's own hand-off and said then), a new usage-limit pause
/// and a new crash-loop back-off once, and with `LOOPER_NOTIFY_ON_EXIT` the end of every
/// run. Failures are logged, nothing more.
pub fn after_end(
    app: &App,
    done: &Ended,
    verdict: &Verdict,
    news: crate::autoloop::judge::News,
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
    let said_before = news == crate::autoloop::judge::News::SaidAlready;
    if let crate::autoloop::judge::News::Say(news) = news {
        messages.push(news);
    }
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
            "Looper: codex keeps failing right after start (last rc={}); autopoll backs off for {:.0} s and longer while it goes on. Its last output:\n{}\n",
            done.row.return_code.unwrap_or(0),
            backoff.as_secs_f64(),
            quote_run_text(&last_line())
        ));
    }
    let row = &done.row;
    let summary = || {
        let mut text = report::summary(
            &row.run_id,
            row.outcome.as_deref().unwrap_or("ended"),
            row.duration_seconds.unwrap_or(0.0),
            &row.report,
        );
        if let Some(m) = &row.report.last_message {
            let opening = report::opening(m, 200);
            text.push_str(&format!(
                ". Its last message:\n{}\n",
                quote_run_text(&opening)
            ));
        }
        text
    };
    if app.cfg().notify_on_exit {
        let mut text = format!(
            "Looper: run {} ended with rc={} after {:.1} s. Its last line:\n{}\n",
            row.run_id,
            row.return_code.unwrap_or(0),
            row.duration_seconds.unwrap_or(0.0),
            quote_run_text(&last_line())
        );
        if app.cfg().run_reports {
            text.push_str(&format!("\n{}", summary()));
        }
        messages.push(text);
    } else if app.cfg().run_reports
        && !said_before
        && (nothing_follows(done, verdict, app.cfg().autopoll) || !messages.is_empty())
    {
        match messages.first_mut() {
            // The finish, the pause or the back-off says why nothing follows: the summary
            // goes with it.
            Some(first) => first.push_str(&format!("\n{}", summary())),
            None => messages.push(format!("Looper: {}", summary())),
        }
    }
    for m in messages {
        say(app, &m, &done.row.run_id);
    }
}

/// Says `text` on Zulip (by the API) for `about` (a run id, `autopoll`); a failure is
/// logged, nothing more. It may quote a run's output (its last line, its last message):
/// the agent's words, whose wildcard mentions must not ping a whole stream.
pub fn say(app: &App, text: &str, about: &str) -> String {
    let text = crate::run::trust::defuse_mentions(&crate::os::visible::strip_controls(text));
    match app.cfg().zulip.send(&text) {
        Ok(out) => {
            log::info!("zulip.send.ok about={about} via=api output={}", Q(&out));
            out
        }
        Err(e) => {
            log::error!("zulip.send.fail about={about} via=api error={}", Q(&e.0));
            format!("failed: {e}")
        }
    }
}

/// Whether the run gets a summary of its own: nothing follows it by itself (it was not
/// replaced by its own hand-off, another trigger or the hung-run check), and it is no crash
/// that autopoll retries (with autopoll on); a crash loop is said once, when its back-off starts.
fn nothing_follows(done: &Ended, verdict: &Verdict, autopoll: bool) -> bool {
    use crate::state::registry::StopReason;
    let replaced = matches!(
        done.reason,
        Some(StopReason::HandedOff | StopReason::Replaced | StopReason::Hung)
    );
    let retried = autopoll && verdict.crash && !matches!(verdict.backoff, Some((_, _, true)));
    !replaced && !retried
}
