//! A run's files beside its history row, as `/runs/<run_id>/log` and
//! `/runs/<run_id>/last-message` serve them: found by the run's id in the history, never
//! made from it, and only inside the log directory.

use crate::error::{Refusal, Why};
use crate::http::{Head, Response};
use crate::run::output;
use crate::state::app::App;

/// The files a run has beside its history row.
#[derive(Clone, Copy)]
pub(super) enum RunFile {
    Log,
    LastMessage,
}

/// `/runs/<run_id>/log` and `/runs/<run_id>/last-message`: the run id and which file.
pub(super) fn run_file_of(path: &str) -> Option<(&str, RunFile)> {
    let rest = path.strip_prefix("/runs/")?;
    if let Some(id) = rest.strip_suffix("/log") {
        return Some((id, RunFile::Log));
    }
    rest.strip_suffix("/last-message")
        .map(|id| (id, RunFile::LastMessage))
}

/// Opens a file of the run the history names `run_id`, only when it lies in the log
/// directory: the id is looked up, never made into a path.
fn open_run_file(app: &App, run_id: &str, file: RunFile) -> Result<std::fs::File, Refusal> {
    let unknown = || Refusal::new(Why::NotFound, format!("no such run: {run_id}"));
    let row = app.history().get(run_id).ok_or_else(unknown)?;
    let (path, what) = match file {
        RunFile::Log => (row.log_path.clone(), "log"),
        RunFile::LastMessage => (
            crate::report::last_message_path(&row.log_path),
            "last message",
        ),
    };
    let gone = |_| Refusal::new(Why::NotFound, format!("the {what} of run {run_id} is gone"));
    let dir = app.cfg().log_dir.canonicalize().map_err(gone)?;
    let path = path.canonicalize().map_err(gone)?;
    if path.parent() != Some(dir.as_path()) {
        return Err(unknown());
    }
    std::fs::File::open(&path).map_err(gone)
}

/// `GET /runs/<run_id>/log?offset=N`: the bytes of a run's log from byte N (the last MiB
/// without an offset), at most [`output::MAX_LOG_CHUNK`], with the log's size in `X-Log-Size`.
pub(super) fn run_log(app: &App, run_id: &str, head: &Head) -> Result<Response, Refusal> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = open_run_file(app, run_id, RunFile::Log)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = match head.query("offset") {
        None => size.saturating_sub(output::MAX_LOG_CHUNK),
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Refusal::bad_request("offset must be a whole number of bytes"))?
            .min(size),
    };
    let mut body = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(output::MAX_LOG_CHUNK).read_to_end(&mut body))
        .map_err(|e| {
            Refusal::new(
                Why::Broken,
                format!("cannot read the log of run {run_id}: {e}"),
            )
        })?;
    Ok(Response {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body,
        headers: vec![
            ("X-Log-Size", size.to_string()),
            ("X-Log-Offset", offset.to_string()),
        ],
    })
}

/// `GET /runs/<run_id>/last-message`: the agent's last message in that run, whole (as
/// kept beside its log, at most [`crate::report::MESSAGE_BYTES`]).
pub(super) fn run_last_message(app: &App, run_id: &str) -> Result<Response, Refusal> {
    use std::io::Read;
    let file = open_run_file(app, run_id, RunFile::LastMessage)?;
    let mut body = Vec::new();
    file.take(crate::report::MESSAGE_BYTES as u64)
        .read_to_end(&mut body)
        .map_err(|e| {
            Refusal::new(
                Why::Broken,
                format!("cannot read the last message of run {run_id}: {e}"),
            )
        })?;
    Ok(Response {
        status: 200,
        content_type: "text/plain; charset=utf-8",
        body,
        headers: Vec::new(),
    })
}
