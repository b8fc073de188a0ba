//! Who sends a request, and what a browser may not make Looper do: the tokens it offers
//! (the operator's, a run's), the run a loopback connection's client belongs to, the `Host`
//! and cross-site checks, and `Content-Type: application/json` for effects.

use crate::error::{Refusal, Why};
use crate::http::Head;
use crate::http::Request;
use crate::run::trust::{Caller, Peer};
use crate::state::app::App;

/// The tokens a request offers (`Authorization: Bearer` or `X-Looper-Token`).
pub(super) fn offered_tokens(head: &Head) -> Vec<&str> {
    let bearer = head.header("authorization").filter_map(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    bearer.chain(head.header("x-looper-token")).collect()
}

/// Whether the request carries the operator's token (always true when none is set).
pub(super) fn operator(app: &App, head: &Head) -> bool {
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
pub(super) fn run_token_of(app: &App, head: &Head) -> Option<(String, std::path::PathBuf)> {
    offered_tokens(head)
        .into_iter()
        .find_map(|t| app.registry().tokens().run_of(t))
}

pub(super) fn unauthorized() -> Refusal {
    Refusal::new(
        Why::NoToken,
        "unauthorized: send the token as `Authorization: Bearer <token>` or `X-Looper-Token: <token>`",
    )
}

/// Who sends a request with an effect (`POST /run`, `/resume`). A loopback connection whose
/// client belongs to a run is that run's, whatever token it carries (an agent may have read
/// the operator's from disk); one whose client has already closed its end is refused (a
/// run's process could send and leave before it is seen); then the operator's token; then a
/// run's own token; then, with no token configured, a local caller.
pub(super) fn caller_of(app: &App, rq: &Request) -> Result<Caller, Refusal> {
    let as_run = |run_id: String, workspace: Option<std::path::PathBuf>| {
        let workspace = workspace
            .or_else(|| app.registry().workspace_of(&run_id))
            .and_then(|w| w.canonicalize().ok())
            .ok_or_else(|| {
                Refusal::new(
                    Why::NotAllowed,
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
                return Err(Refusal::bad_request(
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
pub(super) fn browser_check(app: &App, head: &Head) -> Result<(), Refusal> {
    if head.header("host").nth(1).is_some() {
        return Err(Refusal::bad_request("a request carries one Host header"));
    }
    if let Some(host) = head.header("host").next() {
        if !app.cfg().host_allowed(host) {
            return Err(Refusal::new(
                Why::NotAllowed,
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

fn cross_site() -> Refusal {
    Refusal::new(
        Why::NotAllowed,
        "cross-site request refused: Looper answers its own page and clients such as curl, not other web sites",
    )
}

/// `POST /run` takes JSON only: a browser sends `text/plain` and forms to any site without
/// asking, JSON only after asking (CORS), which Looper never grants.
pub(super) fn require_json(head: &Head) -> Result<(), Refusal> {
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
    Err(Refusal::new(
        Why::NotJson,
        format!(
            "send the body as Content-Type: application/json (got {}); nothing was changed",
            media
                .as_deref()
                .map_or("none".to_string(), |m| format!("{m:?}"))
        ),
    ))
}
