//! Black-box tests of the stop rules: a loop finishes (its TODO list done, or the run hands
//! off with done), pauses when its runs change nothing or a budget is reached, remembers it
//! across restarts, shows it wherever the loop is shown, and goes on with `looper resume`.
//! And the false alarms: a failed run, a stale or unknown hand-off, runs that do not count.

mod common;

use common::{cli, have_git, run_id_of, stderr, stdout, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

/// Waits for the Zulip summary of run `id` (sent after the stop rules had their say).
fn summary_of(looper: &Looper, z: &FakeZulip, id: &str) -> String {
    looper.wait(&format!("the summary of run {id} on Zulip"), || {
        z.contents()
            .into_iter()
            .find(|m| m.contains(&format!("run {id} ")) && m.contains(" after "))
    })
}

/// A fixture whose workspace is a git repository with `todo` as its committed `TODO.md`
/// (progress is what git sees); `None`, said, where git is not installed.
fn git_fixture(tag: &str, todo: &str) -> Option<Fixture> {
    if !have_git() {
        common::skip("git is not installed here");
        return None;
    }
    let fx = Fixture::new(tag);
    common::git_workspace_with_todo(&fx.path("ws"), todo);
    Some(fx)
}

/// The JSON a `looper` command printed, once it exited 0 saying `words` on stderr.
fn ok_saying(o: &std::process::Output, words: &str) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(o), stderr(o));
    assert!(stderr(o).contains(words), "{}", stderr(o));
    serde_json::from_str(stdout(o).trim()).expect("JSON on stdout")
}

/// Waits until autopoll skipped three ticks for `reason`.
fn skips(looper: &Looper, reason: &str) {
    let line = format!("autopoll.skip reason={reason}");
    looper.wait(&format!("autopoll to skip for {reason}"), || {
        (looper.server_log().matches(&line).count() >= 3).then_some(())
    });
}

/// The messages Zulip got that contain `words`.
fn said_with(z: &FakeZulip, words: &str) -> Vec<String> {
    z.contents()
        .into_iter()
        .filter(|m| m.contains(words))
        .collect()
}

fn loop_of(looper: &Looper) -> Value {
    looper.get("/status").body["loop"].clone()
}

fn metrics(looper: &Looper) -> String {
    let r = minreq::get(looper.url("/metrics"))
        .send()
        .expect("GET /metrics");
    r.as_str().unwrap_or_default().to_string()
}

fn url_of(looper: &Looper) -> String {
    format!("http://127.0.0.1:{}", looper.port)
}

/// The records of the runs the fake codex started with `prompt`.
fn started_with(looper: &Looper, prompt: &str) -> usize {
    looper
        .records()
        .iter()
        .filter(|r| r["argv"].as_array().and_then(|a| a.last()) == Some(&json!(prompt)))
        .count()
}

