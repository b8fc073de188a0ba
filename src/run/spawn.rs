//! Starting a run: its log with the header, the child (its own session, its own cgroup
//! where there is one, the run's environment), its registration, its watcher thread (the
//! output mirror, the trailer, the end recorded and told to autopoll's policy), and the
//! startup check.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::os::logging::Q;
use crate::os::procs;
use crate::rules::backoff::{RunEnd, Settings, Verdict};
use crate::rules::usage_limit::UsageLimit;
use crate::run::codex;
use crate::run::output;
use crate::run::request::Trigger;
use crate::state::app::App;
use crate::state::registry::{Ended, Group, LiveRun};

/// Variables of Looper's that never reach a run: the Zulip credentials.
const SECRET_VARS: [&str; 3] = ["ZULIP_BOT_API_KEY", "ZULIP_BOT_EMAIL", "ZULIP_SITE"];

/// Lines of the run log quoted in an `exited early` error.
const EARLY_EXIT_TAIL_LINES: usize = 12;

/// A run to start, as the pipeline planned it.
pub struct Start {
    pub binary: PathBuf,
    pub source: codex::Source,
    pub prompt: String,
    pub workspace: PathBuf,
    pub delay: Duration,
    pub startup_check: Duration,
}

/// A run that was spawned: what the response reports.
pub struct Spawned {
    pub run_id: String,
    pub pid: u32,
    pub log_path: PathBuf,
    pub command: String,
    pub startup_return_code: Option<i32>,
}

/// The delay, the log, the spawn and the startup check of one run; the caller holds the
/// run guard.
pub fn launch(
    app: &Arc<App>,
    start: &Start,
    request_id: &str,
    trigger: Trigger,
) -> Result<Spawned, ApiError> {
    if !start.delay.is_zero() {
        log::info!(
            "run.step request_id={request_id} action=delay seconds={:.3}",
            start.delay.as_secs_f64()
        );
        if app.shutdown().wait(start.delay) {
            return Err(ApiError::shutting_down());
        }
    }
    let args = codex::exec_args(&start.workspace, &start.prompt);
    let command = codex::command_line(&start.binary, &args);
    let log_path = app
        .cfg()
        .log_dir
        .join(output::log_file_name(chrono::Local::now(), request_id));
    let header = output::header(request_id, &start.workspace, &command);
    let file = new_log(app, &log_path, &header)?;
    log::info!(
        "run.step request_id={request_id} action=spawn binary={} source={}",
        Q(&start.binary.to_string_lossy()),
        start.source.as_str()
    );
    let run = Run {
        start,
        args: &args,
        run_id: request_id,
        trigger,
        log_path: &log_path,
        output_start: header.len() as u64,
    };
    let spawned = spawn(app, &run, &file);
    drop(file);
    let live = spawned.inspect_err(|_| {
        // When nothing ran, no log is left behind to look like a run (or like activity to
        // autopoll); a run that did start keeps its log beside its history row.
        if app.history().get(request_id).is_none() {
            let _ = std::fs::remove_file(&log_path);
            // Nor a token: no process holds it, and the id is not one being set up.
            app.registry().forget_token(request_id);
        }
    })?;
    if app.cfg().log_retention > 0 {
        let live_logs = app.registry().live().into_iter().map(|r| r.log_path);
        output::prune_logs(
            &app.cfg().log_dir,
            app.cfg().log_retention,
            &live_logs.collect(),
            &app.history().newest(crate::state::history::MAX_ROWS),
        );
    }
    let startup_return_code = startup_check(app, &run)?;
    Ok(Spawned {
        run_id: live.run_id,
        pid: live.pid,
        log_path,
        command,
        startup_return_code,
    })
}

/// Creates the run's log (never over an existing file or through a link) with its header.
/// The log directory may have been removed while Looper ran: it is made again.
fn new_log(app: &App, log_path: &Path, header: &str) -> Result<File, ApiError> {
    std::fs::create_dir_all(&app.cfg().log_dir)
        .and_then(|_| crate::os::logging::create_new_log(log_path))
        .and_then(|mut f| {
            f.write_all(header.as_bytes())?;
            Ok(f)
        })
        .map_err(|e| {
            ApiError::new(
                500,
                format!("cannot write the run log {}: {e}", log_path.display()),
            )
        })
}

