//! One run as the history keeps it (`runs.jsonl`, `/runs`, the page): who asked for it,
//! where it ran, when it started and ended, how, and what it did.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Outcome, Report, Stamp, StopReason, Trigger};

/// One run, as `/runs` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub run_id: String,
    pub request_id: String,
    pub trigger: Trigger,
    pub pid: u32,
    #[serde(serialize_with = "lossy_path")]
    pub workspace: PathBuf,
    #[serde(serialize_with = "lossy_path")]
    pub log_path: PathBuf,
    pub started_at: Stamp,
    /// `null` while it runs.
    pub ended_at: Option<Stamp>,
    /// `null` while it runs, and when it could not be learnt.
    pub return_code: Option<i32>,
    pub duration_seconds: Option<f64>,
    /// Why it ended other than by itself (Looper stopped it, someone else did, the usage
    /// limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<StopReason>,
    /// How it ended, as `/metrics` counts it; `null` while it runs, set on every ended row.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    /// What it did (tokens, last message, git, TODO); at its start, where it started from.
    #[serde(default, flatten)]
    pub report: Report,
}

impl Row {
    /// Whether it has ended.
    pub fn ended(&self) -> bool {
        self.ended_at.is_some()
    }
}

/// A path as JSON text, whatever bytes it holds (JSON strings are UTF-8; a path need not be).
pub fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
