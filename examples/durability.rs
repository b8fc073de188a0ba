//! The driver behind `scripts/durability`: what no test in `cargo test` may take the time
//! for. It runs the release `looper` with the fake codex and a Zulip stand-in, and prints
//! what it found; it exits non-zero when something was lost.
//!
//! - `history`: a history of about 100 MB (some 60,000 runs): how long Looper takes to be
//!   ready, its peak and settled memory, and the file it keeps;
//! - `soak <runs>`: that many runs back to back; Looper's memory at the start and the end;
//! - `crash <rounds>`: a loop whose runs hand off through the inbox every few tenths of a
//!   second, Zulip failing every other second, Looper killed (`kill -9`) every 200-600 ms
//!   and started again, `<rounds>` times; then it checks that no hand-off, row, hold or
//!   message was lost.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Looper {
    child: Child,
    port: u16,
}

impl Drop for Looper {
    fn drop(&mut self) {
        // Our own child, ended by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP request; the status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, serde_json::from_str(text).unwrap_or(Value::Null)))
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A Zulip stand-in: records every message; answers 503 while `down` is set.
struct Zulip {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    down: Arc<AtomicBool>,
}

fn zulip() -> Zulip {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind zulip");
    let port = server.server_addr().to_ip().map(|a| a.port()).unwrap_or(0);
    let messages = Arc::new(Mutex::new(Vec::new()));
    let down = Arc::new(AtomicBool::new(false));
    let (m, d) = (Arc::clone(&messages), Arc::clone(&down));
    std::thread::spawn(move || {
        for mut rq in server.incoming_requests() {
            let mut body = String::new();
            let _ = rq.as_reader().read_to_string(&mut body);
            if d.load(Ordering::Relaxed) {
                let r = tiny_http::Response::from_string(r#"{"result":"error","msg":"down"}"#)
                    .with_status_code(503);
                let _ = rq.respond(r);
                continue;
            }
            let content = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("content="))
                .map(|v| {
                    let v = v.replace('+', " ");
                    let mut out = Vec::new();
                    let b = v.as_bytes();
                    let mut i = 0;
                    while i < b.len() {
                        if b[i] == b'%' && i + 2 < b.len() {
                            if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                                out.push(x);
                                i += 3;
                                continue;
                            }
                        }
                        out.push(b[i]);
                        i += 1;
                    }
                    String::from_utf8_lossy(&out).into_owned()
                })
                .unwrap_or_default();
            m.lock().unwrap().push(content);
            let _ = rq.respond(tiny_http::Response::from_string(
                r#"{"result":"success","msg":"","id":1}"#,
            ));
        }
    });
    Zulip {
        port,
        messages,
        down,
    }
}

/// Starts the release `looper` in `dir` with `env`, and waits until it answers.
fn start(dir: &Path, env: &[(&str, String)]) -> (Looper, Duration) {
    let t = target_dir();
    let codex = dir.join("bin/fake-codex-durable");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("ws")).unwrap();
    std::fs::create_dir_all(dir.join("rec")).unwrap();
    if !codex.exists() {
        std::os::unix::fs::symlink(t.join("examples/fake_codex"), &codex).unwrap();
    }
    let port = free_port();
    let t0 = Instant::now();
    let child = Command::new(t.join("looper"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("LOOPER_PORT", port.to_string())
        .env("LOOPER_AUTO_START_WHEN_IDLE", "0")
        .env("CODEX_EXEC_BINARY", &codex)
        .env("LOOPER_CODEX_PROCESS_NAMES", "fake-codex-durable")
        .env("LOOPER_STOP_SCOPE", "own")
        .env("LOOPER_WORKSPACE", dir.join("ws"))
        .env("LOOPER_REQUIRE_GIT", "0")
        .env("CODEX_EXEC_LOG_DIR", dir.join("logs"))
        .env("CODEX_EXEC_DELAY_SECONDS", "0")
        .env("CODEX_EXEC_STARTUP_CHECK_SECONDS", "0")
        .env("FAKE_CODEX_RECORD_DIR", dir.join("rec"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start looper");
    while http(port, "GET", "/health", "").map(|r| r.0) != Some(200) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "looper did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    (Looper { child, port }, t0.elapsed())
}

fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("looper-durable-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    std::fs::set_permissions(dir.join("logs"), mode).unwrap();
    dir
}

/// A row as Looper writes it, some 1.6 KB as the real ones are.
fn row(i: usize, ws: &Path, ended: bool) -> Value {
    let id = format!("{i:08x}");
    json!({"run_id": id, "request_id": id, "trigger": "inbox", "pid": 1000 + i,
        "workspace": ws, "log_path": format!("/nonexistent/codex-exec-{id}.log"),
        "started_at": "2026-11-01T10:00:00+00:00",
        "ended_at": if ended { json!("2026-11-01T10:05:00+00:00") } else { Value::Null },
        "return_code": if ended { json!(0) } else { Value::Null },
        "duration_seconds": if ended { json!(300.0) } else { Value::Null },
        "outcome": if ended { json!("ok") } else { Value::Null },
        "session_id": "0199a5f0-0000-7000-8000-000000000000",
        "tokens": {"used": 48210, "input": 51000, "cached_input": 4000, "output": 1210,
                   "reasoning": 0, "source": "session"},
        "last_message": "x".repeat(900)})
}

fn history(dir: &Path) -> bool {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let path = dir.join("logs/runs.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut i = 0;
    while f.get_ref().metadata().unwrap().len() < 100 << 20 {
        for ended in [false, true] {
            writeln!(f, "{}", row(i, &ws, ended)).unwrap();
        }
        i += 1;
        if i % 1000 == 0 {
            f.flush().unwrap();
        }
    }
    f.flush().unwrap();
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();
    let (looper, ready) = start(dir, &[]);
    let pid = looper.child.id();
    let peak = status_kb(pid, "VmHWM:");
    std::thread::sleep(Duration::from_secs(1));
    let settled = status_kb(pid, "VmRSS:");
    let kept = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let (_, runs) = http(looper.port, "GET", "/runs?limit=1000", "").unwrap();
    let shown = runs["runs"].as_array().map_or(0, Vec::len);
    println!(
        "history: {i} runs, {:.1} MB: ready in {:.0} ms, peak {:.1} MB, settled {:.1} MB; runs.jsonl now {:.1} MB (the rest in runs.jsonl.1), /runs shows {shown}",
        size as f64 / 1048576.0,
        ready.as_secs_f64() * 1000.0,
        peak as f64 / 1024.0,
        settled as f64 / 1024.0,
        kept as f64 / 1048576.0,
    );
    ready < Duration::from_secs(1) && peak < 30 * 1024 && shown == 1000
}

fn soak(dir: &Path, runs: usize) -> bool {
    let (looper, _) = start(dir, &[("FAKE_CODEX", "turn:done;exit:0".to_string())]);
    let pid = looper.child.id();
    let body = r#"{"zulip_message":"soak","codex_prompt":"soak"}"#;
    assert_eq!(
        http(looper.port, "POST", "/run", body).map(|r| r.0),
        Some(200)
    );
    std::thread::sleep(Duration::from_millis(500));
    let fresh = status_kb(pid, "VmRSS:");
    let t0 = Instant::now();
    let mut done = 0;
    while done < runs {
        match http(looper.port, "POST", "/run", body).map(|r| r.0) {
            Some(200) => done += 1,
            Some(409) => std::thread::sleep(Duration::from_millis(1)),
            other => panic!("run {done}: {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = status_kb(pid, "VmRSS:");
    println!(
        "soak: {runs} runs in {:.0} s; memory {:.1} MB after the first run, {:.1} MB after the last",
        t0.elapsed().as_secs_f64(),
        fresh as f64 / 1024.0,
        after as f64 / 1024.0
    );
    after < fresh + 4 * 1024
}

/// The names of the hand-off files the runs wrote, from their records (each run hands off
/// once, named by its run id).
fn crash(dir: &Path, rounds: usize) -> bool {
    let z = zulip();
    let env = vec![
        ("ZULIP_SITE", format!("http://127.0.0.1:{}", z.port)),
        ("ZULIP_BOT_EMAIL", "bot@example.com".to_string()),
        ("ZULIP_BOT_API_KEY", "key".to_string()),
        ("ZULIP_STREAM", "s".to_string()),
        ("LOOPER_ZULIP_TIMEOUT_SECONDS", "1".to_string()),
        ("LOOPER_DEFAULT_PROMPT", "go on".to_string()),
        (
            "FAKE_CODEX",
            "record;sleep:0.3;turn:done;handoff:hand-off;sleep:600".to_string(),
        ),
    ];
    let (first, _) = start(dir, &env);
    let body = r#"{"zulip_message":"start","codex_prompt":"go on"}"#;
    assert_eq!(
        http(first.port, "POST", "/run", body).map(|r| r.0),
        Some(200)
    );
    drop(first);
    // Zulip fails every other second while Looper is killed again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (down, stop) = (Arc::clone(&z.down), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                down.store(!down.load(Ordering::Relaxed), Ordering::Relaxed);
                std::thread::sleep(Duration::from_secs(1));
            }
            down.store(false, Ordering::Relaxed);
        })
    };
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..rounds {
        let (looper, _) = start(dir, &env);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 400));
        drop(looper);
    }
    stop.store(true, Ordering::Relaxed);
    flapper.join().unwrap();
    // A last Looper, left alone: the loop must go on, everything be answered and said.
    let (last, _) = start(dir, &env);
    let records_then = std::fs::read_dir(dir.join("rec")).unwrap().count();
    let t0 = Instant::now();
    let inbox = dir.join("ws/.looper/inbox");
    let pending = |sub: &str| {
        std::fs::read_dir(inbox.join(sub))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.ends_with(".json") && !n.ends_with(".answer.json")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let mut went_on = false;
    while t0.elapsed() < Duration::from_secs(20) {
        went_on = std::fs::read_dir(dir.join("rec")).unwrap().count() >= records_then + 3;
        if went_on {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The live run finishes the loop; Looper is killed right after the answer: the finish
    // holds in the next one.
    let (_, status) = http(last.port, "GET", "/status", "").unwrap();
    let active = status["active"]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let done = json!({"zulip_message": "all done", "from_run_id": active, "loop_done": true});
    let (finished_status, _) = http(last.port, "POST", "/run", &done.to_string()).unwrap();
    drop(last);
    let (check, _) = start(dir, &[("FAKE_CODEX", "sleep:600".to_string())]);
    let (_, status) = http(check.port, "GET", "/status", "").unwrap();
    let finished = finished_status == 200 && status["loop"]["state"] == "finished";
    // Quiet: the last run stopped, the outbox given its time.
    let (_, stopped) = http(
        check.port,
        "POST",
        "/run",
        r#"{"zulip_message":"stop","codex_prompt":""}"#,
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (_, runs) = http(check.port, "GET", "/runs?limit=1000", "").unwrap();
    let rows: Vec<Value> = runs["runs"].as_array().cloned().unwrap_or_default();
    let row_ids: HashSet<String> = rows
        .iter()
        .filter_map(|r| r["run_id"].as_str().map(str::to_string))
        .collect();
    // Every run the fake codex started has its row, ended with an outcome.
    let mut started = HashSet::new();
    for e in std::fs::read_dir(dir.join("rec")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let rec: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(id) = rec["looper_run_id"].as_str() {
            started.insert(id.to_string());
        }
    }
    let missing_rows: Vec<&String> = started.iter().filter(|id| !row_ids.contains(*id)).collect();
    let open_rows = rows
        .iter()
        .filter(|r| r["outcome"].is_null() || r["ended_at"].is_null())
        .count();
    // Every hand-off a run wrote was answered; every one that went through was said.
    let (mut answered, mut unanswered, mut went_through, mut unsaid) = (0, 0, 0, Vec::new());
    let said = z.messages.lock().unwrap().clone();
    for e in std::fs::read_dir(inbox.join("done")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_suffix(".json")
            .filter(|n| !n.ends_with(".answer"))
        else {
            continue;
        };
        let answer = inbox.join("done").join(format!("{stem}.answer.json"));
        let Ok(text) = std::fs::read_to_string(&answer) else {
            unanswered += 1;
            continue;
        };
        answered += 1;
        let a: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if a["status"] == 200 {
            went_through += 1;
            let from = stem.strip_prefix("handoff-").unwrap_or(stem);
            if !said
                .iter()
                .any(|m| m.contains(&format!("hand-off from {from}")))
            {
                unsaid.push(from.to_string());
            }
        }
    }
    let stuck = pending("") + pending("taken");
    let duplicates = {
        let mut seen = HashSet::new();
        said.iter().filter(|m| !seen.insert(m.as_str())).count()
    };
    println!(
        "crash: {rounds} kill -9 rounds; {} runs started, {} rows ({} missing, {open_rows} not ended); {answered} hand-offs answered ({went_through} went through, {} unsaid), {unanswered} unanswered, {stuck} still in the inbox; {} messages on Zulip ({duplicates} said twice); the loop went on after the last crash: {went_on}; its finish held across a kill -9: {finished}; the final stop: {}",
        started.len(),
        rows.len(),
        missing_rows.len(),
        unsaid.len(),
        said.len(),
        stopped["ok"]
    );
    drop(check);
    missing_rows.is_empty()
        && open_rows == 0
        && unanswered == 0
        && stuck == 0
        && unsaid.is_empty()
        && went_on
        && finished
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map(String::as_str).unwrap_or("all");
    let n = |default: usize| args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default);
    let mut ok = true;
    if matches!(what, "history" | "all") {
        ok &= history(&fresh_dir("history"));
    }
    if matches!(what, "soak" | "all") {
        ok &= soak(&fresh_dir("soak"), n(8000));
    }
    if matches!(what, "crash" | "all") {
        ok &= crash(&fresh_dir("crash"), n(60));
    }
    if !ok {
        eprintln!("durability: something above was lost or over its target");
        std::process::exit(1);
    }
}
