//! A stand-in for the `codex` CLI, for Looper's tests and benchmark. It is started exactly
//! as Looper starts codex (tests link it under a unique name such as `fake-codex-<id>`), and
//! does what the `FAKE_CODEX` environment variable says, step by step, `;`-separated:
//!
//! - `record`: write `$FAKE_CODEX_RECORD_DIR/<pid>.json` (argv, cwd, stdin, session,
//!   process group, `LOOPER_*` variables, the names of `ZULIP_*` ones, pids of the helpers
//!   it started);
//! - `print:<text>` / `stderr:<text>`: a line on stdout / stderr; `print-file:<path>`: the
//!   file's text as a line on stdout (text with `;` in it);
//! - `flood:<bytes>`: that many bytes of 100-byte lines on stdout, as fast as it can;
//! - `sleep:<seconds>`; `exit:<code>`; `await:<path>`: wait until that file exists;
//! - `chatter:<n>`: `line 0` to `line <n-1>` on stdout, one every 20 ms;
//! - `exit-if-prompt:<prompt>:<code>`: exit with that code when the prompt (the last
//!   argument) is exactly `<prompt>`;
//! - `sleep-if-prompt:<prompt>:<seconds>`: sleep that long when the prompt is `<prompt>`;
//! - `ignore-term`: ignore SIGTERM from now on (helpers started later inherit that);
//! - `grandchild`: start a helper (`fake-tool`) in a process group of its own, without
//!   `LOOPER_RUN_ID`, like codex's tool commands; it sleeps until killed;
//! - `orphan`: start a helper that escapes to a new session and is re-parented away from us,
//!   keeping `LOOPER_RUN_ID`;
//! - `close-stdout`: close stdout and stderr and go on running;
//! - `hold-output`: start a helper (`fake-tool`) that keeps our stdout and stderr open and
//!   sleeps until killed, as codex's shell-snapshot shells do;
//! - `term-spawns`: wait until SIGTERM comes, then start a helper (`fake-late`, keeping
//!   `LOOPER_RUN_ID`, its pid written to `$FAKE_CODEX_RECORD_DIR/late-<pid>.txt`) and exit,
//!   as a tool that forks as it dies;
//! - `term-handoff:<message>`: wait until SIGTERM comes, then drop a hand-off with that
//!   message (and `from_run_id` = `$LOOPER_RUN_ID`) into `$LOOPER_INBOX`, named
//!   `term-<pid>.json`, and exit 143, as a TERM trap in the agent's shell could;
//! - `escape`: start a helper (`fake-escaped`) that leaves everything a stop by `/proc`
//!   can see: a new session, an empty environment, re-parented away (`setsid env -i sh -c
//!   'exec sleep 600' &` in a tool command does the same); it sleeps until killed;
//! - `post:<json>` / `post-bare:<json>`: POST `<json>` to `$LOOPER_URL`, with
//!   `Authorization: Bearer $LOOPER_API_TOKEN` (or `$FAKE_CODEX_POST_TOKEN` when set) / with
//!   no token at all (the original's curl
//!   wrapper, from inside a run), and write the answer's status and body to
//!   `$FAKE_CODEX_RECORD_DIR/post-<pid>-<n>.json`.
//!
//! - `turn:<message>`: end a turn as `codex exec` does: its header (with a `session id`)
//!   on stderr, `user`, the prompt, `codex`, the message, `tokens used` and the count
//!   (input − cached + output, with thousands separators), then the message on stdout; and,
//!   unless `FAKE_CODEX_NO_SESSION` is set, its session file under `$CODEX_HOME` (default
//!   `~/.codex`) with a `token_count` and a `task_complete` event. The usage is
//!   `$FAKE_CODEX_USAGE` (`input,cached,output,reasoning`; default `12345,2000,678,0`), the
//!   account's windows `$FAKE_CODEX_LIMITS` (see [`rate_limits`]);
//! - `turn-file:<path>`: `turn:` with the file's text as the message;
//! - `commit:<message>`: `git add -A` and `git commit` in the working directory (with
//!   `$FAKE_CODEX_GIT`, default `git`);
//! - `tick:<file>`: mark the first open `- [ ]` item of that file done;
//! - `handoff:<message>`: drop a hand-off with `<message> from <run id>` (and
//!   `from_run_id`) into `$LOOPER_INBOX`, as the agent's last step through the inbox does;
//! - `handoff-or-done:<file>`: as the demo's agent does: a hand-off (through the inbox,
//!   as `handoff:`) while `<file>` still has an open `- [ ]` item, else the loop's finish
//!   (`loop_done`), then exit 0;
//! - `row-check`: write `$FAKE_CODEX_RECORD_DIR/row-<pid>.txt`: `yes` when
//!   `$CODEX_EXEC_LOG_DIR/runs.jsonl` holds a row of `$LOOPER_RUN_ID` as the run starts.
//!
//! Without `FAKE_CODEX` it does `record;print:fake codex working;sleep:600`.

