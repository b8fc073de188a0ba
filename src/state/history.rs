//! Run history: every run becomes a row in `runs.jsonl` in the log directory, appended when
//! it starts and again, completed, when it ends (the later line wins). The file survives
//! restarts; a torn line from a crash mid-write is skipped with a warning. The newest rows
//! are also kept in memory so that `/runs` reads no file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::model::Row;
use crate::os::logging::Q;

/// The history's file, in the log directory.
pub const FILE_NAME: &str = "runs.jsonl";

/// The most rows `/runs` can return, and how many we keep in memory.
pub const MAX_ROWS: usize = 1000;

/// The history file and its newest rows.
pub struct History {
    path: PathBuf,
    /// Held while a line is appended (and over the memory update before it, so that lines
    /// reach the file in the order their rows changed). Readers never take it.
    writer: Mutex<()>,
    /// Memory only: what `/runs` and `/status` read.
    rows: Mutex<VecDeque<Row>>,
    /// Every run id the file ever held, so that no id is handed out twice.
    ids: Mutex<HashSet<String>>,
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
        let path = dir.join(FILE_NAME);
        let mut text = String::new();
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
        };
        if let Ok(mut f) = opened {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            if bytes.last().is_some_and(|b| *b != b'\n') {
                let _ = f.seek(SeekFrom::End(0));
                let _ = f.write_all(b"\n");
            }
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        let (rows, bad) = parse(&text);
        let ids = rows.iter().map(|r| r.run_id.clone()).collect();
        if bad > 0 {
            log::warn!(
                "history.skipped_lines count={bad} path={}",
                Q(&path.to_string_lossy())
            );
        }
        let start = rows.len().saturating_sub(MAX_ROWS);
        History {
            path,
            writer: Mutex::new(()),
            rows: Mutex::new(rows.into_iter().skip(start).collect()),
            ids: Mutex::new(ids),
        }
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, VecDeque<Row>> {
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` was ever a run id in this history.
    pub fn knows_id(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Records a row (new, or a later state of a known run) in memory and in the file.
    pub fn record(&self, row: Row) {
        self.record_if(row, |_, _| true);
    }

    /// Records the end of a run unless its row has ended meanwhile; whether it did.
    pub fn record_end_once(&self, row: Row) -> bool {
        self.record_if(row, |rows, row| {
            rows.iter()
                .rev()
                .find(|r| r.run_id == row.run_id)
                .is_some_and(|r| r.ended_at.is_none())
        })
    }

    /// Records `row` when `wanted` says so, given the rows in memory; whether it did. The
    /// file is written outside the rows' lock: `/runs` never waits for the disk.
    fn record_if(&self, row: Row, wanted: impl FnOnce(&VecDeque<Row>, &Row) -> bool) -> bool {
        let _writing = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut rows = self.rows();
            if !wanted(&rows, &row) {
                return false;
            }
            match rows.iter_mut().rev().find(|r| r.run_id == row.run_id) {
                Some(known) => *known = row.clone(),
                None => {
                    rows.push_back(row.clone());
                    if rows.len() > MAX_ROWS {
                        rows.pop_front();
                    }
                }
            }
        }
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(row.run_id.clone());
        let line = match serde_json::to_string(&row) {
            Ok(mut line) => {
                line.push('\n');
                line
            }
            Err(e) => {
                log::error!(
                    "history.serialize_failed run_id={} error={}",
                    row.run_id,
                    Q(&e.to_string())
                );
                return true;
            }
        };
        // One write of a whole line: lines never interleave.
        let written = crate::os::logging::open_append(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            log::error!(
                "history.write_failed path={} error={}",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string())
            );
        }
        true
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
            trigger: crate::model::Trigger::Http,
            pid: 1,
            workspace: "/w".into(),
            log_path: "/l".into(),
            started_at: crate::model::Stamp::parse("2026-12-07T10:00:00+00:00").unwrap(),
            ended_at: rc.and_then(|_| crate::model::Stamp::parse("2026-12-07T10:00:01+00:00")),
            return_code: rc,
            duration_seconds: rc.map(|_| 1.5),
            stop_reason: None,
            outcome: None,
            report: Default::default(),
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
