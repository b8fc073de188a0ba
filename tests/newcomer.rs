//! Black-box tests of a newcomer's and an operator's day: autopoll starts runs
//! only where someone said, the wrapper works from a run's own environment under a bare
//! PATH, and what people type (`~`, `-h`) means what they expect.

mod common;

use std::process::Command;

use common::Fixture;
use serde_json::json;

/// With no `LOOPER_WORKSPACE` and no history, autopoll starts nothing (the working
/// directory is nobody's choice) and the start-up log says why, naming `LOOPER_WORKSPACE`;
/// once a first trigger names a workspace, autopoll keeps the loop going there.
#[test]
fn autopoll_starts_nothing_in_a_directory_nobody_named() {
    let fx = Fixture::new("nobody-named");
    common::make_git_repo(&fx.dir);
    let looper = fx.start(&[
        ("LOOPER_WORKSPACE", ""),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.1"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;exit:0"),
    ]);
    let log = looper.log_with("codex.exec.autopoll.waiting reason=no_workspace");
    assert!(log.contains("LOOPER_WORKSPACE"), "{log}");
    looper.wait("ticks that start nothing", || {
        let skipped = looper.server_log().matches("reason=no_workspace").count();
        (skipped >= 10).then_some(())
    });
    assert!(
        looper.records().is_empty(),
        "autopoll started a run nobody asked for"
    );
    // A first trigger names the workspace; autopoll goes on there.
    let a = looper.run(json!({"codex_prompt": "first", "workspace": fx.path("ws")}));
    assert_eq!(a.status, 200, "{}", a.body);
    let rec = looper.wait("autopoll's own run", || looper.records().into_iter().nth(1));
    assert_eq!(rec["cwd"], json!(fx.path("ws")));
    looper.log_with("codex.exec.autopoll.start");
}

/// The wrapper, run as the loop runs it — from a run's own environment, under systemd's
/// bare `PATH` — triggers through `LOOPER_BIN`, reads the original's message file, treats
/// `--follow` as an option, and prints its own usage for `-h` without triggering anything.
#[test]
fn the_wrapper_works_from_a_run_under_a_bare_path() {
    let fx = Fixture::new("wrapper-bare");
    let repo = fx.path("ws");
    let scripts = repo.join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let wrapper = scripts.join("run-codex-task.sh");
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-codex-task.sh"),
        &wrapper,
    )
    .unwrap();
    std::fs::write(
        scripts.join("run-codex-task.message.txt"),
        "from the original's file\n",
    )
    .unwrap();
    let zulip = common::FakeZulip::start();
    let looper = fx.start_owned(&zulip.env_with(&[("FAKE_CODEX", "record;sleep:600")]));
    let first = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let rec = looper.record_of(first.body["codex_exec_result"]["pid"].as_u64().unwrap());
    let run_env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &fx.dir)
            .env("LOOPER_URL", rec["looper_url"].as_str().unwrap())
            .env("LOOPER_BIN", rec["looper_bin"].as_str().unwrap())
            .env("LOOPER_INBOX", rec["looper_inbox"].as_str().unwrap())
            // Not this run's id: the wrapper here is not part of the run it replaces.
            .current_dir(&repo);
    };
    for help in ["-h", "--help"] {
        let mut cmd = Command::new("bash");
        cmd.arg(&wrapper).arg(help);
        run_env(&mut cmd);
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "{help}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("usage: run-codex-task.sh"));
    }
    assert_eq!(looper.records().len(), 1, "-h triggered a run");
    let mut cmd = Command::new("bash");
    cmd.arg(&wrapper);
    run_env(&mut cmd);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the JSON answer");
    assert_eq!(answer["ok"], true, "{answer}");
    let runs = looper.get("/runs").body;
    assert_eq!(runs["runs"][0]["workspace"], json!(repo));
    let said = zulip.messages().last().map(|m| m.form()["content"].clone());
    assert_eq!(
        said.as_deref().map(str::trim),
        Some("from the original's file")
    );
    // `--workspace` is reported as the directory it names (`..` folded away).
    let o = common::cli(
        &fx,
        &[
            "trigger",
            "--message",
            "m",
            "--prompt",
            "",
            "--workspace",
            "ws/scripts/..",
        ],
        &[("LOOPER_URL", rec["looper_url"].as_str().unwrap())],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["workspace"], json!(repo), "{answer}");
    // An option is an option, not the message.
    let mut cmd = Command::new("bash");
    cmd.arg(&wrapper).arg("--inbox").arg("the message");
    run_env(&mut cmd);
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("queued"),
        "--inbox was not taken as an option: {err}"
    );
    // The inbox is a run's way to hand off, and a request there names its run: this one,
    // from outside any run, names none and is refused.
    assert!(!o.status.success() && err.contains("from_run_id"), "{err}");
}

