//! What a run did, read from what codex and git themselves write: the tokens it used (and,
//! from codex's session file, their split and the account's rate-limit use), the agent's
//! last message, the commits between its start and its end, and the TODO list's progress.
//!
//! Everything here is written by the untrusted agent or can be: the run's output (codex
//! echoes tool output into it), the workspace's files, its `.git`. So the readers are
//! lenient and bounded: a field that cannot be read stays empty, never fails the run; a
//! printed line counts only where codex puts it; a file is opened without following links,
//! read only when it is a regular file, and only so far; git runs with a timeout, a clean
//! environment and the configuration that would run a program switched off.

pub(crate) mod account;
pub(crate) mod git;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long git may take, all questions together, for the work tree at a run's start, for
/// everything at its end, and for a hand-off's summary (asked under the run guard).
const START_BUDGET: Duration = Duration::from_secs(5);
const END_BUDGET: Duration = Duration::from_secs(10);
const SUMMARY_BUDGET: Duration = Duration::from_millis(500);
/// The most of a TODO file read; a longer one is counted no further.
const TODO_BYTES: u64 = 1024 * 1024;
/// The most of a session file read (the end is what matters: read from there).
const SESSION_BYTES: u64 = 16 * 1024 * 1024;
/// The most of the agent's last message kept (whole, in its file).
pub const MESSAGE_BYTES: usize = 256 * 1024;
/// How much of the last message a row, a Zulip line or a table shows.
pub const MESSAGE_OPENING: usize = 300;

pub use crate::model::{Git, RateLimits, Report, Todo, TokenSource, Tokens, Window};

/// A fingerprint of `text`.
fn digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// What a run printed: the start of its output (for codex's header) and the end (for its
/// final answer and count); the same text when the output is short.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub head: String,
    pub tail: String,
}

impl Output {
    /// Reads a run log from byte `from` (where the run's output begins).
    pub fn read(log_path: &Path, from: u64) -> Output {
        use std::io::{Seek, SeekFrom};
        const HEAD: u64 = 64 * 1024;
        const TAIL: u64 = 1024 * 1024;
        let Some(mut file) = crate::os::paths::open_regular(log_path) else {
            return Output::default();
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut read = |at: u64, len: u64| {
            let mut bytes = Vec::new();
            let _ = file
                .seek(SeekFrom::Start(at))
                .and_then(|_| (&mut file).take(len).read_to_end(&mut bytes));
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let head = read(from, HEAD);
        let tail_from = size.saturating_sub(TAIL).max(from);
        let tail = if tail_from == from {
            head.clone()
        } else {
            read(tail_from, TAIL)
        };
        Output { head, tail }
    }
}

/// What is read when a run starts, to compare with its end.
#[derive(Debug, Clone, Default)]
pub struct StartState {
    pub head: Option<String>,
    pub todo: Option<Todo>,
    /// What the stuck rule compares: the TODO file's content and the work tree's (as git
    /// sees it), each a fingerprint; `None` when unknown.
    pub todo_digest: Option<u64>,
    pub tree: Option<u64>,
}

impl StartState {
    /// What the run's row says at its start: HEAD and the TODO counts it started from.
    pub fn report(&self) -> Report {
        Report {
            git: self.head.as_ref().map(|h| Git {
                head_before: Some(h.clone()),
                ..Git::default()
            }),
            todo_before: self.todo,
            ..Report::default()
        }
    }

    /// What a row recorded at its start says (HEAD and the TODO counts; the fingerprints
    /// are not kept): for a run adopted after a restart, and a hand-off's summary.
    pub fn from_row(report: &Report) -> StartState {
        StartState {
            head: report.git.as_ref().and_then(|g| g.head_before.clone()),
            todo: report.todo_before,
            ..StartState::default()
        }
    }
}

/// Where to look, as the configuration says.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `LOOPER_TODO_FILE`, relative to the workspace.
    pub todo_file: Option<PathBuf>,
    /// Whether git is asked (`LOOPER_GIT_STATE`).
    pub git: bool,
    /// Whether the stuck rule needs the fingerprints of the TODO file and the work tree.
    pub fingerprints: bool,
    /// `$CODEX_HOME` (default `~/.codex`), where codex writes its session files.
    pub codex_home: Option<PathBuf>,
}

impl Sources {
    /// The start of a run in `workspace`, read before it is spawned (so that a quick first
    /// commit is the run's own): the TODO file and HEAD, from files. The work tree's
    /// fingerprint, which may take git longer, is [`Sources::tree_at_start`]'s. Read at a
    /// run's exit, the same is how it left them.
    pub fn at_start(&self, workspace: &Path) -> StartState {
        let text = self.todo_text(workspace);
        StartState {
            head: self
                .git
                .then(|| crate::report::git::head(workspace))
                .flatten(),
            todo: text.as_deref().and_then(count_todo),
            todo_digest: self
                .fingerprints
                .then(|| text.as_deref().map(digest))
                .flatten(),
            tree: None,
        }
    }

