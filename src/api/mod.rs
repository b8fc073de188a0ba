//! What each HTTP request gets: routing, the token, `/health`, `/status`, `/runs`, the page
//! (`/`), `/metrics`, a run's log, and `/run` (read on its connection's thread, then
//! [`crate::run::pipeline::submit`]). The transport —
//! reading requests, limits, writing answers — is [`crate::http`]'s.

pub(crate) mod metrics;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::{Head, Outcome, Request};
use crate::os::logging::Q;
use crate::run::output;
use crate::run::pipeline;
use crate::run::request::Trigger;
use crate::run::trust::{Caller, Peer};
use crate::state::app::App;

/// `/run` requests being read or served at once; more get a 503.
const MAX_INFLIGHT: usize = 64;

/// The paths Looper serves; all but `/health` need the token when one is set.
const KNOWN: [&str; 6] = ["/health", "/run", "/status", "/runs", "/metrics", "/resume"];

/// The tokens a request offers (`Authorization: Bearer` or `X-Looper-Token`).
fn offered_tokens(head: &Head) -> Vec<&str> {
    let bearer = head.header("authorization").filter_map(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.chain(head.header("x-looper-token")).collect()
}

/// Whether the request carries the operator's token (always true when none is set).
fn operator(app: &App, head: &Head) -> bool {
    let Some(token) = app.cfg().api_token.as_deref() else {
        return true;
    };
    let mut ok = false;
    for offered in offered_tokens(head) {
        ok |= crate::os::tokens::constant_time_eq(offered.as_bytes(), token.as_bytes());
    }
    ok
}

/// The run whose token the request carries, if any.
fn run_token_of(app: &App, head: &Head) -> Option<(String, std::path::PathBuf)> {
    offered_tokens(head)
        .into_iter()
        .find_map(|t| app.registry().run_of_token(t))
}

fn unauthorized() -> ApiError {
    ApiError::new(
        401,
        "unauthorized: send the token as `Authorization: Bearer <token>` or `X-Looper-Token: <token>`",
    )
}

/// Who sends a request with an effect (`POST /run`, `/resume`). A loopback connection whose
/// client belongs to a run is that run's, whatever token it carries (an agent may have read
/// the operator's from disk); one whose client has already closed its end is refused (a
/// run's process could send and leave before it is seen); then the operator's token; then a
/// run's own token; then, with no token configured, a local caller.
fn caller_of(app: &App, rq: &Request) -> Result<Caller, ApiError> {
    let as_run = |run_id: String, workspace: Option<std::path::PathBuf>| {
        let workspace = workspace
            .or_else(|| app.registry().workspace_of(&run_id))
            .and_then(|w| w.canonicalize().ok())
            .ok_or_else(|| {
                ApiError::new(
                    403,
                    format!("this request comes from run {run_id}, whose workspace Looper does not know: nothing was changed"),
                )
            })?;
        Ok(Caller::Run {
            run_id: Some(run_id),
            workspace,
        })
    };
    if let (Some(peer), Some(local)) = (rq.peer, rq.local) {
        match crate::run::trust::run_of_connection(app, peer, local) {
            Peer::Run(run_id) => return as_run(run_id, None),
            Peer::Gone => {
                return Err(ApiError::bad_request(
                    "the client closed its end of the connection before Looper could tell who sent the request: keep it open until the answer. Nothing was changed",
                ))
            }
            Peer::NotRun => {}
        }
    }
    if app.cfg().api_token.is_some() && operator(app, &rq.head) {
        return Ok(Caller::Operator);
    }
    if let Some((run_id, workspace)) = run_token_of(app, &rq.head) {
        return as_run(run_id, Some(workspace));
    }
    if app.cfg().api_token.is_some() {
        return Err(unauthorized());
    }
    Ok(Caller::Local)
}

/// What a browser may not make Looper do: answer a page that rebinds its own name to this
/// address (every path), or take an effect or hand data to another site.
fn browser_check(app: &App, head: &Head) -> Result<(), ApiError> {
    if head.header("host").nth(1).is_some() {
        return Err(ApiError::bad_request("a request carries one Host header"));
    }
    if let Some(host) = head.header("host").next() {
        if !app.cfg().host_allowed(host) {
            return Err(ApiError::new(
                403,
                format!(
                    "Host {host:?} is not this server's name: use 127.0.0.1 or localhost, or add the name to LOOPER_ALLOWED_HOSTS"
                ),
            ));
        }
    }
    let navigation = matches!(head.method.as_str(), "GET" | "HEAD") && head.path == "/";
    if navigation || head.path == "/health" {
        return Ok(());
    }
    if let Some(site) = head.header("sec-fetch-site").next() {
        if !matches!(site.to_ascii_lowercase().as_str(), "same-origin" | "none") {
            return Err(cross_site());
        }
    }
    if let Some(origin) = head.header("origin").next() {
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        let host = head.header("host").next();
        let same = matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
        if !same {
            return Err(cross_site());
        }
    }
    Ok(())
}

fn cross_site() -> ApiError {
    ApiError::new(
        403,
        "cross-site request refused: Looper answers its own page and clients such as curl, not other web sites",
    )
}

/// `POST /run` takes JSON only: a browser sends `text/plain` and forms to any site without
/// asking, JSON only after asking (CORS), which Looper never grants.
fn require_json(head: &Head) -> Result<(), ApiError> {
    let media = head.header("content-type").next().map(|v| {
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if media.as_deref() == Some("application/json") {
        return Ok(());
    }
    Err(ApiError::new(
        415,
        format!(
            "send the body as Content-Type: application/json (got {}); nothing was changed",
            media
                .as_deref()
                .map_or("none".to_string(), |m| format!("{m:?}"))
        ),
    ))
}

/// The page (`GET /`): one self-contained file, no data of its own (it asks the API).
const PAGE: &str = include_str!("../../assets/index.html");

/// Answers one request.
fn handle(app: &Arc<App>, rq: &mut Request) -> Outcome {
    let started = Instant::now();
    let (method, path) = (rq.head.method.as_str(), rq.head.path.as_str());
    if let Err(e) = browser_check(app, &rq.head) {
        log::warn!(
            "http.refused method={} path={} status={} error={}",
            Q(method),
            Q(path),
            e.status,
            Q(&e.message)
        );
        return Outcome::json(e.status, e.body().to_string());
    }
    if path == "/health" && matches!(method, "GET" | "HEAD") {
        // Health probes are frequent: only at DEBUG, and no id or lock.
        log::debug!("http.end method={method} path=/health status=200");
        return Outcome::json(200, r#"{"ok":true}"#.to_string());
    }
    // Reading is frequent too (the page polls every 2 s): at DEBUG. Triggers stay at INFO.
    let level = if method == "GET" {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    let request_id = app.registry().new_id();
    log::log!(
        level,
        "http.start request_id={request_id} method={} path={}",
        Q(method),
        Q(path)
    );
    let outcome = route(app, rq, &request_id)
        .unwrap_or_else(|e| Outcome::json(e.status, e.body().to_string()));
    log::log!(
        level,
        "http.end request_id={request_id} method={} path={} status={} duration_ms={:.3}",
        Q(&rq.head.method),
        Q(&rq.head.path),
        outcome.status,
        started.elapsed().as_secs_f64() * 1000.0
    );
    outcome
}

fn ok_json(value: Value) -> Outcome {
    Outcome::json(200, value.to_string())
}

fn route(app: &Arc<App>, rq: &mut Request, request_id: &str) -> Result<Outcome, ApiError> {
    let (method, path) = (rq.head.method.as_str(), rq.head.path.as_str());
    if path == "/" {
        return match method {
            "GET" | "HEAD" => Ok(Outcome {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: PAGE.as_bytes().to_vec(),
                headers: vec![
                    ("Cache-Control", "no-store".into()),
                    // Never inside another site's frame (clickjacking the buttons).
                    ("Content-Security-Policy", "frame-ancestors 'none'".into()),
                    ("X-Frame-Options", "DENY".into()),
                ],
            }),
            m => Err(ApiError::new(
                405,
                format!("method {m} is not allowed on /"),
            )),
        };
    }
    let run_file = run_file_of(path);
    if !KNOWN.contains(&path) && run_file.is_none() {
        return Err(ApiError::new(404, format!("no such endpoint: {path}")));
    }
    if (path, method) == ("/run", "POST") {
        return serve_run(app, rq, request_id).map(ok_json);
    }
    if (path, method) == ("/resume", "POST") {
        return serve_resume(app, rq, request_id).map(ok_json);
    }
    if path != "/health" && !operator(app, &rq.head) {
        if run_token_of(app, &rq.head).is_some() {
            return Err(ApiError::new(
                403,
                "a run's token is good for its hand-off (POST /run) only",
            ));
        }
        return Err(unauthorized());
    }
    match (path, method) {
        ("/status", "GET") => Ok(ok_json(status(app))),
        ("/runs", "GET") => runs(app, &rq.head).map(ok_json),
        ("/metrics", "GET") => Ok(Outcome {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: crate::api::metrics::render(&metrics_snapshot(app)).into_bytes(),
            headers: Vec::new(),
        }),
        (_, "GET") => match run_file {
            Some((id, RunFile::Log)) => run_log(app, id, &rq.head),
            Some((id, RunFile::LastMessage)) => run_last_message(app, id),
            None => Err(ApiError::new(
                405,
                format!("method GET is not allowed on {path}"),
            )),
        },
        (p, m) => Err(ApiError::new(
            405,
            format!("method {m} is not allowed on {p}"),
        )),
    }
}

/// The files a run has beside its history row.
#[derive(Clone, Copy)]
enum RunFile {
    Log,
    LastMessage,
}

/// `/runs/<run_id>/log` and `/runs/<run_id>/last-message`: the run id and which file.
fn run_file_of(path: &str) -> Option<(&str, RunFile)> {
    let rest = path.strip_prefix("/runs/")?;
    if let Some(id) = rest.strip_suffix("/log") {
        return Some((id, RunFile::Log));
    }
    rest.strip_suffix("/last-message")
        .map(|id| (id, RunFile::LastMessage))
}

/// Opens a file of the run the history names `run_id`, only when it lies in the log
/// directory: the id is looked up, never made into a path.
fn open_run_file(app: &App, run_id: &str, file: RunFile) -> Result<std::fs::File, ApiError> {
    let unknown = || ApiError::new(404, format!("no such run: {run_id}"));
    let row = app.history().get(run_id).ok_or_else(unknown)?;
    let (path, what) = match file {
        RunFile::Log => (row.log_path.clone(), "log"),
        RunFile::LastMessage => (
            crate::report::last_message_path(&row.log_path),
            "last message",
        ),
    };
    let gone = |_| ApiError::new(404, format!("the {what} of run {run_id} is gone"));
    let dir = app.cfg().log_dir.canonicalize().map_err(gone)?;
    let path = path.canonicalize().map_err(gone)?;
    if path.parent() != Some(dir.as_path()) {
        return Err(unknown());
    }
    std::fs::File::open(&path).map_err(gone)
}

/// `GET /runs/<run_id>/log?offset=N`: the bytes of a run's log from byte N (the last MiB
/// without an offset), at most [`output::MAX_LOG_CHUNK`], with the log's size in `X-Log-Size`.
fn run_log(app: &App, run_id: &str, head: &Head) -> Result<Outcome, ApiError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = open_run_file(app, run_id, RunFile::Log)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = match head.query("offset") {
        None => size.saturating_sub(output::MAX_LOG_CHUNK),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request("offset must be a whole number of bytes"))?
            .min(size),
    };
    let mut body = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(output::MAX_LOG_CHUNK).read_to_end(&mut body))
        .map_err(|e| ApiError::new(500, format!("cannot read the log of run {run_id}: {e}")))?;
    Ok(Outcome {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body,
        headers: vec![
            ("X-Log-Size", size.to_string()),
            ("X-Log-Offset", offset.to_string()),
        ],
    })
}

/// `GET /runs/<run_id>/last-message`: the agent's last message in that run, whole (as
/// kept beside its log, at most [`crate::report::MESSAGE_BYTES`]).
fn run_last_message(app: &App, run_id: &str) -> Result<Outcome, ApiError> {
    use std::io::Read;
    let file = open_run_file(app, run_id, RunFile::LastMessage)?;
    let mut body = Vec::new();
    file.take(crate::report::MESSAGE_BYTES as u64)
        .read_to_end(&mut body)
        .map_err(|e| {
            ApiError::new(
                500,
                format!("cannot read the last message of run {run_id}: {e}"),
            )
        })?;
    Ok(Outcome {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body,
        headers: Vec::new(),
    })
}

/// A place among the `/run`s in flight, given back on drop (panics included).
struct Inflight<'a>(&'a AtomicUsize);

impl<'a> Inflight<'a> {
    fn take(count: &'a AtomicUsize) -> Option<Inflight<'a>> {
        let taken = count.fetch_add(1, Ordering::AcqRel) < MAX_INFLIGHT;
        let slot = Inflight(count);
        taken.then_some(slot)
    }
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `POST /run`: the body, then the pipeline. A panic anywhere in it is a JSON `500` (the
/// panic itself is a `thread.panicked` line in the log); the guards it held are released.
fn serve_run(app: &Arc<App>, rq: &mut Request, request_id: &str) -> Result<Value, ApiError> {
    let Some(_slot) = Inflight::take(app.inflight()) else {
        return Err(ApiError::new(503, "busy: too many requests in flight"));
    };
    let caller = caller_of(app, rq)?;
    require_json(&rq.head)?;
    let body = rq.body()?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pipeline::submit(app, &body, request_id, Trigger::Http, &caller)
    }))
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            500,
            "internal error while serving this request (thread.panicked in the server log)",
        ))
    });
    if let Err(e) = &outcome {
        log::warn!(
            "run.fail request_id={request_id} status={} error={}",
            e.status,
            Q(&e.message)
        );
    }
    outcome
}

