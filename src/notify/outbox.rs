//! The outbox's delivery: the announcements Zulip did not take (kept by
//! [`crate::state::outbox`]) go out oldest first, marked late, the configured way; a thread
//! of their own tries again while any wait, and one deliverer at a time keeps any from
//! going twice.

use std::sync::Arc;
use std::time::Duration;

use crate::os::logging::Q;
use crate::state::app::App;

/// How soon the outbox tries a queued announcement again, and the longest it waits.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Delivers the queued announcements, oldest first, each marked late, until Zulip fails
/// again (noted in `last_failed`, the delivery right); how many are left.
pub fn deliver(app: &App, last_failed: &mut bool) -> usize {
    *last_failed = false;
    while let Some(q) = app.outbox().next() {
        let queued = q.queued_at.local().format("%Y-%m-%d %H:%M:%S %Z");
        let text = format!(
            "{}\n(late: queued at {queued}, while Zulip did not answer)",
            q.content
        );
        match super::send(app, None, &text) {
            (via, Ok(out)) => {
                log::info!(
                    "zulip.send.late request_id={} via={via} output={}",
                    q.request_id,
                    Q(&out)
                );
                app.outbox().delivered(&q);
            }
            (via, Err(e)) => {
                log::warn!(
                    "zulip.send.retry_failed request_id={} via={via} queued={} error={}",
                    q.request_id,
                    app.outbox().len(),
                    Q(&e.0)
                );
                *last_failed = true;
                break;
            }
        }
    }
    app.outbox().len()
}

/// Starts the outbox thread unless it runs: while announcements wait, it tries Zulip again,
/// first after [`RETRY_FIRST`], doubling to [`RETRY_MAX`], and ends when none is left. It
/// waits on the shutdown signal, never in a bare sleep.
pub fn start(app: &Arc<App>) {
    if !app.outbox().claim_sender() {
        return;
    }
    let mine = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("outbox".into())
        .spawn(move || {
            let app = mine;
            let mut wait = RETRY_FIRST;
            loop {
                if app.shutdown().wait(wait) {
                    break;
                }
                let left = match app.outbox().delivery(true) {
                    Some(mut last_failed) => deliver(&app, &mut last_failed),
                    None => app.outbox().len(),
                };
                if left == 0 && app.outbox().release_sender() {
                    break;
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        });
    if let Err(e) = spawned {
        // Claimed, but no thread: the next queued message tries again.
        app.outbox().force_release_sender();
        log::error!("zulip.outbox.fail error={}", Q(&e.to_string()));
    }
}
