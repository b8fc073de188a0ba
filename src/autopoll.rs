//! Autopoll: a background thread that starts a run when nothing runs and the run logs have
//! gone quiet. It shares the run guard with `/run` and waits on the shutdown
//! signal, never in a bare sleep.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::autoloop::judge::Gate;
use crate::model::StopReason;
use crate::model::Trigger;
use crate::os::freshness::Freshness;
use crate::os::logging::Q;
use crate::run::pipeline;
use crate::run::request::RunRequest;
use crate::run::stop;
use crate::state::app::App;
use crate::state::registry::LiveRun;

/// The newest `codex-exec-*.log` in `dir` and how long ago it changed, on the monotonic
/// clock (see [`crate::os::freshness`]): a jump of the wall clock neither wakes autopoll
/// nor holds it back.
pub fn newest_log_age(dir: &Path, freshness: &Freshness) -> Option<Duration> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| crate::run::output::is_run_log(&e.file_name()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()?;
    freshness.quiet(&newest.1, None)
}

use crate::autoloop::workspace;

/// How often what a failed write left unsaved is written again.
const SAVE_RETRY: Duration = Duration::from_secs(5);
/// The longest the thread sleeps (a failed write may have happened meanwhile).
const KEEPER_WAKE: Duration = Duration::from_secs(60);
/// The most autopoll waits after Looper starts before its first tick.
const FIRST_TICK: Duration = Duration::from_secs(1);

/// Whether any codex exec run (ours or not) is alive; `None` when `/proc` cannot tell.
fn any_live_run(app: &App, workspace: &Path) -> Option<bool> {
    if app.registry().busy() {
        return Some(true);
    }
    stop::find_runs(app, None, None, workspace)
        .ok()
        .map(|r| !r.is_empty())
}

/// One autopoll tick; `first` ignores the staleness window. It decides without the run
/// guard (so a trigger arriving meanwhile is not refused as busy) and takes the guard only
/// to start a run.
fn tick(app: &Arc<App>, first: bool) {
    if app.registry().guard().held() {
        log::debug!("codex.exec.autopoll.skip reason=run_in_progress");
        return;
    }
    if app.policy().backing_off(Instant::now()) {
        log::debug!("codex.exec.autopoll.skip reason=backoff");
        return;
    }
    let Some(workspace) = workspace(app) else {
        log::debug!("codex.exec.autopoll.skip reason=no_workspace");
        return;
    };
    let ended = match crate::autoloop::judge::autopoll_gate(app, &workspace) {
        Gate::Go { ended } => ended,
        Gate::Held(reason) => {
            log::debug!("codex.exec.autopoll.skip reason={}", reason.as_str());
            return;
        }
        Gate::OverBudget { reason, said } => {
            if let Some(message) = said {
                crate::notify::say(app, &message, "autopoll");
            }
            log::debug!("codex.exec.autopoll.skip reason={}", reason.as_str());
            return;
        }
    };
    // A pause is over (codex's usage limit reset, a budget cleared): a run at once,
    // whatever the logs say.
    let resumed = ended.as_ref().map(|h| match h.reason {
        crate::model::HoldReason::UsageLimit => "usage_limit_reset".to_string(),
        other => format!("{}_cleared", other.as_str()),
    });
    if let Some(why) = &resumed {
        log::info!("codex.exec.autopoll.resume reason={why}");
    }
    match any_live_run(app, &workspace) {
        Some(false) => {}
        Some(true) => {
            log::debug!("codex.exec.autopoll.skip reason=live_run");
            return;
        }
        None => {
            log::warn!("codex.exec.autopoll.skip reason=proc_unreadable");
            return;
        }
    }
    let age = newest_log_age(&app.cfg().log_dir, app.registry().freshness());
    if !first && resumed.is_none() {
        if let Some(age) = age {
            if age < app.cfg().idle_stale {
                log::debug!(
                    "codex.exec.autopoll.skip reason=recent_log age_s={:.1}",
                    age.as_secs_f64()
                );
                return;
            }
        }
    }
    let Some(_guard) = app.registry().guard().try_take() else {
        log::debug!("codex.exec.autopoll.skip reason=run_in_progress");
        return;
    };
    // A trigger may have started a run between the look above and the guard.
    if app.registry().busy() {
        log::debug!("codex.exec.autopoll.skip reason=live_run");
        return;
    }
    let why = match (&resumed, first) {
        (Some(why), _) => why.as_str(),
        (None, true) => "first_tick",
        (None, false) => "idle",
    };
    let because = match (&ended, first) {
        (Some(hold), _) => match hold.until {
            Some(until) => format!(
                "the pause for {} ended at {}",
                hold.reason.as_str(),
                crate::autoloop::judge::clock(until)
            ),
            None => format!("the pause for {} ended", hold.reason.as_str()),
        },
        (None, true) => {
            "this is the first tick since Looper started (it does not wait for quiet logs)"
                .to_string()
        }
        (None, false) => match age {
            Some(age) => format!(
                "the run logs have been quiet for {} (LOOPER_IDLE_LOG_STALE_SECONDS={})",
                crate::report::duration(age.as_secs_f64()),
                app.cfg().idle_stale.as_secs_f64()
            ),
            None => "no run has written a log yet".to_string(),
        },
    };
    let req = RunRequest {
        workspace: Some(workspace.to_string_lossy().into_owned()),
        zulip_message: format!(
            "Looper: autopoll starts a run in {}: {because}.",
            workspace.display()
        ),
        ..RunRequest::default()
    };
    start_run(app, req, why, StopReason::Replaced);
}

