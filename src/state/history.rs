//! Run history: every run becomes a row in `runs.jsonl` in the log directory, appended when
//! it starts and again, completed, when it ends (the later line wins). The file survives
//! restarts, a full disk and a crash mid-write:
//! - a line is one write; one that fails (a full disk) is cut off again, so the file never
//!   holds half a row, and its row waits in memory to be written with the next line or at
//!   the next [`History::retry`] (autopoll's tick, shutdown);
//! - at start the file is read a line at a time, keeping the newest [`MAX_ROWS`] rows (and
//!   every id ever given out); a line that is no row is skipped and counted;
//! - past [`ROTATE_BYTES`] it is rewritten with the last state of the newest rows, the
//!   whole older file kept beside it as `runs.jsonl.1` (whose ids are still known);
//! - a file that cannot be read stops the start, naming it; one whose every line is garbage
//!   is set aside as `runs.jsonl.corrupt-<time>` ([`Opened::corrupt`]), never read as empty.
//!
//! The newest rows are kept in memory so that `/runs` reads no file.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::model::Row;
use crate::os::logging::Q;

/// The history's file, in the log directory.
pub const FILE_NAME: &str = "runs.jsonl";

/// The most rows `/runs` can return, and how many we keep in memory.
pub const MAX_ROWS: usize = 1000;

/// The size past which the history is rewritten with its newest rows only (the rest kept
/// once as `runs.jsonl.1`): about ten thousand runs.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// The longest line read as a row; a longer one is garbage.
const MAX_LINE: usize = 1 << 20;

/// The history file and its newest rows.
pub struct History {
    path: PathBuf,
    /// Held while lines are appended (and over the memory update before it, so that lines
    /// reach the file in the order their rows changed); holds the rows not written yet.
    writer: Mutex<Vec<Row>>,
    /// Memory only: what `/runs` and `/status` read.
    rows: Mutex<VecDeque<Row>>,
    /// Every run id the files ever held, so that no id is handed out twice.
    ids: Mutex<HashSet<String>>,
    /// The rotation size (a test may make it small).
    rotate_bytes: u64,
}

/// What opening the history found.
pub struct Opened {
    pub history: History,
    /// A file whose every line was garbage, set aside here (with why): the history starts
    /// empty, and the loop must wait for the operator.
    pub corrupt: Option<(PathBuf, String)>,
}

/// The line that takes back a row recorded before its run's spawn, which failed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Discarded {
    run_id: String,
    discarded: bool,
}

/// The newest rows of a history being read, a line at a time.
#[derive(Default)]
struct Reading {
    order: VecDeque<String>,
    by_id: HashMap<String, Row>,
    /// Runs that left the window while the file was read.
    dropped: HashSet<String>,
    ids: HashSet<String>,
    good: usize,
    bad: usize,
}

impl Reading {
    fn line(&mut self, line: &str, keep_rows: bool) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(row) = serde_json::from_str::<Row>(line) else {
            match serde_json::from_str::<Discarded>(line) {
                Ok(d) if d.discarded => {
                    // A run recorded before its spawn, which failed: no run at all.
                    self.good += 1;
                    self.ids.insert(d.run_id.clone());
                    if self.by_id.remove(&d.run_id).is_some() {
                        self.order.retain(|id| *id != d.run_id);
                    }
                }
                _ => self.bad += 1,
            }
            return;
        };
        self.good += 1;
        if !self.ids.contains(&row.run_id) {
            self.ids.insert(row.run_id.clone());
        }
        if !keep_rows {
            return;
        }
        if let Some(kept) = self.by_id.get_mut(&row.run_id) {
            *kept = row;
        } else if !self.dropped.contains(&row.run_id) {
            // A later line of a run already dropped from the window stays dropped.
            self.order.push_back(row.run_id.clone());
            self.by_id.insert(row.run_id.clone(), row);
            if self.order.len() > MAX_ROWS {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                    self.dropped.insert(old);
                }
            }
        }
    }

    fn rows(mut self) -> (VecDeque<Row>, HashSet<String>) {
        let rows = self
            .order
            .iter()
            .filter_map(|id| self.by_id.remove(id))
            .collect();
        (rows, self.ids)
    }
}

