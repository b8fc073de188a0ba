//! Black-box tests of what each run did: the tokens, the agent's last message, the commits
//! and the TODO list's progress in its history row, and the one line a run on Zulip.

mod common;

use std::path::Path;
use std::process::Command;

use common::{git, have_git, run_id_of, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

/// The row of `run_id` once its summary reached Zulip (the report is recorded before it is
/// sent), and that message.
fn reported(looper: &Looper, z: &FakeZulip, run_id: &str) -> (Value, String) {
    let message = looper.wait(&format!("the summary of {run_id} on Zulip"), || {
        z.contents()
            .into_iter()
            .find(|m| m.contains(&format!("run {run_id} ")))
    });
    let runs = looper.get("/runs").body;
    let row = runs["runs"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["run_id"] == run_id).cloned())
        .unwrap_or_else(|| panic!("no row for {run_id}: {runs}"));
    (row, message)
}

/// A run that ticks a TODO item, commits and ends its turn: its row holds the tokens the
/// model reported (as codex counts them, with the split and the rate limits from codex's
/// session file), its last message (whole in its file), HEAD before and after with the
/// commit and its shortstat, and the TODO counts at start and end; Zulip gets one line.
#[test]
fn a_runs_row_says_what_it_did() {
    if !have_git() {
        common::skip("git is not installed here");
        return;
    }
    let fx = Fixture::new("outcome");
    let ws = fx.path("ws");
    let head_before = common::git_workspace_with_todo(
        &ws,
        "# Plan\n- [x] zero\n- [ ] one\n  - [ ] one.a\n- [ ] two\n",
    );
    // The agent writes `.git/config` too: a program it names there must not run as Looper
    // (the agent's own git, inside the run, has LOOPER_RUN_ID and may run it).
    let pwned = fx.path("pwned");
    let hook = format!(
        "[ -n \"$LOOPER_RUN_ID\" ] || touch {}; true",
        pwned.display()
    );
    git(&ws, &["config", "core.fsmonitor", &hook]);
    let z = FakeZulip::start();
    let go = fx.path("go");
    let script = format!(
        "record;await:{};tick:TODO.md;commit:tick one;turn:Ticked the first item.;exit:0",
        go.display()
    );
    let looper =
        fx.start_owned(&z.env_with(&[("LOOPER_TODO_FILE", "TODO.md"), ("FAKE_CODEX", &script)]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let id = run_id_of(&a);
    // Codex asks its model before it changes anything; the fake waits until Looper has
    // read the start.
    let read = format!("run.start_state run_id={id} head={head_before} todo=3/4");
    looper.wait("Looper to read the run's start", || {
        looper.server_log().contains(&read).then_some(())
    });
    std::fs::write(&go, "").unwrap();
    let (row, message) = reported(&looper, &z, &id);
    assert_eq!(row["outcome"], "ok", "{row}");
    let t = &row["tokens"];
    assert_eq!(t["used"], 12345 - 2000 + 678, "{row}");
    assert_eq!(
        [
            &t["input"],
            &t["cached_input"],
            &t["output"],
            &t["reasoning"]
        ],
        [&json!(12345), &json!(2000), &json!(678), &json!(0)],
        "{row}"
    );
    assert_eq!(row["rate_limits"]["primary"]["used_percent"], 12.5, "{row}");
    assert_eq!(
        row["rate_limits"]["secondary"]["window_minutes"], 10080,
        "{row}"
    );
    assert_eq!(row["last_message"], "Ticked the first item.", "{row}");
    let kept = common::read(row["last_message_path"].as_str().expect("a path"));
    assert_eq!(kept, "Ticked the first item.");
    let whole = minreq::get(looper.url(&format!("/runs/{id}/last-message")))
        .send()
        .expect("GET last-message");
    assert_eq!(
        (whole.status_code, whole.as_str().unwrap_or_default()),
        (200, "Ticked the first item."),
        "{}",
        looper.tail()
    );
    assert_eq!(looper.get("/runs/deadbeef/last-message").status, 404);
    let g = &row["git"];
    assert_eq!(g["head_before"], head_before.as_str(), "{row}");
    assert_eq!(
        g["head_after"],
        git(&ws, &["rev-parse", "HEAD"]).as_str(),
        "{row}"
    );
    assert_eq!(
        [
            &g["commits"],
            &g["files_changed"],
            &g["insertions"],
            &g["deletions"]
        ],
        [&json!(1), &json!(1), &json!(1), &json!(1)],
        "{row}"
    );
    assert_eq!(g["dirty"], false, "{row}");
    assert!(
        !pwned.exists(),
        "git ran the workspace's core.fsmonitor as Looper"
    );
    assert_eq!(row["todo_before"], json!({"open": 3, "done": 1}), "{row}");
    assert_eq!(row["todo_after"], json!({"open": 2, "done": 2}), "{row}");
    // Nothing followed it: a message of its own, the summary and the last message.
    assert!(
        message.starts_with(&format!("Looper: run {id} ok after ")),
        "{message}"
    );
    assert!(
        message.contains(
            ", 11,023 tokens, 1 commit, TODO 3 → 2 open. Its last message:\n> Ticked the first item.\n"
        ),
        "{message}"
    );
    let status = looper.get("/status").body;
    assert_eq!(
        status["todo"],
        json!({"file": "TODO.md", "open": 2, "done": 2, "after_run": id}),
        "{status}"
    );
    // And /metrics shows it.
    let metrics = minreq::get(looper.url("/metrics"))
        .send()
        .expect("GET /metrics")
        .as_str()
        .unwrap_or_default()
        .to_string();
    for line in [
        format!(
            "looper_tokens_total{{workspace=\"{}\"}} 11023",
            ws.display()
        ),
        "looper_last_run_tokens 11023".to_string(),
        "looper_todo_open_items 2".to_string(),
        "looper_rate_limit_used_percent{window=\"primary\"} 12.5".to_string(),
        "looper_runs_ended_total{outcome=\"handed_off\"} 0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    // The history file holds the same.
    let history = common::read(fx.path("logs/runs.jsonl"));
    let last: Value = history
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|r| r["run_id"] == id.as_str())
        .unwrap();
    assert_eq!(last["tokens"], row["tokens"]);
}

/// Whatever is missing or hostile leaves the run working and the fields empty: no tokens
/// line, no session file, no git asked, a TODO file that is a link out of the workspace, a
/// FIFO, binary or missing; a session id printed after the header counts for nothing.
/// The agent names a clean filter for every file (`.git/config`, `.git/info/attributes`) and
/// leaves the index racily clean, so that any git command comparing the work tree's content
/// with the index would run the filter: Looper reads a run's start and end (HEAD, the
/// fingerprint, whether the tree is dirty) without it, and still tells a clean tree from a
/// changed one.
#[test]
fn a_workspace_clean_filter_never_runs_as_looper() {
    if !have_git() {
        common::skip("git is not installed here");
        return;
    }
    let fx = Fixture::new("outcome-filter");
    let ws = fx.path("ws");
    common::git_workspace_with_todo(&ws, "- [ ] one\n");
    let pwned = fx.path("pwned");
    let filter = format!(
        "[ -n \"$LOOPER_RUN_ID\" ] || touch {}; cat",
        pwned.display()
    );
    git(&ws, &["config", "filter.x.clean", &filter]);
    std::fs::create_dir_all(ws.join(".git/info")).unwrap();
    std::fs::write(ws.join(".git/info/attributes"), "* filter=x\n").unwrap();
    // Every entry's mtime is at or after the index's own: racily clean.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(946_684_800);
    std::fs::File::options()
        .write(true)
        .open(ws.join(".git/index"))
        .and_then(|f| f.set_modified(old))
        .expect("age the index");
    let z = FakeZulip::start();
    for (script, dirty) in [
        ("record;exit:0", false),
        ("record;tick:TODO.md;exit:0", true),
    ] {
        let looper = fx.start_owned(&z.env_with(&[("FAKE_CODEX", script)]));
        let a = looper.run(json!({"codex_prompt": "work"}));
        assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
        let (row, _) = reported(&looper, &z, &run_id_of(&a));
        assert_eq!(row["git"]["dirty"], dirty, "{script}: {row}");
        assert!(
            !pwned.exists(),
            "git ran the workspace's clean filter as Looper ({script})\n{}",
            looper.tail()
        );
    }
}

/// A run that commits at once, on a box where git is slow (a big repository): Looper reads
/// where the run started before the run may change it, so the commit is the run's own
/// (it read HEAD after the commit when the two raced, and counted none).
#[test]
fn a_quick_first_commit_is_the_runs_own() {
    if !have_git() {
        common::skip("git is not installed here");
        return;
    }
    let fx = Fixture::new("outcome-quick");
    let ws = fx.path("ws");
    let head_before = common::git_workspace_with_todo(&ws, "- [ ] one\n");
    let path = std::env::var("PATH").unwrap_or_default();
    let real_git = std::env::split_paths(&path)
        .map(|d| d.join("git"))
        .find(|p| p.is_file())
        .expect("git on PATH");
    // Looper's git answers half a second late; the agent's is the real one.
    let slow = fx.path("slow-bin");
    std::fs::create_dir_all(&slow).unwrap();
    let wrapper = slow.join("git");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nsleep 0.5\nexec {} \"$@\"\n", real_git.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("PATH", &format!("{}:{path}", slow.display())),
        ("FAKE_CODEX_GIT", &real_git.to_string_lossy()),
        ("FAKE_CODEX", "record;tick:TODO.md;commit:at once;exit:0"),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let (row, _) = reported(&looper, &z, &run_id_of(&a));
    let g = &row["git"];
    assert_eq!(
        (&g["head_before"], &g["commits"]),
        (&json!(head_before), &json!(1)),
        "{row}\n{}",
        looper.tail()
    );
}

#[test]
fn what_cannot_be_read_stays_empty() {
    let fx = Fixture::new("outcome-empty");
    let ws = fx.path("ws");
    std::fs::write(fx.path("secret.md"), "- [ ] outside\n").unwrap();
    std::os::unix::fs::symlink(fx.path("secret.md"), ws.join("link.md")).unwrap();
    std::fs::write(ws.join("binary.md"), b"- [ ] a\0\xff\n").unwrap();
    let fifo = Command::new("mkfifo")
        .arg(ws.join("fifo.md"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let z = FakeZulip::start();
    let cases = [
        ("link.md", "record;print:no codex lines at all;exit:0"),
        (
            "fifo.md",
            "record;stderr:codex;stderr:tokens used;stderr:999;exit:0",
        ),
        (
            "binary.md",
            "record;print:user;print:session id: 00000000-0000-4000-8000-000000000000;exit:0",
        ),
        ("missing.md", "record;exit:0"),
    ];
    for (todo, script) in cases {
        let looper = fx.start_owned(&z.env_with(&[
            ("LOOPER_TODO_FILE", todo),
            ("LOOPER_GIT_STATE", "0"),
            ("FAKE_CODEX", script),
        ]));
        let a = looper.run(json!({"codex_prompt": "work"}));
        assert_eq!(a.status, 200, "{todo}: {}\n{}", a.body, looper.tail());
        let id = run_id_of(&a);
        let (row, _) = reported(&looper, &z, &id);
        assert_eq!(row["outcome"], "ok", "{todo}: {row}");
        for field in [
            "todo_before",
            "todo_after",
            "git",
            "session_id",
            "rate_limits",
        ] {
            assert!(row[field].is_null(), "{todo}: {field} in {row}");
        }
        if todo == "fifo.md" {
            // A count a tool printed after its own `codex` line is the only count there is:
            // taken, since codex's own is missing; no split without the session file.
            assert_eq!(
                row["tokens"],
                json!({"used": 999, "source": "printed"}),
                "{row}"
            );
        } else {
            assert!(row["tokens"].is_null(), "{todo}: {row}");
        }
    }
    // The link's target was never read into a count, and is untouched.
    assert_eq!(common::read(fx.path("secret.md")), "- [ ] outside\n");
}

/// Without the session file, the count codex printed after its last `codex` block is taken
/// and counts printed earlier (by a tool, inside the transcript) are not.
#[test]
fn the_printed_count_is_codexs_own() {
    let fx = Fixture::new("outcome-printed");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("FAKE_CODEX_NO_SESSION", "1"),
        ("FAKE_CODEX_USAGE", "5000,1000,250,0"),
        (
            "FAKE_CODEX",
            "record;stderr:codex;stderr:tokens used;stderr:999999;turn:done;exit:0",
        ),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let (row, message) = reported(&looper, &z, &run_id_of(&a));
    assert_eq!(
        row["tokens"],
        json!({"used": 4250, "source": "printed"}),
        "{row}"
    );
    assert_eq!(row["last_message"], "done", "{row}");
    assert!(message.contains(", 4,250 tokens"), "{message}");
}

/// `LOOPER_RUN_REPORTS=0`: no summary reaches Zulip, the row still says what the run did.
#[test]
fn run_reports_can_be_turned_off() {
    let fx = Fixture::new("outcome-off");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_RUN_REPORTS", "0"),
        ("FAKE_CODEX", "record;turn:quiet;exit:0"),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    let row = looper.wait("the row's report", || {
        let runs = looper.get("/runs").body;
        runs["runs"]
            .as_array()?
            .iter()
            .find(|r| r["run_id"] == id.as_str() && !r["tokens"].is_null())
            .cloned()
    });
    assert_eq!(row["last_message"], "quiet", "{row}");
    // The trigger's own announcement is all Zulip got.
    assert_eq!(z.contents().len(), 1, "{:?}", z.contents());
}

/// A pruned run log takes its last message with it: the log directory does not fill up
/// with `.last-message.txt` files of runs long gone.
#[test]
fn the_last_message_goes_with_its_log() {
    let fx = Fixture::new("outcome-prune");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_LOG_RETENTION", "1"),
        ("FAKE_CODEX", "record;turn:first words;exit:0"),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let (row, _) = reported(&looper, &z, &run_id_of(&a));
    let kept = row["last_message_path"]
        .as_str()
        .expect("a path")
        .to_string();
    assert_eq!(common::read(&kept), "first words");
    let b = looper.run(json!({"codex_prompt": "more work"}));
    assert_eq!(b.status, 200, "{}", b.body);
    let log = row["log_path"].as_str().unwrap();
    assert!(!Path::new(log).exists(), "the old log was kept");
    assert!(!Path::new(&kept).exists(), "its last message was kept");
}

/// The agent's last message is its own words: quoted on Zulip, its wildcard mentions ping
/// nobody.
#[test]
fn a_quoted_last_message_pings_nobody() {
    let fx = Fixture::new("outcome-mention");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[(
        "FAKE_CODEX",
        "record;turn:done @**all** and @**everyone**;exit:0",
    )]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let (_, message) = reported(&looper, &z, &run_id_of(&a));
    assert!(message.contains("Its last message:\n> done @"), "{message}");
    for wildcard in ["@**all**", "@**everyone**"] {
        assert!(!message.contains(wildcard), "{wildcard} sent: {message}");
    }
}
