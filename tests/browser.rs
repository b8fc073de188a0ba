//! The page in a real browser: headless Chromium, driven through chromedriver's
//! WebDriver protocol (HTTP and JSON, so minreq is enough), against the real server with
//! the fake codex. It checks what a person would see: the active run and its output, a
//! timeline bar per run, the trigger and stop buttons, and the token prompt. A screenshot
//! is saved as `target/looper-page.png`. `#[ignore]`d: `scripts/test-browser` installs
//! Chromium and runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{run_id_of, wait_for, Fixture, Looper};
use serde_json::{json, Value};

/// The key WebDriver names elements by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver of this test's, stopped when dropped.
struct Driver {
    child: Child,
    base: String,
}

impl Driver {
    fn start() -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let binary = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let mut child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (scripts/test-browser installs it)");
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(out).lines() {});
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver", || {
            let r = minreq::get(format!("{base}/status")).send().ok()?;
            (r.status_code == 200).then_some(())
        });
        Driver { child, base }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let rq = match method {
            "POST" => minreq::post(url).with_body(body.unwrap_or(json!({})).to_string()),
            "DELETE" => minreq::delete(url),
            _ => minreq::get(url),
        };
        let r = rq
            .with_header("Content-Type", "application/json")
            .with_timeout(60)
            .send()
            .expect("webdriver");
        let v: Value = serde_json::from_slice(r.as_bytes()).expect("webdriver JSON");
        assert!(r.status_code == 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn session(&self) -> Session<'_> {
        let profile = std::env::temp_dir().join(format!(
            "looper-chromium-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = self.call("POST", "/session", Some(caps));
        Session {
            driver: self,
            id: v["sessionId"].as_str().expect("session id").to_string(),
        }
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser window.
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url})));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
            .collect()
    }

    fn find(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css}"))
    }

    fn text(&self, css: &str) -> String {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn clear_and_type(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        );
    }

    fn displayed(&self, css: &str) -> bool {
        let id = self.find(css);
        self.call("GET", &format!("/element/{id}/displayed"), None) == json!(true)
    }

    /// Waits until the text of `css` satisfies `ok`; the text.
    fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        wait_for(what, || {
            let t = self.text(css);
            ok(&t).then_some(t)
        })
    }

    /// Runs `body` (a function body that returns a value) in the page; its value.
    fn script(&self, body: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": body, "args": []})),
        )
    }

    fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call("GET", "/screenshot", None);
        let png = decode_base64(b64.as_str().expect("screenshot"));
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join(name);
        std::fs::write(&path, png).expect("save screenshot");
        path
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = minreq::delete(format!("{}/session/{}", self.driver.base, self.id))
            .with_timeout(30)
            .send();
    }
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits: Vec<u32> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, d| (acc << 6) | d) << (6 * (4 - chunk.len()));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

fn page(looper: &Looper) -> String {
    looper.url("/")
}

/// The page shows the active run and its latest output, a timeline bar per run; its
/// trigger button starts a run and its stop button stops it.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_shows_the_loop_and_its_buttons_work() {
    let fx = Fixture::new("browser");
    let looper = fx.start(&[(
        "FAKE_CODEX",
        "record;print:hello from the fake codex;sleep:600",
    )]);
    let first = looper.run(json!({"codex_prompt": "first"}));
    let second = looper.run(json!({"codex_prompt": "second"}));
    assert_eq!((first.status, second.status), (200, 200));
    let active = run_id_of(&second);
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    s.wait_text("#active-run-id", "the active run on the page", |t| {
        t == active
    });
    s.wait_text("#log-tail", "the run's output on the page", |t| {
        t.contains("hello from the fake codex")
    });
    looper.wait("a timeline bar per run", || {
        (s.find_all("#timeline .bar").len() == 2).then_some(())
    });
    assert_eq!(s.find_all("#timeline .bar.replaced").len(), 1);
    assert_eq!(s.find_all("#timeline .bar.running").len(), 1);
    assert_eq!(s.find_all("#runs-table tbody tr").len(), 2);
    assert_eq!(
        s.text("#stop-scope"),
        "every codex exec of this user (LOOPER_STOP_SCOPE=all)"
    );
    s.screenshot("looper-page.png");

    // Trigger a fresh run from the page.
    s.clear_and_type("#trigger-prompt", "from the page");
    s.click("#trigger-button");
    let rec = looper.wait("the run the page started", || {
        looper.records().into_iter().find(|r| {
            r["argv"]
                .as_array()
                .and_then(|a| a.last())
                .is_some_and(|p| p == "from the page")
        })
    });
    let new_id = rec["looper_run_id"].as_str().unwrap().to_string();
    s.wait_text("#active-run-id", "the new run on the page", |t| t == new_id);
    s.wait_text("#result", "the answer on the page", |t| {
        t.contains("started")
    });

    // Stop it from the page.
    s.click("#stop-button");
    looper.wait("the run to stop", || {
        looper.get("/status").body["active"].is_null().then_some(())
    });
    s.wait_text("#active-run-id", "no active run on the page", |t| {
        t == "none"
    });
    s.wait_text("#result", "the stop answer", |t| {
        t.contains("nothing started")
    });
    std::thread::sleep(Duration::from_millis(100));
    s.screenshot("looper-page-stopped.png");
}

