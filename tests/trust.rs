//! The trust boundaries, tried as an attacker would: the agent (a run, its inbox, its
//! process over HTTP, the links it can place in its workspace), a web page (cross-site
//! requests, forms, DNS rebinding, framing), and another local user (squatting Looper's
//! port, reading its environment). Each test is an attack that worked before Looper drew
//! these lines; each asserts that nothing outside the rules changed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{
    alive, answer_of, cli, drop_request, pid_of, run_id_of, stderr, wait_for, FakeZulip, Fixture,
    Looper, OPERATOR_TOKEN,
};
use serde_json::{json, Value};

/// A script that, if it ever runs, leaves `marker` behind.
fn evil_script(path: &Path, marker: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The fake codex of most tests here: a run that records itself and lives on.
const SLEEPING_CODEX: (&str, &str) = ("FAKE_CODEX", "record;sleep:600");

/// Another git repository beside the workspace, for runs that would escape to it.
fn other_repo(fx: &Fixture) -> PathBuf {
    let other = fx.path("other-repo");
    std::fs::create_dir_all(&other).unwrap();
    common::make_git_repo(&other);
    other
}

/// Every file below `dir` with its contents and mode, to prove nothing there changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode();
        out.push((d.clone(), Vec::new(), mode));
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                out.push((e.path(), bytes, meta.permissions().mode()));
            }
        }
    }
    out.sort();
    out
}

