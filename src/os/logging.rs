//! The server log: one event a line, `<RFC3339 time> <LEVEL> <event> key=value ...`, written
//! to stderr and appended to `LOOPER_SERVER_LOG_PATH`.
//!
//! We write our own `log::Log` instead of a formatter crate because the line format is part of
//! the contract (the original's users grep it), and because mirrored codex output has to go
//! through the same sink as plain, unprefixed lines without a formatter in the way.
//!
//! No thread that logs waits on stderr or the disk: a line is queued for each outlet (stderr,
//! the file) and one writer thread per outlet writes its queue out. An outlet that stops
//! taking output (a paused terminal, `looper | less`, a full pipe nobody reads, a hung disk)
//! fills its own bounded queue and then costs its own lines only; the other goes on, so the
//! file stays complete when only stderr stalls. The log says so: `log.stalled sink=<outlet>`
//! when an outlet first drops a line, `log.dropped sink=<outlet> lines=<n> bytes=<n>` once it
//! has written out its queue again, or at exit.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Rotated server logs kept beside the current one: `.1` (newest) to `.3`.
const ROTATED_KEPT: u32 = 3;
/// The most an outlet holds (queued, and being written) before it drops lines: a few of the
/// mirror's largest reads.
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// The part of an outlet's queue that mirrored codex output may fill; the rest is kept for
/// Looper's own events, so that a flood of output never costs a `run.*` line.
const MIRROR_BYTES: usize = QUEUE_BYTES / 2;
/// How long the mirror waits for room in the file's queue before it drops output: longer
/// than the kernel's writeback throttling, short enough that a hung disk does not keep a
/// run's end from being noticed.
const MIRROR_WAIT: Duration = Duration::from_secs(2);
/// How long exit waits for the outlets to write out what they hold.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The outlets, as indices into [`Sink`]'s queues, and their names in `sink=`. Stderr is a
/// view; the file is the record, the one the mirror waits for.
const STDERR: usize = 0;
const FILE: usize = 1;
const OUTLETS: [&str; 2] = ["stderr", "file"];

/// What one outlet holds, and what it lost since it last said so.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<Arc<[u8]>>,
    /// Bytes queued plus those its writer is writing: `0` once everything is written.
    bytes: usize,
    lost_lines: u64,
    lost_bytes: u64,
}

impl Queue {
    /// Whether `len` more bytes stay within `limit` (an empty queue takes any chunk).
    fn fits(&self, len: usize, limit: usize) -> bool {
        self.bytes == 0 || self.bytes + len <= limit
    }

    fn losing(&self) -> bool {
        self.lost_bytes > 0
    }

    /// Counts `chunk` (whole lines) as lost; whether it is the first loss since the last
    /// report.
    fn lose(&mut self, chunk: &[u8]) -> bool {
        let first = !self.losing();
        self.lost_lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        self.lost_bytes += chunk.len() as u64;
        first
    }

    /// Counts everything still queued as lost: exit will not wait for it.
    fn discard(&mut self) {
        while let Some(chunk) = self.chunks.pop_front() {
            self.bytes -= chunk.len();
            self.lose(&chunk);
        }
    }

    /// The lines and bytes lost since the last report, which this one is.
    fn take_losses(&mut self) -> Option<(u64, u64)> {
        self.losing().then(|| {
            (
                std::mem::take(&mut self.lost_lines),
                std::mem::take(&mut self.lost_bytes),
            )
        })
    }
}

/// Where every server-log line goes: a queue per outlet, all behind one lock (over memory
/// only) so that both outlets get the lines in the same order.
pub struct Sink {
    queues: Mutex<[Queue; 2]>,
    /// Wakes an outlet's writer: something was queued for it.
    queued: [Condvar; 2],
    /// Wakes the mirror and [`flush`]: a writer finished a write.
    written: Condvar,
    /// Whether the log's warnings about its own outlets pass `LOOPER_LOG_LEVEL`.
    warn: bool,
}

impl Sink {
    fn new(level: LevelFilter) -> Sink {
        Sink {
            queues: Mutex::default(),
            queued: Default::default(),
            written: Condvar::new(),
            warn: level >= Level::Warn,
        }
    }

