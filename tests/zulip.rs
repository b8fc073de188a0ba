//! Black-box tests of announcing: what the fake Zulip server receives for stream and private
//! messages, credentials from the environment and from zuliprc profiles, retries, failures,
//! and the `zulip_script_path` hatch.

mod common;

use common::{alive, FakeZulip, Fixture};
use serde_json::json;

fn basic(email: &str, key: &str) -> String {
    format!(
        "Basic {}",
        looper::base64(format!("{email}:{key}").as_bytes())
    )
}

/// [`FakeZulip::env`] with the site as people paste it, ending in `/api/`.
fn env_creds(z: &FakeZulip) -> Vec<(&'static str, String)> {
    z.env_with(&[("ZULIP_SITE", &format!("{}/api/", z.site()))])
}

/// Looper's stderr once it holds the end of the request `answer` answers: all it logged for
/// the requests up to that one.
fn logged_through(looper: &common::Looper, answer: &common::Answer) -> String {
    let id = answer.body["request_id"].as_str().expect("a request_id");
    looper.stderr_with(&format!("http.end request_id={id} "))
}

/// A stream message: form fields, Basic auth and the `zulip_output` line.
#[test]
fn stream_messages_go_out_as_zulip_expects() {
    let fx = Fixture::new("stream");
    let z = FakeZulip::start();
    let mut vars = env_creds(&z);
    vars.push(("ZULIP_STREAM", "ops room".into()));
    vars.push(("ZULIP_TOPIC", "looper".into()));
    let looper = fx.start_owned(&vars);
    let a = looper.run(json!({"zulip_message": "Looper: fresh run & more", "codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body["zulip_output"],
        json!("OK message_id=42 type=stream stream=\"ops room\" topic=looper")
    );
    let sent = z.messages();
    assert_eq!(sent.len(), 1);
    let m = &sent[0];
    assert_eq!(m.method, "POST");
    assert_eq!(m.url, "/api/v1/messages");
    assert_eq!(
        m.header("Authorization"),
        Some(basic(FakeZulip::EMAIL, FakeZulip::KEY).as_str())
    );
    let form = m.form();
    assert_eq!(form["type"], "stream");
    assert_eq!(form["to"], "ops room");
    assert_eq!(form["topic"], "looper");
    assert_eq!(form["content"], "Looper: fresh run & more");
    assert!(!logged_through(&looper, &a).contains(FakeZulip::KEY));
    assert!(!a.body.to_string().contains(FakeZulip::KEY));
}

/// Private messages: an email, an id slug and a full name looked up through /users.
#[test]
fn private_recipients_email_slug_and_name() {
    for (to, expected, lookups) in [
        ("tessa@example.com", json!(["tessa@example.com"]), 0),
        ("8-Tessa", json!([8]), 0),
        ("17", json!([17]), 0),
        ("tessa example", json!([8]), 1),
    ] {
        let fx = Fixture::new("private");
        let z = FakeZulip::start();
        let mut vars = env_creds(&z);
        vars.push(("ZULIP_MESSAGE_TYPE", "private".into()));
        vars.push(("ZULIP_TO", to.into()));
        let looper = fx.start_owned(&vars);
        let a = looper.run(json!({"zulip_message": "hi", "codex_prompt": ""}));
        assert_eq!(a.status, 200, "{to}: {}", a.body);
        assert!(a.body["zulip_output"]
            .as_str()
            .unwrap()
            .starts_with("OK message_id=42 type=private to="));
        let sent = z.messages();
        let form = sent[0].form();
        assert_eq!(form["type"], "private");
        let got: serde_json::Value = serde_json::from_str(&form["to"]).unwrap();
        assert_eq!(got, expected, "{to}");
        let users = z
            .all()
            .iter()
            .filter(|r| r.url.starts_with("/api/v1/users"))
            .count();
        assert_eq!(users, lookups, "{to}");
    }
}

/// zuliprc: the ZULIP_PROFILE section, else the first complete one.
#[test]
fn zuliprc_profiles() {
    let fx = Fixture::new("zuliprc");
    let z = FakeZulip::start();
    let rc = fx.path("zuliprc");
    std::fs::write(
        &rc,
        format!(
            "[partial]\nsite={site}\n\n[api]\nsite={site}\nemail=api-bot@example.com\nkey=api-key\n\n[work]\nsite={site}\nemail=work-bot@example.com\nkey=work-key\n",
            site = z.site()
        ),
    )
    .unwrap();
    let rc_s = rc.to_str().unwrap().to_string();
    for (profile, email, key) in [
        ("work", "work-bot@example.com", "work-key"),
        ("", "api-bot@example.com", "api-key"),
        ("missing", "api-bot@example.com", "api-key"),
    ] {
        let looper = fx.start_owned(&[
            ("ZULIPRC_PATH", rc_s.clone()),
            ("ZULIP_PROFILE", profile.into()),
        ]);
        let a = looper.run(json!({"zulip_message": "hi", "codex_prompt": ""}));
        assert_eq!(a.status, 200, "{profile}: {}", a.body);
        let last = z.messages().pop().unwrap();
        assert_eq!(
            last.header("Authorization"),
            Some(basic(email, key).as_str())
        );
        assert!(!logged_through(&looper, &a).contains(key));
    }
    // A profile section without a key stops the start, naming what is missing.
    let (mut child, stderr) = fx.spawn(&[("ZULIPRC_PATH", &rc_s), ("ZULIP_PROFILE", "partial")]);
    let status = common::wait_for("refusal", || child.try_wait().ok().flatten());
    assert!(!status.success());
    let text = common::read(stderr);
    assert!(text.contains("email, key"), "{text}");
}

/// A failing Zulip answers 502 and stops nothing; a 429 is retried once.
#[test]
fn a_failing_zulip_stops_nothing() {
    let fx = Fixture::new("zulipfail");
    let z = FakeZulip::start();
    let mut vars = env_creds(&z);
    vars.push(("FAKE_CODEX", "record;sleep:600".into()));
    let looper = fx.start_owned(&vars);
    let live = looper.run(json!({"codex_prompt": "live"}));
    assert_eq!(live.status, 200, "{}", live.body);
    let pid = live.body["codex_exec_result"]["pid"].as_u64().unwrap();

    z.push(500, &[], r#"{"result":"error","msg":"internal trouble"}"#);
    let a = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(a.status, 502, "{}", a.body);
    let err = a.body["error"].as_str().unwrap();
    assert!(
        err.contains("Zulip") && err.contains("internal trouble"),
        "{err}"
    );
    assert!(
        alive(pid),
        "a failed announcement must not stop the live run"
    );
    assert_eq!(looper.records().len(), 1);

    z.push(401, &[], "not json at all");
    let a = looper.run(json!({"codex_prompt": "next"}));
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(!a.body.to_string().contains(FakeZulip::KEY));
    assert!(alive(pid));

    let before = z.messages().len();
    z.push(
        429,
        &[("Retry-After", "0")],
        r#"{"result":"error","msg":"slow down"}"#,
    );
    let a = looper.run(json!({"codex_prompt": ""}));
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(z.messages().len(), before + 2, "one retry after a 429");
    assert!(!alive(pid), "the successful run stopped the live one");
    assert!(!logged_through(&looper, &a).contains(FakeZulip::KEY));
}

/// `zulip_script_path` runs the user's program with the message as its one argument.
#[test]
fn a_zulip_script_announces_instead() {
    let fx = Fixture::new("script");
    let script = fx.path("announce.sh");
    let out = fx.path("announced.txt");
    common::program(
        &script,
        &format!(
            "#!/bin/sh\nprintf '%s' \"$1\" > '{}'\necho sent-by-script\n",
            out.display()
        ),
    );
    let failing = fx.path("fail.sh");
    common::program(&failing, "#!/bin/sh\necho no route to zulip >&2\nexit 4\n");
    let looper = fx.start(&[("LOOPER_API_TOKEN", common::OPERATOR_TOKEN)]);
    let message = "it's a $message with `ticks`";
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"zulip_message": message, "codex_prompt": "", "zulip_script_path": script}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["zulip_output"], json!("sent-by-script"));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), message);
    let a = looper.run_as(
        common::OPERATOR_TOKEN,
        json!({"zulip_message": "m", "codex_prompt": "", "zulip_script_path": failing}),
    );
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(a.body["error"]
        .as_str()
        .unwrap()
        .contains("no route to zulip"));
}