// Helpers are left running on purpose: stopping them is Looper's job under test.
#![allow(clippy::zombie_processes)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sleep_forever_helper(name: &str, keep_run_id: bool) -> Command {
    let exe = std::env::current_exe().expect("own path");
    let mut cmd = Command::new(exe);
    cmd.arg0(name)
        .env("FAKE_CODEX", "sleep:600")
        .env_remove("FAKE_CODEX_RECORD_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !keep_run_id {
        cmd.env_remove("LOOPER_RUN_ID").env_remove("LOOPER_URL");
    }
    cmd
}

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let script = std::env::var("FAKE_CODEX")
        .unwrap_or_else(|_| "record;print:fake codex working;sleep:600".to_string());
    let mut helpers: Vec<u32> = Vec::new();
    let mut posts = 0;
    // `escape` mode: the middle process of a double fork, in a session of its own.
    if script == "escape-parent" {
        let exe = std::env::current_exe().expect("own path");
        let mut c = Command::new(exe);
        c.arg0("fake-escaped")
            .env_clear()
            .env("FAKE_CODEX", "sleep:600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid(2) in the forked child before exec is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = c.spawn().expect("spawn escaped");
        println!("{}", child.id());
        return;
    }
    // `orphan` mode: the middle process of a double fork.
    if script == "orphan-parent" {
        let mut c = sleep_forever_helper("fake-orphan", true);
        c.process_group(0);
        let child = c.spawn().expect("spawn orphan");
        println!("{}", child.id());
        return;
    }
    for step in script.split(';').filter(|s| !s.is_empty()) {
        let (cmd, arg) = step.split_once(':').unwrap_or((step, ""));
        match cmd {
            "record" => record(&args, &helpers),
            "print" => println!("{arg}"),
            "row-check" => {
                let id = std::env::var("LOOPER_RUN_ID").unwrap_or_default();
                let logs = std::env::var("CODEX_EXEC_LOG_DIR").unwrap_or_default();
                let history =
                    std::fs::read_to_string(format!("{logs}/runs.jsonl")).unwrap_or_default();
                let found = history.contains(&format!("\"run_id\":\"{id}\""));
                if let Ok(dir) = std::env::var("FAKE_CODEX_RECORD_DIR") {
                    let answer = if found { "yes" } else { "no" };
                    let path = format!("{dir}/row-{}.txt", std::process::id());
                    std::fs::write(path, answer).expect("row-check");
                }
            }
            "print-file" => println!("{}", std::fs::read_to_string(arg).expect("print-file")),
            "stderr" => eprintln!("{arg}"),
            "exit-if-prompt" => {
                let (prompt, code) = arg.rsplit_once(':').expect("exit-if-prompt:<p>:<code>");
                if args.last().map(String::as_str) == Some(prompt) {
                    std::process::exit(code.parse().expect("a code"));
                }
            }
            "sleep-if-prompt" => {
                let (prompt, secs) = arg.rsplit_once(':').expect("sleep-if-prompt:<p>:<s>");
                if args.last().map(String::as_str) == Some(prompt) {
                    std::thread::sleep(Duration::from_secs_f64(secs.parse().expect("seconds")));
                }
            }
            "chatter" => {
                for i in 0..arg.parse::<u32>().expect("chatter:<n>") {
                    println!("line {i}");
                    let _ = std::io::stdout().flush();
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            "flood" => flood(arg.parse().expect("flood:<bytes>")),
            "sleep" => std::thread::sleep(Duration::from_secs_f64(arg.parse().expect("sleep:<s>"))),
            "await" => {
                while !std::path::Path::new(arg).exists() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            "exit" => {
                let _ = std::io::stdout().flush();
                std::process::exit(arg.parse().expect("exit:<code>"));
            }
            // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
            "ignore-term" => unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            },
            "grandchild" => {
                let mut c = sleep_forever_helper("fake-tool", false);
                c.process_group(0);
                helpers.push(c.spawn().expect("spawn grandchild").id());
            }
            "post" | "post-bare" => {
                posts += 1;
                post(arg, cmd == "post", posts);
            }
            "escape" | "orphan" => {
                let exe = std::env::current_exe().expect("own path");
                let out = Command::new(exe)
                    .env("FAKE_CODEX", format!("{cmd}-parent"))
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .output()
                    .expect("orphan parent");
                let pid = String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("orphan pid");
                helpers.push(pid);
            }
            "hold-output" => {
                let exe = std::env::current_exe().expect("own path");
                let mut c = Command::new(exe);
                c.arg0("fake-tool")
                    .env("FAKE_CODEX", "sleep:600")
                    .env_remove("FAKE_CODEX_RECORD_DIR")
                    .stdin(Stdio::null())
                    .process_group(0);
                helpers.push(c.spawn().expect("spawn output holder").id());
            }
            "handoff" | "handoff-or-done" => {
                let inbox = std::env::var("LOOPER_INBOX").expect("LOOPER_INBOX");
                let run_id = std::env::var("LOOPER_RUN_ID").unwrap_or_default();
                let done = cmd == "handoff-or-done"
                    && !std::fs::read_to_string(arg)
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.trim_start().starts_with("- [ ]"));
                let body = match (cmd, done) {
                    ("handoff", _) => serde_json::json!({
                        "zulip_message": format!("{arg} from {run_id}"),
                        "from_run_id": run_id,
                    }),
                    (_, false) => serde_json::json!({
                        "zulip_message": format!("{arg}: on to the next item"),
                        "from_run_id": run_id,
                    }),
                    (_, true) => serde_json::json!({
                        "zulip_message": format!("{arg}: every item is done"),
                        "from_run_id": run_id,
                        "loop_done": true,
                    }),
                };
                let name = format!("handoff-{run_id}");
                let tmp = format!("{inbox}/{name}.json.tmp");
                std::fs::write(&tmp, body.to_string()).expect("write the hand-off");
                std::fs::rename(&tmp, format!("{inbox}/{name}.json")).expect("hand off");
                if done {
                    // Nothing replaces it: its turn is over.
                    std::process::exit(0);
                }
            }
            "term-handoff" => {
                let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                signal_hook::flag::register(libc::SIGTERM, term.clone()).expect("handler");
                while !term.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                // As a trap in the agent's shell would: a hand-off dropped in the inbox on the
                // way out (written aside, then renamed in).
                let inbox = std::env::var("LOOPER_INBOX").expect("LOOPER_INBOX");
                let body = serde_json::json!({
                    "zulip_message": arg,
                    "from_run_id": std::env::var("LOOPER_RUN_ID").unwrap_or_default(),
                });
                let name = format!("term-{}", std::process::id());
                let tmp = format!("{inbox}/{name}.json.tmp");
                std::fs::write(&tmp, body.to_string()).expect("write the hand-off");
                std::fs::rename(&tmp, format!("{inbox}/{name}.json")).expect("hand off");
                std::process::exit(143);
            }
            "term-spawns" => {
                let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                signal_hook::flag::register(libc::SIGTERM, term.clone()).expect("handler");
                while !term.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let mut c = sleep_forever_helper("fake-late", true);
                c.process_group(0);
                let late = c.spawn().expect("spawn late helper").id();
                if let Ok(dir) = std::env::var("FAKE_CODEX_RECORD_DIR") {
                    let _ = std::fs::write(format!("{dir}/late-{late}.txt"), late.to_string());
                }
                std::process::exit(0);
            }
            "close-stdout" => {
                let _ = std::io::stdout().flush();
                // SAFETY: closing our own standard descriptors; nothing uses them afterwards.
                unsafe {
                    libc::close(1);
                    libc::close(2);
                }
            }
            "turn" => turn(&args, arg),
            "turn-file" => turn(&args, &std::fs::read_to_string(arg).expect("turn-file")),
            "commit" => {
                // FAKE_CODEX_GIT: the agent's git, where a test slows down Looper's.
                let bin = std::env::var("FAKE_CODEX_GIT").unwrap_or_else(|_| "git".into());
                let git = |a: &[&str]| {
                    let ok = Command::new(&bin)
                        .args(["-c", "user.name=fake", "-c", "user.email=fake@example.com"])
                        .args(a)
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    assert!(ok, "fake codex: git {a:?} failed");
                };
                git(&["add", "-A"]);
                git(&["commit", "-q", "-m", arg]);
            }
            "tick" => {
                let text = std::fs::read_to_string(arg).expect("tick: read");
                std::fs::write(arg, text.replacen("- [ ]", "- [x]", 1)).expect("tick: write");
            }
            other => panic!("fake codex: unknown step {other:?}"),
        }
        let _ = std::io::stdout().flush();
    }
}

/// POSTs `body` to `$LOOPER_URL` as a wrapper inside a run would, and records the answer.
fn post(body: &str, with_token: bool, n: u32) {
    let url = std::env::var("LOOPER_URL").expect("LOOPER_URL");
    let mut rq = minreq::post(url)
        .with_header("Content-Type", "application/json")
        .with_body(body.to_string())
        .with_timeout(60);
    if with_token {
        // FAKE_CODEX_POST_TOKEN: a token the agent found elsewhere (on disk, say).
        let token = std::env::var("FAKE_CODEX_POST_TOKEN")
            .or_else(|_| std::env::var("LOOPER_API_TOKEN"))
            .unwrap_or_default();
        rq = rq.with_header("Authorization", format!("Bearer {token}"));
    }
    let answer = match rq.send() {
        Ok(r) => serde_json::json!({
            "status": r.status_code,
            "body": serde_json::from_slice::<serde_json::Value>(r.as_bytes()).unwrap_or_default(),
        }),
        Err(e) => serde_json::json!({"status": 0, "error": e.to_string()}),
    };
    if let Ok(dir) = std::env::var("FAKE_CODEX_RECORD_DIR") {
        let pid = std::process::id();
        let tmp = format!("{dir}/.post-{pid}-{n}.tmp");
        std::fs::write(&tmp, answer.to_string()).expect("write post answer");
        std::fs::rename(&tmp, format!("{dir}/post-{pid}-{n}.json")).expect("rename");
    }
}

fn flood(mut bytes: usize) {
    let line = format!("{}\n", "x".repeat(99));
    let block = line.repeat(2621); // about 256 KiB
    let mut out = std::io::stdout().lock();
    while bytes > 0 {
        let n = bytes.min(block.len());
        out.write_all(&block.as_bytes()[..n]).expect("write");
        bytes -= n;
    }
    out.flush().expect("flush");
}

fn record(args: &[String], helpers: &[u32]) {
    let Ok(dir) = std::env::var("FAKE_CODEX_RECORD_DIR") else {
        return;
    };
    let pid = std::process::id();
    // SAFETY: getsid/getpgid on our own pid have no preconditions.
    let (sid, pgid) = unsafe { (libc::getsid(0), libc::getpgid(0)) };
    // When it started, comparable between processes (pids wrap around on a busy machine).
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let started_ns = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    let value = serde_json::json!({
        "pid": pid,
        "started_ns": started_ns,
        "argv": args,
        "cwd": std::env::current_dir().ok().map(|d| d.to_string_lossy().into_owned()),
        "stdin": std::fs::read_link("/proc/self/fd/0").ok().map(|d| d.to_string_lossy().into_owned()),
        "sid": sid,
        "pgid": pgid,
        "looper_run_id": std::env::var("LOOPER_RUN_ID").ok(),
        "looper_url": std::env::var("LOOPER_URL").ok(),
        "looper_inbox": std::env::var("LOOPER_INBOX").ok(),
        "looper_bin": std::env::var("LOOPER_BIN").ok(),
        "looper_token": std::env::var("LOOPER_API_TOKEN").ok(),
        "looper_run_token": std::env::var("LOOPER_RUN_TOKEN").ok(),
        "zulip_vars": std::env::vars_os().map(|(k, _)| k.to_string_lossy().into_owned()).filter(|k| k.starts_with("ZULIP_")).collect::<Vec<_>>(),
        "helpers": helpers,
    });
    let tmp = format!("{dir}/.{pid}.tmp");
    std::fs::write(&tmp, value.to_string()).expect("write record");
    std::fs::rename(&tmp, format!("{dir}/{pid}.json")).expect("rename record");
}

/// `11023` as codex prints it: `11,023` (written apart from Looper's own formatting, which
/// the tests check against this).
fn thousands(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        _ => format!("{},{:03}", thousands(n / 1000), n % 1000),
    }
}

