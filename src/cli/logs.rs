//! `looper logs` and the following of a run's log that `logs -f` and `trigger --follow`
//! share.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::model::StopReason;

use super::args::Logs;
use super::client::{base_url, call, fetch_log};
use super::Fail;

/// How often a follow looks for new output (and `trigger` for an answer in the inbox).
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// `looper logs [RUN_ID] [-f | --follow-loop]`: a run's log (the active run's, else the
/// newest run's), followed with `-f` until the run ends, and with `--follow-loop` on into
/// each next run's.
pub fn logs(l: &Logs, env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let base = base_url(l.url.as_deref(), env);
    let mut run_id = match &l.run_id {
        Some(id) => id.clone(),
        None => default_run(&base, env, l.follow)?,
    };
    if !l.follow {
        let _ = out.write_all(&fetch_log(&base, env, &run_id, None)?);
        return Ok(0);
    }
    loop {
        // The run's pid and log file: when Looper goes away meanwhile (stopped, restarted),
        // the run's end and its last lines (the return code's among them) come from these.
        let row = find_row(&base, env, &run_id)?;
        let pid = row.as_ref().and_then(|r| r["pid"].as_u64());
        let local = row
            .as_ref()
            .and_then(|r| r["log_path"].as_str().map(str::to_string));
        let rc = follow(&base, env, &run_id, pid, local.as_deref(), out)?;
        let next = match next_run(&base, env, &run_id, l.follow_loop) {
            Ok(next) => next,
            Err(Fail::Error(e)) => {
                note!("looper: run {run_id} ended; no next run to follow: {e}");
                None
            }
            Err(e) => return Err(e),
        };
        match (&next, l.follow_loop) {
            (Some((id, how)), true) => {
                note!("looper: run {run_id} {how}; following run {id}");
                let _ = writeln!(out, "\n# looper: run {run_id} {how}; run {id} follows\n");
            }
            (Some((id, how)), false) => {
                note!(
                    "looper: run {run_id} {how} (looper logs {id} -f; --follow-loop goes on by itself)"
                );
            }
            (None, _) => {}
        }
        match next {
            Some((id, _)) if l.follow_loop => run_id = id,
            _ => return Ok(if rc == Some(0) { 0 } else { 1 }),
        }
    }
}

/// The id of the run that is active now, as `/status` says; else the newest run's (said
/// on stderr), so that the log of a loop that just went quiet is still one command away.
/// Before any run, `follow` waits for the first (autopoll's first tick, or a trigger).
fn default_run(base: &str, env: &HashMap<String, String>, follow: bool) -> Result<String, Fail> {
    let mut said = false;
    let newest = loop {
        let (_, s) = call("GET", base, "/status", None, env)?;
        if let Some(id) = s["active"]["run_id"].as_str() {
            return Ok(id.to_string());
        }
        let (_, runs) = call("GET", base, "/runs?limit=1", None, env)?;
        match &runs["runs"][0] {
            Value::Null if follow => {
                if !said {
                    note!("looper: no run yet; waiting for the first (autopoll starts it, or `looper trigger`)");
                    said = true;
                }
                std::thread::sleep(FOLLOW_POLL);
            }
            newest => break newest.clone(),
        }
    };
    let id = newest["run_id"].as_str().ok_or_else(|| {
        Fail::Error("no run yet: nothing to show (`looper trigger` starts one)".into())
    })?;
    note!(
        "looper: no run is active; the newest is run {id} ({}, ended {})",
        newest["outcome"].as_str().unwrap_or("ended"),
        newest["ended_at"].as_str().unwrap_or("?")
    );
    Ok(id.to_string())
}