/// `POST /resume` (`looper resume`): the operator ends the loop's holds, of the workspace
/// the body names (`{"workspace": …}`) or of every workspace (`{}`). A run may not: a
/// hand-off is good for asking for the next run only.
fn serve_resume(app: &Arc<App>, rq: &mut Request, request_id: &str) -> Result<Value, ApiError> {
    if let Caller::Run { run_id, .. } = caller_of(app, rq)? {
        return Err(ApiError::new(
            403,
            format!(
                "run {} may not resume the loop: only the operator may (looper resume, a trigger of theirs). Nothing was changed",
                run_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    require_json(&rq.head)?;
    let body = rq.body()?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not JSON: {e}; nothing was changed"))
    })?;
    let Some(fields) = value.as_object() else {
        return Err(ApiError::bad_request(
            "the body is a JSON object: {} or {\"workspace\": \"<dir>\"}; nothing was changed",
        ));
    };
    if let Some(other) = fields.keys().find(|k| *k != "workspace") {
        return Err(ApiError::bad_request(format!(
            "{other} is not a /resume field (only workspace); nothing was changed"
        )));
    }
    let workspace = match fields.get("workspace") {
        None | Some(Value::Null) => None,
        Some(Value::String(w)) if !w.trim().is_empty() => {
            Some(pipeline::workspace_named(app, Some(w)))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "workspace is a directory's path (a non-empty string); nothing was changed",
            ))
        }
    };
    let ended =
        crate::autoloop::judge::resume(app, workspace.as_deref(), &format!("resume:{request_id}"));
    let resumed: Vec<Value> = ended
        .iter()
        .map(|(ws, h)| {
            json!({
                "workspace": ws,
                "state": h.state,
                "reason": h.reason,
                "detail": h.detail,
            })
        })
        .collect();
    if !ended.is_empty() {
        let names: Vec<String> = ended
            .iter()
            .map(|(ws, h)| format!("{ws} ({} {})", h.state, h.reason))
            .collect();
        crate::notify::announce::say(
            app,
            &format!(
                "Looper: the operator resumed the loop in {}; autopoll goes on there.",
                names.join(", ")
            ),
            "resume",
        );
    }
    Ok(json!({
        "ok": true,
        "request_id": request_id,
        "workspace": workspace.map(|w| w.to_string_lossy().into_owned()),
        "resumed": resumed,
    }))
}