/// With a token set, the page asks for it, says so when it is wrong, and works once it is
/// right.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_asks_for_the_token() {
    let fx = Fixture::new("browser-token");
    let looper = fx.start(&[("LOOPER_API_TOKEN", "right-token")]);
    let a = looper.post_with(
        "/run",
        &json!({"zulip_message": "m", "codex_prompt": "p"}).to_string(),
        &[("X-Looper-Token", "right-token")],
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    looper.wait("the token prompt", || {
        s.displayed("#token-box").then_some(())
    });
    // Without the token nothing is known, and the page says why rather than "none".
    s.wait_text("#summary", "the header naming the token", |t| {
        t == "token needed (LOOPER_API_TOKEN)"
    });
    for panel in [
        "#active-run-id",
        "#autopoll-state",
        "#loop-state",
        "#timeline",
    ] {
        assert_eq!(s.text(panel), "unknown: the token is needed", "{panel}");
    }
    s.clear_and_type("#token-input", "wrong-token");
    s.click("#token-submit");
    s.wait_text("#error", "the wrong-token error", |t| t.contains("refused"));
    s.wait_text("#active-run-id", "the run unknown", |t| {
        t == "unknown: the token was refused"
    });
    assert_eq!(s.text("#summary"), "token refused");
    s.clear_and_type("#token-input", "right-token");
    s.click("#token-submit");
    let id = run_id_of(&a);
    s.wait_text("#active-run-id", "the active run after the token", |t| {
        t == id
    });
    assert!(!s.displayed("#token-box"));
}

