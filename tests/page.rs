//! Black-box tests of the loop at a glance without a browser: the page is
//! served, a run's log through its API, `/metrics` in Prometheus' text format, and
//! `looper logs`. The page itself is driven in a real browser by tests/browser.rs.

mod common;

use std::collections::HashMap;

use common::{cli, pid_of, run_id_of, stderr, stdout, Fixture, Looper};
use serde_json::json;

fn get_raw(looper: &Looper, path: &str, token: Option<&str>) -> minreq::Response {
    let mut rq = minreq::get(looper.url(path));
    if let Some(t) = token {
        rq = rq.with_header("X-Looper-Token", t);
    }
    rq.with_timeout(30).send().expect("request")
}

/// The value of header `name` (lower case) of an answer.
fn header(r: &minreq::Response, name: &str) -> String {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// `GET /` is one self-contained HTML page, served without the token and holding no data.
#[test]
fn the_page_is_served_without_the_token_and_holds_no_data() {
    let fx = Fixture::new("page");
    let looper = fx.start(&[("LOOPER_API_TOKEN", "sekrit")]);
    let r = get_raw(&looper, "/", None);
    assert_eq!(r.status_code, 200);
    assert!(header(&r, "content-type").starts_with("text/html"));
    let html = r.as_str().unwrap();
    assert!(html.contains("<title>Looper</title>") && html.contains("/status"));
    // Self-contained: no external scripts, styles or fonts.
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "external asset: {external}");
    }
    assert!(!html.contains("sekrit"));
    assert_eq!(get_raw(&looper, "/status", None).status_code, 401);
}

/// A run's log through the API: from an offset, the last MiB without one, its size in
/// `X-Log-Size`; 404 for an unknown run and for ids that try to leave the log directory;
/// the token as for `/runs`.
#[test]
fn a_runs_log_is_served_from_an_offset() {
    let fx = Fixture::new("log-api");
    let looper = fx.start(&[
        ("LOOPER_API_TOKEN", "t"),
        (
            "FAKE_CODEX",
            "record;print:first line;print:second line;sleep:600",
        ),
    ]);
    let a = looper.post_with(
        "/run",
        &json!({"zulip_message": "m", "codex_prompt": "p"}).to_string(),
        &[("X-Looper-Token", "t")],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let run_id = run_id_of(&a);
    let path = format!("/runs/{run_id}/log");
    let whole = looper.wait("the output", || {
        let r = get_raw(&looper, &path, Some("t"));
        r.as_str().ok()?.contains("second line").then_some(r)
    });
    assert!(header(&whole, "content-type").starts_with("text/plain"));
    let text = whole.as_str().unwrap().to_string();
    assert!(
        text.starts_with(&format!("# looper_request_id={run_id}\n")),
        "{text}"
    );
    let size: usize = header(&whole, "x-log-size").parse().unwrap();
    assert_eq!(size, text.len());
    let at = text.find("second line").unwrap();
    let tail = get_raw(&looper, &format!("{path}?offset={at}"), Some("t"));
    assert_eq!(tail.as_str().unwrap(), "second line\n");
    let end = get_raw(&looper, &format!("{path}?offset={}", size + 100), Some("t"));
    assert_eq!((end.status_code, end.as_bytes().len()), (200, 0));
    assert_eq!(get_raw(&looper, &path, None).status_code, 401);
    for bad in [
        "/runs/nope/log",
        "/runs/..%2F..%2Fetc%2Fpasswd/log",
        "/runs/../../etc/passwd/log",
    ] {
        let r = get_raw(&looper, bad, Some("t"));
        assert_eq!(r.status_code, 404, "{bad}: {}", r.as_str().unwrap_or(""));
    }
    let r = get_raw(&looper, &format!("{path}?offset=x"), Some("t"));
    assert_eq!(r.status_code, 400);
}

/// Parses Prometheus' text format by its rules: `# HELP name text`, `# TYPE name kind`
/// before a family's samples, then `name{labels} value` lines. Returns the samples.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(!help.is_empty(), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "two TYPEs: {line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.trim().is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("name value");
            let name = series.split('{').next().unwrap();
            assert!(
                typed.contains_key(name) && helped.contains(name),
                "no TYPE/HELP before {line}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            assert!(
                samples.insert(series.to_string(), value).is_none(),
                "duplicate {line}"
            );
        }
    }
    samples
}

/// `/metrics` follows Prometheus' text format and counts what happened.
#[test]
fn metrics_follow_the_text_format_and_count_runs() {
    let fx = Fixture::new("metrics");
    let looper = fx.start(&[
        ("LOOPER_API_TOKEN", "t"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    assert_eq!(get_raw(&looper, "/metrics", None).status_code, 401);
    let body = json!({"zulip_message": "m", "codex_prompt": "p"}).to_string();
    let auth = [("X-Looper-Token", "t")];
    let first = looper.post_with("/run", &body, &auth);
    let second = looper.post_with("/run", &body, &auth);
    assert_eq!((first.status, second.status), (200, 200));
    let r = get_raw(&looper, "/metrics", Some("t"));
    assert!(header(&r, "content-type").starts_with("text/plain"));
    parse_metrics(r.as_str().unwrap());
    // The replaced run's end is counted once its watcher has seen it.
    let m = looper.wait("the replaced run counted", || {
        let m = parse_metrics(get_raw(&looper, "/metrics", Some("t")).as_str().ok()?);
        (m["looper_runs_ended_total{outcome=\"replaced\"}"] == 1.0).then_some(m)
    });
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        m[&format!("looper_build_info{{version=\"{version}\"}}")],
        1.0
    );
    assert_eq!(m["looper_runs_started_total{trigger=\"http\"}"], 2.0);
    assert_eq!(m["looper_runs_started_total{trigger=\"autopoll\"}"], 0.0);
    assert_eq!(m["looper_runs_ended_total{outcome=\"ok\"}"], 0.0);
    assert_eq!(m["looper_run_active"], 1.0);
    // The second run, which began before this scrape, is the active one.
    let age = m["looper_active_run_age_seconds"];
    assert!(age > 0.0 && age < 600.0, "{age}");
    assert!(m.contains_key("looper_active_run_quiet_seconds"));
    assert_eq!(m["looper_autopoll_consecutive_crashes"], 0.0);
    assert_eq!(m["looper_autopoll_backoff_seconds"], 0.0);
    assert_eq!(m["looper_usage_limit_until_seconds"], 0.0);
    let status = looper.get_with("/status", &auth).body;
    assert_eq!(status["active"]["pid"], json!(pid_of(&second)), "{status}");
}

/// `looper logs` prints the active run's log; `-f` follows a run until it ends and exits
/// with whether it succeeded.
#[test]
fn looper_logs_prints_and_follows() {
    let fx = Fixture::new("logs-cli");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "record;print:from the run;sleep:1;print:done now;exit:0",
    )]);
    let a = looper.run(json!({"codex_prompt": "p"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let url = looper.url("/run");
    let env = [("LOOPER_URL", url.as_str())];
    let o = cli(&fx, &["logs"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("from the run"), "{}", stdout(&o));
    let o = cli(&fx, &["logs", "-f", &run_id_of(&a)], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("done now") && text.contains("# codex_exec_return_code=0"),
        "{text}"
    );
    let o = cli(&fx, &["logs", "nope"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("404"), "{}", stderr(&o));
}
