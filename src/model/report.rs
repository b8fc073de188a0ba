//! What a run did, as its history row keeps it: the tokens it used, the account's
//! rate-limit use codex saw, its last message, git around it, the TODO list before and
//! after. Each part is empty when it could not be read. (How each is read is
//! [`crate::report`]'s.)

use serde::{Deserialize, Serialize};

/// Where a run's token count was read.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// Codex's session file under `$CODEX_HOME`: numbers the agent cannot write.
    Session,
    /// The `tokens used` count codex printed at the end of its output, taken only where
    /// codex's own structure puts it.
    Printed,
}

/// Tokens a run used, as codex counts them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tokens {
    /// What codex prints as `tokens used`: input − cached input + output, over the run.
    pub used: u64,
    /// Where `used` was read (absent in rows from before it was said).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TokenSource>,
    /// The split, where codex's session file was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
}

/// One rate-limit window of the account, as codex last saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub used_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u64>,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<i64>,
}

/// The account's rate-limit use: the short window (5 hours) and the long one (a week).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary: Option<Window>,
}

/// Markdown task items: `- [ ]` open, `- [x]` done, nested ones too.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Todo {
    pub open: u64,
    pub done: u64,
}

/// What a run did: each part empty when it could not be read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    #[serde(default)]
    pub session_id: Option<String>,
    /// Whether it changed anything (a commit, the TODO file, the work tree), where the stuck
    /// rule could compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<bool>,
    #[serde(default)]
    pub tokens: Option<Tokens>,
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// The opening of the agent's last message (`MESSAGE_OPENING` characters).
    #[serde(default)]
    pub last_message: Option<String>,
    /// Where the whole last message is kept, beside the run log.
    #[serde(default)]
    pub last_message_path: Option<String>,
    #[serde(default)]
    pub git: Option<Git>,
    #[serde(default)]
    pub todo_before: Option<Todo>,
    #[serde(default)]
    pub todo_after: Option<Todo>,
}

/// The git state around a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Git {
    pub head_before: Option<String>,
    pub head_after: Option<String>,
    /// Commits reachable from `head_after` and not from `head_before`.
    pub commits: Option<u64>,
    /// `git diff --shortstat` between the two heads.
    pub files_changed: Option<u64>,
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
    /// Whether the work tree differs from HEAD (staged, changed or untracked files) at the
    /// end. A tracked file counts as changed when its `lstat` differs from the index's.
    pub dirty: Option<bool>,
}
