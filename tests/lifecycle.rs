//! Black-box tests of the run lifecycle: autopoll, history across restarts, `/status`,
//! hung runs, crash-loop back-off and exit notices. Intervals are fractions of a second.

mod common;

use common::{alive, FakeZulip, Fixture};
use serde_json::{json, Value};

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn runs(looper: &common::Looper) -> Vec<Value> {
    let a = looper.get("/runs");
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["runs"].as_array().unwrap().clone()
}

/// The first tick starts a run with an `auto` id and says why on Zulip; while it lives, later
/// ticks start nothing.
#[test]
fn autopoll_starts_one_run_when_idle() {
    let fx = Fixture::new("autopoll");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]));
    let rec = looper.wait("an autopoll run", || looper.records().into_iter().next());
    looper.wait("three ticks that saw the live run", || {
        (count(
            &looper.server_log(),
            "codex.exec.autopoll.skip reason=live_run",
        ) >= 3)
            .then_some(())
    });
    assert_eq!(looper.records().len(), 1);
    assert!(alive(rec["pid"].as_u64().unwrap()));
    let rows = runs(&looper);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["trigger"], json!("autopoll"));
    assert!(rows[0]["request_id"].as_str().unwrap().starts_with("auto"));
    assert_eq!(rows[0]["return_code"], json!(null));
    // Announced with its reason: the first tick after a start does not wait for quiet logs.
    let said = z.contents();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with(&format!(
            "Looper: autopoll starts a run in {}: ",
            fx.path("ws").display()
        )) && said[0].contains("first tick since Looper started"),
        "{said:?}"
    );
    // The default workspace and the built-in prompt about TODO.md.
    assert_eq!(rec["cwd"], json!(fx.path("ws")));
    let prompt = rec["argv"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap();
    assert!(prompt.contains("TODO.md"), "{prompt}");
    let status = looper.get("/status").body;
    assert_eq!(status["active"]["pid"], rec["pid"]);
    assert_eq!(status["autopoll"]["enabled"], json!(true));
    assert_eq!(status["autopoll"]["interval_seconds"], json!(0.2));
    assert!(status["autopoll"]["next_tick_at"].is_string(), "{status}");
}

/// After a run ends, the next one waits until the newest run log is older than the window.
#[test]
fn autopoll_restarts_after_the_staleness_window() {
    let fx = Fixture::new("stale-window");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.1"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "1"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;print:short run;sleep:0.2;exit:0"),
    ]);
    let first_log = looper.wait("the first run to finish", || {
        let rows = runs(&looper);
        let row = rows.last()?;
        row["return_code"].as_i64()?;
        Some(row["log_path"].as_str()?.to_string())
    });
    let second = looper.wait("a second run", || {
        (looper.records().len() >= 2).then(|| looper.records()[1].clone())
    });
    let log_mtime = std::fs::metadata(&first_log).unwrap().modified().unwrap();
    let rec_path = fx.path(&format!("rec/{}.json", second["pid"]));
    let started = std::fs::metadata(rec_path).unwrap().modified().unwrap();
    let gap = started.duration_since(log_mtime).unwrap();
    assert!(
        gap.as_secs_f64() >= 0.9,
        "restarted {gap:?} after the last output"
    );
    looper.log_with("reason=recent_log");
}

/// Autopoll never starts a run while `/run` holds the guard.
#[test]
fn autopoll_waits_while_run_holds_the_guard() {
    let fx = Fixture::new("guard");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.1"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let a = looper.run(json!({"codex_prompt": "mine", "codex_exec_delay_seconds": 1.5}));
    assert_eq!(a.status, 200, "{}", a.body);
    let rid = a.body["request_id"].as_str().unwrap();
    let log = looper.log_with(&format!("run.success request_id={rid} "));
    let delay_at = log
        .find(&format!("run.step request_id={rid} action=delay"))
        .expect("delay line");
    let done_at = log
        .find(&format!("run.success request_id={rid}"))
        .expect("success line");
    let during = &log[delay_at..done_at];
    assert!(
        during.contains("codex.exec.autopoll.skip reason=run_in_progress"),
        "{during}"
    );
    assert!(!during.contains("codex.exec.autopoll.start"), "{during}");
}

/// The row of `run_id` in `/runs`.
fn row_of(looper: &common::Looper, run_id: &Value) -> Value {
    runs(looper)
        .into_iter()
        .find(|r| &r["run_id"] == run_id)
        .unwrap_or_else(|| panic!("no row for {run_id}"))
}

