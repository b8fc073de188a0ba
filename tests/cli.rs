//! Black-box tests of the command line against a real server on port 0: trigger (flags,
//! files, follow, errors), status, runs, zulip check and send, the wrapper script, and the
//! README's list of environment variables against the parser's.

mod common;

use std::process::Command;

use common::{cli, run_id_of, stderr, stdout, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

fn url(looper: &Looper) -> String {
    looper.url("/run")
}

/// `trigger` posts the flags and files as /run, prints the JSON answer and a progress line,
/// and exits 0 only when the answer is ok.
#[test]
fn trigger_posts_a_run_and_reports_it() {
    let fx = Fixture::new("cli-trigger");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let u = url(&looper);
    std::fs::write(fx.path("message.txt"), "from a file").unwrap();
    std::fs::write(
        fx.path("prompt.md"),
        "prompt from a file\nwith `ticks` and $VARS\n",
    )
    .unwrap();
    let o = cli(
        &fx,
        &[
            "trigger",
            "--message-file",
            "message.txt",
            "--prompt-file",
            "prompt.md",
            "--workspace",
            "ws",
            "--delay",
            "0",
        ],
        &[("LOOPER_URL", &u)],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let answer: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(answer["ok"], json!(true));
    let pid = answer["codex_exec_result"]["pid"].as_u64().unwrap();
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "run {} started, pid {pid}, log ",
            answer["run_id"].as_str().unwrap()
        )),
        "{err}"
    );
    let rec = looper.record_of(pid);
    assert_eq!(
        rec["argv"].as_array().unwrap().last(),
        Some(&json!("prompt from a file\nwith `ticks` and $VARS\n"))
    );
    assert_eq!(rec["cwd"], json!(fx.path("ws")));

    // LOOPER_URL without /run works too; --from-run comes from LOOPER_RUN_ID.
    let base = format!("http://127.0.0.1:{}", looper.port);
    let stale = cli(
        &fx,
        &["trigger", "--message", "late", "--prompt", ""],
        &[("LOOPER_URL", &base), ("LOOPER_RUN_ID", "deadbeef")],
    );
    assert_eq!(stale.status.code(), Some(1), "{}", stdout(&stale));
    assert!(
        stderr(&stale).contains("unknown run: Looper never started a run deadbeef"),
        "{}",
        stderr(&stale)
    );
    let announce = cli(
        &fx,
        &["trigger", "--message", "only announce", "--prompt", ""],
        &[("LOOPER_URL", &base)],
    );
    assert!(announce.status.success(), "{}", stderr(&announce));
    assert!(stderr(&announce).contains("no run started"));
}

/// `trigger` sends the token, and says clearly when no server is running.
#[test]
fn trigger_auth_and_unreachable_server() {
    let fx = Fixture::new("cli-auth");
    let looper = fx.start(&[("LOOPER_API_TOKEN", "cli-token-1")]);
    let u = url(&looper);
    let no = cli(
        &fx,
        &["trigger", "--message", "m", "--prompt", ""],
        &[("LOOPER_URL", &u)],
    );
    assert_eq!(no.status.code(), Some(1));
    assert!(
        stderr(&no).contains("HTTP 401: unauthorized")
            && stderr(&no).contains("set LOOPER_API_TOKEN")
            && !stderr(&no).contains("Authorization: Bearer"),
        "{}",
        stderr(&no)
    );
    // A wrong token: the command line names the variable, not curl's headers.
    let wrong = cli(
        &fx,
        &["status"],
        &[("LOOPER_URL", &u), ("LOOPER_API_TOKEN", "wrong")],
    );
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("did not accept the token in LOOPER_API_TOKEN"),
        "{}{}",
        stdout(&wrong),
        stderr(&wrong)
    );
    let yes = cli(
        &fx,
        &["trigger", "--message", "m", "--prompt", ""],
        &[("LOOPER_URL", &u), ("LOOPER_API_TOKEN", "cli-token-1")],
    );
    assert!(yes.status.success(), "{}", stderr(&yes));
    drop(looper);
    let down = cli(&fx, &["trigger", "--message", "m"], &[("LOOPER_URL", &u)]);
    assert_eq!(down.status.code(), Some(1));
    assert!(
        stderr(&down).contains("cannot reach Looper") && stderr(&down).contains("looper serve"),
        "{}",
        stderr(&down)
    );
    let usage = cli(&fx, &["trigger", "--prompt", "p"], &[("LOOPER_URL", &u)]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(stderr(&usage).contains("--message"), "{}", stderr(&usage));
}

