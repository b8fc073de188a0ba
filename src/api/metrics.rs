//! `GET /metrics`: Looper's state in Prometheus' text format, so that people who run Loopers
//! on several machines watch them with the Prometheus they already have. Counters count
//! since this Looper started. [`snapshot`] gathers the figures; the renderer is pure:
//! [`Snapshot`] in, the text out.

use std::fmt::Write;

use crate::model::{HoldReason, HoldState};
use crate::state::app::App;

/// What `/metrics` shows, gathered by the caller: this room reads no state of its own.
pub struct Snapshot {
    /// Runs started since start, by trigger: every trigger, at 0 until it happens.
    pub started: Vec<(&'static str, u64)>,
    /// Runs ended since start, by outcome: every outcome, at 0 until it happens.
    pub ended: Vec<(&'static str, u64)>,
    /// The active run, if there is one.
    pub active: Option<Active>,
    pub crashes: u32,
    /// Seconds of crash-loop back-off left.
    pub backoff_seconds: f64,
    /// While codex's usage limit pauses autopoll: when it resumes (Unix time).
    pub paused_until: Option<i64>,
    /// Whether autopoll is on (`LOOPER_AUTOPOLL`).
    pub autopoll_enabled: bool,
    pub runs: RunFigures,
    /// The loops that start nothing by themselves.
    pub holds: Vec<HoldFigures>,
    /// The account's windows as Looper last saw them: (`primary`/`secondary`, the pace line
    /// now when paced, when the last hour's rate uses it up before its reset).
    pub quota: Vec<(&'static str, Option<f64>, Option<i64>)>,
}

/// The active run's age and quiet time, in seconds.
pub struct Active {
    pub age: f64,
    pub quiet: f64,
}

/// One held loop: its workspace, state and reason, and when it ends (Unix time) if it
/// ends by itself.
pub struct HoldFigures {
    pub workspace: String,
    pub state: HoldState,
    pub reason: HoldReason,
    pub until: Option<i64>,
}

/// What the runs' history rows say they did.
pub struct RunFigures {
    /// Tokens the runs in the history recorded, by workspace.
    pub tokens_by_workspace: Vec<(String, u64)>,
    /// Commits the runs in the history made (as git counted them), by workspace.
    pub commits_by_workspace: Vec<(String, u64)>,
    /// When the newest ended run ended (Unix time).
    pub last_run_ended_at: Option<i64>,
    /// The newest ended run's tokens, where recorded.
    pub last_run_tokens: Option<u64>,
    /// Open items of the TODO list at the newest run's end, where counted.
    pub todo_open: Option<u64>,
    /// The account's rate-limit use as codex last reported it: (`primary`/`secondary`, %).
    pub rate_limits: Vec<(&'static str, f64)>,
}

/// What `/metrics` shows now, from the registry, autopoll's policy, the holds and the
/// history. It reads only.
pub fn snapshot(app: &App) -> Snapshot {
    let counts = app.registry().counts();
    let poll = app.policy().view(std::time::Instant::now());
    let holds = app.holds().all();
    let now = crate::model::Stamp::now();
    Snapshot {
        started: counts
            .started
            .into_iter()
            .map(|(t, n)| (t.as_str(), n))
            .collect(),
        ended: counts
            .ended
            .into_iter()
            .map(|(o, n)| (o.as_str(), n))
            .collect(),
        active: app.registry().active().map(|r| Active {
            age: r.started.elapsed().as_secs_f64(),
            quiet: app.registry().quiet(&r).as_secs_f64(),
        }),
        crashes: poll.crashes,
        backoff_seconds: poll.backoff_left.map_or(0.0, |d| d.as_secs_f64()),
        paused_until: holds
            .iter()
            .find(|(_, h)| h.reason == HoldReason::UsageLimit)
            .and_then(|(_, h)| h.until)
            .filter(|t| *t > now)
            .map(|t| t.timestamp()),
        autopoll_enabled: app.cfg().autopoll,
        runs: run_figures(app),
        quota: super::quota::views(app, &app.account().history(), now.timestamp())
            .iter()
            .filter(|w| w.current)
            .map(|w| {
                let used_up = match w.forecast {
                    crate::rules::pace::Forecast::UsedUpAt(at) => Some(at),
                    _ => None,
                };
                (w.codex_name(), w.line, used_up)
            })
            .collect(),
        holds: holds
            .into_iter()
            .map(|(workspace, h)| HoldFigures {
                workspace,
                state: h.state,
                reason: h.reason,
                until: h.until.map(|t| t.timestamp()),
            })
            .collect(),
    }
}

/// The figures `/metrics` takes from the runs' history rows: tokens by workspace, the
/// newest run's tokens and TODO count, the newest rate limits. Sums saturate.
fn run_figures(app: &App) -> RunFigures {
    let rows = app.history().newest(crate::state::history::MAX_ROWS);
    type ByWorkspace = std::collections::BTreeMap<String, u64>;
    let (mut tokens, mut commits) = (ByWorkspace::new(), ByWorkspace::new());
    for r in &rows {
        let workspace = || r.workspace.to_string_lossy().into_owned();
        if let Some(t) = &r.report.tokens {
            let sum = tokens.entry(workspace()).or_default();
            *sum = sum.saturating_add(t.used);
        }
        if let Some(n) = r.report.git.as_ref().and_then(|g| g.commits) {
            let sum = commits.entry(workspace()).or_default();
            *sum = sum.saturating_add(n);
        }
    }
    let ended = || rows.iter().filter(|r| r.ended());
    let limits = ended().find_map(|r| r.report.rate_limits.clone());
    RunFigures {
        tokens_by_workspace: tokens.into_iter().collect(),
        commits_by_workspace: commits.into_iter().collect(),
        last_run_ended_at: ended().next().and_then(|r| Some(r.ended_at?.timestamp())),
        last_run_tokens: ended()
            .next()
            .and_then(|r| r.report.tokens.as_ref().map(|t| t.used)),
        todo_open: ended().find_map(|r| r.report.todo_after.map(|t| t.open)),
        rate_limits: limits
            .map(|l| {
                [("primary", l.primary), ("secondary", l.secondary)]
                    .into_iter()
                    .filter_map(|(w, win)| Some((w, win?.used_percent)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A label value in the text format: `\`, `"` and line breaks escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric: its help, type and samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The whole `/metrics` answer.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    family(
        &mut out,
        "looper_build_info",
        "gauge",
        "Looper's version (always 1).",
        &[(format!("{{version=\"{version}\"}}"), 1.0)],
    );
    let by = |counts: &[(&str, u64)], label: &str| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|(k, n)| (format!("{{{label}=\"{k}\"}}"), *n as f64))
            .collect()
    };
    family(
        &mut out,
        "looper_runs_started_total",
        "counter",
        "Runs started since Looper started, by trigger.",
        &by(&snap.started, "trigger"),
    );
    family(
        &mut out,
        "looper_runs_ended_total",
        "counter",
        "Runs ended since Looper started, by outcome.",
        &by(&snap.ended, "outcome"),
    );
    let (age, quiet) = snap
        .active
        .as_ref()
        .map_or((0.0, 0.0), |a| (a.age, a.quiet));
    let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
        family(out, name, "gauge", help, &[(String::new(), value)]);
    };
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    gauge(
        &mut out,
        "looper_run_active",
        "1 while a run Looper started is alive.",
        if snap.active.is_some() { 1.0 } else { 0.0 },
    );
    gauge(
        &mut out,
        "looper_active_run_age_seconds",
        "How long the active run has been running (0 without one).",
        round(age),
    );
    gauge(
        &mut out,
        "looper_active_run_quiet_seconds",
        "How long the active run's log has not grown (0 without one).",
        round(quiet),
    );
    gauge(
        &mut out,
        "looper_autopoll_consecutive_crashes",
        "Runs that failed right after start, in a row.",
        f64::from(snap.crashes),
    );
    gauge(
        &mut out,
        "looper_autopoll_backoff_seconds",
        "How long autopoll still backs off from a crash loop.",
        round(snap.backoff_seconds),
    );
    gauge(
        &mut out,
        "looper_usage_limit_until_seconds",
        "While codex's usage limit pauses autopoll: when it resumes (Unix time); else 0.",
        snap.paused_until.map_or(0.0, |t| t as f64),
    );
    gauge(
        &mut out,
        "looper_autopoll_enabled",
        "1 when autopoll is on (LOOPER_AUTOPOLL).",
        if snap.autopoll_enabled { 1.0 } else { 0.0 },
    );
    let by_workspace = |counts: &[(String, u64)]| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|(w, n)| (format!("{{workspace=\"{}\"}}", label_value(w)), *n as f64))
            .collect()
    };
    family(
        &mut out,
        "looper_tokens_total",
        "counter",
        "Tokens the runs in the history used, as codex counts them, by workspace.",
        &by_workspace(&snap.runs.tokens_by_workspace),
    );
    family(
        &mut out,
        "looper_commits_total",
        "counter",
        "Commits the runs in the history made, as git counts them, by workspace.",
        &by_workspace(&snap.runs.commits_by_workspace),
    );
    let optional = |out: &mut String, name: &str, help: &str, value: Option<f64>| {
        let samples: Vec<(String, f64)> = value.map(|v| (String::new(), v)).into_iter().collect();
        family(out, name, "gauge", help, &samples);
    };
    optional(
        &mut out,
        "looper_last_run_end_timestamp_seconds",
        "When the newest ended run ended (Unix time; absent before the first end).",
        snap.runs.last_run_ended_at.map(|t| t as f64),
    );
    optional(
        &mut out,
        "looper_last_run_tokens",
        "Tokens the newest ended run used (absent when it recorded none).",
        snap.runs.last_run_tokens.map(|n| n as f64),
    );
    optional(
        &mut out,
        "looper_todo_open_items",
        "Open items of LOOPER_TODO_FILE at the newest run's end (absent when not counted).",
        snap.runs.todo_open.map(|n| n as f64),
    );
    let limits: Vec<(String, f64)> = snap
        .runs
        .rate_limits
        .iter()
        .map(|(w, p)| (format!("{{window=\"{w}\"}}"), *p))
        .collect();
    let labels = |h: &HoldFigures| {
        format!(
            "{{workspace=\"{}\",reason=\"{}\"}}",
            label_value(&h.workspace),
            h.reason.as_str()
        )
    };
    let holds = |state: HoldState| -> Vec<(String, f64)> {
        snap.holds
            .iter()
            .filter(|h| h.state == state)
            .map(|h| (labels(h), 1.0))
            .collect()
    };
    family(
        &mut out,
        "looper_loop_paused",
        "gauge",
        "1 for each workspace whose loop is paused (no progress, a budget, the usage limit), by reason.",
        &holds(HoldState::Paused),
    );
    family(
        &mut out,
        "looper_loop_finished",
        "gauge",
        "1 for each workspace whose loop is finished (its TODO list done, or a run said done), by reason.",
        &holds(HoldState::Finished),
    );
    let until: Vec<(String, f64)> = snap
        .holds
        .iter()
        .filter_map(|h| Some((labels(h), h.until? as f64)))
        .collect();
    family(
        &mut out,
        "looper_loop_paused_until_timestamp_seconds",
        "gauge",
        "When a paused loop goes on by itself (Unix time); absent for a pause that waits for an operator.",
        &until,
    );
    family(
        &mut out,
        "looper_rate_limit_used_percent",
        "gauge",
        "The account's rate-limit use codex last reported: primary (5 hours), secondary (a week).",
        &limits,
    );
    let window = |w: &str| format!("{{window=\"{w}\"}}");
    let pace: Vec<(String, f64)> = snap
        .quota
        .iter()
        .filter_map(|(w, line, _)| Some((window(w), (*line)?)))
        .collect();
    family(
        &mut out,
        "looper_quota_pace_percent",
        "gauge",
        "The pace line now (LOOPER_QUOTA_PACE): how much of the window the loop may have used; absent when not paced.",
        &pace,
    );
    let used_up: Vec<(String, f64)> = snap
        .quota
        .iter()
        .filter_map(|(w, _, at)| Some((window(w), (*at)? as f64)))
        .collect();
    family(
        &mut out,
        "looper_quota_used_up_forecast_timestamp_seconds",
        "gauge",
        "When the window is used up at the last hour's rate (Unix time); absent when not before its reset, or not known yet.",
        &used_up,
    );
    out
}
