//! Black-box tests of codex's usage limit: a run that ends on it pauses autopoll
//! until the reset codex names (no crash, no back-off, one announcement), a person's own
//! trigger still runs, and a run that succeeds ends the pause.

mod common;

use chrono::{DateTime, Local, Timelike};
use common::{FakeZulip, Fixture, Looper};
use serde_json::json;

/// What codex 0.169.0 prints (twice) when the account is out of quota.
fn limit_error(reset: &str) -> String {
    format!(
        "stderr:ERROR: You\u{2019}ve hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit https://chatgpt.com/settings/usage to purchase more credits or try again at {reset}."
    )
}

/// The start of the current minute, and the margin that puts "that minute plus the margin"
/// `ahead` seconds from now (codex prints whole minutes; the test wants a near reset).
fn near_reset(ahead: i64) -> (DateTime<Local>, i64) {
    let now = Local::now();
    let minute = now.with_second(0).unwrap().with_nanosecond(0).unwrap();
    (minute, (now - minute).num_seconds() + ahead)
}

fn start(fx: &Fixture, zulip: &FakeZulip, reset: &str, margin: i64) -> Looper {
    let error = limit_error(reset);
    fx.start_owned(&zulip.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("LOOPER_USAGE_LIMIT_MARGIN_SECONDS", &margin.to_string()),
        (
            "FAKE_CODEX",
            &format!("record;exit-if-prompt:fine:0;{error};{error};exit:1"),
        ),
    ]))
}

/// Autopoll meets the limit (codex's "try again at 7:13 PM." form) once, pauses without
/// counting a crash, announces it once, shows it in /status and the history, and starts
/// the next run by itself when the reset (plus the margin) comes.
#[test]
fn the_loop_waits_for_the_reset_and_resumes() {
    let fx = Fixture::new("limit-clock");
    let zulip = FakeZulip::start();
    let (minute, margin) = near_reset(4);
    let looper = start(&fx, &zulip, &looper::clock_text(minute), margin);
    let status = looper.wait("the pause", || {
        let s = looper.get("/status").body;
        s["autopoll"]["paused_until"].is_string().then_some(s)
    });
    let poll = &status["autopoll"];
    assert_eq!(poll["pause_reason"], "usage_limit", "{status}");
    assert_eq!(poll["consecutive_crashes"], 0, "{status}");
    assert!(poll["backoff_until"].is_null(), "{status}");
    let until = DateTime::parse_from_rfc3339(poll["paused_until"].as_str().unwrap()).unwrap();
    assert_eq!(
        until,
        minute + chrono::Duration::seconds(margin),
        "{status}"
    );
    let first = looper.records()[0]["looper_run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(looper.ended_row(&first)["stop_reason"], "usage_limit");
    // Ticks go on, and start nothing while the pause lasts.
    looper.wait("ticks held back by the pause", || {
        let held = looper.server_log().matches("reason=usage_limit").count();
        (held >= 5).then_some(())
    });
    assert_eq!(looper.records().len(), 1, "a run started during the pause");
    let (announced, notes): (Vec<String>, Vec<String>) = zulip
        .contents()
        .into_iter()
        .partition(|m| m.starts_with("Looper: autopoll starts a run in "));
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("usage limit") && notes[0].contains("resumes"),
        "{notes:?}"
    );
    // At the reset, the next run starts without waiting for quiet logs.
    looper.wait("the run after the reset", || {
        (looper.records().len() >= 2).then_some(())
    });
    let second_started = Local::now();
    assert!(second_started >= until, "started before the reset");
    // Logged after the first run's end, and so after anything that end logged.
    let log = looper.log_with("codex.exec.autopoll.resume reason=usage_limit_reset");
    assert!(!log.contains("keeps failing"));
    // Its start says why: the pause is over.
    let why = format!(
        "the pause for usage_limit ended at {}",
        until.with_timezone(&Local).format("%H:%M")
    );
    looper.wait("the resumed start's announcement", || {
        zulip
            .contents()
            .into_iter()
            .find(|m| m.starts_with("Looper: autopoll starts a run in ") && m.contains(&why))
    });
}

/// The other form codex prints (`Sep 30th, 2026 4:05 PM`) is read too, and `looper
/// status` says the loop waits, and until when.
#[test]
fn the_date_form_is_read_and_status_says_it() {
    let fx = Fixture::new("limit-date");
    let zulip = FakeZulip::start();
    let (minute, _) = near_reset(0);
    let looper = start(&fx, &zulip, &looper::date_text(minute), 3600);
    let status = looper.wait("the pause", || {
        let s = looper.get("/status").body;
        s["autopoll"]["paused_until"].is_string().then_some(s)
    });
    let until =
        DateTime::parse_from_rfc3339(status["autopoll"]["paused_until"].as_str().unwrap()).unwrap();
    assert_eq!(until, minute + chrono::Duration::seconds(3600));
    let metrics = minreq::get(looper.url("/metrics")).send().unwrap();
    let line = format!("looper_usage_limit_until_seconds {}", until.timestamp());
    assert!(
        metrics.as_str().unwrap().lines().any(|l| l == line),
        "no {line:?} in /metrics"
    );
    let url = looper.url("/run");
    let o = common::cli(&fx, &["status"], &[("LOOPER_URL", url.as_str())]);
    let text = common::stdout(&o);
    assert!(
        text.contains("usage limit") && text.contains("paused"),
        "{text}"
    );
}

/// A person's own `/run` during the pause still runs; when it succeeds, the pause ends.
#[test]
fn a_persons_run_goes_through_and_success_ends_the_pause() {
    let fx = Fixture::new("limit-person");
    let zulip = FakeZulip::start();
    let (minute, _) = near_reset(0);
    let looper = start(&fx, &zulip, &looper::clock_text(minute), 3600);
    looper.wait("the pause", || {
        let s = looper.get("/status").body;
        s["autopoll"]["paused_until"].is_string().then_some(())
    });
    let a = looper.run(json!({"codex_prompt": "fine", "codex_exec_startup_check_seconds": 2}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["codex_exec_result"]["startup_return_code"], 0,
        "{}",
        a.body
    );
    // A person's trigger ends the pause. (Autopoll's next run meets the limit again at
    // once, so the log tells it, not /status.)
    looper.wait("the pause to end", || {
        let log = looper.server_log();
        (log.contains("loop.resumed workspace=")
            && log.contains("was=paused reason=usage_limit by="))
        .then_some(())
    });
}