/// `trigger --follow` prints the run's output until it exits, with the run's outcome.
#[test]
fn trigger_follow_tails_the_run() {
    let fx = Fixture::new("cli-follow");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "print:step one;sleep:0.5;print:step two;exit:0",
    )]);
    let o = cli(
        &fx,
        &["trigger", "--message", "m", "--prompt", "p", "--follow"],
        &[("LOOPER_URL", &url(&looper))],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("step one\nstep two\n\n# codex_exec_return_code=0\n"),
        "{out}"
    );
    // Stdout is the log alone; stderr says in short lines what happened, not the JSON
    // answer with its prompt.
    assert!(!out.contains("\"ok\":"), "{out}");
    let err = stderr(&o);
    assert!(!err.contains("\"ok\":") && !err.contains('{'), "{err}");
    assert!(err.contains("no run was live; nothing stopped"), "{err}");
    assert!(err.contains("run exited with return code 0"), "{err}");
}

/// `logs -f` of a run that Looper stops as it shuts down shows the run's end (the return
/// code's line, read from the log file once Looper no longer answers), and ends by saying
/// so, with the run's failure as its exit code.
#[test]
fn logs_follow_sees_the_end_when_looper_stops() {
    let fx = Fixture::new("cli-logs-shutdown");
    let mut looper = fx.start(&[("FAKE_CODEX", "print:output of a run;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "long"}));
    let a_id = run_id_of(&a);
    let (out, err) = (fx.path("follow.out"), fx.path("follow.err"));
    let mut follower = Command::new(common::looper_binary())
        .args(["logs", "-f"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &fx.dir)
        .env("LOOPER_URL", url(&looper))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    looper.wait("the follower to print the run's output", || {
        common::read(&out).contains("output of a run").then_some(())
    });
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0), "{}", looper.tail());
    let status = follower.wait().unwrap();
    let (text, said) = (common::read(&out), common::read(&err));
    assert!(
        text.contains("# codex_exec_return_code=-15"),
        "{text}\n{said}\nthe log: {}",
        common::read(a.body["codex_exec_result"]["log_path"].as_str().unwrap())
    );
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains(&format!("run {a_id} ended")), "{said}");
}

/// `status` reads well and `--json` is the raw answer; `runs` is a table.
#[test]
fn status_and_runs() {
    let fx = Fixture::new("cli-status");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "p"}));
    let run_id = a.body["run_id"].as_str().unwrap().to_string();
    let env = [("LOOPER_URL", url(&looper))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(&fx, &["status"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains(&format!(
            "active run: {run_id} (pid {})",
            a.body["codex_exec_result"]["pid"]
        )),
        "{text}"
    );
    assert!(text.contains("autopoll: off"), "{text}");
    let o = cli(&fx, &["status", "--json"], &env);
    let raw: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(raw["active"]["run_id"], json!(run_id));
    let o = cli(&fx, &["runs", "--limit", "5"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("RUN"), "{table}");
    assert!(
        lines[1].starts_with(&run_id) && lines[1].contains("running"),
        "{table}"
    );
}

/// `zulip check` says where credentials come from without the key; `zulip send` posts.
#[test]
fn zulip_check_and_send() {
    let fx = Fixture::new("cli-zulip");
    let z = FakeZulip::start();
    let creds = z.env_with(&[("ZULIP_STREAM", "ops")]);
    let creds: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(&fx, &["zulip", "check"], &creds);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("credentials: env") && text.contains("bot: bot@example.com"),
        "{text}"
    );
    assert!(
        text.contains("target: type=stream stream=ops topic=looper"),
        "{text}"
    );
    assert!(!text.contains(FakeZulip::KEY) && !stderr(&o).contains(FakeZulip::KEY));
    // It asks Zulip who the credentials belong to.
    assert!(
        text.contains("Zulip says: the credentials are Looper Bot <bot@example.com> (user id 99)"),
        "{text}"
    );
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    // The same credentials, at a site where nothing listens.
    let unusable = z.env_with(&[("ZULIP_SITE", &dead)]);
    let unusable: Vec<(&str, &str)> = unusable.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(&fx, &["zulip", "check"], &unusable);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("check failed: Zulip is unreachable"),
        "{}",
        stdout(&o)
    );
    // A site that answers, but not as Zulip does: a failure, not "? <?> (user id 0)".
    let odd = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let odd_site = format!("http://{}", odd.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        if let Ok(rq) = odd.recv() {
            let _ = rq.respond(tiny_http::Response::from_string(r#"{"result": "success"}"#));
        }
    });
    let odd_creds = z.env_with(&[("ZULIP_SITE", &odd_site)]);
    let odd_creds: Vec<(&str, &str)> = odd_creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = cli(&fx, &["zulip", "check"], &odd_creds);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("without the user's full_name, email and user_id")
            && !stdout(&o).contains("user id 0"),
        "{}",
        stdout(&o)
    );
    let none = cli(&fx, &["zulip", "check"], &[]);
    assert_eq!(none.status.code(), Some(1));
    assert!(stdout(&none).contains("not configured"));
    let partial = cli(&fx, &["zulip", "check"], &[("ZULIP_SITE", "x")]);
    assert_eq!(partial.status.code(), Some(1));
    assert!(stderr(&partial).contains("ZULIP_BOT_EMAIL"));
    let o = cli(&fx, &["zulip", "send", "hello from the cli"], &creds);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("OK message_id=42"));
    assert_eq!(z.messages()[0].form()["content"], "hello from the cli");
}