/// A restarted Looper resumes its loop soon: the first tick comes a few seconds after the
/// start, not a whole `LOOPER_IDLE_POLL_SECONDS` (five minutes by default) later.
#[test]
fn a_restarted_looper_resumes_its_loop_soon() {
    let fx = Fixture::new("autopoll-soon");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "3600"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let rec = looper.wait("the first tick's run", || {
        looper.records().into_iter().next()
    });
    let rows = runs(&looper);
    assert_eq!(rows[0]["trigger"], json!("autopoll"), "{rows:?}");
    assert!(alive(rec["pid"].as_u64().unwrap()));
}

/// Starts a run, then kills Looper with SIGKILL; the run's id and pid (it lives on until the
/// handle, which cleans up after the test, is dropped).
fn start_run_then_kill_looper(looper: &mut common::Looper) -> (Value, u64) {
    let a = looper.run(json!({"codex_prompt": "p"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid = a.body["codex_exec_result"]["pid"].as_u64().unwrap();
    looper.signal(libc::SIGKILL);
    looper.wait_exit();
    assert!(alive(pid), "a run outlives its Looper");
    (a.body["run_id"].clone(), pid)
}

/// When Looper itself dies (SIGKILL), its runs go on. The next Looper leaves their rows
/// open while they live, completes them when they end unwatched (return code and outcome
/// `unknown`: before, both were `null`), and records why when it stops one itself.
#[test]
fn runs_outliving_a_killed_looper_get_their_rows_completed() {
    let fx = Fixture::new("unwatched");
    let go = fx.path("go");
    let script = format!("record;await:{};exit:3", go.display());
    // A run that ends on its own while no Looper watches.
    let mut first = fx.start_owned(&[("FAKE_CODEX", script)]);
    let (run_a, pid_a) = start_run_then_kill_looper(&mut first);
    std::fs::write(&go, "").unwrap();
    first.wait("the orphaned run to end", || (!alive(pid_a)).then_some(()));

    // The next Looper completes its row at start, and keeps a live orphan's row open.
    let mut second = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let row = row_of(&second, &run_a);
    assert!(row["ended_at"].is_string(), "{row}");
    assert_eq!(
        row["return_code"],
        json!(null),
        "nobody saw its exit: {row}"
    );
    // Every ended row has an outcome: here that its end could not be learnt.
    assert_eq!(row["outcome"], json!("unknown"), "{row}");
    assert!(row.get("stop_reason").is_none(), "{row}");
    second.log_with(&format!(
        "codex.exec.exit_unwatched run_id={}",
        run_a.as_str().unwrap()
    ));
    let (run_b, pid_b) = start_run_then_kill_looper(&mut second);

    let third = fx.start(&[]);
    let row = row_of(&third, &run_b);
    assert_eq!(row["ended_at"], json!(null), "still running: {row}");
    // Stopping it completes its row, with the reason.
    let c = third.run(json!({"codex_prompt": ""}));
    assert_eq!(c.status, 200, "{}", c.body);
    assert!(
        c.body["killed_codex_exec_pids"]
            .as_array()
            .unwrap()
            .contains(&json!(pid_b)),
        "{}",
        c.body
    );
    // Its end is recorded by its watcher (the run was adopted at start), with the reason:
    // stopped, since nothing replaced it.
    let row = third.wait("the adopted run's end", || {
        let row = row_of(&third, &run_b);
        row["ended_at"].is_string().then_some(row)
    });
    assert_eq!(row["stop_reason"], json!("stopped"), "{row}");
    assert_eq!(row["outcome"], json!("stopped"), "{row}");
    assert_eq!(
        runs(&third)
            .iter()
            .filter(|r| r["ended_at"].is_null())
            .count(),
        0
    );
}

/// After a restart, a run the earlier Looper started is live everywhere: `/status`'s active
/// run (said adopted), `/metrics`' `looper_run_active`. When it ends, its row has its report
/// (tokens and last message, from its log and its session file), its true duration, and
/// `unknown` for what no one could learn: it is no child of this Looper. (The next Looper
/// said "active run: none" and recorded it with no tokens, lasting 0.4 s.)
#[test]
fn a_run_outliving_a_restart_is_live_everywhere_and_ends_with_its_report() {
    let fx = Fixture::new("adopted");
    let go = fx.path("go");
    let script = format!("record;await:{};turn:all done;exit:0", go.display());
    let mut first = fx.start_owned(&[("FAKE_CODEX", script)]);
    let started = std::time::Instant::now();
    let (run_a, pid_a) = start_run_then_kill_looper(&mut first);
    let second = fx.start(&[]);
    let status = second.get("/status").body;
    assert_eq!(status["active"]["run_id"], run_a, "{status}");
    assert_eq!(status["active"]["pid"], json!(pid_a), "{status}");
    assert_eq!(status["active"]["adopted"], json!(true), "{status}");
    let metrics = minreq::get(second.url("/metrics")).send().unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.contains("\nlooper_run_active 1\n"), "{metrics}");
    std::fs::write(&go, "").unwrap();
    let lived = started.elapsed().as_secs_f64();
    let row = second.wait("the adopted run's end", || {
        let row = row_of(&second, &run_a);
        row["ended_at"].is_string().then_some(row)
    });
    assert_eq!(row["tokens"]["used"], json!(12345 - 2000 + 678), "{row}");
    assert_eq!(row["tokens"]["source"], json!("session"), "{row}");
    assert_eq!(row["last_message"], json!("all done"), "{row}");
    assert_eq!(row["return_code"], json!(null), "{row}");
    assert_eq!(row["outcome"], json!("unknown"), "{row}");
    let lasted = row["duration_seconds"].as_f64().unwrap();
    assert!(
        lasted >= lived - 0.05,
        "it lasted {lasted} s, at least {lived} s: {row}"
    );
    assert!(second.get("/status").body["active"].is_null());
}

/// History survives a restart; shutdown completes the rows of the runs it stops.
#[test]
fn history_survives_a_restart() {
    let fx = Fixture::new("history");
    let mut looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "remember me"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let run_id = a.body["run_id"].clone();
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    drop(looper);
    let looper = fx.start(&[]);
    let rows = runs(&looper);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["run_id"], run_id);
    assert_eq!(row["trigger"], json!("http"));
    assert_eq!(row["return_code"], json!(-15));
    assert_eq!(row["stop_reason"], json!("shutdown"));
    assert!(row["ended_at"].is_string() && row["duration_seconds"].is_number());
    let status = looper.get("/status").body;
    assert_eq!(status["last_exit"]["run_id"], run_id);
    assert_eq!(status["active"], json!(null));
    // An old run calling late after the restart is stale too.
    let late = looper.run(json!({"codex_prompt": "", "from_run_id": run_id}));
    assert_eq!(late.status, 409, "{}", late.body);
}

/// A torn last line (a crash mid-write) is skipped with a warning, never fatal.
#[test]
fn a_torn_history_line_is_skipped() {
    let fx = Fixture::new("torn");
    let good = json!({"run_id":"aaaa1111","request_id":"aaaa1111","trigger":"http","pid":1,
        "workspace":"/w","log_path":"/l","started_at":"2026-01-01T00:00:00+00:00",
        "ended_at":"2026-01-01T00:00:01+00:00","return_code":0,"duration_seconds":1.0});
    std::fs::write(
        fx.path("logs/runs.jsonl"),
        format!("{good}\n{{\"run_id\":\"bbbb2222\",\"requ"),
    )
    .unwrap();
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    looper.log_with("history.skipped_lines count=1");
    // An old row keeps every field it had; what later versions record is null in it.
    let holds_good = |row: &Value| {
        good.as_object().unwrap().iter().all(|(k, v)| &row[k] == v) && row["tokens"].is_null()
    };
    let rows = runs(&looper);
    assert!(rows.len() == 1 && holds_good(&rows[0]), "{rows:?}");
    let a = looper.run(json!({"codex_prompt": "after the tear"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let rows = runs(&looper);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["run_id"], a.body["run_id"]);
    assert!(holds_good(&rows[1]), "{rows:?}");
    let limited = looper.get("/runs?limit=1").body;
    assert_eq!(limited["runs"].as_array().unwrap().len(), 1);
    assert_eq!(looper.get("/runs?limit=zero").status, 400);
}

/// A run whose log stops growing is replaced by a fresh one with the same prompt.
#[test]
fn a_hung_run_is_replaced() {
    let fx = Fixture::new("hung");
    let looper = fx.start(&[
        ("LOOPER_HUNG_RUN_SECONDS", "0.5"),
        ("FAKE_CODEX", "record;print:then silence;sleep:600"),
    ]);
    let a = looper.run(json!({"codex_prompt": "same prompt"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let first = a.body["run_id"].clone();
    let second = looper.wait("the replacement run", || {
        (looper.records().len() >= 2).then(|| looper.records()[1].clone())
    });
    assert_eq!(
        second["argv"].as_array().unwrap().last(),
        Some(&json!("same prompt"))
    );
    assert!(!alive(a.body["codex_exec_result"]["pid"].as_u64().unwrap()));
    let rows = looper.wait("the hung run's row", || {
        let rows = runs(&looper);
        let old = rows.iter().find(|r| r["run_id"] == first)?;
        old["return_code"].as_i64().map(|_| rows.clone())
    });
    let old = rows.iter().find(|r| r["run_id"] == first).unwrap();
    assert_eq!(old["stop_reason"], json!("hung"));
    assert_eq!(old["return_code"], json!(-15));
    assert!(rows.iter().any(|r| r["trigger"] == json!("autopoll")));
    looper.log_with("codex.exec.autopoll.hung");
}

/// A codex that fails at once is started only a few times, then autopoll backs off, shows
/// it in /status and announces it once.
#[test]
fn a_crash_loop_backs_off() {
    let fx = Fixture::new("crashloop");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;print:cannot authenticate;exit:1"),
    ]));
    let status = looper.wait("the back-off", || {
        let s = looper.get("/status").body;
        s["autopoll"]["backoff_until"].is_string().then_some(s)
    });
    assert!(status["autopoll"]["consecutive_crashes"].as_u64().unwrap() >= 3);
    // looper status names the back-off's end as the next tick that may start a run.
    let shown = common::cli(&fx, &["status"], &[("LOOPER_URL", &looper.url(""))]);
    let shown = common::stdout(&shown);
    assert!(
        shown.contains("; next tick the first after the back-off ends ("),
        "{shown}"
    );
    // The back-off (at least 10 s) holds further starts: watch 10 ticks skip for it.
    let starts = looper.records().len();
    // Counted in the log up to a request made after that (its line is logged at DEBUG, after
    // every tick before it): the ten ticks watched all come later.
    assert_eq!(looper.get("/mark-starts-counted").status, 404);
    let skipped_before = looper
        .log_with(" path=/mark-starts-counted ")
        .matches("reason=backoff")
        .count();
    looper.wait("ten ticks held back", || {
        let skipped = looper.server_log().matches("reason=backoff").count();
        (skipped >= skipped_before + 10).then_some(())
    });
    assert_eq!(
        looper.records().len(),
        starts,
        "a run started during the back-off"
    );
    assert!(
        (3..=4).contains(&starts),
        "{starts} starts before the back-off"
    );
    // Each start is announced with its reason: the first tick, then quiet logs.
    let (announced, notices): (Vec<String>, Vec<String>) = z
        .contents()
        .into_iter()
        .partition(|m| m.starts_with("Looper: autopoll starts a run in "));
    assert_eq!(announced.len(), starts, "{announced:?}");
    assert!(
        announced[0].contains("first tick since Looper started"),
        "{announced:?}"
    );
    assert!(
        announced[1..].iter().all(|m| m
            .contains("the run logs have been quiet for 0 s (LOOPER_IDLE_LOG_STALE_SECONDS=0)")),
        "{announced:?}"
    );
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("keeps failing") && notices[0].contains("cannot authenticate"));
    assert_eq!(runs(&looper)[0]["return_code"], json!(1));
}

/// With LOOPER_NOTIFY_ON_EXIT=1 each run's end is announced with its last line.
#[test]
fn run_ends_are_announced_when_asked() {
    let fx = Fixture::new("notify");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_NOTIFY_ON_EXIT", "1"),
        ("FAKE_CODEX", "record;print:all done here;sleep:0.3;exit:0"),
    ]));
    let a = looper.run(json!({"zulip_message": "go", "codex_prompt": "p"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let notice = looper.wait("the exit notice", || {
        z.messages()
            .iter()
            .map(|m| m.form()["content"].clone())
            .find(|c| c.contains("ended with rc=0"))
    });
    assert!(
        notice.contains(a.body["run_id"].as_str().unwrap()),
        "{notice}"
    );
    assert!(notice.contains("all done here"), "{notice}");
}

/// /status and /runs need the token when one is set; /health never does.
#[test]
fn status_and_runs_need_the_token() {
    let fx = Fixture::new("status-auth");
    let looper = fx.start(&[("LOOPER_API_TOKEN", "s3cret-token")]);
    for path in ["/status", "/runs"] {
        assert_eq!(looper.get(path).status, 401, "{path}");
        let ok = looper.get_with(path, &[("Authorization", "Bearer s3cret-token")]);
        assert_eq!(ok.status, 200, "{path}");
    }
    assert_eq!(looper.get("/health").status, 200);
    let s = looper
        .get_with("/status", &[("X-Looper-Token", "s3cret-token")])
        .body;
    assert_eq!(s["run_in_progress"], json!(false));
    assert_eq!(s["active"], json!(null));
    assert_eq!(s["last_exit"], json!(null));
    assert_eq!(s["autopoll"]["enabled"], json!(false));
    assert_eq!(s["autopoll"]["backoff_until"], json!(null));
    assert_eq!(s["version"], json!(env!("CARGO_PKG_VERSION")));
}
