//! Black-box tests of faults around the loop: runs that outlive Looper, loops side
//! by side, stops from outside, a bounded server log.

mod common;

use std::path::Path;

use common::{alive, pid_of, FakeZulip, Fixture};
use serde_json::json;

/// A chatty run outlives a `kill -9` of Looper with every line in its log (the run writes
/// its log itself), and the next Looper completes its history row.
#[test]
fn a_run_outlives_a_killed_looper_with_every_line() {
    let fx = Fixture::new("kill9");
    let mut looper = fx.start(&[("FAKE_CODEX", "record;chatter:100;exit:0")]);
    let a = looper.run(json!({"codex_prompt": "chatty"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid = pid_of(&a);
    let log_path = a.body["codex_exec_result"]["log_path"]
        .as_str()
        .unwrap()
        .to_string();
    looper.wait("the first lines", || {
        common::read(&log_path).contains("line 5\n").then_some(())
    });
    looper.signal(libc::SIGKILL);
    looper.wait_exit();
    looper.wait("the run to finish on its own", || {
        (!alive(pid)).then_some(())
    });
    let text = common::read(&log_path);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("line ")).collect();
    let expected: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected, "lines lost after Looper died");
    // The next Looper completes the row of the run that ended while no one watched.
    let next = fx.start(&[]);
    let runs = next.get("/runs").body;
    let row = &runs["runs"][0];
    assert_eq!(row["run_id"], a.body["run_id"]);
    assert!(row["ended_at"].is_string(), "{row}");
    // No trailer (no one was there to write it): the return code is unknown.
    assert!(row["return_code"].is_null(), "{row}");
}

/// Two Loopers with `LOOPER_STOP_SCOPE=workspace`, one per repository, leave each other's
/// runs alone while each still replaces its own; `own` leaves even a codex started by hand
/// in the same workspace alone.
#[test]
fn loops_side_by_side_leave_each_other_alone() {
    let fx = Fixture::new("scope");
    let ws2 = fx.path("ws2");
    common::make_git_repo(&ws2);
    let logs2 = fx.path("logs2");
    let one = fx.start(&[("LOOPER_STOP_SCOPE", "workspace")]);
    let two = fx.start_owned(&[
        ("LOOPER_STOP_SCOPE", "workspace".into()),
        ("LOOPER_WORKSPACE", ws2.to_string_lossy().into_owned()),
        ("CODEX_EXEC_LOG_DIR", logs2.to_string_lossy().into_owned()),
    ]);
    let a1 = one.run(json!({"codex_prompt": "in ws"}));
    let b1 = two.run(json!({"codex_prompt": "in ws2"}));
    assert_eq!(
        (a1.status, b1.status),
        (200, 200),
        "{} {}",
        a1.body,
        b1.body
    );
    let a2 = one.run(json!({"codex_prompt": "in ws again"}));
    assert_eq!(a2.status, 200, "{}", a2.body);
    assert!(!alive(pid_of(&a1)), "its own run was not replaced");
    assert!(alive(pid_of(&b1)), "the other loop's run was stopped");
    let b2 = two.run(json!({"codex_prompt": "in ws2 again"}));
    assert_eq!(b2.status, 200, "{}", b2.body);
    assert!(!alive(pid_of(&b1)));
    assert!(alive(pid_of(&a2)), "the other loop's run was stopped");
    drop((one, two));

    // `own`: a codex exec started by hand in the very same workspace is left alone.
    let mut by_hand = std::process::Command::new(&fx.codex_path)
        .args(["--ask-for-approval", "never", "exec", "-C"])
        .arg(fx.path("ws"))
        .arg("by hand")
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .expect("start a run by hand");
    let own = fx.start(&[("LOOPER_STOP_SCOPE", "own")]);
    let c1 = own.run(json!({"codex_prompt": "first"}));
    let c2 = own.run(json!({"codex_prompt": "second"}));
    assert_eq!((c1.status, c2.status), (200, 200));
    assert!(!alive(pid_of(&c1)));
    let hand_alive = alive(u64::from(by_hand.id()));
    let _ = by_hand.kill();
    let _ = by_hand.wait();
    assert!(hand_alive, "scope own stopped a run it did not start");
}

/// Runs ended from outside (SIGTERM, SIGINT, SIGHUP that Looper did not send) are no
/// crashes: three in a row start no back-off and no "keeps failing" announcement, and
/// their rows say `external`.
#[test]
fn stops_from_outside_are_no_crashes() {
    let fx = Fixture::new("external");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
    ]));
    let mut ids = Vec::new();
    for (i, sig) in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGTERM]
        .into_iter()
        .enumerate()
    {
        let rec = looper.wait("autopoll to start a run", || {
            looper.records().into_iter().nth(i)
        });
        let pid = rec["pid"].as_u64().unwrap();
        // SAFETY: kill(2) on the fake codex this test's Looper started for it.
        unsafe { libc::kill(pid as i32, sig) };
        let id = rec["looper_run_id"].as_str().unwrap().to_string();
        let row = looper.ended_row(&id);
        assert_eq!(row["stop_reason"], "external", "{row}");
        ids.push(id);
    }
    let status = looper.get("/status").body;
    assert_eq!(status["autopoll"]["consecutive_crashes"], 0, "{status}");
    assert!(status["autopoll"]["backoff_until"].is_null(), "{status}");
    // Each stop gets its summary (nothing followed it; the starts are announced apart),
    // one each, and none of them reads as a crash. The summary follows the row's end.
    let said = looper.wait("a summary of each of the four stops", || {
        let said: Vec<String> = z
            .contents()
            .into_iter()
            .filter(|m| !m.starts_with("Looper: autopoll starts a run in "))
            .collect();
        ids.iter()
            .all(|id| said.iter().any(|m| m.contains(&format!("run {id} "))))
            .then_some(said)
    });
    for id in &ids {
        let about: Vec<&String> = said
            .iter()
            .filter(|m| m.contains(&format!("run {id} ")))
            .collect();
        assert_eq!(about.len(), 1, "run {id}: {about:?}");
    }
    assert!(
        said.iter()
            .all(|m| m.contains(" external after ") && !m.contains("keeps failing")),
        "{said:?}"
    );
}