/// Waits the startup check out (or until the run exits); an early non-zero exit is a `500`
/// quoting the log's last lines. The run's exit code when it ended meanwhile.
fn startup_check(app: &App, run: &Run) -> Result<Option<i32>, ApiError> {
    let check = run.start.startup_check;
    app.registry().setting_up(run.run_id, check);
    log::debug!(
        "run.step request_id={} action=startup_check seconds={:.3}",
        run.run_id,
        check.as_secs_f64()
    );
    let exit = app.registry().wait_exit(run.run_id, check, app.shutdown());
    let Some(exit) = exit else {
        return Ok(None);
    };
    if exit.return_code == 0 {
        return Ok(Some(0));
    }
    let tail: Vec<String> = output::tail(run.log_path, run.output_start, EARLY_EXIT_TAIL_LINES + 2)
        .lines()
        .filter(|l| !l.starts_with("# codex_exec_return_code="))
        .map(str::to_string)
        .collect();
    let tail = tail[tail.len().saturating_sub(EARLY_EXIT_TAIL_LINES)..].join("\n");
    Err(ApiError::new(
        500,
        format!(
            "codex exec exited early (rc={}, log_path={}, tail={})",
            exit.return_code,
            run.log_path.display(),
            tail.trim()
        ),
    ))
}

/// Everything one spawn needs.
struct Run<'a> {
    start: &'a Start,
    args: &'a [std::ffi::OsString],
    /// The run's id (its request's id).
    run_id: &'a str,
    trigger: Trigger,
    log_path: &'a Path,
    /// Where the output starts in the log (after the header).
    output_start: u64,
}

/// The command for a run: codex's arguments, the workspace, its output into its log, and
/// the run's environment (its id, Looper's address, its own token, its inbox; none of
/// Looper's secrets).
fn command(app: &App, run: &Run, file: &File) -> std::io::Result<Command> {
    let mut cmd = Command::new(&run.start.binary);
    cmd.args(run.args)
        .current_dir(&run.start.workspace)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file.try_clone()?)
        .env("LOOPER_RUN_ID", run.run_id)
        .env("LOOPER_URL", app.url());
    for secret in SECRET_VARS {
        cmd.env_remove(secret);
    }
    // The run gets a token of its own instead of the operator's: good for its hand-off only,
    // and under both names, so that a wrapper that sends $LOOPER_API_TOKEN (the original's
    // does) keeps working from inside a run.
    let token = app
        .registry()
        .new_run_token(run.run_id, &run.start.workspace);
    cmd.env("LOOPER_RUN_TOKEN", &token)
        .env("LOOPER_API_TOKEN", &token);
    // From its first instruction on, a hand-off from it waits for its setup, not "busy".
    app.registry()
        .setting_up(run.run_id, run.start.startup_check);
    if let Some(exe) = app.self_exe() {
        cmd.env("LOOPER_BIN", exe);
    }
    match crate::inbox::prepare(&run.start.workspace) {
        Ok(inbox) => {
            cmd.env("LOOPER_INBOX", &inbox.path);
            app.watch_inbox(inbox);
        }
        Err(e) => {
            cmd.env_remove("LOOPER_INBOX");
            log::warn!(
                "inbox.unavailable request_id={} workspace={} error={} hint=\"the run can hand off over HTTP only\"",
                run.run_id,
                Q(&run.start.workspace.to_string_lossy()),
                Q(&e.to_string())
            );
        }
    }
    Ok(cmd)
}