    /// The work tree's fingerprint for the stuck rule, read by the run's watcher while
    /// codex starts up (the agent asks its model before it changes anything).
    pub fn tree_at_start(&self, workspace: &Path, start: &mut StartState) {
        if self.git && self.fingerprints {
            let budget = crate::report::git::Budget::new(START_BUDGET);
            start.tree =
                crate::report::git::Tree::read(workspace, &budget).map(|t| t.digest(workspace));
        }
    }

    fn todo_text(&self, workspace: &Path) -> Option<String> {
        let name = self.todo_file.as_ref()?;
        read_inside(workspace, name, TODO_BYTES)
    }

    /// The TODO list's counts now, if it is configured and readable.
    pub fn todo(&self, workspace: &Path) -> Option<Todo> {
        count_todo(&self.todo_text(workspace)?)
    }

    /// Whether the run changed anything between `start` and now: a commit, the TODO file,
    /// the work tree's content. `None` when neither could be compared (no git, no TODO
    /// file): the stuck rule judges no run it cannot see.
    fn progress(
        &self,
        workspace: &Path,
        start: &StartState,
        end: &StartState,
        git: Option<&Git>,
        tree: Option<&crate::report::git::Tree>,
    ) -> Option<bool> {
        if !self.fingerprints {
            return None;
        }
        let committed = git.is_some_and(|g| {
            g.commits.is_some_and(|n| n > 0)
                || (g.head_before.is_some() && g.head_before != g.head_after)
        });
        let todo = start.todo_digest.zip(end.todo_digest).map(|(a, b)| a != b);
        let tree = start
            .tree
            .zip(tree.map(|t| t.digest(workspace)))
            .map(|(a, b)| a != b);
        match (todo, tree) {
            (None, None) if !committed => None,
            _ => Some(committed || todo == Some(true) || tree == Some(true)),
        }
    }

    /// What the run did, from its output (`output`, what it printed), its session file, the
    /// workspace, `start`, and `end`: HEAD and the TODO list as the run left them, read at
    /// its exit (the next run may be at work by the time git is asked the rest); read now
    /// when `None`.
    pub fn report(
        &self,
        workspace: &Path,
        output: &Output,
        start: &StartState,
        end: Option<StartState>,
    ) -> Report {
        let end = end.unwrap_or_else(|| self.at_start(workspace));
        let (tokens, session, printed) = self.tokens_and_message(output);
        let budget = crate::report::git::Budget::new(END_BUDGET);
        let tree = self
            .git
            .then(|| crate::report::git::Tree::read(workspace, &budget))
            .flatten()
            .map(|mut t| {
                t.head = end.head.clone();
                t
            });
        let git = self.git.then(|| {
            crate::report::git::state(workspace, start.head.clone(), tree.as_ref(), &budget)
        });
        let progress = self.progress(workspace, start, &end, git.as_ref(), tree.as_ref());
        Report {
            session_id: printed.session_id,
            tokens,
            rate_limits: session.rate_limits,
            last_message: session.last_message.or(printed.last_message.clone()),
            last_message_path: None,
            git,
            todo_before: start.todo,
            todo_after: end.todo,
            progress,
        }
    }

