//! The HTTP side: one blocking tiny_http loop that routes each request. `/health` is
//! answered on the loop itself and touches no lock of the run path; a `/run` moves to a
//! worker thread at once (reading its body included), so that a slow client or a slow run
//! never holds the loop.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response};

use crate::app::App;
use crate::logging::Q;
use crate::run::{self, ApiError, Trigger};

/// Largest `/run` body we read (SPEC §2).
pub const MAX_BODY: usize = 1024 * 1024;
/// The longest a client may take to send a `/run` body.
const BODY_DEADLINE: Duration = Duration::from_secs(15);
/// How long to wait before listening again when binding fails, and the first pause when
/// accepting fails again soon after listening again.
const RELISTEN_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause before listening again while accepting keeps failing.
const RELISTEN_MAX_PAUSE: Duration = Duration::from_secs(5);
/// Accept failures further apart than this are unrelated: the next one gets no pause.
const RELISTEN_CALM: Duration = Duration::from_secs(30);
/// A retired server is dropped after this long without a request.
const DRAIN_QUIET: Duration = Duration::from_secs(10);
/// `/run` requests allowed on worker threads at once; more get a 503.
const MAX_INFLIGHT: usize = 64;

fn json_header() -> Header {
    // A constant, valid header: from_bytes cannot fail on it.
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .unwrap_or_else(|_| unreachable!())
}

/// Sends `body` with `status`. A client that hung up is not our failure: ignore the error.
fn respond(rq: Request, status: u16, body: &Value) {
    let response = Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(json_header());
    let _ = rq.respond(response);
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// Whether `rq` carries the token (`Authorization: Bearer` or `X-Looper-Token`).
fn authorized(app: &App, rq: &Request) -> bool {
    let Some(token) = app.cfg.api_token.as_deref() else {
        return true;
    };
    let mut ok = false;
    for h in rq.headers() {
        let value = h.value.as_str().trim();
        let offered = if h.field.equiv("Authorization") {
            match value.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                _ => continue,
            }
        } else if h.field.equiv("X-Looper-Token") {
            value
        } else {
            continue;
        };
        ok |= constant_time_eq(offered.as_bytes(), token.as_bytes());
    }
    ok
}

/// Serves until the server is unblocked at shutdown. tiny_http stops accepting for good
/// after any accept error (say, out of file descriptors), or silently when its accept thread
/// panics (the sweeper notices the listener gone and wakes us): then we listen again on the
/// same address, and serve what still comes in on the old server's open connections.
pub fn serve(app: &Arc<App>, mut server: Arc<tiny_http::Server>, addr: &str) {
    // While descriptors stay exhausted a fresh listener fails at once again: pause before
    // listening again, doubling while failures follow each other, so as not to spin.
    let mut pause = Duration::ZERO;
    let mut last_failure: Option<Instant> = None;
    loop {
        let error = match server.recv() {
            Ok(rq) => {
                handle(app, rq);
                continue;
            }
            Err(_) if app.shutdown.is_set() => return,
            Err(e) => e,
        };
        let error = if app.begin_relisten() {
            "the listening socket is gone (tiny_http's accept thread ended)".to_string()
        } else {
            error.to_string()
        };
        pause = match last_failure {
            Some(t) if t.elapsed() < RELISTEN_CALM => {
                (pause * 2).clamp(RELISTEN_BACKOFF, RELISTEN_MAX_PAUSE)
            }
            _ => Duration::ZERO,
        };
        last_failure = Some(Instant::now());
        log::error!(
            "http.accept_failed error={} action=listen_again pause_ms={}",
            Q(&error),
            pause.as_millis()
        );
        // The retired server is served until it goes quiet, then dropped, which frees its
        // port should it still hold it.
        drain(app, server);
        if app.shutdown.wait(pause) {
            return;
        }
        let Some(fresh) = listen_again(app, addr) else {
            return;
        };
        // A shutdown that began before the fresh server was set found nothing to wake.
        if app.shutdown.is_set() {
            return;
        }
        server = fresh;
    }
}

