//! Every environment variable Looper reads: parsed, validated and given its default in one
//! place, from a plain map so that tests need no real environment. A bad value stops the
//! server at start with a message that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

pub use crate::os::paths::{expand_home, normalize};
use crate::zulip::Zulip;

use crate::model::MAX_SECONDS;

/// Every variable the parser knows, for `--help` and for the README check.
pub const KNOWN_VARS: &[&str] = &[
    "LOOPER_HOST",
    "LOOPER_PORT",
    "LOOPER_API_TOKEN",
    "LOOPER_LOG_LEVEL",
    "LOOPER_SERVER_LOG_PATH",
    "CODEX_EXEC_BINARY",
    "CODEX_EXEC_DELAY_SECONDS",
    "CODEX_EXEC_STARTUP_CHECK_SECONDS",
    "CODEX_EXEC_LOG_DIR",
    "LOOPER_AUTO_START_WHEN_IDLE",
    "LOOPER_IDLE_POLL_SECONDS",
    "LOOPER_IDLE_LOG_STALE_SECONDS",
    "LOOPER_WORKSPACE",
    "LOOPER_DEFAULT_PROMPT",
    "LOOPER_PROMPT_FILE",
    "LOOPER_STOP_GRACE_SECONDS",
    "LOOPER_CODEX_PROCESS_NAMES",
    "LOOPER_MIRROR_CODEX_OUTPUT",
    "LOOPER_LOG_RETENTION",
    "LOOPER_HUNG_RUN_SECONDS",
    "LOOPER_NOTIFY_ON_EXIT",
    "LOOPER_ALLOW_UNAUTHENTICATED",
    "LOOPER_REQUIRE_GIT",
    "LOOPER_SERVER_LOG_MAX_BYTES",
    "LOOPER_STOP_SCOPE",
    "LOOPER_USAGE_LIMIT_MARGIN_SECONDS",
    "LOOPER_ALLOWED_HOSTS",
    "LOOPER_ZULIP_SCRIPT",
    "ZULIP_SITE",
    "ZULIP_BOT_EMAIL",
    "ZULIP_BOT_API_KEY",
    "ZULIPRC_PATH",
    "ZULIP_PROFILE",
    "ZULIP_MESSAGE_TYPE",
    "ZULIP_STREAM",
    "ZULIP_TOPIC",
    "ZULIP_TO",
    "LOOPER_ZULIP_TIMEOUT_SECONDS",
    "LOOPER_HTTP_HEAD_TIMEOUT_SECONDS",
    "LOOPER_HTTP_BODY_TIMEOUT_SECONDS",
    "LOOPER_HTTP_IDLE_TIMEOUT_SECONDS",
    "LOOPER_HTTP_LINGER_SECONDS",
    "LOOPER_TODO_FILE",
    "LOOPER_GIT_STATE",
    "LOOPER_RUN_REPORTS",
    "LOOPER_NO_PROGRESS_RUNS",
    "LOOPER_MAX_RUNS_PER_DAY",
    "LOOPER_MAX_TOKENS_PER_DAY",
    "LOOPER_PAUSE_AT_PERCENT",
    "LOOPER_QUOTA_PACE",
    "LOOPER_QUOTA_RESERVE_PERCENT",
    "LOOPER_QUOTA_WORK_HOURS",
    "LOOPER_QUOTA_WORK_RESERVE_PERCENT",
    "CODEX_HOME",
];

/// Which live runs a trigger stops (`LOOPER_STOP_SCOPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopScope {
    /// Every live `codex exec` of the user (the original's behaviour).
    All,
    /// Only runs whose workspace is the new run's, with everything they started.
    Workspace,
    /// Only the runs this Looper started.
    Own,
}

impl StopScope {
    fn parse(raw: &str) -> Option<StopScope> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "all" => Some(StopScope::All),
            "workspace" => Some(StopScope::Workspace),
            "own" => Some(StopScope::Own),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StopScope::All => "all",
            StopScope::Workspace => "workspace",
            StopScope::Own => "own",
        }
    }
}

