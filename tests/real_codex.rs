//! The real-codex suite: the real `looper` binary drives the real Codex CLI
//! (`@openai/codex`, found through `LOOPER_REAL_CODEX`), which talks to our stand-in model
//! server (`examples/fake_model.rs`) on 127.0.0.1 with a `CODEX_HOME` that sends nothing
//! anywhere else, in a git workspace, inside codex's default `workspace-write` sandbox (no
//! network). The tests are `#[ignore]`d so that `cargo test` needs only the Rust toolchain;
//! `scripts/test-real-codex` installs codex and runs them with `--ignored`.
//!
//! Safe beside someone's own codex: Looper's process-name matcher is scoped to a name that
//! no process has, so it stops only what carries its runs' `LOOPER_RUN_ID` and their
//! descendants — the runs these tests started.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{alive, git, pid_of, run_id_of, wait_for, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

/// The real codex to drive.
fn real_codex() -> PathBuf {
    let path = std::env::var_os("LOOPER_REAL_CODEX")
        .map(PathBuf::from)
        .expect("LOOPER_REAL_CODEX names the codex binary (scripts/test-real-codex sets it)");
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

/// The stand-in model server, stopped when dropped.
struct Model {
    child: Child,
    port: u16,
}

impl Model {
    fn start(env: &[(&str, &str)]) -> Model {
        let mut child = Command::new(common::example_binary("fake_model"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake_model");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read port");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fake_model said {line:?}"));
        Model { child, port }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One scenario's world: a git workspace, a `CODEX_HOME` pointing codex at the model, and
/// the environment for Looper.
struct World {
    fx: Fixture,
    _model: Model,
    _codex_home: TempHome,
    env: Vec<(&'static str, String)>,
}

/// `CODEX_HOME` lives outside `/tmp` (codex warns in every run there), under `target/`.
struct TempHome(PathBuf);

impl Drop for TempHome {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl World {
    fn new(tag: &str, model_env: &[(&str, &str)]) -> World {
        let fx = Fixture::new(tag);
        let ws = fx.path("ws");
        std::fs::remove_dir_all(ws.join(".git")).expect("drop the fixture's bare .git");
        git(&ws, &["init", "-q"]);
        std::fs::write(ws.join("TODO.md"), "- [ ] nothing\n").unwrap();
        git(&ws, &["add", "TODO.md"]);
        git(&ws, &["commit", "-q", "-m", "start"]);
        let model = Model::start(model_env);
        let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("real-codex")
            .join(fx.dir.file_name().unwrap());
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("config.toml"), codex_config(model.port)).unwrap();
        let env = vec![
            (
                "CODEX_EXEC_BINARY",
                real_codex().to_string_lossy().into_owned(),
            ),
            ("CODEX_HOME", home.to_string_lossy().into_owned()),
            ("CODEX_EXEC_STARTUP_CHECK_SECONDS", "0.5".into()),
        ];
        World {
            fx,
            _model: model,
            _codex_home: TempHome(home),
            env,
        }
    }

    fn start(&self, extra: &[(&'static str, String)]) -> Looper {
        let mut env = self.env.clone();
        env.extend(extra.iter().cloned());
        self.fx.start_owned(&env)
    }

    fn ws(&self) -> PathBuf {
        self.fx.path("ws")
    }

    /// Lets the agent's tool commands write the workspace's `.git` (commit), as the README
    /// tells a user to.
    fn allow_git_writes(&self) {
        let config = self._codex_home.0.join("config.toml");
        let mut text = common::read(&config);
        let git_dir = self.ws().join(".git");
        text.push_str(&format!(
            "[sandbox_workspace_write]\nwritable_roots = [{:?}]\n",
            git_dir.to_string_lossy()
        ));
        std::fs::write(config, text).unwrap();
    }
}

/// A config that needs no login and sends nothing anywhere but the model on `port`.
fn codex_config(port: u16) -> String {
    format!(
        r#"model = "gpt-5.5"
model_provider = "fake"
check_for_update_on_startup = false
[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{port}/v1"
wire_api = "responses"
requires_openai_auth = false
[features]
plugins = false
[analytics]
enabled = false
[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"
"#
    )
}

/// `(pid, parent, comm)` of every process.
fn processes() -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        out.push((pid, ppid, comm));
    }
    out
}

/// `root` and all its live descendants, with their program names.
fn tree(root: u64) -> Vec<(u64, String)> {
    let procs = processes();
    let mut children: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
    for (pid, ppid, comm) in &procs {
        children
            .entry(*ppid)
            .or_default()
            .push((*pid, comm.clone()));
    }
    let mut out: Vec<(u64, String)> = procs
        .iter()
        .filter(|p| p.0 == root)
        .map(|p| (p.0, p.2.clone()))
        .collect();
    let mut i = 0;
    while i < out.len() {
        let pid = out[i].0;
        out.extend(children.get(&pid).cloned().unwrap_or_default());
        i += 1;
    }
    out
}

/// Waits until the run `pid`'s tree runs `program` (its tool command), and returns the tree.
fn tree_running(pid: u64, program: &str) -> Vec<(u64, String)> {
    wait_for(&format!("{program} under run {pid}"), || {
        let t = tree(pid);
        t.iter().any(|(_, c)| c == program).then_some(t)
    })
}

fn describe(tree: &[(u64, String)]) -> String {
    tree.iter()
        .map(|(pid, comm)| format!("{comm}({pid})"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The newest run in the history other than `not`.
fn newest_run_besides(looper: &Looper, not: &str) -> Value {
    looper.wait("a newer run", || {
        let runs = looper.get("/runs").body;
        let first = runs["runs"].as_array()?.first()?.clone();
        (first["run_id"] != not).then_some(first)
    })
}

/// A run of the real codex whose tool command sleeps is replaced by a fresh run: every
/// process of the old tree (node shim, native codex, sandbox, bwrap, inner codex, shell,
/// sleep) is reported stopped and is gone, and the new run finishes with 0.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn replaces_a_run_whose_tool_command_sleeps() {
    let w = World::new("rc-replace", &[]);
    let looper = w.start(&[]);
    let first = looper.run(json!({"codex_prompt": "RUN: sleep 300"}));
    assert_eq!(first.status, 200, "{}\n{}", first.body, looper.tail());
    let old = tree_running(pid_of(&first), "sleep");
    eprintln!("real codex process tree: {}", describe(&old));
    let second = looper.run(json!({"codex_prompt": "RUN: echo replaced-ok"}));
    assert_eq!(second.status, 200, "{}\n{}", second.body, looper.tail());
    let killed: HashSet<u64> = second.body["killed_codex_exec_pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    for (pid, comm) in &old {
        assert!(
            killed.contains(pid),
            "{comm}({pid}) not reported stopped: {killed:?}"
        );
        assert!(!alive(*pid), "{comm}({pid}) still alive");
    }
    let row = looper.ended_row(&run_id_of(&second));
    assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
    let first_row = looper.ended_row(&run_id_of(&first));
    assert_eq!(first_row["stop_reason"], "replaced", "{first_row}");
}

/// The agent's last step, `looper trigger` from a tool command inside the default sandbox
/// (no socket can be opened), hands off through the inbox: the run that triggered is
/// replaced and the asked run starts and finishes.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn the_loop_goes_on_through_looper_trigger_in_the_sandbox() {
    let w = World::new("rc-trigger", &[]);
    let zulip = FakeZulip::start();
    let looper = w.start(&zulip.env());
    let prompt = r#"RUN: "$LOOPER_BIN" trigger --message 'next run please' --prompt 'RUN: echo second-run-ok'"#;
    let first = looper.run(json!({"codex_prompt": prompt}));
    assert_eq!(first.status, 200, "{}\n{}", first.body, looper.tail());
    let first_id = run_id_of(&first);
    let second = newest_run_besides(&looper, &first_id);
    assert_eq!(second["trigger"], "inbox", "{second}");
    let row = looper.ended_row(second["run_id"].as_str().unwrap());
    assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
    let log = common::read(row["log_path"].as_str().unwrap());
    assert!(log.contains("second-run-ok"), "{log}");
    let first_row = looper.ended_row(&first_id);
    // Replaced by its own hand-off: a success, not someone else's replacement.
    assert_eq!(first_row["stop_reason"], "handed_off", "{first_row}");
    assert_eq!(first_row["outcome"], "handed_off", "{first_row}");
    let texts: Vec<String> = zulip
        .messages()
        .iter()
        .map(|m| m.form()["content"].clone())
        .collect();
    // Looper says which run hands off, the agent's words follow quoted, then that run's
    // summary.
    let marked = format!(
        "Looper: run {first_id} hands off:\n> next run please\n\n↳ run {first_id} handed_off after "
    );
    assert!(texts.iter().any(|t| t.starts_with(&marked)), "{texts:?}");
    let done = std::fs::read_dir(w.ws().join(".looper/inbox/done"))
        .unwrap()
        .count();
    assert_eq!(done, 2, "the request and its answer in done/");
}

/// The same loop through the wrapper script copied into the workspace.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn the_loop_goes_on_through_the_wrapper_script() {
    let w = World::new("rc-wrapper", &[]);
    let scripts = w.ws().join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    let wrapper = scripts.join("run-codex-task.sh");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-codex-task.sh"),
        &wrapper,
    )
    .unwrap();
    std::fs::write(
        scripts.join("looper-prompt.md"),
        "RUN: echo wrapper-second-ok\n",
    )
    .unwrap();
    let looper = w.start(&[]);
    let first =
        looper.run(json!({"codex_prompt": "RUN: scripts/run-codex-task.sh 'wrapper hand-off'"}));
    assert_eq!(first.status, 200, "{}\n{}", first.body, looper.tail());
    let second = newest_run_besides(&looper, &run_id_of(&first));
    assert_eq!(second["trigger"], "inbox", "{second}");
    let row = looper.ended_row(second["run_id"].as_str().unwrap());
    assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
    assert!(common::read(row["log_path"].as_str().unwrap()).contains("wrapper-second-ok"));
}

/// A hand-off sent while the `/run` that started its run is still inside its startup check
/// waits for that check and proceeds (no `409 busy`).
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_handoff_inside_the_startup_check_proceeds() {
    let w = World::new("rc-race", &[]);
    let looper = std::sync::Arc::new(w.start(&[]));
    let prompt =
        r#"RUN: "$LOOPER_BIN" trigger --message 'quick hand-off' --prompt 'RUN: echo raced-ok'"#;
    let l1 = looper.clone();
    let first = std::thread::spawn(move || {
        l1.run(json!({"codex_prompt": prompt, "codex_exec_startup_check_seconds": 6}))
    });
    // The agent's request is taken from the inbox (into taken/, until it is answered) while
    // the first /run still waits out its check.
    let done = w.ws().join(".looper/inbox/done");
    let taken = w.ws().join(".looper/inbox/taken");
    looper.wait("the hand-off taken from the inbox", || {
        [&taken, &done]
            .iter()
            .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
            .then_some(())
    });
    assert!(
        !first.is_finished(),
        "the hand-off came after the startup check"
    );
    let first = first.join().unwrap();
    assert_eq!(first.status, 200, "{}\n{}", first.body, looper.tail());
    assert!(first.body["codex_exec_result"]["startup_return_code"].is_null());
    let second = newest_run_besides(&looper, &run_id_of(&first));
    let row = looper.ended_row(second["run_id"].as_str().unwrap());
    assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
    // The answer is written once the hand-off's own /run is over (the new run may end
    // before that).
    let answers: Vec<Value> = looper.wait("the hand-off's answer", || {
        let found: Vec<Value> = std::fs::read_dir(&done)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".answer.json"))
            .filter_map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok())
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["status"], 200, "{}", answers[0]);
}

/// A workspace outside git is refused before any effect; without the check, the real codex
/// fails at once there, which is why the check exists.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_non_git_workspace_is_refused_before_any_effect() {
    let w = World::new("rc-nogit", &[]);
    let plain = w.fx.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let zulip = FakeZulip::start();
    let looper = w.start(&zulip.env());
    let live = looper.run(json!({"codex_prompt": "RUN: sleep 300"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let tree = tree_running(pid_of(&live), "sleep");
    let announced = zulip.messages().len();
    let refused = looper.run(json!({"codex_prompt": "RUN: echo x", "workspace": plain}));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body["error"].as_str().unwrap().contains("git"));
    assert_eq!(zulip.messages().len(), announced);
    assert!(
        tree.iter().all(|(pid, _)| alive(*pid)),
        "the live run was touched"
    );
    drop(looper);

    let looper = w.start(&zulip.env_with(&[("LOOPER_REQUIRE_GIT", "0")]));
    let a = looper.run(json!({"codex_prompt": "RUN: echo x", "workspace": plain,
                              "codex_exec_startup_check_seconds": 5}));
    assert_eq!(a.status, 500, "{}", a.body);
    let error = a.body["error"].as_str().unwrap();
    assert!(
        error.contains("exited early") && error.contains("rc=1"),
        "{error}"
    );
}

/// Looper's shutdown stops the whole tree of the real codex and exits 0.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn shutdown_stops_the_whole_tree() {
    let w = World::new("rc-shutdown", &[]);
    let mut looper = w.start(&[]);
    let a = looper.run(json!({"codex_prompt": "RUN: sleep 300"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let tree = tree_running(pid_of(&a), "sleep");
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    for (pid, comm) in &tree {
        assert!(!alive(*pid), "{comm}({pid}) outlived Looper's shutdown");
    }
}

/// A prompt that starts with `-` (a TODO line) reaches the real codex as its prompt (Looper
/// puts `--` before it); without that, codex reads it as an option and exits 2.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_prompt_starting_with_a_dash_reaches_codex() {
    let w = World::new("rc-dash", &[]);
    let looper = w.start(&[]);
    let a = looper.run(json!({"codex_prompt": "- [ ] take the first item\nRUN: echo dash-ok"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let row = looper.ended_row(&run_id_of(&a));
    assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
    assert!(common::read(row["log_path"].as_str().unwrap()).contains("dash-ok"));
}

/// When the model answers with the usage-limit error, the real codex prints it and exits 1;
/// Looper reads the reset time from that output and autopoll pauses until then (no crash,
/// no back-off), with `stop_reason: "usage_limit"` in the history.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn the_usage_limit_pauses_the_loop() {
    let resets_at = chrono::Local::now() + chrono::Duration::hours(2);
    let w = World::new(
        "rc-limit",
        &[("FAKE_MODEL_USAGE_LIMIT", &resets_at.timestamp().to_string())],
    );
    let looper = w.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1".into()),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2".into()),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0".into()),
    ]);
    let status = looper.wait("the pause", || {
        let s = looper.get("/status").body;
        s["autopoll"]["paused_until"].is_string().then_some(s)
    });
    assert_eq!(
        status["autopoll"]["pause_reason"], "usage_limit",
        "{status}"
    );
    assert_eq!(status["autopoll"]["consecutive_crashes"], 0, "{status}");
    let until =
        chrono::DateTime::parse_from_rfc3339(status["autopoll"]["paused_until"].as_str().unwrap())
            .unwrap();
    // Codex prints whole minutes; the pause adds a minute.
    let off = (until.timestamp() - resets_at.timestamp()).abs();
    assert!(off <= 120, "paused until {until}, reset at {resets_at}");
    let runs = looper.get("/runs").body;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs["runs"][0]["stop_reason"], "usage_limit", "{runs}");
    let log = common::read(runs["runs"][0]["log_path"].as_str().unwrap());
    assert!(log.contains("hit your usage limit"), "{log}");
}

/// What the stand-in model reports each request (examples/fake_model.rs): input, cached
/// input, output and reasoning tokens; the rate-limit windows (percent, minutes, seconds to
/// the reset).
const MODEL_USAGE: [u64; 4] = [12_345, 2_000, 678, 100];
const MODEL_PRIMARY: (f64, u64, i64) = (12.5, 300, 3600);
const MODEL_SECONDARY: (f64, u64, i64) = (40.0, 10_080, 3 * 86_400);

/// A run of the real codex whose tool commands tick a TODO item and commit (with `.git`
/// writable, as the README says): its row holds the tokens the model reported, as codex
/// counts them (input − cached + output, summed over the run's requests) with the split and
/// the rate-limit windows from codex's session file, the final answer, HEAD before and
/// after with the one commit, and the TODO counts; nothing follows it, so Zulip gets a
/// message of its own with the summary.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_runs_row_holds_what_the_real_codex_reported() {
    let requests = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rc-report-model-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&requests);
    let w = World::new(
        "rc-report",
        &[("FAKE_MODEL_LOG", &requests.to_string_lossy())],
    );
    w.allow_git_writes();
    let head_before = git(&w.ws(), &["rev-parse", "HEAD"]);
    let zulip = FakeZulip::start();
    let looper = w.start(&zulip.env_with(&[("LOOPER_TODO_FILE", "TODO.md")]));
    let started = chrono::Utc::now().timestamp();
    let prompt = "RUN: sleep 0.3\n\
                  RUN: printf '%s\\n' '- [x] nothing' '- [ ] next' > TODO.md\n\
                  RUN: git -c user.name=loop -c user.email=loop@example.invalid commit -qam tick";
    let a = looper.run(json!({"codex_prompt": prompt}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let id = run_id_of(&a);
    let message = looper.wait("the run's own message on Zulip", || {
        zulip
            .contents()
            .into_iter()
            .find(|m| m.contains(&format!("run {id} ")))
    });
    let row = looper.ended_row(&id);
    let log = common::read(row["log_path"].as_str().unwrap());
    let seen = format!(
        "{row}\n--- run log:\n{log}\n--- server log:\n{}",
        looper.tail()
    );
    assert_eq!(row["outcome"], "ok", "{seen}");
    let n = common::read(&requests)
        .lines()
        .filter(|l| l.starts_with("/v1/responses "))
        .count() as u64;
    assert!(
        n >= 4,
        "{n} model requests for three commands and an answer"
    );
    let [input, cached, output, reasoning] = MODEL_USAGE;
    let t = &row["tokens"];
    assert_eq!(
        t["used"],
        n * (input - cached + output),
        "{n} requests: {seen}"
    );
    assert_eq!(
        [
            &t["input"],
            &t["cached_input"],
            &t["output"],
            &t["reasoning"]
        ],
        [
            &json!(n * input),
            &json!(n * cached),
            &json!(n * output),
            &json!(n * reasoning)
        ],
        "{n} requests: {seen}"
    );
    for (name, (percent, minutes, resets_in)) in
        [("primary", MODEL_PRIMARY), ("secondary", MODEL_SECONDARY)]
    {
        let w = &row["rate_limits"][name];
        assert_eq!(w["used_percent"], percent, "{name}: {seen}");
        assert_eq!(w["window_minutes"], minutes, "{name}: {seen}");
        let reset = w["resets_at"].as_i64().unwrap_or(0);
        let now = chrono::Utc::now().timestamp();
        assert!(
            (started + resets_in - 5..=now + resets_in + 5).contains(&reset),
            "{name} resets at {reset}: {seen}"
        );
    }
    assert_eq!(row["last_message"], "done", "{seen}");
    let g = &row["git"];
    assert_eq!(g["head_before"], head_before.as_str(), "{seen}");
    assert_eq!(
        g["head_after"],
        git(&w.ws(), &["rev-parse", "HEAD"]).as_str(),
        "{seen}"
    );
    assert_ne!(g["head_after"], g["head_before"], "{seen}");
    assert_eq!(g["commits"], 1, "{seen}");
    assert_eq!(g["dirty"], false, "{seen}");
    assert_eq!(row["todo_before"], json!({"open": 1, "done": 0}), "{seen}");
    assert_eq!(row["todo_after"], json!({"open": 1, "done": 1}), "{seen}");
    let tokens = n * (input - cached + output);
    let digits = tokens.to_string();
    let grouped = format!(
        "{},{}",
        &digits[..digits.len() - 3],
        &digits[digits.len() - 3..]
    );
    assert!(
        message.starts_with(&format!("Looper: run {id} ok after "))
            && message.contains(&format!("{grouped} tokens, 1 commit, TODO 1 → 1 open")),
        "{message}"
    );
    assert!(message.contains("done"), "{message}");
}

/// The done rule with the real codex: a run that hands off with `looper trigger --done`
/// from inside the sandbox (through the inbox) finishes the loop; nothing more starts, and
/// the run ends by itself.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_run_that_says_done_finishes_the_loop() {
    let w = World::new("rc-done", &[]);
    let zulip = FakeZulip::start();
    let looper = w.start(&zulip.env());
    let prompt = r#"RUN: "$LOOPER_BIN" trigger --done --message 'all items ticked'"#;
    let a = looper.run(json!({"codex_prompt": prompt}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let id = run_id_of(&a);
    let row = looper.ended_row(&id);
    let seen = format!("{row}\n{}", looper.tail());
    assert_eq!(row["outcome"], "ok", "{seen}");
    let l = looper.get("/status").body["loop"].clone();
    assert_eq!(
        (&l["state"], &l["reason"], &l["run_id"]),
        (&json!("finished"), &json!("loop_done"), &json!(id)),
        "{l}\n{seen}"
    );
    let finished: Vec<String> = zulip
        .contents()
        .into_iter()
        .filter(|m| m.contains("is finished"))
        .collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert!(
        finished[0].starts_with(&format!(
            "Looper: run {id} hands off:\n> all items ticked\n"
        )),
        "{finished:?}"
    );
    let rows = looper.get("/runs").body["runs"].as_array().unwrap().len();
    assert_eq!(rows, 1, "done started a run: {seen}");
}

/// The stuck rule with the real codex: three runs that reach the model and change nothing
/// pause the loop, the message naming them.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn three_real_runs_that_change_nothing_pause_the_loop() {
    let w = World::new("rc-stuck", &[]);
    let zulip = FakeZulip::start();
    let looper = w.start(&zulip.env());
    let mut ids = Vec::new();
    for n in 0..3 {
        let state = looper.get("/status").body["loop"]["state"].clone();
        assert_eq!(state, "idle", "paused after {n} runs\n{}", looper.tail());
        let a = looper.run(json!({"codex_prompt": "RUN: git status --short"}));
        assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
        let id = run_id_of(&a);
        looper.wait(&format!("the summary of run {id}"), || {
            zulip
                .contents()
                .into_iter()
                .find(|m| m.contains(&format!("run {id} ")) && m.contains(" after "))
        });
        ids.push(id);
    }
    let l = looper.get("/status").body["loop"].clone();
    assert_eq!(
        (&l["state"], &l["reason"]),
        (&json!("paused"), &json!("no_progress")),
        "{l}\n{}",
        looper.tail()
    );
    let names = ids.join(", ");
    assert!(l["detail"].as_str().unwrap().ends_with(&names), "{l}");
    let said: Vec<String> = zulip
        .contents()
        .into_iter()
        .filter(|m| m.contains("changed nothing"))
        .collect();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains(&names), "{said:?}");
}

/// Pacing with the real codex: the stand-in model walks the account's weekly window (two
/// minutes long here) from 10 % to 93 %; codex writes the figures into its session files,
/// Looper paces by them: the run that reports 93 % leaves the loop ahead of its line, so
/// autopoll waits until the time Looper said, then goes on by itself.
#[test]
#[ignore = "needs the real Codex CLI: scripts/test-real-codex"]
fn a_loop_ahead_of_its_pace_waits_then_resumes() {
    let limits = std::env::temp_dir().join(format!("looper-rc-limits-{}", std::process::id()));
    // 104 s into the window: the line is at 5 + 95 × 104/120 ≈ 87 %.
    std::fs::write(&limits, "-,10:2:16").unwrap();
    let w = World::new(
        "rc-pace",
        &[("FAKE_MODEL_LIMITS", &limits.to_string_lossy())],
    );
    let looper = w.start(&[
        ("LOOPER_QUOTA_PACE", "even".into()),
        // Runs that change nothing would pause the loop first (the stuck rule).
        ("LOOPER_NO_PROGRESS_RUNS", "0".into()),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1".into()),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2".into()),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0".into()),
        ("LOOPER_LOG_LEVEL", "DEBUG".into()),
    ]);
    let runs = |looper: &Looper| -> Vec<Value> {
        looper.get("/runs").body["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let first = looper.wait("autopoll's first run to end", || {
        runs(&looper).into_iter().find(|r| !r["ended_at"].is_null())
    });
    let weekly = &first["rate_limits"]["secondary"];
    assert_eq!(
        weekly["used_percent"],
        json!(10.0),
        "{first}\n{}",
        looper.tail()
    );
    // The account's use jumps (the owner's work, another loop): the next run reports 93 %,
    // which its line reaches only some 7 s after that answer.
    std::fs::write(&limits, "-,93:2:16").unwrap();
    let hold = common::wait_for_with(
        "the loop to wait for its pace",
        || {
            let quota = &looper.get("/status").body["quota"];
            format!("{quota}\n{:?}\n{}", runs(&looper), looper.tail())
        },
        || looper.hold_for("quota_pace"),
    );
    let until = chrono::DateTime::parse_from_rfc3339(hold["until"].as_str().unwrap())
        .unwrap()
        .timestamp();
    let held_at = runs(&looper).len();
    let next = looper.wait("autopoll to go on once the line caught up", || {
        let all = runs(&looper);
        (all.len() > held_at).then(|| all[0].clone())
    });
    looper.assert_resumed(&next, until, "quota_pace");
    let _ = std::fs::remove_file(&limits);
}
