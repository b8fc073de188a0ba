//! Black-box tests of hostile clients: no request and no connection may kill
//! Looper, freeze it or grow its memory without bound, and `/health` answers within a
//! second whatever one client does. Also prompts that exec would refuse, and shutdown
//! during a trigger.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{alive, fd_count, pid_of, thread_count, FakeZulip, Fixture, Looper};
use serde_json::json;

/// `/health` from a fresh connection, answered within one second (the client gives up
/// after that): the probe a monitor would run.
fn probe(looper: &Looper) -> Result<(), String> {
    let mut c = looper.raw();
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    c.read_to_end(&mut answer)
        .map_err(|e| format!("no answer within 1 s: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.ends_with(r#"{"ok":true}"#) {
        Ok(())
    } else {
        Err(format!("answered {text:?}"))
    }
}

fn assert_alive_and_answering(looper: &Looper, what: &str) {
    assert!(
        alive(u64::from(looper.pid())),
        "Looper died after {what}:\n{}",
        looper.tail()
    );
    probe(looper).unwrap_or_else(|e| panic!("after {what}: {e}\n{}", looper.tail()));
}

/// Sends `request` and returns what came back before the server closed (or 10 s passed).
fn exchange(looper: &Looper, request: &[u8]) -> String {
    let mut c = looper.raw();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(request);
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Huge declared body lengths on every kind of path are answered from the declaration
/// alone (nothing allocated, nothing drained) and leave Looper alive.
#[test]
fn huge_declared_lengths_leave_looper_alive() {
    let fx = Fixture::new("huge-lengths");
    let looper = fx.start(&[("LOOPER_API_TOKEN", "t")]);
    for length in [
        "1000000000000",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        for (line, status) in [
            ("GET /health", "200"),
            ("GET /status", "401"),
            ("GET /nowhere", "404"),
            ("POST /run", "401"),
        ] {
            let rq =
                format!("{line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n\r\n{{");
            let answer = exchange(&looper, rq.as_bytes());
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}")),
                "{line} with Content-Length {length}: {answer:?}"
            );
            assert!(answer.contains("Connection: close"), "{answer:?}");
            assert_alive_and_answering(&looper, &format!("{line} with {length}"));
        }
        let rq = format!(
            "POST /run HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Looper-Token: t\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
        );
        let answer = exchange(&looper, rq.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
        assert_alive_and_answering(&looper, "an authorized huge /run");
    }
}

/// Peak resident memory of `pid`, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

/// A 64 MiB header line is refused after 16 KiB (`431`) and costs Looper next to nothing;
/// a head that never ends is cut off.
#[test]
fn an_endless_head_costs_nothing() {
    let fx = Fixture::new("big-head");
    let looper = fx.start(&[]);
    let mut c = looper.raw();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nX-Big: ").unwrap();
    let block = vec![b'a'; 1024 * 1024];
    let mut sent = 0;
    for _ in 0..64 {
        match c.write_all(&block) {
            Ok(()) => sent += block.len(),
            Err(_) => break, // the server closed: it will not read 64 MiB
        }
    }
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer:?} (sent {sent} bytes)"
    );
    let peak = peak_rss_kb(looper.pid());
    assert!(peak < 32 * 1024, "peak resident memory {peak} kB");
    assert_alive_and_answering(&looper, "a 64 MiB header line");
    let answer = exchange(
        &looper,
        format!("GET /{} HTTP/1.1\r\n\r\n", "x".repeat(20_000)).as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
}

