//! The command line: `looper [serve]` runs the server; `trigger`, `status`, `runs` and
//! `zulip` are small clients for daily use. Parsing is by hand: a handful of flags, each
//! command with its own `--help`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::server;

/// How often `trigger --follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How long `trigger` waits for Looper to answer a request left in its inbox, unless
/// `LOOPER_INBOX_WAIT_SECONDS` says otherwise.
const INBOX_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long `trigger` tries to open a connection before it turns to the inbox.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a CLI request may take: a `/run` waits for its delay and startup check.
const CLIENT_TIMEOUT_SECS: u64 = 3600;

const USAGE: &str = "usage: looper [serve | trigger | status | runs | logs | zulip check | zulip send] [--help] [--version]";

const HELP: &str = "\
looper - announce on Zulip, stop every live `codex exec` run, start one fresh run

usage:
  looper [serve]                 run the server (LOOPER_HOST:LOOPER_PORT, default 127.0.0.1:3456)
  looper trigger [options]       ask the server for a fresh run (POST /run)
  looper status [--json]         what runs now, what ended last, what autopoll does
  looper runs [--limit N]        recent runs as a table
  looper logs [RUN_ID] [-f]      a run's log (the active run's by default), -f follows it
  looper zulip check             where Zulip credentials come from, and the target
  looper zulip send <message>    post a message with the configured credentials
  looper <command> --help        help for one command
  looper --version

examples:
  looper
  looper trigger --message 'Looper: fresh run' --prompt-file scripts/example-prompt.md --follow
  looper status

Configuration is by environment variables; see README.md.";

const TRIGGER_HELP: &str = "\
looper trigger - ask the server for a fresh run (POST /run) and print its JSON answer

usage: looper trigger (--message TEXT | --message-file PATH) [options]

