//! Per-run log files: the name, the header and trailer, and the watcher of one child. The
//! child writes its combined output into its log itself (the file, opened for append, is its
//! stdout and stderr), so a run keeps every byte when Looper dies; the watcher waits for the
//! child's exit, meanwhile mirrors whole lines from the file into the server log, and then
//! appends the trailer.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::os::logging::Q;
use std::process::Child;
use std::time::Duration;

/// How often the watcher looks for new output to mirror while the child runs, where the
/// kernel cannot say when the log grows (an exit wakes it at once).
const MIRROR_POLL: Duration = Duration::from_millis(50);
/// With inotify, the longest the watcher sleeps with nothing written: a safety net only
/// (growth and the exit both wake it at once).
const QUIET_WAIT: Duration = Duration::from_secs(60);
/// The most the mirror reads at a time: large, so that a flood costs few syscalls.
const MIRROR_CHUNK: usize = 1024 * 1024;
/// The most the mirror reads before it looks at the child again.
const MIRROR_ROUND: u64 = 64 * 1024 * 1024;
/// A line longer than this is mirrored in pieces rather than held back forever.
const MAX_MIRROR_LINE: usize = 64 * 1024;

/// `codex-exec-<YYYYMMDD-HHMMSS>-<request_id>.log`
pub fn log_file_name(now: chrono::DateTime<chrono::Local>, request_id: &str) -> String {
    format!(
        "codex-exec-{}-{request_id}.log",
        now.format("%Y%m%d-%H%M%S")
    )
}

/// Removes the run logs a Looper killed between making a run's log and recording its row
/// left behind: a log whose run id the history never held, holding no more than its
/// header. (It would look like a run to people, and like activity to autopoll.)
pub fn sweep_orphan_logs(log_dir: &Path, known: impl Fn(&str) -> bool) {
    let Ok(dir) = std::fs::read_dir(log_dir) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .filter(|_| is_run_log(&name))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.rsplit('-').next())
        else {
            continue;
        };
        if known(id) {
            continue;
        }
        let path = e.path();
        let only_header = crate::os::paths::read_regular(&path, 64 * 1024)
            .is_some_and(|text| text.lines().all(|l| l.is_empty() || l.starts_with("# ")));
        if only_header && std::fs::remove_file(&path).is_ok() {
            log::info!(
                "codex.exec.log.orphan_removed path={} hint=\"a run log made just before Looper stopped, for a run that never started\"",
                Q(&path.to_string_lossy())
            );
        }
    }
}

/// The start time in a run log's name (`YYYYMMDD-HHMMSS`), which sorts as it reads.
pub fn log_name_stamp(name: &std::ffi::OsStr) -> Option<String> {
    let name = name.to_str()?;
    let stamp = name.strip_prefix("codex-exec-")?.get(..15)?;
    let ok = stamp.bytes().enumerate().all(|(i, b)| {
        if i == 8 {
            b == b'-'
        } else {
            b.is_ascii_digit()
        }
    });
    ok.then(|| stamp.to_string())
}

/// Whether a file name is a run log's (`codex-exec-*.log`).
pub fn is_run_log(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with("codex-exec-") && name.ends_with(".log")
}

/// The three header lines and the blank line before the output.
pub fn header(request_id: &str, workspace: &Path, command: &str) -> String {
    format!(
        "# looper_request_id={request_id}\n# workspace={}\n# command={command}\n\n",
        workspace.display()
    )
}

/// What the trailer line starts with, after the newline that precedes it.
/// The most of a run's log one read of it holds (`/runs/<id>/log`, `looper logs`).
pub const MAX_LOG_CHUNK: u64 = 1024 * 1024;

const TRAILER_START: &str = "\n# codex_exec_return_code=";

/// The last line of every run log, on a line of its own.
pub fn trailer(return_code: i32) -> String {
    format!("{TRAILER_START}{return_code}\n")
}

/// The return code in `text` when it ends with a complete trailer.
pub fn trailer_code(text: &str) -> Option<i32> {
    let at = text.rfind(TRAILER_START)?;
    text[at + TRAILER_START.len()..]
        .strip_suffix('\n')?
        .parse()
        .ok()
}

/// The return code a run log ends with, if it has its trailer.
pub fn logged_return_code(path: &Path) -> Option<i32> {
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64))).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    trailer_code(&String::from_utf8_lossy(&buf))
}

/// Whole lines go to the server log as they come, each behind its run's mark
/// (`<run_id>| `): the agent writes what it likes, and none of it may read as a line of
/// Looper's own (those start with their time). A partial line waits for its end.
struct LineCarry {
    carry: Vec<u8>,
    /// `<run_id>| `.
    mark: Vec<u8>,
}

