//! What each HTTP request gets: routing, the page (`/`), `/health`, and the rooms below —
//! who asks ([`caller`]), `/status` and `/runs` ([`status`]), a run's files ([`files`]),
//! `/metrics` ([`metrics`]), and the requests with an effect, `/run` and `/resume`
//! ([`effects`]). The transport — reading requests, limits, writing answers — is
//! [`crate::http`]'s.

pub(crate) mod caller;
pub(crate) mod effects;
pub(crate) mod files;
pub(crate) mod metrics;
pub(crate) mod quota;
pub(crate) mod status;

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::error::{Refusal, Why};
use crate::http::{Request, Response};
use crate::os::logging::Q;
use crate::state::app::App;
use caller::{browser_check, operator, run_token_of, unauthorized};
use files::{run_file_of, RunFile};

/// The paths Looper serves; all but `/health` need the token when one is set.
const KNOWN: [&str; 8] = [
    "/health", "/run", "/status", "/runs", "/metrics", "/resume", "/pause", "/quota",
];

/// The page (`GET /`): one self-contained file, no data of its own (it asks the API).
const PAGE: &str = include_str!("../../assets/index.html");

/// Answers one request.
fn handle(app: &Arc<App>, rq: &mut Request) -> Response {
    let started = Instant::now();
    let (method, path) = (rq.head.method.as_str(), rq.head.path.as_str());
    if let Err(e) = browser_check(app, &rq.head) {
        log::warn!(
            "http.refused method={} path={} status={} error={}",
            Q(method),
            Q(path),
            e.status(),
            Q(&e.message)
        );
        return Response::json(e.status(), e.body().to_string());
    }
    if path == "/health" && matches!(method, "GET" | "HEAD") {
        // Health probes are frequent: only at DEBUG, and no id or lock.
        log::debug!("http.end method={method} path=/health status=200");
        return Response::json(200, r#"{"ok":true}"#.to_string());
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
        .unwrap_or_else(|e| Response::json(e.status(), e.body().to_string()));
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

fn ok_json(value: Value) -> Response {
    Response::json(200, value.to_string())
}

fn route(app: &Arc<App>, rq: &mut Request, request_id: &str) -> Result<Response, Refusal> {
    let (method, path) = (rq.head.method.as_str(), rq.head.path.as_str());
    if path == "/" {
        return match method {
            "GET" | "HEAD" => Ok(Response {
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
            m => Err(Refusal::new(
                Why::WrongMethod,
                format!("method {m} is not allowed on /"),
            )),
        };
    }
    let run_file = run_file_of(path);
    if !KNOWN.contains(&path) && run_file.is_none() {
        return Err(Refusal::new(
            Why::NotFound,
            format!("no such endpoint: {path}"),
        ));
    }
    if (path, method) == ("/run", "POST") {
        return effects::serve_run(app, rq, request_id).map(ok_json);
    }
    if (path, method) == ("/resume", "POST") {
        return effects::serve_resume(app, rq, request_id).map(ok_json);
    }
    if (path, method) == ("/pause", "POST") {
        return effects::serve_pause(app, rq, request_id).map(ok_json);
    }
    if path != "/health" && !operator(app, &rq.head) {
        if run_token_of(app, &rq.head).is_some() {
            return Err(Refusal::new(
                Why::NotAllowed,
                "a run's token is good for its hand-off (POST /run) only",
            ));
        }
        return Err(unauthorized());
    }
    match (path, method) {
        ("/status", "GET") => Ok(ok_json(status::status(app))),
        ("/runs", "GET") => status::runs(app, &rq.head).map(ok_json),
        ("/quota", "GET") => Ok(ok_json(quota::quota(app))),
        ("/metrics", "GET") => Ok(Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics::render(&metrics::snapshot(app)).into_bytes(),
            headers: Vec::new(),
        }),
        (_, "GET") => match run_file {
            Some((id, RunFile::Log)) => files::run_log(app, id, &rq.head),
            Some((id, RunFile::LastMessage)) => files::run_last_message(app, id),
            None => Err(Refusal::new(
                Why::WrongMethod,
                format!("method GET is not allowed on {path}"),
            )),
        },
        (p, m) => Err(Refusal::new(
            Why::WrongMethod,
            format!("method {m} is not allowed on {p}"),
        )),
    }
}

/// Looper's answers, for the transport.
impl crate::http::Handler for App {
    fn handle(self: &Arc<Self>, rq: &mut Request) -> Response {
        handle(self, rq)
    }

    fn shutdown(&self) -> &crate::os::shutdown::Shutdown {
        App::shutdown(self)
    }
}
