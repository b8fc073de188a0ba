//! The account's quota as Looper sees it: `/status`'s `quota` (each window's use, its reset,
//! the pace line now and a forecast) and `GET /quota` (that, and the figures kept, each with
//! the pace line at its time, for the page's chart). Only reads: the figures are read from
//! codex's session files by autopoll's thread and the events that start runs.

use serde_json::{json, Value};

use crate::model::Stamp;
use crate::report::account::Seen;
use crate::rules::pace::{self, Forecast, Span};
use crate::state::app::App;

fn iso(at: i64) -> Stamp {
    Stamp::from(pace::local(at))
}

/// How a forecast reads, for people.
fn forecast_words(name: &str, f: Forecast) -> String {
    match f {
        Forecast::Unknown => "no forecast yet (figures of the last hour are needed)".into(),
        Forecast::UsedUpAt(at) => format!(
            "at the last hour's rate the {name} window is used up on {}",
            pace::local(at).format("%a %Y-%m-%d %H:%M")
        ),
        Forecast::NotBeforeReset(p) => {
            format!("at the last hour's rate the {name} window reaches {p:.0}% by its reset")
        }
    }
}

/// One window of the newest figures, at an instant.
pub struct WindowView {
    pub name: &'static str,
    pub span: Span,
    /// Its reset has not passed (else the figures are the last window's).
    pub current: bool,
    /// The pace line now (`None`: not paced).
    pub line: Option<f64>,
    pub ahead: Option<pace::Ahead>,
    pub forecast: Forecast,
}

impl WindowView {
    /// `primary` or `secondary`, as codex names the window (and `/metrics` labels it).
    pub fn codex_name(&self) -> &'static str {
        if self.name == "5-hour" {
            "primary"
        } else {
            "secondary"
        }
    }
}

/// Each window of the newest of the figures kept (`history`, oldest first), at `now`.
pub fn views(app: &App, history: &[Seen], now: i64) -> Vec<WindowView> {
    let Some(seen) = history.last() else {
        return Vec::new();
    };
    let policy = app.cfg().rules.pace;
    pace::spans(&seen.limits)
        .into_iter()
        .map(|(name, span)| {
            let current = span.resets_at > now;
            let earlier: Vec<(i64, f64)> = history
                .iter()
                .filter_map(|s| {
                    let (_, other) = pace::spans(&s.limits)
                        .into_iter()
                        .find(|(n, _)| *n == name)?;
                    same_window(&other, &span).then_some((s.at, other.used))
                })
                .collect();
            WindowView {
                name,
                span,
                current,
                line: policy.map(|p| pace::line(&p, &span, now, &pace::local_wall)),
                ahead: policy
                    .filter(|_| current)
                    .and_then(|p| pace::ahead(&p, &[(name, span)], now, &pace::local_wall)),
                forecast: if current {
                    pace::forecast(&span, &earlier, now)
                } else {
                    Forecast::Unknown
                },
            }
        })
        .collect()
}

fn window_json(w: &WindowView) -> Value {
    let f = w.forecast;
    json!({
        "name": w.name,
        "used_percent": w.span.used,
        "window_minutes": w.span.seconds / 60,
        "resets_at": iso(w.span.resets_at),
        "reset_passed": !w.current,
        "pace_percent": w.line,
        "ahead": w.line.map(|_| w.ahead.is_some()),
        "held_until": w.ahead.as_ref().map(|a| iso(a.until)),
        "forecast": {
            "used_up_at": match f { Forecast::UsedUpAt(at) => Some(iso(at)), _ => None },
            "by_reset_percent": match f { Forecast::NotBeforeReset(p) => Some(p), _ => None },
            "words": if w.current { forecast_words(w.name, f) } else {
                format!("the {} window has reset since; new figures come with the next model answer", w.name)
            },
        },
    })
}

/// Figures of the same window: the same length, and a reset within two minutes (codex's
/// figure moves a little from answer to answer).
fn same_window(a: &Span, b: &Span) -> bool {
    a.seconds == b.seconds && a.resets_at.abs_diff(b.resets_at) <= 120
}

/// `/status`'s `quota`: the pacing in force and the newest figures.
pub fn status(app: &App) -> Value {
    status_of(app, &app.account().history(), Stamp::now().timestamp())
}

fn status_of(app: &App, history: &[Seen], now: i64) -> Value {
    let policy = app.cfg().rules.pace;
    let seen_at = history.last().map(|s| iso(s.at));
    let windows: Vec<Value> = views(app, history, now).iter().map(window_json).collect();
    json!({
        "pace": policy.map(|_| "even"),
        "reserve_percent": policy.map(|p| p.reserve),
        "work_hours": policy.and_then(|p| p.work.map(|(h, _)| h.text())),
        "work_reserve_percent": policy.and_then(|p| p.work.map(|(_, r)| r)),
        "allowance_percent": policy.map(|_| pace::ALLOWANCE),
        "seen_at": seen_at,
        "windows": windows,
    })
}

/// `GET /quota`: [`status`] and the figures kept, oldest first, each window with its pace
/// line at that time (`null` when not paced).
pub fn quota(app: &App) -> Value {
    let policy = app.cfg().rules.pace;
    let history = app.account().history();
    let now = Stamp::now().timestamp();
    let views = views(app, &history, now);
    let points: Vec<Value> = history
        .iter()
        .map(|s| {
            let windows: serde_json::Map<String, Value> = pace::spans(&s.limits)
                .into_iter()
                .map(|(name, span)| {
                    let line = policy.map(|p| pace::line(&p, &span, s.at, &pace::local_wall));
                    (
                        name.to_string(),
                        json!({"used_percent": span.used, "pace_percent": line, "resets_at": span.resets_at}),
                    )
                })
                .collect();
            json!({"at": iso(s.at), "t": s.at, "windows": windows})
        })
        .collect();
    // The pace line across each current window, start to reset (what the page draws).
    let lines: serde_json::Map<String, Value> = match policy {
        None => serde_json::Map::new(),
        Some(p) => views
            .iter()
            .filter(|w| w.current)
            .map(|w| {
                let (start, len) = (w.span.start(), w.span.seconds);
                let line: Vec<[f64; 2]> = (0..=LINE_POINTS)
                    .map(|k| {
                        let t = start + len * k / LINE_POINTS;
                        [t as f64, pace::line(&p, &w.span, t, &pace::local_wall)]
                    })
                    .collect();
                (w.name.to_string(), json!(line))
            })
            .collect(),
    };
    json!({"ok": true, "quota": status_of(app, &history, now), "history": points, "lines": lines})
}

/// Points of the pace line drawn across a window.
const LINE_POINTS: i64 = 96;
