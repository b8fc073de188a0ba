//! Black-box tests of what `/run` does to processes and log files: the exact command, the
//! stop of earlier runs with everything they started, early exits, big outputs, shutdown.

mod common;

use common::{alive, pid_of, read, run_id_of, Fixture, Launch};
use serde_json::json;
use std::os::unix::process::ExitStatusExt;

fn log_path_of(answer: &common::Answer) -> String {
    answer.body["codex_exec_result"]["log_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no log_path in {}", answer.body))
        .to_string()
}

/// The fake codex gets exactly the argv the README documents, with an awkward prompt as one element, in
/// its own session, stdin from /dev/null, cwd = workspace, and LOOPER_RUN_ID/LOOPER_URL.
#[test]
fn spawns_the_exact_command_with_the_prompt_intact() {
    let fx = Fixture::new("argv");
    let looper = fx.start(&[("FAKE_CODEX", "record;print:first line from codex;sleep:600")]);
    let prompt = "it's \"quoted\" $HOME `uname` \\ and\nsecond line\n";
    let a = looper.run(json!({"codex_prompt": prompt}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let pid = pid_of(&a);
    let rec = looper.record_of(pid);
    let ws = fx.path("ws");
    let expected = json!([
        fx.codex_path,
        "--ask-for-approval",
        "never",
        "exec",
        "--sandbox",
        "workspace-write",
        "-C",
        ws,
        prompt
    ]);
    assert_eq!(rec["argv"], expected);
    assert_eq!(rec["cwd"], json!(ws));
    assert_eq!(rec["stdin"], json!("/dev/null"));
    assert_eq!(rec["sid"].as_u64(), Some(pid), "not in its own session");
    assert_eq!(
        rec["pgid"].as_u64(),
        Some(pid),
        "not in its own process group"
    );
    let run_id = a.body["run_id"].as_str().expect("run_id").to_string();
    assert_eq!(rec["looper_run_id"], json!(run_id));
    assert_eq!(
        rec["looper_url"],
        json!(format!("http://127.0.0.1:{}/run", looper.port))
    );

    // Every field of the original's answer, legacy aliases included.
    let b = &a.body;
    assert_eq!(b["ok"], json!(true));
    let request_id = b["request_id"].as_str().unwrap();
    assert!(request_id.len() == 8 && request_id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(b["codex_exec_started"], json!(true));
    assert_eq!(b["codex_prompt_sent"], json!(true));
    assert_eq!(b["codex_exec_binary"], json!(fx.codex_path));
    assert_eq!(b["codex_exec_binary_source"], json!("env"));
    assert_eq!(b["codex_exec_approval_policy"], json!("never"));
    assert_eq!(b["codex_exec_sandbox"], json!("workspace-write"));
    assert_eq!(b["workspace"], json!(ws));
    assert_eq!(b["codex_send_result"], b["codex_exec_result"]);
    assert_eq!(b["killed_vscode_pids"], b["killed_codex_exec_pids"]);
    assert_eq!(b["remaining_vscode_pids"], b["remaining_codex_exec_pids"]);
    assert_eq!(b["zulip_output"], json!("skipped: Zulip is not configured"));
    assert!(b["codex_exec_result"]["startup_return_code"].is_null());

    // The run log: name, exact header, output.
    let log_path = log_path_of(&a);
    let name = std::path::Path::new(&log_path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("codex-exec-") && name.ends_with(&format!("-{request_id}.log")),
        "{name}"
    );
    let command = b["codex_exec_result"]["command"].as_str().unwrap();
    assert!(command.contains("'it'\"'\"'s \"quoted\" $HOME `uname` \\ and\nsecond line\n'"));
    let header = format!(
        "# looper_request_id={request_id}\n# workspace={}\n# command={command}\n\n",
        ws.display()
    );
    let text = looper.wait("output in the run log", || {
        let t = read(&log_path);
        t.contains("first line from codex").then_some(t)
    });
    assert!(text.starts_with(&header), "{text}");
    // Mirrored into the server log, as a line of its own behind its run's mark.
    let mirrored = format!("{run_id}| first line from codex");
    looper.wait("the mirrored line", || {
        looper
            .server_log()
            .lines()
            .any(|l| l == mirrored)
            .then_some(())
    });
    // Logs hold whatever codex printed: readable by their owner only.
    use std::os::unix::fs::PermissionsExt;
    for path in [
        log_path.clone(),
        fx.path("logs/looper-server.log").display().to_string(),
        fx.path("logs/runs.jsonl").display().to_string(),
    ] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
    // The request's end is logged after everything else it checks.
    let log = looper.log_with(&format!("http.end request_id={request_id} "));
    for event in [
        "server.start",
        "http.start",
        "run.start",
        "action=announce",
        "codex.exec.spawn",
        "run.success",
        "http.end",
    ] {
        assert!(log.contains(event), "no {event} in server log:\n{log}");
    }
}

/// A second run stops the first, its helper in another process group (found through parent
/// links), and a helper that escaped to init but carries the run's LOOPER_RUN_ID.
#[test]
fn a_second_run_stops_the_first_and_everything_it_started() {
    let fx = Fixture::new("stop");
    let looper = fx.start(&[("FAKE_CODEX", "grandchild;orphan;record;sleep:600")]);
    let first = looper.run(json!({"codex_prompt": "one"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let pid1 = pid_of(&first);
    let rec = looper.record_of(pid1);
    let helpers: Vec<u64> = rec["helpers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(helpers.len(), 2);
    assert!(alive(pid1) && helpers.iter().all(|p| alive(*p)));

    let second = looper.run(json!({"codex_prompt": "two"}));
    assert_eq!(second.status, 200, "{}\n{}", second.body, looper.tail());
    let killed: Vec<u64> = second.body["killed_codex_exec_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for p in std::iter::once(pid1).chain(helpers.iter().copied()) {
        assert!(killed.contains(&p), "{p} not in killed {killed:?}");
        assert!(!alive(p), "{p} still alive");
    }
    assert_eq!(second.body["remaining_codex_exec_pids"], json!([]));
    let pid2 = pid_of(&second);
    assert!(alive(pid2), "the new run must live");
    assert!(!killed.contains(&pid2));
    let text = looper.finished_log(&log_path_of(&first));
    assert!(text.ends_with("\n# codex_exec_return_code=-15\n"), "{text}");
}

/// A run that ignores SIGTERM is SIGKILLed after the grace time and reported as `-9`.
#[test]
fn a_run_ignoring_sigterm_is_killed() {
    let fx = Fixture::new("kill");
    let looper = fx.start(&[
        ("FAKE_CODEX", "ignore-term;record;sleep:600"),
        ("LOOPER_STOP_GRACE_SECONDS", "0.3"),
    ]);
    let first = looper.run(json!({"codex_prompt": "stubborn"}));
    assert_eq!(first.status, 200, "{}", first.body);
    let pid1 = pid_of(&first);
    looper.record_of(pid1);
    let second = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body["codex_exec_started"], json!(false));
    assert_eq!(second.body["codex_exec_result"], json!(null));
    assert_eq!(second.body["killed_codex_exec_pids"], json!([pid1]));
    assert!(!alive(pid1));
    let text = looper.finished_log(&log_path_of(&first));
    assert!(text.ends_with("\n# codex_exec_return_code=-9\n"), "{text}");
    looper.log_with("process.kill.sigkill");
}

/// A codex that fails at once is reported as `exited early` with its return code and output.
#[test]
fn an_early_exit_is_an_error_with_the_log_tail() {
    let fx = Fixture::new("early");
    let looper = fx.start(&[("FAKE_CODEX", "print:token expired, please log in;exit:3")]);
    let a = looper.run(json!({"codex_prompt": "go", "codex_exec_startup_check_seconds": 10}));
    assert_eq!(a.status, 500, "{}", a.body);
    let err = a.body["error"].as_str().unwrap();
    assert!(
        err.starts_with("codex exec exited early (rc=3, log_path="),
        "{err}"
    );
    assert!(err.contains("tail=token expired, please log in)"), "{err}");
    let log_dir = fx.path("logs");
    let log = std::fs::read_dir(&log_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("codex-exec-")
        })
        .expect("a run log");
    let text = read(&log);
    assert!(
        text.ends_with("token expired, please log in\n\n# codex_exec_return_code=3\n"),
        "{text}"
    );
    assert_eq!(a.body["ok"], json!(false));
}

/// 50 MB of output arrive whole in the run log, followed by the trailer.
#[test]
fn a_flood_of_output_is_copied_whole() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let fx = Fixture::new("flood");
    let looper = fx.start(&[
        ("FAKE_CODEX", &format!("flood:{SIZE};exit:0")),
        ("LOOPER_MIRROR_CODEX_OUTPUT", "0"),
    ]);
    let a = looper.run(json!({"codex_prompt": "flood"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let path = log_path_of(&a);
    let text = looper.finished_log(&path);
    let body_start = text.find("\n\n").unwrap() + 2;
    let trailer = "\n# codex_exec_return_code=0\n";
    assert!(text.ends_with(trailer));
    let body = &text[body_start..text.len() - trailer.len()];
    assert_eq!(body.len() as u64, SIZE);
    assert!(body
        .lines()
        .all(|l| l.len() == 99 && l.bytes().all(|b| b == b'x')));
    // With the mirror off, none of it went to the server log (before the run's exit).
    let log = looper.log_with(&format!("codex.exec.exit request_id={} ", run_id_of(&a)));
    assert!(!log.contains(&"x".repeat(99)));
}

/// SIGTERM stops the run Looper started, writes its trailer and exits 0.
#[test]
fn shutdown_stops_the_runs_looper_started() {
    let fx = Fixture::new("shutdown");
    let mut looper = fx.start(&[("FAKE_CODEX", "grandchild;record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid = pid_of(&a);
    let rec = looper.record_of(pid);
    let helper = rec["helpers"][0].as_u64().unwrap();
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0), "{}", looper.tail());
    assert!(!alive(pid) && !alive(helper));
    let text = read(log_path_of(&a));
    assert!(text.ends_with("\n# codex_exec_return_code=-15\n"), "{text}");
    let log = looper.server_log();
    assert!(log.contains("server.signal signal=15 action=shutdown"));
    assert!(log.contains("server.stop.done"));
}

/// An idle server exits 0 on SIGINT too.
#[test]
fn sigint_on_an_idle_server_exits_cleanly() {
    let fx = Fixture::new("sigint");
    let mut looper = fx.start(&[]);
    looper.signal(libc::SIGINT);
    assert_eq!(looper.wait_exit(), Some(0), "{}", looper.tail());
}

/// Looper finds `codex` in `./codex/codex` before PATH and says so.
#[test]
fn a_local_codex_checkout_wins_over_path() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("local");
    // A copy of looper with a codex checkout beside it. The checkout's `codex` is a script
    // run by the fake codex, so no process of this test is named `codex`: another Looper on
    // this machine never takes it for a codex run.
    let home = fx.path("looper-home");
    std::fs::create_dir_all(home.join("codex")).unwrap();
    let binary = home.join("looper");
    std::fs::copy(common::looper_binary(), &binary).unwrap();
    let local = home.join("codex/codex");
    std::fs::write(&local, format!("#!{}\n", fx.codex_path.display())).unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
    let looper = fx.start_binary(
        &binary,
        &[
            ("CODEX_EXEC_BINARY", ""),
            ("LOOPER_API_TOKEN", common::OPERATOR_TOKEN),
            ("FAKE_CODEX", "record;sleep:600"),
        ],
    );
    let a = looper.run_as(common::OPERATOR_TOKEN, json!({"codex_prompt": "local"}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["codex_exec_binary_source"], json!("local"));
    assert_eq!(a.body["codex_exec_binary"], json!(local));
    let rec = looper.record_of(pid_of(&a));
    assert_eq!(rec["argv"][1], json!(local), "{rec}");
    // A request override wins over everything.
    let b = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"codex_prompt": "req", "codex_exec_binary": fx.codex_path}),
    );
    assert_eq!(b.status, 200, "{}", b.body);
    assert_eq!(b.body["codex_exec_binary_source"], json!("request"));
    // The first run is Looper's own, so it was stopped all the same.
    assert_eq!(b.body["killed_codex_exec_pids"], json!([pid_of(&a)]));
}

/// A codex checkout the agent writes into the workspace (`<ws>/codex/codex`) never runs,
/// not even when Looper was started in the workspace: the local candidates are looked for
/// beside Looper's own executable only, and `PATH` entries inside the workspace or relative
/// ones are passed over.
#[test]
fn a_codex_planted_in_the_workspace_never_runs() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("planted");
    let marker = fx.path("planted-ran");
    let planted = fx.path("ws/codex/codex");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(
        &planted,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(fx.path("ws/bin")).unwrap();
    std::fs::copy(&planted, fx.path("ws/bin/codex")).unwrap();
    let path = format!("{}:codex:bin", fx.path("ws/bin").display());
    let looper = fx.start_in(
        &fx.path("ws"),
        &[("CODEX_EXEC_BINARY", ""), ("PATH", &path)],
    );
    let a = looper.run(json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 500, "{}", a.body);
    assert_eq!(
        a.body["error"],
        json!("required tool is missing from PATH: codex")
    );
    assert!(!marker.exists(), "the planted codex ran");
}

/// The default prompt comes from LOOPER_PROMPT_FILE, read again at every run.
#[test]
fn the_prompt_file_is_read_at_every_run() {
    let fx = Fixture::new("promptfile");
    let file = fx.path("prompt.txt");
    std::fs::write(&file, "first version").unwrap();
    let looper = fx.start(&[
        ("LOOPER_PROMPT_FILE", file.to_str().unwrap()),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let a = looper.run(json!({}));
    assert_eq!(a.status, 200, "{}", a.body);
    std::fs::write(&file, "second version").unwrap();
    let b = looper.run(json!({}));
    assert_eq!(b.status, 200, "{}", b.body);
    let last = |v: &serde_json::Value| v["argv"].as_array().unwrap().last().cloned();
    assert_eq!(
        last(&looper.record_of(pid_of(&a))),
        Some(json!("first version"))
    );
    assert_eq!(
        last(&looper.record_of(pid_of(&b))),
        Some(json!("second version"))
    );
    // The legacy `prompt` alias is used when `codex_prompt` is absent.
    let c = looper.run(json!({"prompt": "legacy alias"}));
    assert_eq!(
        last(&looper.record_of(pid_of(&c))),
        Some(json!("legacy alias"))
    );
}

/// A run may only hand off from the active run: an old run calling late changes nothing.
#[test]
fn a_stale_hand_off_is_refused() {
    let fx = Fixture::new("stale");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let a = looper.run(json!({"codex_prompt": "a"}));
    let a_id = a.body["run_id"].as_str().unwrap().to_string();
    let b = looper.run(json!({"codex_prompt": "b", "from_run_id": a_id}));
    assert_eq!(b.status, 200, "{}", b.body);
    let b_pid = pid_of(&b);
    let late = looper.run(json!({"codex_prompt": "c", "from_run_id": a_id}));
    assert_eq!(late.status, 409, "{}", late.body);
    assert_eq!(
        late.body["error"],
        json!(format!("stale: run {a_id} is no longer active"))
    );
    assert!(alive(b_pid), "the active run must survive a stale hand-off");
}

/// Runs Looper did not start are stopped too: a plain `codex exec` from a terminal and one
/// under a `node` shim (the script's name counts), both started here by the test.
#[test]
fn runs_started_elsewhere_are_stopped_too() {
    let fx = Fixture::new("foreign");
    let node = fx.path("bin/node");
    std::os::unix::fs::symlink(&fx.codex_path, &node).unwrap();
    let mut plain = std::process::Command::new(&fx.codex_path)
        .args(["--model", "x", "exec", "started by hand"])
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .unwrap();
    let script = fx.path(&format!("lib/{}", fx.codex_name));
    let mut shim = std::process::Command::new(&node)
        .arg(&script)
        .args(["exec", "under node"])
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .unwrap();
    // Not a run: same program, no `exec` word.
    let mut other = std::process::Command::new(&fx.codex_path)
        .args(["resume", "--last"])
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .unwrap();
    let looper = fx.start(&[]);
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    let mut killed: Vec<u64> = a.body["killed_codex_exec_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    killed.sort_unstable();
    let mut expected = vec![u64::from(plain.id()), u64::from(shim.id())];
    expected.sort_unstable();
    assert_eq!(killed, expected);
    assert_eq!(plain.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(shim.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert!(
        alive(u64::from(other.id())),
        "a codex without exec must be left alone"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

/// A second signal during a slow shutdown exits at once.
#[test]
fn a_second_signal_exits_at_once() {
    let fx = Fixture::new("twosignals");
    let mut looper = fx.start(&[
        ("FAKE_CODEX", "ignore-term;record;sleep:600"),
        ("LOOPER_STOP_GRACE_SECONDS", "600"),
    ]);
    let a = looper.run(json!({"codex_prompt": "stubborn"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.record_of(pid_of(&a));
    looper.signal(libc::SIGTERM);
    looper.wait("the shutdown to begin", || {
        looper
            .server_log()
            .contains("server.stop.start")
            .then_some(())
    });
    looper.signal(libc::SIGTERM);
    // Within the test's patience, far below the 600 s grace.
    assert_eq!(looper.wait_exit(), Some(1));
}

/// A signal set of `pid` from `/proc/<pid>/status` (`SigIgn`, `SigBlk`): bit `n - 1` for
/// signal `n`.
fn signal_set(pid: u64, key: &str) -> u64 {
    let status = read(format!("/proc/{pid}/status"));
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap_or_else(|e| panic!("{key}: {hex:?}: {e}"))
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// A run starts with every signal's default disposition and an empty signal mask, whatever
/// Looper inherited: started under `nohup` (SIGHUP ignored), its runs still end on a hangup.
#[test]
fn a_run_does_not_inherit_ignored_signals() {
    let fx = Fixture::new("nohup");
    let launch = Launch {
        ignored_signals: vec![libc::SIGHUP, libc::SIGUSR1],
        ..Launch::default()
    };
    let looper = fx.launch(&[], &launch);
    let inherited = signal_set(looper.pid().into(), "SigIgn");
    assert_eq!(
        inherited & (bit(libc::SIGHUP) | bit(libc::SIGUSR1)),
        bit(libc::SIGHUP) | bit(libc::SIGUSR1),
        "Looper itself should ignore them: {inherited:#x}"
    );
    let a = looper.run(json!({"codex_prompt": "hang up"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let pid = pid_of(&a);
    // Its record says the fake codex runs its own code: exec is behind it.
    looper.record_of(pid);
    // The fake codex is a Rust program, whose runtime ignores SIGPIPE itself.
    let ignored = signal_set(pid, "SigIgn") & !bit(libc::SIGPIPE);
    assert_eq!(
        ignored,
        0,
        "the run ignores {ignored:#x}\n{}",
        looper.tail()
    );
    let blocked = signal_set(pid, "SigBlk");
    assert_eq!(blocked, 0, "the run blocks {blocked:#x}\n{}", looper.tail());
}