/// The wrapper script triggers a run of its repository with the message file next to it and
/// passes LOOPER_RUN_ID on.
#[test]
fn the_wrapper_script_is_a_drop_in() {
    let fx = Fixture::new("cli-wrapper");
    let repo = fx.path("ws");
    std::fs::create_dir_all(repo.join("scripts")).unwrap();
    let script = repo.join("scripts/run-codex-task.sh");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/run-codex-task.sh"),
        &script,
    )
    .unwrap();
    std::fs::write(
        repo.join("scripts/looper-message.txt"),
        "message from the file",
    )
    .unwrap();
    // The example prompt, copied beside it as the README says, is every run's prompt.
    let shipped = common::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/looper-prompt.md"
    ));
    std::fs::write(repo.join("scripts/looper-prompt.md"), &shipped).unwrap();
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[("FAKE_CODEX", "record;sleep:600")]));
    let run = |extra: &[(&str, &str)]| {
        Command::new("bash")
            .arg(&script)
            .env("LOOPER_BIN", common::looper_binary())
            .env("LOOPER_URL", url(&looper))
            .env_remove("LOOPER_RUN_ID")
            .env_remove("LOOPER_API_TOKEN")
            .envs(extra.iter().copied())
            .current_dir("/")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let answer: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let rec = looper.record_of(answer["codex_exec_result"]["pid"].as_u64().unwrap());
    // Without git the repository is the script's parent directory.
    assert_eq!(rec["cwd"], json!(repo));
    assert_eq!(
        rec["argv"].as_array().unwrap().last(),
        Some(&json!(shipped))
    );
    assert_eq!(z.messages()[0].form()["content"], "message from the file");
    // Called from inside the run (with its LOOPER_RUN_ID and LOOPER_URL), it hands off from
    // that run: the caller is part of the run, so it is stopped with it while the next run
    // starts. A late caller from the old run is refused and stops nothing.
    let run_id = answer["run_id"].as_str().unwrap().to_string();
    let own_url = url(&looper);
    let o = run(&[("LOOPER_RUN_ID", &run_id), ("LOOPER_URL", &own_url)]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        o.status.signal(),
        Some(libc::SIGTERM),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    looper.wait("the next run", || {
        (looper.records().len() == 2).then_some(())
    });
    let next = looper.records()[1]["pid"].as_u64().unwrap();
    let o = run(&[("LOOPER_RUN_ID", &run_id)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("stale"), "{}", stderr(&o));
    assert!(common::alive(next));
}

/// The environment variables a text names.
fn variables_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut named = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let var = ["LOOPER_", "CODEX_EXEC_", "CODEX_HOME", "ZULIP_", "ZULIPRC_"]
            .iter()
            .any(|p| word.starts_with(p));
        if var
            && word.len() > 7
            && word
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            named.insert(word.to_string());
        }
    }
    named
}