/// A client that trickles (a byte every 2 s, never silent long enough to time out) and a
/// client that pipelines requests without reading the answers leave `/health` answering
/// within a second, every time.
#[test]
fn trickling_and_unread_pipelines_freeze_nothing() {
    let fx = Fixture::new("trickle");
    // A short head deadline and idle timeout, so that the trickler and the pipeline's
    // stalled answers are cut off soon.
    let looper = fx.start(&[
        ("LOOPER_HTTP_HEAD_TIMEOUT_SECONDS", "1.5"),
        ("LOOPER_HTTP_IDLE_TIMEOUT_SECONDS", "1"),
    ]);
    // A body declared on /health, answered unread: the connection is closed, not drained.
    let mut body_trickler = looper.raw();
    body_trickler
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    // A head trickled a byte at a time.
    let mut head_trickler = looper.raw();
    head_trickler.set_nonblocking(true).unwrap();
    // A pipeline of 20,000 requests whose answers are never read.
    let mut piper = looper.raw();
    let pipeline = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".repeat(20_000);
    let writer = std::thread::spawn(move || {
        let _ = piper.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = piper.write_all(&pipeline);
        piper
    });
    let mut failures = Vec::new();
    let mut probes = 0;
    // Probe while the tricklers trickle, until the server cuts the head trickler off.
    looper.wait("the head trickler to be answered", || {
        let _ = body_trickler.write_all(b"x");
        let _ = head_trickler.write_all(b"G");
        probes += 1;
        if let Err(e) = probe(&looper) {
            failures.push(e);
        }
        std::thread::sleep(Duration::from_millis(100));
        let answered = head_trickler.peek(&mut [0u8; 1]);
        (!matches!(&answered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)).then_some(())
    });
    assert!(probes > 1, "the server answered the trickler at once");
    assert!(
        failures.is_empty(),
        "{} of {probes} probes failed: {failures:?}\n{}",
        failures.len(),
        looper.tail()
    );
    // The body trickler was answered and closed at once; the head trickler was cut off by
    // the head deadline.
    let mut answer = String::new();
    body_trickler
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = body_trickler.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    head_trickler.set_nonblocking(false).unwrap();
    head_trickler
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = String::new();
    let _ = head_trickler.read_to_string(&mut rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest:?}");
    drop(writer.join());
    assert_alive_and_answering(&looper, "the pipeline");
}

/// A 1,000-connection slow-loris under `LimitNOFILE=1024` (systemd's default): the
/// connection cap holds, `/health` probes keep being answered, and once the attack ends
/// the descriptors and threads go back to what they were.
#[test]
fn a_thousand_connection_slowloris_is_held_off() {
    let fx = Fixture::new("slowloris");
    let looper = fx.start_limited(&[], &[(libc::RLIMIT_NOFILE, 1024)]);
    let pid = looper.pid();
    let (base_fds, base_threads) = (fd_count(pid), thread_count(pid));
    let mut attackers = Vec::new();
    let mut failures = Vec::new();
    for i in 0..1000 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", looper.port)) {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ");
            attackers.push(c);
        }
        if i % 100 == 99 {
            if let Err(e) = probe(&looper) {
                failures.push(e);
            }
        }
    }
    for _ in 0..10 {
        if let Err(e) = probe(&looper) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "probes failed under the attack: {failures:?}"
    );
    let served = fd_count(pid);
    assert!(served < 600, "{served} descriptors in use: no cap");
    drop(attackers);
    looper.wait("descriptors and threads back to the baseline", || {
        (fd_count(pid) <= base_fds && thread_count(pid) <= base_threads).then_some(())
    });
    assert_alive_and_answering(&looper, "the slow-loris");
}

