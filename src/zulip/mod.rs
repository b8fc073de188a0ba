//! Announcing on Zulip: credentials (environment or zuliprc), the target (a stream topic or
//! one private recipient), and sending through Zulip's REST API with minreq. Also the
//! `zulip_script_path` escape hatch, which runs a user's program instead.
//!
//! The API key lives only in [`Credentials`], whose `Debug` hides it, and is only ever put
//! into the `Authorization` header.

mod script;
pub(crate) mod text;

pub use script::run_script;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::os::logging::Q;

/// How long one Zulip request may take by default.
pub const ZULIP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `Retry-After` we are willing to honour before the one retry of a 429.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// The warning when no credentials are found (no news when a script of the operator's
/// says everything instead).
pub const NOT_CONFIGURED: &str = "Zulip is not configured (no ZULIP_SITE/ZULIP_BOT_EMAIL/ZULIP_BOT_API_KEY and no zuliprc): announcements are skipped";

/// The bot's credentials and where they came from.
#[derive(Clone)]
pub struct Credentials {
    pub site: String,
    pub email: String,
    key: String,
    /// `env` or `zuliprc:<path>[<section>]`, for `looper zulip check` and the start log.
    pub source: String,
    /// The site was given without `http://` or `https://`, and `https://` was put in front.
    pub scheme_guessed: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("site", &self.site)
            .field("email", &self.email)
            .field("key", &"<hidden>")
            .field("source", &self.source)
            .finish()
    }
}

/// Where messages go.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Stream { stream: String, topic: String },
    Private { to: String },
}

/// A private recipient as `ZULIP_TO` spells it.
#[derive(Clone, Debug, PartialEq)]
pub enum Recipient {
    Email(String),
    Id(u64),
    /// A full name (or anything else) to look up through `/api/v1/users`.
    Name(String),
}

impl Recipient {
    pub fn parse(raw: &str) -> Recipient {
        let raw = raw.trim();
        if raw.contains('@') {
            return Recipient::Email(raw.to_string());
        }
        if let Ok(id) = raw.parse::<u64>() {
            return Recipient::Id(id);
        }
        // Zulip's id-name slug, as in `8-Tessa`.
        if let Some((digits, rest)) = raw.split_once('-') {
            if !rest.is_empty() {
                if let Ok(id) = digits.parse::<u64>() {
                    return Recipient::Id(id);
                }
            }
        }
        Recipient::Name(raw.to_string())
    }
}

/// The announcer: `None` credentials means Zulip is not configured and announcing is skipped.
#[derive(Clone, Debug)]
pub struct Zulip {
    pub credentials: Option<Credentials>,
    pub target: Target,
    /// Warnings found while loading (shown at start; `looper zulip check` prints them too).
    pub warnings: Vec<String>,
    /// Whole seconds one request may take (`LOOPER_ZULIP_TIMEOUT_SECONDS`).
    pub timeout_secs: u64,
}

/// A failed announcement; the message is safe to show (no secrets).
#[derive(Debug)]
pub struct ZulipError(pub String);

impl fmt::Display for ZulipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn get<'a>(env: &'a HashMap<String, String>, key: &str) -> Option<&'a str> {
    env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
}

fn has_scheme(site: &str) -> bool {
    let s = site.trim();
    s.starts_with("http://") || s.starts_with("https://")
}

/// `https://` when the scheme is missing; no trailing `/` or `/api`.
pub fn normalize_site(site: &str) -> String {
    let mut s = site.trim().to_string();
    if !has_scheme(&s) {
        s = format!("https://{s}");
    }
    loop {
        if let Some(stripped) = s.strip_suffix('/') {
            s = stripped.to_string();
        } else if let Some(stripped) = s.strip_suffix("/api") {
            s = stripped.to_string();
        } else {
            return s;
        }
    }
}

/// Sections of an INI file in order, each with its `key = value` pairs.
pub fn parse_zuliprc(text: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut sections: Vec<(String, HashMap<String, String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_string(), HashMap::new()));
        } else if let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) {
            if let Some((_, map)) = sections.last_mut() {
                map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
    }
    sections
}

const CRED_KEYS: [&str; 3] = ["site", "email", "key"];

