//! A `/run` request: its fields, read and validated from the body (from HTTP or an inbox
//! file), and who asked for it. Nothing here has an effect.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::error::Refusal;
use crate::model::MAX_SECONDS;

/// A validated `/run` request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    pub zulip_message: String,
    /// `None`: use the default prompt; `Some("")`: announce and stop only.
    pub prompt: Option<String>,
    pub workspace: Option<String>,
    pub codex_exec_binary: Option<String>,
    pub delay: Option<Duration>,
    pub startup_check: Option<Duration>,
    pub zulip_script_path: Option<String>,
    pub from_run_id: Option<String>,
    /// `loop_done`: the run that hands off says the task is done; the loop finishes.
    pub loop_done: bool,
    /// The run whose hand-off this is (the caller, when it is a run, or the `from_run_id`
    /// it names): set by the pipeline, never read from the body. That run ends
    /// `handed_off`, not `replaced`.
    pub handed_off_by: Option<String>,
    /// Fields of the body Looper does not know (a typo such as `codex_promt`, or a wrapper's
    /// extras): said in the log and the answer.
    pub ignored_fields: Vec<String>,
    /// The known fields the body sets (not `null`), by their names, for judging who may
    /// send them ([`crate::run::trust::admit`]).
    pub fields: Vec<&'static str>,
}

/// Every field `/run` reads.
const KNOWN_FIELDS: [&str; 14] = [
    "zulip_message",
    "codex_prompt",
    "prompt",
    "workspace",
    "codex_exec_binary",
    "codex_exec_delay_seconds",
    "startup_delay_seconds",
    "sidebar_delay_seconds",
    "new_task_delay_seconds",
    "prompt_send_delay_seconds",
    "codex_exec_startup_check_seconds",
    "zulip_script_path",
    "from_run_id",
    "loop_done",
];

/// Legacy delay fields, summed when `codex_exec_delay_seconds` is absent.
const LEGACY_DELAYS: [&str; 4] = [
    "startup_delay_seconds",
    "sidebar_delay_seconds",
    "new_task_delay_seconds",
    "prompt_send_delay_seconds",
];

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Refusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            if s.contains('\0') {
                return Err(Refusal::bad_request(format!(
                    "{key} must not contain NUL bytes"
                )));
            }
            Ok(Some(s.clone()))
        }
        Some(_) => Err(Refusal::bad_request(format!("{key} must be a string"))),
    }
}

fn seconds_field(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, Refusal> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (0.0..=MAX_SECONDS).contains(&v) => Ok(Some(v)),
            _ => Err(Refusal::bad_request(format!(
                "{key} must be a number of seconds from 0 to 86400"
            ))),
        },
        Some(_) => Err(Refusal::bad_request(format!(
            "{key} must be a number of seconds from 0 to 86400"
        ))),
    }
}

/// The error for a body that is not UTF-8, naming the field when the rest is JSON.
fn not_utf8(body: &[u8]) -> Refusal {
    let lossy = String::from_utf8_lossy(body);
    let field = serde_json::from_str::<Value>(&lossy).ok().and_then(|v| {
        v.as_object()?
            .iter()
            .find(|(_, v)| v.as_str().is_some_and(|s| s.contains('\u{FFFD}')))
            .map(|(k, _)| k.clone())
    });
    match field {
        Some(k) => Refusal::bad_request(format!("{k} must be valid UTF-8")),
        None => Refusal::bad_request("body is not valid UTF-8 JSON"),
    }
}

/// Parses and validates a `/run` body. Unknown fields are listed in `ignored_fields`, not
/// refused; which known fields a caller may send is [`crate::run::trust::admit`]'s call.
/// A `workspace` from a body is absolute (or `~/…`): a relative one would be taken against
/// Looper's working directory, which is not the caller's, and a run would start elsewhere.
pub fn absolute_workspace(w: String) -> Result<String, Refusal> {
    if w.starts_with('/') || w == "~" || w.starts_with("~/") {
        return Ok(w);
    }
    Err(Refusal::bad_request(format!(
        "workspace must be an absolute path (or start with ~/), not {w:?}: Looper cannot know the directory it was meant from; nothing was changed"
    )))
}