/// A prompt longer than exec can pass (over 128 KiB), from the request or from
/// `LOOPER_PROMPT_FILE`, is a `400` before anything happens: nothing announced, the live
/// run untouched.
#[test]
fn an_overlong_prompt_is_refused_before_any_effect() {
    let fx = Fixture::new("long-prompt");
    let zulip = FakeZulip::start();
    let prompt_file = fx.path("prompt.md");
    std::fs::write(&prompt_file, "p".repeat(200_000)).unwrap();
    let prompt_path = prompt_file.to_string_lossy();
    let looper = fx.start_owned(&zulip.env_with(&[("LOOPER_PROMPT_FILE", &prompt_path)]));
    let live = looper.run(json!({"codex_prompt": "keep me"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let announced = zulip.messages().len();
    let long = looper.run(json!({"codex_prompt": "x".repeat(200_000)}));
    assert_eq!(long.status, 400, "{}", long.body);
    let error = long.body["error"].as_str().unwrap();
    assert!(
        error.contains("200000 bytes") && error.contains("131071"),
        "{error}"
    );
    let from_file = looper.run(json!({}));
    assert_eq!(from_file.status, 400, "{}", from_file.body);
    assert!(from_file.body["error"]
        .as_str()
        .unwrap()
        .contains("LOOPER_PROMPT_FILE"));
    assert_eq!(zulip.messages().len(), announced, "announced anyway");
    assert!(alive(pid_of(&live)), "the live run was stopped");
    // The longest prompt that fits goes through whole.
    let fits = "y".repeat(131_071);
    let a = looper.run(json!({"codex_prompt": fits}));
    assert_eq!(a.status, 200, "{}", a.body);
    let argv = looper.record_of(pid_of(&a))["argv"].clone();
    assert_eq!(
        argv.as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap()
            .len(),
        131_071
    );
}

/// A `LOOPER_PROMPT_FILE` the agent can replace (it lies in the workspace: Looper warns at
/// start) holds nothing up when it becomes a FIFO: `/run` says why at once (`500`), and the next
/// trigger goes through (it was read whole under the run guard: every trigger after it was
/// `409 busy` until a restart).
#[test]
fn a_prompt_file_turned_fifo_holds_nothing_up() {
    let fx = Fixture::new("prompt-fifo");
    let prompt_file = fx.path("ws/PROMPT.md");
    std::fs::write(&prompt_file, "work on").unwrap();
    let looper = fx.start(&[("LOOPER_PROMPT_FILE", prompt_file.to_str().unwrap())]);
    looper.log_with("config.prompt_file_in_workspace");
    let first = looper.run(json!({}));
    assert_eq!(first.status, 200, "{}", first.body);
    std::fs::remove_file(&prompt_file).unwrap();
    let c = std::ffi::CString::new(prompt_file.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path inside this test's directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A fault of the configuration's, not the request's: 500, as for a missing file.
    let refused = looper.run(json!({}));
    assert_eq!(refused.status, 500, "{}", refused.body);
    let error = refused.body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("LOOPER_PROMPT_FILE") && error.contains("not a regular file"),
        "{error}"
    );
    assert!(alive(pid_of(&first)), "the live run was stopped");
    let next = looper.run(json!({"codex_prompt": "the operator's own"}));
    assert_eq!(next.status, 200, "{}\n{}", next.body, looper.tail());
}

/// A prompt that starts with `-` (a TODO line) reaches codex as its prompt, after `--`;
/// others keep the exact seed argv.
#[test]
fn a_prompt_starting_with_a_dash_is_passed_after_double_dash() {
    let fx = Fixture::new("dash");
    let looper = fx.start(&[]);
    let a = looper.run(json!({"codex_prompt": "- [ ] x"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let argv = looper.record_of(pid_of(&a))["argv"].clone();
    let tail: Vec<&str> = argv.as_array().unwrap()[7..]
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(tail, [fx.path("ws").to_str().unwrap(), "--", "- [ ] x"]);
    let command = a.body["codex_exec_result"]["command"].as_str().unwrap();
    assert!(command.ends_with(" -- '- [ ] x'"), "{command}");
}

/// After SIGTERM no step with an effect begins: a `/run` whose announcement is in flight
/// when the signal comes stops nothing afterwards, although the shutdown takes a while (a
/// run of Looper's ignores SIGTERM): a run Looper did not start lives on.
#[test]
fn a_trigger_in_flight_at_shutdown_stops_nothing_more() {
    let fx = Fixture::new("shutdown-flight");
    let zulip = FakeZulip::start();
    // A run of the user's own, started by this test under the matched name.
    let mut foreign = std::process::Command::new(&fx.codex_path)
        .args(["--ask-for-approval", "never", "exec", "by hand"])
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .expect("start a foreign run");
    let mut looper = fx.start_owned(&zulip.env_with(&[
        ("FAKE_CODEX", "record;ignore-term;sleep:600"),
        ("LOOPER_STOP_GRACE_SECONDS", "2"),
    ]));
    // Looper's own run makes the shutdown last the stop grace (2 s), longer than the
    // announcement under way.
    let own = looper.run(json!({"codex_prompt": "stubborn", "workspace": fx.path("ws")}));
    assert_eq!(own.status, 200, "{}", own.body);
    // The foreign run was stopped by that first trigger: start another.
    let _ = foreign.wait();
    let mut foreign = std::process::Command::new(&fx.codex_path)
        .args(["--ask-for-approval", "never", "exec", "by hand"])
        .env("FAKE_CODEX", "sleep:600")
        .spawn()
        .expect("start a foreign run");
    // The next announcement takes half a second.
    zulip.push(0, &[("X-Delay-Ms", "500")], "");
    let port = looper.port;
    let trigger = std::thread::spawn(move || {
        minreq::post(format!("http://127.0.0.1:{port}/run"))
            .with_header("Content-Type", "application/json")
            .with_body(r#"{"zulip_message":"slow","codex_prompt":"p"}"#)
            .with_timeout(20)
            .send()
            .map(|r| r.status_code)
    });
    looper.wait("the second announcement to be under way", || {
        (looper.server_log().matches("action=announce").count() == 2).then_some(())
    });
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    let _ = trigger.join();
    let log = looper.server_log();
    assert!(
        alive(u64::from(foreign.id())),
        "the stop step ran after SIGTERM:\n{log}"
    );
    assert_eq!(log.matches("action=stop").count(), 1, "{log}");
    // The refused trigger said its end (503) before the server's last line.
    let lines: Vec<&str> = log.lines().collect();
    let done = lines
        .iter()
        .position(|l| l.contains("server.stop.done"))
        .expect("stop.done");
    let refused = lines
        .iter()
        .position(|l| l.contains("http.end") && l.contains("status=503"))
        .expect("the refused trigger's http.end");
    assert!(refused < done, "{log}");
    let _ = foreign.kill();
    let _ = foreign.wait();
}

/// A codex binary that cannot be started leaves no run log behind (no header without a
/// trailer, which autopoll would take for recent activity) and no history row.
#[test]
fn a_failed_spawn_leaves_no_orphan_log() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new("orphan-log");
    let broken = fx.path("bin/broken-codex");
    std::fs::write(&broken, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let looper = fx.start(&[("LOOPER_API_TOKEN", common::OPERATOR_TOKEN)]);
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"codex_prompt": "x", "codex_exec_binary": broken}),
    );
    assert_eq!(a.status, 500, "{}", a.body);
    assert!(
        a.body["error"]
            .as_str()
            .unwrap()
            .contains("could not start"),
        "{}",
        a.body
    );
    let logs: Vec<String> = std::fs::read_dir(fx.path("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("codex-exec-"))
        .collect();
    assert!(logs.is_empty(), "orphan logs: {logs:?}");
    let runs = looper.get_with("/runs", &[("X-Looper-Token", common::OPERATOR_TOKEN)]);
    assert_eq!(runs.body["runs"], json!([]));
}

/// Virtual memory in use by `pid`, in bytes.
fn vm_size(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmSize")
        * 1024
}

/// When no thread can be spawned for a connection (here: an address-space limit leaves no
/// room for another thread stack), the connection is refused and logged; Looper lives on
/// and serves again once threads can be had.
#[test]
fn a_thread_that_cannot_be_spawned_is_a_refusal() {
    let fx = Fixture::new("no-threads");
    // Measure what an idle Looper maps, then allow it a little more than that.
    let probe_looper = fx.start(&[("MALLOC_ARENA_MAX", "1")]);
    let base = vm_size(probe_looper.pid());
    drop(probe_looper);
    let limit = base + 48 * 1024 * 1024;
    let looper = fx.start_limited(&[("MALLOC_ARENA_MAX", "1")], &[(libc::RLIMIT_AS, limit)]);
    let mut held = Vec::new();
    for _ in 0..200 {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", looper.port)) {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\n");
            held.push(c);
        }
    }
    looper.wait("a refused connection", || {
        looper
            .server_log()
            .contains("http.refused reason=thread")
            .then_some(())
    });
    drop(held);
    looper.wait("/health to answer again", || probe(&looper).ok());
    assert_alive_and_answering(&looper, "running out of threads");
}