/// How long until the hold of autopoll's workspace ends by itself (zero: it is over);
/// `None` when nothing holds it, or nothing but an operator ends the hold.
fn hold_ends_in(app: &App) -> Option<Duration> {
    let hold = app.holds().of(&workspace(app)?)?;
    let left = hold.until?.seconds_since(crate::model::Stamp::now());
    Some(Duration::from_secs_f64(left.max(0.0)))
}

/// Starts a run through the common pipeline, announcing `req.zulip_message` (a Zulip failure
/// does not hold the run back); the caller holds the guard. The runs it stops get `reason`.
fn start_run(app: &Arc<App>, req: RunRequest, why: &str, reason: StopReason) {
    let request_id = format!("auto{}", app.registry().new_id());
    log::info!("codex.exec.autopoll.start request_id={request_id} reason={why}");
    match pipeline::execute_replacing(app, &req, &request_id, Trigger::Autopoll, reason) {
        Ok(v) => {
            app.note_autopoll_failure(None);
            log::info!(
                "codex.exec.autopoll.started request_id={request_id} pid={}",
                v["codex_exec_result"]["pid"]
            )
        }
        Err(e) => {
            log::warn!(
                "codex.exec.autopoll.fail request_id={request_id} status={} error={}",
                e.status(),
                Q(&e.message)
            );
            app.note_autopoll_failure(Some(e.message.clone()));
            // A start that failed before any run (a full disk, a codex that cannot be
            // started) counts as a crash: a failing start is not retried at every tick. (A
            // run that started and died at once is counted by its end.)
            let no_run = app.history().get(&request_id).is_none();
            if no_run
                && matches!(
                    e.why,
                    crate::error::Why::Broken | crate::error::Why::CannotSave
                )
            {
                crate::autoloop::judge::start_failed(app);
            }
        }
    }
}

/// How long the active run's log has been silent, if it is silent for longer than
/// `LOOPER_HUNG_RUN_SECONDS` (counting from its start when it never wrote).
fn hung_run(app: &App) -> Option<(LiveRun, Duration)> {
    let live = app.registry().active()?;
    let silent = app.registry().quiet(&live);
    (silent >= app.cfg().hung_run).then_some((live, silent))
}

/// Replaces a hung run with a fresh one of the same workspace and prompt.
fn check_hung(app: &Arc<App>) {
    if hung_run(app).is_none() {
        return;
    }
    let Some(_guard) = app.registry().guard().try_take() else {
        return;
    };
    // Looked at again under the guard: a /run may have replaced it meanwhile.
    let Some((live, silent)) = hung_run(app) else {
        return;
    };
    log::warn!(
        "codex.exec.autopoll.hung run_id={} pid={} silent_s={:.1}",
        live.run_id,
        live.pid,
        silent.as_secs_f64()
    );
    let req = RunRequest {
        prompt: live.prompt.clone(),
        workspace: Some(live.workspace.to_string_lossy().into_owned()),
        zulip_message: format!(
            "Looper: autopoll replaces run {} in {}: its log has been silent for {} (LOOPER_HUNG_RUN_SECONDS={}).",
            live.run_id,
            live.workspace.display(),
            crate::report::duration(silent.as_secs_f64()),
            app.cfg().hung_run.as_secs_f64()
        ),
        ..RunRequest::default()
    };
    start_run(app, req, StopReason::Hung.as_str(), StopReason::Hung);
}