/// Picks the profile's section, else the first complete one; names what is missing.
fn credentials_from_zuliprc(text: &str, profile: &str, path: &Path) -> Result<Credentials, String> {
    let sections = parse_zuliprc(text);
    let complete = |m: &HashMap<String, String>| CRED_KEYS.iter().all(|k| m.contains_key(*k));
    let chosen = match sections.iter().find(|(name, _)| name == profile) {
        Some((name, map)) => {
            let missing: Vec<&str> = CRED_KEYS
                .iter()
                .copied()
                .filter(|k| !map.contains_key(*k))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "ZULIPRC_PATH: section [{name}] of {} lacks {}",
                    path.display(),
                    missing.join(", ")
                ));
            }
            (name, map)
        }
        None => match sections.iter().find(|(_, m)| complete(m)) {
            Some((name, map)) => (name, map),
            None => {
                return Err(format!(
                    "ZULIPRC_PATH: {} has no section [{profile}] and no section with site, email and key",
                    path.display()
                ))
            }
        },
    };
    let (name, map) = chosen;
    Ok(Credentials {
        site: normalize_site(&map["site"]),
        scheme_guessed: !has_scheme(&map["site"]),
        email: map["email"].clone(),
        key: map["key"].clone(),
        source: format!("zuliprc:{}[{name}]", path.display()),
    })
}

/// The zuliprc file, read before the configuration is parsed (parsing reads no file).
pub struct Rc {
    path: PathBuf,
    /// Named by `ZULIPRC_PATH` (then it must be readable), not the default `~/.zuliprc`.
    explicit: bool,
    text: Result<String, String>,
    /// Said at start when the file is readable by others.
    warning: Option<String>,
}

impl Rc {
    /// Reads the zuliprc the environment points at: `ZULIPRC_PATH`, else `~/.zuliprc`;
    /// `None` when the three direct variables are used instead, or there is no `HOME`.
    pub fn read(env: &HashMap<String, String>) -> Option<Rc> {
        let direct = ["ZULIP_SITE", "ZULIP_BOT_EMAIL", "ZULIP_BOT_API_KEY"];
        if direct.iter().any(|k| get(env, k).is_some()) {
            return None;
        }
        let explicit =
            get(env, "ZULIPRC_PATH").map(|p| crate::os::paths::expand_home(p, get(env, "HOME")));
        let path = explicit
            .clone()
            .or_else(|| get(env, "HOME").map(|h| Path::new(h).join(".zuliprc")))?;
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string());
        let warning = text.is_ok().then(|| shared_warning(&path)).flatten();
        Some(Rc {
            path,
            explicit: explicit.is_some(),
            text,
            warning,
        })
    }
}