options:
  --message TEXT, --message-file PATH   the Zulip announcement (required)
  --prompt TEXT, --prompt-file PATH     the prompt (default: the server's default prompt;
                                        an empty prompt announces and stops only)
  --workspace DIR                       directory for codex exec -C (default: the server's)
  --from-run ID                         the run sending this trigger (default: $LOOPER_RUN_ID)
  --delay SECONDS                       wait before spawning (default: the server's)
  --url URL                             the server (default: $LOOPER_URL, with or without /run,
                                        else http://127.0.0.1:$LOOPER_PORT)
  --follow                              print the new run's log until it exits
  --inbox                               leave the request in $LOOPER_INBOX instead of HTTP
  --help

Inside a run, when Looper cannot be reached over HTTP (codex's sandbox allows no socket),
the request goes into $LOOPER_INBOX: `queued <path>` on stderr, then Looper's answer as
over HTTP (waiting up to 30 s, or $LOOPER_INBOX_WAIT_SECONDS; without an answer the request
stays queued, exit 0).

The token comes from $LOOPER_API_TOKEN. Exit code 0 when the answer is ok (with --follow:
and the run exited 0), 1 otherwise, 2 for a usage error.

examples:
  looper trigger --message 'Looper: fresh run'
  looper trigger --message-file msg.txt --prompt-file prompt.md --workspace ~/src/app
  looper trigger --message 'next step' --from-run \"$LOOPER_RUN_ID\"";

const STATUS_HELP: &str = "\
looper status - show what runs now, what ended last, and what autopoll does

usage: looper status [--json] [--url URL]

  --json    print the raw /status answer

examples:
  looper status
  looper status --json | jq .active";

const LOGS_HELP: &str = "\
looper logs - print a run's log (the active run's by default)

usage: looper logs [RUN_ID] [-f] [--url URL]

  -f, --follow   keep printing as the log grows, until the run ends (exit 0 when it
                 exited 0)

examples:
  looper logs
  looper logs 0a1b2c3d
  looper logs -f";

const RUNS_HELP: &str = "\
looper runs - recent runs, newest first

usage: looper runs [--limit N] [--json] [--url URL]

  --limit N   how many (default 20, at most 1000)
  --json      print the raw /runs answer

examples:
  looper runs
  looper runs --limit 5";

const ZULIP_HELP: &str = "\
looper zulip - check or use the Zulip configuration (the same variables as the server)

usage:
  looper zulip check            where credentials come from, the site, the bot and the target;
                                the key is never printed; exit 1 when Zulip is unusable
  looper zulip send <message>   post <message> to the configured target

examples:
  looper zulip check
  ZULIP_MESSAGE_TYPE=private ZULIP_TO=8-Tessa looper zulip send 'hello from looper'";

/// A failure of a command: the message and the exit code.
struct Fail(String, i32);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(format!("{}\n{USAGE}", msg.into()), 2)
}

/// Runs the command line and returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let env = server::env_map();
    let mut out = std::io::stdout().lock();
    let result = dispatch(args, &env, &mut out);
    let _ = out.flush();
    match result {
        Ok(code) => code,
        Err(Fail(msg, code)) => {
            eprintln!("looper: {msg}");
            code
        }
    }
}

fn dispatch(
    args: &[String],
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let help = |text: &str, out: &mut dyn Write| {
        let _ = writeln!(out, "{text}");
        Ok(0)
    };
    match words.as_slice() {
        ["--version" | "-V"] | [_, "--version" | "-V"] => {
            let _ = writeln!(out, "looper {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        ["--help" | "-h" | "help"] => help(HELP, out),
        ["serve", "--help" | "-h"] => help(&serve_help(), out),
        [] | ["serve"] => Ok(serve(env)),
        ["trigger", rest @ ..] if rest.contains(&"--help") || rest.contains(&"-h") => {
            help(TRIGGER_HELP, out)
        }
        ["status", rest @ ..] if rest.contains(&"--help") || rest.contains(&"-h") => {
            help(STATUS_HELP, out)
        }
        ["runs", rest @ ..] if rest.contains(&"--help") || rest.contains(&"-h") => {
            help(RUNS_HELP, out)
        }
        ["zulip", rest @ ..]
            if rest.contains(&"--help") || rest.contains(&"-h") || rest.is_empty() =>
        {
            help(ZULIP_HELP, out)
        }
        ["trigger", rest @ ..] => own_usage(trigger(rest, env, out), TRIGGER_HELP),
        ["status", rest @ ..] => own_usage(status(rest, env, out), STATUS_HELP),
        ["runs", rest @ ..] => own_usage(runs(rest, env, out), RUNS_HELP),
        ["logs", rest @ ..] if rest.contains(&"--help") || rest.contains(&"-h") => {
            help(LOGS_HELP, out)
        }
        ["logs", rest @ ..] => own_usage(logs(rest, env, out), LOGS_HELP),
        ["zulip", "check"] => zulip_check(env, out),
        ["zulip", "send", message] => zulip_send(message, env, out),
        ["zulip", "send", ..] => Err(usage("zulip send takes one message (quote it)")),
        _ => Err(usage(format!(
            "unknown command or arguments: {}",
            args.join(" ")
        ))),
    }
}

/// A subcommand's usage error ends with that subcommand's own usage line, not the general one.
fn own_usage(result: Result<i32, Fail>, help: &str) -> Result<i32, Fail> {
    result.map_err(|Fail(msg, code)| {
        if code != 2 {
            return Fail(msg, code);
        }
        let line = help
            .lines()
            .find(|l| l.starts_with("usage:"))
            .unwrap_or(USAGE);
        let msg = msg.strip_suffix(USAGE).unwrap_or(&msg).trim_end();
        Fail(format!("{msg}\n{line}"), code)
    })
}

/// `looper serve --help`: what it does, and every variable it reads.
fn serve_help() -> String {
    let mut text = String::from(
        "looper serve - run the server (also: plain `looper`)\n\nusage: looper [serve]\n\n\
         Configuration is by environment variables (an empty value counts as unset; see\n\
         README.md for each one's default and meaning):\n",
    );
    for var in crate::config::KNOWN_VARS {
        text.push_str(&format!("  {var}\n"));
    }
    text.push_str(
        "\nexamples:\n  looper\n  LOOPER_WORKSPACE=~/src/app LOOPER_PORT=3457 looper serve",
    );
    text
}

fn serve(env: &HashMap<String, String>) -> i32 {
    match server::run(env) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("looper: {e}");
            match e {
                server::StartError::Config(_) => 2,
                server::StartError::Io(_) => 1,
            }
        }
    }
}

/// Flags of one command: `--name value`, `--name=value` or a bare `--switch`.
struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

fn parse_flags(args: &[&str], with_value: &[&str], switches: &[&str]) -> Result<Flags, Fail> {
    let mut flags = Flags {
        values: HashMap::new(),
        switches: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (*arg, None),
        };
        if with_value.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .map(|v| v.to_string())
                    .ok_or_else(|| usage(format!("{name} needs a value")))?,
            };
            if flags.values.insert(name.to_string(), value).is_some() {
                return Err(usage(format!("{name} given twice")));
            }
        } else if switches.contains(&name) && inline.is_none() {
            flags.switches.push(name.to_string());
        } else {
            return Err(usage(format!("unknown argument: {arg}")));
        }
    }
    Ok(flags)
}

