//! Black-box tests of Looper under hostile input, stalling and vanishing clients, faults,
//! and a long soak: each case fails without the protection it pins.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{alive, fd_count, run_id_of, thread_count, FakeZulip, Fixture, Launch};
use serde_json::json;

/// Clients that send half a body and stall block neither `/health` nor another `/run`,
/// and are cut off once the client timeout passes (the stalled bodies get a 408).
#[test]
fn a_stalled_body_blocks_nothing() {
    let fx = Fixture::new("stall");
    // Deadlines shorter than the defaults, long enough for the run served meanwhile.
    let looper = fx.start(&[
        ("FAKE_CODEX", "record;sleep:600"),
        ("LOOPER_HTTP_HEAD_TIMEOUT_SECONDS", "2"),
        ("LOOPER_HTTP_BODY_TIMEOUT_SECONDS", "2"),
    ]);
    let stall = |length: usize| {
        let mut c = looper.raw();
        write!(
            c,
            "POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{\"zulip_m"
        )
        .unwrap();
        c
    };
    let mut small = stall(200);
    let mut large = stall(5000);
    // And one that connects and says nothing at all.
    let mut silent = looper.raw();
    looper.wait("the large stalled request to reach a worker", || {
        looper
            .server_log()
            .contains("method=POST path=/run")
            .then_some(())
    });
    assert_eq!(looper.get("/health").status, 200);
    let a = looper.run(json!({"codex_prompt": "meanwhile"}));
    assert_eq!(a.status, 200, "{}", a.body);
    // The other run was served while the stalled request still waited: nothing came back
    // on it yet.
    large.set_nonblocking(true).unwrap();
    let pending = large.peek(&mut [0u8; 1]);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the stalled request was answered before the other run: {pending:?}"
    );
    large.set_nonblocking(false).unwrap();
    for c in [&mut small, &mut large, &mut silent] {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let mut answer = String::new();
    let _ = large.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    // The small one and the silent one are closed by the server (end of file or a reset),
    // not left hanging until our own 30 s read timeout.
    let rest = read_until_closed(&mut small, "the small stalled request");
    assert!(!rest.starts_with(b"HTTP/1.1 200"));
    read_until_closed(&mut silent, "the silent connection");
}

/// Reads until the server closes the connection; fails if our read timeout comes first.
fn read_until_closed(c: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    if let Err(e) = c.read_to_end(&mut got) {
        let hung = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        assert!(!hung, "{what} was never cut off");
    }
    got
}

/// Running out of file descriptors makes `accept` fail: Looper logs it, pauses instead of
/// spinning, and answers as before on the same socket once descriptors are free again.
#[test]
fn accepting_recovers_after_running_out_of_descriptors() {
    let limit = 24;
    let fx = Fixture::new(&format!("nofile{limit}"));
    let looper = fx.start_limited(&[], &[(libc::RLIMIT_NOFILE, limit)]);
    let port = looper.port;
    let base_fds = fd_count(looper.pid());
    // Hold connections until accepting fails.
    let mut held = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
            held.push(c);
        }
    }
    looper.wait("accepting to fail", || {
        looper
            .server_log()
            .contains("http.accept_failed")
            .then_some(())
    });
    drop(held);
    // Once the held connections are closed on its side too, Looper answers as before.
    looper.wait("descriptors back to the baseline", || {
        (fd_count(looper.pid()) <= base_fds).then_some(())
    });
    // On the same socket: `looper.url` is the port it listened on from the start.
    looper.wait(&format!("/health to answer again (limit {limit})"), || {
        let r = minreq::get(looper.url("/health"))
            .with_timeout(5)
            .send()
            .ok()?;
        (r.status_code == 200).then_some(())
    });
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "limit {limit}: {}", a.body);
}