/// `lines` (whole lines) with `mark` before each.
fn marked(mark: &[u8], lines: &[u8]) -> Vec<u8> {
    let count = lines.iter().filter(|b| **b == b'\n').count();
    let mut out = Vec::with_capacity(lines.len() + count * mark.len());
    for line in lines.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(mark);
        out.extend_from_slice(line);
    }
    out
}

impl LineCarry {
    fn new(run_id: &str) -> LineCarry {
        LineCarry {
            carry: Vec::new(),
            mark: format!("{run_id}| ").into_bytes(),
        }
    }

    fn emit(&self, sink: &crate::os::logging::Sink, lines: &[u8]) {
        sink.mirror(&marked(&self.mark, lines));
    }

    fn feed(&mut self, sink: &crate::os::logging::Sink, chunk: &[u8]) {
        match chunk.iter().rposition(|b| *b == b'\n') {
            Some(last) => {
                let mut whole = &chunk[..=last];
                if !self.carry.is_empty() {
                    // Complete the carried line alone (no copy of the whole chunk); the
                    // rest goes out as it is. Each write holds whole lines only.
                    let first = whole.iter().position(|b| *b == b'\n').unwrap_or(last);
                    self.carry.extend_from_slice(&whole[..=first]);
                    self.emit(sink, &self.carry);
                    self.carry.clear();
                    whole = &whole[first + 1..];
                }
                if !whole.is_empty() {
                    self.emit(sink, whole);
                }
                self.carry.extend_from_slice(&chunk[last + 1..]);
            }
            None => self.carry.extend_from_slice(chunk),
        }
        if self.carry.len() > MAX_MIRROR_LINE {
            self.finish(sink);
        }
    }

    fn finish(&mut self, sink: &crate::os::logging::Sink) {
        if self.carry.is_empty() {
            return;
        }
        self.carry.push(b'\n');
        self.emit(sink, &self.carry);
        self.carry.clear();
    }
}

/// Mirrors the log's new bytes from `*offset` on (up to `end`, else at most
/// [`MIRROR_ROUND`]) into the server log. Whether it stopped at that bound (more may wait).
fn mirror_new(
    file: &mut File,
    offset: &mut u64,
    end: Option<u64>,
    lines: &mut LineCarry,
    sink: &crate::os::logging::Sink,
    buf: &mut [u8],
) -> bool {
    let limit = end.unwrap_or(*offset + MIRROR_ROUND);
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return false;
    }
    while *offset < limit {
        let want = ((limit - *offset) as usize).min(buf.len());
        match file.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                *offset += n as u64;
                lines.feed(sink, &buf[..n]);
            }
        }
    }
    true
}

/// Watches `child` until it exits — its exit, not the end of its output: a background
/// process that inherited the log (codex's shell snapshots do) does not keep a finished run
/// alive. With `mirror`, whole lines of what it writes into `log_path` after byte `from` go to
/// the server log as they come. Returns the return code (`-N` for a signal) and the bytes
/// the run wrote.
pub fn watch(
    child: &mut Child,
    run_id: &str,
    log_path: &Path,
    from: u64,
    mirror: bool,
) -> (i32, u64) {
    use std::os::unix::process::ExitStatusExt;
    let exit = crate::os::signals::Waiter::new(child.id() as i32);
    mirror_until_exit(&exit, run_id, log_path, from, mirror);
    let return_code = match child.wait() {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| -status.signal().unwrap_or(0)),
        Err(_) => -1,
    };
    let size = std::fs::metadata(log_path).map(|m| m.len()).unwrap_or(from);
    (return_code, size.saturating_sub(from))
}

/// Mirrors a run's log from byte `from` into the server log (with `mirror`) until the
/// process `exit` waits for is gone; for a process that is not Looper's child (a run
/// adopted after a restart) as for one that is.
pub fn mirror_until_exit(
    exit: &crate::os::signals::Waiter,
    run_id: &str,
    log_path: &Path,
    from: u64,
    mirror: bool,
) {
    let sink = if mirror {
        crate::os::logging::sink()
    } else {
        None
    };
    let reader = sink.and_then(|s| File::open(log_path).ok().map(|f| (s, f)));
    let Some((sink, mut file)) = reader else {
        // Nothing to mirror: only the exit is waited for.
        while !exit.wait(QUIET_WAIT) {}
        return;
    };
    {
        let mut lines = LineCarry::new(run_id);
        let mut buf = vec![0u8; MIRROR_CHUNK];
        let mut offset = from;
        // The kernel says when the log grows: a quiet run costs no wake-ups. What the run
        // wrote before the watch began is read first ("behind" from the start).
        let grows = crate::os::sys::Inotify::new()
            .and_then(|n| n.watch_path(log_path, libc::IN_MODIFY).map(|_| n))
            .ok();
        let mut behind = true;
        loop {
            // Behind a flood: look at the child without waiting, and read on.
            let exited = match (&grows, behind) {
                (_, true) => exit.wait(Duration::ZERO),
                (Some(n), false) => {
                    let exited = exit.wait_or(QUIET_WAIT, n.fd());
                    // Before the read: a write after this wakes the next wait.
                    n.drain();
                    exited
                }
                (None, false) => exit.wait(MIRROR_POLL),
            };
            if exited {
                // What was written up to the exit; later writers are not waited for.
                let end = file.metadata().map(|m| m.len()).unwrap_or(offset);
                mirror_new(
                    &mut file,
                    &mut offset,
                    Some(end),
                    &mut lines,
                    sink,
                    &mut buf,
                );
                break;
            }
            behind = mirror_new(&mut file, &mut offset, None, &mut lines, sink, &mut buf);
        }
        lines.finish(sink);
    }
}