/// The account's windows a turn reports: `$FAKE_CODEX_LIMITS` as
/// `<used>:<minutes>:<resets in seconds>` for the 5-hour window, then, after a comma, the
/// weekly one (`-` leaves a window out); by default 12.5 % and 40 % resetting in 2030.
fn rate_limits(now: i64) -> serde_json::Value {
    let Ok(spec) = std::env::var("FAKE_CODEX_LIMITS") else {
        return serde_json::json!({
            "primary": {"used_percent": 12.5, "window_minutes": 300, "resets_at": 1_900_000_000},
            "secondary": {"used_percent": 40.0, "window_minutes": 10080, "resets_at": 1_900_500_000}});
    };
    let window = |w: &str| -> serde_json::Value {
        let n: Vec<&str> = w.split(':').collect();
        if n.len() != 3 {
            return serde_json::Value::Null;
        }
        let used: f64 = n[0].parse().expect("FAKE_CODEX_LIMITS used");
        let minutes: u64 = n[1].parse().expect("FAKE_CODEX_LIMITS minutes");
        let resets_in: i64 = n[2].parse().expect("FAKE_CODEX_LIMITS resets in");
        serde_json::json!({"used_percent": used, "window_minutes": minutes, "resets_at": now + resets_in})
    };
    let mut parts = spec.split(',');
    let primary = window(parts.next().unwrap_or("-"));
    let secondary = window(parts.next().unwrap_or("-"));
    serde_json::json!({"primary": primary, "secondary": secondary})
}

