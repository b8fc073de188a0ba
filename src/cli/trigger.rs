//! `looper trigger`: the `/run` request built from the options, sent over HTTP or left in
//! the run's inbox when HTTP cannot be had, and its answer reported (and the new run
//! followed, with `--follow`).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::args::{Pause, Resume, Trigger};
use super::client::{base_url, call, reachable};
use super::help::Topic;
use super::logs::{follow, FOLLOW_POLL};
use super::Fail;

/// How long `trigger` waits for Looper to answer a request left in its inbox, unless
/// `LOOPER_INBOX_WAIT_SECONDS` says otherwise.
const INBOX_ANSWER_WAIT: Duration = Duration::from_secs(30);

/// Asks for a fresh run, prints the JSON answer (with `--follow`, whose stdout is the run's
/// log, a line of it on stderr), and says on stderr what came of it.
pub fn trigger(
    t: &Trigger,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    let body = request(t, env);
    let base = base_url(t.url.as_deref(), env);
    let Some((status, answer)) = send(t, &base, &body, env)? else {
        return Ok(0);
    };
    // Followed, stdout is the run's log alone (the lines on stderr say what happened);
    // `looper runs` and `/runs` keep the whole answer.
    if !t.follow {
        let _ = writeln!(out, "{answer}");
    }
    let ok = answer["ok"] == json!(true);
    if !ok {
        note!(
            "looper: HTTP {status}: {}",
            answer["error"].as_str().unwrap_or("the server said no")
        );
        return Ok(1);
    }
    let result = &answer["codex_exec_result"];
    if answer["loop_done"] == json!(true) {
        note!(
            "looper: the loop in {} is finished; nothing was stopped, no run started",
            answer["workspace"].as_str().unwrap_or("?")
        );
        return Ok(0);
    }
    if let Some(pids) = answer["killed_codex_exec_pids"].as_array() {
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        match pids.len() {
            0 => note!("looper: no run was live; nothing stopped"),
            n => note!("looper: stopped {n} live run(s): pid {}", pids.join(", ")),
        }
    }
    let said = match answer["zulip_output"].as_str() {
        Some(o) if o.starts_with("skipped") => "not announced (Zulip is not configured)",
        _ => "announced",
    };
    if result.is_null() {
        note!("looper: {said}; no run started");
        return Ok(0);
    }
    let log_path = result["log_path"].as_str().unwrap_or_default().to_string();
    note!(
        "looper: run {} started, pid {}, log {}",
        answer["run_id"].as_str().unwrap_or("?"),
        result["pid"],
        log_path
    );
    if !t.follow {
        return Ok(0);
    }
    let run_id = answer["run_id"].as_str().unwrap_or_default();
    let rc = follow(
        &base,
        env,
        run_id,
        result["pid"].as_u64(),
        Some(&log_path),
        out,
    )?;
    match rc {
        Some(rc) => note!("looper: run exited with return code {rc}"),
        None => note!("looper: run ended; its return code is unknown"),
    }
    Ok(if rc == Some(0) { 0 } else { 1 })
}

/// The `/run` body: what the options say, the workspace made absolute here (the server does
/// not know this shell's working directory), the sending run from `$LOOPER_RUN_ID` unless
/// `--from-run` names one.
fn request(t: &Trigger, env: &HashMap<String, String>) -> Value {
    let mut body = json!({ "zulip_message": t.message });
    if let Some(prompt) = &t.prompt {
        body["codex_prompt"] = json!(prompt);
    }
    if let Some(ws) = &t.workspace {
        body["workspace"] = json!(absolute(ws));
    }
    let from = t
        .from_run
        .clone()
        .or_else(|| env.get("LOOPER_RUN_ID").cloned())
        .filter(|s| !s.trim().is_empty());
    if let Some(from) = from {
        body["from_run_id"] = json!(from);
    }
    if let Some(secs) = t.delay {
        body["codex_exec_delay_seconds"] = json!(secs);
    }
    if t.done {
        body["loop_done"] = json!(true);
    }
    body
}