/// Reads `file` a line at a time into `reading`; an I/O error is the caller's.
fn read_lines(file: File, reading: &mut Reading, keep_rows: bool) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_LINE {
            // Garbage without end: skip to the next newline.
            reading.bad += 1;
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = r
                    .by_ref()
                    .take(MAX_LINE as u64)
                    .read_until(b'\n', &mut rest)?;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            continue;
        }
        reading.line(&String::from_utf8_lossy(&buf), keep_rows);
    }
}

/// Opens `path` to read, without following a link at its name; `None` when it is missing.
fn open_existing(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => {
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Appends `bytes` as one write; a write that fails part way is cut off again, so that the
/// file never ends in half a line.
pub(crate) fn append_whole(path: &Path, bytes: &[u8]) -> std::io::Result<u64> {
    let mut f = {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        // Without blocking on a FIFO put in the file's place, and only into a regular file
        // of Looper's user: anything else is refused, never waited on.
        let f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() || meta.uid() != crate::os::procs::current_uid() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file of Looper's user",
                path.display()
            )));
        }
        f
    };
    let before = f.metadata()?.len();
    // A line cut short by a crash (no newline at the end) is ended first, so that the
    // next line stands alone.
    let torn = before > 0 && {
        use std::os::unix::fs::FileExt;
        let mut last = [0u8; 1];
        f.read_at(&mut last, before - 1).is_ok_and(|n| n == 1) && last[0] != b'\n'
    };
    let mut whole = Vec::with_capacity(bytes.len() + 1);
    if torn {
        whole.push(b'\n');
    }
    whole.extend_from_slice(bytes);
    match f.write_all(&whole) {
        Ok(()) => Ok(before + whole.len() as u64),
        Err(e) => {
            let _ = f.set_len(before);
            Err(e)
        }
    }
}

/// The line of `row` in the file.
fn line_of(row: &Row) -> Option<String> {
    match serde_json::to_string(row) {
        Ok(mut line) => {
            line.push('\n');
            Some(line)
        }
        Err(e) => {
            log::error!(
                "history.serialize_failed run_id={} error={}",
                row.run_id,
                Q(&e.to_string())
            );
            None
        }
    }
}

impl History {
    /// Loads `runs.jsonl` from `dir` (and the ids of `runs.jsonl.1`). A missing file is an
    /// empty history; lines that are no row are skipped with a warning. `Err`: the file is
    /// there but cannot be read (a directory, no permission): Looper must not start on an
    /// empty history that would reset every budget and forget every run id.
    pub fn open(dir: &Path) -> Result<Opened, String> {
        History::open_rotating(dir, ROTATE_BYTES)
    }

    fn open_rotating(dir: &Path, rotate_bytes: u64) -> Result<Opened, String> {
        let path = dir.join(FILE_NAME);
        let cannot = |p: &Path, e: std::io::Error| {
            format!(
                "{} cannot be read ({e}): move it away or give it back to Looper's user; Looper does not start on a history it cannot read (budgets and run ids would start from nothing)",
                p.display()
            )
        };
        let mut reading = Reading::default();
        let older = path.with_extension("jsonl.1");
        if let Some(f) = open_existing(&older).map_err(|e| cannot(&older, e))? {
            read_lines(f, &mut reading, false).map_err(|e| cannot(&older, e))?;
        }
        let older_bad = reading.bad;
        (reading.good, reading.bad) = (0, 0);
        let mut corrupt = None;
        let mut size = 0;
        if let Some(f) = open_existing(&path).map_err(|e| cannot(&path, e))? {
            size = f.metadata().map(|m| m.len()).unwrap_or(0);
            read_lines(f, &mut reading, true).map_err(|e| cannot(&path, e))?;
        }
        if reading.bad > 0 || older_bad > 0 {
            log::warn!(
                "history.skipped_lines count={} path={}",
                reading.bad + older_bad,
                Q(&path.to_string_lossy())
            );
        }
        if reading.good == 0 && reading.bad > 0 {
            // Nothing in it is a row: not Looper's history as it wrote it. Kept for the
            // operator, never overwritten.
            let aside = path.with_extension(format!(
                "jsonl.corrupt-{}",
                chrono::Local::now().format("%Y%m%d-%H%M%S")
            ));
            let why = format!("none of its {} lines is a row", reading.bad);
            match std::fs::rename(&path, &aside) {
                Ok(()) => {
                    log::error!(
                        "history.corrupt path={} kept_as={} reason={} hint=\"autopoll starts nothing until the operator resumes (looper resume)\"",
                        Q(&path.to_string_lossy()),
                        Q(&aside.to_string_lossy()),
                        Q(&why)
                    );
                    corrupt = Some((aside, why));
                    size = 0;
                }
                Err(e) => return Err(cannot(&path, e)),
            }
        }
        let (rows, ids) = reading.rows();
        let history = History {
            path,
            writer: Mutex::new(Vec::new()),
            rows: Mutex::new(rows),
            ids: Mutex::new(ids),
            rotate_bytes,
        };
        if size > rotate_bytes {
            history.rotate();
        }
        Ok(Opened { history, corrupt })
    }