    /// The tokens a run used, from codex's session file when it is found (numbers the
    /// agent cannot write), else from the count codex prints where its own structure puts
    /// it; with what the session file and the output say otherwise.
    fn tokens_and_message(&self, output: &Output) -> (Option<Tokens>, Session, Printed) {
        let printed = Printed::read(&output.head, &output.tail);
        let session = printed
            .session_id
            .as_deref()
            .and_then(|id| self.session_file(id))
            .and_then(|path| read_bounded_tail(&path, SESSION_BYTES))
            .map(|text| Session::read(&text))
            .unwrap_or_default();
        let tokens = session.tokens.clone().or(printed.tokens.map(|used| Tokens {
            used,
            source: Some(TokenSource::Printed),
            ..Tokens::default()
        }));
        (tokens, session, printed)
    }

    /// What a live run has done so far, for its hand-off's summary, which is said under the
    /// run guard: its tokens and TODO list (files), and its commits, which cost git at most
    /// [`SUMMARY_BUDGET`] (HEAD itself is read from the repository's files). Nothing of
    /// the work tree.
    pub fn so_far(&self, workspace: &Path, output: &Output, start: &StartState) -> Report {
        let (tokens, _, _) = self.tokens_and_message(output);
        let git = self.git.then(|| {
            let after = crate::report::git::head(workspace);
            let budget = crate::report::git::Budget::new(SUMMARY_BUDGET);
            let commits = match (&start.head, &after) {
                (Some(b), Some(a)) => crate::report::git::commits_between(workspace, b, a, &budget),
                _ => None,
            };
            Git {
                head_before: start.head.clone(),
                head_after: after,
                commits,
                ..Git::default()
            }
        });
        Report {
            tokens,
            git,
            todo_before: start.todo,
            todo_after: self.todo(workspace),
            ..Report::default()
        }
    }