/// A directory typed on this shell's command line, absolute (the server does not know
/// this shell's working directory).
fn absolute(dir: &Path) -> String {
    std::path::absolute(dir)
        .map(|p| crate::config::normalize(&p))
        .unwrap_or_else(|_| dir.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

/// `looper resume`: `POST /resume`, the answer printed, what ended said on stderr.
pub fn resume(r: &Resume, env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let mut body = json!({});
    if let Some(ws) = &r.workspace {
        body["workspace"] = json!(absolute(ws));
    }
    let base = base_url(r.url.as_deref(), env);
    let (status, answer) = call("POST", &base, "/resume", Some(&body), env)?;
    let _ = writeln!(out, "{answer}");
    if answer["ok"] != json!(true) {
        note!(
            "looper: HTTP {status}: {}",
            answer["error"].as_str().unwrap_or("the server said no")
        );
        return Ok(1);
    }
    let resumed = answer["resumed"].as_array().cloned().unwrap_or_default();
    if resumed.is_empty() {
        note!("looper: nothing was paused or finished; nothing changed");
    }
    for h in resumed {
        note!(
            "looper: resumed {} (was {}: {})",
            h["workspace"].as_str().unwrap_or("?"),
            h["state"].as_str().unwrap_or("?"),
            h["reason"].as_str().unwrap_or("?")
        );
    }
    Ok(0)
}

/// `looper pause`: `POST /pause`; prints the JSON answer, says the loop's state on stderr.
pub fn pause(p: &Pause, env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let mut body = json!({});
    if let Some(ws) = &p.workspace {
        body["workspace"] = json!(absolute(ws));
    }
    if p.finish {
        body["finish"] = json!(true);
    }
    let base = base_url(p.url.as_deref(), env);
    let (status, answer) = call("POST", &base, "/pause", Some(&body), env)?;
    let _ = writeln!(out, "{answer}");
    if answer["ok"] != json!(true) {
        note!(
            "looper: HTTP {status}: {}",
            answer["error"].as_str().unwrap_or("the server said no")
        );
        return Ok(1);
    }
    note!(
        "looper: the loop in {} is {}: autopoll starts nothing there until `looper resume`",
        answer["workspace"].as_str().unwrap_or("?"),
        answer["loop_state"].as_str().unwrap_or("?")
    );
    Ok(0)
}

/// Sends `body` to Looper: through `$LOOPER_INBOX` with `--inbox` or when the server cannot
/// be reached, else over HTTP. The answer's status and JSON; `None` when a request left in
/// the inbox got no answer in time (it stays queued).
fn send(
    t: &Trigger,
    base: &str,
    body: &Value,
    env: &HashMap<String, String>,
) -> Result<Option<(u16, Value)>, Fail> {
    let inbox = env
        .get("LOOPER_INBOX")
        .filter(|p| !p.trim().is_empty())
        .map(std::path::PathBuf::from);
    match inbox {
        Some(dir) if t.inbox || !reachable(base) => through_inbox(&dir, body, inbox_wait(env)?),
        None if t.inbox => Err(Fail::usage(
            Topic::Trigger,
            "--inbox needs LOOPER_INBOX (set in every run Looper starts)",
        )),
        _ => call("POST", base, "/run", Some(body), env).map(Some),
    }
}

/// How long to wait for an answer in the inbox: `$LOOPER_INBOX_WAIT_SECONDS`, else
/// [`INBOX_ANSWER_WAIT`].
fn inbox_wait(env: &HashMap<String, String>) -> Result<Duration, Fail> {
    match env
        .get("LOOPER_INBOX_WAIT_SECONDS")
        .filter(|v| !v.trim().is_empty())
    {
        Some(raw) => crate::config::parse_seconds(raw).map_err(|why| {
            Fail::usage(
                Topic::Trigger,
                format!("LOOPER_INBOX_WAIT_SECONDS: {why}, got {raw:?}"),
            )
        }),
        None => Ok(INBOX_ANSWER_WAIT),
    }
}

/// Leaves `body` in the inbox `dir` (written as `.tmp`, then renamed, so Looper takes it
/// only when complete) and waits for Looper's answer. `None` when none came in time.
fn through_inbox(dir: &Path, body: &Value, wait: Duration) -> Result<Option<(u16, Value)>, Fail> {
    use std::os::unix::fs::OpenOptionsExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("trigger-{stamp}-{}.json", std::process::id());
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(&name));
    let cannot = |e: std::io::Error| Fail::Error(format!("cannot write {}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(cannot)?;
    f.write_all(body.to_string().as_bytes()).map_err(cannot)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(cannot)?;
    note!("looper: queued {}", path.display());
    let answer_path = crate::inbox::answer_path(dir, &name);
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(&answer_path) {
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Fail::Error(format!("{} is not JSON: {e}", answer_path.display())))?;
            let status = answer["status"].as_u64().unwrap_or(0) as u16;
            return Ok(Some((status, answer["body"].clone())));
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    note!(
        "looper: no answer within {} s; the request stays queued in {} for Looper to take",
        wait.as_secs_f64(),
        dir.display()
    );
    Ok(None)
}