/// A run that ticks the last open item and exits 0 finishes the loop: one message says so,
/// `/status`, `/metrics` and `looper status` show it, autopoll starts nothing more there —
/// also after a restart — and `looper resume` lets autopoll go on.
#[test]
fn the_last_tick_finishes_the_loop_also_after_a_restart() {
    let Some(fx) = git_fixture("finish", "# Plan\n- [x] one\n- [ ] two\n") else {
        return;
    };
    let z = FakeZulip::start();
    let go = fx.path("go");
    let script = format!(
        "record;await:{};tick:TODO.md;commit:tick two;turn:All done.;exit:0",
        go.display()
    );
    let env = z.env_with(&[
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", &script),
    ]);
    let mut looper = fx.start_owned(&env);
    // Autopoll starts the first run by itself; it ticks the last item once Looper has read
    // its start.
    let id = looper.wait("autopoll's first run", || {
        let line = looper.log_with("run.start_state run_id=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("run_id="))
            .map(str::to_string)
    });
    std::fs::write(&go, "").unwrap();
    let summary = summary_of(&looper, &z, &id);
    let l = loop_of(&looper);
    assert_eq!(l["state"], "finished", "{l}\n{}", looper.tail());
    assert_eq!(l["reason"], "todo_done", "{l}");
    assert_eq!(l["run_id"], json!(id), "{l}");
    assert!(l["since"].is_string() && l["until"].is_null(), "{l}");
    let finished = said_with(&z, "is finished");
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert!(
        finished[0].contains("TODO.md has no open item") && summary == finished[0],
        "the finish comes with the run's summary: {finished:?}"
    );
    let metrics = metrics(&looper);
    assert!(
        metrics.contains("looper_loop_finished{") && metrics.contains("reason=\"todo_done\"} 1"),
        "{metrics}"
    );
    let o = cli(&fx, &["status"], &[("LOOPER_URL", &url_of(&looper))]);
    assert!(
        stdout(&o).contains("loop: finished in") && stdout(&o).contains("todo_done"),
        "{}",
        stdout(&o)
    );
    // Autopoll ticks on and starts nothing.
    skips(&looper, "todo_done");
    assert_eq!(looper.records().len(), 1);

    // systemd restarts Looper: the loop stays finished.
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    drop(looper);
    let looper = fx.start_owned(&env);
    skips(&looper, "todo_done");
    assert_eq!(loop_of(&looper)["state"], "finished");
    assert_eq!(
        looper.records().len(),
        1,
        "a finished loop was started again"
    );

    // `looper resume` ends it: autopoll starts the next run.
    let o = cli(&fx, &["resume"], &[("LOOPER_URL", &url_of(&looper))]);
    let answer = ok_saying(&o, "(was finished: todo_done)");
    assert_eq!(answer["resumed"][0]["reason"], "todo_done", "{answer}");
    looper.wait("autopoll's run after the resume", || {
        (looper.records().len() == 2).then_some(())
    });
}

/// `LOOPER_WORKSPACE` names the workspace through a link, with a trailing slash: the hold
/// its finished loop gets (kept under the real path, as runs know it) still stops autopoll.
#[test]
fn a_hold_holds_a_workspace_named_through_a_link() {
    let Some(fx) = git_fixture("finish-link", "- [ ] one\n") else {
        return;
    };
    let link = fx.path("link");
    std::os::unix::fs::symlink(fx.path("ws"), &link).unwrap();
    let z = FakeZulip::start();
    let env = z.env_with(&[
        ("LOOPER_WORKSPACE", &format!("{}/", link.display())),
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;tick:TODO.md;commit:tick;exit:0"),
    ]);
    let looper = fx.start_owned(&env);
    skips(&looper, "todo_done");
    assert_eq!(loop_of(&looper)["state"], "finished", "{}", looper.tail());
    assert_eq!(
        looper.records().len(),
        1,
        "autopoll started a finished loop again\n{}",
        looper.tail()
    );
}

/// A run that exits 1 with nothing open finishes nothing: its failure is not the task done.
#[test]
fn a_failed_run_with_an_empty_list_finishes_nothing() {
    let Some(fx) = git_fixture("finish-failed", "- [x] one\n- [x] two\n") else {
        return;
    };
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("FAKE_CODEX", "record;sleep:0.5;turn:I failed.;exit:1"),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    summary_of(&looper, &z, &id);
    let l = loop_of(&looper);
    assert_eq!(l["state"], "idle", "{l}\n{}", looper.tail());
    assert!(!looper.server_log().contains("loop.finished"));
    assert!(z.contents().iter().all(|m| !m.contains("is finished")));
}

/// `looper trigger --done` from a stale run is refused and finishes nothing; from the live
/// run it finishes the loop, stops nothing and starts nothing; one message says so.
#[test]
fn done_comes_only_from_the_run_that_sends_it() {
    let fx = Fixture::new("done");
    let z = FakeZulip::start();
    let go = fx.path("go");
    let looper = fx.start_owned(&z.env_with(&[(
        "FAKE_CODEX",
        &format!("record;await:{};exit:0", go.display()),
    )]));
    let old = looper.run(json!({"codex_prompt": "one"}));
    let live = looper.run(json!({"codex_prompt": "two"}));
    assert_eq!((old.status, live.status), (200, 200));
    let (old_id, live_id) = (run_id_of(&old), run_id_of(&live));
    let live_pid = common::pid_of(&live);
    let url = url_of(&looper);

    let o = cli(
        &fx,
        &["trigger", "--done", "--from-run", &old_id],
        &[("LOOPER_URL", &url)],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("stale: run {old_id} is no longer active")),
        "{}",
        stderr(&o)
    );
    assert_eq!(loop_of(&looper)["state"], "running");

    let sent_before = z.messages().len();
    let o = cli(
        &fx,
        &["trigger", "--done", "--message", "all items ticked"],
        &[("LOOPER_URL", &url), ("LOOPER_RUN_ID", &live_id)],
    );
    let answer = ok_saying(&o, "is finished; nothing was stopped, no run started");
    assert_eq!(
        (&answer["loop_done"], &answer["codex_exec_started"]),
        (&json!(true), &json!(false)),
        "{answer}"
    );
    assert!(common::alive(live_pid), "done stopped the run that sent it");
    let l = loop_of(&looper);
    assert_eq!(
        (&l["state"], &l["reason"]),
        (&json!("finished"), &json!("loop_done")),
        "{l}"
    );
    let sent = z.contents();
    assert_eq!(sent.len(), sent_before + 1, "{sent:?}");
    let last = sent.last().unwrap();
    assert!(
        last.starts_with("all items ticked") && last.contains("is finished"),
        "{last}"
    );
    // The run ends by itself; its end says nothing more about the finish.
    std::fs::write(&go, "").unwrap();
    looper.ended_row(&live_id);
    looper.wait("the run's end to be judged", || {
        looper
            .server_log()
            .contains(&format!("run_id={live_id} pid={live_pid} return_code=0"))
            .then_some(())
    });
    assert_eq!(loop_of(&looper)["state"], "finished");
    assert_eq!(
        z.contents()
            .iter()
            .filter(|m| m.contains("is finished"))
            .count(),
        1
    );
    assert_eq!(
        looper.server_log().matches("codex.exec.spawn ").count(),
        2,
        "done started a run"
    );
}