    /// Codex's session file for `session_id`: `sessions/YYYY/MM/DD/rollout-…-<id>.jsonl`
    /// under `$CODEX_HOME`, looked for on the days around today.
    fn session_file(&self, session_id: &str) -> Option<PathBuf> {
        let home = self.codex_home.as_ref()?;
        let suffix = format!("-{session_id}.jsonl");
        let today = chrono::Local::now().date_naive();
        (0..3)
            .filter_map(|back| today.checked_sub_days(chrono::Days::new(back)))
            .map(|day| day.format("%Y/%m/%d").to_string())
            .find_map(|dir| {
                let dir = home.join("sessions").join(dir);
                std::fs::read_dir(&dir).ok()?.flatten().find_map(|e| {
                    let name = e.file_name();
                    let name = name.to_str()?;
                    (name.starts_with("rollout-") && name.ends_with(&suffix)).then(|| e.path())
                })
            })
    }
}

/// Where a run's last message is kept whole: beside its log, pruned with it.
pub fn last_message_path(log_path: &Path) -> PathBuf {
    let mut path = log_path.as_os_str().to_owned();
    path.push(".last-message.txt");
    PathBuf::from(path)
}

/// Keeps the whole last message beside the run log (`<log>.last-message.txt`) and puts its
/// opening and the file's path into `report`. A failure to write leaves the opening only.
pub fn keep_last_message(report: &mut Report, log_path: &Path) {
    let Some(message) = report.last_message.take() else {
        return;
    };
    let path = last_message_path(log_path);
    let written = crate::os::logging::create_new_log(&path).and_then(|mut f| {
        use std::io::Write;
        f.write_all(message.as_bytes())
    });
    if written.is_ok() {
        report.last_message_path = Some(path.to_string_lossy().into_owned());
    }
    report.last_message = Some(opening(&message, MESSAGE_OPENING));
}

/// The first `chars` characters of `text` on one line, with `…` when cut.
pub fn opening(text: &str, chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// What codex printed that we can trust: the session id from the header (the block before
/// the first `user` line), and, after the last `codex` line, the last `tokens used` count
/// and the message between them.
#[derive(Debug, Default, Clone, PartialEq)]
struct Printed {
    session_id: Option<String>,
    tokens: Option<u64>,
    last_message: Option<String>,
}

impl Printed {
    /// `head`: the start of the run's output; `tail`: its end (the same text when short).
    fn read(head: &str, tail: &str) -> Printed {
        let first: Vec<&str> = head.lines().collect();
        let header_end = first.iter().position(|l| *l == "user").unwrap_or(0);
        let session_id = first[..header_end]
            .iter()
            .find_map(|l| l.strip_prefix("session id: "))
            .map(str::trim)
            .filter(|id| is_session_id(id))
            .map(str::to_string);
        // Looper's own trailer is no part of the run's output.
        let mut lines: Vec<&str> = tail
            .lines()
            .filter(|l| !l.starts_with("# codex_exec_return_code="))
            .collect();
        // The blank line before the trailer is Looper's too.
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        match final_turn(&lines) {
            Some((message, tokens)) => Printed {
                session_id,
                tokens: Some(tokens),
                last_message: (!message.trim().is_empty()).then(|| message.trim().to_string()),
            },
            // No count where codex puts one (a failed turn): what follows its last `codex`
            // line is still the agent's last word.
            None => {
                let message = lines
                    .iter()
                    .rposition(|l| *l == "codex")
                    .map(|at| lines[at + 1..].join("\n").trim().to_string())
                    .filter(|m| !m.is_empty());
                Printed {
                    session_id,
                    tokens: None,
                    last_message: message,
                }
            }
        }
    }
}

/// The end of a turn as codex prints it, and only as codex prints it: on stderr `codex`,
/// the final message, `tokens used` and the count; then the same message again on stdout,
/// last. The agent writes the message (and tool output before it), so a `tokens used` line
/// of its own can stand anywhere in it: only the split where what follows the count is the
/// very message between `codex` and `tokens used` counts, and of those the one with the
/// longest message (a forged count inside the message leaves a shorter, inner split). The
/// message and the count; `None` when the output does not end like that.
fn final_turn(lines: &[&str]) -> Option<(String, u64)> {
    let n = lines.len();
    (0..n.saturating_sub(1))
        .filter(|&i| lines[i] == "tokens used")
        .find_map(|i| {
            let count = parse_count(lines[i + 1])?;
            let after = &lines[i + 2..];
            let k = after.len();
            let start = i.checked_sub(k + 1)?;
            (lines[start] == "codex" && lines[start + 1..i] == *after)
                .then(|| (after.join("\n"), count))
        })
}

/// A session id as codex writes it: a UUID (hex digits and dashes), nothing that could
/// make a path.
fn is_session_id(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// `11,023` (codex's thousands separators) or `11023`.
fn parse_count(line: &str) -> Option<u64> {
    let digits: String = line.trim().chars().filter(|c| *c != ',').collect();
    (!digits.is_empty() && digits.len() <= 19 && digits.chars().all(|c| c.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// What codex's session file says: the last totals, the last rate limits, the final answer.
#[derive(Debug, Default, Clone, PartialEq)]
struct Session {
    tokens: Option<Tokens>,
    rate_limits: Option<RateLimits>,
    last_message: Option<String>,
}

impl Session {
    fn read(text: &str) -> Session {
        let mut s = Session::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let payload = &v["payload"];
            match payload["type"].as_str() {
                Some("token_count") => {
                    if let Some(t) = totals(&payload["info"]["total_token_usage"]) {
                        s.tokens = Some(t);
                    }
                    if let Some(r) = rate_limits(&payload["rate_limits"]) {
                        s.rate_limits = Some(r);
                    }
                }
                Some("task_complete") => {
                    if let Some(m) = payload["last_agent_message"].as_str() {
                        s.last_message = Some(cut_bytes(m, MESSAGE_BYTES));
                    }
                }
                _ => {}
            }
        }
        s
    }
}

fn totals(u: &serde_json::Value) -> Option<Tokens> {
    let input = u["input_tokens"].as_u64()?;
    let output = u["output_tokens"].as_u64()?;
    let cached = u["cached_input_tokens"].as_u64().unwrap_or(0);
    Some(Tokens {
        used: input.saturating_sub(cached).saturating_add(output),
        source: Some(TokenSource::Session),
        input: Some(input),
        cached_input: Some(cached),
        output: Some(output),
        reasoning: u["reasoning_output_tokens"].as_u64(),
    })
}

pub(crate) fn rate_limits(r: &serde_json::Value) -> Option<RateLimits> {
    let window = |w: &serde_json::Value| {
        Some(Window {
            used_percent: w["used_percent"].as_f64().filter(|p| p.is_finite())?,
            window_minutes: w["window_minutes"].as_u64(),
            resets_at: w["resets_at"].as_i64(),
        })
    };
    let limits = RateLimits {
        primary: window(&r["primary"]),
        secondary: window(&r["secondary"]),
    };
    (limits.primary.is_some() || limits.secondary.is_some()).then_some(limits)
}

/// Counts Markdown task items; `None` for text that is not text (a NUL byte).
fn count_todo(text: &str) -> Option<Todo> {
    if text.contains('\0') {
        return None;
    }
    let mut todo = Todo::default();
    for line in text.lines() {
        let item = line.trim_start();
        let Some(rest) = ["- [", "* [", "+ ["]
            .iter()
            .find_map(|m| item.strip_prefix(m))
        else {
            continue;
        };
        match rest.get(..2) {
            Some(" ]") => todo.open += 1,
            Some("x]") | Some("X]") => todo.done += 1,
            _ => {}
        }
    }
    Some(todo)
}

/// At most `limit` bytes of `c`, cut at a character boundary.
fn cut_bytes(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut at = limit;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s[..at].to_string()
}

/// `name` inside `workspace`, read (at most `limit` bytes, as text) only when the path,
/// every link resolved, stays inside the workspace and ends at a regular file.
fn read_inside(workspace: &Path, name: &Path, limit: u64) -> Option<String> {
    if name.is_absolute() {
        return None;
    }
    let root = workspace.canonicalize().ok()?;
    let path = root.join(name).canonicalize().ok()?;
    if !path.starts_with(&root) {
        return None;
    }
    crate::os::paths::read_regular(&path, limit)
}

/// The last `limit` bytes of a regular file (its first line dropped when it was cut).
pub(crate) fn read_bounded_tail(path: &Path, limit: u64) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = crate::os::paths::open_regular(path)?;
    let size = file.metadata().ok()?.len();
    let from = size.saturating_sub(limit);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Some(match (from > 0, text.find('\n')) {
        (true, Some(nl)) => text[nl + 1..].to_string(),
        _ => text,
    })
}

/// One line for people: `run <id> <outcome> after <duration>, <tokens> tokens, <n>
/// commits, TODO <open> → <open>`, leaving out what is not known.
pub fn summary(run_id: &str, outcome: &str, seconds: f64, report: &Report) -> String {
    let mut parts = vec![format!(
        "run {run_id} {outcome} after {}",
        duration(seconds)
    )];
    if let Some(t) = &report.tokens {
        parts.push(format!("{} tokens", thousands(t.used)));
    }
    if let Some(n) = report.git.as_ref().and_then(|g| g.commits) {
        parts.push(format!("{n} commit{}", if n == 1 { "" } else { "s" }));
    }
    if let (Some(b), Some(a)) = (report.todo_before, report.todo_after) {
        parts.push(format!("TODO {} → {} open", b.open, a.open));
    } else if let Some(a) = report.todo_after {
        parts.push(format!("TODO {} open", a.open));
    }
    parts.join(", ")
}

/// `75 s`, `12 min`, `2.5 h`.
pub fn duration(seconds: f64) -> String {
    if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else if seconds < 7200.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// `11,023`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether `name` would be a TODO file name a user could mean (relative, no `..`).
pub fn valid_todo_name(name: &OsStr) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && p.is_relative()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "0199a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";

    fn transcript(message: &str, tokens: &str) -> String {
        format!(
            "OpenAI Codex v0.171.0 (research preview)\n--------\nworkdir: /w\nmodel: m\nsession id: {SID}\n--------\nuser\ndo the task\n\nexec\n/bin/sh -c 'echo codex; echo tokens used; echo 5'\ncodex\ntokens used\n5\n\ncodex\n{message}\ntokens used\n{tokens}\n{message}\n"
        )
    }

    #[test]
    fn printed_lines_count_only_where_codex_puts_them() {
        let p = {
            let t = transcript("All done.", "11,023");
            Printed::read(&t, &t)
        };
        assert_eq!(p.session_id.as_deref(), Some(SID));
        assert_eq!(p.tokens, Some(11_023));
        assert_eq!(p.last_message.as_deref(), Some("All done."));
        // A session id printed by a tool, after the header, is not codex's.
        let fake = "user\nx\nsession id: 11111111-1111-1111-1111-111111111111\n";
        assert_eq!(Printed::read(fake, fake).session_id, None);
        // A failed turn prints no count.
        let failed = Printed::read("", "codex\nsorry\n");
        assert_eq!(
            (failed.tokens, failed.last_message.as_deref()),
            (None, Some("sorry"))
        );
        // A message that ends with a count of its own: codex's count stands (the message is
        // printed twice, so the forged one sits inside a shorter split).
        let forged = "x\ncodex\nok\ntokens used\n1";
        let t = transcript(forged, "11,023");
        let p = Printed::read(&t, &t);
        assert_eq!(p.tokens, Some(11_023), "{t}");
        assert_eq!(p.last_message.as_deref(), Some(forged));
        // Without codex's own end (stderr lost, say), a count in the message is no count.
        let bare = format!("codex\n{forged}\n");
        assert_eq!(Printed::read(&bare, &bare).tokens, None);
        assert_eq!(Printed::read("", "no codex at all").last_message, None);
        // Nothing that could make a path.
        assert_eq!(
            Printed::read("session id: ../../../../etc/passwd-000000000\nuser\n", "").session_id,
            None
        );
    }

    /// The end of a real `codex exec` 0.171.0 run against the stand-in model (its combined
    /// stdout and stderr as Looper's log holds them).
    #[test]
    fn the_real_codex_end_of_turn_is_read() {
        let log = "OpenAI Codex v0.171.0\n--------\nworkdir: /w\nmodel: gpt-5.5\nprovider: fake\napproval: never\nsandbox: workspace-write [workdir, /tmp, $TMPDIR]\nreasoning effort: none\nreasoning summaries: none\nsession id: 01a2517d-dd6f-7b92-8009-db85a1e627a7\n--------\nuser\nRUN: echo hi\nsay done\nexec\n/bin/bash -lc 'echo hi' in /w\n succeeded in 58ms:\nhi\n\ncodex\ndone\ntokens used\n22,046\ndone\n\n# codex_exec_return_code=0\n";
        let p = Printed::read(log, log);
        assert_eq!(
            p.session_id.as_deref(),
            Some("01a2517d-dd6f-7b92-8009-db85a1e627a7")
        );
        assert_eq!(
            (p.tokens, p.last_message.as_deref()),
            (Some(22_046), Some("done"))
        );
    }

    #[test]
    fn the_session_file_gives_the_split_the_limits_and_the_answer() {
        let text = [
            r#"{"type":"session_meta","payload":{"id":"x"}}"#,
            r#"{"type":"event_msg","payload":{"type":"token_count","info":null,"rate_limits":{"primary":{"used_percent":7.0,"window_minutes":300,"resets_at":1763483205}}}}"#,
            "not json",
            r#"{"type":"event_msg","payload":{"type":"token_count","info":{"total_token_usage":{"input_tokens":24690,"cached_input_tokens":4000,"output_tokens":1356,"reasoning_output_tokens":100,"total_tokens":26046}},"rate_limits":{"primary":{"used_percent":9.5,"window_minutes":300,"resets_at":1763483205},"secondary":{"used_percent":31.0,"window_minutes":10080,"resets_at":1763606387}}}}"#,
            r#"{"type":"event_msg","payload":{"type":"task_complete","last_agent_message":"Ticked item 3.","duration_ms":5}}"#,
        ]
        .join("\n");
        let s = Session::read(&text);
        let t = s.tokens.unwrap();
        assert_eq!(t.used, 24690 - 4000 + 1356);
        assert_eq!(
            (t.input, t.cached_input, t.output, t.reasoning),
            (Some(24690), Some(4000), Some(1356), Some(100))
        );
        let r = s.rate_limits.unwrap();
        assert_eq!(r.primary.unwrap().used_percent, 9.5);
        assert_eq!(r.secondary.unwrap().window_minutes, Some(10080));
        assert_eq!(s.last_message.as_deref(), Some("Ticked item 3."));
        assert_eq!(Session::read("garbage\n{}\n"), Session::default());
    }

    #[test]
    fn todo_items_are_counted_nested_too() {
        let text = "# Plan\n- [x] one\n- [ ] two\n  - [ ] two.a\n  * [X] two.b\n+ [ ] three\n- [] not an item\n-[ ] nor this\ntext - [ ] nor this\n";
        assert_eq!(count_todo(text), Some(Todo { open: 3, done: 2 }));
        assert_eq!(count_todo("bin\0ary"), None);
        assert_eq!(count_todo(""), Some(Todo::default()));
    }

    #[test]
    fn numbers_read_as_codex_prints_them() {
        assert_eq!(parse_count("11,023"), Some(11023));
        assert_eq!(parse_count("1,2,3"), Some(123));
        assert_eq!(parse_count("-5"), None);
        assert_eq!(parse_count("99999999999999999999999"), None);
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(opening("a\n b  c", 3), "a b…");
        assert_eq!(opening("ab", 3), "ab");
    }

    #[test]
    fn a_summary_names_what_is_known() {
        let mut r = Report {
            tokens: Some(Tokens {
                used: 11023,
                ..Tokens::default()
            }),
            ..Report::default()
        };
        assert_eq!(
            summary("abc", "handed_off", 75.0, &r),
            "run abc handed_off after 75 s, 11,023 tokens"
        );
        r.git = Some(Git {
            commits: Some(1),
            ..Git::default()
        });
        r.todo_before = Some(Todo { open: 4, done: 1 });
        r.todo_after = Some(Todo { open: 3, done: 2 });
        assert_eq!(
            summary("abc", "ok", 600.0, &r),
            "run abc ok after 10 min, 11,023 tokens, 1 commit, TODO 4 → 3 open"
        );
    }

    #[test]
    fn files_out_of_the_workspace_or_not_regular_are_not_read() {
        let dir = std::env::temp_dir().join(format!("looper-report-{}", std::process::id()));
        let ws = dir.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(dir.join("outside.md"), "- [ ] secret\n").unwrap();
        std::fs::write(ws.join("TODO.md"), "- [ ] a\n- [x] b\n").unwrap();
        std::os::unix::fs::symlink(dir.join("outside.md"), ws.join("link.md")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(ws.join("fifo.md"))
            .status()
            .unwrap();
        assert!(fifo.success());
        let src = |name: &str| Sources {
            todo_file: Some(PathBuf::from(name)),
            ..Sources::default()
        };
        assert_eq!(src("TODO.md").todo(&ws), Some(Todo { open: 1, done: 1 }));
        assert_eq!(src("link.md").todo(&ws), None);
        assert_eq!(src("../outside.md").todo(&ws), None);
        assert_eq!(src("fifo.md").todo(&ws), None);
        assert_eq!(src("missing.md").todo(&ws), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