/// Spawns the child in its own session (and cgroup, where Looper can make one), writing its
/// combined output into its log itself, registers it, and hands it to its watcher.
fn spawn(app: &Arc<App>, run: &Run, file: &File) -> Result<LiveRun, ApiError> {
    let fail = |what: &str, e: std::io::Error| {
        ApiError::new(
            500,
            format!(
                "could not start {}: {what}: {e}",
                run.start.binary.display()
            ),
        )
    };
    let mut cmd = command(app, run, file).map_err(|e| fail("log file", e))?;
    // Its own cgroup where Looper can make one: whatever it starts stays inside.
    let group = app.cgroups().and_then(|c| {
        c.create(run.run_id)
            .inspect_err(|e| {
                log::warn!(
                    "cgroup.create_failed run_id={} error={} hint=\"this run is stopped by the /proc method only\"",
                    run.run_id,
                    Q(&e.to_string())
                )
            })
            .ok()
    });
    crate::os::signals::detach_on_spawn(&mut cmd, group.as_ref().map(|g| g.procs_fd()));
    let log = file.try_clone().map_err(|e| fail("log file", e))?;
    if app.shutdown().is_set() {
        return Err(ApiError::shutting_down());
    }
    // Read before the run can change it: a quick first commit is the run's own.
    let start = app.cfg().report_sources.at_start(&run.start.workspace);
    // Forked outside any lock; registered right after.
    let spawned = cmd.spawn();
    drop(cmd);
    let group_path = group.map(|g| g.path.clone());
    if let Some(path) = &group_path {
        match &spawned {
            Ok(_) => app.registry().add_group(Group {
                run_id: run.run_id.to_string(),
                workspace: run.start.workspace.clone(),
                path: path.clone(),
            }),
            Err(_) => {
                crate::os::cgroup::remove(path);
            }
        }
    }
    let child = spawned.map_err(|e| fail("spawn", e))?;
    let pid = child.id();
    let live = LiveRun {
        run_id: run.run_id.to_string(),
        request_id: run.run_id.to_string(),
        trigger: run.trigger,
        pid,
        // Our unreaped child: the pid cannot be anyone else's yet.
        start_time: procs::start_time(pid as i32),
        workspace: run.start.workspace.clone(),
        log_path: run.log_path.to_path_buf(),
        started_at: chrono::Local::now().to_rfc3339(),
        started: Instant::now(),
        prompt: run.start.prompt.clone(),
    };
    let binary_name = run.start.binary.file_name().and_then(|n| n.to_str());
    app.registry().register(live.clone(), binary_name);
    log::info!(
        "codex.exec.spawn request_id={} run_id={} pid={pid} log_path={}",
        run.run_id,
        run.run_id,
        Q(&run.log_path.to_string_lossy())
    );
    let watcher = Watcher {
        app: Arc::clone(app),
        run_id: run.run_id.to_string(),
        log_path: run.log_path.to_path_buf(),
        output_start: run.output_start,
        group_path,
        workspace: run.start.workspace.clone(),
        start,
    };
    let thread = std::thread::Builder::new()
        .name(format!("watch-{}", run.run_id))
        .spawn(move || watcher.watch(child, log));
    match thread {
        Ok(handle) => app.registry().attach_watcher(run.run_id, handle),
        Err(e) => {
            // No thread to watch it: stop and reap it ourselves rather than leave an orphan
            // or a zombie. Its log keeps what it wrote, with a trailer. (The closure, and
            // the child in it, went down with the failed spawn: the pid is still unreaped.)
            crate::os::signals::kill_and_reap_child(pid);
            let _ = crate::os::logging::open_append(run.log_path)
                .and_then(|mut f| f.write_all(output::trailer(-libc::SIGKILL).as_bytes()));
            app.registry().finish(run.run_id, -libc::SIGKILL, false);
            return Err(fail("watcher thread", e));
        }
    }
    // A shutdown that looked at the live runs before this one was registered would leave
    // it running: stop it here.
    if app.shutdown().is_set() {
        app.registry().signal(run.run_id, libc::SIGTERM);
        return Err(ApiError::shutting_down());
    }
    Ok(live)
}

/// What a run's watcher thread needs.
struct Watcher {
    app: Arc<App>,
    run_id: String,
    log_path: PathBuf,
    output_start: u64,
    group_path: Option<PathBuf>,
    workspace: PathBuf,
    /// What was read before it was spawned.
    start: crate::report::Start,
}

impl Watcher {
    /// Mirrors the run's output until it exits, reaps it, writes the trailer, and records
    /// its end: the registry, autopoll's policy, the announcements.
    fn watch(self, mut child: Child, mut log: File) {
        let app = &self.app;
        let (pid, rid) = (child.id(), &self.run_id);
        let mut start = self.start.clone();
        // The work tree's fingerprint asks git, which may be slow (a big repository) or made
        // to hang by the agent: read beside the watch, so that the run's exit is noticed at
        // once whatever git does.
        let tree = self.read_start_tree();
        log::info!(
            "run.start_state run_id={rid} head={} todo={}",
            start.head.as_deref().unwrap_or("-"),
            start
                .todo
                .map(|t| format!("{}/{}", t.open, t.open + t.done))
                .unwrap_or_else(|| "-".into())
        );
        app.registry().note_start(rid, start.clone());
        let mirror = app.cfg().mirror_output;
        let (return_code, bytes) =
            output::watch(&mut child, &self.log_path, self.output_start, mirror);
        if let Err(e) = log.write_all(output::trailer(return_code).as_bytes()) {
            log::error!(
                "codex.exec.output.write_failed request_id={rid} error={}",
                Q(&e.to_string())
            );
        }
        drop(log);
        log::info!(
            "codex.exec.exit request_id={rid} run_id={rid} pid={pid} return_code={return_code} bytes={bytes}"
        );
        // An empty cgroup goes; one that something escaped into waits for the next stop.
        if let Some(path) = &self.group_path {
            if !app.registry().release_group(path, false) {
                log::info!("cgroup.lingering run_id={rid} hint=\"a process the run left is stopped with the next stop\"");
            }
        }
        start.tree = tree.and_then(|t| t.join().ok()).flatten();
        let limit = (return_code != 0)
            .then(|| {
                let tail = output::tail(&self.log_path, self.output_start, 40);
                crate::rules::usage_limit::detect(&tail, chrono::Local::now())
            })
            .flatten();
        if let Some((mut ended, verdict)) = record_end(app, rid, return_code, limit.clone()) {
            // The end is recorded first (a hand-off waits for it); what the run did, which
            // asks git and reads files, completes the row after.
            ended.row.report = self.report(&start);
            app.history().record(ended.row.clone());
            let news = crate::autoloop::judge::after_run(app, &ended.row);
            crate::notify::announce::after_end(
                app,
                &ended,
                &verdict,
                news,
                limit.as_ref(),
                &self.log_path,
                self.output_start,
            );
        }
    }
}

