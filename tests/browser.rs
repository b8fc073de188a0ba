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
                         "--disable-component-update", "--disable-sync", "--window-size=1200,1000",
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
    s.clear_and_type("#token-input", "wrong-token");
    s.click("#token-submit");
    s.wait_text("#error", "the wrong-token error", |t| t.contains("refused"));
    assert_eq!(s.text("#active-run-id"), "none");
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
