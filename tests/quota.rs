//! Black-box tests of pacing the account's quota (`LOOPER_QUOTA_PACE=even`): the figures
//! come from codex's session files (the runs' and the owner's own), a loop ahead of its
//! pace line starts nothing until the time Looper said and then goes on by itself, a
//! window's reset ends the wait, a loop under the line is never held, and the pacing is
//! shown in `/status`, `looper status`, `/quota`, `/metrics` and one Zulip line.
//!
//! The windows here are a minute long (codex reports any length), so that a wait is seconds.

mod common;

use common::{answer_of, cli, run_id_of, stdout, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

/// Autopoll every 0.2 s in the fixture's workspace, pacing on.
const PACED: [(&str, &str); 5] = [
    ("LOOPER_QUOTA_PACE", "even"),
    ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
    ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
    ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
    ("LOOPER_LOG_LEVEL", "DEBUG"),
];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn pace_hold(looper: &Looper) -> Option<Value> {
    looper.hold_for("quota_pace")
}

/// [`PACED`] with the fixture's own `CODEX_HOME`, runs whose turn reports `limits` (see
/// `FAKE_CODEX_LIMITS`) and then hand off and live on, and `extra`.
fn paced_env(
    fx: &Fixture,
    limits: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&str, String)> = PACED.iter().map(|(k, v)| (*k, v.to_string())).collect();
    env.push((
        "CODEX_HOME",
        fx.path("codex-home").to_string_lossy().into_owned(),
    ));
    env.push(("FAKE_CODEX_LIMITS", limits.to_string()));
    env.push((
        "FAKE_CODEX",
        "record;turn:worked;handoff:next;sleep:600".into(),
    ));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn unix(stamp: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(stamp.as_str().expect("a time"))
        .expect("an RFC 3339 time")
        .timestamp()
}

/// The owner's own codex use (a session file Looper did not start) puts the account ahead
/// of its pace: autopoll starts nothing, the hold names its reason and end in `/status`,
/// `looper status`, `/metrics` and one Zulip line; at that time autopoll goes on by itself.
#[test]
fn ahead_of_the_pace_the_loop_waits_until_the_time_it_said() {
    let fx = Fixture::new("quota-ahead");
    let z = FakeZulip::start();
    let home = fx.path("codex-home");
    // A one-minute window 50 s old, 95.25 % used: the line (95 % × 50/60 + 5 ≈ 84 %) is
    // behind; it reaches 95.25 % at 57 s, some 7 s from now (Looper's first tick comes
    // within those, even on a busy machine).
    let resets = now() + 10;
    common::owners_session(
        &home,
        "a",
        json!({"secondary": {"used_percent": 95.25, "window_minutes": 1, "resets_at": resets}}),
    );
    let mut env = z.env_with(&PACED);
    env.push(("CODEX_HOME", home.to_string_lossy().into_owned()));
    env.push(("FAKE_CODEX", "record;sleep:600".into()));
    let looper = fx.start_owned(&env);
    let hold = looper.wait("autopoll to hold the loop for its pace", || {
        pace_hold(&looper)
    });
    let until = unix(&hold["until"]);
    assert!(until > now() && until < resets, "{hold}");
    assert!(
        hold["detail"]
            .as_str()
            .unwrap()
            .contains("weekly window is 95% used"),
        "{hold}"
    );
    assert!(
        looper.records().is_empty(),
        "a run started while the loop was ahead"
    );

    let status = looper.get("/status").body;
    let weekly = &status["quota"]["windows"][0];
    assert_eq!(weekly["name"], json!("weekly"), "{status}");
    assert_eq!(weekly["used_percent"], json!(95.25));
    assert_eq!(weekly["ahead"], json!(true));
    assert_eq!(status["quota"]["pace"], json!("even"));
    let url = format!("http://127.0.0.1:{}", looper.port);
    let o = cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
    let said = stdout(&o);
    assert!(
        said.contains("quota: paced evenly") && said.contains("weekly: 95% used, pace line"),
        "{said}"
    );
    assert!(said.contains("quota_pace"), "{said}");
    let metrics = minreq::get(looper.url("/metrics")).send().unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("looper_quota_pace_percent{window=\"secondary\"}")
            && metrics.contains("looper_loop_paused{workspace=")
            && metrics.contains("reason=\"quota_pace\"} 1"),
        "{metrics}"
    );
    let paused = looper.wait("the pause on Zulip", || {
        z.contents().into_iter().find(|m| m.contains("is paused"))
    });
    assert!(
        paused.contains("ahead of the pace line") && paused.contains("goes on by itself at"),
        "{paused}"
    );

    // Then autopoll goes on by itself, not before the time it said.
    let row = looper.wait("autopoll to start a run once the line caught up", || {
        looper.get("/runs").body["runs"]
            .as_array()?
            .first()
            .cloned()
    });
    looper.assert_resumed(&row, until, "quota_pace");
    let pauses = z
        .contents()
        .iter()
        .filter(|m| m.contains("is paused"))
        .count();
    assert_eq!(pauses, 1, "{:?}", z.contents());
}

