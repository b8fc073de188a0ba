//! The server log: one event a line, `<RFC3339 time> <LEVEL> <event> key=value ...`, written
//! to stderr and appended to `LOOPER_SERVER_LOG_PATH`.
//!
//! We write our own `log::Log` instead of a formatter crate because the line format is part of
//! the contract (the original's users grep it), and because mirrored codex output has to go
//! through the same sink as plain, unprefixed lines without a formatter in the way.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Rotated server logs kept beside the current one: `.1` (newest) to `.3`.
const ROTATED_KEPT: u32 = 3;

/// Where every server-log line goes. One lock keeps the two copies in the same order.
pub struct Sink {
    file: Mutex<LogFile>,
    to_stderr: bool,
}

/// The server log file and what rotating it needs.
struct LogFile {
    file: Option<File>,
    path: PathBuf,
    /// Bytes in the current file.
    size: u64,
    /// Rotate before the file would grow past this (`0`: never).
    max_bytes: u64,
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

    fn append(&mut self, bytes: &[u8]) {
        if let Some(f) = self.file.as_mut() {
            if f.write_all(bytes).is_ok() {
                self.size += bytes.len() as u64;
            }
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

impl Sink {
    /// Writes already-formatted bytes (whole lines) to stderr and the log file. A failing
    /// write is dropped: the log must never take the server down with it.
    pub fn write(&self, bytes: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if self.to_stderr {
            let _ = io::stderr().lock().write_all(bytes);
        }
        file.write(bytes);
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

impl Log for ServerLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let now = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false);
        let level = level_name(record.level());
        let line = if record.target().starts_with("looper") {
            format!("{now} {level} {}\n", record.args())
        } else {
            // A library's own message (minreq, rustls): keep the event format.
            let message = record.args().to_string();
            format!(
                "{now} {level} lib.log target={} message={}\n",
                Q(record.target()),
                Q(&message)
            )
        };
        sink.write(line.as_bytes());
    }

    fn flush(&self) {}
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

/// Opens the server log for appending and installs the logger; the log is rotated before
/// it grows past `max_bytes` (`0`: never). Fails when the file cannot be opened, which stops
/// the server at start.
pub fn init(path: &Path, level: LevelFilter, max_bytes: u64) -> io::Result<()> {
    let file = open_append(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = SINK.set(Sink {
        file: Mutex::new(LogFile {
            file: Some(file),
            path: path.to_path_buf(),
            size,
            max_bytes,
        }),
        to_stderr: true,
    });
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

    #[test]
    fn levels_accept_python_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("critical"), Some(LevelFilter::Error));
        assert_eq!(parse_level("loud"), None);
    }
}