/// The validated configuration of one server.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// `None` when unset or empty: `/run` is open to anyone who can reach the port.
    pub api_token: Option<String>,
    pub log_level: LevelFilter,
    pub log_dir: PathBuf,
    pub server_log_path: PathBuf,
    /// Rotate the server log before it grows past this many bytes (`0`: never).
    pub server_log_max_bytes: u64,
    pub codex_exec_binary: Option<String>,
    pub exec_delay: Duration,
    pub startup_check: Duration,
    pub autopoll: bool,
    pub idle_poll: Duration,
    pub idle_stale: Duration,
    pub workspace: PathBuf,
    pub default_prompt: Option<String>,
    pub prompt_file: Option<PathBuf>,
    pub stop_grace: Duration,
    /// How long HTTP clients may take (`LOOPER_HTTP_*_SECONDS`; the defaults suit people,
    /// smaller values let tests of slow clients end sooner).
    pub http: crate::http::Limits,
    /// `None`: the defaults (`codex`, `codex.js`, `codex-<target-triple>`).
    pub process_names: Option<Vec<String>>,
    pub mirror_output: bool,
    pub log_retention: usize,
    pub hung_run: Duration,
    pub notify_on_exit: bool,
    /// Which runs a trigger stops.
    pub stop_scope: StopScope,
    /// After codex's usage limit, how long past the reset autopoll waits.
    pub usage_limit_margin: Duration,
    /// Refuse workspaces outside a git work tree before any effect (codex refuses them).
    pub require_git: bool,
    /// Whether `LOOPER_WORKSPACE` was given (autopoll starts runs in no directory nobody
    /// named).
    pub workspace_set: bool,
    /// `HOME`, for `~` in a request's workspace.
    pub home: Option<String>,
    /// The directory relative paths of the operator's are taken from.
    pub cwd: PathBuf,
    /// Names a request's `Host` may carry besides the bound address, `localhost` and
    /// loopback addresses (`LOOPER_ALLOWED_HOSTS`): anything else is refused, so that a web
    /// page that rebinds a name of its own to 127.0.0.1 reads nothing.
    pub allowed_hosts: Vec<String>,
    /// A program that announces instead of the built-in Zulip client
    /// (`LOOPER_ZULIP_SCRIPT`; a request's `zulip_script_path` wins, from the operator).
    pub zulip_script: Option<String>,
    pub zulip: Zulip,
    /// Where a run's report is read from: the TODO file (`LOOPER_TODO_FILE`), git
    /// (`LOOPER_GIT_STATE`), codex's session files (`CODEX_HOME`).
    pub report_sources: crate::report::Sources,
    /// Whether Zulip hears how runs ended (`LOOPER_RUN_REPORTS`).
    pub run_reports: bool,
    /// When the loop stops by itself: stuck, over budget.
    pub rules: crate::rules::stop::Rules,
}

impl Config {
    /// Looper's own directories, by the setting that names them: they must never lie
    /// inside a workspace Looper runs (the agent would rewrite them).
    pub fn own_dirs(&self) -> Vec<(&'static str, PathBuf)> {
        let mut dirs = vec![("CODEX_EXEC_LOG_DIR", self.log_dir.clone())];
        if let Some(parent) = self.server_log_path.parent() {
            dirs.push(("LOOPER_SERVER_LOG_PATH", parent.to_path_buf()));
        }
        dirs
    }

    /// Whether `host` (a request's `Host` header, port and all) names this server.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        name.eq_ignore_ascii_case("localhost")
            || name.eq_ignore_ascii_case(host_name(&self.host))
            || name
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
            || self
                .allowed_hosts
                .iter()
                .any(|a| a == "*" || name.eq_ignore_ascii_case(a))
    }
}

/// The name in a `Host` value: without its port, and an IPv6 literal without brackets.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => host,
    }
}

/// Where Looper keeps its own files by default: `$XDG_STATE_HOME/looper`, else
/// `~/.local/state/looper`, else `./looper-state` — outside the working directory (often
/// the workspace) whenever a home is known.
fn default_state_dir(cwd: &Path, env: &Vars) -> PathBuf {
    if let Some(xdg) = env.get("XDG_STATE_HOME").filter(|p| p.starts_with('/')) {
        return Path::new(xdg).join("looper");
    }
    match env.get("HOME") {
        Some(home) => Path::new(home).join(".local/state/looper"),
        None => cwd.join("looper-state"),
    }
}

/// Variables the server does not read: Looper sets them for its runs, and `looper trigger`
/// and the wrapper script read them back.
pub const CLIENT_VARS: &[&str] = &[
    "LOOPER_RUN_ID",
    "LOOPER_RUN_TOKEN",
    "LOOPER_URL",
    "LOOPER_BIN",
    "LOOPER_INBOX",
    "LOOPER_INBOX_WAIT_SECONDS",
];