impl Flags {
    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// The text of `--x` or the contents of `--x-file`; both at once is an error.
    fn text(&self, name: &str) -> Result<Option<String>, Fail> {
        let file_flag = format!("{name}-file");
        match (self.values.get(name), self.values.get(&file_flag)) {
            (Some(_), Some(_)) => Err(usage(format!("give {name} or {file_flag}, not both"))),
            (Some(v), None) => Ok(Some(v.clone())),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(Some)
                .map_err(|e| Fail(format!("cannot read {path} ({file_flag}): {e}"), 1)),
            (None, None) => Ok(None),
        }
    }
}

/// The server's base address: `--url`, else `LOOPER_URL` (with or without `/run`), else
/// `http://127.0.0.1:<LOOPER_PORT or 3456>`.
pub fn base_url(flag: Option<&str>, env: &HashMap<String, String>) -> String {
    let raw = flag
        .map(str::to_string)
        .or_else(|| {
            env.get("LOOPER_URL")
                .filter(|u| !u.trim().is_empty())
                .cloned()
        })
        .unwrap_or_else(|| {
            let port = env
                .get("LOOPER_PORT")
                .filter(|p| !p.trim().is_empty())
                .map(|p| p.trim().to_string())
                .unwrap_or_else(|| "3456".to_string());
            format!("http://127.0.0.1:{port}")
        });
    let trimmed = raw.trim().trim_end_matches('/');
    let base = trimmed.strip_suffix("/run").unwrap_or(trimmed);
    // `127.0.0.1:3456` is what people type: it means plain HTTP.
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// `rq` with `$LOOPER_API_TOKEN` as its bearer token, unless the server's port on this
/// machine is held by another user: a program of theirs squatting Looper's port while
/// Looper is down must not be handed the token.
fn with_token(
    rq: minreq::Request,
    base: &str,
    env: &HashMap<String, String>,
) -> Result<minreq::Request, Fail> {
    let Some(token) = env.get("LOOPER_API_TOKEN").filter(|t| !t.trim().is_empty()) else {
        return Ok(rq);
    };
    if let Some(port) = loopback_port(base) {
        let me = crate::procs::current_uid();
        if let Some(owner) = crate::procs::listener_uid(port).filter(|u| *u != me) {
            return Err(Fail(
                format!(
                    "port {port} on this machine is held by user {owner}, not by you (user {me}): LOOPER_API_TOKEN is not sent there. Is Looper running? Another user's program may be listening in its place"
                ),
                1,
            ));
        }
    }
    Ok(rq.with_header("Authorization", format!("Bearer {}", token.trim())))
}

/// The port of a plain-http address on this machine (`127.x`, `localhost`, `[::1]`).
fn loopback_port(base: &str) -> Option<u16> {
    let authority = base.strip_prefix("http://")?.split('/').next()?;
    let name = crate::config::host_name(authority);
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        _ => 80,
    };
    crate::config::is_loopback(name).then_some(port)
}

/// One request to the server; the JSON answer, or a message that says what went wrong.
fn call(
    method: &str,
    base: &str,
    path: &str,
    body: Option<&Value>,
    env: &HashMap<String, String>,
) -> Result<(u16, Value), Fail> {
    let url = format!("{base}{path}");
    let mut rq = match method {
        "POST" => minreq::post(url.as_str()),
        _ => minreq::get(url.as_str()),
    };
    rq = with_token(rq, base, env)?;
    if let Some(b) = body {
        rq = rq
            .with_header("Content-Type", "application/json")
            .with_body(b.to_string());
    }
    let response = rq.with_timeout(CLIENT_TIMEOUT_SECS).send().map_err(|e| {
        Fail(
            format!("cannot reach Looper at {base}: {e} (is `looper serve` running? set LOOPER_URL or --url)"),
            1,
        )
    })?;
    let value = serde_json::from_slice(response.as_bytes()).map_err(|_| {
        Fail(
            format!(
                "{url} answered HTTP {} with something that is not Looper's JSON",
                response.status_code
            ),
            1,
        )
    })?;
    Ok((response.status_code, value))
}