/// The run that came after `run_id` ended: the next one started (with how `run_id` ended,
/// in words). With `wait`, one is waited for when none has started yet (autopoll, or the
/// next trigger, starts it); without, `None` then.
fn next_run(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
    wait: bool,
) -> Result<Option<(String, String)>, Fail> {
    let mut tries = 0;
    loop {
        let (_, runs) = call("GET", base, "/runs?limit=100", None, env)?;
        let rows: Vec<&serde_json::Value> = runs["runs"]
            .as_array()
            .map(|r| r.iter().collect())
            .unwrap_or_default();
        // Newest first: the row just before `run_id`'s is the one started after it.
        let at = rows.iter().position(|r| r["run_id"] == run_id);
        let stop = at.and_then(|i| {
            serde_json::from_value::<StopReason>(rows[i]["stop_reason"].clone()).ok()
        });
        let replaced = match stop {
            Some(StopReason::HandedOff) => Some("handed off to"),
            Some(StopReason::Replaced) => Some("was replaced by"),
            _ => None,
        };
        if let Some(next) = at.filter(|i| *i > 0).map(|i| rows[i - 1]) {
            let id = next["run_id"].as_str().unwrap_or_default().to_string();
            match replaced {
                Some(words) => return Ok(Some((id.clone(), format!("{words} run {id}")))),
                None if wait => {
                    let outcome = at.and_then(|i| rows[i]["outcome"].as_str());
                    let how = format!("ended ({})", outcome.unwrap_or("?"));
                    return Ok(Some((id, how)));
                }
                None => {}
            }
        }
        // A replacement is registered just after the stop: looked for a few seconds.
        tries += 1;
        if !wait && (replaced.is_none() || tries > 10) {
            return Ok(None);
        }
        std::thread::sleep(FOLLOW_POLL * 5);
    }
}

/// Run `run_id`'s row among the newest in the server's history (`None`: fallen out of them).
fn find_row(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
) -> Result<Option<serde_json::Value>, Fail> {
    let (_, mut runs) = call("GET", base, "/runs?limit=100", None, env)?;
    let rows = runs["runs"].as_array_mut().map(std::mem::take);
    Ok(rows.and_then(|rows| rows.into_iter().find(|r| r["run_id"] == run_id)))
}

/// Whether run `run_id` has ended, as the server's history says: `Some(return code)` once
/// it has (`Some(None)`: ended, code unknown), `None` while it runs. `Err` when the server
/// cannot be asked.
fn run_end(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
) -> Result<Option<Option<i32>>, Fail> {
    Ok(match find_row(base, env, run_id)? {
        Some(r) if r["ended_at"].is_null() => None,
        Some(r) => Some(r["return_code"].as_i64().map(|c| c as i32)),
        // Fallen out of the newest rows: long over.
        None => Some(None),
    })
}

/// The bytes of the log file at `path` from `offset` on: when the server cannot be asked
/// (inside codex's sandbox, say), a log on this machine is read directly.
/// Only a run log of this user is read (a regular file named `codex-exec-*.log`, opened
/// without following a link or blocking on a FIFO), whatever answered as Looper named.
fn read_local(path: &str, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let name = std::path::Path::new(path).file_name()?.to_str()?;
    if !(name.starts_with("codex-exec-") && name.ends_with(".log")) {
        return None;
    }
    let mut file = crate::os::paths::open_regular(std::path::Path::new(path))?;
    if file.metadata().ok()?.uid() != crate::os::procs::current_uid() {
        return None;
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut chunk = Vec::new();
    file.take(crate::run::output::MAX_LOG_CHUNK)
        .read_to_end(&mut chunk)
        .ok()?;
    Some(chunk)
}

/// Prints a run's log as it grows until the run has ended, and returns its return code
/// (`None`: unknown). The log comes from the server's log API (or, when the server cannot
/// be asked, from `local`, the file on this machine); the end is learnt from the server's
/// history, never from the log's text (which the run itself writes), and while the server
/// cannot be asked, from whether the run's process `pid` still lives.
pub fn follow(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
    pid: Option<u64>,
    local: Option<&str>,
    out: &mut dyn Write,
) -> Result<Option<i32>, Fail> {
    let mut offset = 0u64;
    let mut print_new = |offset: &mut u64| -> bool {
        let chunk = fetch_log(base, env, run_id, Some(*offset))
            .ok()
            .or_else(|| local.and_then(|p| read_local(p, *offset)))
            .unwrap_or_default();
        if !chunk.is_empty() {
            let _ = out.write_all(&chunk);
            let _ = out.flush();
            *offset += chunk.len() as u64;
        }
        chunk.len() as u64 == crate::run::output::MAX_LOG_CHUNK
    };
    loop {
        while print_new(&mut offset) {}
        let ended = match run_end(base, env, run_id) {
            Ok(end) => end,
            Err(_) => {
                let gone = pid.is_none_or(|p| !crate::os::procs::is_alive(p as i32));
                gone.then_some(None)
            }
        };
        if let Some(rc) = ended {
            // The trailer (and anything written last) may land just after the end is known.
            std::thread::sleep(FOLLOW_POLL);
            while print_new(&mut offset) {}
            return Ok(rc);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}