impl Watcher {
    /// Starts reading the work tree's fingerprint at the run's start, for the stuck rule
    /// (bounded by its git budget); `None` when it is not wanted or no thread could start.
    fn read_start_tree(&self) -> Option<JoinHandle<Option<u64>>> {
        let sources = &self.app.cfg().report_sources;
        if !(sources.git && sources.fingerprints) {
            return None;
        }
        let (sources, workspace) = (sources.clone(), self.workspace.clone());
        std::thread::Builder::new()
            .name(format!("start-{}", self.run_id))
            .spawn(move || {
                let mut start = crate::report::Start::default();
                sources.tree_at_start(&workspace, &mut start);
                start.tree
            })
            .ok()
    }

    /// What the run did, its last message kept beside its log.
    fn report(&self, start: &crate::report::Start) -> crate::report::Report {
        let output = crate::report::Output::read(&self.log_path, self.output_start);
        let mut report = self
            .app
            .cfg()
            .report_sources
            .report(&self.workspace, &output, start);
        crate::report::keep_last_message(&mut report, &self.log_path);
        report
    }
}

/// Records run `run_id`'s end in the registry, then tells autopoll's policy, logging what it
/// decided. `None` when the run was not live (ended already).
pub fn record_end(
    app: &App,
    run_id: &str,
    return_code: i32,
    limit: Option<UsageLimit>,
) -> Option<(Ended, Verdict)> {
    let ended = app
        .registry()
        .finish(run_id, return_code, limit.is_some())?;
    let settings = Settings {
        idle_poll: app.cfg().idle_poll,
        usage_limit_margin: app.cfg().usage_limit_margin,
    };
    let end = RunEnd {
        return_code,
        elapsed: ended.elapsed,
        explained: ended.reason.is_some(),
        usage_limit: limit.clone(),
    };
    let mut verdict = app.policy().on_end(&end, settings, Instant::now());
    let ws = ended.row.workspace.clone();
    if let (Some(limit), Some((until, new))) = (&limit, verdict.pause.as_mut()) {
        let detail = format!(
            "codex hit its usage limit (run {run_id}); it resets at {}{}",
            crate::autoloop::judge::when(limit.resets_at),
            if limit.stated {
                ""
            } else {
                " (codex named no time: Looper's guess)"
            }
        );
        let hold = crate::state::loopstate::Hold::new(
            "paused",
            "usage_limit",
            detail,
            Some(*until),
            Some(run_id),
        );
        *new = app.loop_state().hold(&ws, hold);
        log::warn!(
            "codex.exec.usage_limit run_id={run_id} resets_at={} stated={} paused_until={}",
            limit.resets_at.to_rfc3339(),
            limit.stated,
            until.to_rfc3339()
        );
    }
    if let Some((crashes, backoff, _)) = verdict.backoff {
        log::warn!(
            "codex.exec.autopoll.backoff crashes={crashes} backoff_s={:.1}",
            backoff.as_secs_f64()
        );
    }
    if let Some(crashes) = verdict.reset_after {
        log::info!("codex.exec.autopoll.backoff_reset after_crashes={crashes}");
    }
    if return_code == 0 {
        // Someone's run worked (bought credits, or the reset came early): go on.
        let (held, _) = app.loop_state().hold_of(&ws, chrono::Local::now());
        if held.is_some_and(|h| h.reason == "usage_limit") {
            app.loop_state().resume(Some(&ws));
            log::info!("codex.exec.autopoll.resume reason=run_succeeded run_id={run_id}");
        }
    }
    Some((ended, verdict))
}