/// Three runs in a row that change nothing pause the loop; runs that ended at codex's usage
/// limit or were stopped by a shutdown count for nothing; the count survives a restart; the
/// message names the three runs; `looper resume` ends the pause.
#[test]
fn runs_that_change_nothing_pause_the_loop() {
    let Some(fx) = git_fixture("stuck", "- [ ] one\n") else {
        return;
    };
    let z = FakeZulip::start();
    let limit = "stderr:ERROR: You\u{2019}ve hit your usage limit. Try again in 3 hours.";
    let env = z.env_with(&[(
        "FAKE_CODEX",
        &format!("record;sleep-if-prompt:long:600;sleep:0.4;turn:Nothing to do.;exit-if-prompt:work:0;{limit};exit:1"),
    )]);
    let mut looper = fx.start_owned(&env);
    let ended = |looper: &Looper, prompt: &str| {
        let a = looper.run(json!({"codex_prompt": prompt}));
        assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
        let id = run_id_of(&a);
        summary_of(looper, &z, &id);
        id
    };
    let first = ended(&looper, "work");
    ended(&looper, "limit");
    let second = ended(&looper, "work");
    assert_eq!(
        loop_of(&looper)["state"],
        "idle",
        "two runs paused the loop"
    );
    // A run stopped by the shutdown counts for nothing either.
    let long = looper.run(json!({"codex_prompt": "long"}));
    assert_eq!(long.status, 200, "{}", long.body);
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    drop(looper);
    let looper = fx.start_owned(&env);
    let third = ended(&looper, "work");
    let l = loop_of(&looper);
    assert_eq!(
        (&l["state"], &l["reason"]),
        (&json!("paused"), &json!("no_progress")),
        "{l}\n{}",
        looper.tail()
    );
    let detail = l["detail"].as_str().unwrap();
    assert!(
        detail.ends_with(&format!("{first}, {second}, {third}")),
        "{detail}"
    );
    let said = said_with(&z, "changed nothing");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(&third), "{}", said[0]);
    let metrics = metrics(&looper);
    assert!(metrics.contains("reason=\"no_progress\"} 1"), "{metrics}");
    let url = url_of(&looper);
    let o = cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
    assert!(stdout(&o).contains("paused since"), "{}", stdout(&o));
    let o = cli(
        &fx,
        &["resume", "--workspace", &fx.path("ws").to_string_lossy()],
        &[("LOOPER_URL", &url)],
    );
    ok_saying(&o, "(was paused: no_progress)");
    assert_eq!(loop_of(&looper)["state"], "idle");
    // The count starts again: one more run that changes nothing does not pause.
    ended(&looper, "work");
    assert_eq!(loop_of(&looper)["state"], "idle");
}

