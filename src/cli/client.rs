//! Talking to the server: its address, the token (and where it is not sent), one JSON
//! request, a run's log, and whether a connection can be had at all.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::Fail;

/// How long `trigger` tries to open a connection before it turns to the inbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a CLI request may take: a `/run` waits for its delay and startup check.
const CLIENT_TIMEOUT_SECS: u64 = 3600;

/// The server's base address: `--url`, else `LOOPER_URL` (with or without `/run`), else
/// `http://127.0.0.1:<LOOPER_PORT or 3456>`.
pub fn base_url(flag: Option<&str>, env: &HashMap<String, String>) -> String {
    let raw = flag
        .map(str::to_string)
        .or_else(|| {
            env.get("LOOPER_URL")
                .filter(|u| !u.trim().is_empty())
                .cloned()
        })
        .unwrap_or_else(|| {
            let port = env
                .get("LOOPER_PORT")
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().to_string())
                .unwrap_or_else(|| "3456".to_string());
            format!("http://127.0.0.1:{port}")
        });
    let trimmed = raw.trim().trim_end_matches('/');
    let base = trimmed.strip_suffix("/run").unwrap_or(trimmed);
    // `127.0.0.1:3456` is what people type: it means plain HTTP.
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// `rq` with `$LOOPER_API_TOKEN` as its bearer token, unless the server's port on this
/// machine is held by another user: a program of theirs squatting Looper's port while
/// Looper is down must not be handed the token.
fn with_token(
    rq: minreq::Request,
    base: &str,
    env: &HashMap<String, String>,
) -> Result<minreq::Request, Fail> {
    let Some(token) = env.get("LOOPER_API_TOKEN").filter(|t| !t.trim().is_empty()) else {
        return Ok(rq);
    };
    if let Some(port) = loopback_port(base) {
        let me = crate::os::procs::current_uid();
        if let Some(owner) = crate::os::sockets::listener_uid(port).filter(|u| *u != me) {
            return Err(Fail::Error(
                format!(
                    "port {port} on this machine is held by user {owner}, not by you (user {me}): LOOPER_API_TOKEN is not sent there. Is Looper running? Another user's program may be listening in its place"
                ),
));
        }
    }
    Ok(rq.with_header("Authorization", format!("Bearer {}", token.trim())))
}

/// The port of a plain-http address on this machine (`127.x`, `localhost`, `[::1]`).
fn loopback_port(base: &str) -> Option<u16> {
    let authority = base.strip_prefix("http://")?.split('/').next()?;
    let name = crate::config::host_name(authority);
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        _ => 80,
    };
    crate::config::is_loopback(name).then_some(port)
}

/// One request to the server; the JSON answer, or a message that says what went wrong.
pub fn call(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&Value>,
    env: &HashMap<String, String>,
) -> Result<(u16, Value), Fail> {
    let url = format!("{base}{path}");
    let mut rq = match method {
        "POST" => minreq::post(url.as_str()),
        _ => minreq::get(url.as_str()),
    };
    rq = with_token(rq, base, env)?;
    if let Some(b) = body {
        rq = rq
            .with_header("Content-Type", "application/json")
            .with_body(b.to_string());
    }
    let response = rq.with_timeout(CLIENT_TIMEOUT_SECS).send().map_err(|e| {
        Fail::Error(
            format!("cannot reach Looper at {base}: {e} (is `looper serve` running? set LOOPER_URL or --url)"),
)
    })?;
    let mut value: Value = serde_json::from_slice(response.as_bytes()).map_err(|_| {
        Fail::Error(format!(
            "{url} answered HTTP {} with something that is not Looper's JSON",
            response.status_code
        ))
    })?;
    if response.status_code == 401 {
        value["error"] = Value::from(unauthorized(env));
    }
    Ok((response.status_code, value))
}

/// A `401` in the words of the command line: the server's own names the headers curl
/// would send; here it is the variable to set.
fn unauthorized(env: &HashMap<String, String>) -> String {
    let sent = env
        .get("LOOPER_API_TOKEN")
        .is_some_and(|t| !t.trim().is_empty());
    if sent {
        "unauthorized: Looper did not accept the token in LOOPER_API_TOKEN; set it to the token Looper was started with".to_string()
    } else {
        "unauthorized: Looper wants its token; set LOOPER_API_TOKEN to the token Looper was started with".to_string()
    }
}

/// Whether a connection to the server at `base` can be opened at all. Inside codex's
/// sandbox it cannot (no socket may be created); nor while Looper is down.
pub fn reachable(base: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Some(authority) = base
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
    else {
        // Not plain http: let the HTTP client try and say what is wrong.
        return true;
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let Ok(addrs) = with_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

/// The bytes of run `run_id`'s log from `offset` on (at most a MiB; without an offset, the
/// last MiB), from the server's log API.
pub fn fetch_log(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
    offset: Option<u64>,
) -> Result<Vec<u8>, Fail> {
    let query = offset.map(|o| format!("?offset={o}")).unwrap_or_default();
    let url = format!("{base}/runs/{run_id}/log{query}");
    let rq = with_token(minreq::get(url.as_str()), base, env)?;
    let response = rq
        .with_timeout(30)
        .send()
        .map_err(|e| Fail::Error(format!("cannot reach Looper at {base}: {e}")))?;
    if response.status_code == 401 {
        return Err(Fail::Error(format!("HTTP 401: {}", unauthorized(env))));
    }
    if response.status_code != 200 {
        let error: Value = serde_json::from_slice(response.as_bytes()).unwrap_or_default();
        return Err(Fail::Error(format!(
            "HTTP {}: {}",
            response.status_code,
            error["error"].as_str().unwrap_or("the server said no")
        )));
    }
    Ok(response.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports_are_known() {
        assert_eq!(loopback_port("http://127.0.0.1:3456"), Some(3456));
        assert_eq!(loopback_port("http://localhost"), Some(80));
        assert_eq!(loopback_port("http://[::1]:9/run"), Some(9));
        assert_eq!(loopback_port("http://devbox:3456"), None);
        assert_eq!(loopback_port("https://127.0.0.1:3456"), None);
    }

    #[test]
    fn a_url_without_a_scheme_is_http() {
        let env = HashMap::new();
        assert_eq!(
            base_url(Some("127.0.0.1:3456"), &env),
            "http://127.0.0.1:3456"
        );
        assert_eq!(
            base_url(Some("localhost:1/run/"), &env),
            "http://localhost:1"
        );
        assert_eq!(base_url(Some("https://x/run"), &env), "https://x");
    }

    #[test]
    fn the_url_takes_looper_url_with_or_without_run() {
        let env = |k: &str, v: &str| -> HashMap<String, String> {
            [(k.to_string(), v.to_string())].into()
        };
        assert_eq!(base_url(None, &HashMap::new()), "http://127.0.0.1:3456");
        assert_eq!(
            base_url(None, &env("LOOPER_URL", "http://h:1/run")),
            "http://h:1"
        );
        assert_eq!(
            base_url(None, &env("LOOPER_URL", "http://h:1/")),
            "http://h:1"
        );
        assert_eq!(
            base_url(None, &env("LOOPER_PORT", "4000")),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            base_url(Some("http://x:2/run/"), &env("LOOPER_URL", "http://h:1")),
            "http://x:2"
        );
    }
}
