//! Start-up and shutdown of the server: configuration, directories, the log, the listening
//! socket, the signal thread; at the end, stopping the runs Looper started.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, ConfigError};
use crate::model::StopReason;
use crate::os::logging::{self, Q};
use crate::state::app::App;

/// What the watcher threads get, after the runs were stopped, to write their trailers.
const TRAILER_WAIT: Duration = Duration::from_secs(1);

/// Why the server could not start (exit code 2 for configuration, 1 for the rest).
#[derive(Debug)]
pub enum StartError {
    Config(ConfigError),
    Io(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "configuration error: {e}"),
            StartError::Io(e) => f.write_str(e),
        }
    }
}

/// The process environment as a map (values that are not UTF-8 are left out).
pub fn env_map() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Creates the log directories (mode 0700, as every directory Looper makes for itself),
/// proves they are writable, and refuses state that is not Looper's own: a directory, or a
/// file Looper keeps there, that another user owns or that group or others may write (a
/// directory made first by someone else under `/tmp` would let them forge the loop's
/// state).
fn prepare_dirs(cfg: &Config) -> Result<(), StartError> {
    let cannot = |what: &str, path: &Path, e: std::io::Error| {
        StartError::Io(format!("{what}: cannot write to {}: {e}", path.display()))
    };
    let private = |path: &Path| {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
    };
    private(&cfg.log_dir).map_err(|e| cannot("CODEX_EXEC_LOG_DIR", &cfg.log_dir, e))?;
    own_state("CODEX_EXEC_LOG_DIR", &cfg.log_dir, true)?;
    safe_ancestors("CODEX_EXEC_LOG_DIR", &cfg.log_dir, 1)?;
    for file in [
        crate::state::history::FILE_NAME,
        crate::state::loopfile::FILE_NAME,
        crate::state::account::FILE_NAME,
        LOCK_FILE,
    ] {
        own_state("CODEX_EXEC_LOG_DIR", &cfg.log_dir.join(file), false)?;
    }
    let probe = cfg
        .log_dir
        .join(format!(".looper-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| cannot("CODEX_EXEC_LOG_DIR", &cfg.log_dir, e))?;
    // The server log may live in a shared directory (`/var/log`): the file is what must be
    // Looper's.
    if let Some(parent) = cfg.server_log_path.parent() {
        private(parent).map_err(|e| cannot("LOOPER_SERVER_LOG_PATH", parent, e))?;
        safe_ancestors("LOOPER_SERVER_LOG_PATH", parent, 0)?;
    }
    own_state("LOOPER_SERVER_LOG_PATH", &cfg.server_log_path, false)?;
    Ok(())
}

/// The lock of the state directory (`looper.lock`): a second Looper on the same
/// `CODEX_EXEC_LOG_DIR` would write the same history and loop state over this one's.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    let path = dir.join(LOCK_FILE);
    match crate::os::sys::lock_file(&path) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(holder)) => Err(StartError::Io(format!(
            "CODEX_EXEC_LOG_DIR={} is in use by another Looper (pid {}): it keeps its run history and loop state there. Give each Looper its own CODEX_EXEC_LOG_DIR (and LOOPER_PORT)",
            dir.display(),
            if holder.is_empty() { "?" } else { &holder }
        ))),
        Err(e) => Err(StartError::Io(format!(
            "CODEX_EXEC_LOG_DIR: cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// The file whose lock says a Looper uses the state directory.
pub const LOCK_FILE: &str = "looper.lock";

/// Refuses a directory whose parents let another user swap it: every directory above it
/// (links resolved; `skip` 1 leaves out `dir` itself, which is checked as Looper's own)
/// belongs to root or to Looper's user, and one that others may write has the sticky bit
/// (as `/tmp` does), so that nobody else can rename what lies in it.
fn safe_ancestors(setting: &str, dir: &Path, skip: usize) -> Result<(), StartError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(real) = dir.canonicalize() else {
        return Ok(());
    };
    let me = crate::os::procs::current_uid();
    for above in real.ancestors().skip(skip) {
        let Ok(meta) = std::fs::metadata(above) else {
            continue;
        };
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        if !owner_ok || (others_write && !sticky) {
            let why = if owner_ok {
                format!(
                    "may be written by group or others (mode {:o})",
                    meta.mode() & 0o7777
                )
            } else {
                format!("belongs to user {}", meta.uid())
            };
            return Err(StartError::Config(ConfigError(format!(
                "{setting}: {} lies in {}, which {why}: someone else could swap it for a directory of theirs. Give Looper a directory whose parents are root's or its own",
                dir.display(),
                above.display()
            ))));
        }
    }
    Ok(())
}

/// Refuses `path` (set by `setting`) unless it is Looper's own: owned by its user, writable
/// by nobody else, a directory (`dir`) or a regular file that is no link. A file that does
/// not exist yet is fine.
fn own_state(setting: &str, path: &Path, dir: bool) -> Result<(), StartError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        StartError::Config(ConfigError(format!(
            "{setting}: {} {why}: another user could forge or read Looper's state there. Give Looper a directory of its own (owned by its user, mode 0700)",
            path.display()
        )))
    };
    // A directory the setting names may be reached through a link (the operator's); a file
    // Looper keeps there may not.
    let meta = if dir {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir => return Ok(()),
        Err(e) => return Err(refuse(format!("cannot be examined ({e})"))),
    };
    let me = crate::os::procs::current_uid();
    if meta.uid() != me {
        return Err(refuse(format!(
            "belongs to user {}, not to Looper's user ({me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "may be written by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    let kind_ok = if dir { meta.is_dir() } else { meta.is_file() };
    if !kind_ok {
        let what = if dir { "a directory" } else { "a regular file" };
        return Err(refuse(format!("is not {what}")));
    }
    Ok(())
}

/// `host:port` for binding, with IPv6 literals in brackets.
fn socket_text(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The address children use to call back: a wildcard bind is reached on loopback.
fn callback_host(host: &str) -> String {
    match host {
        "0.0.0.0" | "" => "127.0.0.1".to_string(),
        "::" | "[::]" => "[::1]".to_string(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_string(),
    }
}

/// Binds the listening socket. "Address in use" says what to do about it.
pub fn listen(addr: &str) -> Result<std::net::TcpListener, StartError> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another Looper? `looper status` tells; or choose another LOOPER_PORT)"
        } else {
            ""
        };
        StartError::Io(format!(
            "cannot listen on {addr} (LOOPER_HOST/LOOPER_PORT): {e}{hint}"
        ))
    })
}

/// Runs the server until SIGTERM/SIGINT; `Err` when it cannot start.
pub fn run(env: &HashMap<String, String>) -> Result<(), StartError> {
    // Before any thread: glibc gives each thread that allocates an arena of its own (up to
    // eight a core), and what a run's short-lived threads freed there stays; two arenas,
    // trimmed after each run's end, keep a long-lived Looper near the memory it started
    // with (see BENCHMARKS.md).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) with a documented parameter, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| StartError::Io(format!("cannot read the working directory: {e}")))?;
    let cfg = match Config::from_env(env, &cwd) {
        Ok(cfg) => cfg,
        Err(e) => {
            // The log is not open yet: say the likely typos on stderr, next to the error.
            for name in crate::config::unknown_vars(env) {
                eprintln!("looper: warning: {name} is not a Looper variable; a typo?");
            }
            return Err(StartError::Config(e));
        }
    };
    prepare_dirs(&cfg)?;
    // Codex's sandbox lets the agent write /tmp: state kept there is the agent's to swap.
    let tmp = [
        Path::new("/tmp"),
        Path::new("/var/tmp"),
        &std::env::temp_dir(),
    ];
    let state_in_tmp = tmp.iter().any(|t| cfg.log_dir.starts_with(t));
    // Held until the process ends: one Looper per state directory.
    let _state_lock = lock_state_dir(&cfg.log_dir)?;
    logging::init(
        &cfg.server_log_path,
        cfg.log_level,
        cfg.server_log_max_bytes,
    )
    .map_err(|e| {
        StartError::Io(format!(
            "LOOPER_SERVER_LOG_PATH: cannot write to {}: {e}",
            cfg.server_log_path.display()
        ))
    })?;
    let listener = Arc::new(listen(&socket_text(&cfg.host, cfg.port))?);
    crate::os::signals::ignore_file_size_signal();
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(cfg.port);
    let url = format!("http://{}:{port}/run", callback_host(&cfg.host));
    // No other process of this user may read our memory or environment (the token, the
    // Zulip key): an agent's leftovers run as this user too.
    if let Err(e) = crate::os::sys::make_undumpable() {
        log::warn!("server.undumpable_failed error={}", Q(&e.to_string()));
    }
    if state_in_tmp {
        log::warn!(
            "config.state_in_tmp log_dir={} hint=\"codex's sandbox lets the agent write here (its writable roots include /tmp): keep CODEX_EXEC_LOG_DIR elsewhere (the default is ~/.local/state/looper/logs)\"",
            Q(&cfg.log_dir.to_string_lossy())
        );
    }
    let cgroups = match crate::os::cgroup::Cgroups::setup() {
        Ok(c) => Some(c),
        Err(why) => {
            log::info!(
                "cgroup.unavailable reason={} hint=\"runs are stopped through /proc: a process that leaves a run's session and environment can escape a stop; cgroups need root or a unit with Delegate=yes\"",
                Q(&why)
            );
            None
        }
    };
    let (app, corrupt) = App::new(cfg, url, env.get("PATH").cloned(), cgroups)
        .map_err(|e| StartError::Config(ConfigError(format!("CODEX_EXEC_LOG_DIR: {e}"))))?;
    let app = Arc::new(app);
    // A state file that was no state of Looper's is kept aside, and every loop waits for
    // the operator: an empty state would restart finished loops and reset budgets.
    for (aside, why) in &corrupt {
        let name = aside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = name.split(".corrupt-").next().unwrap_or_default();
        app.holds().hold_all(crate::model::Hold::new(
            crate::model::HoldState::Paused,
            crate::model::HoldReason::StateLost,
            format!(
                "{name} could not be read at start ({why}) and was kept as {}: pauses, finishes, budgets or queued messages may be lost. Autopoll starts nothing and hand-offs are refused until the operator resumes (looper resume)",
                aside.display()
            ),
            None,
            None,
        ));
    }
    app.set_listener(&listener);
    // git (and node) found once, outside every workspace known now, and git's jail probed.
    let workspaces: Vec<std::path::PathBuf> = std::iter::once(app.cfg().workspace.clone())
        .chain(app.history().recent_workspaces(64))
        .collect();
    let helpers =
        crate::os::jail::install(crate::os::jail::Helpers::find(app.path_var(), &workspaces));
    // Signal handling is in place before anyone can learn that we are up.
    start_signal_thread(&app)?;

    for name in crate::config::unknown_vars(env) {
        log::warn!("config.unknown_variable name={name} hint=\"not a Looper variable; a typo?\"");
    }
    if !app.cfg().workspace.is_dir() {
        log::warn!(
            "config.workspace_missing path={} hint=\"runs without a workspace of their own will fail until it exists (LOOPER_WORKSPACE)\"",
            Q(&app.cfg().workspace.to_string_lossy())
        );
    }
    // What the first trigger would find out, said now.
    let found = crate::run::codex::resolve(
        None,
        app.cfg().codex_exec_binary.as_deref(),
        &app.cfg().cwd,
        app.own_dir(),
        app.path_var(),
        &app.cfg().workspace,
    );
    if let Err(name) = found {
        let tried = match &app.cfg().codex_exec_binary {
            Some(b) => format!("CODEX_EXEC_BINARY={b}"),
            None => format!(
                "{} beside looper, and codex on PATH",
                crate::run::codex::LOCAL_CANDIDATES.join(", ")
            ),
        };
        let hint = match &app.cfg().codex_exec_binary {
            Some(_) => "fix CODEX_EXEC_BINARY (a path to an executable, or a name on PATH), or unset it to use codex from PATH",
            None => "install codex, put it on PATH (under systemd: a PATH line in the unit's env file), or set CODEX_EXEC_BINARY",
        };
        log::warn!(
            "config.codex_missing name={} tried={} hint={}",
            Q(&name),
            Q(&tried),
            Q(hint)
        );
    }
    if let Some(file) = &app.cfg().prompt_file {
        let limit = crate::run::codex::MAX_PROMPT_BYTES as u64 + 1;
        if let Err(e) = crate::os::paths::read_named_text(file, limit) {
            log::warn!(
                "config.prompt_file_unreadable path={} error={} hint=\"runs without a prompt of their own will fail until LOOPER_PROMPT_FILE can be read\"",
                Q(&file.to_string_lossy()),
                Q(&e.to_string())
            );
        }
        let ws = app
            .cfg()
            .workspace
            .canonicalize()
            .unwrap_or(app.cfg().workspace.clone());
        if file.canonicalize().is_ok_and(|f| f.starts_with(&ws)) {
            log::warn!(
                "config.prompt_file_in_workspace path={} hint=\"the agent can rewrite the prompt of every run that names none; keep LOOPER_PROMPT_FILE outside the workspace if that is not meant\"",
                Q(&file.to_string_lossy())
            );
        }
    }
    let script = app.cfg().zulip_script.as_deref();
    for w in &app.cfg().zulip.warnings {
        if script.is_none() || w != crate::zulip::NOT_CONFIGURED {
            log::warn!("zulip.config.warning message={}", Q(w));
        }
    }
    let zulip = match (script, &app.cfg().zulip.credentials) {
        (Some(script), _) => format!("script {}", Q(script)),
        (None, Some(c)) => format!("{} {}", Q(&c.source), app.cfg().zulip.describe_target()),
        (None, None) => "off".to_string(),
    };
    let workspace = app
        .cfg()
        .workspace
        .canonicalize()
        .unwrap_or(app.cfg().workspace.clone());
    for (setting, dir) in app.cfg().own_dirs() {
        if dir
            .canonicalize()
            .unwrap_or(dir.clone())
            .starts_with(&workspace)
        {
            log::warn!(
                "config.own_files_in_workspace setting={setting} path={} workspace={} hint=\"runs in this workspace are refused: the agent could rewrite Looper's files; move {setting} out of it\"",
                Q(&dir.to_string_lossy()),
                Q(&workspace.to_string_lossy())
            );
        }
    }
    log::info!(
        "server.start version={} pid={} host={} port={port} url={} log_dir={} server_log={} workspace={} auth={} zulip={zulip} stop_scope={} stop_method={} helper_jail={}{} helper_seccomp={} git={}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        Q(&app.cfg().host),
        Q(app.url()),
        Q(&app.cfg().log_dir.to_string_lossy()),
        Q(&app.cfg().server_log_path.to_string_lossy()),
        Q(&app.cfg().workspace.to_string_lossy()),
        if app.cfg().api_token.is_some() { "token" } else { "none" },
        app.cfg().stop_scope.as_str(),
        app.stop_method(),
        helpers.method.as_str(),
        match helpers.method {
            crate::os::jail::Method::Landlock(abi) => format!(" landlock_abi={abi}"),
            crate::os::jail::Method::Environment => String::new(),
        },
        if crate::os::seccomp::available() { "on" } else { "off" },
        Q(&helpers
            .git
            .as_ref()
            .map_or("none".into(), |g| g.path.to_string_lossy().into_owned())),
    );

    // Runs an earlier Looper started: the live ones are adopted (watched as any run), the
    // ended ones get their rows completed.
    crate::run::watch::take_over(&app);
    // Hand-offs of runs started before this start are picked up too.
    for ws in std::iter::once(app.cfg().workspace.clone()).chain(app.history().recent_workspaces(8))
    {
        if !crate::inbox::dir_for(&ws).exists() {
            continue;
        }
        match crate::inbox::existing(&ws) {
            Ok(inbox) => app.watch_inbox(inbox),
            Err(e) => log::warn!(
                "inbox.refused workspace={} error={}",
                Q(&ws.to_string_lossy()),
                Q(&e.to_string())
            ),
        }
    }
    crate::inbox::start(&app);
    // Announcements an earlier Looper could not deliver.
    crate::notify::outbox::start(&app);
    let autopoll = crate::autopoll::start(&app);
    crate::http::serve(&app, &listener, app.cfg().http);
    if let Some(handle) = autopoll {
        let _ = handle.join();
    }
    shutdown(&app);
    Ok(())
}

/// The first SIGTERM/SIGINT starts a graceful shutdown; a second one exits at once, once the
/// log is written out (a stalled stderr is not waited for).
fn start_signal_thread(app: &Arc<App>) -> Result<(), StartError> {
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| StartError::Io(format!("cannot install signal handlers: {e}")))?;
    let app = Arc::clone(app);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
                    log::info!("server.signal signal={sig} action=shutdown");
                    app.begin_shutdown();
                } else {
                    log::warn!("server.signal signal={sig} action=exit_now");
                    crate::os::signals::end_helpers();
                    logging::flush();
                    std::process::exit(1);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| StartError::Io(format!("cannot start the signal thread: {e}")))
}

