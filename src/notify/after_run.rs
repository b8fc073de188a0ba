//! What Looper says after a run's end: what the stop rules made of it (the loop finished or
//! paused), a new usage-limit pause and a new crash-loop back-off once, the summary of a
//! run after which nothing starts by itself, and with `LOOPER_NOTIFY_ON_EXIT` every end.
//! The run's own words (its last line, its last message) are quoted, never spoken.

use crate::autoloop::judge::{AfterRun, News};
use crate::model::{Row, StopReason};
use crate::report;
use crate::state::app::App;
use crate::zulip::text::quote_run_text;

/// Says on Zulip what run `row`'s end means, as `after` decided it; `last_line` is the last
/// line the run printed. Failures are logged, nothing more.
pub fn tell(app: &App, row: &Row, after: &AfterRun, last_line: &str) {
    for m in messages(app, row, after, last_line) {
        super::say(app, &m, &row.run_id);
    }
}

/// The messages [`tell`] says.
fn messages(app: &App, row: &Row, after: &AfterRun, last_line: &str) -> Vec<String> {
    let mut messages = Vec::new();
    let said_before = after.news == News::SaidAlready;
    if let News::Say(news) = &after.news {
        messages.push(news.clone());
    }
    if let Some(pause) = after.usage_pause.as_ref().filter(|p| p.new) {
        let resets = crate::model::Stamp::from(pause.limit.resets_at).minute();
        let when = if pause.limit.stated {
            format!("at {resets}")
        } else {
            format!("at an unknown time (codex did not say; Looper tries again at {resets})")
        };
        messages.push(format!(
            "Looper: codex hit its usage limit (run {}). It resets {when}; autopoll starts nothing until then and resumes the loop by itself. A /run of your own still goes through.",
            row.run_id
        ));
    }
    if let Some(backoff) = after.backoff.filter(|b| b.new) {
        messages.push(format!(
            "Looper: codex keeps failing right after start (last rc={}); autopoll backs off for {:.0} s and longer while it goes on. Its last output:\n{}\n",
            code(row),
            backoff.length.as_secs_f64(),
            quote_run_text(last_line)
        ));
    }
    let summary = || {
        let outcome = row.outcome.map_or("ended", |o| o.as_str());
        let mut text = report::summary(
            &row.run_id,
            outcome,
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
            code(row),
            row.duration_seconds.unwrap_or(0.0),
            quote_run_text(last_line)
        );
        if app.cfg().run_reports {
            text.push_str(&format!("\n{}", summary()));
        }
        messages.push(text);
    } else if app.cfg().run_reports
        && !said_before
        && (nothing_follows(row, after, app.cfg().autopoll) || !messages.is_empty())
    {
        match messages.first_mut() {
            // The finish, the pause or the back-off says why nothing follows: the summary
            // goes with it.
            Some(first) => first.push_str(&format!("\n{}", summary())),
            None => messages.push(format!("Looper: {}", summary())),
        }
    }
    messages
}

/// The return code for people: `unknown` where it could not be learnt.
fn code(row: &Row) -> String {
    row.return_code
        .map_or_else(|| "unknown".to_string(), |c| c.to_string())
}

/// Whether the run gets a summary of its own: nothing follows it by itself (it was not
/// replaced by its own hand-off, another trigger or the hung-run check), and it is no crash
/// that autopoll retries (with autopoll on); a crash loop is said once, when its back-off
/// starts.
fn nothing_follows(row: &Row, after: &AfterRun, autopoll: bool) -> bool {
    let replaced = matches!(
        row.stop_reason,
        Some(StopReason::HandedOff | StopReason::Replaced | StopReason::Hung)
    );
    let retried = autopoll && after.crash && !after.backoff.is_some_and(|b| b.new);
    !replaced && !retried
}