    /// An empty history that writes nowhere that exists (for tests of other rooms).
    #[cfg(test)]
    pub fn detached() -> History {
        History {
            path: PathBuf::from("/nonexistent/looper/runs.jsonl"),
            writer: Mutex::new(Vec::new()),
            rows: Mutex::new(VecDeque::new()),
            ids: Mutex::new(HashSet::new()),
            rotate_bytes: ROTATE_BYTES,
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
        let mut pending = self.writer.lock().unwrap_or_else(|e| e.into_inner());
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
        // A row not written yet is written with this one, in order (its latest state).
        pending.retain(|p| p.run_id != row.run_id);
        pending.push(row);
        self.write_pending(&mut pending);
        true
    }

    /// Takes back the row of `run_id`, recorded before a spawn that failed: no run at all
    /// (its id stays known, never handed out again).
    pub fn discard(&self, run_id: &str) {
        let mut pending = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.rows().retain(|r| r.run_id != run_id);
        pending.retain(|p| p.run_id != run_id);
        let line = serde_json::to_string(&Discarded {
            run_id: run_id.to_string(),
            discarded: true,
        })
        .map(|l| l + "\n")
        .unwrap_or_default();
        if let Err(e) = append_whole(&self.path, line.as_bytes()) {
            log::error!(
                "history.write_failed path={} error={} hint=\"a run that never started keeps its row\"",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string())
            );
        }
    }

    /// Writes the rows a failed write left behind, if any; whether none is left.
    pub fn retry(&self) -> bool {
        let mut pending = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.is_empty() {
            self.write_pending(&mut pending);
        }
        pending.is_empty()
    }