/// `LOOPER_ZULIP_SCRIPT` carries every message, not only a trigger's announcement:
/// autopoll's announcement and a run's end go through it too (they went to the built-in
/// client, which logged "skipped: Zulip is not configured").
#[test]
fn the_configured_script_carries_every_message() {
    let fx = Fixture::new("script-all");
    let script = fx.path("say.sh");
    let said = fx.path("said.txt");
    common::program(
        &script,
        &format!(
            "#!/bin/sh\nprintf '%s\\n--\\n' \"$1\" >> '{}'\necho ok\n",
            said.display()
        ),
    );
    let looper = fx.start(&[
        ("LOOPER_ZULIP_SCRIPT", script.to_str().unwrap()),
        ("LOOPER_NOTIFY_ON_EXIT", "1"),
        ("LOOPER_AUTO_START_WHEN_IDLE", "1"),
        ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ("LOOPER_IDLE_LOG_STALE_SECONDS", "0"),
        ("FAKE_CODEX", "record;exit:0"),
    ]);
    let text = looper.wait(
        "autopoll's start and a run's end through the script",
        || {
            let text = std::fs::read_to_string(&said).ok()?;
            (text.contains("autopoll starts a run") && text.contains("ended with rc=0"))
                .then_some(text)
        },
    );
    // The start line says where messages go; no warning that they go nowhere.
    let log = looper.stderr();
    assert!(log.contains(" zulip=script "), "{}", looper.tail());
    assert!(
        !log.contains("Zulip is not configured"),
        "{text}\n{}",
        looper.tail()
    );
}

/// A site given without its scheme is spoken to with https; when that meets a plain-http
/// server (which answers the TLS greeting with an HTTP error, as web servers do), the answer
/// asks whether it is plain http, not only in the TLS library's words; nothing was stopped
/// or started.
#[test]
fn a_site_without_its_scheme_asks_whether_it_is_plain_http() {
    use std::io::{Read, Write};
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bare = format!("127.0.0.1:{}", plain.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for mut stream in plain.incoming().flatten() {
            let mut greeting = [0u8; 512];
            let _ = stream.read(&mut greeting);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let fx = Fixture::new("zulip-noscheme");
    let looper = fx.start(&[
        ("ZULIP_SITE", &bare),
        ("ZULIP_BOT_EMAIL", FakeZulip::EMAIL),
        ("ZULIP_BOT_API_KEY", FakeZulip::KEY),
    ]);
    let a = looper.run(json!({"zulip_message": "hi", "codex_prompt": "x"}));
    assert_eq!(a.status, 502, "{}", a.body);
    let error = a.body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("https://{bare}")) && error.contains("is it plain http?"),
        "{error}\n{}",
        looper.tail()
    );
    assert!(looper.records().is_empty(), "a run started");
}