/// Start-up says what the first trigger would find out: a codex binary that cannot be
/// found (naming what was tried, and the setting to fix), an unreadable
/// `LOOPER_PROMPT_FILE`; and typo'd variables are named even when the start then fails.
#[test]
fn start_up_checks_what_it_can() {
    let fx = Fixture::new("startup-checks");
    let looper = fx.start(&[
        ("CODEX_EXEC_BINARY", "/nonexistent/codex"),
        ("LOOPER_PROMPT_FILE", "/nonexistent/prompt.md"),
    ]);
    // Logged after the missing codex.
    let log = looper.log_with("config.prompt_file_unreadable");
    assert!(
        log.contains("config.codex_missing")
            && log.contains("CODEX_EXEC_BINARY=/nonexistent/codex"),
        "{log}"
    );
    assert!(
        log.contains("config.prompt_file_unreadable path=/nonexistent/prompt.md"),
        "{log}"
    );
    // The fixture's state directory is under /tmp, which codex's sandbox lets the agent
    // write: said.
    assert!(log.contains("config.state_in_tmp log_dir="), "{log}");
    // The hint and the run's refusal name the setting that leads nowhere, not PATH.
    assert!(log.contains("hint=\"fix CODEX_EXEC_BINARY"), "{log}");
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 500, "{}", a.body);
    let error = a.body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("required tool is missing")
            && error.contains("CODEX_EXEC_BINARY=/nonexistent/codex")
            && !error.contains("PATH:"),
        "{error}"
    );
    drop(looper);
    let (mut child, stderr_path) = fx.spawn(&[("LOOPER_PROT", "3457"), ("LOOPER_PORT", "http")]);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
    let text = common::read(stderr_path);
    assert!(
        text.contains("LOOPER_PORT") && text.contains("LOOPER_PROT") && text.contains("typo"),
        "{text}"
    );
}

/// A port already in use stops the start with a message that says what to do.
#[test]
fn an_address_in_use_says_what_to_do() {
    let fx = Fixture::new("in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (mut child, stderr_path) = fx.spawn(&[("LOOPER_PORT", &port)]);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let text = common::read(stderr_path);
    assert!(
        text.contains("LOOPER_PORT") && text.contains("looper status") && text.contains(&port),
        "{text}"
    );
}

/// The docs' check of the systemd unit works where there is no login session (no
/// `XDG_RUNTIME_DIR`: ssh, sudo, CI), once looper is installed where the unit looks.
#[test]
fn the_readmes_unit_check_works_without_a_session() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        common::skip("systemd-analyze is not installed here");
        return;
    };
    assert!(found.status.success());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/api.md")).unwrap();
    let line = docs
        .split('`')
        .find(|part| part.contains("systemd-analyze") && part.contains("verify"))
        .expect("docs/api.md gives a systemd-analyze command")
        .to_string();
    let fx = Fixture::new("unit-check");
    let home = fx.path("home");
    std::fs::create_dir_all(home.join(".cargo/bin")).unwrap();
    std::os::unix::fs::symlink(common::looper_binary(), home.join(".cargo/bin/looper")).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .current_dir(root)
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", &home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}\n{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
}