/// Ends a turn the way `codex exec` does, in its output and its session file.
fn turn(args: &[String], message: &str) {
    let usage = std::env::var("FAKE_CODEX_USAGE").unwrap_or_else(|_| "12345,2000,678,0".into());
    let n: Vec<u64> = usage
        .split(',')
        .map(|x| x.parse().expect("FAKE_CODEX_USAGE"))
        .collect();
    let (input, cached, output, reasoning) = (n[0], n[1], n[2], n[3]);
    let now = chrono::Local::now();
    let session_id = format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        now.timestamp_subsec_nanos()
    );
    let prompt = args.last().map(String::as_str).unwrap_or("");
    eprintln!(
        "OpenAI Codex v0.0.0 (fake)\n--------\nworkdir: .\nmodel: fake\nsession id: {session_id}\n--------\nuser\n{prompt}\n\ncodex\n{message}\ntokens used\n{}",
        thousands(input - cached + output)
    );
    println!("{message}");
    if std::env::var_os("FAKE_CODEX_NO_SESSION").is_some() {
        return;
    }
    let home = std::env::var_os("CODEX_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".codex")))
        .expect("CODEX_HOME or HOME");
    let dir = home
        .join("sessions")
        .join(now.format("%Y/%m/%d").to_string());
    std::fs::create_dir_all(&dir).expect("session dir");
    let file = dir.join(format!(
        "rollout-{}-{session_id}.jsonl",
        now.format("%Y-%m-%dT%H-%M-%S")
    ));
    let stamp = now
        .to_utc()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let token_count = serde_json::json!({"timestamp": stamp, "type": "event_msg", "payload": {
        "type": "token_count",
        "info": {"total_token_usage": {
            "input_tokens": input, "cached_input_tokens": cached,
            "output_tokens": output, "reasoning_output_tokens": reasoning,
            "total_tokens": input + output}},
        "rate_limits": rate_limits(now.timestamp())}});
    let done = serde_json::json!({"type": "event_msg", "payload": {
        "type": "task_complete", "last_agent_message": message}});
    std::fs::write(file, format!("{token_count}\n{done}\n")).expect("session file");
}