/// Every environment variable the README and `docs/` name is one the parser knows, and
/// every one the parser knows is in `docs/configuration.md`.
#[test]
fn the_docs_and_the_parser_know_the_same_variables() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = common::read(root.join("README.md"));
    for doc in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if doc.path().extension().is_some_and(|e| e == "md") {
            all.push_str(&common::read(doc.path()));
        }
    }
    let named = variables_in(&all);
    let in_table = variables_in(&common::read(root.join("docs/configuration.md")));
    let set = |vars: &[&str]| -> std::collections::BTreeSet<String> {
        vars.iter().map(|s| s.to_string()).collect()
    };
    let (server, client) = (set(looper::KNOWN_VARS), set(looper::CLIENT_VARS));
    let known: std::collections::BTreeSet<String> = server.union(&client).cloned().collect();
    let unknown: Vec<&String> = named.difference(&known).collect();
    // The server's variables are in the table; the ones a run or a client reads may be
    // explained where they are used.
    let mut undocumented: Vec<&String> = server.difference(&in_table).collect();
    undocumented.extend(client.difference(&named));
    assert!(
        unknown.is_empty(),
        "the docs name variables the parser does not know: {unknown:?}"
    );
    assert!(
        undocumented.is_empty(),
        "variables missing from docs/configuration.md: {undocumented:?}"
    );
}