/// Which runs a trigger stops is said where the loop is shown: the start-up line, `/status`
/// and `looper status`; a typo'd `LOOPER_STOP_SCOPES` is named and the default in force said.
#[test]
fn the_stop_scope_in_force_is_said() {
    let fx = Fixture::new("scope-said");
    for (key, value, scope, words) in [
        (
            "LOOPER_STOP_SCOPE",
            "workspace",
            "workspace",
            "the codex exec runs in the new run's workspace",
        ),
        (
            "LOOPER_STOP_SCOPES",
            "own",
            "all",
            "every codex exec of this user",
        ),
    ] {
        let looper = fx.start(&[(key, value)]);
        let start = looper.log_with(" server.start ");
        assert!(start.contains(&format!(" stop_scope={scope} ")), "{start}");
        if key != "LOOPER_STOP_SCOPE" {
            looper.log_with(&format!("config.unknown_variable name={key} "));
        }
        assert_eq!(looper.get("/status").body["stop_scope"], json!(scope));
        let url = format!("http://127.0.0.1:{}", looper.port);
        let o = common::cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
        let said = format!("a trigger stops: {words} (LOOPER_STOP_SCOPE={scope})");
        assert!(common::stdout(&o).contains(&said), "{}", common::stdout(&o));
    }
}