pub fn parse_request(body: &[u8]) -> Result<RunRequest, Refusal> {
    if std::str::from_utf8(body).is_err() {
        return Err(not_utf8(body));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(Refusal::bad_request("body must be a JSON object"));
    };
    let zulip_message = string_field(&obj, "zulip_message")?.unwrap_or_default();
    if zulip_message.trim().is_empty() {
        return Err(Refusal::bad_request(
            "zulip_message is required and must not be empty",
        ));
    }
    // Every field is checked, the aliases too, even when the field they stand in for wins.
    let legacy_prompt = string_field(&obj, "prompt")?;
    let prompt = string_field(&obj, "codex_prompt")?.or(legacy_prompt);
    let mut legacy_sum = None;
    for key in LEGACY_DELAYS {
        if let Some(d) = seconds_field(&obj, key)? {
            *legacy_sum.get_or_insert(0.0) += d;
        }
    }
    let delay = match seconds_field(&obj, "codex_exec_delay_seconds")? {
        Some(d) => Some(d),
        None => {
            if legacy_sum.is_some_and(|s| s > MAX_SECONDS) {
                return Err(Refusal::bad_request(
                    "the legacy delay fields add up to more than 86400 seconds",
                ));
            }
            legacy_sum
        }
    };
    let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    Ok(RunRequest {
        zulip_message,
        prompt,
        workspace: match non_empty(string_field(&obj, "workspace")?) {
            Some(w) => Some(absolute_workspace(w)?),
            None => None,
        },
        codex_exec_binary: non_empty(string_field(&obj, "codex_exec_binary")?),
        delay: delay.map(Duration::from_secs_f64),
        startup_check: seconds_field(&obj, "codex_exec_startup_check_seconds")?
            .map(Duration::from_secs_f64),
        zulip_script_path: non_empty(string_field(&obj, "zulip_script_path")?),
        from_run_id: non_empty(string_field(&obj, "from_run_id")?),
        loop_done: match obj.get("loop_done") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(Refusal::bad_request("loop_done must be true or false")),
        },
        handed_off_by: None,
        ignored_fields: obj
            .keys()
            .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect(),
        fields: KNOWN_FIELDS
            .into_iter()
            .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Why;
    use serde_json::json;

    fn parse(s: &str) -> Result<RunRequest, Refusal> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn accepts_every_field_and_ignores_unknown_ones() {
        let r = parse(
            r#"{"zulip_message":"hi","codex_prompt":"p","prompt":"legacy","workspace":"/w",
                "codex_exec_binary":"cx","codex_exec_delay_seconds":0.5,
                "codex_exec_startup_check_seconds":2,"zulip_script_path":"s.js",
                "from_run_id":"abc","password_store":"x"}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.as_deref(), Some("p"));
        assert_eq!(r.delay, Some(Duration::from_millis(500)));
        assert_eq!(r.startup_check, Some(Duration::from_secs(2)));
        assert_eq!(r.from_run_id.as_deref(), Some("abc"));
    }

    #[test]
    fn legacy_prompt_and_delays() {
        let r = parse(r#"{"zulip_message":"hi","prompt":"old","startup_delay_seconds":1,"prompt_send_delay_seconds":0.5}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some("old"));
        assert_eq!(r.delay, Some(Duration::from_millis(1500)));
        let r = parse(
            r#"{"zulip_message":"hi","codex_exec_delay_seconds":0,"sidebar_delay_seconds":9}"#,
        )
        .unwrap();
        assert_eq!(r.delay, Some(Duration::ZERO));
        let r = parse(r#"{"zulip_message":"hi","codex_prompt":""}"#).unwrap();
        assert_eq!(r.prompt.as_deref(), Some(""));
    }

    #[test]
    fn rejects_bad_input_naming_the_field() {
        for (body, field) in [
            (r#"{}"#, "zulip_message"),
            (r#"{"zulip_message":"  "}"#, "zulip_message"),
            (r#"{"zulip_message":5}"#, "zulip_message"),
            (
                r#"{"zulip_message":"m","codex_prompt":["a"]}"#,
                "codex_prompt",
            ),
            (r#"{"zulip_message":"m","workspace":{}}"#, "workspace"),
            (r#"{"zulip_message":"m","workspace":"app"}"#, "absolute"),
            (r#"{"zulip_message":"m","workspace":"./app"}"#, "absolute"),
            (r#"{"zulip_message":"m","workspace":"~app"}"#, "absolute"),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":-1}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":"2"}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_delay_seconds":86401}"#,
                "codex_exec_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","new_task_delay_seconds":true}"#,
                "new_task_delay_seconds",
            ),
            (
                r#"{"zulip_message":"m","codex_exec_startup_check_seconds":1e999}"#,
                "JSON",
            ),
            (
                r#"{"zulip_message":"m","codex_prompt":"a\u0000b"}"#,
                "codex_prompt",
            ),
            (r#"[1,2]"#, "object"),
            (r#"{"zulip_message":"m""#, "JSON"),
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.why, Why::Invalid, "{body}");
            assert!(err.message.contains(field), "{body}: {}", err.message);
        }
        let err = parse_request(b"{\"zulip_message\":\"\xff\"}").unwrap_err();
        assert_eq!(err.message, "zulip_message must be valid UTF-8");
        let err = parse_request(b"\xff\xfe").unwrap_err();
        assert_eq!(err.why, Why::Invalid);
    }

    /// Random JSON objects over the known fields, with values of every type: the validator
    /// accepts exactly those an independent reading of the rules accepts, and keeps what
    /// they say.
    #[test]
    fn random_requests_are_judged_by_the_rules() {
        let mut x: u64 = 0x5DEE_CE66_D1CE_4E5B;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let strings = [
            "zulip_message",
            "codex_prompt",
            "prompt",
            "workspace",
            "codex_exec_binary",
            "zulip_script_path",
            "from_run_id",
        ];
        let seconds = [
            "codex_exec_delay_seconds",
            "codex_exec_startup_check_seconds",
            "startup_delay_seconds",
            "sidebar_delay_seconds",
            "new_task_delay_seconds",
            "prompt_send_delay_seconds",
        ];
        let values = [
            json!(null),
            json!("m"),
            json!("  "),
            json!(""),
            json!("a\0b"),
            json!(0),
            json!(1.5),
            json!(-1),
            json!(86400),
            json!(86400.5),
            json!(50000),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("7"),
        ];
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut obj = Map::new();
            for (n, key) in strings
                .iter()
                .chain(&seconds)
                .chain(&["unknown_field"])
                .enumerate()
            {
                if next(2) == 0 {
                    // Mostly a value of the field's own kind, sometimes anything at all.
                    let pool: &[Value] = match (next(8), n < strings.len()) {
                        (0, _) => &values,
                        (_, true) => &values[..5],
                        (_, false) => &values[5..11],
                    };
                    obj.insert(
                        key.to_string(),
                        pool[next(pool.len() as u64) as usize].clone(),
                    );
                }
            }
            let get = |k: &str| obj.get(k).filter(|v| !v.is_null());
            let string_ok =
                |k: &str| get(k).is_none_or(|v| v.as_str().is_some_and(|s| !s.contains('\0')));
            let secs = |k: &str| get(k).map(|v| v.as_f64());
            let secs_ok =
                |k: &str| secs(k).is_none_or(|v| v.is_some_and(|v| (0.0..=86400.0).contains(&v)));
            let message_ok = get("zulip_message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.trim().is_empty());
            let legacy_sum: f64 = seconds[2..].iter().filter_map(|k| secs(k).flatten()).sum();
            let delay_given = get("codex_exec_delay_seconds").is_some();
            // The legacy delays are summed only when the modern field is absent.
            let legacy_ok =
                seconds[2..].iter().all(|k| secs_ok(k)) && (delay_given || legacy_sum <= 86400.0);
            // A workspace, when given (not blank), is absolute or under `~/`.
            let workspace_ok = get("workspace").and_then(Value::as_str).is_none_or(|w| {
                w.trim().is_empty() || w.starts_with('/') || w == "~" || w.starts_with("~/")
            });
            let expect_ok = message_ok
                && workspace_ok
                && strings.iter().all(|k| string_ok(k))
                && secs_ok("codex_exec_delay_seconds")
                && secs_ok("codex_exec_startup_check_seconds")
                && legacy_ok;
            let body = Value::Object(obj.clone()).to_string();
            match parse_request(body.as_bytes()) {
                Ok(r) => {
                    assert!(expect_ok, "accepted {body}");
                    accepted += 1;
                    let prompt = get("codex_prompt")
                        .or(get("prompt"))
                        .and_then(Value::as_str);
                    assert_eq!(r.prompt.as_deref(), prompt, "{body}");
                    assert_eq!(
                        Some(r.zulip_message.as_str()),
                        get("zulip_message").and_then(Value::as_str)
                    );
                }
                Err(e) => {
                    assert!(!expect_ok, "refused {body}: {}", e.message);
                    assert_eq!(e.why, Why::Invalid, "{body}");
                    refused += 1;
                }
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn random_bytes_give_a_request_or_a_400() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..3000usize {
            let body: Vec<u8> = (0..len % 300)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            judged_like_serde(&body);
        }
    }

    /// What any body must get: a request only when it is a UTF-8 JSON object with a
    /// `zulip_message` that is a non-blank string (kept as sent); otherwise an error that
    /// says what is wrong in one sentence.
    fn judged_like_serde(body: &[u8]) {
        let message = std::str::from_utf8(body)
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|v| v.get("zulip_message")?.as_str().map(str::to_string))
            .filter(|m| !m.trim().is_empty());
        match parse_request(body) {
            Ok(r) => {
                assert_eq!(Some(r.zulip_message), message, "accepted {body:?}");
            }
            Err(e) => {
                assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e}");
                if message.is_none() {
                    return;
                }
                // Refused with a usable message: some other field is wrong, and named.
                assert!(
                    e.message.contains("must") || e.message.contains("legacy"),
                    "refused {body:?}: {e}"
                );
            }
        }
    }

    #[test]
    fn any_bytes_give_a_request_or_a_400() {
        // A small deterministic fuzz over the validator: it must never panic.
        let mut x: u64 = 0x1234_5678;
        let pieces: [&[u8]; 8] = [
            b"{\"zulip_message\":",
            b"\"m\"",
            b",\"codex_exec_delay_seconds\":",
            b"1e308",
            b"}",
            b"\xff\xfe",
            b"[null]",
            b"\"\\u0000\"",
        ];
        for _ in 0..5000 {
            let mut body = Vec::new();
            for _ in 0..6 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.extend_from_slice(pieces[(x % 8) as usize]);
            }
            judged_like_serde(&body);
        }
    }
}