/// Binds `addr` again, retrying every [`RELISTEN_BACKOFF`]; `None` at shutdown. Each new
/// reason for failing is logged once.
fn listen_again(app: &App, addr: &str) -> Option<Arc<tiny_http::Server>> {
    let mut last_error = String::new();
    loop {
        match crate::server::listen(addr) {
            Ok(s) => {
                let s = Arc::new(s);
                app.set_server(&s);
                log::info!("http.listening addr={}", Q(addr));
                return Some(s);
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    log::error!("http.listen_failed error={} action=retry", Q(&e));
                    last_error = e;
                }
                if app.shutdown.wait(RELISTEN_BACKOFF) {
                    return None;
                }
            }
        }
    }
}

/// Serves the requests still coming in on a retired server's open connections until they
/// go quiet.
fn drain(app: &Arc<App>, old: Arc<tiny_http::Server>) {
    let app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("http-drain".into())
        .spawn(move || {
            while let Ok(Some(rq)) = old.recv_timeout(DRAIN_QUIET) {
                handle(&app, rq);
            }
        });
    if let Err(e) = spawned {
        log::error!("http.drain_failed error={}", Q(&e.to_string()));
    }
}

fn handle(app: &Arc<App>, rq: Request) {
    let started = Instant::now();
    let method = rq.method().clone();
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    if path == "/health" && matches!(method, Method::Get | Method::Head) {
        // Health probes are frequent: only at DEBUG, and no id, lock or allocation beyond
        // the answer itself.
        respond(rq, 200, &json!({"ok": true}));
        log::debug!(
            "http.end method={method} path=/health status=200 duration_ms={:.3}",
            started.elapsed().as_secs_f64() * 1000.0
        );
        return;
    }
    let ex = Exchange {
        request_id: app.new_id(),
        method,
        path,
        started,
    };
    log::info!(
        "http.start request_id={} method={} path={}",
        ex.request_id,
        ex.method,
        Q(&ex.path)
    );
    let (path, method) = (ex.path.as_str(), &ex.method);
    let known = ["/health", "/run", "/status", "/runs"];
    let outcome: Result<Value, ApiError> = match (path, method) {
        (p, _) if known.contains(&p) && p != "/health" && !authorized(app, &rq) => {
            Err(ApiError::new(401, "unauthorized"))
        }
        ("/run", Method::Post) => {
            spawn_run(app, rq, ex);
            return;
        }
        ("/status", Method::Get) => Ok(status(app)),
        ("/runs", Method::Get) => runs(app, rq.url()),
        (p, _) if known.contains(&p) => Err(ApiError::new(
            405,
            format!("method {method} is not allowed on {p}"),
        )),
        _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
    };
    ex.finish(rq, outcome);
}

