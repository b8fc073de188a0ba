//! The fleet view: the alerting rules shipped in `scripts/looper-alerts.yml` pass
//! `promtool check rules` and their own unit tests, and a live `/metrics` (after runs that
//! recorded tokens and commits) passes `promtool check metrics` and holds every series the
//! rules name. `#[ignore]`d: `scripts/test-prometheus` installs promtool and runs them.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{run_id_of, Fixture};
use serde_json::json;

fn promtool(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into()))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool (scripts/test-prometheus installs it)");
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    child.wait_with_output().expect("promtool")
}

fn assert_ok(what: &str, o: &Output) {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[ignore = "needs promtool: scripts/test-prometheus"]
fn the_alerting_rules_are_valid_and_fire_when_they_should() {
    assert_ok(
        "promtool check rules",
        &promtool(&["check", "rules", "looper-alerts.yml"], None),
    );
    assert_ok(
        "promtool test rules",
        &promtool(&["test", "rules", "looper-alerts.test.yml"], None),
    );
}

#[test]
#[ignore = "needs promtool: scripts/test-prometheus"]
fn a_live_metrics_page_passes_promtool_and_holds_what_the_rules_use() {
    let fx = Fixture::new("promtool");
    let ws = fx.path("ws");
    common::git_workspace_with_todo(&ws, "- [ ] one\n- [ ] two\n");
    // A second workspace whose one item the second run ticks: that loop finishes, while the
    // first one's pauses at its budget of one run a day (the rules use both gauges).
    let other = fx.path("ws2");
    std::fs::create_dir_all(&other).unwrap();
    common::git_workspace_with_todo(&other, "- [ ] only\n");
    let looper = fx.start(&[
        ("LOOPER_TODO_FILE", "TODO.md"),
        ("LOOPER_MAX_RUNS_PER_DAY", "1"),
        (
            "FAKE_CODEX",
            "record;tick:TODO.md;commit:tick;turn:Ticked one.;exit:0",
        ),
    ]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    looper.wait("the first loop's pause", || {
        let body = minreq::get(looper.url("/metrics")).send().ok()?;
        body.as_str()
            .ok()?
            .contains("looper_loop_paused{")
            .then_some(())
    });
    let b = looper.run(json!({"codex_prompt": "work", "workspace": other}));
    assert_eq!(b.status, 200, "{}\n{}", b.body, looper.tail());
    let id = run_id_of(&b);
    let metrics = looper.wait("the second loop's finish in /metrics", || {
        let body = minreq::get(looper.url("/metrics")).send().ok()?;
        let text = body.as_str().ok()?.to_string();
        (text.contains("looper_loop_finished{") && text.contains("looper_todo_open_items 0"))
            .then_some(text)
    });
    let o = promtool(&["check", "metrics"], Some(&metrics));
    assert_ok(
        &format!("promtool check metrics (run {id}):\n{metrics}"),
        &o,
    );
    let rules =
        common::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/looper-alerts.yml"));
    let mut named: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("looper_"))
        .collect();
    named.sort_unstable();
    named.dedup();
    assert!(named.len() >= 8, "{named:?}");
    for series in named {
        assert!(
            metrics.contains(&format!("\n{series}{{")) || metrics.contains(&format!("\n{series} ")),
            "the rules use {series}; /metrics has no sample of it:\n{metrics}"
        );
    }
    let ws_label = ws.display().to_string();
    for sample in [
        format!("looper_commits_total{{workspace=\"{ws_label}\"}} 1"),
        format!("looper_tokens_total{{workspace=\"{ws_label}\"}} 11023"),
        format!("looper_loop_paused{{workspace=\"{ws_label}\",reason=\"max_runs_per_day\"}} 1"),
        "looper_autopoll_enabled 0".to_string(),
    ] {
        assert!(metrics.contains(&sample), "{sample} in\n{metrics}");
    }
}
