//! What Looper says on Zulip, and how it gets there: every message goes the way the
//! operator configured ([`send`]: `LOOPER_ZULIP_SCRIPT`, else the built-in client; a
//! trigger's own `zulip_script_path` for its announcement), without control characters.
//! A trigger's announcement ([`announce`]) can fail the trigger or, for a run's hand-off,
//! wait in the outbox ([`outbox`]); everything else ([`say`]) is said once and a failure
//! logged. What is said after a run's end is [`after_run`]'s.

pub(crate) mod after_run;
pub(crate) mod outbox;

use std::sync::Arc;

use crate::model::Stamp;
use crate::os::logging::Q;
use crate::state::app::App;
use crate::state::loopfile::Queued;
use crate::zulip::ZulipError;

/// Sends `text` the way the configuration says (`script`: a trigger's own program, else
/// `LOOPER_ZULIP_SCRIPT`, else the built-in client): how it went (`script`/`api`) and what
/// Zulip (or the script) answered.
pub fn send(
    app: &App,
    script: Option<&str>,
    text: &str,
) -> (&'static str, Result<String, ZulipError>) {
    // No control character has any business in a chat message (a run's words lost theirs
    // with their quote already).
    let text = &crate::os::visible::strip_controls(text);
    match script.or(app.cfg().zulip_script.as_deref()) {
        Some(script) => {
            let node = crate::os::jail::helpers().and_then(|h| h.node.as_deref());
            ("script", crate::zulip::run_script(script, text, node))
        }
        None => ("api", app.cfg().zulip.send(text)),
    }
}

/// A trigger's announcement, before anything is stopped, sent the configured way (or by
/// `script`, the trigger's own). Its failure is the trigger's (nothing is stopped), except
/// for the hand-off of a live run (`queue`): its message is kept and delivered, marked
/// late, once Zulip answers, and the loop goes on. The `zulip_output` of the answer.
pub fn announce(
    app: &Arc<App>,
    text: &str,
    script: Option<&str>,
    request_id: &str,
    queue: bool,
) -> Result<String, ZulipError> {
    // What Zulip did not take before goes first, in order; unless the outbox delivers it
    // now or its last try failed (Zulip is down: one timeout under the run guard, not two).
    if let Some(mut last_failed) = app.outbox().delivery(false) {
        if !*last_failed {
            outbox::deliver(app, &mut last_failed);
        }
    }
    let (via, outcome) = send(app, script, text);
    match outcome {
        Ok(output) => {
            log::info!(
                "zulip.send.ok request_id={request_id} via={via} output={}",
                Q(&output)
            );
            // Zulip answers again: what waits follows now, not at the outbox's next try.
            if app.outbox().len() > 0 {
                if let Some(mut last_failed) = app.outbox().delivery(false) {
                    outbox::deliver(app, &mut last_failed);
                }
            }
            Ok(output)
        }
        Err(e) if queue => {
            log::error!(
                "zulip.send.queued request_id={request_id} via={via} error={} hint=\"the hand-off goes on; the message is delivered, marked late, when Zulip answers\"",
                Q(&e.0)
            );
            app.outbox().queue(Queued {
                content: text.to_string(),
                queued_at: Stamp::now(),
                request_id: request_id.to_string(),
            });
            outbox::start(app);
            Ok(format!(
                "queued: the announcement failed ({e}); Looper delivers it, marked late, once Zulip answers"
            ))
        }
        Err(e) => {
            log::error!(
                "zulip.send.fail request_id={request_id} via={via} error={}",
                Q(&e.0)
            );
            Err(e)
        }
    }
}

/// Says `text` on Zulip, the configured way, for `about` (a run id, `autopoll`); a failure
/// is logged, nothing more. Zulip's wildcard mentions are defused (a run's words are
/// quoted by the caller, every mention defused).
pub fn say(app: &App, text: &str, about: &str) -> String {
    let text = crate::zulip::text::defuse_mentions(text);
    match send(app, None, &text) {
        (via, Ok(out)) => {
            log::info!("zulip.send.ok about={about} via={via} output={}", Q(&out));
            out
        }
        (via, Err(e)) => {
            log::error!("zulip.send.fail about={about} via={via} error={}", Q(&e.0));
            format!("failed: {e}")
        }
    }
}
