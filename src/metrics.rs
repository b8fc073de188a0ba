//! `GET /metrics`: Looper's state in Prometheus' text format, so that people who run Loopers
//! on several machines watch them with the Prometheus they already have. Counters count
//! since this Looper started.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Instant, SystemTime};

use crate::app::App;

/// Triggers and outcomes always shown, at 0 until they happen.
const TRIGGERS: [&str; 3] = ["http", "inbox", "autopoll"];
const OUTCOMES: [&str; 7] = [
    "ok",
    "failed",
    "replaced",
    "hung",
    "external",
    "shutdown",
    "usage_limit",
];

/// Runs started and ended since start.
#[derive(Default)]
pub struct Counters {
    started: BTreeMap<&'static str, u64>,
    ended: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub fn started(&mut self, trigger: &'static str) {
        *self.started.entry(trigger).or_default() += 1;
    }

    /// `outcome`: a stop reason's name, or `ok` / `failed` for a run that ended by itself.
    pub fn ended(&mut self, outcome: &'static str) {
        *self.ended.entry(outcome).or_default() += 1;
    }
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
pub fn render(app: &App) -> String {
    let (started, ended) = {
        let c = app.counters();
        (c.started.clone(), c.ended.clone())
    };
    let active = app.runs().active().cloned();
    let poll = app.autopoll_state().clone();
    let mut out = String::new();
    let version = env!("CARGO_PKG_VERSION");
    family(
        &mut out,
        "looper_build_info",
        "gauge",
        "Looper's version (always 1).",
        &[(format!("{{version=\"{version}\"}}"), 1.0)],
    );
    let by =
        |map: &BTreeMap<&str, u64>, label: &str, keys: &[&'static str]| -> Vec<(String, f64)> {
            keys.iter()
                .map(|k| {
                    (
                        format!("{{{label}=\"{k}\"}}"),
                        *map.get(k).unwrap_or(&0) as f64,
                    )
                })
                .collect()
        };
    family(
        &mut out,
        "looper_runs_started_total",
        "counter",
        "Runs started since Looper started, by trigger.",
        &by(&started, "trigger", &TRIGGERS),
    );
    family(
        &mut out,
        "looper_runs_ended_total",
        "counter",
        "Runs ended since Looper started, by outcome.",
        &by(&ended, "outcome", &OUTCOMES),
    );
    let (age, quiet) = match &active {
        Some(r) => {
            let age = r.started.elapsed().as_secs_f64();
            let quiet = std::fs::metadata(&r.log_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(age, |d| d.as_secs_f64().min(age));
            (age, quiet)
        }
        None => (0.0, 0.0),
    };
    let gauge = |out: &mut String, name: &str, help: &str, value: f64| {
        family(out, name, "gauge", help, &[(String::new(), value)]);
    };
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    gauge(
        &mut out,
        "looper_run_active",
        "1 while a run Looper started is alive.",
        if active.is_some() { 1.0 } else { 0.0 },
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
        f64::from(poll.crashes),
    );
    let backoff = poll.backoff_until.map_or(0.0, |until| {
        until
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    });
    gauge(
        &mut out,
        "looper_autopoll_backoff_seconds",
        "How long autopoll still backs off from a crash loop.",
        round(backoff),
    );
    let paused = poll
        .paused_until
        .filter(|t| *t > chrono::Local::now())
        .map_or(0.0, |t| t.timestamp() as f64);
    gauge(
        &mut out,
        "looper_usage_limit_until_seconds",
        "While codex's usage limit pauses autopoll: when it resumes (Unix time); else 0.",
        paused,
    );
    out
}