/// Three runs that each tick a TODO item, commit and end their turn: the page draws the
/// burndown (open items after each run, oldest left), the tokens and the commits per run,
/// and a run's detail shows its last message whole (the table shows its opening only).
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_draws_the_burndown_and_a_runs_whole_last_message() {
    let fx = Fixture::new("browser-progress");
    let ws = fx.path("ws");
    common::git_workspace_with_todo(&ws, "- [ ] one\n- [ ] two\n- [ ] three\n- [ ] four\n");
    let long = format!(
        "{}and that is THE END.",
        "Ticked one more item. ".repeat(30)
    );
    let script = format!("record;tick:TODO.md;commit:tick;turn:{long};exit:0");
    let looper = fx.start(&[("LOOPER_TODO_FILE", "TODO.md"), ("FAKE_CODEX", &script)]);
    let mut ids = Vec::new();
    for n in 0..3 {
        let a = looper.run(json!({"codex_prompt": format!("run {n}")}));
        assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
        let id = run_id_of(&a);
        looper.ended_row(&id);
        // The end is recorded first; what the run did completes the row after.
        let row = looper.wait("the run's report", || {
            let row = looper.ended_row(&id);
            (!row["todo_after"].is_null()).then_some(row)
        });
        assert_eq!(row["todo_after"]["open"], 3 - n, "{row}");
        ids.push(id);
    }
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    let points = looper.wait("a burndown point per run", || {
        let found = s.find_all("#burndown circle.todo-point");
        (found.len() == 3).then_some(found)
    });
    let attr = |id: &str, name: &str| {
        s.call("GET", &format!("/element/{id}/attribute/{name}"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let values = |ids: &[String]| -> Vec<(String, String)> {
        ids.iter()
            .map(|e| (attr(e, "data-run-id"), attr(e, "data-value")))
            .collect()
    };
    let expect = |v: [&str; 3]| -> Vec<(String, String)> {
        ids.iter().cloned().zip(v.map(String::from)).collect()
    };
    assert_eq!(
        values(&points),
        expect(["3", "2", "1"]),
        "open items, oldest first"
    );
    let ys: Vec<f64> = points
        .iter()
        .map(|e| attr(e, "cy").parse().unwrap())
        .collect();
    assert!(ys[0] < ys[1] && ys[1] < ys[2], "the line goes down: {ys:?}");
    let tokens = s.find_all("#burndown rect.tokens-bar");
    assert_eq!(
        values(&tokens),
        expect(["11023", "11023", "11023"]),
        "tokens per run"
    );
    let commits = s.find_all("#burndown rect.commits-bar");
    assert_eq!(values(&commits), expect(["1", "1", "1"]), "commits per run");
    let chart_text = s.text("#burndown");
    assert!(chart_text.contains("open TODO items: 1"), "{chart_text}");
    // The table: tokens, commits and the last message's opening.
    let first_row = s.text("#runs-table tbody tr");
    assert!(first_row.contains("11,023"), "{first_row}");
    assert!(first_row.contains("Ticked one more item."), "{first_row}");
    assert!(!first_row.contains("THE END"), "{first_row}");
    // The README's picture of the page, from its top: made here, so that it shows the page
    // as it is.
    s.script("window.scrollTo(0, 0); return true;");
    let shot = s.screenshot("looper-page-readme.png");
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/looper-page.png");
    std::fs::copy(&shot, docs).expect("the README's picture");
    // A run's detail: its last message whole.
    assert!(!s.displayed("#run-detail"));
    s.click("#runs-table tbody tr");
    let whole = s.wait_text("#run-detail-message", "the whole last message", |t| {
        t.contains("THE END")
    });
    assert_eq!(whole.trim(), long);
    let detail = s.text("#run-detail-fields");
    for shown in [
        "11,023 (input 12,345, cached 2,000, output 678)",
        "1 (+1 −1 in 1 file)",
        "→ 1",
    ] {
        assert!(detail.contains(shown), "{shown:?} in {detail}");
    }
    s.screenshot("looper-page-progress.png");
}

/// The page draws the account's use of each window against the pace line, from the
/// figures Looper kept (the owner's own session, then a run's), and says them in words.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_draws_the_quota_against_the_pace_line() {
    let fx = Fixture::new("browser-quota");
    let home = fx.path("codex-home");
    let now = chrono::Utc::now().timestamp();
    common::owners_session(
        &home,
        "before",
        json!({"primary": {"used_percent": 10.0, "window_minutes": 300, "resets_at": now + 9000},
               "secondary": {"used_percent": 25.0, "window_minutes": 10080, "resets_at": now + 300_000}}),
    );
    let looper = fx.start(&[
        ("LOOPER_QUOTA_PACE", "even"),
        ("CODEX_HOME", home.to_str().unwrap()),
        ("FAKE_CODEX", "record;turn:worked;exit:0"),
        ("FAKE_CODEX_LIMITS", "20:300:9000,30:10080:300000"),
    ]);
    let a = looper.run(json!({"codex_prompt": "go"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.wait("two figures kept", || {
        let q = looper.get("/quota").body;
        (q["history"].as_array()?.len() >= 2).then_some(())
    });
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    let used = looper.wait("a used line per window", || {
        let found = s.find_all("#quota-chart polyline.used-line");
        (found.len() == 2).then_some(found)
    });
    assert_eq!(used.len(), 2);
    assert_eq!(s.find_all("#quota-chart polyline.pace-line").len(), 2);
    let words = s.text("#quota-windows");
    assert!(
        words.contains("weekly: 30% used, pace line") && words.contains("5-hour: 20% used"),
        "{words}"
    );
    assert!(
        s.text("#quota-how").contains("paced evenly"),
        "{}",
        s.text("#quota-how")
    );
    s.script("document.getElementById('quota').scrollIntoView(); return true;");
    s.screenshot("looper-page-quota.png");
}

/// A paused loop shows on the page with its reason and its end, and the page's Resume
/// button ends the pause.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_shows_a_paused_loop_and_resumes_it() {
    let fx = Fixture::new("browser-pause");
    let looper = fx.start(&[
        ("LOOPER_MAX_RUNS_PER_DAY", "1"),
        ("FAKE_CODEX", "record;sleep:0.4;turn:Did a bit.;exit:0"),
    ]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    looper.wait("the pause", || {
        (looper.get("/status").body["loop"]["state"] == "paused").then_some(())
    });
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    s.wait_text("#loop-state", "the paused loop on the page", |t| {
        t.starts_with("paused in ")
    });
    let why = s.text("#loop-why");
    assert!(
        why.starts_with("max_runs_per_day: 1 run started today"),
        "{why}"
    );
    let until = s.text("#loop-until");
    assert!(until.ends_with("(or Resume)"), "{until}");
    assert!(s.displayed("#resume-button"), "no Resume button");
    s.screenshot("looper-page-paused.png");
    s.click("#resume-button");
    s.wait_text("#result", "the resume answer", |t| {
        t.starts_with("resumed: ") && t.contains("max_runs_per_day")
    });
    s.wait_text("#loop-state", "the loop going on", |t| {
        t.starts_with("idle in ")
    });
    assert!(!s.displayed("#resume-button"), "the Resume button stayed");
    assert_eq!(looper.get("/status").body["loop"]["state"], "idle");
}

/// The page's "Stop and pause" holds the loop and stops the runs: with autopoll on, no run
/// starts until Resume. (Its "Stop runs" alone was followed by autopoll's next run.)
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_pages_stop_and_pause_holds_the_loop() {
    let fx = Fixture::new("browser-stop-pause");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("LOOPER_LOG_LEVEL", "DEBUG"),
        ("FAKE_CODEX", "record;sleep:600"),
    ]);
    let first = looper.wait("autopoll's run", || looper.records().into_iter().next());
    looper.log_with("codex.exec.autopoll.started");
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    s.wait_text("#loop-state", "the running loop", |t| {
        t.starts_with("running in ")
    });
    s.click("#stop-pause-button");
    s.wait_text("#result", "the stop and the pause", |t| {
        t.contains("nothing started") && t.contains("paused until Resume")
    });
    let pid = first["pid"].as_u64().unwrap();
    looper.wait("the run to end", || (!common::alive(pid)).then_some(()));
    let skipped = |l: &common::Looper| {
        l.server_log()
            .matches("autopoll.skip reason=operator")
            .count()
    };
    let before = skipped(&looper);
    looper.wait("five ticks held", || {
        (skipped(&looper) >= before + 5).then_some(())
    });
    assert_eq!(
        looper.records().len(),
        1,
        "a run started after Stop and pause"
    );
    s.wait_text("#loop-state", "the paused loop", |t| {
        t.starts_with("paused in ")
    });
    assert!(s.displayed("#resume-button"));
    assert!(!s.displayed("#pause-button"));
}

/// Until Looper answers, every panel says it is loading (not "none", not empty); when the
/// answer is an error, the page says Looper does not answer. The page is served by a stand-in
/// that holds the page's requests, as a slow or wedged Looper would.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_says_it_is_loading_until_looper_answers() {
    let fx = Fixture::new("browser-loading");
    let looper = fx.start(&[]);
    let html = minreq::get(looper.url("/"))
        .send()
        .expect("the page")
        .as_str()
        .expect("the page's text")
        .to_string();
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
    let port = server.server_addr().to_ip().expect("ip").port();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held_tx, held) = std::sync::mpsc::channel::<String>();
    let srv = server.clone();
    std::thread::spawn(move || {
        let mut waiting = Vec::new();
        for rq in srv.incoming_requests() {
            if rq.url() == "/" {
                let page = tiny_http::Response::from_string(html.clone()).with_header(
                    "Content-Type: text/html; charset=utf-8"
                        .parse::<tiny_http::Header>()
                        .unwrap(),
                );
                let _ = rq.respond(page);
                continue;
            }
            let _ = held_tx.send(rq.url().to_string());
            waiting.push(rq);
            if released.try_recv().is_ok() {
                break;
            }
        }
        for rq in waiting.into_iter().chain(srv.incoming_requests()) {
            let _ = rq.respond(
                tiny_http::Response::from_string(r#"{"ok":false,"error":"stand-in says no"}"#)
                    .with_status_code(503),
            );
        }
    });
    let driver = Driver::start();
    let s = driver.session();
    s.open(&format!("http://127.0.0.1:{port}/"));
    let first = held
        .recv_timeout(Duration::from_secs(60))
        .expect("the page asks for /status");
    assert_eq!(first, "/status");
    assert_eq!(s.text("#summary"), "loading…");
    for panel in [
        "#active-run-id",
        "#autopoll-state",
        "#loop-state",
        "#log-tail",
        "#timeline",
        "#progress-state",
        "#runs-table tbody",
    ] {
        assert_eq!(s.text(panel), "loading…", "{panel} while loading");
    }
    s.screenshot("looper-page-loading.png");
    // The stand-in now answers 503 to everything (the next poll comes within 2 s).
    release.send(()).unwrap();
    s.wait_text("#summary", "the page saying Looper does not answer", |t| {
        t == "Looper does not answer"
    });
    assert_eq!(s.text("#active-run-id"), "unknown: Looper does not answer");
    let error = s.text("#error");
    assert!(
        error.contains("HTTP 503") && error.contains("stand-in says no"),
        "{error}"
    );
    server.unblock();
}

/// A crash loop (autopoll, a codex that fails at once): the timeline is newest first like
/// the table, the autopoll ids fit their labels, a 0-second failure is a bar one can see,
/// and during the back-off "next tick" names the back-off's end, not a tick that would do
/// nothing.
#[test]
#[ignore = "needs Chromium and chromedriver: scripts/test-browser"]
fn the_page_shows_a_crash_loop_plainly() {
    let fx = Fixture::new("browser-crashloop");
    let looper = fx.start(&[
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("FAKE_CODEX", "record;print:cannot authenticate;exit:1"),
    ]);
    looper.wait("the back-off", || {
        let s = looper.get("/status").body;
        s["autopoll"]["backoff_until"].is_string().then_some(())
    });
    let runs = || -> Vec<String> {
        looper.get("/runs").body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };
    let driver = Driver::start();
    let s = driver.session();
    s.open(&page(&looper));
    // A snapshot of the page that shows every run of /runs during the back-off (should the
    // back-off end meanwhile, the next one comes after one more crash).
    let (runs, seen) = looper.wait("the page showing every run in the back-off", || {
        let runs = runs();
        let v = s.script(
            "const ids = (css) => [...document.querySelectorAll(css)].map((e) => e.dataset.runId);
             return { bars: ids('#timeline .bar'), rows: ids('#runs-table tbody tr'),
                      failed: document.querySelectorAll('#timeline .bar.failed').length,
                      next: document.getElementById('autopoll-next').textContent,
                      backoff: document.getElementById('autopoll-backoff').textContent,
                      rects: [...document.querySelectorAll('#timeline .tl-row')].map((row) => {
                        const [label, bar] = row.children;
                        const l = label.getBoundingClientRect(), b = bar.getBoundingClientRect();
                        return { id: label.textContent, cut: label.scrollWidth > label.clientWidth,
                                 overlap: l.right > b.left, width: b.width };
                      }) };",
        );
        let shown = |k: &str| v[k].as_array().map_or(0, |a| a.len());
        let backoff = v["backoff"].as_str().is_some_and(|t| t != "–");
        (shown("bars") == runs.len() && shown("rows") == runs.len() && backoff).then_some((runs, v))
    });
    assert!(
        runs.len() >= 3 && runs.iter().all(|r| r.starts_with("auto")),
        "{runs:?}"
    );
    let ids = |k: &str| -> Vec<String> {
        seen[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(ids("rows"), runs, "the table, newest first: {seen}");
    assert_eq!(
        ids("bars"),
        runs,
        "the timeline in the table's order: {seen}"
    );
    assert_eq!(seen["failed"], json!(runs.len()), "{seen}");
    for r in seen["rects"].as_array().unwrap() {
        assert_eq!(r["cut"], json!(false), "a run id cut short: {r}");
        assert_eq!(
            r["overlap"],
            json!(false),
            "a run id running into its bar: {r}"
        );
        let width = r["width"].as_f64().unwrap();
        assert!(width >= 8.0, "a sliver of a bar, {width} px: {r}");
    }
    let next = seen["next"].as_str().unwrap();
    let backoff = seen["backoff"].as_str().unwrap();
    assert_eq!(
        next,
        format!("the first after the back-off ends ({backoff})"),
        "{seen}"
    );
    s.screenshot("looper-page-backoff.png");
    s.script("document.getElementById('timeline').scrollIntoView(); return null;");
    s.screenshot("looper-page-timeline.png");
}