fn trigger(args: &[&str], env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let flags = parse_flags(
        args,
        &[
            "--message",
            "--message-file",
            "--prompt",
            "--prompt-file",
            "--workspace",
            "--from-run",
            "--delay",
            "--url",
        ],
        &["--follow", "--inbox"],
    )?;
    let message = flags
        .text("--message")?
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| usage("trigger needs --message or --message-file"))?;
    let mut body = json!({ "zulip_message": message });
    if let Some(prompt) = flags.text("--prompt")? {
        body["codex_prompt"] = json!(prompt);
    }
    if let Some(ws) = flags.values.get("--workspace") {
        let abs = std::path::absolute(ws)
            .map(|p| crate::config::normalize(&p))
            .unwrap_or_else(|_| ws.into());
        body["workspace"] = json!(abs.to_string_lossy());
    }
    let from = flags
        .values
        .get("--from-run")
        .cloned()
        .or_else(|| env.get("LOOPER_RUN_ID").cloned())
        .filter(|s| !s.trim().is_empty());
    if let Some(from) = from {
        body["from_run_id"] = json!(from);
    }
    if let Some(delay) = flags.values.get("--delay") {
        let secs: f64 = delay
            .parse()
            .map_err(|_| usage(format!("--delay takes seconds, got {delay:?}")))?;
        body["codex_exec_delay_seconds"] = json!(secs);
    }
    let base = base_url(flags.values.get("--url").map(String::as_str), env);
    let inbox = env
        .get("LOOPER_INBOX")
        .filter(|p| !p.trim().is_empty())
        .map(std::path::PathBuf::from);
    let (status, answer) = match inbox {
        Some(dir) if flags.has("--inbox") || !reachable(&base) => {
            let wait = match env
                .get("LOOPER_INBOX_WAIT_SECONDS")
                .filter(|v| !v.trim().is_empty())
            {
                Some(raw) => crate::config::parse_seconds(raw).map_err(|why| {
                    usage(format!("LOOPER_INBOX_WAIT_SECONDS: {why}, got {raw:?}"))
                })?,
                None => INBOX_ANSWER_WAIT,
            };
            match through_inbox(&dir, &body, wait)? {
                Some(answered) => answered,
                None => return Ok(0),
            }
        }
        None if flags.has("--inbox") => {
            return Err(usage(
                "--inbox needs LOOPER_INBOX (set in every run Looper starts)",
            ))
        }
        _ => call("POST", &base, "/run", Some(&body), env)?,
    };
    let _ = writeln!(out, "{answer}");
    let ok = answer["ok"] == json!(true);
    if !ok {
        eprintln!(
            "looper: HTTP {status}: {}",
            answer["error"].as_str().unwrap_or("the server said no")
        );
        return Ok(1);
    }
    let result = &answer["codex_exec_result"];
    if result.is_null() {
        eprintln!("looper: announced; no run started");
        return Ok(0);
    }
    let log_path = result["log_path"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "looper: run {} started, pid {}, log {}",
        answer["run_id"].as_str().unwrap_or("?"),
        result["pid"],
        log_path
    );
    if flags.has("--follow") {
        let run_id = answer["run_id"].as_str().unwrap_or_default();
        let rc = follow(
            &base,
            env,
            run_id,
            result["pid"].as_u64(),
            Some(&log_path),
            out,
        )?;
        match rc {
            Some(rc) => eprintln!("looper: run exited with return code {rc}"),
            None => eprintln!("looper: run ended; its return code is unknown"),
        }
        return Ok(if rc == Some(0) { 0 } else { 1 });
    }
    Ok(0)
}

/// Whether run `run_id` has ended, as the server's history says: `Some(return code)` once
/// it has (`Some(None)`: ended, code unknown), `None` while it runs. `Err` when the server
/// cannot be asked.
fn run_end(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
) -> Result<Option<Option<i32>>, Fail> {
    let (_, runs) = call("GET", base, "/runs?limit=100", None, env)?;
    let row = runs["runs"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["run_id"] == run_id));
    Ok(match row {
        Some(r) if r["ended_at"].is_null() => None,
        Some(r) => Some(r["return_code"].as_i64().map(|c| c as i32)),
        // Fallen out of the newest rows: long over.
        None => Some(None),
    })
}