/// Every link in the README and `docs/` to a file of the repository or a heading leads
/// somewhere: the file exists, and the heading is in it.
#[test]
fn every_link_in_the_docs_leads_somewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md"), root.join("SECURITY.md")];
    for doc in std::fs::read_dir(root.join("docs")).unwrap().flatten() {
        if doc.path().extension().is_some_and(|e| e == "md") {
            docs.push(doc.path());
        }
    }
    let anchors = |text: &str| -> Vec<String> {
        let mut in_code = false;
        text.lines()
            .filter(|l| {
                if l.starts_with("```") {
                    in_code = !in_code;
                }
                !in_code && l.starts_with('#')
            })
            .map(|l| {
                l.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                    .collect::<String>()
                    .replace(' ', "-")
            })
            .collect()
    };
    let mut broken = Vec::new();
    for doc in &docs {
        let text = common::read(doc);
        for link in text.split("](").skip(1) {
            let Some(target) = link.split(')').next() else {
                continue;
            };
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", doc.display()));
            } else if !anchor.is_empty()
                && path.extension().is_some_and(|e| e == "md")
                && !anchors(&common::read(&path)).iter().any(|a| a == anchor)
            {
                broken.push(format!("{}: {target} (no such heading)", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// `looper logs` with nothing running shows the newest run's log; `-f` on a run that gets
/// replaced says which run replaced it; `--follow-loop` goes on with the next run's log.
#[test]
fn logs_show_the_newest_run_and_follow_the_loop() {
    let fx = Fixture::new("cli-logs");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "record;print:output of a run;sleep-if-prompt:long:600;exit:0",
    )]);
    let env = [("LOOPER_URL", url(&looper))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = looper.run(json!({"codex_prompt": "short"}));
    let a_id = run_id_of(&a);
    looper.ended_row(&a_id);
    let o = cli(&fx, &["logs"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("output of a run"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("no run is active; the newest is run {a_id} (ok")),
        "{}",
        stderr(&o)
    );

    // A follower of a run in the background, its output in files.
    let follower = |args: &[&str], tag: &str| {
        let (out, err) = (
            fx.path(&format!("{tag}.out")),
            fx.path(&format!("{tag}.err")),
        );
        let child = Command::new(common::looper_binary())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &fx.dir)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        (child, out, err)
    };
    let b = looper.run(json!({"codex_prompt": "long"}));
    let b_id = run_id_of(&b);
    let (mut plain, out, err) = follower(&["logs", "-f"], "plain");
    looper.wait("the follower to print B's output", || {
        common::read(&out).contains("output of a run").then_some(())
    });
    let c = looper.run(json!({"codex_prompt": "long"}));
    let c_id = run_id_of(&c);
    let status = plain.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        common::read(&err).contains(&format!("run {b_id} was replaced by run {c_id}")),
        "{}",
        common::read(&err)
    );

    let (mut looping, out, err) = follower(&["logs", "--follow-loop"], "loop");
    looper.wait("the loop follower to print C's output", || {
        common::read(&out).contains("output of a run").then_some(())
    });
    let d = looper.run(json!({"codex_prompt": "short"}));
    let d_id = run_id_of(&d);
    let marker = format!("# looper: run {c_id} was replaced by run {d_id}; run {d_id} follows");
    let text = looper.wait("the loop follower to go on with D", || {
        let text = common::read(&out);
        (text.contains(&marker) && text.matches("output of a run").count() >= 2).then_some(text)
    });
    assert!(
        common::read(&err).contains(&format!("following run {d_id}")),
        "{text}\n{}",
        common::read(&err)
    );
    // It follows on until interrupted: ours to end.
    let _ = looping.kill();
    let _ = looping.wait();
}

/// The attack: whatever answers on Looper's port names a file that is no run log as a
/// run's `log_path`, and refuses the log itself. `looper logs -f` never reads it (only a
/// regular `codex-exec-*.log` of this user is read from disk).
#[test]
fn logs_follow_reads_no_file_an_impostor_names() {
    let fx = Fixture::new("cli-impostor");
    let secret = fx.path("secret.txt");
    std::fs::write(&secret, "the operator's secret\n").unwrap();
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let path = secret.to_string_lossy().into_owned();
    std::thread::spawn(move || {
        for rq in server.incoming_requests() {
            let url = rq.url().to_string();
            let body = if url.starts_with("/status") {
                json!({"ok": true, "active": {"run_id": "r1"}}).to_string()
            } else if url.starts_with("/runs?") {
                // Ended at once, so that the follower stops after one look.
                json!({"ok": true, "runs": [{"run_id": "r1", "pid": 1, "log_path": path,
                    "ended_at": "2026-12-07T00:00:00+00:00", "return_code": 0}]})
                .to_string()
            } else {
                let _ = rq.respond(tiny_http::Response::from_string("no").with_status_code(500));
                continue;
            };
            let _ = rq.respond(tiny_http::Response::from_string(body));
        }
    });
    let o = cli(
        &fx,
        &["logs", "-f"],
        &[("LOOPER_URL", &format!("http://127.0.0.1:{port}"))],
    );
    assert!(!stdout(&o).contains("secret"), "{}", stdout(&o));
}
