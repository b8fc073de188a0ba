//! The operator's hour: pause a loop and finish it, as the operator.

mod common;

use common::{alive, cli, stderr, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

fn url_of(looper: &Looper) -> String {
    format!("http://127.0.0.1:{}", looper.port)
}

/// `looper pause` holds the loop: autopoll starts nothing (also once the runs are stopped:
/// a trigger that only stops runs resumes nothing), a run's hand-off is answered 429 and
/// the run goes on; `/status`, `/metrics` and one Zulip line say so; `looper resume` lets
/// autopoll go on. Before, nothing could hold a loop: a stop was followed by a new run at
/// the next tick.
#[test]
fn a_paused_loop_starts_nothing_until_it_is_resumed() {
    let fx = Fixture::new("pause");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]));
    let first = looper.wait("autopoll's first run", || {
        looper.records().into_iter().next()
    });
    looper.log_with("codex.exec.autopoll.started");
    let url = url_of(&looper);
    let o = cli(&fx, &["pause"], &[("LOOPER_URL", &url)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("is paused"), "{}", stderr(&o));
    looper.wait("the Zulip line", || {
        z.contents()
            .into_iter()
            .find(|m| m.contains("the operator paused the loop"))
    });
    // The run's hand-off waits: 429, and the run lives on.
    let run_id = first["looper_run_id"].as_str().unwrap().to_string();
    let pid = first["pid"].as_u64().unwrap();
    let h = looper.run(json!({"zulip_message": "next", "from_run_id": run_id}));
    assert_eq!(h.status, 429, "{}", h.body);
    assert!(alive(pid));
    // Stop the runs: the loop stays paused.
    let stop = looper.run(json!({"zulip_message": "stop", "codex_prompt": ""}));
    assert_eq!(stop.status, 200, "{}", stop.body);
    looper.wait("the run to end", || (!alive(pid)).then_some(()));
    let skipped = |l: &Looper| {
        l.server_log()
            .matches("autopoll.skip reason=operator")
            .count()
    };
    let before = skipped(&looper);
    looper.wait("five ticks held by the pause", || {
        (skipped(&looper) >= before + 5).then_some(())
    });
    assert_eq!(looper.records().len(), 1, "a run started while paused");
    let status = looper.get("/status").body;
    assert_eq!(status["loop"]["state"], json!("paused"), "{status}");
    assert_eq!(status["loop"]["reason"], json!("operator"), "{status}");
    let shown = cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
    assert!(
        common::stdout(&shown)
            .contains("none: the loop is paused (operator) until `looper resume`"),
        "{}",
        common::stdout(&shown)
    );
    let metrics = minreq::get(looper.url("/metrics")).send().unwrap();
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("looper_loop_paused{workspace=")
            && metrics.as_str().unwrap().contains("reason=\"operator\"} 1"),
        "{}",
        metrics.as_str().unwrap()
    );
    let o = cli(&fx, &["resume"], &[("LOOPER_URL", &url)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    looper.wait("the run after the resume", || {
        (looper.records().len() >= 2).then_some(())
    });
}

/// The operator finishes a loop (`looper pause --finish`, or a `looper trigger --done` of
/// theirs): it stops nothing and starts nothing. A run may not pause. Before, an operator's `--done` was refused (`409`), and there was no
/// `/pause`.
#[test]
fn the_operator_finishes_a_loop_and_a_run_may_not_pause() {
    let fx = Fixture::new("finish-op");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let url = url_of(&looper);
    let o = cli(
        &fx,
        &["trigger", "--done", "--message", "that will do"],
        &[("LOOPER_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let answer: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["loop_state"], json!("finished"), "{answer}");
    assert!(alive(common::pid_of(&a)), "the finish stopped the run");
    let status = looper.get("/status").body;
    assert_eq!(status["loop"]["reason"], json!("operator"), "{status}");
    // A run's own token may not pause.
    let token = looper.records()[0]["looper_run_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = minreq::post(looper.url("/pause"))
        .with_header("Content-Type", "application/json")
        .with_header("Authorization", format!("Bearer {token}"))
        .with_body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status_code, 403, "{}", r.as_str().unwrap_or_default());
}