/// A directory outside the workspace the agent would love to write: files with known
/// contents and modes, some of them named like inbox requests.
fn victim_dir(fx: &Fixture, name: &str) -> PathBuf {
    let dir = fx.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..25 {
        let f = dir.join(format!("src{i:02}.json"));
        std::fs::write(&f, format!("{{\"zulip_message\":\"file {i}\"}}")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::write(dir.join("authorized_keys"), "ssh-ed25519 AAAA user@host\n").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The one live run of a fresh Looper, started by the operator.
fn first_run(looper: &Looper) -> (u64, String) {
    let a = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    (pid_of(&a), run_id_of(&a))
}

/// An inbox request may carry only the hand-off: a program it names never runs, another
/// workspace (named, or a link in its own) is refused, and so is any other field with an
/// effect. Each is a `403` naming what was refused, with nothing announced, stopped or
/// started.
#[test]
fn an_inbox_request_is_only_a_handoff() {
    let fx = Fixture::new("inbox-ring");
    let zulip = FakeZulip::start();
    let looper = fx.start_owned(&zulip.env_with(&[SLEEPING_CODEX]));
    let (pid, run_id) = first_run(&looper);
    let inbox = fx.path("ws/.looper/inbox");
    let marker = fx.path("evil-ran");
    evil_script(&fx.path("ws/evil.sh"), &marker);
    let other = other_repo(&fx);
    std::os::unix::fs::symlink(&other, fx.path("ws/link")).unwrap();
    let ws = fx.path("ws");
    let announced = zulip.messages().len();
    for (name, body, names) in [
        (
            "binary.json",
            json!({"zulip_message": "m", "codex_exec_binary": ws.join("evil.sh")}),
            "codex_exec_binary",
        ),
        (
            "script.json",
            json!({"zulip_message": "m", "zulip_script_path": ws.join("evil.sh")}),
            "zulip_script_path",
        ),
        (
            "elsewhere.json",
            json!({"zulip_message": "m", "workspace": other}),
            "own workspace",
        ),
        (
            "link.json",
            json!({"zulip_message": "m", "workspace": ws.join("link")}),
            "own workspace",
        ),
        (
            "delay.json",
            json!({"zulip_message": "m", "codex_exec_delay_seconds": 86400}),
            "codex_exec_delay_seconds",
        ),
        (
            "lie.json",
            json!({"zulip_message": "m", "from_run_id": run_id, "startup_delay_seconds": 1}),
            "startup_delay_seconds",
        ),
    ] {
        drop_request(&inbox, name, &body.to_string());
        let answer = answer_of(&looper, &inbox, name);
        assert_eq!(answer["status"], 403, "{name}: {answer}\n{}", looper.tail());
        let error = answer["body"]["error"].as_str().unwrap();
        assert!(error.contains(names), "{name}: {error}");
    }
    assert!(!marker.exists(), "a program named by the agent ran");
    assert_eq!(
        zulip.messages().len(),
        announced,
        "a refused request was announced"
    );
    assert!(alive(pid), "a refused request stopped the run");
    assert_eq!(looper.records().len(), 1, "a refused request started a run");
    // The hand-off itself goes through, into the run's own workspace.
    drop_request(
        &inbox,
        "next.json",
        &json!({"zulip_message": "next", "from_run_id": run_id, "workspace": ws}).to_string(),
    );
    let answer = answer_of(&looper, &inbox, "next.json");
    assert_eq!(answer["status"], 200, "{answer}\n{}", looper.tail());
    assert_eq!(answer["body"]["workspace"], json!(ws));
}

/// Over HTTP a run is a run however it asks: with its own token (`$LOOPER_API_TOKEN` in a
/// run is the run's token), with no token at all, or even with the operator's token read
/// from disk — its process is known by the connection. It may hand off and nothing more.
#[test]
fn a_run_over_http_is_only_a_handoff_whatever_token_it_shows() {
    for operator_token_on_disk in [false, true] {
        a_run_over_http_tries(operator_token_on_disk);
    }
}

fn a_run_over_http_tries(operator_token_on_disk: bool) {
    let fx = Fixture::new("http-ring");
    let marker = fx.path("evil-ran");
    evil_script(&fx.path("ws/evil.sh"), &marker);
    let other = other_repo(&fx);
    let evil = fx.path("ws/evil.sh");
    let attempts = [
        json!({"zulip_message": "m", "codex_exec_binary": evil}),
        json!({"zulip_message": "m", "zulip_script_path": evil}),
        json!({"zulip_message": "m", "workspace": other}),
    ];
    let steps: Vec<String> = ["post", "post-bare"]
        .iter()
        .flat_map(|kind| attempts.iter().map(move |a| format!("{kind}:{a}")))
        .collect();
    let script = format!("record;{};sleep:600", steps.join(";"));
    {
        let mut env = vec![
            ("LOOPER_API_TOKEN", OPERATOR_TOKEN.to_string()),
            ("FAKE_CODEX", script.clone()),
        ];
        if operator_token_on_disk {
            env.push(("FAKE_CODEX_POST_TOKEN", OPERATOR_TOKEN.to_string()));
        }
        let looper = fx.start_owned(&env);
        let a = looper.run_as(OPERATOR_TOKEN, json!({"codex_prompt": "first"}));
        assert_eq!(a.status, 200, "{}", a.body);
        let answers = looper.posts(steps.len());
        for (step, answer) in steps.iter().zip(&answers) {
            assert_eq!(
                answer["status"],
                403,
                "{step} (operator token on disk: {operator_token_on_disk}): {answer}\n{}",
                looper.tail()
            );
        }
        assert!(!marker.exists(), "a program named by a run ran");
        assert!(alive(pid_of(&a)), "a refused request stopped the run");
        assert_eq!(looper.records().len(), 1);
        let runs = looper.get_with("/runs", &[("X-Looper-Token", OPERATOR_TOKEN)]);
        assert_eq!(
            runs.body["runs"].as_array().map(Vec::len),
            Some(1),
            "{}",
            runs.body
        );
    }
}

/// A run's hand-off over HTTP with the original wrapper's habits (`$LOOPER_URL`,
/// `$LOOPER_API_TOKEN`, its workspace, an extra field) starts the next run; its Zulip text
/// is capped, marked as the run's, and pings nobody.
#[test]
fn a_runs_handoff_goes_through_and_its_text_is_tamed() {
    let fx = Fixture::new("http-handoff");
    let zulip = FakeZulip::start();
    let mut env = zulip.env_with(&[("LOOPER_API_TOKEN", OPERATOR_TOKEN)]);
    let long = "x".repeat(5000);
    let body = json!({
        "zulip_message": format!("done @**all** {long}"),
        "workspace": fx.path("ws"),
        "codex_prompt": "second",
        "password_store": "the original wrapper sends this",
    });
    env.push((
        "FAKE_CODEX",
        format!("record;exit-if-prompt:second:0;post:{body};sleep:600"),
    ));
    let looper = fx.start_owned(&env);
    let a = looper.run_as(OPERATOR_TOKEN, json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}", a.body);
    // The caller is stopped with the run it replaces; the next run is what tells.
    looper.wait("the handed-off run", || {
        looper
            .records()
            .iter()
            .any(|r| r["argv"].as_array().and_then(|a| a.last()) == Some(&json!("second")))
            .then_some(())
    });
    let id = run_id_of(&a);
    // The hand-off's announcement (the second run's own summary may come before or after).
    let sent = looper.wait("the hand-off's announcement", || {
        zulip
            .contents()
            .into_iter()
            .find(|m| m.starts_with(&format!("Looper: run {id} hands off:")))
    });
    looper.log_with("run.ignored_fields");
    // Looper's line names the run; the run's words follow, quoted.
    let lines: Vec<&str> = sent.lines().collect();
    assert_eq!(
        lines[0],
        format!("Looper: run {id} hands off:"),
        "{sent:.80}"
    );
    assert!(
        lines[1].starts_with("> done @\u{200B}**all** x"),
        "{:.40}",
        lines[1]
    );
    assert!(
        sent.chars().count() < 2100,
        "{} characters sent",
        sent.chars().count()
    );
    // The quote ends (a blank line), then the summary of the run that handed off.
    assert!(
        sent.contains(&format!("x […]\n\n↳ run {id} handed_off after ")),
        "{}",
        sent.lines().rev().take(2).collect::<Vec<_>>().join(" | ")
    );
}

/// Links the agent places in its workspace redirect none of Looper's own file operations:
/// a `done/` that points elsewhere, answer names that point at a file, an inbox that points
/// at another directory, a `.gitignore` that points at a login file, a request hard-linked
/// to a file elsewhere. Everything outside the workspace stays as it was, byte for byte and
/// mode for mode.
#[test]
fn links_in_the_workspace_redirect_nothing() {
    let fx = Fixture::new("links");
    let zulip = FakeZulip::start();
    let looper = fx.start_owned(&zulip.env_with(&[SLEEPING_CODEX]));
    let keys = victim_dir(&fx, "home-ssh");
    let src = victim_dir(&fx, "home-proj-src");
    let bashrc = fx.path("home-bashrc");
    std::fs::write(&bashrc, "# my bashrc\n").unwrap();
    let profile = fx.path("home-profile");
    std::fs::write(&profile, "# my profile\n").unwrap();
    let before = (
        snapshot(&keys),
        snapshot(&src),
        std::fs::read(&bashrc).unwrap(),
    );

    let (_, run_id) = first_run(&looper);
    let inbox = fx.path("ws/.looper/inbox");
    // Answer names that are links to a file outside.
    std::os::unix::fs::symlink(&bashrc, inbox.join("done/a.answer.json")).unwrap();
    std::os::unix::fs::symlink(&bashrc, inbox.join("done/a.answer.tmp")).unwrap();
    drop_request(
        &inbox,
        "a.json",
        &json!({"zulip_message": "m", "codex_prompt": "", "from_run_id": run_id}).to_string(),
    );
    looper.wait("the answer to replace the planted link", || {
        std::fs::symlink_metadata(inbox.join("done/a.answer.json"))
            .ok()
            .filter(|m| m.is_file())
            .map(|_| ())
    });
    let answer = answer_of(&looper, &inbox, "a.json");
    assert_eq!(answer["status"], 200, "{answer}");
    // A request hard-linked to a file elsewhere.
    std::fs::hard_link(src.join("src00.json"), inbox.join("hard.json")).unwrap();
    let answer = answer_of(&looper, &inbox, "hard.json");
    assert_eq!(answer["status"], 400, "{answer}");
    assert!(answer["body"]["error"]
        .as_str()
        .unwrap()
        .contains("hard link"));
    // `done/` swapped for a link to ~/.ssh, then a request named like a key file.
    std::fs::rename(inbox.join("done"), fx.path("ws/.looper/old-done")).unwrap();
    std::os::unix::fs::symlink(&keys, inbox.join("done")).unwrap();
    drop_request(&inbox, "authorized_keys", "ssh-ed25519 EVIL attacker\n");
    // The inbox itself swapped for a link to ~/proj/src; Looper keeps the one it opened.
    std::fs::rename(&inbox, fx.path("ws/.looper/inbox-real")).unwrap();
    std::os::unix::fs::symlink(&src, &inbox).unwrap();
    let real = fx.path("ws/.looper/inbox-real");
    looper.wait("the key-named file to be taken from the real inbox", || {
        (!real.join("authorized_keys").exists()).then_some(())
    });
    // And for the next spawn: a .gitignore pointing at ~/.profile.
    std::fs::remove_file(fx.path("ws/.looper/.gitignore")).unwrap();
    std::os::unix::fs::symlink(&profile, fx.path("ws/.looper/.gitignore")).unwrap();
    let next = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(next.status, 200, "{}", next.body);
    let rec = looper.record_of(pid_of(&next));
    assert_eq!(
        rec["looper_inbox"],
        Value::Null,
        "a linked inbox was handed to a run"
    );
    looper.stderr_with("inbox.unavailable");
    // Many polls later, still nothing moved out of ~/proj/src.
    drop_request(
        &real,
        "late.json",
        r#"{"zulip_message":"m","codex_prompt":""}"#,
    );
    looper.wait("the request in the held inbox to be taken", || {
        (!real.join("late.json").exists()).then_some(())
    });

    assert_eq!(snapshot(&keys), before.0, "~/.ssh changed");
    assert_eq!(snapshot(&src), before.1, "~/proj/src changed");
    assert_eq!(std::fs::read(&bashrc).unwrap(), before.2, ".bashrc changed");
    assert_eq!(std::fs::read_to_string(&profile).unwrap(), "# my profile\n");
    assert_eq!(
        std::fs::symlink_metadata(fx.path("home-bashrc"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
}

/// A `.looper` or inbox that is a link before Looper ever opens it is refused (at start and
/// at spawn): the run gets no inbox, and the directory it points to is not chmod'ed,
/// written or emptied.
#[test]
fn a_linked_inbox_is_refused_before_it_is_used() {
    let fx = Fixture::new("linked-inbox");
    let src = victim_dir(&fx, "home-proj-src");
    let before = snapshot(&src);
    std::fs::create_dir_all(fx.path("ws/.looper")).unwrap();
    std::os::unix::fs::symlink(&src, fx.path("ws/.looper/inbox")).unwrap();
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    looper.stderr_with("inbox.refused");
    let (pid, _) = first_run(&looper);
    assert_eq!(looper.record_of(pid)["looper_inbox"], Value::Null);
    // The linked directory keeps its mode (0755, not 0700) and every file.
    assert_eq!(snapshot(&src), before);
    std::fs::remove_dir_all(fx.path("ws/.looper")).unwrap();
    std::os::unix::fs::symlink(&src, fx.path("ws/.looper")).unwrap();
    let next = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(looper.record_of(pid_of(&next))["looper_inbox"], Value::Null);
    assert_eq!(snapshot(&src), before);
}

/// Looper's own files never sit where the agent writes: a workspace holding the log
/// directory is refused before any effect (naming the setting), and by default the logs
/// live outside the working directory, so a Looper started in the repository just works.
#[test]
fn looper_keeps_its_own_files_out_of_the_workspace() {
    let fx = Fixture::new("own-files");
    let zulip = FakeZulip::start();
    let logs_in_ws = fx.path("ws/logs");
    let looper = fx.start_owned(&zulip.env_with(&[
        SLEEPING_CODEX,
        ("CODEX_EXEC_LOG_DIR", &logs_in_ws.to_string_lossy()),
    ]));
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("CODEX_EXEC_LOG_DIR"),
        "{}",
        a.body
    );
    assert!(zulip.messages().is_empty(), "announced");
    assert!(looper.records().is_empty(), "started");
    drop(looper);
    // The defaults, started in the workspace: the logs go under $HOME/.local/state.
    let looper = fx.start_in(
        &fx.path("ws"),
        &[
            ("CODEX_EXEC_LOG_DIR", ""),
            ("LOOPER_WORKSPACE", ""),
            ("FAKE_CODEX", "record;sleep:600"),
        ],
    );
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let log = a.body["codex_exec_result"]["log_path"].as_str().unwrap();
    assert!(
        log.starts_with(&*fx.path(".local/state/looper/logs").to_string_lossy()),
        "{log}"
    );
}

/// A history file swapped for a link (say to ~/.bashrc) is never written through.
#[test]
fn the_history_is_never_written_through_a_link() {
    let fx = Fixture::new("history-link");
    let bashrc = fx.path("home-bashrc");
    std::fs::write(&bashrc, "# my bashrc\n").unwrap();
    std::os::unix::fs::symlink(&bashrc, fx.path("logs/runs.jsonl")).unwrap();
    // A link where Looper keeps its history is not Looper's own file: refused at start.
    let (mut child, stderr) = fx.spawn(&[("FAKE_CODEX", "record;sleep:600")]);
    let status = child.wait().unwrap();
    let said = common::read(&stderr);
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("CODEX_EXEC_LOG_DIR") && said.contains("runs.jsonl"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&bashrc).unwrap(), "# my bashrc\n");
}

/// A workspace named through a link (by someone allowed to name one) runs in the directory
/// itself, and the answer and the history say which.
#[test]
fn a_linked_workspace_is_named_as_what_it_is() {
    let fx = Fixture::new("ws-link");
    let other = other_repo(&fx);
    std::os::unix::fs::symlink(&other, fx.path("alias")).unwrap();
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "x", "workspace": fx.path("alias")}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["workspace"], json!(other));
    let rec = looper.record_of(pid_of(&a));
    assert_eq!(rec["cwd"], json!(other));
    assert_eq!(
        looper.get("/runs").body["runs"][0]["workspace"],
        json!(other)
    );
}

/// A web page cannot make Looper do anything: `text/plain` (a no-cors `fetch`) and forms are
/// refused, a cross-site `Origin` or `Sec-Fetch-Site` is refused, and under DNS rebinding
/// (`Host: evil.example`) no path answers with data. The page cannot be framed, and its own
/// same-origin requests still work.
#[test]
fn a_web_page_can_make_looper_do_nothing() {
    let fx = Fixture::new("browser");
    let zulip = FakeZulip::start();
    let looper = fx.start_owned(&zulip.env_with(&[SLEEPING_CODEX]));
    let (pid, run_id) = first_run(&looper);
    let announced = zulip.messages().len();
    let marker = fx.path("env-ran");
    let attack = json!({
        "zulip_message": format!("-S touch {}", marker.display()),
        "zulip_script_path": "/usr/bin/env",
        "codex_prompt": "",
    })
    .to_string();
    let host = format!("127.0.0.1:{}", looper.port);
    let raw = |host: &str, headers: &[(&str, &str)], content_type: &str| {
        let mut head = format!(
            "POST /run HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
            attack.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        exchange(&looper, &format!("{head}\r\n{attack}")).0
    };
    let cross = [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
    ];
    assert_eq!(raw(&host, &cross, "text/plain"), 403, "no-cors fetch");
    assert_eq!(raw(&host, &[], "text/plain"), 415, "text/plain");
    assert_eq!(
        raw(&host, &cross, "application/x-www-form-urlencoded"),
        403,
        "form"
    );
    assert_eq!(
        raw(&host, &[], "multipart/form-data; boundary=x"),
        415,
        "multipart form"
    );
    assert_eq!(
        raw(&host, &cross, "application/json"),
        403,
        "cross-site JSON"
    );
    let same_site = [("Sec-Fetch-Site", "same-site")];
    assert_eq!(
        raw(&host, &same_site, "application/json"),
        403,
        "a neighbour port"
    );
    assert_eq!(
        raw(&host, &[("Origin", "null")], "application/json"),
        403,
        "a sandboxed frame"
    );
    let evil = "evil.example:3456";
    for path in [
        "/status",
        "/runs",
        &format!("/runs/{run_id}/log"),
        "/metrics",
        "/health",
        "/",
    ] {
        let rq = format!("GET {path} HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n");
        let (status, body) = exchange(&looper, &rq);
        assert_eq!(status, 403, "{path} under rebinding: {body}");
        assert!(!body.contains(&run_id), "{path} leaked data: {body}");
    }
    assert_eq!(
        raw(evil, &[], "application/json"),
        403,
        "/run under rebinding"
    );
    // Two Host headers are no way around it.
    assert_eq!(
        raw(&host, &[("Host", evil)], "application/json"),
        400,
        "two Host headers"
    );
    assert!(!marker.exists(), "a web page ran a program");
    assert_eq!(zulip.messages().len(), announced, "a web page announced");
    assert!(alive(pid), "a web page stopped the run");
    // The page is never framed.
    let page = minreq::get(looper.url("/")).send().unwrap();
    assert_eq!(page.status_code, 200);
    let header = |name: &str| {
        page.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(
        header("content-security-policy").as_deref(),
        Some("frame-ancestors 'none'")
    );
    // The page's own requests: same origin, JSON.
    let origin = format!("http://{host}");
    let mine = looper.post_with(
        "/run",
        r#"{"zulip_message":"from the page","codex_prompt":""}"#,
        &[("Origin", &origin), ("Sec-Fetch-Site", "same-origin")],
    );
    assert_eq!(mine.status, 200, "{}", mine.body);
    // A name the operator allows.
    drop(looper);
    let looper =
        fx.start_owned(&zulip.env_with(&[SLEEPING_CODEX, ("LOOPER_ALLOWED_HOSTS", "devbox")]));
    let (status, body) = exchange(
        &looper,
        "GET /status HTTP/1.1\r\nHost: devbox:3456\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
}

/// One raw request on a connection of its own: the status and the body.
fn exchange(looper: &Looper, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = looper.raw();
    c.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A run's token opens the hand-off only: it reads nothing (the operator's token does).
#[test]
fn a_runs_token_reads_nothing() {
    let fx = Fixture::new("run-token");
    let looper = fx.start(&[
        ("LOOPER_API_TOKEN", OPERATOR_TOKEN),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let a = looper.run_as(OPERATOR_TOKEN, json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let token = looper.record_of(pid_of(&a))["looper_run_token"]
        .as_str()
        .unwrap()
        .to_string();
    for path in ["/status", "/runs", "/metrics"] {
        let r = looper.get_with(path, &[("X-Looper-Token", &token)]);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
}

/// Looper is undumpable: another process of the same user cannot read its environment
/// (the token, the Zulip key), while it can read that of any ordinary process of the user.
/// Run as root, the suite starts Looper, the reader and the ordinary process as user 65534
/// (root's capabilities would let it read anything); otherwise as the suite's own user.
#[test]
fn no_other_process_reads_loopers_environment() {
    use std::os::unix::process::CommandExt;
    let fx = Fixture::new("dumpable");
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let shared = fx.path("unprivileged");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Open to user 65534 the way /tmp is: sticky (Looper refuses a state directory under a
    // directory anyone may rename things in).
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let as_user = |cmd: &mut std::process::Command| {
        if root {
            cmd.uid(65534).gid(65534);
        }
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut looper = std::process::Command::new(common::binary_for_anyone(&fx));
    looper
        .env_clear()
        .env("HOME", &shared)
        .env("LOOPER_PORT", port.to_string())
        .env("LOOPER_AUTO_START_WHEN_IDLE", "0")
        .env("CODEX_EXEC_LOG_DIR", shared.join("logs"))
        .env("LOOPER_API_TOKEN", "operator-token-in-the-environment")
        .current_dir(&shared)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    as_user(&mut looper);
    let looper = Guard(common::spawn_fresh_copy(&mut looper));
    wait_for("the unprivileged Looper to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    let mut ordinary = std::process::Command::new("sleep");
    ordinary.arg("30").env("SOMETHING", "visible");
    as_user(&mut ordinary);
    let ordinary = Guard(ordinary.spawn().unwrap());
    let read_env = |pid: u32| {
        let mut cmd = std::process::Command::new("cat");
        cmd.arg(format!("/proc/{pid}/environ"));
        as_user(&mut cmd);
        cmd.output().unwrap()
    };
    let control = read_env(ordinary.0.id());
    assert!(
        String::from_utf8_lossy(&control.stdout).contains("SOMETHING=visible"),
        "the reader cannot even read an ordinary process: {}",
        stderr(&control)
    );
    let theirs = read_env(looper.0.id());
    assert!(
        !theirs.status.success(),
        "Looper's environment was readable"
    );
    assert!(!String::from_utf8_lossy(&theirs.stdout).contains("operator-token"));
}

/// `looper trigger` never hands the token to another user's program squatting Looper's port
/// (while Looper is down). Needs root to start that program as another user; says so
/// otherwise.
#[test]
fn the_token_is_not_sent_to_a_squatter() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        common::skip("starting a program as another user needs root");
        return;
    }
    let fx = Fixture::new("squat");
    let shared = fx.path("squatter");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Open to user 65534 the way /tmp is: sticky (Looper refuses a state directory under a
    // directory anyone may rename things in).
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // The squatter: a plain TCP listener of user 65534 that records what it receives.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let squatter = {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(common::binary_for_anyone(&fx));
        cmd.env_clear()
            .env("LOOPER_PORT", port.to_string())
            .env("LOOPER_AUTO_START_WHEN_IDLE", "0")
            .env("HOME", &shared)
            .env("CODEX_EXEC_LOG_DIR", shared.join("logs"))
            .current_dir(&shared)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .uid(65534)
            .gid(65534);
        common::spawn_fresh_copy(&mut cmd)
    };
    let _squatter = Guard(squatter);
    wait_for("the squatter to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    let url = format!("http://127.0.0.1:{port}");
    let out = cli(
        &fx,
        &["trigger", "--url", &url, "--message", "m", "--prompt", ""],
        &[("LOOPER_API_TOKEN", "the-operators-token")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("held by user 65534"),
        "{}",
        stderr(&out)
    );
    // A request of ours after the trigger's: its line is logged after any of the trigger's.
    let _ = minreq::put(format!("{url}/status")).with_timeout(20).send();
    let log = wait_for("our PUT in the squatter's log", || {
        let text = std::fs::read_to_string(shared.join("logs/looper-server.log")).ok()?;
        text.contains(" method=PUT ").then_some(text)
    });
    assert!(
        !log.contains("POST"),
        "the trigger reached the squatter:\n{log}"
    );
}

/// Kills the squatter even when the test fails.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that leaves its run's session and environment (`setsid env -i sh -c 'exec
/// sleep 600' &`) is stopped with the run where cgroups can be used (`/status` says
/// `stop_method: "cgroup"`); elsewhere the test says it skipped.
#[test]
fn a_process_that_left_the_session_and_environment_is_stopped() {
    let fx = Fixture::new("escape");
    let looper = fx.start(&[("FAKE_CODEX", "escape;record;sleep:600")]);
    let method = looper.get("/status").body["stop_method"].clone();
    let a = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let rec = looper.record_of(pid_of(&a));
    let escaped = rec["helpers"][0]
        .as_u64()
        .expect("the escaped helper's pid");
    assert!(alive(escaped));
    if method != json!("cgroup") {
        common::skip("cgroups cannot be used here (stop_method {method}); the /proc method cannot see this process");
        return;
    }
    let b = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(b.status, 200, "{}", b.body);
    looper.wait("the escaped process to be gone", || {
        (!alive(escaped)).then_some(())
    });
    let killed = b.body["killed_codex_exec_pids"].as_array().unwrap();
    assert!(killed.contains(&json!(escaped)), "{}", b.body);
}

/// An agent that read the operator's token from disk sends a trigger and closes its end at
/// once, so that Looper finds no process holding the connection to tie to its run. Such a
/// request cannot be told from the agent's: refused, nothing starts. The same request from
/// a client that waits for its answer (curl, `looper trigger`) starts the run.
#[test]
fn a_trigger_whose_client_left_before_it_was_seen_does_nothing() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let fx = Fixture::new("client-left");
    let looper = fx.start(&[("LOOPER_API_TOKEN", OPERATOR_TOKEN), SLEEPING_CODEX]);
    let body = json!({"zulip_message": "m", "codex_prompt": "left"}).to_string();
    let request = format!(
        "POST /run HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        looper.port,
        body.len()
    );
    let mut c = looper.raw();
    // Corked, the request leaves only with the close: when Looper reads it, no process
    // holds the client's end any more.
    let on: libc::c_int = 1;
    // SAFETY: a valid descriptor and a pointer to an int of the size given.
    let corked = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(corked, 0, "TCP_CORK");
    c.write_all(request.as_bytes()).unwrap();
    drop(c);
    let end = looper.wait("Looper to answer the request", || {
        let log = looper.server_log();
        let line = log
            .lines()
            .find(|l| l.contains("method=POST path=/run status="))?;
        Some(line.to_string())
    });
    assert!(end.contains("status=400"), "{end}\n{}", looper.tail());
    assert!(
        looper.records().is_empty(),
        "a request nobody could be tied to started a run\n{}",
        looper.tail()
    );
    let a = looper.run_as(OPERATOR_TOKEN, json!({"codex_prompt": "waits"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    assert_eq!(looper.records().len(), 1);
}