/// A run's own figures (its session file) put the loop ahead: its hand-off is answered
/// `429` naming the pace and the time, and the run lives on; a window whose line never
/// catches up waits for its reset, and the reset ends the wait: autopoll goes on then.
#[test]
fn a_hand_off_ahead_of_the_pace_waits_and_the_reset_ends_it() {
    let fx = Fixture::new("quota-handoff");
    // 99 % of a one-minute window that resets in 4 s, with 10 % kept for the owner: the
    // line (at most 90 %) never gets there.
    let env = paced_env(&fx, "-,99:1:4", &[("LOOPER_QUOTA_RESERVE_PERCENT", "10")]);
    let looper = fx.start_owned(&env);
    // Autopoll's first tick starts the first run (nothing is known of the account yet).
    let id = looper.wait("autopoll's first run", || {
        looper.get("/status").body["active"]["run_id"]
            .as_str()
            .map(str::to_string)
    });
    let inbox = fx.path("ws/.looper/inbox");
    let answer = answer_of(&looper, &inbox, &format!("handoff-{id}"));
    assert_eq!(answer["status"], json!(429), "{answer}");
    let error = answer["body"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("ahead of the pace line") && error.contains("before the window resets"),
        "{error}"
    );
    assert_eq!(
        looper.get("/status").body["active"]["run_id"],
        json!(id),
        "the run did not live on"
    );
    let hold = pace_hold(&looper).expect("a pacing hold");
    let status = looper.get("/status").body;
    let resets = unix(&status["quota"]["windows"][0]["resets_at"]);
    assert_eq!(unix(&hold["until"]), resets, "{hold}\n{status}");
    // The operator stops the run; autopoll starts the next one at the reset, not before.
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    let row = looper.wait("autopoll to start a run at the reset", || {
        let runs = looper.get("/runs").body["runs"].as_array()?.clone();
        runs.into_iter().find(|r| r["run_id"] != json!(id))
    });
    looper.assert_resumed(&row, resets, "quota_pace");
}

/// Under the line nothing is held: a run's hand-off is taken, again and again.
#[test]
fn under_the_line_the_loop_is_never_held() {
    let fx = Fixture::new("quota-under");
    // Half of the 5-hour window gone with 30 % used (line 45 %); a week's first day, 4 %.
    let mut env = paced_env(
        &fx,
        "30:300:9000,4:10080:600000",
        &[("LOOPER_QUOTA_RESERVE_PERCENT", "20")],
    );
    env.retain(|(k, _)| *k != "LOOPER_AUTO_START_WHEN_IDLE");
    let looper = fx.start_owned(&env);
    let a = looper.run(json!({"codex_prompt": "go"}));
    let mut id = run_id_of(&a);
    for _ in 0..3 {
        let answer = answer_of(
            &looper,
            &fx.path("ws/.looper/inbox"),
            &format!("handoff-{id}"),
        );
        assert_eq!(answer["status"], json!(200), "{answer}\n{}", looper.tail());
        id = answer["body"]["run_id"].as_str().unwrap().to_string();
    }
    assert!(pace_hold(&looper).is_none());
    let quota = looper.get("/quota").body;
    assert_eq!(quota["ok"], json!(true), "{quota}");
    let points = quota["history"].as_array().unwrap();
    assert!(!points.is_empty(), "{quota}");
    let five = &points.last().unwrap()["windows"]["5-hour"];
    assert_eq!(five["used_percent"], json!(30.0), "{quota}");
    assert!(five["pace_percent"].as_f64().unwrap() > 30.0, "{quota}");
}

/// Bad pacing settings stop the start, naming the variable.
#[test]
fn bad_pacing_settings_are_refused_by_name() {
    let fx = Fixture::new("quota-config");
    for (env, named) in [
        (vec![("LOOPER_QUOTA_PACE", "fast")], "LOOPER_QUOTA_PACE"),
        (
            vec![
                ("LOOPER_QUOTA_PACE", "even"),
                ("LOOPER_QUOTA_RESERVE_PERCENT", "100"),
            ],
            "LOOPER_QUOTA_RESERVE_PERCENT",
        ),
        (
            vec![("LOOPER_QUOTA_RESERVE_PERCENT", "10")],
            "LOOPER_QUOTA_PACE=even",
        ),
        (
            vec![
                ("LOOPER_QUOTA_PACE", "even"),
                ("LOOPER_QUOTA_WORK_HOURS", "weekdays 9-5"),
            ],
            "LOOPER_QUOTA_WORK_HOURS",
        ),
        (
            vec![
                ("LOOPER_QUOTA_PACE", "even"),
                ("LOOPER_QUOTA_RESERVE_PERCENT", "40"),
                ("LOOPER_QUOTA_WORK_HOURS", "Mon-Fri 09:00-18:00"),
                ("LOOPER_QUOTA_WORK_RESERVE_PERCENT", "20"),
            ],
            "LOOPER_QUOTA_WORK_RESERVE_PERCENT",
        ),
    ] {
        let (mut child, stderr_path) = fx.spawn(&env);
        assert_eq!(child.wait().unwrap().code(), Some(2), "{env:?}");
        let text = common::read(stderr_path);
        assert!(text.contains(named), "{env:?}: {text}");
    }
}