/// Past `LOOPER_MAX_RUNS_PER_DAY`, a run's hand-off is answered `429` with the reason and
/// when it clears, the run lives on, the loop pauses (said once), and `looper resume` ends
/// it.
#[test]
fn a_past_budget_handoff_gets_429_and_its_run_lives_on() {
    let fx = Fixture::new("budget");
    let z = FakeZulip::start();
    let next = json!({"zulip_message": "next please", "codex_prompt": "third"});
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_MAX_RUNS_PER_DAY", "2"),
        (
            "FAKE_CODEX",
            &format!("record;exit-if-prompt:short:0;post:{next};sleep:600"),
        ),
    ]));
    let a = looper.run(json!({"codex_prompt": "short"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.ended_row(&run_id_of(&a));
    let b = looper.run(json!({"codex_prompt": "long"}));
    assert_eq!(b.status, 200, "{}", b.body);
    let answer = &looper.posts(1)[0];
    assert_eq!(answer["status"], 429, "{answer}\n{}", looper.tail());
    let error = answer["body"]["error"].as_str().unwrap_or("");
    assert!(
        error.contains("2 runs started today, LOOPER_MAX_RUNS_PER_DAY=2")
            && error.contains("no run starts before")
            && error.contains("Nothing was stopped"),
        "{error}"
    );
    assert!(
        common::alive(common::pid_of(&b)),
        "the caller's run was stopped"
    );
    assert_eq!(started_with(&looper, "third"), 0);
    let l = loop_of(&looper);
    assert_eq!(
        (&l["state"], &l["reason"]),
        (&json!("paused"), &json!("max_runs_per_day")),
        "{l}"
    );
    let until = chrono::DateTime::parse_from_rfc3339(l["until"].as_str().unwrap()).unwrap();
    assert_eq!(
        until.with_timezone(&chrono::Local).time(),
        chrono::NaiveTime::MIN,
        "the pause ends at the local midnight: {l}"
    );
    let said = said_with(&z, "is paused");
    assert_eq!(said.len(), 1, "{said:?}");
    let metrics = metrics(&looper);
    assert!(
        metrics.contains("reason=\"max_runs_per_day\"} 1")
            && metrics.contains("looper_loop_paused_until_timestamp_seconds{"),
        "{metrics}"
    );
    let url = url_of(&looper);
    let o = cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
    assert!(
        stdout(&o).contains("max_runs_per_day") && stdout(&o).contains("(or `looper resume`)"),
        "{}",
        stdout(&o)
    );
    // A run may not resume the loop, whatever token it holds.
    let records = looper.records();
    let token = records
        .last()
        .and_then(|r| r["looper_run_token"].as_str())
        .expect("the run's token in its record");
    let refused = looper.post_with(
        "/resume",
        "{}",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(loop_of(&looper)["state"], "paused");
    let o = cli(&fx, &["resume"], &[("LOOPER_URL", &url)]);
    ok_saying(&o, "(was paused: max_runs_per_day)");
    assert_eq!(loop_of(&looper)["state"], "running");
}

/// With nothing running, a trigger naming a run Looper never started is refused (`409`,
/// saying so) and starts nothing.
#[test]
fn a_handoff_naming_an_unknown_run_is_refused() {
    let fx = Fixture::new("unknown");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let o = cli(
        &fx,
        &["trigger", "--message", "go", "--from-run", "deadbeef"],
        &[("LOOPER_URL", &url_of(&looper))],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("HTTP 409: unknown run: Looper never started a run deadbeef"),
        "{}",
        stderr(&o)
    );
    assert!(
        looper.records().is_empty(),
        "an unknown run's hand-off started a run"
    );
}

/// A run's hand-off while Zulip does not answer starts its run all the same; the message is
/// kept and arrives, marked late, once Zulip answers again.
#[test]
fn a_handoff_during_a_zulip_outage_starts_its_run_and_the_message_comes_late() {
    let fx = Fixture::new("outage");
    let z = FakeZulip::start();
    let next = json!({"zulip_message": "handing off to the next run", "codex_prompt": "second"});
    let go = fx.path("go");
    let looper = fx.start_owned(&z.env_with(&[(
        "FAKE_CODEX",
        &format!(
            "record;exit-if-prompt:second:0;await:{};post:{next};sleep:600",
            go.display()
        ),
    )]));
    let a = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}", a.body);
    // Zulip goes down, then the run hands off.
    for _ in 0..2 {
        z.push(
            503,
            &[],
            r#"{"result":"error","msg":"down for maintenance"}"#,
        );
    }
    std::fs::write(&go, "").unwrap();
    // (The caller is stopped with the run it replaces: the log tells what it was answered.)
    looper.log_with("zulip.send.queued");
    looper.wait("the handed-off run", || {
        (started_with(&looper, "second") == 1).then_some(())
    });
    let late = looper.wait("the late announcement", || {
        z.contents().into_iter().find(|m| {
            m.contains("\n> handing off to the next run\n") && m.contains("(late: queued at ")
        })
    });
    assert!(late.contains("while Zulip did not answer"), "{late}");
    looper.log_with("zulip.send.late");
}

/// Reading the loop's state changes nothing: with the page open (it reads `/status` every
/// 2 s, here every 20 ms), a usage-limit pause still ends at autopoll's tick, which says so
/// and starts a run at once, whatever the logs say. (A read ended the pause silently;
/// autopoll never saw it end and waited for the logs to go quiet.)
#[test]
fn reading_the_status_ends_no_pause() {
    let fx = Fixture::new("read-only");
    let ws = fx.path("ws").canonicalize().unwrap();
    let until = chrono::Local::now() + chrono::Duration::milliseconds(1500);
    let state = json!({"holds": {ws.to_string_lossy(): {
        "state": "paused", "reason": "usage_limit", "detail": "codex hit its usage limit",
        "since": chrono::Local::now().to_rfc3339(), "until": until.to_rfc3339(), "run_id": null}}});
    std::fs::write(fx.path("logs/loop-state.json"), state.to_string()).unwrap();
    // A run log that changed just now: the quiet-logs rule would wait ten minutes.
    std::fs::write(
        fx.path("logs/codex-exec-20261207-000000-0a0a0a0a.log"),
        "x\n",
    )
    .unwrap();
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.3"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "600"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, done) = (looper.url("/status"), stop.clone());
    let page = std::thread::spawn(move || {
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = minreq::get(&url).send();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let rec = looper.wait("the run after the pause's end", || {
        looper.records().into_iter().next()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    page.join().unwrap();
    assert!(
        rec["looper_run_id"].as_str().unwrap().starts_with("auto"),
        "{rec}"
    );
    looper.log_with("loop.pause_ended");
    looper.log_with("codex.exec.autopoll.resume reason=usage_limit_reset");
}