impl Zulip {
    /// Reads the zuliprc, then [`Zulip::parse`]s the environment with it.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Zulip, String> {
        Zulip::parse(env, Rc::read(env).as_ref())
    }

    /// The Zulip part of the configuration, from `env` and the zuliprc already read (see
    /// [`Rc::read`]). `Err` names what is missing or wrong; it stops the server at start.
    pub fn parse(env: &HashMap<String, String>, rc: Option<&Rc>) -> Result<Zulip, String> {
        let mut warnings = Vec::new();
        let target = match get(env, "ZULIP_MESSAGE_TYPE")
            .unwrap_or("stream")
            .to_ascii_lowercase()
            .as_str()
        {
            "stream" | "channel" => Target::Stream {
                stream: get(env, "ZULIP_STREAM").unwrap_or("coding").to_string(),
                topic: get(env, "ZULIP_TOPIC").unwrap_or("looper").to_string(),
            },
            "private" | "direct" => Target::Private {
                to: get(env, "ZULIP_TO").unwrap_or_default().to_string(),
            },
            other => {
                return Err(format!(
                    "ZULIP_MESSAGE_TYPE: expected stream or private, got {other:?}"
                ))
            }
        };

        let direct: Vec<(&str, Option<&str>)> =
            ["ZULIP_SITE", "ZULIP_BOT_EMAIL", "ZULIP_BOT_API_KEY"]
                .iter()
                .map(|k| (*k, get(env, k)))
                .collect();
        let credentials = if direct.iter().any(|(_, v)| v.is_some()) {
            let missing: Vec<&str> = direct
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(k, _)| *k)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "Zulip is partly configured: {} missing (set all of ZULIP_SITE, ZULIP_BOT_EMAIL, ZULIP_BOT_API_KEY, or none)",
                    missing.join(", ")
                ));
            }
            Some(Credentials {
                site: normalize_site(direct[0].1.unwrap_or_default()),
                scheme_guessed: !has_scheme(direct[0].1.unwrap_or_default()),
                email: direct[1].1.unwrap_or_default().to_string(),
                key: direct[2].1.unwrap_or_default().to_string(),
                source: "env".to_string(),
            })
        } else {
            match rc {
                None => None,
                Some(rc) => match &rc.text {
                    Ok(text) => {
                        warnings.extend(rc.warning.clone());
                        let profile = get(env, "ZULIP_PROFILE").unwrap_or("api");
                        Some(credentials_from_zuliprc(text, profile, &rc.path)?)
                    }
                    Err(e) if rc.explicit => {
                        return Err(format!(
                            "ZULIPRC_PATH: cannot read {}: {e}",
                            rc.path.display()
                        ))
                    }
                    Err(_) => None,
                },
            }
        };

        if credentials.is_some() {
            if let Target::Private { to } = &target {
                if to.is_empty() {
                    return Err(
                        "ZULIP_TO: required when ZULIP_MESSAGE_TYPE=private (an email, a user id, 8-Name, or a full name)"
                            .to_string(),
                    );
                }
            }
        } else {
            warnings.push(NOT_CONFIGURED.to_string());
        }
        let timeout_secs = match get(env, "LOOPER_ZULIP_TIMEOUT_SECONDS") {
            None => ZULIP_TIMEOUT.as_secs(),
            Some(raw) => raw.parse::<u64>().ok().filter(|s| (1..=300).contains(s)).ok_or_else(
                || format!("LOOPER_ZULIP_TIMEOUT_SECONDS: expected whole seconds from 1 to 300, got {raw:?}"),
            )?,
        };
        Ok(Zulip {
            credentials,
            target,
            warnings,
            timeout_secs,
        })
    }

    /// A one-line description of the target, as in `zulip_output`.
    pub fn describe_target(&self) -> String {
        match &self.target {
            Target::Stream { stream, topic } => {
                format!("type=stream stream={} topic={}", Q(stream), Q(topic))
            }
            Target::Private { to } => format!("type=private to={}", Q(to)),
        }
    }

    /// Posts `content`; on success the `zulip_output` text of the response.
    pub fn send(&self, content: &str) -> Result<String, ZulipError> {
        let Some(creds) = &self.credentials else {
            return Ok("skipped: Zulip is not configured".to_string());
        };
        let mut form = vec![("content", content.to_string())];
        match &self.target {
            Target::Stream { stream, topic } => {
                form.push(("type", "stream".into()));
                form.push(("to", stream.clone()));
                form.push(("topic", topic.clone()));
            }
            Target::Private { to } => {
                let to_json = match Recipient::parse(to) {
                    Recipient::Email(e) => serde_json::json!([e]),
                    Recipient::Id(id) => serde_json::json!([id]),
                    Recipient::Name(name) => {
                        serde_json::json!([lookup_user(creds, &name, self.timeout_secs)?])
                    }
                };
                form.push(("type", "private".into()));
                form.push(("to", to_json.to_string()));
            }
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", form_encode(k), form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let url = format!("{}/api/v1/messages", creds.site);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = minreq::post(url.as_str())
                .with_header("Authorization", basic_auth(creds))
                .with_header("Content-Type", "application/x-www-form-urlencoded")
                .with_header("User-Agent", concat!("looper/", env!("CARGO_PKG_VERSION")))
                .with_body(body.clone())
                .with_timeout(self.timeout_secs)
                .send()
                .map_err(|e| unreachable(creds, &e))?;
            if response.status_code == 429 && attempt == 1 {
                let header = response
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                    .map(|(_, v)| v.as_str());
                // Never longer than a request may take.
                let limit = MAX_RETRY_AFTER.min(Duration::from_secs(self.timeout_secs));
                let wait = retry_after(header, limit);
                log::info!(
                    "zulip.send.retry status=429 wait_s={:.1}",
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                continue;
            }
            let json = parse_zulip_answer(&response)?;
            let id = json.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
            return Ok(format!("OK message_id={id} {}", self.describe_target()));
        }
    }
}

/// Warns when a zuliprc can be read by others: it holds the bot's key.
fn shared_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    (meta.permissions().mode() & 0o044 != 0).then(|| {
        format!(
            "{} is readable by other users and holds a Zulip API key: chmod 600 it",
            path.display()
        )
    })
}

/// How long a 429 asks us to wait, at most `limit`: `Retry-After` as seconds or as an HTTP
/// date; anything else (garbage, a negative, an absurd number) means one second. Clamped
/// before it becomes a `Duration`, which panics on values it cannot hold.
fn retry_after(value: Option<&str>, limit: Duration) -> Duration {
    const DEFAULT: f64 = 1.0;
    let secs = match value.map(str::trim) {
        None | Some("") => DEFAULT,
        Some(v) => match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => n,
            Ok(_) => DEFAULT,
            Err(_) => chrono::DateTime::parse_from_rfc2822(v)
                .map(|at| {
                    (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()) as f64 / 1000.0
                })
                .ok()
                .filter(|n| *n >= 0.0)
                .unwrap_or(DEFAULT),
        },
    };
    Duration::from_secs_f64(secs.min(limit.as_secs_f64()))
}

