//! Run history: every run becomes a row in `runs.jsonl` in the log directory, appended when
//! it starts and again, completed, when it ends (the later line wins). The file survives
//! restarts; a torn line from a crash mid-write is skipped with a warning. The newest rows
//! are also kept in memory so that `/runs` reads no file.

use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::logging::Q;

/// The most rows `/runs` can return, and how many we keep in memory.
pub const MAX_ROWS: usize = 1000;

/// One run, as `/runs` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub run_id: String,
    pub request_id: String,
    /// `http` or `autopoll`.
    pub trigger: String,
    pub pid: u32,
    pub workspace: PathBuf,
    pub log_path: PathBuf,
    pub started_at: String,
    pub ended_at: Option<String>,
    /// `null` while running.
    pub return_code: Option<i32>,
    pub duration_seconds: Option<f64>,
    /// Why Looper stopped it, when it did on its own (`hung`, `shutdown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// The history file and its newest rows.
pub struct History {
    path: PathBuf,
    rows: Mutex<VecDeque<Row>>,
}

/// Folds the lines of a history file into rows in start order; the count of bad lines.
pub fn parse(text: &str) -> (Vec<Row>, usize) {
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, Row> = HashMap::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Row>(line) {
            Ok(row) => {
                if !by_id.contains_key(&row.run_id) {
                    order.push(row.run_id.clone());
                }
                by_id.insert(row.run_id.clone(), row);
            }
            Err(_) => bad += 1,
        }
    }
    let rows = order
        .into_iter()
        .filter_map(|id| by_id.remove(&id))
        .collect();
    (rows, bad)
}

impl History {
    /// Loads `runs.jsonl` from `dir`. A missing file is an empty history; unreadable lines
    /// are skipped with a warning; a torn last line gets its newline so the next append
    /// starts clean.
    pub fn open(dir: &Path) -> History {
        let path = dir.join("runs.jsonl");
        let mut text = String::new();
        if let Ok(mut f) = OpenOptions::new().read(true).append(true).open(&path) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            if bytes.last().is_some_and(|b| *b != b'\n') {
                let _ = f.seek(SeekFrom::End(0));
                let _ = f.write_all(b"\n");
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let (rows, bad) = parse(&text);
        if bad > 0 {
            log::warn!(
                "history.skipped_lines count={bad} path={}",
                Q(&path.to_string_lossy())
            );
        }
        let start = rows.len().saturating_sub(MAX_ROWS);
        History {
            path,
            rows: Mutex::new(rows.into_iter().skip(start).collect()),
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, VecDeque<Row>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a row (new, or a later state of a known run) in memory and in the file.
    pub fn record(&self, row: Row) {
        let rows = self.rows();
        self.record_locked(rows, row);
    }

    /// Records the end of a run unless its row has ended meanwhile; whether it did.
    pub fn record_end_once(&self, row: Row) -> bool {
        let rows = self.rows();
        let open = rows
            .iter()
            .rev()
            .find(|r| r.run_id == row.run_id)
            .is_some_and(|r| r.ended_at.is_none());
        if open {
            self.record_locked(rows, row);
        }
        open
    }

    /// The rows of runs that have not ended, as far as this history knows.
    pub fn unended(&self) -> Vec<Row> {
        let rows = self.rows();
        rows.iter()
            .filter(|r| r.ended_at.is_none())
            .cloned()
            .collect()
    }

    fn record_locked(&self, mut rows: std::sync::MutexGuard<'_, VecDeque<Row>>, row: Row) {
        let mut line = serde_json::to_string(&row).unwrap_or_default();
        line.push('\n');
        match rows.iter_mut().rev().find(|r| r.run_id == row.run_id) {
            Some(known) => *known = row,
            None => {
                rows.push_back(row);
                if rows.len() > MAX_ROWS {
                    rows.pop_front();
                }
            }
        }
        // One write of a whole line under the lock: lines never interleave.
        let written =
            crate::logging::open_append(&self.path).and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            log::error!(
                "history.write_failed path={} error={}",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string())
            );
        }
    }

    /// The newest `limit` rows, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Row> {
        let rows = self.rows();
        rows.iter().rev().take(limit).cloned().collect()
    }

    /// The newest row of a run that has ended.
    pub fn last_finished(&self) -> Option<Row> {
        let rows = self.rows();
        rows.iter().rev().find(|r| r.return_code.is_some()).cloned()
    }

    /// The workspaces of the newest runs, newest first, each once, at most `limit`.
    pub fn recent_workspaces(&self, limit: usize) -> Vec<std::path::PathBuf> {
        let rows = self.rows();
        let mut out: Vec<std::path::PathBuf> = Vec::new();
        for row in rows.iter().rev() {
            if out.len() == limit {
                break;
            }
            if !out.contains(&row.workspace) {
                out.push(row.workspace.clone());
            }
        }
        out
    }

    /// The row of `run_id`, if it is among the kept rows.
    pub fn get(&self, run_id: &str) -> Option<Row> {
        let rows = self.rows();
        rows.iter().rev().find(|r| r.run_id == run_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, rc: Option<i32>) -> Row {
        Row {
            run_id: id.into(),
            request_id: id.into(),
            trigger: "http".into(),
            pid: 1,
            workspace: "/w".into(),
            log_path: "/l".into(),
            started_at: "t".into(),
            ended_at: rc.map(|_| "t2".into()),
            return_code: rc,
            duration_seconds: rc.map(|_| 1.5),
            stop_reason: None,
        }
    }

    #[test]
    fn later_lines_complete_earlier_ones_and_torn_lines_are_skipped() {
        let lines = [
            serde_json::to_string(&row("a", None)).unwrap(),
            serde_json::to_string(&row("b", None)).unwrap(),
            serde_json::to_string(&row("a", Some(0))).unwrap(),
            "{\"run_id\":\"c\",\"req".to_string(),
        ];
        let (rows, bad) = parse(&lines.join("\n"));
        assert_eq!(bad, 1);
        assert_eq!(rows, vec![row("a", Some(0)), row("b", None)]);
    }

    #[test]
    fn survives_reopening() {
        let dir = std::env::temp_dir().join(format!("looper-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("runs.jsonl"), "{\"torn").unwrap();
        let h = History::open(&dir);
        assert!(h.newest(10).is_empty());
        h.record(row("x", None));
        h.record(row("y", None));
        h.record(row("x", Some(-15)));
        let again = History::open(&dir);
        assert_eq!(again.newest(10), vec![row("y", None), row("x", Some(-15))]);
        assert_eq!(again.newest(1).len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
