//! Per-run log files: the name, the header and trailer, and the copy loop that moves a
//! child's combined output into the file in large chunks while mirroring whole lines into the
//! server log.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The pipe buffer we ask for: a child that floods output fills it in fewer, larger steps.
pub const PIPE_SIZE: usize = 1024 * 1024;
/// The most we read from the pipe at a time: large, so that a flood costs few syscalls.
const COPY_CHUNK: usize = 256 * 1024;
/// A line longer than this is mirrored in pieces rather than held back forever.
const MAX_MIRROR_LINE: usize = 64 * 1024;

/// `codex-exec-<YYYYMMDD-HHMMSS>-<request_id>.log`
pub fn log_file_name(now: chrono::DateTime<chrono::Local>, request_id: &str) -> String {
    format!(
        "codex-exec-{}-{request_id}.log",
        now.format("%Y%m%d-%H%M%S")
    )
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

/// Whole lines go to the server log as they come; a partial line waits for its end.
struct LineCarry {
    carry: Vec<u8>,
}

impl LineCarry {
    fn feed(&mut self, sink: &crate::logging::Sink, chunk: &[u8]) {
        match chunk.iter().rposition(|b| *b == b'\n') {
            Some(last) => {
                if self.carry.is_empty() {
                    sink.write(&chunk[..=last]);
                } else {
                    self.carry.extend_from_slice(&chunk[..=last]);
                    sink.write(&self.carry);
                    self.carry.clear();
                }
                self.carry.extend_from_slice(&chunk[last + 1..]);
            }
            None => self.carry.extend_from_slice(chunk),
        }
        if self.carry.len() > MAX_MIRROR_LINE {
            self.finish(sink);
        }
    }

    fn finish(&mut self, sink: &crate::logging::Sink) {
        if self.carry.is_empty() {
            return;
        }
        self.carry.push(b'\n');
        sink.write(&self.carry);
        self.carry.clear();
    }
}

/// Copies `reader` into `file` until end of file, mirroring whole lines into the server log
/// when `mirror` is on (one write per chunk). A failing file write (disk full, log
/// directory removed) is logged once per streak and the pipe keeps being drained, so the
/// child never blocks on a full pipe. Returns the bytes read.
pub fn copy(reader: &mut impl Read, file: &mut File, mirror: bool, request_id: &str) -> u64 {
    let sink = if mirror { crate::logging::sink() } else { None };
    let mut lines = LineCarry { carry: Vec::new() };
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut total = 0u64;
    let mut failing = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("codex.exec.output.read_failed request_id={request_id} error={e}");
                break;
            }
        };
        total += n as u64;
        match file.write_all(&buf[..n]) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                log::error!(
                    "codex.exec.output.write_failed request_id={request_id} error={}",
                    crate::logging::Q(&e.to_string())
                );
            }
            Err(_) => {}
        }
        if let Some(sink) = sink {
            lines.feed(sink, &buf[..n]);
        }
    }
    if let Some(sink) = sink {
        lines.finish(sink);
    }
    total
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
    fn copy_moves_every_byte() {
        let dir = std::env::temp_dir().join(format!("looper-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.log");
        let mut file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let n = copy(&mut &data[..], &mut file, true, "t");
        assert_eq!(n, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        std::fs::write(&path, "a\nb\nc\nd\n").unwrap();
        assert_eq!(tail(&path, 0, 2), "c\nd");
        assert_eq!(tail(&path, 4, 9), "c\nd");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