/// A body dripped byte by byte does not hold the guard or the loop meanwhile.
#[test]
fn a_dripping_body_blocks_nothing() {
    let fx = Fixture::new("drip");
    let looper = fx.start(&[]);
    let body = br#"{"zulip_message":"drip","codex_prompt":""}"#;
    let mut drip = looper.raw();
    write!(
        drip,
        "POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for (i, b) in body.iter().enumerate() {
        drip.write_all(&[*b]).unwrap();
        if i % 8 == 0 {
            assert_eq!(looper.get("/health").status, 200);
            let other = looper.run(json!({"codex_prompt": ""}));
            assert_eq!(other.status, 200, "{}", other.body);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answer = String::new();
    drip.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = drip.read(&mut buf).unwrap();
    answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

/// A client that hangs up while its `/run` is in flight (the usual case: the trigger comes
/// from the run being stopped) does not wedge the server; the run still happens.
#[test]
fn a_client_hanging_up_mid_run_changes_nothing() {
    let fx = Fixture::new("hangup");
    let looper = fx.start(&[("FAKE_CODEX", "record;sleep:600")]);
    let body = r#"{"zulip_message":"bye","codex_prompt":"p","codex_exec_delay_seconds":0.5}"#;
    let mut c = looper.raw();
    write!(
        c,
        "POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    looper.wait("the run to start its delay", || {
        looper.server_log().contains("action=delay").then_some(())
    });
    drop(c);
    let rec = looper.wait("the run to start anyway", || {
        looper.records().into_iter().next()
    });
    assert!(alive(rec["pid"].as_u64().unwrap()));
    looper.wait("the request to be logged as done", || {
        looper.server_log().contains("run.success").then_some(())
    });
    assert_eq!(looper.get("/health").status, 200);
    let next = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(next.status, 200, "{}", next.body);
}

/// Oversized bodies are refused from their Content-Length alone, before they are sent.
#[test]
fn an_oversized_body_is_refused_unread() {
    let fx = Fixture::new("huge");
    let looper = fx.start(&[]);
    let mut c = looper.raw();
    c.write_all(b"POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{")
        .unwrap();
    let mut buf = [0u8; 4096];
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let n = c.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(answer.contains("larger than 1 MiB"), "{answer:?}");
}

/// Every way Zulip can fail is a clear 502 with nothing stopped.
#[test]
fn zulip_faults_are_502s_that_stop_nothing() {
    let fx = Fixture::new("zulipfaults");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_ZULIP_TIMEOUT_SECONDS", "1"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]));
    let live = looper.run(json!({"codex_prompt": "live"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let pid = live.body["codex_exec_result"]["pid"].as_u64().unwrap();
    type Case<'a> = (u16, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            401,
            vec![],
            r#"{"result":"error","msg":"Invalid API key"}"#,
            "Invalid API key",
        ),
        (500, vec![], "<html>oops</html>", "HTTP 500"),
        (200, vec![], "not json", "HTTP 200"),
    ];
    // Twice rate-limited; an absurd wait is clamped, never a panic (the unit test
    // `retry_after_is_read_defensively` reads every other form).
    let waits = ["0", "1e20"];
    let cases: Vec<Case> = cases
        .into_iter()
        .chain(waits.iter().map(|w| {
            let rate = r#"{"result":"error","msg":"rate"}"#;
            (429, vec![("Retry-After", *w)], rate, "HTTP 429")
        }))
        .collect();
    for (status, headers, body, expect) in cases {
        z.push(status, &headers, body);
        if status == 429 {
            z.push(status, &headers, body);
        }
        let a = looper.run(json!({"codex_prompt": "next"}));
        assert_eq!(a.status, 502, "{status}: {}", a.body);
        let err = a.body["error"].as_str().unwrap();
        assert!(
            err.contains("Zulip") && err.contains(expect),
            "{status}: {err}"
        );
        assert!(alive(pid), "{status} stopped the live run");
    }
    // Slow past the timeout.
    z.push(0, &[("X-Delay-Ms", "3000")], "");
    let a = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(alive(pid));
    assert_eq!(looper.records().len(), 1);
    // The six 502s' ends are logged after anything the announcements could have logged.
    let stderr = looper.wait("the ends of the six 502s on stderr", || {
        let text = looper.stderr();
        (text.matches(" path=/run status=502 ").count() >= 6).then_some(text)
    });
    assert!(!stderr.contains(FakeZulip::KEY));
    drop(z);
    // Down.
    let a = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(a.body["error"].as_str().unwrap().contains("unreachable"));
    assert!(alive(pid));
}

/// A codex binary that cannot run, and a default workspace deleted between runs, are clear
/// errors; a removed log directory is made again.
#[test]
fn missing_pieces_between_runs() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("missing");
    let not_exec = fx.path("bin/not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let looper = fx.start(&[
        ("FAKE_CODEX", "record;sleep:600"),
        ("LOOPER_API_TOKEN", common::OPERATOR_TOKEN),
    ]);
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"codex_prompt": "x", "codex_exec_binary": not_exec}),
    );
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body["error"]
        .as_str()
        .unwrap()
        .starts_with("codex_exec_binary not found:"));

    std::fs::remove_dir_all(fx.path("logs")).unwrap();
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"codex_prompt": "log dir is gone"}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let log = a.body["codex_exec_result"]["log_path"].as_str().unwrap();
    assert!(std::path::Path::new(log).exists());

    std::fs::remove_dir_all(fx.path("ws")).unwrap();
    let a = looper.run_as(common::OPERATOR_TOKEN, json!({"codex_prompt": "x"}));
    assert_eq!(a.status, 500, "{}", a.body);
    assert_eq!(
        a.body["error"],
        json!(format!(
            "workspace is not a directory: {}",
            fx.path("ws").display()
        ))
    );
    assert_eq!(looper.get("/health").status, 200);
}