/// Variables that look like Looper's but that nothing reads: likely typos.
pub fn unknown_vars(env: &HashMap<String, String>) -> Vec<String> {
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|k| {
            ["LOOPER_", "CODEX_EXEC_", "ZULIP_"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .filter(|k| !KNOWN_VARS.contains(&k.as_str()) && !CLIENT_VARS.contains(&k.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    unknown
}

/// A configuration error; its text names the variable.
#[derive(Debug, PartialEq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The owner's share during the working hours when `LOOPER_QUOTA_WORK_RESERVE_PERCENT` is
/// not set.
const DEFAULT_WORK_RESERVE: f64 = 50.0;

struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    /// The value, with an empty one counted as unset.
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn seconds(&self, key: &str, default: f64) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(Duration::from_secs_f64(default)),
            Some(raw) => {
                parse_seconds(raw).map_err(|why| ConfigError(format!("{key}: {why}, got {raw:?}")))
            }
        }
    }

    /// [`Vars::seconds`] that must be more than 0 (a socket timeout of 0 is no timeout).
    fn positive_seconds(&self, key: &str, default: f64) -> Result<Duration, ConfigError> {
        let d = self.seconds(key, default)?;
        if d.is_zero() {
            return Err(ConfigError(format!("{key}: must be more than 0 seconds")));
        }
        Ok(d)
    }

    /// The HTTP transport's limits on slow clients.
    fn http_limits(&self) -> Result<crate::http::Limits, ConfigError> {
        let d = crate::http::Limits::default();
        Ok(crate::http::Limits {
            head_deadline: self.positive_seconds(
                "LOOPER_HTTP_HEAD_TIMEOUT_SECONDS",
                d.head_deadline.as_secs_f64(),
            )?,
            body_deadline: self.positive_seconds(
                "LOOPER_HTTP_BODY_TIMEOUT_SECONDS",
                d.body_deadline.as_secs_f64(),
            )?,
            io_timeout: self.positive_seconds(
                "LOOPER_HTTP_IDLE_TIMEOUT_SECONDS",
                d.io_timeout.as_secs_f64(),
            )?,
            linger: self.positive_seconds("LOOPER_HTTP_LINGER_SECONDS", d.linger.as_secs_f64())?,
        })
    }

    /// A whole number, `None` when unset.
    fn count(&self, key: &str, what: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => raw.parse::<u64>().map(Some).map_err(|_| {
                ConfigError(format!(
                    "{key}: expected a whole number of {what}, got {raw:?}"
                ))
            }),
        }
    }

    /// A percentage from 0 up to `max` (`max` itself only when `inclusive`).
    fn percent(&self, key: &str, max: f64, inclusive: bool) -> Result<Option<f64>, ConfigError> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        let fits = |p: &f64| *p >= 0.0 && (*p < max || (inclusive && *p == max));
        raw.parse::<f64>()
            .ok()
            .filter(fits)
            .map(Some)
            .ok_or_else(|| {
                let upto = if inclusive { "at most" } else { "below" };
                ConfigError(format!(
                    "{key}: expected a percentage from 0 and {upto} {max}, got {raw:?}"
                ))
            })
    }

    /// The quota's pacing (`LOOPER_QUOTA_*`): `None` unless `LOOPER_QUOTA_PACE=even`; its
    /// other variables without it are refused (they would do nothing).
    fn pace(&self) -> Result<Option<crate::rules::pace::Policy>, ConfigError> {
        let others = [
            "LOOPER_QUOTA_RESERVE_PERCENT",
            "LOOPER_QUOTA_WORK_HOURS",
            "LOOPER_QUOTA_WORK_RESERVE_PERCENT",
        ];
        match self
            .get("LOOPER_QUOTA_PACE")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("even") => {}
            None | Some("off") => {
                return match others.iter().find(|k| self.get(k).is_some()) {
                    Some(k) => Err(ConfigError(format!(
                        "{k} is set but the quota is not paced: set LOOPER_QUOTA_PACE=even too (or unset {k})"
                    ))),
                    None => Ok(None),
                };
            }
            Some(_) => {
                return Err(ConfigError(format!(
                    "LOOPER_QUOTA_PACE: expected even (or off), got {:?}",
                    self.get("LOOPER_QUOTA_PACE").unwrap_or_default()
                )))
            }
        }
        let reserve = self
            .percent("LOOPER_QUOTA_RESERVE_PERCENT", 100.0, false)?
            .unwrap_or(0.0);
        let hours = match self.get("LOOPER_QUOTA_WORK_HOURS") {
            None => None,
            Some(raw) => Some(
                crate::rules::pace::WorkHours::parse(raw)
                    .map_err(|e| ConfigError(format!("LOOPER_QUOTA_WORK_HOURS: {e}")))?,
            ),
        };
        let work_reserve = self.percent("LOOPER_QUOTA_WORK_RESERVE_PERCENT", 100.0, true)?;
        let work = match (hours, work_reserve) {
            (None, Some(_)) => {
                return Err(ConfigError(
                    "LOOPER_QUOTA_WORK_RESERVE_PERCENT is set without LOOPER_QUOTA_WORK_HOURS: say when it holds (for example \"Mon-Fri 09:00-18:00\")".into(),
                ))
            }
            (None, None) => None,
            (Some(h), r) => {
                let r = r.unwrap_or(DEFAULT_WORK_RESERVE.max(reserve));
                if r < reserve {
                    return Err(ConfigError(format!(
                        "LOOPER_QUOTA_WORK_RESERVE_PERCENT: the working hours' reserve ({r}) is smaller than LOOPER_QUOTA_RESERVE_PERCENT ({reserve}): it is the larger one"
                    )));
                }
                Some((h, r))
            }
        };
        Ok(Some(crate::rules::pace::Policy { reserve, work }))
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => parse_flag(raw).ok_or_else(|| {
                ConfigError(format!(
                    "{key}: expected 1/true/yes/on or 0/false/no/off, got {raw:?}"
                ))
            }),
        }
    }
}