/// Whether a connection to the server at `base` can be opened at all. Inside codex's
/// sandbox it cannot (no socket may be created); nor while Looper is down.
fn reachable(base: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Some(authority) = base
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
    else {
        // Not plain http: let the HTTP client try and say what is wrong.
        return true;
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let Ok(addrs) = with_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

/// Leaves `body` in the inbox `dir` (written as `.tmp`, then renamed, so Looper takes it
/// only when complete) and waits for Looper's answer. `None` when none came in time.
fn through_inbox(
    dir: &std::path::Path,
    body: &Value,
    wait: Duration,
) -> Result<Option<(u16, Value)>, Fail> {
    use std::os::unix::fs::OpenOptionsExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!("trigger-{stamp}-{}.json", std::process::id());
    let (tmp, path) = (dir.join(format!("{name}.tmp")), dir.join(&name));
    let cannot = |e: std::io::Error| Fail(format!("cannot write {}: {e}", path.display()), 1);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(cannot)?;
    f.write_all(body.to_string().as_bytes()).map_err(cannot)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(cannot)?;
    eprintln!("looper: queued {}", path.display());
    let answer_path = crate::inbox::answer_path(dir, &name);
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if let Ok(bytes) = std::fs::read(&answer_path) {
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| Fail(format!("{} is not JSON: {e}", answer_path.display()), 1))?;
            let status = answer["status"].as_u64().unwrap_or(0) as u16;
            return Ok(Some((status, answer["body"].clone())));
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    eprintln!(
        "looper: no answer within {} s; the request stays queued in {} for Looper to take",
        wait.as_secs_f64(),
        dir.display()
    );
    Ok(None)
}

/// The bytes of run `run_id`'s log from `offset` on (at most a MiB; without an offset, the
/// last MiB), from the server's log API.
fn fetch_log(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
    offset: Option<u64>,
) -> Result<Vec<u8>, Fail> {
    let query = offset.map(|o| format!("?offset={o}")).unwrap_or_default();
    let url = format!("{base}/runs/{run_id}/log{query}");
    let rq = with_token(minreq::get(url.as_str()), base, env)?;
    let response = rq
        .with_timeout(30)
        .send()
        .map_err(|e| Fail(format!("cannot reach Looper at {base}: {e}"), 1))?;
    if response.status_code != 200 {
        let error: Value = serde_json::from_slice(response.as_bytes()).unwrap_or_default();
        return Err(Fail(
            format!(
                "HTTP {}: {}",
                response.status_code,
                error["error"].as_str().unwrap_or("the server said no")
            ),
            1,
        ));
    }
    Ok(response.into_bytes())
}

/// The bytes of the log file at `path` from `offset` on: when the server cannot be asked
/// (inside codex's sandbox, say), a log on this machine is read directly.
fn read_local(path: &str, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut chunk = Vec::new();
    file.take(crate::api::MAX_LOG_CHUNK)
        .read_to_end(&mut chunk)
        .ok()?;
    Some(chunk)
}

/// Prints a run's log as it grows until the run has ended, and returns its return code
/// (`None`: unknown). The log comes from the server's log API (or, when the server cannot
/// be asked, from `local`, the file on this machine); the end is learnt from the server's
/// history, never from the log's text (which the run itself writes), and while the server
/// cannot be asked, from whether the run's process `pid` still lives.
fn follow(
    base: &str,
    env: &HashMap<String, String>,
    run_id: &str,
    pid: Option<u64>,
    local: Option<&str>,
    out: &mut dyn Write,
) -> Result<Option<i32>, Fail> {
    let mut offset = 0u64;
    let mut print_new = |offset: &mut u64| -> bool {
        let chunk = fetch_log(base, env, run_id, Some(*offset))
            .ok()
            .or_else(|| local.and_then(|p| read_local(p, *offset)))
            .unwrap_or_default();
        if !chunk.is_empty() {
            let _ = out.write_all(&chunk);
            let _ = out.flush();
            *offset += chunk.len() as u64;
        }
        chunk.len() as u64 == crate::api::MAX_LOG_CHUNK
    };
    loop {
        while print_new(&mut offset) {}
        let ended = match run_end(base, env, run_id) {
            Ok(end) => end,
            Err(_) => {
                let gone = pid.is_none_or(|p| !crate::procs::is_alive(p as i32));
                gone.then_some(None)
            }
        };
        if let Some(rc) = ended {
            // The trailer (and anything written last) may land just after the end is known.
            std::thread::sleep(FOLLOW_POLL);
            while print_new(&mut offset) {}
            return Ok(rc);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// `looper logs [RUN_ID] [-f]`: a run's log (the active run's by default), followed with
/// `-f` until the run ends.
fn logs(args: &[&str], env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let (named, flagged): (Vec<&str>, Vec<&str>) = args.iter().partition(|a| !a.starts_with('-'));
    let flags = parse_flags(&flagged, &["--url"], &["-f", "--follow"])?;
    if named.len() > 1 {
        return Err(usage("logs takes at most one run id"));
    }
    let base = base_url(flags.values.get("--url").map(String::as_str), env);
    let run_id = match named.first() {
        Some(id) => id.to_string(),
        None => {
            let (_, s) = call("GET", &base, "/status", None, env)?;
            s["active"]["run_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    Fail(
                        "no run is active; name one (`looper runs` lists them)".into(),
                        1,
                    )
                })?
        }
    };
    if flags.has("-f") || flags.has("--follow") {
        let rc = follow(&base, env, &run_id, None, None, out)?;
        return Ok(if rc == Some(0) { 0 } else { 1 });
    }
    let _ = out.write_all(&fetch_log(&base, env, &run_id, None)?);
    Ok(0)
}

fn status(args: &[&str], env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let flags = parse_flags(args, &["--url"], &["--json"])?;
    let base = base_url(flags.values.get("--url").map(String::as_str), env);
    let (code, s) = call("GET", &base, "/status", None, env)?;
    if flags.has("--json") {
        let _ = writeln!(out, "{s}");
    } else if s["ok"] == json!(true) {
        let _ = write!(out, "{}", describe_status(&base, &s));
    }
    if s["ok"] != json!(true) {
        eprintln!(
            "looper: HTTP {code}: {}",
            s["error"].as_str().unwrap_or("?")
        );
        return Ok(1);
    }
    Ok(0)
}

fn text(v: &Value) -> String {
    match v {
        // Timestamps to the second, in local time: the nanoseconds say nothing to a person.
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) => t
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            Err(_) => s.clone(),
        },
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// When autopoll ticks next: a time in the past means a tick is under way.
fn next_tick(v: &Value) -> String {
    let past = v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| t < chrono::Local::now());
    if past {
        "now".to_string()
    } else {
        text(v)
    }
}

/// A readable summary of a `/status` answer.
pub fn describe_status(base: &str, s: &Value) -> String {
    let mut lines = vec![format!("Looper {} at {base}", text(&s["version"]))];
    let a = &s["active"];
    if a.is_null() {
        lines.push("active run: none".to_string());
    } else {
        lines.push(format!(
            "active run: {} (pid {}), started {}, last output {}",
            text(&a["run_id"]),
            text(&a["pid"]),
            text(&a["started_at"]),
            text(&a["last_output_at"])
        ));
        lines.push(format!("  workspace {}", text(&a["workspace"])));
        lines.push(format!("  log {}", text(&a["log_path"])));
    }
    let e = &s["last_exit"];
    if !e.is_null() {
        lines.push(format!(
            "last exit: run {} returned {} after {} s, at {}",
            text(&e["run_id"]),
            text(&e["return_code"]),
            text(&e["duration_seconds"]),
            text(&e["ended_at"])
        ));
    }
    if s["run_in_progress"] == json!(true) {
        lines.push("a trigger is being set up right now".to_string());
    }
    let p = &s["autopoll"];
    if p["enabled"] == json!(true) {
        lines.push(format!(
            "autopoll: every {} s when logs are quiet for {} s; next tick {}",
            text(&p["interval_seconds"]),
            text(&p["stale_seconds"]),
            next_tick(&p["next_tick_at"])
        ));
        if !p["backoff_until"].is_null() {
            lines.push(format!(
                "  backing off after {} crashes in a row, until {}",
                text(&p["consecutive_crashes"]),
                text(&p["backoff_until"])
            ));
        }
        if !p["paused_until"].is_null() {
            lines.push(format!(
                "  paused: codex hit its usage limit; no run starts by itself until {} (then the loop resumes; a trigger of yours still runs)",
                text(&p["paused_until"])
            ));
        }
    } else {
        lines.push("autopoll: off".to_string());
    }
    lines.join("\n") + "\n"
}

fn runs(args: &[&str], env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let flags = parse_flags(args, &["--url", "--limit"], &["--json"])?;
    let limit = flags
        .values
        .get("--limit")
        .map(String::as_str)
        .unwrap_or("20");
    if !limit
        .parse::<usize>()
        .is_ok_and(|n| (1..=1000).contains(&n))
    {
        return Err(usage(format!(
            "--limit takes a number from 1 to 1000, got {limit:?}"
        )));
    }
    let base = base_url(flags.values.get("--url").map(String::as_str), env);
    let (code, answer) = call("GET", &base, &format!("/runs?limit={limit}"), None, env)?;
    if answer["ok"] != json!(true) {
        eprintln!(
            "looper: HTTP {code}: {}",
            answer["error"].as_str().unwrap_or("?")
        );
        return Ok(1);
    }
    if flags.has("--json") {
        let _ = writeln!(out, "{answer}");
    } else {
        let rows = answer["runs"].as_array().cloned().unwrap_or_default();
        let _ = write!(out, "{}", runs_table(&rows));
    }
    Ok(0)
}

/// Runs as an aligned table.
pub fn runs_table(rows: &[Value]) -> String {
    let header = ["RUN", "TRIGGER", "PID", "STARTED", "RC", "SECONDS", "NOTE"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let started = text(&r["started_at"]);
        table.push(vec![
            text(&r["run_id"]),
            text(&r["trigger"]),
            text(&r["pid"]),
            started.get(..19).unwrap_or(&started).replace('T', " "),
            match (&r["return_code"], &r["ended_at"]) {
                (Value::Null, Value::Null) => "running".into(),
                (Value::Null, _) => "?".into(),
                (rc, _) => text(rc),
            },
            text(&r["duration_seconds"]),
            r["stop_reason"].as_str().unwrap_or("").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    if rows.is_empty() {
        s.push_str("(no runs yet)\n");
    }
    s
}

fn zulip_check(env: &HashMap<String, String>, out: &mut dyn Write) -> Result<i32, Fail> {
    let z = crate::zulip::Zulip::from_env(env).map_err(|e| Fail(e, 1))?;
    for w in &z.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let Some(c) = &z.credentials else {
        let _ = writeln!(out, "Zulip: not configured");
        return Ok(1);
    };
    let _ = writeln!(out, "credentials: {}", c.source);
    let _ = writeln!(out, "site: {}", c.site);
    let _ = writeln!(out, "bot: {}", c.email);
    let _ = writeln!(out, "key: (set, not shown)");
    let _ = writeln!(out, "target: {}", z.describe_target());
    let _ = writeln!(out, "timeout: {} s", z.timeout_secs);
    match crate::zulip::whoami(c, z.timeout_secs) {
        Ok(who) => {
            let _ = writeln!(out, "Zulip says: the credentials are {who}");
            Ok(0)
        }
        Err(e) => {
            let _ = writeln!(out, "Zulip says no: {e}");
            Ok(1)
        }
    }
}

fn zulip_send(
    message: &str,
    env: &HashMap<String, String>,
    out: &mut dyn Write,
) -> Result<i32, Fail> {
    if message.trim().is_empty() {
        return Err(usage("zulip send needs a message"));
    }
    let z = crate::zulip::Zulip::from_env(env).map_err(|e| Fail(e, 1))?;
    if z.credentials.is_none() {
        return Err(Fail(
            "Zulip is not configured (see `looper zulip check`)".into(),
            1,
        ));
    }
    let answer = z.send(message).map_err(|e| Fail(e.0, 1))?;
    let _ = writeln!(out, "{answer}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (i32, String) {
        let env: HashMap<String, String> =
            [("HOME".to_string(), "/nonexistent".to_string())].into();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        let code = match dispatch(&args, &env, &mut out) {
            Ok(c) => c,
            Err(Fail(m, c)) => {
                out.extend_from_slice(m.as_bytes());
                c
            }
        };
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn every_command_has_help_with_examples() {
        for cmd in [
            &["--help"][..],
            &["trigger", "--help"],
            &["status", "--help"],
            &["runs", "--help"],
            &["logs", "--help"],
            &["zulip", "--help"],
            &["serve", "--help"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 0, "{cmd:?}");
            assert!(
                text.contains("usage:") && text.contains("example"),
                "{cmd:?}: {text}"
            );
        }
        let (code, text) = run(&["status", "--version"]);
        assert_eq!(
            (code, text.trim()),
            (0, concat!("looper ", env!("CARGO_PKG_VERSION")))
        );
    }

    #[test]
    fn unknown_flags_and_commands_are_usage_errors() {
        for cmd in [
            &["frobnicate"][..],
            &["trigger", "--mesage", "x"],
            &["runs", "--limit"],
            &["runs", "--limit", "0"],
            &["trigger"],
            &["zulip", "send"],
            &["status", "--json=1"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 2, "{cmd:?}: {text}");
            assert!(text.contains("usage: looper"), "{cmd:?}: {text}");
        }
        // A subcommand's own usage, not the general one; a flag given twice is an error.
        for (cmd, own) in [
            (&["trigger", "--mesage", "x"][..], "usage: looper trigger"),
            (&["runs", "--limit", "0"], "usage: looper runs"),
            (
                &["trigger", "--message", "a", "--message", "b"],
                "usage: looper trigger",
            ),
            (&["logs", "a", "b"], "usage: looper logs"),
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 2, "{cmd:?}: {text}");
            assert!(text.contains(own), "{cmd:?}: {text}");
            assert!(!text.contains("[serve | trigger"), "{cmd:?}: {text}");
        }
        for cmd in [
            &["trigger", "-h"][..],
            &["status", "-h"],
            &["runs", "-h"],
            &["logs", "-h"],
        ] {
            let (code, text) = run(cmd);
            assert_eq!(code, 0, "{cmd:?}: {text}");
            assert!(
                text.contains(&format!("usage: looper {}", cmd[0])),
                "{cmd:?}: {text}"
            );
        }
        let (code, text) = run(&["serve", "--help"]);
        assert_eq!(code, 0);
        assert!(
            text.contains("LOOPER_WORKSPACE") && text.contains("ZULIP_TO"),
            "{text}"
        );
    }

    #[test]
    fn loopback_ports_are_known() {
        assert_eq!(loopback_port("http://127.0.0.1:3456"), Some(3456));
        assert_eq!(loopback_port("http://localhost"), Some(80));
        assert_eq!(loopback_port("http://[::1]:9/run"), Some(9));
        assert_eq!(loopback_port("http://devbox:3456"), None);
        assert_eq!(loopback_port("https://127.0.0.1:3456"), None);
    }

    #[test]
    fn a_url_without_a_scheme_is_http() {
        let env = HashMap::new();
        assert_eq!(
            base_url(Some("127.0.0.1:3456"), &env),
            "http://127.0.0.1:3456"
        );
        assert_eq!(
            base_url(Some("localhost:1/run/"), &env),
            "http://localhost:1"
        );
        assert_eq!(base_url(Some("https://x/run"), &env), "https://x");
    }

    #[test]
    fn the_url_takes_looper_url_with_or_without_run() {
        let env = |k: &str, v: &str| -> HashMap<String, String> {
            [(k.to_string(), v.to_string())].into()
        };
        assert_eq!(base_url(None, &HashMap::new()), "http://127.0.0.1:3456");
        assert_eq!(
            base_url(None, &env("LOOPER_URL", "http://h:1/run")),
            "http://h:1"
        );
        assert_eq!(
            base_url(None, &env("LOOPER_URL", "http://h:1/")),
            "http://h:1"
        );
        assert_eq!(
            base_url(None, &env("LOOPER_PORT", "4000")),
            "http://127.0.0.1:4000"
        );
        assert_eq!(
            base_url(Some("http://x:2/run/"), &env("LOOPER_URL", "http://h:1")),
            "http://x:2"
        );
    }

    #[test]
    fn flags_take_inline_values() {
        let f = parse_flags(&["--limit=5", "--json"], &["--limit"], &["--json"])
            .ok()
            .unwrap();
        assert_eq!(f.values["--limit"], "5");
        assert!(f.has("--json"));
    }

    #[test]
    fn tables_line_up() {
        let rows = vec![
            json!({"run_id":"abcd1234","trigger":"http","pid":42,"started_at":"2026-11-25T10:00:00+00:00","return_code":null,"duration_seconds":null}),
            json!({"run_id":"0000beef","trigger":"http","pid":41,"started_at":"2026-11-25T09:00:00+00:00","ended_at":"2026-11-25T09:30:00+00:00","return_code":null,"duration_seconds":1800.0}),
        ];
        let t = runs_table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RUN       TRIGGER"), "{t}");
        assert!(
            lines[1].contains("2026-11-25 10:00:00") && lines[1].contains("running"),
            "{t}"
        );
        let unwatched: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(unwatched[4..], ["09:00:00", "?", "1800.0"], "{t}");
    }
}
