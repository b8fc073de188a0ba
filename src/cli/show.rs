//! `looper status` and `looper runs`: what the server says, in words and tables a person
//! reads (or as it came, with `--json`).

use std::collections::HashMap;
use std::io::Write;

use serde_json::{json, Value};

use crate::model::LoopState;

use super::args::{Runs, Status};
use super::client::{base_url, call};
use super::Fail;

/// `looper status`: `/status` in words, or as it came with `--json`.
pub fn status(
    st: &Status,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    let base = base_url(st.url.as_deref(), env);
    let (code, s) = call("GET", &base, "/status", None, env)?;
    if st.json {
        let _ = writeln!(out, "{s}");
    } else if s["ok"] == json!(true) {
        let _ = write!(out, "{}", describe_status(&base, &s));
    }
    if s["ok"] != json!(true) {
        note!(
            "looper: HTTP {code}: {}",
            s["error"].as_str().unwrap_or("?")
        );
        return Ok(1);
    }
    Ok(0)
}

/// A value of the server's answer as a person reads it: `-` for none.
fn text(v: &Value) -> String {
    match v {
        // Timestamps to the second, in local time: the nanoseconds say nothing to a person.
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => s.clone(),
        },
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// A time of a `/status` answer (RFC 3339), if it is one.
fn instant(v: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
}

/// When autopoll's next tick may start a run: a tick during a back-off or a pause does
/// nothing, so the end of the hold is named instead; a tick in the past is under way ("now").
fn next_tick(p: &Value, state: &Value) -> String {
    let loop_state = serde_json::from_value::<LoopState>(state["state"].clone()).ok();
    if loop_state == Some(LoopState::Finished) {
        return "none: the loop is finished".to_string();
    }
    // Held until the operator says (stuck, paused by them, a lost state): no tick starts
    // anything.
    if loop_state == Some(LoopState::Paused) && state["until"].is_null() {
        return format!(
            "none: the loop is paused ({}) until `looper resume`",
            text(&state["reason"])
        );
    }
    let tick = instant(&p["next_tick_at"]);
    let hold = [
        ("the back-off", &p["backoff_until"]),
        ("the pause", &p["paused_until"]),
    ]
    .into_iter()
    .filter_map(|(what, v)| Some((what, instant(v)?, v)))
    .filter(|(_, until, _)| tick.is_none_or(|t| *until > t))
    .max_by_key(|(_, until, _)| *until);
    match (hold, tick) {
        (Some((what, _, v)), _) => format!("the first after {what} ends ({})", text(v)),
        (None, Some(t)) if t < chrono::Local::now() => "now".to_string(),
        (None, _) => text(&p["next_tick_at"]),
    }
}

/// A readable summary of a `/status` answer.
pub fn describe_status(base: &str, s: &Value) -> String {
    let mut lines = vec![format!("Looper {} at {base}", text(&s["version"]))];
    let a = &s["active"];
    if a.is_null() {
        lines.push("active run: none".to_string());
    } else {
        lines.push(format!(
            "active run: {} (pid {}), started {}, last output {}",
            text(&a["run_id"]),
            text(&a["pid"]),
            text(&a["started_at"]),
            text(&a["last_output_at"])
        ));
        lines.push(format!("  workspace {}", text(&a["workspace"])));
        lines.push(format!("  log {}", text(&a["log_path"])));
    }
    let e = &s["last_exit"];
    if !e.is_null() {
        lines.push(format!(
            "last exit: run {} returned {} after {} s, at {}",
            text(&e["run_id"]),
            text(&e["return_code"]),
            text(&e["duration_seconds"]),
            text(&e["ended_at"])
        ));
    }
    let t = &s["todo"];
    if !t.is_null() {
        lines.push(format!(
            "TODO {}: {} open, {} done (after run {})",
            text(&t["file"]),
            text(&t["open"]),
            text(&t["done"]),
            text(&t["after_run"])
        ));
    }
    if s["run_in_progress"] == json!(true) {
        lines.push("a trigger is being set up right now".to_string());
    }
    let p = &s["autopoll"];
    if p["enabled"] == json!(true) {
        lines.push(format!(
            "autopoll: every {} s when logs are quiet for {} s; next tick {}",
            text(&p["interval_seconds"]),
            text(&p["stale_seconds"]),
            next_tick(p, &s["loop"])
        ));
        let failed = &p["last_start_failure"];
        if !failed.is_null() {
            lines.push(format!(
                "  its last start failed at {}: {}",
                text(&failed["at"]),
                text(&failed["error"])
            ));
        }
        if !p["backoff_until"].is_null() {
            lines.push(format!(
                "  backing off after {} crashes in a row, until {}",
                text(&p["consecutive_crashes"]),
                text(&p["backoff_until"])
            ));
        }
    } else {
        lines.push("autopoll: off".to_string());
    }
    lines.extend(describe_loop(s));
    lines.extend(describe_quota(&s["quota"]));
    if let Some(scope) = s["stop_scope"].as_str() {
        let what = match scope {
            "own" => "the runs this Looper started",
            "workspace" => "the codex exec runs in the new run's workspace",
            _ => "every codex exec of this user",
        };
        lines.push(format!(
            "a trigger stops: {what} (LOOPER_STOP_SCOPE={scope})"
        ));
    }
    lines.join("\n") + "\n"
}

/// The loop's state and each workspace's pause or finish, with why and until when.
fn describe_loop(s: &Value) -> Vec<String> {
    let l = &s["loop"];
    let mut lines = vec![format!(
        "loop: {} in {}",
        text(&l["state"]),
        text(&l["workspace"])
    )];
    for h in s["holds"].as_array().into_iter().flatten() {
        let until = match &h["until"] {
            Value::Null => "until `looper resume` or a trigger of yours".to_string(),
            t => format!("until {} (or `looper resume`)", text(t)),
        };
        lines.push(format!(
            "  {} {} since {}: {} ({}); {until}",
            text(&h["workspace"]),
            text(&h["state"]),
            text(&h["since"]),
            text(&h["reason"]),
            text(&h["detail"])
        ));
    }
    lines
}

/// The account's quota: the pacing in force, each window's use against the pace line, its
/// reset and the forecast. Nothing when Looper has seen no figures and paces nothing.
fn describe_quota(q: &Value) -> Vec<String> {
    let windows = q["windows"].as_array().cloned().unwrap_or_default();
    let paced = q["pace"].is_string();
    if windows.is_empty() && !paced {
        return Vec::new();
    }
    let mut how = if paced {
        let mut how = format!(
            "paced evenly ({}% over the line allowed",
            text(&q["allowance_percent"])
        );
        if q["reserve_percent"].as_f64().is_some_and(|r| r > 0.0) {
            how.push_str(&format!(", {}% kept for you", text(&q["reserve_percent"])));
        }
        if !q["work_hours"].is_null() {
            how.push_str(&format!(
                ", {}% in {}",
                text(&q["work_reserve_percent"]),
                text(&q["work_hours"])
            ));
        }
        how + ")"
    } else {
        "not paced (LOOPER_QUOTA_PACE)".to_string()
    };
    match &q["seen_at"] {
        Value::Null => how.push_str("; no figures seen yet"),
        at => how.push_str(&format!("; figures of {}", text(at))),
    }
    let mut lines = vec![format!("quota: {how}")];
    for w in windows {
        let mut line = format!(
            "  {}: {:.0}% used",
            text(&w["name"]),
            w["used_percent"].as_f64().unwrap_or(0.0)
        );
        if let Some(p) = w["pace_percent"].as_f64() {
            line.push_str(&format!(", pace line {p:.0}%"));
        }
        if !w["held_until"].is_null() {
            line.push_str(&format!(" (ahead: waits until {})", text(&w["held_until"])));
        }
        line.push_str(&format!(
            "; resets {}; {}",
            text(&w["resets_at"]),
            text(&w["forecast"]["words"])
        ));
        lines.push(line);
    }
    lines
}

/// `looper runs`: recent runs as a table, or as `/runs` answered with `--json`.
pub fn runs(r: &Runs, env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let base = base_url(r.url.as_deref(), env);
    let (code, answer) = call("GET", &base, &format!("/runs?limit={}", r.limit), None, env)?;
    if answer["ok"] != json!(true) {
        note!(
            "looper: HTTP {code}: {}",
            answer["error"].as_str().unwrap_or("?")
        );
        return Ok(1);
    }
    if r.json {
        let _ = writeln!(out, "{answer}");
    } else {
        let rows = answer["runs"].as_array().cloned().unwrap_or_default();
        let _ = write!(out, "{}", runs_table(&rows));
    }
    Ok(0)
}

/// Runs as an aligned table.
pub fn runs_table(rows: &[Value]) -> String {
    let header = [
        "RUN", "TRIGGER", "PID", "STARTED", "RC", "SECONDS", "TOKENS", "COMMITS", "NOTE",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let started = text(&r["started_at"]);
        table.push(vec![
            text(&r["run_id"]),
            text(&r["trigger"]),
            text(&r["pid"]),
            started.get(..19).unwrap_or(&started).replace('T', " "),
            match (&r["return_code"], &r["ended_at"]) {
                (Value::Null, Value::Null) => "running".into(),
                (Value::Null, _) => "?".into(),
                (rc, _) => text(rc),
            },
            text(&r["duration_seconds"]),
            text(&r["tokens"]["used"]),
            text(&r["git"]["commits"]),
            r["stop_reason"].as_str().unwrap_or("").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    if rows.is_empty() {
        s.push_str("(no runs yet)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let rows = vec![
            json!({"run_id":"abcd1234","trigger":"http","pid":42,"started_at":"2026-11-25T10:00:00+00:00","return_code":null,"duration_seconds":null}),
            json!({"run_id":"0000beef","trigger":"http","pid":41,"started_at":"2026-11-25T09:00:00+00:00","ended_at":"2026-11-25T09:30:00+00:00","return_code":null,"duration_seconds":1800.0}),
            json!({"run_id":"feed0001","trigger":"inbox","pid":40,"started_at":"2026-11-25T08:00:00+00:00","ended_at":"2026-11-25T08:10:00+00:00","return_code":-15,"duration_seconds":600.0,"tokens":{"used":11023},"git":{"commits":2},"stop_reason":"handed_off"}),
        ];
        let t = runs_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RUN       TRIGGER"), "{t}");
        assert!(
            lines[1].contains("2026-11-25 10:00:00") && lines[1].contains("running"),
            "{t}"
        );
        let unwatched: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(unwatched[4..], ["09:00:00", "?", "1800.0", "-", "-"], "{t}");
        let reported: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(reported[6..], ["600.0", "11023", "2", "handed_off"], "{t}");
    }
}