/// The last `lines` lines of a file from byte `from` on (reading at most its last 64 KiB),
/// trimmed.
pub fn tail(path: &Path, from: u64, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX).max(from)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Keeps the `LOOPER_LOG_RETENTION` newest run logs, never removing a live run's log.
///
/// "Newest" is by start: the time in the file name, then, within one second, the order the
/// history holds (a stopped run's trailer lands after its successor started, so the time a
/// log last changed would rank it wrongly), then, for logs the history no longer holds, the
/// time they last changed.
/// `keep`: how many; `live`: the logs of live runs; `history`: its rows, newest first.
pub fn prune_logs(
    log_dir: &Path,
    keep: usize,
    live: &std::collections::HashSet<PathBuf>,
    history: &[crate::model::Row],
) {
    let rank: std::collections::HashMap<&Path, usize> = history
        .iter()
        .enumerate()
        .map(|(i, row)| (row.log_path.as_path(), i))
        .collect();
    let Ok(dir) = std::fs::read_dir(log_dir) else {
        return;
    };
    type Age = (
        std::cmp::Reverse<String>,
        usize,
        std::cmp::Reverse<std::time::SystemTime>,
    );
    let mut logs: Vec<(Age, PathBuf)> = dir
        .flatten()
        .filter(|e| is_run_log(&e.file_name()))
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            let path = e.path();
            let stamp = log_name_stamp(&e.file_name()).unwrap_or_default();
            let known = rank.get(path.as_path()).copied().unwrap_or(usize::MAX);
            let age = (std::cmp::Reverse(stamp), known, std::cmp::Reverse(modified));
            Some((age, path))
        })
        .collect();
    logs.sort();
    for (_, path) in logs.into_iter().skip(keep) {
        if live.contains(&path) {
            continue;
        }
        // Its last message goes with it (a run that recorded none has no file).
        let _ = std::fs::remove_file(crate::report::last_message_path(&path));
        match std::fs::remove_file(&path) {
            Ok(()) => log::debug!("codex.exec.log.pruned path={}", Q(&path.to_string_lossy())),
            Err(e) => log::warn!(
                "codex.exec.log.prune_failed path={} error={}",
                Q(&path.to_string_lossy()),
                Q(&e.to_string())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_and_framing() {
        use chrono::TimeZone;
        let t = chrono::Local
            .with_ymd_and_hms(2026, 11, 25, 8, 5, 9)
            .single()
            .unwrap();
        assert_eq!(
            log_file_name(t, "0a1b2c3d"),
            "codex-exec-20261125-080509-0a1b2c3d.log"
        );
        let stamp = |n: &str| log_name_stamp(std::ffi::OsStr::new(n));
        assert_eq!(
            stamp("codex-exec-20261125-080509-0a1b2c3d.log").as_deref(),
            Some("20261125-080509")
        );
        assert_eq!(stamp("codex-exec-2026x125-080509-0a.log"), None);
        assert_eq!(stamp("codex-exec-short.log"), None);
        assert_eq!(
            header("0a1b2c3d", Path::new("/w"), "codex exec x"),
            "# looper_request_id=0a1b2c3d\n# workspace=/w\n# command=codex exec x\n\n"
        );
        assert_eq!(trailer(-9), "\n# codex_exec_return_code=-9\n");
        assert_eq!(trailer_code(&format!("out\n{}", trailer(-9))), Some(-9));
        assert_eq!(
            trailer_code("out\n# codex_exec_return_code=1"),
            None,
            "torn"
        );
        assert_eq!(trailer_code("no trailer\n"), None);
    }

    #[test]
    fn tail_reads_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("looper-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 0, 2), "c\nd");
        assert_eq!(tail(&path, 4, 9), "c\nd");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