/// What `/metrics` shows, from the registry and autopoll's policy.
fn metrics_snapshot(app: &App) -> crate::api::metrics::Snapshot {
    let (started, ended) = app.registry().counts();
    let poll = app.policy().view(std::time::Instant::now());
    let holds = current_holds(app);
    crate::api::metrics::Snapshot {
        started: started.into_iter().map(|(t, n)| (t.as_str(), n)).collect(),
        ended: ended.into_iter().map(|(o, n)| (o.as_str(), n)).collect(),
        active: app
            .registry()
            .active()
            .map(|r| (r.started.elapsed().as_secs_f64(), r.quiet().as_secs_f64())),
        crashes: poll.crashes,
        backoff_seconds: poll.backoff_left.map_or(0.0, |d| d.as_secs_f64()),
        paused_until: holds
            .iter()
            .find(|(_, h)| h.reason == "usage_limit")
            .and_then(|(_, h)| h.until())
            .filter(|t| *t > chrono::Local::now())
            .map(|t| t.timestamp()),
        autopoll_enabled: app.cfg().autopoll,
        runs: run_figures(app),
        holds: holds
            .iter()
            .map(|(w, h)| {
                (
                    w.clone(),
                    h.state.clone(),
                    h.reason.clone(),
                    h.until().map(|t| t.timestamp()),
                )
            })
            .collect(),
    }
}

