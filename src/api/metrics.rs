//! `GET /metrics`: Looper's state in Prometheus' text format, so that people who run Loopers
//! on several machines watch them with the Prometheus they already have. Counters count
//! since this Looper started. The renderer is pure: [`Snapshot`] in, the text out.

use std::fmt::Write;

/// What `/metrics` shows, gathered by the caller: this room reads no state of its own.
pub struct Snapshot {
    /// Runs started since start, by trigger: every trigger, at 0 until it happens.
    pub started: Vec<(&'static str, u64)>,
    /// Runs ended since start, by outcome: every outcome, at 0 until it happens.
    pub ended: Vec<(&'static str, u64)>,
    /// The active run's age and quiet time, in seconds.
    pub active: Option<(f64, f64)>,
    pub crashes: u32,
    /// Seconds of crash-loop back-off left.
    pub backoff_seconds: f64,
    /// While codex's usage limit pauses autopoll: when it resumes (Unix time).
    pub paused_until: Option<i64>,
    /// Whether autopoll is on (`LOOPER_AUTOPOLL`).
    pub autopoll_enabled: bool,
    pub runs: RunFigures,
    /// The loops that start nothing by themselves: workspace, `paused`/`finished`, reason,
    /// when it ends (Unix time) if it ends by itself.
    pub holds: Vec<(String, String, String, Option<i64>)>,
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
    let (age, quiet) = snap.active.unwrap_or((0.0, 0.0));
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
    let holds = |state: &str| -> Vec<(String, f64)> {
        snap.holds
            .iter()
            .filter(|h| h.1 == state)
            .map(|(w, _, reason, _)| {
                (
                    format!(
                        "{{workspace=\"{}\",reason=\"{}\"}}",
                        label_value(w),
                        label_value(reason)
                    ),
                    1.0,
                )
            })
            .collect()
    };
    family(
        &mut out,
        "looper_loop_paused",
        "gauge",
        "1 for each workspace whose loop is paused (no progress, a budget, the usage limit), by reason.",
        &holds("paused"),
    );
    family(
        &mut out,
        "looper_loop_finished",
        "gauge",
        "1 for each workspace whose loop is finished (its TODO list done, or a run said done), by reason.",
        &holds("finished"),
    );
    let until: Vec<(String, f64)> = snap
        .holds
        .iter()
        .filter_map(|(w, _, reason, until)| {
            Some((
                format!(
                    "{{workspace=\"{}\",reason=\"{}\"}}",
                    label_value(w),
                    label_value(reason)
                ),
                (*until)? as f64,
            ))
        })
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
    out
}