/// When the run log cannot be written (a full disk; here a file-size limit, which the
/// child inherits), the child meets the error itself (codex writes its own log), Looper logs
/// that the trailer could not be written, records the run's end and goes on serving.
#[test]
fn a_full_disk_does_not_block_the_child() {
    let fx = Fixture::new("full");
    // The flood waits for the answer (else a fast death could be reported as an early exit).
    let go = fx.path("go");
    let script = format!(
        "record;await:{};flood:8000000;print:the end;exit:0",
        go.display()
    );
    let looper = fx.start_limited(
        &[
            ("FAKE_CODEX", script.as_str()),
            ("LOOPER_MIRROR_CODEX_OUTPUT", "0"),
        ],
        &[(libc::RLIMIT_FSIZE, 2_000_000)],
    );
    let a = looper.run(json!({"codex_prompt": "flood", "codex_exec_startup_check_seconds": 0}));
    assert_eq!(a.status, 200, "{}", a.body);
    std::fs::write(&go, "").unwrap();
    let row = looper.ended_row(a.body["run_id"].as_str().unwrap());
    // Killed by SIGXFSZ at the limit, as any program writing past it.
    assert_eq!(row["return_code"], -libc::SIGXFSZ, "{row}");
    looper.log_with("codex.exec.output.write_failed");
    let size = std::fs::metadata(row["log_path"].as_str().unwrap())
        .unwrap()
        .len();
    assert!(size <= 2_000_000, "{size}");
    assert_eq!(looper.get("/health").status, 200);
}