/// `GET /status`: what runs, what ended last, what autopoll will do.
fn status(app: &App) -> Value {
    let (active, last_exit) = {
        let runs = app.runs();
        (runs.active().cloned(), runs.exits.back().cloned())
    };
    let active = active.map(|r| {
        let last_output_at = std::fs::metadata(&r.log_path)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| chrono::DateTime::<chrono::Local>::from(t).to_rfc3339());
        json!({
            "run_id": r.run_id,
            "request_id": r.request_id,
            "pid": r.pid,
            "workspace": r.workspace,
            "log_path": r.log_path,
            "started_at": r.started_at,
            "last_output_at": last_output_at,
        })
    });
    let last_exit = last_exit.or_else(|| {
        // After a restart: the newest finished run in the history.
        let row = app.history.last_finished()?;
        Some(crate::app::Exit {
            return_code: row.return_code?,
            ended_at: row.ended_at?,
            duration_seconds: row.duration_seconds.unwrap_or(0.0),
            run_id: row.run_id,
        })
    });
    let poll = app.autopoll_state().clone();
    let backoff_until = poll
        .backoff_until
        .filter(|until| *until > std::time::Instant::now())
        .and(poll.backoff_until_text);
    json!({
        "ok": true,
        "run_in_progress": app.guard_held(),
        "active": active,
        "last_exit": last_exit,
        "autopoll": {
            "enabled": app.cfg.autopoll,
            "interval_seconds": app.cfg.idle_poll.as_secs_f64(),
            "stale_seconds": app.cfg.idle_stale.as_secs_f64(),
            "next_tick_at": if app.cfg.autopoll { poll.next_tick_at } else { None },
            "backoff_until": backoff_until,
            "consecutive_crashes": poll.crashes,
        },
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /runs?limit=N`: the newest runs first.
fn runs(app: &App, url: &str) -> Result<Value, ApiError> {
    let mut limit = 50;
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&') {
            if let Some(v) = pair.strip_prefix("limit=") {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::history::MAX_ROWS).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("limit must be a whole number from 1 to 1000")
                    })?;
            }
        }
    }
    Ok(json!({"ok": true, "runs": app.history.newest(limit)}))
}

/// What one request is about, for its `http.end` line.
struct Exchange {
    request_id: String,
    method: Method,
    path: String,
    started: Instant,
}

impl Exchange {
    /// Answers with the outcome and logs `http.end`.
    fn finish(&self, rq: Request, outcome: Result<Value, ApiError>) {
        let (status, body) = match outcome {
            Ok(body) => (200, body),
            Err(e) => (e.status, e.body()),
        };
        respond(rq, status, &body);
        log::info!(
            "http.end request_id={} method={} path={} status={status} duration_ms={:.3}",
            self.request_id,
            self.method,
            Q(&self.path),
            self.started.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// Hands a `/run` to a worker thread: body, validation, guard, pipeline, answer.
fn spawn_run(app: &Arc<App>, rq: Request, ex: Exchange) {
    if app.inflight.fetch_add(1, Ordering::AcqRel) >= MAX_INFLIGHT {
        app.inflight.fetch_sub(1, Ordering::AcqRel);
        ex.finish(
            rq,
            Err(ApiError::new(503, "busy: too many requests in flight")),
        );
        return;
    }
    let worker_app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name(format!("run-{}", ex.request_id))
        .spawn(move || {
            let app = worker_app;
            let mut rq = rq;
            let outcome = serve_run(&app, &mut rq, &ex.request_id);
            if let Err(e) = &outcome {
                log::warn!(
                    "run.fail request_id={} status={} error={}",
                    ex.request_id,
                    e.status,
                    Q(&e.message)
                );
            }
            ex.finish(rq, outcome);
            app.inflight.fetch_sub(1, Ordering::AcqRel);
        });
    if let Err(e) = spawned {
        // The request went down with the closure; the client sees its connection close.
        app.inflight.fetch_sub(1, Ordering::AcqRel);
        log::error!("http.worker_failed error={}", Q(&e.to_string()));
    }
}

fn read_body(rq: &mut Request) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::new(413, "body is larger than 1 MiB");
    if rq.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let deadline = Instant::now() + BODY_DEADLINE;
    let timed_out = || ApiError::new(408, "timed out reading the request body");
    let mut body = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let reader = rq.as_reader();
    loop {
        // Each read is bounded by the socket's timeout; the whole body by the deadline.
        let n = match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "could not read the body: {e}"
                )))
            }
        };
        body.extend_from_slice(&chunk[..n]);
        if body.len() > MAX_BODY {
            return Err(too_large());
        }
        if Instant::now() > deadline {
            return Err(timed_out());
        }
    }
    // Cut off before the announced length arrived (the sweeper shuts silent clients).
    if rq.body_length().is_some_and(|n| body.len() < n) {
        return Err(timed_out());
    }
    if body.len() > MAX_BODY {
        return Err(too_large());
    }
    Ok(body)
}

fn serve_run(app: &Arc<App>, rq: &mut Request, request_id: &str) -> Result<Value, ApiError> {
    let body = read_body(rq)?;
    run::submit(app, &body, request_id, Trigger::Http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