/// Stops the runs this server started (and everything they started), then gives their
/// watcher threads a moment to write trailers, and triggers in flight a moment to answer.
fn shutdown(app: &App) {
    let ids: HashSet<String> = app
        .registry()
        .live()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    log::info!("server.stop.start runs={}", ids.len());
    if !ids.is_empty() {
        if let Err(e) = crate::run::stop::stop_runs(
            app,
            None,
            Some(&ids),
            &app.cfg().workspace,
            "shutdown",
            StopReason::Shutdown,
        ) {
            log::error!("server.stop.failed error={}", Q(&e.message));
        }
    }
    if !app.registry().wait_all_ended(TRAILER_WAIT) {
        log::warn!("server.stop.trailers_pending");
    }
    // Whatever escaped into the cgroups of runs that ended earlier goes too.
    for group in app.registry().groups().all() {
        app.registry().groups().release(&group.path, true);
    }
    if let Some(c) = app.cgroups() {
        c.remove();
    }
    // Triggers still in flight are refused at their next step: let them answer (and log
    // their end) before the last line.
    let deadline = std::time::Instant::now() + TRAILER_WAIT;
    while app.inflight().load(std::sync::atomic::Ordering::Acquire) > 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // No helper outlives Looper: a git still blocked (a FIFO in its configuration) goes.
    crate::os::signals::end_helpers();
    // What a failed write left unsaved gets its last chance.
    if !app.save_unsaved() {
        log::error!(
            "server.stop.unsaved files={} hint=\"the disk is full or read-only: what the log says was lost\"",
            Q(&app.unsaved().join(","))
        );
    }
    log::info!("server.stop.done");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(socket_text("::1", 80), "[::1]:80");
        assert_eq!(socket_text("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(callback_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(callback_host("::"), "[::1]");
        assert_eq!(callback_host("::1"), "[::1]");
        assert_eq!(callback_host("localhost"), "localhost");
    }
}
