//! Black-box tests of what a careful reading of the code found (issue "Correctness"): each
//! pins a behaviour that was wrong before.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use common::{alive, cli, pid_of, stderr, stdout, Fixture};
use serde_json::{json, Value};

/// A codex that exits while a process it left behind still holds its output (codex's
/// shell-snapshot shells do) has ended: the startup check sees the early exit, `/status`
/// shows no active run, and the log gets its trailer.
#[test]
fn a_run_ends_when_codex_exits_not_when_its_output_closes() {
    let fx = Fixture::new("held-output");
    let looper = fx.start(&[("FAKE_CODEX", "hold-output;record;print:bye;exit:3")]);
    let a = looper.run(json!({"codex_prompt": "x", "codex_exec_startup_check_seconds": 5}));
    assert_eq!(a.status, 500, "{}", a.body);
    let error = a.body["error"].as_str().unwrap();
    assert!(error.contains("exited early (rc=3"), "{error}");
    assert!(error.contains("bye"), "{error}");
    let status = looper.get("/status").body;
    assert!(status["active"].is_null(), "{status}");
    assert_eq!(status["last_exit"]["return_code"], 3, "{status}");
    let rec = &looper.records()[0];
    let holder = rec["helpers"][0].as_u64().unwrap();
    assert!(
        alive(holder),
        "the holder should still be there for this test to mean anything"
    );
    let row = &looper.get("/runs").body["runs"][0];
    let log = common::read(row["log_path"].as_str().unwrap());
    assert!(log.ends_with("\n# codex_exec_return_code=3\n"), "{log:?}");
}

/// A process a run starts while it is being stopped (here: it forks as it dies) carries
/// the run's id and is stopped too; the answer lists it among the stopped processes.
#[test]
fn a_process_started_during_the_stop_is_stopped_too() {
    let fx = Fixture::new("late-fork");
    let looper = fx.start(&[("FAKE_CODEX", "record;term-spawns")]);
    let first = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(first.status, 200, "{}", first.body);
    looper.record_of(pid_of(&first));
    let second = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(second.status, 200, "{}", second.body);
    let late_file = looper.wait("the late helper's pid", || {
        std::fs::read_dir(fx.path("rec"))
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("late-"))
    });
    let late: u64 = common::read(late_file.path()).trim().parse().unwrap();
    let still_alive = alive(late);
    if still_alive {
        // Clean up what this test started before failing.
        // SAFETY: kill(2) on the helper our fake codex started for this test.
        unsafe { libc::kill(late as i32, libc::SIGKILL) };
    }
    assert!(!still_alive, "the process forked during the stop survived");
    let killed = second.body["killed_codex_exec_pids"].as_array().unwrap();
    assert!(killed.contains(&json!(late)), "{killed:?}");
    assert!(second.body["remaining_codex_exec_pids"]
        .as_array()
        .unwrap()
        .is_empty());
}

/// Autopoll decides without the run guard: a trigger arriving during a tick is never
/// refused as busy when nothing is being set up.
#[test]
fn autopoll_ticks_never_make_a_trigger_busy() {
    let fx = Fixture::new("tick-busy");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.01"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "600"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
    ]);
    // The first tick starts a run (it ignores the quiet-logs window): a real setup, during
    // which a 409 would be right. Every later tick only looks.
    looper.wait("autopoll's first run", || {
        looper
            .server_log()
            .contains("codex.exec.autopoll.started")
            .then_some(())
    });
    let mut busy = 0;
    let mut last = None;
    for _ in 0..150 {
        let a = looper.run(json!({"codex_prompt": ""}));
        match a.status {
            200 => last = a.body["request_id"].as_str().map(str::to_string),
            409 => busy += 1,
            other => panic!("{other}: {}", a.body),
        }
    }
    // The ticks logged while the triggers came: up to the last one's end.
    let last = last.unwrap_or_else(|| panic!("all {busy} triggers were refused as busy"));
    let log = looper.log_with(&format!("http.end request_id={last} "));
    let ticks = log.matches("codex.exec.autopoll.skip").count();
    assert!(ticks > 10, "autopoll ticked only {ticks} times");
    assert_eq!(busy, 0, "{busy} of 150 triggers were refused as busy");
}

/// A workspace whose path is not UTF-8 (here the working directory, the default
/// workspace) is shown lossily in answers, `/status`, `/runs` and the history file: nothing
/// panics, no history line is lost.
#[test]
fn paths_that_are_not_utf8_are_shown_lossily() {
    let fx = Fixture::new("not-utf8");
    let odd = fx.dir.join(OsStr::from_bytes(b"ws-\xff\xfe"));
    std::fs::create_dir_all(&odd).unwrap();
    common::make_git_repo(&odd);
    let looper = fx.start_in(&odd, &[("LOOPER_WORKSPACE", "")]);
    let a = looper.run(json!({"codex_prompt": "p"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let shown = a.body["workspace"].as_str().unwrap();
    assert!(shown.ends_with("ws-\u{FFFD}\u{FFFD}"), "{shown}");
    let status = looper.get("/status");
    assert_eq!(status.status, 200);
    assert_eq!(status.body["active"]["workspace"], json!(shown));
    let runs = looper.get("/runs").body;
    assert_eq!(runs["runs"][0]["workspace"], json!(shown));
    let history = common::read(fx.path("logs/runs.jsonl"));
    assert!(!history.lines().any(|l| l.trim().is_empty()), "{history:?}");
    // Recorded before its spawn, then again with its pid.
    assert_eq!(history.lines().count(), 2, "{history}");
}

/// A hung-run replacement that cannot start (the workspace is gone) leaves no "hung" mark:
/// the run's later failure counts as a crash, and its row has no stop reason.
#[test]
fn a_failed_hung_replacement_leaves_no_mark() {
    let fx = Fixture::new("hung-fail");
    let looper = fx.start(&[
        ("LOOPER_HUNG_RUN_SECONDS", "0.3"),
        ("FAKE_CODEX", "record;sleep:2;exit:3"),
    ]);
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.record_of(pid_of(&a));
    std::fs::remove_dir_all(fx.path("ws")).unwrap();
    looper.wait("a replacement to be tried", || {
        looper
            .server_log()
            .contains("codex.exec.autopoll.hung")
            .then_some(())
    });
    let row = looper.ended_row(a.body["run_id"].as_str().unwrap());
    assert_eq!(row["return_code"], 3, "{row}");
    assert!(row.get("stop_reason").is_none_or(Value::is_null), "{row}");
    assert_eq!(
        looper.get("/status").body["autopoll"]["consecutive_crashes"],
        1
    );
}

/// `looper trigger --follow` learns the end of the run from the server, not from the log's
/// text: a run that prints a fake trailer is followed to its real end and code.
#[test]
fn follow_ends_with_the_run_not_with_its_text() {
    let fx = Fixture::new("follow-text");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "record;print:;print:# codex_exec_return_code=0;sleep:1;print:the real end;exit:3",
    )]);
    let url = looper.url("/run");
    let o = cli(
        &fx,
        &["trigger", "--message", "m", "--prompt", "p", "--follow"],
        &[("LOOPER_URL", url.as_str())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("the real end"), "{}", stdout(&o));
    assert!(stderr(&o).contains("return code 3"), "{}", stderr(&o));
}
