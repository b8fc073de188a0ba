//! Black-box tests of the HTTP surface: status codes, validation before any effect, auth,
//! the run guard, and start-up configuration errors.

mod common;

use common::{alive, wait_for, Fixture};
use serde_json::json;

/// `/health`, unknown paths and wrong methods answer JSON with the right codes.
#[test]
fn health_404_and_405() {
    let fx = Fixture::new("routes");
    let looper = fx.start(&[]);
    let h = looper.get("/health");
    assert_eq!((h.status, h.body.clone()), (200, json!({"ok": true})));
    let nf = looper.get("/nope");
    assert_eq!(nf.status, 404);
    assert_eq!(nf.body["ok"], json!(false));
    assert!(nf.body["error"].as_str().unwrap().contains("/nope"));
    let wrong = looper.get("/run");
    assert_eq!(wrong.status, 405, "{}", wrong.body);
    assert_eq!(wrong.body["ok"], json!(false));
    let wrong = looper.post("/health", "{}");
    assert_eq!(wrong.status, 405);
}

/// Bad bodies get a 400 naming the field, and nothing is announced, stopped or started.
#[test]
fn bad_input_is_refused_before_anything_happens() {
    let fx = Fixture::new("validate");
    let zulip = common::FakeZulip::start();
    let looper = fx.start_owned(&zulip.env_with(&[("FAKE_CODEX", "record;sleep:600")]));
    let live = looper.run(json!({"codex_prompt": "keep me"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let pid = live.body["codex_exec_result"]["pid"].as_u64().unwrap();
    // Its record first (a loaded machine may start it slowly), so that the count below
    // tells only what bad input did.
    looper.record_of(pid);
    let announced = zulip.messages().len();
    for (body, field) in [
        ("not json", "JSON"),
        ("[\"a\"]", "object"),
        ("{}", "zulip_message"),
        (r#"{"zulip_message":"   "}"#, "zulip_message"),
        (r#"{"zulip_message":7}"#, "zulip_message"),
        (r#"{"zulip_message":"m","codex_prompt":5}"#, "codex_prompt"),
        (r#"{"zulip_message":"m","workspace":["/"]}"#, "workspace"),
        (
            r#"{"zulip_message":"m","codex_exec_delay_seconds":-1}"#,
            "codex_exec_delay_seconds",
        ),
        (
            r#"{"zulip_message":"m","codex_exec_delay_seconds":"soon"}"#,
            "codex_exec_delay_seconds",
        ),
        (
            r#"{"zulip_message":"m","startup_delay_seconds":90000}"#,
            "startup_delay_seconds",
        ),
        (
            r#"{"zulip_message":"m","codex_exec_startup_check_seconds":{}}"#,
            "codex_exec_startup_check_seconds",
        ),
    ] {
        let a = looper.post("/run", body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        let err = a.body["error"].as_str().unwrap();
        assert!(err.contains(field), "{body}: {err}");
    }
    let raw_cases: [(&[u8], &str); 2] = [
        (
            b"{\"zulip_message\":\"m\",\"workspace\":\"/tmp/\xff\"}",
            "workspace",
        ),
        (
            b"{\"zulip_message\":\"m\",\"codex_prompt\":\"a\\u0000b\"}",
            "codex_prompt",
        ),
    ];
    for (body, field) in raw_cases {
        let r = minreq::post(looper.url("/run"))
            .with_header("Content-Type", "application/json")
            .with_body(body.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status_code, 400, "{field}");
        let err: serde_json::Value = serde_json::from_slice(r.as_bytes()).unwrap();
        assert!(err["error"].as_str().unwrap().contains(field), "{err}");
    }
    let big = format!(
        r#"{{"zulip_message":"m","pad":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let a = looper.post("/run", &big);
    assert_eq!(a.status, 413, "{}", a.body);
    // A workspace that is not a directory, and a binary that does not exist.
    let a = looper.run(json!({"codex_prompt": "x", "workspace": "/nonexistent/ws"}));
    assert_eq!(a.status, 400);
    assert_eq!(
        a.body["error"],
        json!("workspace is not a directory: /nonexistent/ws")
    );
    // Only the operator may name a binary at all; with no token configured nobody may.
    let a = looper.run(json!({"codex_prompt": "x", "codex_exec_binary": "no-such-codex-binary"}));
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("LOOPER_API_TOKEN"),
        "{}",
        a.body
    );
    assert_eq!(zulip.messages().len(), announced, "bad input was announced");
    assert!(alive(pid), "bad input stopped the live run");
    assert_eq!(looper.records().len(), 1, "bad input started a run");
    drop(looper);
    // The operator naming a binary that does not exist: a 400 naming it.
    let looper = fx.start_owned(&zulip.env_with(&[
        ("FAKE_CODEX", "record;sleep:600"),
        ("LOOPER_API_TOKEN", common::OPERATOR_TOKEN),
    ]));
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"codex_prompt": "x", "codex_exec_binary": "no-such-codex-binary"}),
    );
    assert_eq!(
        a.status, 400,
        "a binary the request names is bad input: {}",
        a.body
    );
    let error = a.body["error"].as_str().unwrap();
    assert!(
        error.starts_with("codex_exec_binary not found: no-such-codex-binary"),
        "{error}"
    );
}

/// With a token, `/run` needs it (bearer or X-Looper-Token); the token is never logged.
#[test]
fn the_token_guards_run() {
    let fx = Fixture::new("auth");
    let token = "tok-3f9a-very-secret";
    let looper = fx.start(&[("LOOPER_API_TOKEN", token)]);
    let body = r#"{"zulip_message":"m","codex_prompt":""}"#;
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("X-Looper-Token", "tok-3f9a-very-secreT")],
        vec![("Authorization", token)],
    ] {
        let a = looper.post_with("/run", body, &headers);
        assert_eq!(a.status, 401, "{headers:?}");
        assert_eq!(a.body["ok"], false);
        let error = a.body["error"].as_str().unwrap();
        assert!(
            error.starts_with("unauthorized")
                && error.contains("Authorization: Bearer")
                && error.contains("X-Looper-Token"),
            "the 401 should name the headers to send: {error}"
        );
    }
    let a = looper.post_with(
        "/run",
        body,
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = looper.post_with("/run", body, &[("X-Looper-Token", token)]);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(looper.get("/health").status, 200);
    // The last POST's end is logged after anything the requests could have logged.
    let id = a.body["request_id"].as_str().unwrap();
    let last = format!("http.end request_id={id} ");
    assert!(!looper.stderr_with(&last).contains(token));
    assert!(!looper.log_with(&last).contains(token));
}

/// While one `/run` is being set up, another gets 409 and `/health` keeps answering.
#[test]
fn a_second_run_during_setup_is_busy() {
    let fx = Fixture::new("busy");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let url = looper.url("/run");
    let slow = std::thread::spawn(move || {
        minreq::post(url)
            .with_header("Content-Type", "application/json")
            .with_body(
                r#"{"zulip_message":"slow","codex_prompt":"p","codex_exec_delay_seconds":2}"#,
            )
            .with_timeout(60)
            .send()
            .map(|r| r.status_code)
    });
    looper.wait("the slow run to hold the guard", || {
        looper.server_log().contains("action=delay").then_some(())
    });
    let h = looper.get("/health");
    assert_eq!(h.status, 200);
    for _ in 0..3 {
        let a = looper.run(json!({"codex_prompt": "p"}));
        assert_eq!(a.status, 409, "{}", a.body);
        assert_eq!(
            a.body,
            json!({"ok": false, "error": "busy: another run is in progress"})
        );
    }
    // The 409s were answered while the first run was still setting up.
    assert!(!slow.is_finished(), "the slow run ended before the 409s");
    assert_eq!(slow.join().unwrap().unwrap(), 200);
    assert_eq!(looper.records().len(), 1);
}

/// Bad configuration stops the start with a message naming the variable.
#[test]
fn bad_configuration_stops_the_start() {
    let fx = Fixture::new("config");
    std::fs::write(fx.path("a-file"), "").unwrap();
    let blocked_dir = fx.path("a-file/logs");
    for (key, value, expect) in [
        ("LOOPER_PORT", "http", "LOOPER_PORT"),
        ("LOOPER_IDLE_POLL_SECONDS", "-5", "LOOPER_IDLE_POLL_SECONDS"),
        ("ZULIP_SITE", "chat.example.com", "ZULIP_BOT_EMAIL"),
        ("LOOPER_HOST", "0.0.0.0", "LOOPER_API_TOKEN"),
        (
            "CODEX_EXEC_LOG_DIR",
            blocked_dir.to_str().unwrap(),
            "CODEX_EXEC_LOG_DIR",
        ),
    ] {
        let (mut child, stderr) = fx.spawn(&[(key, value)]);
        let status = wait_for("looper to refuse", || child.try_wait().ok().flatten());
        assert!(!status.success(), "{key}={value} started");
        let text = common::read(&stderr);
        assert!(text.contains(expect), "{key}={value}: {text}");
    }
}

/// `"codex_prompt": ""` announces and stops but starts nothing.
#[test]
fn an_empty_prompt_announces_only() {
    let fx = Fixture::new("announce-only");
    let looper = fx.start(&[]);
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["codex_exec_started"], json!(false));
    assert_eq!(a.body["codex_prompt_sent"], json!(false));
    assert_eq!(a.body["run_id"], json!(null));
    assert_eq!(a.body["codex_exec_result"], json!(null));
    assert!(looper.records().is_empty());
}

/// A field `/run` does not know (a typo such as `codex_promt`) is said in the answer and the
/// log; `~` in a request's workspace is the home directory, and `..` is folded away.
#[test]
fn unknown_fields_are_said_and_a_tilde_is_home() {
    let fx = Fixture::new("fields");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper
        .run(json!({"codex_promt": "typo", "password_store": "x", "workspace": "~/ws/../ws"}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["ignored_fields"],
        json!(["codex_promt", "password_store"])
    );
    // HOME is the fixture's directory.
    assert_eq!(a.body["workspace"], json!(fx.path("ws")));
    let log = looper.log_with("run.ignored_fields");
    assert!(log.contains("codex_promt"), "{log}");
    let rec = looper.record_of(a.body["codex_exec_result"]["pid"].as_u64().unwrap());
    assert_eq!(rec["cwd"], json!(fx.path("ws")));
}