/// How often hung runs are looked for: a quarter of the limit, within bounds.
fn hung_check_interval(limit: Duration) -> Duration {
    (limit / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

/// Starts the thread: autopoll's ticks and the hung-run checks when they are on, and
/// always the keeper's duty, writing again what a failed write (a full disk) left unsaved
/// (every [`SAVE_RETRY`] while anything is, at least every [`KEEPER_WAKE`]). It waits on
/// the shutdown signal between wake-ups, so that a shutdown ends it at once.
pub fn start(app: &Arc<App>) -> Option<JoinHandle<()>> {
    let autopoll = app.cfg().autopoll;
    let hung = !app.cfg().hung_run.is_zero();
    if !autopoll {
        log::info!("codex.exec.autopoll.disabled");
    }
    let app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("autopoll".into())
        .spawn(move || {
            let cfg = app.cfg();
            if autopoll {
                log::info!(
                    "codex.exec.autopoll.enabled interval_s={} stale_s={} hung_s={}",
                    cfg.idle_poll.as_secs_f64(),
                    cfg.idle_stale.as_secs_f64(),
                    cfg.hung_run.as_secs_f64()
                );
                if workspace(&app).is_none() {
                    log::warn!(
                        "codex.exec.autopoll.waiting reason=no_workspace hint=\"autopoll starts runs only in LOOPER_WORKSPACE, or in the workspace of the last run: set LOOPER_WORKSPACE, or trigger a first run\""
                    );
                }
            }
            // The account's figures, for `/status` from the start.
            app.account().refresh();
            let mut first = true;
            // The first tick comes soon (a restarted Looper resumes its loop), not a whole
            // interval after the start.
            let mut next_tick = Instant::now() + cfg.idle_poll.min(FIRST_TICK);
            loop {
                if autopoll {
                    app.policy().next_tick_at(next_tick);
                }
                let now = Instant::now();
                let mut wake = if autopoll {
                    next_tick.min(now + KEEPER_WAKE)
                } else {
                    now + KEEPER_WAKE
                };
                if hung {
                    wake = wake.min(now + hung_check_interval(cfg.hung_run));
                }
                if !app.unsaved().is_empty() {
                    wake = wake.min(now + SAVE_RETRY);
                }
                // A pause that ends by itself ends on time, not at the tick after it.
                let pause_end = autopoll.then(|| hold_ends_in(&app)).flatten();
                if let Some(left) = pause_end {
                    // At most once a second while a tick could not end it yet.
                    // Over but not ended yet: a tick ends it, once a second, or when a
                    // crash back-off (which skips ticks) is over.
                    let left = match left.is_zero() {
                        false => left,
                        true => app
                            .policy()
                            .view(now)
                            .backoff_left
                            .unwrap_or_default()
                            .max(Duration::from_secs(1)),
                    };
                    wake = wake.min(now + left);
                }
                if app.shutdown().wait(wake.saturating_duration_since(now)) {
                    break;
                }
                if !app.unsaved().is_empty() {
                    app.save_unsaved();
                }
                if hung {
                    check_hung(&app);
                }
                // The account's figures stay fresh for `/status` and the page.
                app.account().refresh();
                let pause_over = autopoll && hold_ends_in(&app).is_some_and(|d| d.is_zero());
                if autopoll && (Instant::now() >= next_tick || pause_over) {
                    tick(&app, first);
                    first = false;
                    next_tick = Instant::now() + cfg.idle_poll;
                }
            }
            log::info!("codex.exec.autopoll.stopped");
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("codex.exec.autopoll.fail error={}", Q(&e.to_string()));
            None
        }
    }
}
