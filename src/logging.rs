//! The server log: one event a line, `<RFC3339 time> <LEVEL> <event> key=value ...`, written
//! to stderr and appended to `LOOPER_SERVER_LOG_PATH`.
//!
//! We write our own `log::Log` instead of a formatter crate because the line format is part of
//! the contract (the original's users grep it), and because mirrored codex output has to go
//! through the same sink as plain, unprefixed lines without a formatter in the way.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Where every server-log line goes. One lock keeps the two copies in the same order.
pub struct Sink {
    file: Mutex<Option<File>>,
    to_stderr: bool,
}

impl Sink {
    /// Writes already-formatted bytes (whole lines) to stderr and the log file. A failing
    /// write is dropped: the log must never take the server down with it.
    pub fn write(&self, bytes: &[u8]) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if self.to_stderr {
            let _ = io::stderr().lock().write_all(bytes);
        }
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(bytes);
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
            // A library's own message (tiny_http, minreq): keep the event format.
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

/// Opens `path` for appending, creating it readable by its owner only: logs hold whatever
/// codex printed, which may be private.
pub fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Opens the server log for appending and installs the logger. Fails when the file cannot
/// be opened, which stops the server at start.
pub fn init(path: &Path, level: LevelFilter) -> io::Result<()> {
    let file = open_append(path)?;
    let _ = SINK.set(Sink {
        file: Mutex::new(Some(file)),
        to_stderr: true,
    });
    if log::set_boxed_logger(Box::new(ServerLogger { level })).is_ok() {
        log::set_max_level(level);
    }
    std::panic::set_hook(Box::new(log_panic));
    Ok(())
}

/// A panic becomes one server-log event (not a stray stderr line that the log file never
/// sees), naming the thread and the place. Panics inside a library's threads (tiny_http's
/// accept thread, when it runs out of descriptors) are how their silent endings get told.
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
    fn levels_accept_python_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("critical"), Some(LevelFilter::Error));
        assert_eq!(parse_level("loud"), None);
    }
}