/// A Zulip answer as JSON when it is a success, else an error that says what Zulip said.
/// Zulip could not be reached. A site given without its scheme got `https://`; when that, or
/// a TLS handshake that fails on a garbled first record (`https://` spoken to a plain-http
/// server), is the likely cause, the error asks whether the server is plain http.
fn unreachable(creds: &Credentials, e: &minreq::Error) -> ZulipError {
    let text = e.to_string();
    let garbled = ["InvalidContentType", "corrupt message", "InvalidMessage"]
        .iter()
        .any(|w| text.contains(w));
    let hint = if creds.site.starts_with("https://") && (garbled || creds.scheme_guessed) {
        let given = if creds.scheme_guessed {
            "the site has no scheme, so https:// was used; "
        } else {
            ""
        };
        format!(" ({given}is it plain http? then give the site with http://)")
    } else {
        String::new()
    };
    ZulipError(format!(
        "Zulip is unreachable at {}: {text}{hint}",
        creds.site
    ))
}

fn parse_zulip_answer(response: &minreq::Response) -> Result<serde_json::Value, ZulipError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(response.as_bytes()).ok();
    let ok = (200..300).contains(&response.status_code)
        && json
            .as_ref()
            .and_then(|j| j.get("result"))
            .and_then(|r| r.as_str())
            == Some("success");
    if ok {
        return Ok(json.unwrap_or_default());
    }
    let detail = match json
        .as_ref()
        .and_then(|j| j.get("msg"))
        .and_then(|m| m.as_str())
    {
        Some(msg) => msg.to_string(),
        None => {
            let text = String::from_utf8_lossy(response.as_bytes());
            let text: String = text.chars().take(200).collect();
            format!("unexpected answer {:?}", text.trim())
        }
    };
    Err(ZulipError(format!(
        "Zulip answered HTTP {}: {detail}",
        response.status_code
    )))
}

/// `GET <site><path>` with the bot's credentials: Zulip's successful JSON answer.
fn get_json(
    creds: &Credentials,
    path: &str,
    timeout_secs: u64,
) -> Result<serde_json::Value, ZulipError> {
    let url = format!("{}{path}", creds.site);
    let response = minreq::get(url.as_str())
        .with_header("Authorization", basic_auth(creds))
        .with_timeout(timeout_secs)
        .send()
        .map_err(|e| unreachable(creds, &e))?;
    parse_zulip_answer(&response)
}