/// `looper resume` ends a pacing hold at once (autopoll goes on before the time said, and
/// the pace is waived until then), and the figures Looper kept outlive a restart.
#[test]
fn resume_ends_a_pacing_hold_and_the_figures_outlive_a_restart() {
    let fx = Fixture::new("quota-resume");
    let home = fx.path("codex-home");
    // 99 % of the week with 10 % kept: held until the reset, a minute away.
    let resets = now() + 60;
    let limits =
        json!({"secondary": {"used_percent": 99.0, "window_minutes": 10080, "resets_at": resets}});
    common::owners_session(&home, "a", limits);
    let mut env = paced_env(&fx, "-", &[("LOOPER_QUOTA_RESERVE_PERCENT", "10")]);
    env.retain(|(k, _)| *k != "FAKE_CODEX");
    env.push(("FAKE_CODEX", "record;sleep:600".into()));
    let looper = fx.start_owned(&env);
    let hold = looper.wait("the pacing hold", || pace_hold(&looper));
    assert_eq!(unix(&hold["until"]), resets, "{hold}");
    let url = format!("http://127.0.0.1:{}", looper.port);
    let o = cli(&fx, &["resume"], &[("LOOPER_URL", &url)]);
    assert!(o.status.success(), "{}", stdout(&o));
    let row = looper.wait("autopoll to go on at once", || {
        looper.get("/runs").body["runs"]
            .as_array()?
            .first()
            .cloned()
    });
    assert!(unix(&row["started_at"]) < resets, "{row}");
    assert!(pace_hold(&looper).is_none(), "held again though waived");
    let kept = looper.get("/quota").body["history"]
        .as_array()
        .unwrap()
        .len();
    assert!(kept >= 1);
    drop(looper);
    let env: Vec<(&str, String)> = env
        .into_iter()
        .filter(|(k, _)| *k != "LOOPER_AUTO_START_WHEN_IDLE")
        .collect();
    let again = fx.start_owned(&env);
    let history = again.get("/quota").body["history"].clone();
    assert!(history.as_array().unwrap().len() >= kept, "{history}");
    assert_eq!(
        history[0]["windows"]["weekly"]["used_percent"],
        json!(99.0),
        "{history}"
    );
}

/// The attack: `quota.jsonl` swapped for a FIFO whose pipe is full (the agent can write
/// `/tmp`, where a state directory may be). Looper refuses to write into it instead of
/// blocking for good: `/status` answers, the figures are still read and shown, the failed
/// write is said. And a figure dated in the future (a clock once ahead) hides no later one.
#[test]
fn a_fifo_or_a_future_date_in_the_figures_wedges_nothing() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fx = Fixture::new("quota-fifo");
    let home = fx.path("codex-home");
    let day = home
        .join("sessions")
        .join(chrono::Local::now().format("%Y/%m/%d").to_string());
    std::fs::create_dir_all(&day).unwrap();
    let event = |used: f64, timestamp: Option<&str>| {
        let mut v = json!({"type": "event_msg", "payload": {"type": "token_count",
            "rate_limits": {"secondary": {"used_percent": used, "window_minutes": 10080,
                "resets_at": now() + 300_000}}}});
        if let Some(t) = timestamp {
            v["timestamp"] = json!(t);
        }
        format!("{v}\n")
    };
    std::fs::write(
        day.join("rollout-future.jsonl"),
        event(10.0, Some("9999-12-31T23:59:59Z")),
    )
    .unwrap();
    let env = paced_env(&fx, "-", &[]);
    let looper = fx.start_owned(&env);
    let weekly =
        |looper: &Looper| looper.get("/status").body["quota"]["windows"][0]["used_percent"].clone();
    looper.wait("the first figures", || {
        (weekly(&looper) == json!(10.0)).then_some(())
    });
    // The FIFO, its pipe filled, held open by us.
    let quota = fx.path("logs/quota.jsonl");
    std::fs::remove_file(&quota).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&quota)
        .status()
        .unwrap();
    assert!(made.success());
    let mut fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&quota)
        .unwrap();
    while fifo.write(&[b'x'; 4096]).is_ok() {}
    // New figures, written after the future-dated ones.
    std::fs::write(day.join("rollout-later.jsonl"), event(20.0, None)).unwrap();
    looper.wait(
        "the later figures, shown though they could not be kept",
        || (weekly(&looper) == json!(20.0)).then_some(()),
    );
    looper.wait("the failed write said", || {
        looper
            .server_log()
            .contains("quota.history_write_failed")
            .then_some(())
    });
    assert_eq!(looper.get("/quota").status, 200);
    drop(fifo);
}
