//! A stand-in for the model server the real Codex CLI talks to (the Responses API, streamed
//! as server-sent events), for `scripts/test-real-codex`. It listens on 127.0.0.1, prints
//! `listening <port>` on stdout, and plays a simple scripted model:
//!
//! - the prompt (the last user message) names shell commands on lines starting with `RUN: `;
//! - each request, the model calls `exec_command` for the next command not yet run, polls a
//!   command that is still running with `write_stdin`, and answers "done" when all ran.
//!
//! Every response reports the usage of [`USAGE`] (input, cached, output, reasoning tokens) and
//! the account's rate-limit use in the `x-codex-primary-*` / `x-codex-secondary-*` headers
//! codex reads ([`PRIMARY`], [`SECONDARY`], resetting an hour and three days from now), so a
//! test can hold what Looper records against what the model sent.
//!
//! `FAKE_MODEL_LIMITS=<path>` names a file read at each request with other windows to report
//! (see [`windows`]).
//!
//! With `FAKE_MODEL_USAGE_LIMIT=<unix seconds>` every request is answered `429` with codex's
//! `usage_limit_reached` error, resetting at that time. With `FAKE_MODEL_LOG=<path>` each
//! request body is appended to that file (for a person reading what codex sent).
//!
//! usage: fake_model [--port N]

use std::io::Write;

use serde_json::{json, Value};

/// How long a tool command may run before codex hands back a session to poll, and how long
/// each poll waits (codex clamps both to 250–30000 ms).
const YIELD_MS: u64 = 1000;
const POLL_MS: u64 = 10_000;

/// The usage each response reports: input, cached input, output, reasoning tokens (codex
/// counts input − cached + output: 11,023 a request).
const USAGE: [u64; 4] = [12_345, 2_000, 678, 100];
/// The rate-limit windows each response reports: used percent, window minutes, seconds
/// until the reset.
const PRIMARY: (f64, u64, i64) = (12.5, 300, 3600);
const SECONDARY: (f64, u64, i64) = (40.0, 10_080, 3 * 86_400);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = match args.as_slice() {
        [] => 0,
        [flag, n] if flag == "--port" => n.parse().expect("--port takes a number"),
        _ => {
            eprintln!("usage: fake_model [--port N]");
            std::process::exit(2);
        }
    };
    let server = tiny_http::Server::http(("127.0.0.1", port)).expect("bind 127.0.0.1");
    let port = server.server_addr().to_ip().expect("an IP address").port();
    println!("listening {port}");
    let _ = std::io::stdout().flush();
    let usage_limit: Option<i64> = std::env::var("FAKE_MODEL_USAGE_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok());
    let log = std::env::var_os("FAKE_MODEL_LOG");
    for mut rq in server.incoming_requests() {
        let mut body = Vec::new();
        let _ = rq.as_reader().read_to_end(&mut body);
        if let Some(path) = &log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{} {}", rq.url(), String::from_utf8_lossy(&body));
            }
        }
        let (status, content_type, text) = if !rq.url().ends_with("/responses") {
            (
                404,
                "application/json",
                r#"{"error":"not here"}"#.to_string(),
            )
        } else if let Some(resets_at) = usage_limit {
            let error = json!({"error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": resets_at,
            }});
            (429, "application/json", error.to_string())
        } else {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (200, "text/event-stream", events(&next_item(&request)))
        };
        let mut response = tiny_http::Response::from_string(text)
            .with_status_code(status)
            .with_header(header("Content-Type", content_type));
        if status == 200 {
            for (name, value) in rate_limit_headers() {
                response.add_header(header(&name, &value));
            }
        }
        let _ = rq.respond(response);
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

/// The windows this request reports: [`PRIMARY`] and [`SECONDARY`], unless the file named
/// by `FAKE_MODEL_LIMITS` says otherwise, read at each request (so that a test can walk a
/// window): `<used>:<minutes>:<seconds to the reset>` for the 5-hour window, a comma, the
/// same for the weekly one (`-` leaves a window out).
fn windows() -> Vec<(&'static str, (f64, u64, i64))> {
    let defaults = vec![("primary", PRIMARY), ("secondary", SECONDARY)];
    let Some(path) = std::env::var_os("FAKE_MODEL_LIMITS") else {
        return defaults;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return defaults;
    };
    let parse = |w: &str| -> Option<(f64, u64, i64)> {
        let n: Vec<&str> = w.trim().split(':').collect();
        Some((
            n.first()?.parse().ok()?,
            n.get(1)?.parse().ok()?,
            n.get(2)?.parse().ok()?,
        ))
    };
    let mut parts = text.split(',');
    ["primary", "secondary"]
        .into_iter()
        .filter_map(|name| Some((name, parse(parts.next()?)?)))
        .collect()
}