    fn lock(&self) -> MutexGuard<'_, [Queue; 2]> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event's line; an outlet without room loses it. Never waits.
    fn write(&self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.offer(&mut self.lock(), bytes, QUEUE_BYTES);
        }
    }

    /// Queues mirrored codex output (whole lines) within the mirror's share of each queue.
    /// Output that comes faster than the disk takes it slows the mirror rather than costing
    /// lines: it waits up to [`MIRROR_WAIT`] for room in the file's queue, unless the file
    /// is losing lines already. It never waits for stderr.
    pub fn mirror(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut queues = self.lock();
        if !queues[FILE].losing() {
            queues = self
                .written
                .wait_timeout_while(queues, MIRROR_WAIT, |q| {
                    !q[FILE].fits(bytes.len(), MIRROR_BYTES)
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        self.offer(&mut queues, bytes, MIRROR_BYTES);
    }

    /// Queues `bytes` for every outlet with room under `limit`; the others lose them, and
    /// one that starts losing says so (to the other: it has no room itself).
    fn offer(&self, queues: &mut [Queue; 2], bytes: &[u8], limit: usize) {
        let chunk: Arc<[u8]> = Arc::from(bytes);
        let mut stalled = Vec::new();
        for (outlet, queue) in queues.iter_mut().enumerate() {
            if queue.fits(chunk.len(), limit) {
                queue.bytes += chunk.len();
                queue.chunks.push_back(Arc::clone(&chunk));
                self.queued[outlet].notify_one();
            } else if queue.lose(&chunk) {
                stalled.push(outlet);
            }
        }
        // An outlet says it stalled once until it reported its losses: this ends.
        for outlet in stalled {
            self.warn_about(
                queues,
                format_args!(
                    "log.stalled sink={} hint=\"its lines are dropped until it takes output again; log.dropped will count them\"",
                    OUTLETS[outlet]
                ),
            );
        }
    }

    /// Queues a warning about the log's own outlets, if warnings pass the level.
    fn warn_about(&self, queues: &mut [Queue; 2], message: fmt::Arguments<'_>) {
        if self.warn {
            let line = line(Level::Warn, message);
            self.offer(queues, line.as_bytes(), QUEUE_BYTES);
        }
    }

    /// Queues `log.dropped` for what `outlet` lost, if it lost anything.
    fn report_losses(&self, queues: &mut [Queue; 2], outlet: usize) {
        let Some((lines, bytes)) = queues[outlet].take_losses() else {
            return;
        };
        self.warn_about(
            queues,
            format_args!(
                "log.dropped sink={} lines={lines} bytes={bytes}",
                OUTLETS[outlet]
            ),
        );
    }

    /// An outlet's writer: writes its queue out with `out`, outside the lock. Once it has
    /// written everything queued, it reports what the outlet lost meanwhile. It serves as
    /// long as the process lives (nothing ends it), so it waits for work without a bound.
    fn drain(&self, outlet: usize, mut out: impl FnMut(&[u8])) {
        let mut queues = self.lock();
        loop {
            let Some(chunk) = queues[outlet].chunks.pop_front() else {
                queues = self.queued[outlet]
                    .wait(queues)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            };
            drop(queues);
            out(&chunk);
            queues = self.lock();
            queues[outlet].bytes -= chunk.len();
            if queues[outlet].bytes == 0 {
                // Under the lock: the report is queued before anyone sees the outlet idle.
                self.report_losses(&mut queues, outlet);
            }
            self.written.notify_all();
        }
    }

    /// For the last lines before exit: waits up to [`FLUSH_WAIT`] for every outlet to write
    /// out what it holds. What a stuck outlet (a stalled stderr) still holds is lost, and
    /// the other says so, with another [`FLUSH_WAIT`] to write that.
    fn flush(&self) {
        self.flush_within(FLUSH_WAIT);
    }

    /// [`Sink::flush`], waiting `wait` (twice at most).
    fn flush_within(&self, wait: Duration) {
        let busy = |q: &[Queue; 2], skip: &[usize]| {
            (0..q.len()).any(|i| q[i].bytes > 0 && !skip.contains(&i))
        };
        let mut queues = self
            .written
            .wait_timeout_while(self.lock(), wait, |q| busy(q, &[]))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let stuck: Vec<usize> = (0..queues.len()).filter(|i| queues[*i].bytes > 0).collect();
        for &outlet in &stuck {
            queues[outlet].discard();
            self.report_losses(&mut queues, outlet);
        }
        let _ = self
            .written
            .wait_timeout_while(queues, wait, |q| busy(q, &stuck));
    }
}

/// Starts `outlet`'s writer thread, which writes with `out`.
fn start_writer(
    sink: &'static Sink,
    outlet: usize,
    out: impl FnMut(&[u8]) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(format!("log-{}", OUTLETS[outlet]))
        .spawn(move || sink.drain(outlet, out))
        .map(drop)
        .map_err(|e| io::Error::other(format!("cannot start the log's writer thread: {e}")))
}

/// Writes out what the log holds before the process exits (a stalled stderr delays it by
/// [`FLUSH_WAIT`] at most).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        sink.flush();
    }
}

