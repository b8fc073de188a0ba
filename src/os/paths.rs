//! Paths as a user writes them (`~` expanded, `.` and `..` folded: pure functions), and
//! files read where someone else may have planted anything (a link, a FIFO, a device, a huge
//! file): opened so that nothing follows, blocks or grows without bound.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Opens `path` for reading without following a link at its end, without blocking (a
/// FIFO), without taking a terminal as the controlling one; only a regular file is
/// returned.
pub fn open_regular(path: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file.metadata().ok()?.is_file().then_some(file)
}

/// The text of a file the operator named, which may still be one someone else can swap (a
/// prompt file kept in the workspace): links are followed (the operator's), but a FIFO or a
/// device is refused without blocking, and no more than `limit` bytes are read (a longer
/// file is an error that says its size).
pub fn read_named_text(path: &Path, limit: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > limit {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("it is {} bytes, more than the {limit} read", meta.len()),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(Error::new(ErrorKind::InvalidInput, "it grew while read"));
    }
    String::from_utf8(bytes).map_err(|_| Error::new(ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Whether `p` is a file that someone may execute.
pub fn is_executable_file(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A regular file ([`open_regular`]), at most `limit` bytes, as text.
pub fn read_regular(path: &Path, limit: u64) -> Option<String> {
    let mut text = Vec::new();
    open_regular(path)?
        .take(limit)
        .read_to_end(&mut text)
        .ok()?;
    String::from_utf8(text).ok()
}

/// `~` and `~/...` as a shell would read them (with `home`, the `HOME` variable); anything
/// else unchanged.
pub fn expand_home(p: &str, home: Option<&str>) -> PathBuf {
    match (p.strip_prefix('~'), home) {
        (Some(""), Some(h)) => PathBuf::from(h),
        (Some(rest), Some(h)) if rest.starts_with('/') => Path::new(h).join(&rest[1..]),
        _ => PathBuf::from(p),
    }
}

/// `path` with `.` and `..` folded away (lexically: symlinks are left as they are).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
