//! Autopoll: a background thread that starts a run when nothing runs and the run logs have
//! gone quiet (SPEC §5). It shares the run guard with `/run` and waits on the shutdown
//! signal, never in a bare sleep.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::app::App;
use crate::logging::Q;
use crate::run::{self, RunRequest, Trigger};

/// The newest `codex-exec-*.log` in `dir` and how long ago it changed.
pub fn newest_log_age(dir: &Path) -> Option<Duration> {
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("codex-exec-") && name.ends_with(".log")
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    Some(
        SystemTime::now()
            .duration_since(newest)
            .unwrap_or(Duration::ZERO),
    )
}

/// Whether any codex exec run (ours or not) is alive.
fn any_live_run(app: &App) -> bool {
    !app.runs().live.is_empty() || !run::find_runs(app, None, None).is_empty()
}

/// One tick; `first` ignores the staleness window.
fn tick(app: &Arc<App>, first: bool) {
    let Some(_guard) = app.try_guard() else {
        log::debug!("codex.exec.autopoll.skip reason=run_in_progress");
        return;
    };
    if any_live_run(app) {
        log::debug!("codex.exec.autopoll.skip reason=live_run");
        return;
    }
    if !first {
        if let Some(age) = newest_log_age(&app.cfg.log_dir) {
            if age < app.cfg.idle_stale {
                log::debug!(
                    "codex.exec.autopoll.skip reason=recent_log age_s={:.1}",
                    age.as_secs_f64()
                );
                return;
            }
        }
    }
    let request_id = format!("auto{}", app.new_id());
    log::info!("codex.exec.autopoll.start request_id={request_id} first_tick={first}");
    let req = RunRequest::default();
    match run::execute(app, &req, &request_id, Trigger::Autopoll) {
        Ok(v) => log::info!(
            "codex.exec.autopoll.started request_id={request_id} pid={}",
            v["codex_exec_result"]["pid"]
        ),
        Err(e) => log::warn!(
            "codex.exec.autopoll.fail request_id={request_id} status={} error={}",
            e.status,
            Q(&e.message)
        ),
    }
}

/// Starts the autopoll thread when it is enabled.
pub fn start(app: &Arc<App>) -> Option<JoinHandle<()>> {
    if !app.cfg.autopoll {
        log::info!("codex.exec.autopoll.disabled");
        return None;
    }
    let app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("autopoll".into())
        .spawn(move || {
            log::info!(
                "codex.exec.autopoll.enabled interval_s={} stale_s={}",
                app.cfg.idle_poll.as_secs_f64(),
                app.cfg.idle_stale.as_secs_f64()
            );
            let mut first = true;
            while !app.shutdown.wait(app.cfg.idle_poll) {
                tick(&app, first);
                first = false;
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