    /// Whether every row is in the file.
    pub fn saved(&self) -> bool {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Appends the lines of `pending` in one write; on success they are gone, on failure
    /// they stay for the next try (the file unchanged).
    fn write_pending(&self, pending: &mut Vec<Row>) {
        let text: String = pending.iter().filter_map(line_of).collect();
        match append_whole(&self.path, text.as_bytes()) {
            Ok(size) => {
                if pending.len() > 1 {
                    log::info!("history.written rows={} after=write_failed", pending.len());
                }
                pending.clear();
                if size > self.rotate_bytes {
                    self.rotate();
                }
            }
            Err(e) => log::error!(
                "history.write_failed path={} error={} pending={} hint=\"written again with the next row or tick\"",
                Q(&self.path.to_string_lossy()),
                Q(&e.to_string()),
                pending.len()
            ),
        }
    }

    /// Rewrites the file with the last state of the rows in memory; the file as it was
    /// becomes `runs.jsonl.1` (the one before goes). The caller holds the writer (or has
    /// the history to itself).
    fn rotate(&self) {
        let rows: Vec<Row> = self.rows().iter().cloned().collect();
        let text: String = rows.iter().filter_map(line_of).collect();
        let new = self.path.with_extension("jsonl.new");
        let older = self.path.with_extension("jsonl.1");
        let done = (|| {
            let _ = std::fs::remove_file(&new);
            let mut f = crate::os::logging::create_new_log(&new)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            // The old file stays whole under its new name whatever happens next; the
            // rename over it is atomic.
            let _ = std::fs::remove_file(&older);
            std::fs::hard_link(&self.path, &older)?;
            std::fs::rename(&new, &self.path)
        })();
        match done {
            Ok(()) => log::info!(
                "history.rotated path={} kept_rows={} older={}",
                Q(&self.path.to_string_lossy()),
                rows.len(),
                Q(&older.to_string_lossy())
            ),
            Err(e) => {
                let _ = std::fs::remove_file(&new);
                log::warn!(
                    "history.rotate_failed path={} error={}",
                    Q(&self.path.to_string_lossy()),
                    Q(&e.to_string())
                );
            }
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

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("looper-hist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn lines(rows: &[Row]) -> String {
        rows.iter().filter_map(line_of).collect()
    }

    #[test]
    fn later_lines_complete_earlier_ones_and_garbage_is_skipped() {
        let d = dir("lines");
        let text = lines(&[row("a", None), row("b", None), row("a", Some(0))])
            + "not a row\n{\"run_id\":\"c\",\"req";
        std::fs::write(d.join(FILE_NAME), text).unwrap();
        let opened = History::open(&d).unwrap();
        assert!(opened.corrupt.is_none());
        assert_eq!(
            opened.history.newest(10),
            vec![row("b", None), row("a", Some(0))]
        );
        // The torn last line is ended before the next row, which stands alone.
        opened.history.record(row("d", None));
        let again = History::open(&d).unwrap().history;
        assert_eq!(again.newest(1), vec![row("d", None)]);
        assert!(again.knows_id("a") && again.knows_id("d") && !again.knows_id("c"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn survives_reopening() {
        let d = dir("reopen");
        std::fs::write(d.join(FILE_NAME), "{\"torn").unwrap();
        let opened = History::open(&d).unwrap();
        // One bad line among none good: not a history of Looper's, set aside.
        assert!(opened.corrupt.is_some());
        let h = opened.history;
        assert!(h.newest(10).is_empty());
        h.record(row("x", None));
        h.record(row("y", None));
        h.record(row("x", Some(-15)));
        let again = History::open(&d).unwrap().history;
        assert_eq!(again.newest(10), vec![row("y", None), row("x", Some(-15))]);
        assert_eq!(again.newest(1).len(), 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn garbage_is_set_aside_and_an_unreadable_file_refused() {
        let d = dir("garbage");
        std::fs::write(d.join(FILE_NAME), b"\x00\xff\x13 garbage\nmore\n").unwrap();
        let opened = History::open(&d).unwrap();
        let (aside, why) = opened.corrupt.expect("set aside");
        assert!(why.contains("2 lines"), "{why}");
        assert!(aside.exists() && !d.join(FILE_NAME).exists());
        assert!(std::fs::read(&aside).unwrap().starts_with(b"\x00\xff"));
        std::fs::remove_dir_all(&d).unwrap();
        let d = dir("unreadable");
        std::fs::create_dir(d.join(FILE_NAME)).unwrap();
        let err = History::open(&d).err().expect("refused");
        assert!(
            err.contains("runs.jsonl") && err.contains("cannot be read"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_long_history_keeps_its_newest_rows_and_is_rotated() {
        let d = dir("rotate");
        let many: Vec<Row> = (0..MAX_ROWS + 50)
            .map(|i| row(&format!("r{i:05}"), Some(0)))
            .collect();
        // The oldest run's end comes late: it stays out of the window it left.
        let text = lines(&many) + &lines(&[row("r00000", Some(3))]);
        std::fs::write(d.join(FILE_NAME), &text).unwrap();
        let opened = History::open_rotating(&d, 1024).unwrap();
        let h = opened.history;
        let newest = h.newest(MAX_ROWS + 10);
        assert_eq!(newest.len(), MAX_ROWS);
        assert_eq!(newest[0].run_id, format!("r{:05}", MAX_ROWS + 49));
        assert!(h.knows_id("r00000") && h.get("r00000").is_none());
        // Rotated at open: the old file kept whole beside the new one.
        assert_eq!(
            std::fs::read_to_string(d.join("runs.jsonl.1")).unwrap(),
            text
        );
        let kept = std::fs::read_to_string(d.join(FILE_NAME)).unwrap();
        assert_eq!(kept.lines().count(), MAX_ROWS);
        // Reopened: the ids of the older file are known still.
        let again = History::open(&d).unwrap().history;
        assert!(again.knows_id("r00000") && again.knows_id("r00049"));
        assert_eq!(again.newest(MAX_ROWS), newest);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
