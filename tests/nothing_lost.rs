//! Nothing lost: a full disk, a crash at any moment, a corrupt file. The disk-full cases put
//! Looper's log directory on a small tmpfs of their own (mounting one needs root; they say
//! so and skip elsewhere, and fail in CI, which runs as root).

mod common;

use std::path::{Path, PathBuf};

use common::{alive, have_git, run_id_of, Fixture, Looper};
use serde_json::{json, Value};

/// A tmpfs of a few hundred KiB mounted over a test's directory, unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    /// Mounts it at `dir` (made first), mode 0700 as Looper wants its state directory;
    /// `None` (said) where this test may not mount.
    fn mount(dir: &Path, bytes: u64) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, target, fstype) = (c("tmpfs"), c(dir.to_str().unwrap()), c("tmpfs"));
        let opts = c(&format!("size={bytes},mode=0700"));
        // SAFETY: mount(2) with valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            common::skip(&format!(
                "mounting a small tmpfs needs root: {}",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        Some(SmallDisk {
            dir: dir.to_path_buf(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.dir.join(".filler")
    }

    /// Fills the disk to its last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .unwrap();
        let block = vec![0u8; 4096];
        while f.write(&block).is_ok_and(|n| n > 0) {}
        while f.write(&[0u8]).is_ok_and(|n| n > 0) {}
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.dir.to_str().unwrap()).unwrap();
        // SAFETY: umount2(2) on the mount this test made, with a valid C string.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

fn git_fixture(tag: &str, todo: &str) -> Option<Fixture> {
    if !have_git() {
        common::skip("git is not installed here");
        return None;
    }
    let fx = Fixture::new(tag);
    common::git_workspace_with_todo(&fx.path("ws"), todo);
    Some(fx)
}

fn runs(looper: &Looper) -> Vec<Value> {
    looper.get("/runs").body["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A run finishes the loop (its last TODO item ticked) while the disk is full: the loop's
/// state and the run's row cannot be written. Once there is room again they are, at the
/// latest at shutdown, and the next Looper keeps the loop finished (autopoll starts
/// nothing) and the row whole. Before, the failed write was never tried again: the next
/// Looper restarted the finished loop, and the history's torn line swallowed the next row.
#[test]
fn a_full_disk_loses_no_finish_and_no_row() {
    let Some(fx) = git_fixture("full-finish", "# Plan\n- [x] one\n- [ ] two\n") else {
        return;
    };
    let Some(disk) = SmallDisk::mount(&fx.path("logs"), 512 * 1024) else {
        return;
    };
    let go = fx.path("go");
    let script = format!(
        "record;await:{};tick:TODO.md;commit:tick two;turn:All done.;exit:0",
        go.display()
    );
    let env = [
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("FAKE_CODEX", script.as_str()),
    ];
    let mut first = fx.start(&env);
    let a = first.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    disk.fill();
    std::fs::write(&go, "").unwrap();
    // (The row's end may still fit in the history file's last page: tmpfs gives whole
    // pages.)
    first.stderr_with("loop_state.write_failed");
    let status = first.get("/status").body;
    assert_eq!(status["state_saved"], json!(false), "{status}");
    disk.free();
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(), Some(0), "{}", first.stderr());
    assert!(
        !first.stderr().contains("server.stop.unsaved"),
        "{}",
        first.stderr()
    );

    let second = fx.start(&[
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", script.as_str()),
    ]);
    second.wait("three ticks held by the finish", || {
        (second
            .stderr()
            .matches("autopoll.skip reason=todo_done")
            .count()
            >= 3)
            .then_some(())
    });
    assert_eq!(
        second.records().len(),
        1,
        "autopoll restarted a finished loop"
    );
    let rows = runs(&second);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["run_id"], json!(id));
    assert_eq!(rows[0]["outcome"], json!("ok"), "{}", rows[0]);
    assert!(
        !second.stderr().contains("history.skipped_lines"),
        "{}",
        second.tail()
    );
}

/// A `loop_done` hand-off on a full disk is refused (507) before anything is said, and
/// goes through once there is room: a finish that could not be saved is no finish.
#[test]
fn a_finish_that_cannot_be_saved_is_refused() {
    let fx = Fixture::new("full-done");
    let Some(disk) = SmallDisk::mount(&fx.path("logs"), 512 * 1024) else {
        return;
    };
    let z = common::FakeZulip::start();
    let looper = fx.start_owned(&z.env());
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let said = z.messages().len();
    disk.fill();
    let done = json!({"zulip_message": "done", "from_run_id": run_id_of(&a), "loop_done": true});
    let refused = looper.run(done.clone());
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot save") && e.contains("nothing was changed")),
        "{}",
        refused.body
    );
    assert_eq!(z.messages().len(), said, "announced anyway");
    assert!(alive(common::pid_of(&a)));
    disk.free();
    let finished = looper.run(done);
    assert_eq!(finished.status, 200, "{}", finished.body);
    assert_eq!(finished.body["loop_state"], json!("finished"));
}