/// Resolves a full name, email or id to a user id through `GET /api/v1/users`.
fn lookup_user(creds: &Credentials, name: &str, timeout_secs: u64) -> Result<u64, ZulipError> {
    let json = get_json(creds, "/api/v1/users", timeout_secs)?;
    let wanted = name.to_lowercase();
    json.get("members")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .find(|member| {
            let field = |k: &str| {
                member
                    .get(k)
                    .map(|v| match v {
                        serde_json::Value::String(s) => s.to_lowercase(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default()
            };
            field("full_name") == wanted || field("email") == wanted || field("user_id") == wanted
        })
        .and_then(|member| member.get("user_id").and_then(|v| v.as_u64()))
        .ok_or_else(|| ZulipError(format!("Zulip has no user named {name:?} (ZULIP_TO)")))
}

/// Who the credentials belong to, as Zulip says (`GET /api/v1/users/me`):
/// `<full name> <email> (user id <n>)`.
pub fn whoami(creds: &Credentials, timeout_secs: u64) -> Result<String, ZulipError> {
    let json = get_json(creds, "/api/v1/users/me", timeout_secs)?;
    let text = |k: &str| json.get(k).and_then(|v| v.as_str());
    let id = json.get("user_id").and_then(|v| v.as_u64());
    match (text("full_name"), text("email"), id) {
        (Some(name), Some(email), Some(id)) => Ok(format!("{name} <{email}> (user id {id})")),
        _ => Err(ZulipError(format!(
            "{} answered /api/v1/users/me without the user's full_name, email and user_id: is ZULIP_SITE a Zulip server?",
            creds.site
        ))),
    }
}

fn basic_auth(creds: &Credentials) -> String {
    format!(
        "Basic {}",
        base64(format!("{}:{}", creds.email, creds.key).as_bytes())
    )
}

/// `application/x-www-form-urlencoded` escaping.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Standard base64 with padding, for HTTP Basic auth.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_defensively() {
        let ten = Duration::from_secs(10);
        assert_eq!(retry_after(Some("3"), ten), Duration::from_secs(3));
        assert_eq!(retry_after(Some("0.5"), ten), Duration::from_millis(500));
        for absurd in ["1e20", "18446744073709551616"] {
            assert_eq!(retry_after(Some(absurd), ten), ten, "{absurd}");
        }
        for junk in [
            "-5",
            "NaN",
            "inf",
            "1e400",
            "soon",
            "",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(
                retry_after(Some(junk), ten),
                Duration::from_secs(1),
                "{junk:?}"
            );
        }
        assert_eq!(retry_after(None, ten), Duration::from_secs(1));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc2822();
        let wait = retry_after(Some(&later), ten);
        assert!(
            wait > Duration::from_secs(2) && wait <= Duration::from_secs(4),
            "{wait:?}"
        );
        assert_eq!(
            retry_after(Some("7"), Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sites_get_a_scheme_and_lose_api_suffixes() {
        assert_eq!(
            normalize_site("chat.example.com"),
            "https://chat.example.com"
        );
        assert_eq!(
            normalize_site("http://127.0.0.1:9/api/"),
            "http://127.0.0.1:9"
        );
        assert_eq!(normalize_site("https://z.example/"), "https://z.example");
    }

    #[test]
    fn recipients_parse_as_email_id_slug_or_name() {
        assert_eq!(
            Recipient::parse("a@b.c"),
            Recipient::Email("a@b.c".to_string())
        );
        assert_eq!(Recipient::parse("42"), Recipient::Id(42));
        assert_eq!(Recipient::parse("8-Tessa"), Recipient::Id(8));
        assert_eq!(
            Recipient::parse("Tessa Example"),
            Recipient::Name("Tessa Example".to_string())
        );
        assert_eq!(
            Recipient::parse("x-Tessa"),
            Recipient::Name("x-Tessa".to_string())
        );
    }

    #[test]
    fn zuliprc_profile_then_first_complete_section() {
        let text = "[other]\nsite=a.example\n\n[api]\nemail = bot@x\nkey = K\nsite = https://x.example/\n[third]\nsite=t\nemail=e\nkey=k\n";
        let c = credentials_from_zuliprc(text, "api", Path::new("rc")).unwrap();
        assert_eq!(c.site, "https://x.example");
        assert_eq!(c.email, "bot@x");
        let c = credentials_from_zuliprc(text, "missing", Path::new("rc")).unwrap();
        assert_eq!(c.source, "zuliprc:rc[api]");
        let err = credentials_from_zuliprc(text, "other", Path::new("rc")).unwrap_err();
        assert!(err.contains("email, key"), "{err}");
    }

    #[test]
    fn partial_env_credentials_name_what_is_missing() {
        let err = Zulip::from_env(&env(&[("ZULIP_SITE", "z.example")])).unwrap_err();
        assert!(err.contains("ZULIP_BOT_EMAIL, ZULIP_BOT_API_KEY"), "{err}");
        let err = Zulip::from_env(&env(&[
            ("ZULIP_SITE", "z"),
            ("ZULIP_BOT_EMAIL", "e"),
            ("ZULIP_BOT_API_KEY", "k"),
            ("ZULIP_MESSAGE_TYPE", "private"),
        ]))
        .unwrap_err();
        assert!(err.starts_with("ZULIP_TO"), "{err}");
    }

    #[test]
    fn no_credentials_means_skipped_with_a_warning() {
        let z = Zulip::from_env(&env(&[("HOME", "/nonexistent-home")])).unwrap();
        assert!(z.credentials.is_none());
        assert_eq!(z.send("hi").unwrap(), "skipped: Zulip is not configured");
        assert_eq!(z.warnings.len(), 1);
    }

    #[test]
    fn debug_output_hides_the_key() {
        let z = Zulip::from_env(&env(&[
            ("ZULIP_SITE", "z"),
            ("ZULIP_BOT_EMAIL", "e"),
            ("ZULIP_BOT_API_KEY", "sekrit-key"),
        ]))
        .unwrap();
        assert!(!format!("{z:?}").contains("sekrit-key"));
    }

    #[test]
    fn encodings() {
        assert_eq!(base64(b"bot@x:key"), "Ym90QHg6a2V5");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(form_encode("a b&c=d/é"), "a+b%26c%3Dd%2F%C3%A9");
    }
}
