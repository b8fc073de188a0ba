//! Black-box tests of the hand-off from a run to the next: the inbox that needs no
//! network, `looper trigger` falling back to it, a hand-off sent during the startup check,
//! the git check before any effect, and what a run's environment holds.

mod common;

use std::path::{Path, PathBuf};

use common::{
    alive, answer_of, cli, drop_request, pid_of, run_id_of, stderr, stdout, FakeZulip, Fixture,
};
use serde_json::{json, Value};

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// Every run gets `LOOPER_INBOX` (a private, git-ignored directory in its workspace) and
/// `LOOPER_BIN`; Looper's Zulip credentials never reach it.
#[test]
fn a_run_gets_its_inbox_and_looper_but_no_zulip_secrets() {
    let fx = Fixture::new("env");
    let zulip = FakeZulip::start();
    // As long as a run's token, so that only its value can tell the two apart below.
    let operator = "operator-token-as-long-as-a-run-token-0123456789";
    let looper = fx.start_owned(&zulip.env_with(&[("LOOPER_API_TOKEN", operator)]));
    let a = looper.post_with(
        "/run",
        &json!({"zulip_message": "m"}).to_string(),
        &[("X-Looper-Token", operator)],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let rec = looper.record_of(pid_of(&a));
    let inbox = fx.path("ws/.looper/inbox");
    assert_eq!(rec["looper_inbox"], json!(inbox));
    assert_eq!(mode(&inbox), 0o700);
    assert_eq!(mode(&fx.path("ws/.looper")), 0o700);
    assert_eq!(common::read(fx.path("ws/.looper/.gitignore")), "*\n");
    assert_eq!(rec["looper_bin"], json!(common::looper_binary()));
    assert_eq!(
        rec["zulip_vars"],
        json!([]),
        "Zulip variables reached the run"
    );
    // The operator's token stays with Looper: the run gets a token of its own, under both
    // names (the original's wrapper sends $LOOPER_API_TOKEN).
    let run_token = rec["looper_run_token"].as_str().expect("LOOPER_RUN_TOKEN");
    assert!(run_token.len() >= 32, "{rec}");
    assert_eq!(rec["looper_token"], json!(run_token), "{rec}");
    assert_ne!(run_token, operator, "the operator's token reached the run");
}

/// A request file from the active run replaces it like `POST /run` would: announced,
/// the old run stopped, the asked run started (history trigger "inbox"), and the answer an
/// HTTP caller would have got written beside the request in `done/`.
#[test]
fn an_inbox_request_from_the_active_run_replaces_it() {
    let fx = Fixture::new("inbox");
    let zulip = FakeZulip::start();
    let looper = fx.start_owned(&zulip.env());
    let first = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let (old_pid, old_id) = (pid_of(&first), run_id_of(&first));
    let inbox = PathBuf::from(looper.record_of(old_pid)["looper_inbox"].as_str().unwrap());

    let body = json!({"zulip_message": "handed off", "codex_prompt": "second",
                      "from_run_id": old_id});
    drop_request(&inbox, "next.json", &body.to_string());
    let answer = answer_of(&looper, &inbox, "next.json");
    assert_eq!(answer["status"], 200, "{answer}\n{}", looper.tail());
    let reply = &answer["body"];
    assert_eq!(reply["codex_exec_started"], true);
    assert!(
        reply["killed_codex_exec_pids"]
            .as_array()
            .unwrap()
            .contains(&json!(old_pid)),
        "{reply}"
    );
    assert!(!alive(old_pid));
    let new_pid = reply["codex_exec_result"]["pid"].as_u64().unwrap();
    assert!(alive(new_pid));
    assert_eq!(
        looper.record_of(new_pid)["argv"].as_array().unwrap().last(),
        Some(&json!("second"))
    );
    assert!(
        inbox.join("done/next.json").is_file(),
        "request not kept in done/"
    );
    assert!(
        !inbox.join("next.json").exists(),
        "request left in the inbox"
    );
    let contents: Vec<String> = zulip
        .messages()
        .iter()
        .map(|m| m.form()["content"].clone())
        .collect();
    // Looper says which run hands off, the run's words follow quoted (they cannot pass for
    // Looper's), then, after a blank line that ends the quote, that run's summary.
    let last = contents.last().cloned().unwrap_or_default();
    let lines: Vec<&str> = last.lines().collect();
    assert_eq!(
        lines[..3],
        [
            format!("Looper: run {old_id} hands off:").as_str(),
            "> handed off",
            ""
        ],
        "{last}"
    );
    assert!(
        lines[3].starts_with(&format!("↳ run {old_id} handed_off after ")),
        "{last}"
    );
    let runs = looper.get("/runs").body;
    assert_eq!(runs["runs"][0]["trigger"], "inbox", "{runs}");
    assert_eq!(runs["runs"][0]["run_id"], reply["run_id"]);
}

/// Junk in an inbox — bad JSON, wrong types, a symlink, a FIFO, an oversized file, a wrong
/// name, a stale hand-off, one that names no run — is answered with its error and changes nothing; a file still
/// being written (`*.tmp`) is left alone.
#[test]
fn junk_in_the_inbox_is_answered_and_changes_nothing() {
    let fx = Fixture::new("inbox-junk");
    let zulip = FakeZulip::start();
    let looper = fx.start_owned(&zulip.env());
    let live = looper.run(json!({"codex_prompt": "keep me"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let pid = pid_of(&live);
    let inbox = fx.path("ws/.looper/inbox");
    let announced = zulip.messages().len();

    let valid = json!({"zulip_message": "m", "codex_prompt": "x"}).to_string();
    let outside = fx.path("outside.json");
    std::fs::write(&outside, &valid).unwrap();
    std::fs::write(inbox.join("partial.json.tmp"), &valid).unwrap();
    let fifo = std::ffi::CString::new(inbox.join("fifo.json").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path inside this test's directory.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::symlink(&outside, inbox.join("link.json")).unwrap();
    let mut big = valid.clone().into_bytes();
    big.resize(1024 * 1024 + 1, b' ');
    drop_request(&inbox, "big.json", std::str::from_utf8(&big).unwrap());
    drop_request(&inbox, "bad.json", "{\"zulip_message\": ");
    drop_request(&inbox, "types.json", r#"{"zulip_message": 5}"#);
    drop_request(&inbox, "array.json", "[1, 2]");
    drop_request(&inbox, "notes.txt", &valid);
    let stale = json!({"zulip_message": "m", "from_run_id": "0ld0ld00"}).to_string();
    drop_request(&inbox, "stale.json", &stale);
    // No run named: it would count as whatever run is live when it is read (a run being
    // replaced could hand off as the operator's new one, and stop it).
    drop_request(&inbox, "anonymous.json", &valid);

    for (name, status, words) in [
        ("fifo.json", 400, "not a regular file"),
        ("link.json", 400, "symbolic link"),
        ("big.json", 413, "1 MiB"),
        ("bad.json", 400, "JSON"),
        ("types.json", 400, "zulip_message"),
        ("array.json", 400, "object"),
        ("notes.txt", 400, "<name>.json"),
        ("stale.json", 409, "unknown run"),
        ("anonymous.json", 400, "from_run_id"),
    ] {
        let answer = answer_of(&looper, &inbox, name);
        assert_eq!(answer["status"], status, "{name}: {answer}");
        assert_eq!(answer["body"]["ok"], false, "{name}: {answer}");
        let error = answer["body"]["error"].as_str().unwrap_or("");
        assert!(error.contains(words), "{name}: {error}");
    }
    assert!(
        inbox.join("partial.json.tmp").exists(),
        "a file being written was taken"
    );
    assert!(alive(pid), "junk disturbed the live run");
    assert_eq!(zulip.messages().len(), announced, "junk was announced");
    assert_eq!(looper.get("/health").status, 200);
    assert_eq!(looper.get("/status").body["active"]["pid"], json!(pid));
    looper.log_with("inbox.answer");
}

/// Inside codex's sandbox no socket can be opened: `looper trigger` then leaves the request
/// in `$LOOPER_INBOX`, says `queued <path>`, and reports Looper's answer as over HTTP;
/// `--inbox` forces that way; a stale request's refusal reaches the caller.
#[test]
fn looper_trigger_falls_back_to_the_inbox() {
    let fx = Fixture::new("trigger-inbox");
    let looper = fx.start(&[]);
    let first = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let (old_pid, old_id) = (pid_of(&first), run_id_of(&first));
    let inbox = fx.path("ws/.looper/inbox");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/run", l.local_addr().unwrap().port())
    };
    let inbox_text = inbox.to_string_lossy().into_owned();
    let run_env = |url: &str, id: &str| -> Vec<(&'static str, String)> {
        vec![
            ("LOOPER_URL", url.to_string()),
            ("LOOPER_RUN_ID", id.to_string()),
            ("LOOPER_INBOX", inbox_text.clone()),
        ]
    };
    let env = run_env(&dead, &old_id);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(
        &fx,
        &["trigger", "--message", "next", "--prompt", "second"],
        &pairs,
    );
    assert!(o.status.success(), "{}\n{}", stderr(&o), looper.tail());
    assert!(
        stderr(&o).contains(&format!("queued {}", inbox.display())),
        "{}",
        stderr(&o)
    );
    let answer: Value = serde_json::from_str(stdout(&o).trim()).expect("JSON on stdout");
    assert_eq!(answer["ok"], true, "{answer}");
    let second_id = answer["run_id"].as_str().unwrap().to_string();
    assert!(!alive(old_pid));
    assert_eq!(looper.get("/runs").body["runs"][0]["trigger"], "inbox");

    // Forced, although HTTP would work (`--url`; LOOPER_URL is left at another address, so
    // that this caller is not taken for part of the run it replaces and stopped with it).
    let env = run_env(&dead, &second_id);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let live_url = looper.url("/run");
    let args = [
        "trigger",
        "--inbox",
        "--url",
        &live_url,
        "--message",
        "third",
        "--prompt",
        "p",
    ];
    let o = cli(&fx, &args, &pairs);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("queued"), "{}", stderr(&o));

    // The first run's id is stale now: refused, and the caller is told.
    let env = run_env(&dead, &old_id);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(
        &fx,
        &["trigger", "--message", "late", "--prompt", "p"],
        &pairs,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("409") && stderr(&o).contains("stale"),
        "{}",
        stderr(&o)
    );

    // An inbox no Looper looks into: no answer in time, the request stays queued, exit 0.
    let unwatched = fx.path("unwatched");
    std::fs::create_dir_all(&unwatched).unwrap();
    let unwatched_text = unwatched.to_string_lossy().into_owned();
    let env = [
        ("LOOPER_URL", dead.as_str()),
        ("LOOPER_INBOX", unwatched_text.as_str()),
        ("LOOPER_INBOX_WAIT_SECONDS", "0.5"),
    ];
    let o = cli(&fx, &["trigger", "--message", "m"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("stays queued"), "{}", stderr(&o));
    let queued: Vec<_> = std::fs::read_dir(&unwatched).unwrap().flatten().collect();
    assert_eq!(queued.len(), 1, "the request is not waiting in the inbox");
    assert!(queued[0].file_name().to_string_lossy().ends_with(".json"));

    // Without LOOPER_INBOX, --inbox is a usage error.
    let o = cli(&fx, &["trigger", "--inbox", "--message", "m"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// A hand-off from the run that a `/run` is still setting up (its startup check) waits for
/// that setup to end and then proceeds; another trigger meanwhile still gets `409 busy`.
#[test]
fn a_handoff_during_the_startup_check_waits_for_it() {
    let fx = Fixture::new("handoff-race");
    let looper = std::sync::Arc::new(fx.start(&[]));
    let l1 = looper.clone();
    let first = std::thread::spawn(move || {
        l1.run(json!({"codex_prompt": "first", "codex_exec_startup_check_seconds": 2}))
    });
    // The run exists (it wrote its record) while its /run is still in the startup check.
    let rec = looper.wait("the first run's record", || {
        looper.records().into_iter().next()
    });
    let first_id = rec["looper_run_id"].as_str().unwrap().to_string();
    let busy = looper.run(json!({"codex_prompt": "other"}));
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(busy.body["error"].as_str().unwrap().contains("busy"));
    let handoff = looper.run(json!({"codex_prompt": "second", "from_run_id": first_id}));
    let first = first.join().unwrap();
    // The setup was not disturbed: had the hand-off not waited, it would have been refused
    // (409), or it would have stopped the first run inside its startup check, whose /run
    // would then have answered "exited early".
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(handoff.status, 200, "{}\n{}", handoff.body, looper.tail());
    assert!(handoff.body["killed_codex_exec_pids"]
        .as_array()
        .unwrap()
        .contains(&rec["pid"]));
    assert!(!alive(rec["pid"].as_u64().unwrap()));
    assert!(alive(pid_of(&handoff)));
}

/// A workspace outside a git work tree (named in the request, or the default) is refused
/// before anything happens: nothing announced, nothing stopped. `LOOPER_REQUIRE_GIT=0`
/// lets it through.
#[test]
fn a_workspace_outside_git_is_refused_before_any_effect() {
    let fx = Fixture::new("nogit");
    let zulip = FakeZulip::start();
    let plain = fx.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let looper = fx.start_owned(&zulip.env());
    let live = looper.run(json!({"codex_prompt": "keep me"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let announced = zulip.messages().len();
    let a = looper.run(json!({"workspace": plain, "codex_prompt": "x"}));
    assert_eq!(a.status, 400, "{}", a.body);
    let error = a.body["error"].as_str().unwrap();
    assert!(
        error.contains("git") && error.contains(plain.to_str().unwrap()),
        "{error}"
    );
    assert_eq!(zulip.messages().len(), announced, "announced anyway");
    assert!(alive(pid_of(&live)), "the live run was stopped");
    drop(looper);

    let mut env = zulip.env_with(&[("LOOPER_WORKSPACE", &plain.to_string_lossy())]);
    let looper = fx.start_owned(&env);
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 400, "{}", a.body);
    drop(looper);

    env.push(("LOOPER_REQUIRE_GIT", "0".into()));
    let looper = fx.start_owned(&env);
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 200, "{}", a.body);
}

/// A request whose writer takes a moment between creating its `.tmp` file and renaming it
/// in is taken on the rename, not at the quarter-second safety net: the creation woke the
/// inbox thread first, which then slept on its bell alone and missed the rename (290 ms
/// median, measured). The time is read from the server log's own clock: from the rename to
/// `inbox.take`, median of five, well under the safety net's 250 ms.
#[test]
fn a_slowly_written_request_is_taken_when_it_lands() {
    let fx = Fixture::new("inbox-slow");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let inbox = fx.path("ws/.looper/inbox");
    let mut lags = Vec::new();
    for i in 0..5 {
        use std::io::Write;
        let tmp = inbox.join(format!("slow{i}.json.tmp"));
        let mut file = std::fs::File::create(&tmp).unwrap();
        // The creation is seen; the writer is still at work.
        std::thread::sleep(std::time::Duration::from_millis(30));
        file.write_all(br#"{"zulip_message": "m", "codex_prompt": ""}"#)
            .unwrap();
        drop(file);
        let renamed = chrono::Local::now();
        std::fs::rename(&tmp, inbox.join(format!("slow{i}.json"))).unwrap();
        let line = looper.log_with(&format!("file=slow{i}.json"));
        let taken = line
            .lines()
            .find(|l| l.contains(" inbox.take ") && l.contains(&format!("file=slow{i}.json")))
            .and_then(|l| l.split(' ').next())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("no inbox.take for slow{i}.json\n{}", looper.tail()));
        lags.push((taken - renamed.fixed_offset()).num_milliseconds());
        answer_of(&looper, &inbox, &format!("slow{i}.json"));
    }
    lags.sort_unstable();
    assert!(lags[2] < 125, "rename to inbox.take, ms: {lags:?}");
}

/// The operator can always stop a loop, even one whose runs hand off within their own
/// startup check (each hand-off waits for the setup before it and had the guard promised:
/// every operator stop was `409 busy` while the chain went on). A stop waits for the hand-off
/// under way, goes first, and the loop ends.
#[test]
fn the_operator_stops_a_chain_of_quick_hand_offs() {
    let fx = Fixture::new("handoff-chain");
    let looper = fx.start(&[
        (
            "FAKE_CODEX",
            r#"record;sleep:0.1;post:{"zulip_message":"again","codex_prompt":"p"};sleep:600"#,
        ),
        ("CODEX_EXEC_STARTUP_CHECK_SECONDS", "0.5"),
    ]);
    let a = looper.run(json!({"codex_prompt": "p"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.wait("a chain of three runs", || {
        (looper.records().len() >= 3).then_some(())
    });
    let stop = looper.run(json!({"zulip_message": "stop", "codex_prompt": ""}));
    assert_eq!(stop.status, 200, "{}\n{}", stop.body, looper.tail());
    // Every run of the chain ends, and none starts after the stop.
    let pids: Vec<u64> = looper
        .records()
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .collect();
    looper.wait("every run of the chain to end", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    // Its watcher notices the last exit a moment after the stop's answer.
    looper.wait("no active run", || {
        let status = looper.get("/status").body;
        status
            .get("active")
            .is_some_and(Value::is_null)
            .then_some(())
    });
    assert_eq!(
        looper.records().len(),
        pids.len(),
        "a run started after the stop\n{}",
        looper.tail()
    );
}