/// A `loop-state.json` that is no state of Looper's (here cut short) is kept aside, said,
/// and every loop waits for the operator: autopoll starts nothing until `POST /resume`.
/// Before, Looper started from an empty state and restarted the finished loop.
#[test]
fn a_corrupt_loop_state_is_kept_and_the_loop_waits() {
    let fx = Fixture::new("corrupt-state");
    std::fs::create_dir_all(fx.path("logs")).unwrap();
    let finished = r#"{"holds": {"/somewhere": {"state": "finished", "reason": "loop_done", "detail": "d", "since": "2026-12-01T00:00:00+00:00", "until": null, "run_id": null}}, "outb"#;
    std::fs::write(fx.path("logs/loop-state.json"), finished).unwrap();
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
    ]);
    looper.log_with("loop_state.corrupt");
    looper.wait("three ticks held", || {
        (looper
            .server_log()
            .matches("autopoll.skip reason=state_lost")
            .count()
            >= 3)
            .then_some(())
    });
    assert!(looper.records().is_empty(), "a run started");
    let kept: Vec<String> = std::fs::read_dir(fx.path("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loop-state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(fx.path("logs").join(&kept[0])).unwrap(),
        finished
    );
    let status = looper.get("/status").body;
    let hold = &status["holds"][0];
    assert_eq!(hold["reason"], json!("state_lost"), "{status}");
    let r = minreq::post(looper.url("/resume"))
        .with_header("Content-Type", "application/json")
        .with_body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status_code, 200, "{}", r.as_str().unwrap_or_default());
    looper.wait("the run after the resume", || {
        looper.records().into_iter().next()
    });
}

/// A history that cannot be read (here mode 000, Looper running as another user, whom
/// the mode binds) stops the start, naming it: an empty history would forget every run id
/// and reset the day's budgets. Before, Looper started with an empty history, silently.
#[test]
fn an_unreadable_history_stops_the_start() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        common::skip("playing a user whom a file's mode binds needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let fx = Fixture::new("history-000");
    let binary = common::binary_for_anyone(&fx);
    let logs = fx.path("theirs");
    std::fs::create_dir_all(&logs).unwrap();
    let history = logs.join("runs.jsonl");
    std::fs::write(&history, "{}\n").unwrap();
    for (path, mode) in [(&logs, 0o700), (&history, 0o000)] {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: chown(2) on a path of this test's own, with a valid C string.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let said_to = fx.path("stderr.txt");
    let mut child = std::process::Command::new(&binary);
    child
        .env_clear()
        .env("LOOPER_PORT", "0")
        .env("LOOPER_AUTO_START_WHEN_IDLE", "0")
        .env("HOME", &logs)
        .env("CODEX_EXEC_LOG_DIR", &logs)
        .current_dir(&logs)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&said_to).unwrap())
        .uid(65534)
        .gid(65534);
    let mut child = common::spawn_fresh_copy(&mut child);
    let status = common::wait_for("Looper to refuse to start", || {
        child.try_wait().unwrap().or_else(|| {
            if common::read(&said_to).contains(" server.start ") {
                // Our child: ended before the test fails.
                let _ = child.kill();
                let _ = child.wait();
                panic!("Looper started:\n{}", common::read(&said_to));
            }
            None
        })
    });
    let said = common::read(&said_to);
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("runs.jsonl") && said.contains("cannot be read"),
        "{said}"
    );
}

