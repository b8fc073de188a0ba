//! Starting a run: its log with the header, the child (its own session, its own cgroup
//! where there is one, the run's environment), its registration with what it starts from,
//! its watcher ([`crate::run::watch`], the owner of its end), and the startup check.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Refusal, Why};
use crate::model::{Stamp, Trigger};
use crate::os::logging::Q;
use crate::os::procs;
use crate::run::codex;
use crate::run::output;
use crate::run::watch::{Watched, Watcher};
use crate::state::app::App;
use crate::state::registry::groups::Group;
use crate::state::registry::LiveRun;

/// Variables of Looper's that never reach a run: the Zulip credentials.
const SECRET_VARS: [&str; 3] = ["ZULIP_BOT_API_KEY", "ZULIP_BOT_EMAIL", "ZULIP_SITE"];

/// Lines of the run log quoted in an `exited early` error.
const EARLY_EXIT_TAIL_LINES: usize = 12;

/// A run to start, as the pipeline planned it.
pub struct Launch {
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

/// A run's log with its header, made before anything is announced or stopped: a full
/// disk refuses the run before it has any effect. Removed again unless its run started.
pub struct RunLog {
    path: PathBuf,
    file: File,
    header_len: u64,
    command: String,
    args: Vec<std::ffi::OsString>,
    /// Its run started (or may have): the log stays.
    kept: bool,
}

impl RunLog {
    /// Makes run `request_id`'s log for `start`.
    pub fn create(app: &App, start: &Launch, request_id: &str) -> Result<RunLog, Refusal> {
        let args = codex::exec_args(&start.workspace, &start.prompt);
        let command = codex::command_line(&start.binary, &args);
        let path = app
            .cfg()
            .log_dir
            .join(output::log_file_name(chrono::Local::now(), request_id));
        let header = output::header(request_id, &start.workspace, &command);
        let file = new_log(app, &path, &header)?;
        Ok(RunLog {
            path,
            file,
            header_len: header.len() as u64,
            command,
            args,
            kept: false,
        })
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        // When nothing ran, no log is left behind to look like a run (or like activity to
        // autopoll).
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The delay, the spawn and the startup check of one run, into `log` (made before the
/// announcement); the caller holds the run guard.
pub fn launch(
    app: &Arc<App>,
    start: &Launch,
    request_id: &str,
    trigger: Trigger,
    mut log: RunLog,
) -> Result<Spawned, Refusal> {
    if !start.delay.is_zero() {
        log::info!(
            "run.step request_id={request_id} action=delay seconds={:.3}",
            start.delay.as_secs_f64()
        );
        if app.shutdown().wait(start.delay) {
            return Err(Refusal::shutting_down());
        }
    }
    let (log_path, command) = (log.path.clone(), log.command.clone());
    log::info!(
        "run.step request_id={request_id} action=spawn binary={} source={}",
        Q(&start.binary.to_string_lossy()),
        start.source.as_str()
    );
    let args = std::mem::take(&mut log.args);
    let run = Run {
        start,
        args: &args,
        run_id: request_id,
        trigger,
        log_path: &log_path,
        output_start: log.header_len,
    };
    let spawned = spawn(app, &run, &log.file);
    // A run that did start keeps its log beside its history row.
    log.kept = app.history().get(request_id).is_some();
    drop(log);
    let live = spawned.inspect_err(|_| {
        if app.history().get(request_id).is_none() {
            // No token either: no process holds it, and the id is not one being set up.
            app.registry().tokens().forget(request_id);
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
fn new_log(app: &App, log_path: &Path, header: &str) -> Result<File, Refusal> {
    std::fs::create_dir_all(&app.cfg().log_dir)
        .and_then(|_| crate::os::logging::create_new_log(log_path))
        .and_then(|mut f| match f.write_all(header.as_bytes()) {
            Ok(()) => Ok(f),
            Err(e) => {
                // Made, but no room for its header: gone again.
                let _ = std::fs::remove_file(log_path);
                Err(e)
            }
        })
        .map_err(|e| {
            // A full disk is no fault of Looper's: nothing was done, try again with room.
            let full = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
            Refusal::new(
                if full { Why::CannotSave } else { Why::Broken },
                format!(
                    "cannot write the run log {}: {e}; nothing was announced or stopped",
                    log_path.display()
                ),
            )
        })
}

/// Waits the startup check out (or until the run exits); an early non-zero exit is a `500`
/// quoting the log's last lines. The run's exit code when it ended meanwhile.
fn startup_check(app: &App, run: &Run) -> Result<Option<i32>, Refusal> {
    let check = run.start.startup_check;
    app.registry().guard().setting_up(run.run_id, check);
    log::debug!(
        "run.step request_id={} action=startup_check seconds={:.3}",
        run.run_id,
        check.as_secs_f64()
    );
    let exit = app.registry().wait_exit(run.run_id, check, app.shutdown());
    let Some(exit) = exit else {
        return Ok(None);
    };
    let Some(code) = exit.return_code.filter(|c| *c != 0) else {
        return Ok(exit.return_code);
    };
    let tail: Vec<String> = output::tail(run.log_path, run.output_start, EARLY_EXIT_TAIL_LINES + 2)
        .lines()
        .filter(|l| !l.starts_with("# codex_exec_return_code="))
        .map(str::to_string)
        .collect();
    let tail = tail[tail.len().saturating_sub(EARLY_EXIT_TAIL_LINES)..].join("\n");
    Err(Refusal::new(
        Why::Broken,
        format!(
            "codex exec exited early (rc={code}, log_path={}, tail={})",
            run.log_path.display(),
            tail.trim()
        ),
    ))
}

/// Everything one spawn needs.
struct Run<'a> {
    start: &'a Launch,
    args: &'a [std::ffi::OsString],
    /// The run's id (its request's id).
    run_id: &'a str,
    trigger: Trigger,
    log_path: &'a Path,
    /// Where the output starts in the log (after the header).
    output_start: u64,
}

/// The command for a run: codex's arguments, the workspace, its output into its log, and
/// the run's environment (its id, Looper's address, its own `token`, its inbox; none of
/// Looper's secrets). Builds only: it changes nothing.
fn command(
    app: &App,
    run: &Run,
    file: &File,
    token: &str,
    inbox: Option<&Path>,
) -> std::io::Result<Command> {
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
    cmd.env("LOOPER_RUN_TOKEN", token)
        .env("LOOPER_API_TOKEN", token);
    if let Some(exe) = app.self_exe() {
        cmd.env("LOOPER_BIN", exe);
    }
    match inbox {
        Some(path) => cmd.env("LOOPER_INBOX", path),
        None => cmd.env_remove("LOOPER_INBOX"),
    };
    Ok(cmd)
}

/// The run's inbox, made ready and watched from now on; `None` (said in the log) when the
/// workspace's `.looper` cannot be Looper's.
fn inbox_for(app: &App, run: &Run) -> Option<std::path::PathBuf> {
    match crate::inbox::prepare(&run.start.workspace) {
        Ok(inbox) => {
            let path = inbox.path.clone();
            app.watch_inbox(inbox);
            Some(path)
        }
        Err(e) => {
            log::warn!(
                "inbox.unavailable request_id={} workspace={} error={} hint=\"the run can hand off over HTTP only\"",
                run.run_id,
                Q(&run.start.workspace.to_string_lossy()),
                Q(&e.to_string())
            );
            None
        }
    }
}

/// Spawns the child in its own session (and cgroup, where Looper can make one), writing its
/// combined output into its log itself, registers it with what it starts from, and hands it
/// to its watcher.
fn spawn(app: &Arc<App>, run: &Run, file: &File) -> Result<LiveRun, Refusal> {
    let fail = |what: &str, e: std::io::Error| {
        Refusal::new(
            Why::Broken,
            format!(
                "could not start {}: {what}: {e}",
                run.start.binary.display()
            ),
        )
    };
    // Its token first: from its first instruction on, a hand-off from it is known, and
    // waits for its setup instead of being refused as busy.
    let token = app
        .registry()
        .new_run_token(run.run_id, &run.start.workspace);
    app.registry()
        .guard()
        .setting_up(run.run_id, run.start.startup_check);
    let inbox = inbox_for(app, run);
    let mut cmd =
        command(app, run, file, &token, inbox.as_deref()).map_err(|e| fail("log file", e))?;
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
        return Err(Refusal::shutting_down());
    }
    // Read before the run can change it: a quick first commit is the run's own.
    let start = app.cfg().report_sources.at_start(&run.start.workspace);
    let mut live = LiveRun {
        run_id: run.run_id.to_string(),
        request_id: run.run_id.to_string(),
        trigger: run.trigger,
        pid: 0,
        start_time: None,
        workspace: run.start.workspace.clone(),
        log_path: run.log_path.to_path_buf(),
        started_at: Stamp::now(),
        started: Instant::now(),
        prompt: Some(run.start.prompt.clone()),
        adopted: false,
    };
    // Its row first: a run never lives on without one (a Looper killed right after the
    // spawn leaves a row whose process the next one finds by its LOOPER_RUN_ID).
    app.registry().record_before_spawn(&live, start.report());
    // Forked outside any lock; registered right after.
    let spawned = cmd.spawn();
    drop(cmd);
    let group_path = group.map(|g| g.path.clone());
    if let Some(path) = &group_path {
        match &spawned {
            Ok(_) => app.registry().groups().add(Group {
                run_id: run.run_id.to_string(),
                workspace: run.start.workspace.clone(),
                path: path.clone(),
            }),
            Err(_) => {
                crate::os::cgroup::remove(path);
            }
        }
    }
    let child = spawned.map_err(|e| {
        app.history().discard(run.run_id);
        fail("spawn", e)
    })?;
    let pid = child.id();
    live.pid = pid;
    // Our unreaped child: the pid cannot be anyone else's yet.
    live.start_time = procs::start_time(pid as i32);
    let binary_name = run.start.binary.file_name().and_then(|n| n.to_str());
    app.registry()
        .register(live.clone(), binary_name, start.report());
    log::info!(
        "codex.exec.spawn request_id={} run_id={} pid={pid} log_path={}",
        run.run_id,
        run.run_id,
        Q(&run.log_path.to_string_lossy())
    );
    let watcher = Watcher {
        app: Arc::clone(app),
        run: live.clone(),
        output_start: run.output_start,
        group_path,
        start,
    };
    if let Err(e) = watcher.start(Watched::Child { child, log }) {
        return Err(fail("watcher thread", e));
    }
    // A shutdown that looked at the live runs before this one was registered would leave
    // it running: stop it here.
    if app.shutdown().is_set() {
        app.registry().signal(run.run_id, libc::SIGTERM);
        return Err(Refusal::shutting_down());
    }
    Ok(live)
}