/// Every workspace's hold now (one whose time is over ends here).
fn current_holds(app: &App) -> Vec<(String, crate::state::loopstate::Hold)> {
    let now = chrono::Local::now();
    for (ws, _) in app.loop_state().holds() {
        let _ = app.loop_state().hold_of(std::path::Path::new(&ws), now);
    }
    app.loop_state().holds()
}

/// The loop of the workspace autopoll serves, for `/status` and the page: `running`,
/// `idle`, `paused` or `finished`, with the hold's reason, detail and times.
fn loop_status(app: &App, holds: &[(String, crate::state::loopstate::Hold)]) -> Value {
    let ws = crate::autopoll::workspace(app);
    let key = ws.as_ref().map(|w| w.to_string_lossy().into_owned());
    let hold = holds
        .iter()
        .find(|(w, _)| Some(w) == key.as_ref())
        .map(|(_, h)| h);
    let state = match hold {
        Some(h) => h.state.clone(),
        None if app.registry().active().is_some() => "running".into(),
        None => "idle".into(),
    };
    json!({
        "workspace": key,
        "state": state,
        "reason": hold.map(|h| &h.reason),
        "detail": hold.map(|h| &h.detail),
        "since": hold.map(|h| &h.since),
        "until": hold.and_then(|h| h.until.as_ref()),
        "run_id": hold.and_then(|h| h.run_id.as_ref()),
    })
}