/// A number of seconds: finite, `>= 0`, at most a day; fractions allowed.
pub fn parse_seconds(raw: &str) -> Result<Duration, &'static str> {
    let v: f64 = raw
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds")?;
    if !v.is_finite() || v < 0.0 {
        return Err("expected a number of seconds >= 0");
    }
    if v > MAX_SECONDS {
        return Err("expected at most 86400 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

/// The original's truthy and falsy words.
pub fn parse_flag(raw: &str) -> Option<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A path setting: `~` expanded, then taken from `cwd` when relative.
fn absolute(cwd: &Path, home: Option<&str>, p: &str) -> PathBuf {
    let p = expand_home(p, home);
    if p.is_absolute() {
        p
    } else {
        cwd.join(p)
    }
}

/// Whether binding `host` keeps the service on this machine.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl Config {
    /// Reads the files the configuration names (the zuliprc), then [`Config::parse`]s `env`
    /// with `cwd` as the server's working directory.
    pub fn from_env(env: &HashMap<String, String>, cwd: &Path) -> Result<Config, ConfigError> {
        Config::parse(env, cwd, crate::zulip::Rc::read(env).as_ref())
    }

    /// The configuration from `env` and the zuliprc already read: reads no file.
    pub fn parse(
        env: &HashMap<String, String>,
        cwd: &Path,
        zuliprc: Option<&crate::zulip::Rc>,
    ) -> Result<Config, ConfigError> {
        let v = Vars(env);
        let host = v.get("LOOPER_HOST").unwrap_or("127.0.0.1").to_string();
        let port = match v.get("LOOPER_PORT") {
            None => 3456,
            Some(raw) => raw.parse::<u16>().map_err(|_| {
                ConfigError(format!(
                    "LOOPER_PORT: expected a port number from 0 to 65535, got {raw:?}"
                ))
            })?,
        };
        let api_token = v.get("LOOPER_API_TOKEN").map(str::to_string);
        let allow_unauthenticated = v.flag("LOOPER_ALLOW_UNAUTHENTICATED", false)?;
        if api_token.is_none() && !is_loopback(&host) && !allow_unauthenticated {
            return Err(ConfigError(format!(
                "LOOPER_HOST: binding {host} exposes /run beyond this machine; set LOOPER_API_TOKEN (or LOOPER_ALLOW_UNAUTHENTICATED=1 if you really mean it)"
            )));
        }
        let log_level = match v.get("LOOPER_LOG_LEVEL") {
            None => LevelFilter::Info,
            Some(raw) => crate::os::logging::parse_level(raw).ok_or_else(|| {
                ConfigError(format!(
                    "LOOPER_LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {raw:?}"
                ))
            })?,
        };
        let home = v.get("HOME");
        let log_dir = match v.get("CODEX_EXEC_LOG_DIR") {
            Some(dir) => absolute(cwd, home, dir),
            None => default_state_dir(cwd, &v).join("logs"),
        };
        let server_log_path = match v.get("LOOPER_SERVER_LOG_PATH") {
            Some(p) => absolute(cwd, home, p),
            None => log_dir.join("looper-server.log"),
        };
        let server_log_max_bytes = match v.get("LOOPER_SERVER_LOG_MAX_BYTES") {
            None => 16 * 1024 * 1024,
            Some(raw) => raw.parse::<u64>().map_err(|_| {
                ConfigError(format!(
                    "LOOPER_SERVER_LOG_MAX_BYTES: expected a whole number of bytes (0 = never rotate), got {raw:?}"
                ))
            })?,
        };
        let stop_scope = match v.get("LOOPER_STOP_SCOPE") {
            None => StopScope::All,
            Some(raw) => StopScope::parse(raw).ok_or_else(|| {
                ConfigError(format!(
                    "LOOPER_STOP_SCOPE: expected all, workspace or own, got {raw:?}"
                ))
            })?,
        };
        let workspace = v
            .get("LOOPER_WORKSPACE")
            .map(|p| absolute(cwd, home, p))
            .unwrap_or_else(|| cwd.to_path_buf());
        let process_names = v.get("LOOPER_CODEX_PROCESS_NAMES").map(|raw| {
            raw.split([',', ' '])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
        if process_names.as_ref().is_some_and(|n| n.is_empty()) {
            return Err(ConfigError(
                "LOOPER_CODEX_PROCESS_NAMES: expected a comma-separated list of names".into(),
            ));
        }
        let log_retention = match v.get("LOOPER_LOG_RETENTION") {
            None => 0,
            Some(raw) => raw.parse::<usize>().map_err(|_| {
                ConfigError(format!(
                    "LOOPER_LOG_RETENTION: expected a whole number of logs to keep, got {raw:?}"
                ))
            })?,
        };
        let idle_poll = v.seconds("LOOPER_IDLE_POLL_SECONDS", 300.0)?;
        let autopoll = v.flag("LOOPER_AUTO_START_WHEN_IDLE", true)?;
        if autopoll && idle_poll.is_zero() {
            return Err(ConfigError(
                "LOOPER_IDLE_POLL_SECONDS: must be more than 0 while autopoll is on".into(),
            ));
        }
        let zulip = Zulip::parse(env, zuliprc).map_err(ConfigError)?;
        let todo_file = match v.get("LOOPER_TODO_FILE") {
            None => None,
            Some(name) if crate::report::valid_todo_name(name.as_ref()) => {
                Some(PathBuf::from(name))
            }
            Some(name) => {
                return Err(ConfigError(format!(
                "LOOPER_TODO_FILE: {name:?} must be a path relative to the workspace, without '..'"
            )))
            }
        };
        let rules = crate::rules::stop::Rules {
            no_progress_runs: match v.count("LOOPER_NO_PROGRESS_RUNS", "runs (0 = off)")? {
                None => 3,
                Some(n) if n <= u64::from(crate::rules::stop::MAX_NO_PROGRESS_RUNS) => n as u32,
                Some(n) => {
                    return Err(ConfigError(format!(
                        "LOOPER_NO_PROGRESS_RUNS: at most {} runs (0 = off), got {n}",
                        crate::rules::stop::MAX_NO_PROGRESS_RUNS
                    )))
                }
            },
            max_runs_per_day: v.count("LOOPER_MAX_RUNS_PER_DAY", "runs")?,
            max_tokens_per_day: v.count("LOOPER_MAX_TOKENS_PER_DAY", "tokens")?,
            pause_at_percent: match v.get("LOOPER_PAUSE_AT_PERCENT") {
                None => None,
                Some(raw) => Some(
                    raw.parse::<f64>()
                        .ok()
                        .filter(|p| *p > 0.0 && *p <= 100.0)
                        .ok_or_else(|| {
                            ConfigError(format!(
                                "LOOPER_PAUSE_AT_PERCENT: expected a percentage above 0 and at most 100, got {raw:?}"
                            ))
                        })?,
                ),
            },
            pace: v.pace()?,
        };
        let report_sources = crate::report::Sources {
            todo_file,
            git: v.flag("LOOPER_GIT_STATE", true)?,
            fingerprints: rules.no_progress_runs > 0,
            codex_home: v
                .get("CODEX_HOME")
                .map(|p| absolute(cwd, home, p))
                .or_else(|| home.map(|h| Path::new(h).join(".codex"))),
        };
        Ok(Config {
            host,
            port,
            api_token,
            log_level,
            log_dir,
            server_log_path,
            server_log_max_bytes,
            stop_scope,
            usage_limit_margin: v.seconds("LOOPER_USAGE_LIMIT_MARGIN_SECONDS", 60.0)?,
            codex_exec_binary: v
                .get("CODEX_EXEC_BINARY")
                .map(|b| expand_home(b, home).to_string_lossy().into_owned()),
            exec_delay: v.seconds("CODEX_EXEC_DELAY_SECONDS", 1.0)?,
            startup_check: v.seconds("CODEX_EXEC_STARTUP_CHECK_SECONDS", 1.0)?,
            autopoll,
            idle_poll,
            idle_stale: v.seconds("LOOPER_IDLE_LOG_STALE_SECONDS", 600.0)?,
            workspace,
            default_prompt: v
                .0
                .get("LOOPER_DEFAULT_PROMPT")
                .filter(|p| !p.trim().is_empty())
                .cloned(),
            prompt_file: v.get("LOOPER_PROMPT_FILE").map(|p| absolute(cwd, home, p)),
            home: home.map(str::to_string),
            workspace_set: v.get("LOOPER_WORKSPACE").is_some(),
            stop_grace: v.seconds("LOOPER_STOP_GRACE_SECONDS", 5.0)?,
            http: v.http_limits()?,
            process_names,
            mirror_output: v.flag("LOOPER_MIRROR_CODEX_OUTPUT", true)?,
            log_retention,
            hung_run: v.seconds("LOOPER_HUNG_RUN_SECONDS", 0.0)?,
            notify_on_exit: v.flag("LOOPER_NOTIFY_ON_EXIT", false)?,
            require_git: v.flag("LOOPER_REQUIRE_GIT", true)?,
            cwd: cwd.to_path_buf(),
            allowed_hosts: v
                .get("LOOPER_ALLOWED_HOSTS")
                .map(|raw| {
                    raw.split([',', ' '])
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| host_name(s).to_string())
                        .collect()
                })
                .unwrap_or_default(),
            zulip_script: v
                .get("LOOPER_ZULIP_SCRIPT")
                .map(|p| expand_home(p, home).to_string_lossy().into_owned()),
            zulip,
            report_sources,
            run_reports: v.flag("LOOPER_RUN_REPORTS", true)?,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("HOME".into()).or_insert("/nonexistent".into());
        Config::from_env(&env, Path::new("/srv/looper"))
    }

    #[test]
    fn defaults_work_on_a_fresh_machine() {
        let c = cfg(&[]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 3456));
        // Outside the working directory, which is often the workspace the agent writes.
        assert_eq!(
            c.log_dir,
            Path::new("/nonexistent/.local/state/looper/logs")
        );
        assert_eq!(
            c.server_log_path,
            Path::new("/nonexistent/.local/state/looper/logs/looper-server.log")
        );
        let c = cfg(&[("XDG_STATE_HOME", "/state")]).unwrap();
        assert_eq!(c.log_dir, Path::new("/state/looper/logs"));
        assert_eq!(c.workspace, Path::new("/srv/looper"));
        assert_eq!(c.exec_delay, Duration::from_secs(1));
        assert_eq!(c.stop_grace, Duration::from_secs(5));
        assert!(c.autopoll && c.mirror_output && !c.notify_on_exit);
        assert_eq!(c.log_level, LevelFilter::Info);
        assert!(c.zulip.credentials.is_none());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (key, value) in [
            ("LOOPER_PORT", "http"),
            ("LOOPER_PORT", "70000"),
            ("LOOPER_IDLE_POLL_SECONDS", "-1"),
            ("CODEX_EXEC_DELAY_SECONDS", "NaN"),
            ("LOOPER_STOP_GRACE_SECONDS", "1e9"),
            ("LOOPER_AUTO_START_WHEN_IDLE", "maybe"),
            ("LOOPER_LOG_LEVEL", "loud"),
            ("LOOPER_LOG_RETENTION", "-3"),
            ("LOOPER_SERVER_LOG_MAX_BYTES", "16M"),
            ("LOOPER_STOP_SCOPE", "mine"),
            ("LOOPER_TODO_FILE", "../TODO.md"),
            ("LOOPER_TODO_FILE", "/etc/passwd"),
            ("LOOPER_GIT_STATE", "sometimes"),
            ("LOOPER_RUN_REPORTS", "loud"),
            ("LOOPER_NO_PROGRESS_RUNS", "101"),
            ("LOOPER_PAUSE_AT_PERCENT", "0"),
        ] {
            let err = cfg(&[(key, value)]).unwrap_err();
            assert!(err.0.starts_with(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn empty_values_count_as_unset_and_fractions_are_fine() {
        let c = cfg(&[
            ("LOOPER_PORT", ""),
            ("LOOPER_API_TOKEN", ""),
            ("LOOPER_IDLE_POLL_SECONDS", "0.2"),
        ])
        .unwrap();
        assert_eq!(c.port, 3456);
        assert!(c.api_token.is_none());
        assert_eq!(c.idle_poll, Duration::from_millis(200));
    }

    #[test]
    fn a_tilde_means_home_in_every_path_setting() {
        let c = cfg(&[
            ("HOME", "/home/me"),
            ("LOOPER_WORKSPACE", "~/repo"),
            ("LOOPER_PROMPT_FILE", "~/prompt.md"),
            ("CODEX_EXEC_LOG_DIR", "~/logs"),
            ("LOOPER_SERVER_LOG_PATH", "~"),
            ("CODEX_EXEC_BINARY", "~/bin/codex"),
        ])
        .unwrap();
        assert_eq!(c.workspace, Path::new("/home/me/repo"));
        assert_eq!(
            c.prompt_file.as_deref(),
            Some(Path::new("/home/me/prompt.md"))
        );
        assert_eq!(c.log_dir, Path::new("/home/me/logs"));
        assert_eq!(c.server_log_path, Path::new("/home/me"));
        assert_eq!(c.codex_exec_binary.as_deref(), Some("/home/me/bin/codex"));
        assert_eq!(expand_home("~user/x", Some("/h")), Path::new("~user/x"));
        assert_eq!(expand_home("a/~/b", Some("/h")), Path::new("a/~/b"));
    }

    #[test]
    fn look_alike_variables_are_reported() {
        let env: HashMap<String, String> = [
            ("LOOPER_PROT".to_string(), "1".to_string()),
            ("LOOPER_PORT".to_string(), "1".to_string()),
            ("LOOPER_RUN_ID".to_string(), "x".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ]
        .into();
        assert_eq!(unknown_vars(&env), vec!["LOOPER_PROT".to_string()]);
    }

    /// A `Host` must name this server: a rebinding page's own name is refused.
    #[test]
    fn hosts_are_judged_by_name() {
        let c = cfg(&[("LOOPER_ALLOWED_HOSTS", "devbox, looper.example.com:443")]).unwrap();
        for ok in [
            "127.0.0.1:3456",
            "localhost",
            "LOCALHOST:1",
            "[::1]:3456",
            "127.0.0.2",
            "devbox:3456",
            "looper.example.com",
        ] {
            assert!(c.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:3456",
            "evil.example",
            "127.0.0.1.evil.example",
            "",
            "devbox.evil",
        ] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("::1"), "::1");
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let err = cfg(&[("LOOPER_HOST", "0.0.0.0")]).unwrap_err();
        assert!(err.0.starts_with("LOOPER_HOST"), "{err}");
        assert!(cfg(&[("LOOPER_HOST", "0.0.0.0"), ("LOOPER_API_TOKEN", "t")]).is_ok());
        assert!(cfg(&[
            ("LOOPER_HOST", "0.0.0.0"),
            ("LOOPER_ALLOW_UNAUTHENTICATED", "1")
        ])
        .is_ok());
        assert!(cfg(&[("LOOPER_HOST", "::1")]).is_ok());
        assert!(cfg(&[("LOOPER_HOST", "localhost")]).is_ok());
    }
}