/// A flood of mirrored output leaves the server log capped and rotated to `.1`–`.3`, with
/// no line lost in the middle or split between files.
#[test]
fn a_flood_leaves_the_server_log_capped_and_rotated() {
    let fx = Fixture::new("rotate");
    let looper = fx.start(&[
        ("LOOPER_SERVER_LOG_MAX_BYTES", "200000"),
        ("FAKE_CODEX", "record;flood:3000000;exit:0"),
    ]);
    let a = looper.run(json!({"codex_prompt": "flood"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let run_id = common::run_id_of(&a);
    looper.ended_row(&run_id);
    let log_dir = fx.path("logs");
    let file = |suffix: &str| log_dir.join(format!("looper-server.log{suffix}"));
    // The log's writer may still be writing the flood out (and rotating, when the current
    // file is missing for a moment): the run's exit line comes after all of it.
    looper.log_with(&format!("codex.exec.exit request_id={run_id} "));
    for suffix in ["", ".1", ".2", ".3"] {
        let path = file(suffix);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 0 && size <= 200_000,
            "{}: {size} bytes",
            path.display()
        );
        check_whole_lines(&path);
    }
    assert!(!file(".4").exists(), "more than three rotated logs kept");
    assert_eq!(looper.get("/health").status, 200);
}

/// Every line of a server log is a whole event or a whole mirrored line.
fn check_whole_lines(path: &Path) {
    let text = common::read(path);
    assert!(text.ends_with('\n'), "{} ends mid-line", path.display());
    for line in text.lines() {
        let event = line.starts_with("20") && line.contains(" INFO ")
            || line.contains(" WARNING ")
            || line.contains(" DEBUG ")
            || line.contains(" ERROR ");
        // `<run_id>| ` and the run's line.
        let mirrored = line.split_once("| ").is_some_and(|(id, out)| {
            id.len() == 8 && out.len() == 99 && out.bytes().all(|b| b == b'x')
        });
        assert!(event || mirrored, "{}: split line {line:?}", path.display());
    }
}