/// A relative `workspace` in a body is refused, naming what to send, and changes nothing: it
/// would be taken against Looper's working directory, not the caller's. `~/…` is the home's.
#[test]
fn a_relative_workspace_is_refused() {
    let fx = Fixture::new("relative-ws");
    std::fs::create_dir_all(fx.path("home-ws")).unwrap();
    common::make_git_repo(&fx.path("home-ws"));
    let looper = fx.start_in(&fx.path(""), &[]);
    for body in [
        json!({"zulip_message": "go", "codex_prompt": "x", "workspace": "ws"}),
        json!({"zulip_message": "go", "codex_prompt": "x", "workspace": "./ws"}),
    ] {
        let a = looper.run(body);
        assert_eq!(a.status, 400, "{}", a.body);
        let error = a.body["error"].as_str().unwrap_or_default();
        assert!(error.contains("absolute path"), "{error}");
    }
    let a = looper.post("/pause", r#"{"workspace": "ws"}"#);
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(looper.records().is_empty(), "a run started");
    let status = looper.get("/status").body;
    assert_eq!(status["holds"], json!([]), "{status}");
    // `~/…` is the server's home (the fixture's HOME is its directory).
    let a =
        looper.run(json!({"zulip_message": "go", "codex_prompt": "x", "workspace": "~/home-ws"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let ws = a.body["workspace"].as_str().unwrap_or_default().to_string();
    assert!(ws.ends_with("/home-ws"), "{}", a.body);
}

/// The README's "Your own loop" runs as written: its block, word for word, in a shell whose
/// `HOME` holds `src/app` (a git repository with a `TODO.md`) and the README's prompt as
/// `looper-prompt.md`, with `looper` on `PATH` and the fake codex as codex. Autopoll starts
/// the first run in the repository with the prompt file's text, `looper status` answers,
/// and `looper logs -f` (waiting for that first run) shows its output to its return code.
#[test]
fn the_readmes_own_loop_runs_as_written() {
    if !common::have_git() {
        common::skip("git is not installed here");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = common::read(root.join("README.md"));
    let section = readme
        .split("## Your own loop")
        .nth(1)
        .expect("the README has a section \"Your own loop\"");
    let block = section
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("its first bash block");
    let prompt = readme
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the README's prompt");

    let fx = Fixture::new("readme-loop");
    let home = fx.path("home");
    let app = home.join("src/app");
    std::fs::create_dir_all(&app).unwrap();
    common::git_workspace_with_todo(&app, "- [ ] the first item\n");
    std::fs::write(home.join("looper-prompt.md"), prompt).unwrap();
    let bin = fx.path("installed");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(common::looper_binary(), bin.join("looper")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    // The README's lines, between ours: whatever happens, the Looper it started ends.
    let script = format!("trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{block}");
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .env_clear()
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("HOME", &home)
        .env("LOOPER_PORT", &port)
        .env("LOOPER_STOP_SCOPE", "own")
        .env("CODEX_EXEC_BINARY", &fx.codex_path)
        .env("LOOPER_CODEX_PROCESS_NAMES", &fx.codex_name)
        .env("CODEX_EXEC_LOG_DIR", fx.path("logs"))
        .env("FAKE_CODEX_RECORD_DIR", fx.path("rec"))
        .env("FAKE_CODEX", "record;print:worked on the first item;exit:0")
        .output()
        .unwrap();
    let (said, err) = (common::stdout(&out), common::stderr(&out));
    let server_log = std::fs::read_to_string(fx.path("logs/looper-server.log")).unwrap_or_default();
    let tail: String = server_log
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(out.status.success(), "{block}\n{said}\n{err}\n{tail}");
    assert!(said.contains("loop: "), "looper status said: {said}");
    assert!(
        said.contains("worked on the first item") && said.contains("# codex_exec_return_code=0"),
        "{said}\n{err}"
    );
    let records: Vec<serde_json::Value> = std::fs::read_dir(fx.path("rec"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_str(&common::read(e.path())).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let argv = records[0]["argv"].as_array().unwrap();
    assert_eq!(argv.last().unwrap(), &json!(prompt), "{argv:?}");
    assert_eq!(
        records[0]["cwd"],
        json!(app.canonicalize().unwrap().to_string_lossy()),
        "{}",
        records[0]
    );
}

/// A second Looper on the same state directory (`CODEX_EXEC_LOG_DIR`) is refused, naming
/// the directory and the Looper that has it: both would write the same history and loop
/// state. Once that one is gone (killed, even), the directory is free again.
#[test]
fn one_looper_per_state_directory() {
    let fx = Fixture::new("state-lock");
    let mut first = fx.start(&[]);
    let (mut child, stderr_path) = fx.spawn(&[]);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let text = common::read(stderr_path);
    assert!(
        text.contains("CODEX_EXEC_LOG_DIR=")
            && text.contains("in use by another Looper")
            && text.contains(&format!("pid {}", first.pid())),
        "{text}"
    );
    // The first goes on as if nothing happened.
    let a = first.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 200, "{}", a.body);
    first.signal(libc::SIGKILL);
    first.wait_exit();
    let again = fx.start(&[]);
    assert_eq!(again.get("/health").status, 200);
}

/// An autopoll start that fails before any run (no codex here) shows in `/status` and
/// `looper status`, not only in the server log; a stop says what it stopped and that
/// nothing was announced when Zulip is not configured.
#[test]
fn a_failed_autopoll_start_and_a_stop_are_said_where_people_look() {
    let fx = Fixture::new("autopoll-fail");
    let looper = fx.start(&[
        ("CODEX_EXEC_BINARY", "/nonexistent/codex"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
    ]);
    let failed = looper.wait("autopoll's failed start in /status", || {
        let s = looper.get("/status").body;
        let f = s["autopoll"]["last_start_failure"].clone();
        (!f.is_null()).then_some(f)
    });
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("CODEX_EXEC_BINARY=/nonexistent/codex"),
        "{failed}"
    );
    let url = format!("http://127.0.0.1:{}", looper.port);
    let o = common::cli(&fx, &["status"], &[("LOOPER_URL", &url)]);
    let said = common::stdout(&o);
    assert!(said.contains("its last start failed at "), "{said}");
    let o = common::cli(
        &fx,
        &["trigger", "--message", "stop", "--prompt", ""],
        &[("LOOPER_URL", &url)],
    );
    let err = common::stderr(&o);
    assert!(
        err.contains("no run was live; nothing stopped")
            && err.contains("not announced (Zulip is not configured); no run started"),
        "{err}"
    );
}