/// A codex that closes its output but keeps running is still a live run: it is stopped by
/// the next run and gets its trailer.
#[test]
fn a_run_that_closes_stdout_is_still_tracked() {
    let fx = Fixture::new("closed");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "record;print:closing now;close-stdout;sleep:600",
    )]);
    let a = looper.run(json!({"codex_prompt": "quiet"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid = a.body["codex_exec_result"]["pid"].as_u64().unwrap();
    looper.record_of(pid);
    let status = looper.get("/status").body;
    assert_eq!(status["active"]["pid"], json!(pid));
    let b = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(b.body["killed_codex_exec_pids"], json!([pid]));
    let text = looper.finished_log(a.body["codex_exec_result"]["log_path"].as_str().unwrap());
    assert!(
        text.ends_with("closing now\n\n# codex_exec_return_code=-15\n"),
        "{text}"
    );
}

/// LOOPER_LOG_RETENTION keeps the N newest run logs, the active run's among them. Newest
/// means started last: an older log that changed later (a stopped run's trailer lands after
/// its successor started) does not outrank a newer one.
#[test]
fn log_retention_keeps_the_newest() {
    let fx = Fixture::new("retention");
    let looper = fx.start(&[
        ("LOOPER_LOG_RETENTION", "2"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let mut paths = Vec::new();
    for i in 0..4 {
        if i == 3 {
            // The two older logs changed last.
            let later = std::time::SystemTime::now() + Duration::from_secs(60);
            for p in &paths[1..3] {
                let f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.set_modified(later).unwrap();
            }
        }
        let a = looper.run(json!({"codex_prompt": format!("run {i}")}));
        assert_eq!(a.status, 200, "{}", a.body);
        paths.push(
            a.body["codex_exec_result"]["log_path"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept: Vec<bool> = paths
        .iter()
        .map(|p| std::path::Path::new(p).exists())
        .collect();
    assert_eq!(kept, vec![false, false, true, true]);
    let active = looper.get("/status").body["active"]["log_path"].clone();
    assert_eq!(active, json!(paths[3]));
}

/// A zuliprc others can read holds a key in the open: Looper warns, without the key.
#[test]
fn a_shared_zuliprc_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("zuliprc-mode");
    let rc = fx.path("zuliprc");
    std::fs::write(
        &rc,
        "[api]\nsite=http://127.0.0.1:9\nemail=b@x\nkey=rc-secret-key\n",
    )
    .unwrap();
    for (mode, warned) in [(0o644, true), (0o600, false)] {
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(mode)).unwrap();
        let looper = fx.start(&[("ZULIPRC_PATH", rc.to_str().unwrap())]);
        let err = looper.stderr();
        assert_eq!(
            err.contains("readable by other users"),
            warned,
            "{mode:o}: {err}"
        );
        assert!(!err.contains("rc-secret-key"));
    }
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let Some(i) = stat.rfind(')') else {
                return false;
            };
            let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            f.first() == Some(&"Z") && f.get(1) == Some(&pid.to_string().as_str())
        })
        .collect()
}

/// 200 back-to-back runs, with autopoll ticking and `/health` hammered meanwhile, leave the
/// server with the descriptors and threads it had, no zombies, and a complete history.
#[test]
fn soak_200_runs_leaks_nothing() {
    const RUNS: usize = 200;
    let fx = Fixture::new("soak");
    let looper = fx.start(&[
        ("FAKE_CODEX", "print:soak;sleep:600"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.05"),
        ("LOOPER_MIRROR_CODEX_OUTPUT", "1"),
        ("CODEX_EXEC_STARTUP_CHECK_SECONDS", "0"),
    ]);
    let pid = looper.pid();
    // Warm up (the first run, tiny_http's pool) before the baseline.
    assert_eq!(looper.run(json!({"codex_prompt": "warm"})).status, 200);
    assert_eq!(looper.get("/health").status, 200);
    let base_fds = fd_count(pid);
    let base_threads = thread_count(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let url = looper.url("/health");
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = minreq::get(url.as_str()).with_timeout(30).send().unwrap();
                assert_eq!(r.status_code, 200);
                n += 1;
            }
            n
        })
    };
    // A trigger meeting an autopoll tick gets a 409 (busy): it is not a cycle, try again.
    let (mut cycles, mut busy) = (0, 0);
    while cycles < RUNS {
        let a = looper.run(json!({"codex_prompt": format!("soak {cycles}")}));
        match a.status {
            200 => cycles += 1,
            409 => busy += 1,
            _ => panic!("{cycles}: {}", a.body),
        }
        assert!(busy < RUNS, "busy {busy} times in {cycles} cycles");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(hammer.join().unwrap() > 0);
    // Let the last run go so that every history row can complete.
    assert_eq!(looper.run(json!({"codex_prompt": ""})).status, 200);
    looper.wait("descriptors back to the baseline", || {
        (fd_count(pid) <= base_fds).then_some(())
    });
    // tiny_http's pool threads idle out after 5 s of no work.
    looper.wait("threads back to the baseline", || {
        (thread_count(pid) <= base_threads).then_some(())
    });
    // The last run's watcher reaps it right after the stop saw it exit: wait for that.
    looper.wait("no zombie children", || {
        zombies_of(pid).is_empty().then_some(())
    });
    // Each run's end is recorded with its report, by its watcher: wait for the last one.
    let rows = looper.wait("every row ended", || {
        let rows = looper.get("/runs?limit=1000").body["runs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        rows.iter()
            .all(|r| !r["return_code"].is_null())
            .then_some(rows)
    });
    let by_http = rows
        .iter()
        .filter(|r| r["trigger"] == json!("http"))
        .count();
    assert_eq!(by_http, RUNS + 1, "the warm-up and every cycle");
    for row in &rows {
        let rc = row["return_code"].as_i64();
        assert!(rc.is_some(), "unfinished row {row}");
        let text = common::read(row["log_path"].as_str().unwrap());
        assert!(
            text.ends_with(&format!("\n# codex_exec_return_code={}\n", rc.unwrap())),
            "{text}"
        );
    }
}

/// An idle server keeps accepting: a kept-alive connection that says nothing is closed
/// after the idle timeout, and the server answers as before afterwards.
#[test]
fn an_idle_server_keeps_accepting() {
    let fx = Fixture::new("idle");
    let looper = fx.start(&[("LOOPER_HTTP_IDLE_TIMEOUT_SECONDS", "1")]);
    let mut idle = looper.raw();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // The answer, then (after the idle timeout) the end of the connection.
    let rest = read_until_closed(&mut idle, "the idle kept-alive connection");
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(looper.get("/health").status, 200);
    // A trigger's end is logged after any accept that failed before it.
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = a.body["request_id"].as_str().unwrap();
    let log = looper.log_with(&format!("http.end request_id={id} "));
    assert!(!log.contains("http.accept_failed"));
}

/// The number after `key=` on the first line of `text` that holds `event`.
fn number_in(text: &str, event: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(event))?;
    let key = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str())?.parse().ok())
}

/// A stderr that takes nothing (a full pipe nobody reads: a paused terminal, `looper | less`
/// left alone) holds nothing up while codex output is mirrored: `/health`, `/status` and
/// `/run` answer, runs start and their ends are noticed, the log file keeps every line and
/// says that stderr stalled; once stderr is read again, the log counts the lines it lost.
#[test]
fn a_stalled_stderr_blocks_nothing() {
    let fx = Fixture::new("stderr");
    // 6 MB a run: more than the mirror may queue for stderr.
    const LINES: usize = 60_000;
    let script = format!("record;flood:{};exit:0", LINES * 100);
    let launch = Launch {
        stalled_stderr: true,
        ..Launch::default()
    };
    let mut looper = fx.launch(
        &[
            ("FAKE_CODEX", script.as_str()),
            ("LOOPER_MIRROR_CODEX_OUTPUT", "1"),
            // One file to count the mirrored lines in.
            ("LOOPER_SERVER_LOG_MAX_BYTES", "0"),
        ],
        &launch,
    );
    let mut last = String::new();
    for prompt in ["flood", "flood again"] {
        let health = looper.get("/health");
        assert_eq!(health.status, 200, "{}\n{}", health.body, looper.tail());
        let a = looper.run(json!({"codex_prompt": prompt}));
        assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
        last = run_id_of(&a);
        let row = looper.ended_row(&last);
        assert_eq!(row["return_code"], 0, "{row}\n{}", looper.tail());
        let status = looper.get("/status");
        assert_eq!(status.status, 200, "{}\n{}", status.body, looper.tail());
    }
    // The last run's exit is logged after its output, and after the first run's.
    let log = looper.log_with(&format!("codex.exec.exit request_id={last} "));
    let flood_line = format!("| {}", "x".repeat(99));
    let mirrored = log.lines().filter(|l| l.ends_with(&flood_line)).count();
    assert_eq!(
        mirrored,
        2 * LINES,
        "the log file lost output\n{}",
        looper.tail()
    );
    assert!(
        log.contains(" WARNING log.stalled sink=stderr "),
        "no word of the stall\n{}",
        looper.tail()
    );

    looper.unstall_stderr();
    let dropped = looper.wait("log.dropped for stderr in the log file", || {
        number_in(&looper.server_log(), " log.dropped sink=stderr ", "lines")
    });
    assert!(dropped > 0, "{}", looper.tail());
    looper.wait("log.dropped on stderr itself", || {
        looper
            .stderr()
            .contains(" log.dropped sink=stderr ")
            .then_some(())
    });
}