/// The server log file and what rotating it needs.
struct LogFile {
    file: Option<File>,
    path: PathBuf,
    /// Bytes in the current file.
    size: u64,
    /// Rotate before the file would grow past this (`0`: never).
    max_bytes: u64,
    /// Lines and bytes a failed write (a full disk) lost since the last that went
    /// through: said in the file once it takes lines again.
    lost: (u64, u64),
}

impl LogFile {
    /// Writes whole lines, rotating first whenever the next lines would not fit, so that a
    /// line is never split between two files (a single line longer than the limit gets a
    /// file to itself).
    fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.max_bytes.saturating_sub(self.size) as usize;
            if self.max_bytes == 0 || bytes.len() <= room {
                self.append(bytes);
                return;
            }
            let fits = bytes[..room]
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1);
            let n = match fits {
                Some(n) => n,
                None if self.size == 0 => bytes
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(bytes.len(), |i| i + 1),
                None => 0,
            };
            self.append(&bytes[..n]);
            bytes = &bytes[n..];
            if !bytes.is_empty() && !self.rotate() {
                // Cannot rotate (say, the directory went read-only): keep writing here.
                self.append(bytes);
                return;
            }
        }
    }

    /// Appends `bytes` whole or not at all (a failed write is cut off again, so that no
    /// torn line is glued to the next); what was lost is said before the next lines.
    fn append(&mut self, bytes: &[u8]) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let whole = |f: &mut File, bytes: &[u8], size: &mut u64| match f.write_all(bytes) {
            Ok(()) => {
                *size += bytes.len() as u64;
                true
            }
            Err(_) => {
                let _ = f.set_len(*size);
                false
            }
        };
        if self.lost.0 > 0 {
            let note = line(
                Level::Warn,
                format_args!(
                    "log.dropped sink=file lines={} bytes={} reason=write_failed",
                    self.lost.0, self.lost.1
                ),
            );
            if whole(f, note.as_bytes(), &mut self.size) {
                self.lost = (0, 0);
            }
        }
        if self.lost.0 > 0 || !whole(f, bytes, &mut self.size) {
            let lines = bytes.iter().filter(|b| **b == b'\n').count().max(1) as u64;
            self.lost = (self.lost.0 + lines, self.lost.1 + bytes.len() as u64);
        }
    }

    /// `looper-server.log` becomes `.1`, `.1` becomes `.2`, ..., the oldest goes; a fresh
    /// file follows. Whether it worked.
    fn rotate(&mut self) -> bool {
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        for n in (1..ROTATED_KEPT).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        if std::fs::rename(&self.path, numbered(1)).is_err() {
            return false;
        }
        match open_append(&self.path) {
            Ok(f) => {
                self.file = Some(f);
                self.size = 0;
                true
            }
            Err(_) => false,
        }
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The process-wide sink, once [`init`] has run.
pub fn sink() -> Option<&'static Sink> {
    SINK.get()
}

struct ServerLogger {
    level: LevelFilter,
}

/// The level names of the original (Python's), so existing greps keep working.
fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// One line of the log: the time, the level, then `message` (an event and its pairs).
fn line(level: Level, message: impl fmt::Display) -> String {
    let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
    format!("{now} {} {message}\n", level_name(level))
}

impl Log for ServerLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let line = if record.target().starts_with("looper") {
            line(record.level(), record.args())
        } else {
            // A library's own message (minreq, rustls): keep the event format.
            let message = record.args().to_string();
            line(
                record.level(),
                format_args!(
                    "lib.log target={} message={}",
                    Q(record.target()),
                    Q(&message)
                ),
            )
        };
        sink.write(line.as_bytes());
    }

    fn flush(&self) {
        flush();
    }
}

/// Parses `LOOPER_LOG_LEVEL` (Python's names, any case).
pub fn parse_level(value: &str) -> Option<LevelFilter> {
    match value.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some(LevelFilter::Trace),
        "DEBUG" => Some(LevelFilter::Debug),
        "INFO" => Some(LevelFilter::Info),
        "WARNING" | "WARN" => Some(LevelFilter::Warn),
        "ERROR" | "CRITICAL" | "FATAL" => Some(LevelFilter::Error),
        "OFF" => Some(LevelFilter::Off),
        _ => None,
    }
}