/// The figures `/metrics` takes from the runs' history rows: tokens by workspace, the
/// newest run's tokens and TODO count, the newest rate limits.
fn run_figures(app: &App) -> crate::api::metrics::RunFigures {
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
    let ended = || rows.iter().filter(|r| r.ended_at.is_some());
    let limits = ended().find_map(|r| r.report.rate_limits.clone());
    crate::api::metrics::RunFigures {
        tokens_by_workspace: tokens.into_iter().collect(),
        commits_by_workspace: commits.into_iter().collect(),
        last_run_ended_at: ended()
            .next()
            .and_then(|r| unix_time(r.ended_at.as_deref()?)),
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

/// An RFC 3339 time of a history row as Unix time.
fn unix_time(rfc3339: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .ok()
        .map(|t| t.timestamp())
}

/// The TODO list as the newest run that counted it left it (`null` without
/// `LOOPER_TODO_FILE` or before a count).
fn todo_status(app: &App) -> Value {
    let file = app.cfg().report_sources.todo_file.as_ref();
    let counted = file.and_then(|_| {
        app.history()
            .newest(crate::state::history::MAX_ROWS)
            .into_iter()
            .find_map(|r| Some((r.report.todo_after?, r.run_id)))
    });
    match (file, counted) {
        (Some(file), Some((t, run_id))) => json!({
            "file": file.to_string_lossy(), "open": t.open, "done": t.done, "after_run": run_id
        }),
        _ => Value::Null,
    }
}

/// `GET /status`: what runs, what ended last, what autopoll will do.
fn status(app: &App) -> Value {
    let active = app.registry().active().map(|r| {
        let last_output_at = std::fs::metadata(&r.log_path)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| chrono::DateTime::<chrono::Local>::from(t).to_rfc3339());
        json!({
            "run_id": r.run_id,
            "request_id": r.request_id,
            "pid": r.pid,
            "workspace": r.workspace.to_string_lossy(),
            "log_path": r.log_path.to_string_lossy(),
            "started_at": r.started_at,
            "last_output_at": last_output_at,
        })
    });
    let last_exit = app.registry().last_exit().or_else(|| {
        // After a restart: the newest finished run in the history.
        let row = app.history().last_finished()?;
        Some(crate::state::registry::Exit {
            return_code: row.return_code?,
            ended_at: row.ended_at?,
            duration_seconds: row.duration_seconds.unwrap_or(0.0),
            run_id: row.run_id,
        })
    });
    let poll = app.policy().view(std::time::Instant::now());
    let holds = current_holds(app);
    let state = loop_status(app, &holds);
    let in_time = |d: std::time::Duration| crate::autopoll::at(std::time::Instant::now() + d);
    let backoff_until = poll.backoff_left.map(in_time);
    json!({
        "ok": true,
        "run_in_progress": app.registry().guard_held(),
        "active": active,
        "last_exit": last_exit,
        "todo": todo_status(app),
        "autopoll": {
            "enabled": app.cfg().autopoll,
            "interval_seconds": app.cfg().idle_poll.as_secs_f64(),
            "stale_seconds": app.cfg().idle_stale.as_secs_f64(),
            "next_tick_at": if app.cfg().autopoll { poll.next_tick_in.map(in_time) } else { None },
            "backoff_until": backoff_until,
            "consecutive_crashes": poll.crashes,
            "paused_until": if state["state"] == "paused" { state["until"].clone() } else { Value::Null },
            "pause_reason": if state["state"] == "paused" { state["reason"].clone() } else { Value::Null },
        },
        "loop": state,
        "holds": holds
            .iter()
            .map(|(w, h)| {
                let mut v = json!(h);
                v["workspace"] = json!(w);
                v
            })
            .collect::<Vec<_>>(),
        "stop_scope": app.cfg().stop_scope.as_str(),
        "stop_method": app.stop_method(),
        "helper_jail": crate::os::jail::helpers().map_or("none", |h| h.method.as_str()),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /runs?limit=N`: the newest runs first.
fn runs(app: &App, head: &Head) -> Result<Value, ApiError> {
    let limit = match head.query("limit") {
        None => 50,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::state::history::MAX_ROWS).contains(n))
            .ok_or_else(|| ApiError::bad_request("limit must be a whole number from 1 to 1000"))?,
    };
    Ok(json!({"ok": true, "runs": app.history().newest(limit)}))
}

/// Looper's answers, for the transport.
impl crate::http::Handler for App {
    fn handle(self: &Arc<Self>, rq: &mut Request) -> Outcome {
        handle(self, rq)
    }

    fn shutdown(&self) -> &crate::os::shutdown::Shutdown {
        App::shutdown(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inflight_slot_is_given_back_on_every_path() {
        let count = AtomicUsize::new(0);
        let held: Vec<_> = (0..MAX_INFLIGHT)
            .map(|_| Inflight::take(&count).unwrap())
            .collect();
        assert!(Inflight::take(&count).is_none(), "past the limit");
        drop(held);
        let _ = std::panic::catch_unwind(|| {
            let _slot = Inflight::take(&count).unwrap();
            panic!("a worker panics");
        });
        assert_eq!(count.load(Ordering::Acquire), 0);
    }
}