/// An inbox request that Looper had taken when it was killed (`kill -9` while it announced
/// the hand-off) is carried out by the next Looper and answered: the run that sent it is
/// stopped, the next one starts. Before, the request sat in `done/` unanswered for good,
/// and the loop stopped.
#[test]
fn an_inbox_request_taken_at_a_crash_is_carried_out_after_it() {
    let fx = Fixture::new("inbox-crash");
    let z = common::FakeZulip::start();
    let env = z.env_with(&[("FAKE_CODEX", "record;sleep:600")]);
    let mut first = fx.start_owned(&env);
    let a = first.run(json!({"codex_prompt": "one"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid_a = common::pid_of(&a);
    // The hand-off's announcement hangs: Looper is killed in the middle of it.
    z.push(0, &[("X-Delay-Ms", "1500")], "");
    let inbox = fx.path("ws/.looper/inbox");
    let body = json!({"zulip_message": "next", "codex_prompt": "two",
                      "from_run_id": run_id_of(&a)});
    common::drop_request(&inbox, "next.json", &body.to_string());
    first.log_with("inbox.take");
    first.wait("the hand-off's announcement under way", || {
        (first.server_log().matches("action=announce").count() >= 2).then_some(())
    });
    first.signal(libc::SIGKILL);
    first.wait_exit();
    assert!(alive(pid_a), "the run outlives its Looper");

    let second = fx.start_owned(&env);
    let answer = common::answer_of(&second, &inbox, "next.json");
    assert_eq!(answer["status"], json!(200), "{answer}\n{}", second.tail());
    second.wait("the run that sent it to end", || {
        (!alive(pid_a)).then_some(())
    });
    let started: Vec<Value> = second
        .records()
        .into_iter()
        .filter(|r| r["argv"].as_array().and_then(|a| a.last()) == Some(&json!("two")))
        .collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(alive(started[0]["pid"].as_u64().unwrap()));
    // Answered, then moved from taken/ into done/.
    second.wait("the request to leave taken/", || {
        std::fs::read_dir(inbox.join("taken"))
            .unwrap()
            .next()
            .is_none()
            .then_some(())
    });
    assert!(inbox.join("done/next.json").exists());
}

/// A run's row is in the history before its process runs: a Looper killed right after the
/// spawn leaves no run without a row (whose own hand-off would be `409 unknown run`). The
/// next Looper finds such a run by its `LOOPER_RUN_ID` and watches it.
#[test]
fn a_run_has_its_row_before_it_runs() {
    let fx = Fixture::new("row-first");
    let looper = fx.start(&[("FAKE_CODEX", "row-check;record;sleep:600")]);
    for i in 0..5 {
        let a = looper.run(json!({"codex_prompt": format!("run {i}")}));
        assert_eq!(a.status, 200, "{}", a.body);
        let pid = common::pid_of(&a);
        let seen = looper.wait("the run's look at the history", || {
            std::fs::read_to_string(fx.path(&format!("rec/row-{pid}.txt"))).ok()
        });
        assert_eq!(seen, "yes", "run {i} ran before its row was written");
    }
}

/// A hand-off from a run that has already ended (its inbox file read after its exit)
/// survives a Zulip outage as a live run's does: the next run starts and the message comes
/// late. Before, only a live run's hand-off was queued: this one got `502` and the loop
/// stopped.
#[test]
fn a_handoff_from_an_ended_run_survives_a_zulip_outage() {
    let fx = Fixture::new("outage-ended");
    let z = common::FakeZulip::start();
    let looper =
        fx.start_owned(&z.env_with(&[("FAKE_CODEX", "record;exit-if-prompt:first:0;sleep:600")]));
    let a = looper.run(json!({"codex_prompt": "first", "codex_exec_startup_check_seconds": 0}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    looper.ended_row(&id);
    for _ in 0..2 {
        z.push(
            503,
            &[],
            r#"{"result":"error","msg":"down for maintenance"}"#,
        );
    }
    let inbox = fx.path("ws/.looper/inbox");
    let body = json!({"zulip_message": "on to the next", "codex_prompt": "second",
                      "from_run_id": id});
    common::drop_request(&inbox, "next.json", &body.to_string());
    let answer = common::answer_of(&looper, &inbox, "next.json");
    assert_eq!(answer["status"], json!(200), "{answer}");
    assert!(
        answer["body"]["codex_exec_started"] == json!(true),
        "{answer}"
    );
    looper.wait("the late announcement", || {
        z.contents()
            .into_iter()
            .find(|m| m.contains("on to the next") && m.contains("(late: queued at "))
    });
}

/// On a full disk a trigger is refused (507) before it has any effect: nothing announced,
/// the live run untouched, no empty log left. Autopoll's starts fail the same way and
/// count as crashes: it backs off, and says nothing on Zulip. Before, `/run` announced and
/// stopped the live run, then answered 500 and left a 0-byte log; autopoll posted "starts
/// a run" at every tick.
#[test]
fn a_full_disk_refuses_a_run_before_any_effect() {
    let fx = Fixture::new("full-run");
    let Some(disk) = SmallDisk::mount(&fx.path("logs"), 512 * 1024) else {
        return;
    };
    let z = common::FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
    ]));
    // Autopoll's first tick starts the live run.
    let live = looper.wait("the first run", || looper.records().into_iter().next());
    looper.log_with("codex.exec.autopoll.started");
    let pid = live["pid"].as_u64().unwrap();
    let logs = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(fx.path("logs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("codex-exec-"))
            .collect();
        names.sort();
        names
    };
    let logs_before = logs();
    let said = z.messages().len();
    disk.fill();
    let refused = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing was announced or stopped")),
        "{}",
        refused.body
    );
    assert!(alive(pid), "the live run was stopped");
    assert_eq!(z.messages().len(), said, "announced anyway");
    assert_eq!(logs(), logs_before, "a run log was left behind");
    // With nothing running, autopoll's starts fail and back off, silently.
    assert_eq!(looper.run(json!({"codex_prompt": ""})).status, 200);
    looper.wait("autopoll to back off", || {
        looper
            .stderr()
            .contains("codex.exec.autopoll.backoff crashes=3")
            .then_some(())
    });
    let posts = z
        .contents()
        .into_iter()
        .filter(|m| m.contains("autopoll starts a run"))
        .count();
    assert_eq!(posts, 1, "only the first run's start was said");
    disk.free();
}

/// A crash loop's back-off outlives a restart: the next Looper goes on backing off (its
/// crash count and the back-off's end in `/status`) instead of starting the failing codex
/// again at its first tick.
#[test]
fn a_crash_loops_back_off_outlives_a_restart() {
    let fx = Fixture::new("backoff-restart");
    let env = [
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;print:cannot authenticate;exit:1"),
    ];
    let mut first = fx.start(&env);
    first.wait("the back-off", || {
        let s = first.get("/status").body;
        s["autopoll"]["backoff_until"].is_string().then_some(s)
    });
    first.signal(libc::SIGTERM);
    assert_eq!(first.wait_exit(), Some(0));
    let starts = first.records().len();

    let second = fx.start(&env);
    let status = second.get("/status").body;
    assert!(
        status["autopoll"]["consecutive_crashes"].as_u64() >= Some(3),
        "{status}"
    );
    assert!(status["autopoll"]["backoff_until"].is_string(), "{status}");
    second.wait("five ticks held back", || {
        (second.server_log().matches("reason=backoff").count() >= 5).then_some(())
    });
    assert_eq!(
        second.records().len(),
        starts,
        "the failing codex was started again"
    );
}

/// A day's budget pause that ends (here one set by a Looper in a time zone whose day ended
/// before this one's does) lets the loop go on: the runs of the day that paused it count
/// no more, whatever day this Looper's zone makes of them. Before, they were counted again:
/// the pause ended and began again at once, with a second message.
#[test]
fn a_days_pause_ends_for_good_in_any_time_zone() {
    let fx = Fixture::new("tz-pause");
    let ws = fx.path("ws").canonicalize().unwrap();
    let now = chrono::Local::now();
    let row = json!({"run_id": "0ld0ld01", "request_id": "0ld0ld01", "trigger": "http",
        "pid": 1, "workspace": ws, "log_path": fx.path("logs/old.log"),
        "started_at": (now - chrono::Duration::seconds(60)).to_rfc3339(),
        "ended_at": (now - chrono::Duration::seconds(50)).to_rfc3339(),
        "return_code": 0, "duration_seconds": 10.0, "outcome": "ok"});
    std::fs::write(fx.path("logs/runs.jsonl"), format!("{row}\n")).unwrap();
    let until = now + chrono::Duration::milliseconds(1500);
    let state = json!({"holds": {ws.to_string_lossy(): {
        "state": "paused", "reason": "max_runs_per_day",
        "detail": "1 run started today, LOOPER_MAX_RUNS_PER_DAY=1",
        "since": (now - chrono::Duration::seconds(50)).to_rfc3339(),
        "until": until.to_rfc3339(), "run_id": null}}});
    std::fs::write(fx.path("logs/loop-state.json"), state.to_string()).unwrap();
    let z = common::FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_MAX_RUNS_PER_DAY", "1"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]));
    looper.wait("the run after the pause", || {
        looper.records().into_iter().next()
    });
    let paused: Vec<String> = z
        .contents()
        .into_iter()
        .filter(|m| m.contains("is paused"))
        .collect();
    assert!(paused.is_empty(), "paused again: {paused:?}");
}

/// The server log on a full disk loses lines, never half a line, and says what it lost
/// once it can write again (`log.dropped sink=file`). Before, a short write left a torn
/// line that the next one was glued to, and nothing said that lines were missing.
#[test]
fn the_server_log_says_what_a_full_disk_lost() {
    let fx = Fixture::new("full-log");
    let Some(disk) = SmallDisk::mount(&fx.path("logs"), 256 * 1024) else {
        return;
    };
    let looper = fx.start(&[]);
    let refused = || {
        let r = looper.run(json!({"codex_prompt": 5}));
        assert_eq!(r.status, 400, "{}", r.body);
    };
    refused();
    disk.fill();
    for _ in 0..20 {
        refused();
    }
    disk.free();
    // Lines go through again: the first says what was lost.
    looper.wait("the loss said in the file", || {
        refused();
        let text = std::fs::read_to_string(fx.path("logs/looper-server.log")).unwrap();
        text.contains(" WARNING log.dropped sink=file lines=")
            .then_some(text)
    });
    let text = std::fs::read_to_string(fx.path("logs/looper-server.log")).unwrap();
    // Every line starts with its time, once: a torn line glued to the next has two.
    for line in text.lines() {
        let day = line.get(..11).unwrap_or_default();
        assert!(
            day.starts_with("20") && day.ends_with('T') && line.matches(day).count() == 1,
            "a torn or glued line: {line:?}"
        );
    }
}

/// Looper starts on a full disk (its state is read, not written, to start): what it cannot
/// write it says, and it serves. (Its lock file's note of the holder's pid needs a block:
/// that note is let go, not the start.)
#[test]
fn looper_starts_on_a_full_disk() {
    let fx = Fixture::new("full-start");
    let Some(disk) = SmallDisk::mount(&fx.path("logs"), 256 * 1024) else {
        return;
    };
    // Full before Looper ever ran here, and again after it did.
    disk.fill();
    let first = fx.start(&[]);
    assert_eq!(first.get("/health").status, 200, "{}", first.tail());
    drop(first);
    let looper = fx.start(&[]);
    assert_eq!(looper.get("/health").status, 200, "{}", looper.tail());
    assert_eq!(looper.get("/status").status, 200, "{}", looper.tail());
    drop(looper);
    disk.free();
}