/// Opens `path` for appending, creating it readable by its owner only (logs hold whatever
/// codex printed, which may be private), and never through a link at its last component.
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Creates `path` as a new file for appending (never an existing one, never through a
/// link), readable by its owner only: a run's log.
pub fn create_new_log(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens the server log for appending, starts the outlets' writers and installs the logger;
/// the log is rotated before it grows past `max_bytes` (`0`: never). Fails when the file
/// cannot be opened or a writer started, which stops the server at start.
pub fn init(path: &Path, level: LevelFilter, max_bytes: u64) -> io::Result<()> {
    let file = open_append(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut log_file = LogFile {
        file: Some(file),
        path: path.to_path_buf(),
        size,
        max_bytes,
        lost: (0, 0),
    };
    let sink = SINK.get_or_init(|| Sink::new(level));
    // The terminal (or journal) sees the agent's output shown, never obeyed; the file keeps
    // every byte.
    start_writer(sink, STDERR, |bytes| {
        let _ = io::stderr()
            .lock()
            .write_all(&crate::os::visible::visible(bytes));
    })?;
    start_writer(sink, FILE, move |bytes| log_file.write(bytes))?;
    if log::set_boxed_logger(Box::new(ServerLogger { level })).is_ok() {
        log::set_max_level(level);
    }
    std::panic::set_hook(Box::new(log_panic));
    Ok(())
}

/// A panic becomes one server-log event (not a stray stderr line that the log file never
/// sees), naming the thread and the place (a `/run` that panics is also answered `500`).
fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string());
    let at = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current();
    log::error!(
        "thread.panicked thread={} at={} message={}",
        Q(thread.name().unwrap_or("unnamed")),
        Q(&at),
        Q(&message)
    );
    if thread.name() == Some("main") {
        // The process ends with this panic: the line must not stay in a queue.
        flush();
    }
}

/// A value in a `key=value` pair: bare when it is a plain token, JSON-quoted otherwise, so
/// that a line always splits back into the same pairs.
pub struct Q<'a>(pub &'a str);