/// The account's use of both windows, as the model server tells codex.
fn rate_limit_headers() -> Vec<(String, String)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    windows()
        .into_iter()
        .flat_map(|(window, (percent, minutes, resets_in))| {
            [
                (
                    format!("x-codex-{window}-used-percent"),
                    percent.to_string(),
                ),
                (
                    format!("x-codex-{window}-window-minutes"),
                    minutes.to_string(),
                ),
                (
                    format!("x-codex-{window}-reset-at"),
                    (now + resets_in).to_string(),
                ),
            ]
        })
        .collect()
}

fn message_text(item: &Value) -> String {
    match &item["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The output text of a `function_call_output` item.
fn output_text(item: &Value) -> String {
    match &item["output"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The session id in "Process running with session ID N", when the command still runs.
fn running_session(output: &str) -> Option<u64> {
    let rest = output.split("session ID ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the scripted model does next, given everything codex sent.
fn next_item(request: &Value) -> Value {
    let input = request["input"].as_array().cloned().unwrap_or_default();
    let prompt = input
        .iter()
        .filter(|i| i["type"] == "message" && i["role"] == "user")
        .map(message_text)
        .next_back()
        .unwrap_or_default();
    let commands: Vec<&str> = prompt
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("RUN: "))
        .collect();
    let ran = input
        .iter()
        .filter(|i| i["type"] == "function_call" && i["name"] == "exec_command")
        .count();
    let calls = input
        .iter()
        .filter(|i| i["type"] == "function_call")
        .count();
    let call_id = format!("call_{calls}");
    if let Some(last) = input.last().filter(|i| i["type"] == "function_call_output") {
        if let Some(session) = running_session(&output_text(last)) {
            let arguments = json!({"session_id": session, "chars": "", "yield_time_ms": POLL_MS});
            return json!({"type": "function_call", "call_id": call_id, "name": "write_stdin",
                          "arguments": arguments.to_string()});
        }
    }
    if let Some(cmd) = commands.get(ran) {
        let arguments = json!({"cmd": cmd, "yield_time_ms": YIELD_MS});
        return json!({"type": "function_call", "call_id": call_id, "name": "exec_command",
                      "arguments": arguments.to_string()});
    }
    json!({"type": "message", "role": "assistant",
           "content": [{"type": "output_text", "text": "done"}]})
}

/// One streamed response holding `item`.
fn events(item: &Value) -> String {
    let id = "resp_fake";
    let [input, cached, output, reasoning] = USAGE;
    let usage = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
                       "output_tokens": output,
                       "output_tokens_details": {"reasoning_tokens": reasoning},
                       "total_tokens": input + output});
    [
        json!({"type": "response.created", "response": {"id": id}}),
        json!({"type": "response.output_item.done", "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "usage": usage}}),
    ]
    .iter()
    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    }

    #[test]
    fn runs_each_command_polls_and_ends() {
        let prompt = user("do this\nRUN: sleep 5\nRUN: echo hi");
        let first = next_item(&json!({"input": [user("<env>"), prompt.clone()]}));
        assert_eq!(first["name"], "exec_command");
        assert!(first["arguments"].as_str().unwrap().contains("sleep 5"));
        let running = json!({"type": "function_call_output", "call_id": "call_0",
                             "output": "Process running with session ID 7\nOutput:\n"});
        let poll = next_item(&json!({"input": [prompt.clone(), first.clone(), running]}));
        assert_eq!(poll["name"], "write_stdin");
        assert!(poll["arguments"]
            .as_str()
            .unwrap()
            .contains("\"session_id\":7"));
        let exited = json!({"type": "function_call_output", "call_id": "call_1",
                            "output": "Process exited with code 0\nOutput:\n"});
        let second = next_item(
            &json!({"input": [prompt.clone(), first.clone(), poll.clone(), exited.clone()]}),
        );
        assert!(second["arguments"].as_str().unwrap().contains("echo hi"));
        let done =
            next_item(&json!({"input": [prompt, first, poll, exited.clone(), second, exited]}));
        assert_eq!(done["type"], "message");
    }
}