impl fmt::Display for Q<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
        if plain {
            f.write_str(self.0)
        } else {
            // Serializing a str cannot fail.
            f.write_str(&serde_json::to_string(self.0).unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_bare_and_others_are_quoted() {
        assert_eq!(Q("abc/def.log").to_string(), "abc/def.log");
        assert_eq!(Q("").to_string(), "\"\"");
        assert_eq!(Q("two words").to_string(), "\"two words\"");
        assert_eq!(Q("a=b").to_string(), "\"a=b\"");
        assert_eq!(Q("line\nbreak").to_string(), "\"line\\nbreak\"");
    }

    #[test]
    fn rotation_keeps_three_files_and_never_splits_a_line() {
        let dir = std::env::temp_dir().join(format!("looper-rotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("looper-server.log");
        let mut log = LogFile {
            file: Some(open_append(&path).unwrap()),
            path: path.clone(),
            size: 0,
            max_bytes: 100,
            lost: (0, 0),
        };
        for i in 0..40 {
            // Batches of several lines, as the mirror writes them.
            log.write(format!("line {i:02} aaaaaaaa\nline {i:02} bbbbbbbb\n").as_bytes());
        }
        let mut long = vec![b'z'; 250];
        long.push(b'\n');
        log.write(&long);
        log.write(b"after\n");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        for n in 1..=3 {
            let text = read(&dir.join(format!("looper-server.log.{n}")));
            assert!(!text.is_empty() && text.ends_with('\n'), ".{n}: {text:?}");
            assert!(
                text.len() <= 100 || !text.trim_end().contains('\n'),
                ".{n}: {text:?}"
            );
        }
        assert!(!dir.join("looper-server.log.4").exists());
        assert_eq!(read(&path), "after\n");
        assert_eq!(
            read(&dir.join("looper-server.log.1")).len(),
            251,
            "the long line alone"
        );
        let older = read(&dir.join("looper-server.log.3"));
        assert!(older.lines().all(|l| l.len() == 16), "{older:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What an outlet wrote, shared with the test.
    type Written = Arc<Mutex<Vec<u8>>>;

    /// A sink whose file writer collects into the first vector, and whose stderr writer
    /// collects into the second but first waits for `gate` (stalled while the test holds it).
    fn test_sink(gate: Arc<Mutex<()>>, file_delay: Duration) -> (Arc<Sink>, Written, Written) {
        let sink = Arc::new(Sink::new(LevelFilter::Info));
        let (file, stderr) = (Written::default(), Written::default());
        let (s, out) = (Arc::clone(&sink), Arc::clone(&file));
        std::thread::spawn(move || {
            s.drain(FILE, |b| {
                std::thread::sleep(file_delay);
                out.lock().unwrap().extend_from_slice(b)
            })
        });
        let (s, out) = (Arc::clone(&sink), Arc::clone(&stderr));
        std::thread::spawn(move || {
            s.drain(STDERR, |b| {
                let _open = gate.lock().unwrap();
                out.lock().unwrap().extend_from_slice(b)
            })
        });
        (sink, file, stderr)
    }

    /// Waits until `outlet` has written out everything queued for it.
    fn wait_written(sink: &Sink, outlet: usize) {
        let (queues, timeout) = sink
            .written
            .wait_timeout_while(sink.lock(), Duration::from_secs(20), |q| {
                q[outlet].bytes > 0
            })
            .unwrap();
        drop(queues);
        assert!(!timeout.timed_out(), "{} never caught up", OUTLETS[outlet]);
    }

    fn text(written: &Written) -> String {
        String::from_utf8_lossy(&written.lock().unwrap()).into_owned()
    }

    /// The number after `key=` in the first line holding `event`.
    fn count_in(text: &str, event: &str, key: &str) -> u64 {
        let line = text
            .lines()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no {event} in the log"));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    }

    #[test]
    fn a_stalled_outlet_loses_only_its_own_lines_and_counts_them() {
        let gate = Arc::new(Mutex::new(()));
        let stalled = gate.lock().unwrap();
        let (sink, file, stderr) = test_sink(Arc::clone(&gate), Duration::ZERO);
        let event = format!("{}\n", "e".repeat(1023));
        let n = 2 * QUEUE_BYTES / event.len();
        for i in 0..n {
            sink.write(event.as_bytes());
            if i % 1024 == 0 {
                // Events never wait, so faster than the file takes them they would be
                // lost too: keep to the file's pace.
                wait_written(&sink, FILE);
            }
        }
        wait_written(&sink, FILE);
        let in_file = text(&file);
        assert_eq!(in_file.matches(&event).count(), n, "the file lost lines");
        assert!(in_file.contains(" WARNING log.stalled sink=stderr hint="));
        assert!(
            !in_file.contains("WARNING log.dropped"),
            "stderr has not moved yet"
        );

        drop(stalled);
        wait_written(&sink, STDERR);
        let in_stderr = text(&stderr);
        let dropped = count_in(&in_stderr, " WARNING log.dropped sink=stderr ", "lines");
        // The lost ones are the events that did not get through, and the line that said
        // stderr stalled.
        let through = in_stderr.matches(&event).count() as u64;
        assert!(through < n as u64 && through > 0, "{through}");
        assert_eq!(through + dropped, n as u64 + 1);
        wait_written(&sink, FILE);
        assert_eq!(
            count_in(&text(&file), "log.dropped sink=stderr", "lines"),
            dropped
        );
    }

    #[test]
    fn the_mirror_waits_for_a_slow_file_but_not_for_a_stalled_stderr() {
        let gate = Arc::new(Mutex::new(()));
        let _stalled = gate.lock().unwrap();
        let (sink, file, _) = test_sink(Arc::clone(&gate), Duration::from_millis(2));
        let chunk = format!("{}\n", "o".repeat(99)).repeat(5000);
        let rounds = 4 * MIRROR_BYTES / chunk.len();
        for _ in 0..rounds {
            sink.mirror(chunk.as_bytes());
        }
        wait_written(&sink, FILE);
        let in_file = text(&file);
        assert_eq!(
            in_file.matches(&chunk).count(),
            rounds,
            "the file lost output"
        );
        assert!(in_file.contains("log.stalled sink=stderr"));
        assert!(!in_file.contains("log.stalled sink=file"));
    }

    #[test]
    fn flush_writes_out_the_file_and_counts_what_a_stuck_stderr_holds() {
        let gate = Arc::new(Mutex::new(()));
        let _stalled = gate.lock().unwrap();
        let (sink, file, _) = test_sink(Arc::clone(&gate), Duration::ZERO);
        for i in 0..10 {
            sink.write(format!("event {i}\n").as_bytes());
        }
        // The stalled stderr is given up on after the wait.
        sink.flush_within(Duration::from_millis(300));
        let in_file = text(&file);
        assert!(in_file.starts_with("event 0\n") && in_file.contains("event 9\n"));
        // Those queued (behind the one being written, if the writer took it yet): lost.
        let lost = count_in(&in_file, "log.dropped sink=stderr", "lines");
        assert!((9..=10).contains(&lost), "{lost}");
    }

    #[test]
    fn levels_accept_python_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("critical"), Some(LevelFilter::Error));
        assert_eq!(parse_level("loud"), None);
    }
}
