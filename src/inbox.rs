//! The inbox: a hand-off that needs no network. Inside codex's default sandbox no socket
//! can be opened, so the agent's last step cannot reach Looper over HTTP; it can write files
//! in its workspace. Every run therefore gets `LOOPER_INBOX=<workspace>/.looper/inbox`: a
//! file `<name>.json` dropped there (written as `*.tmp`, then renamed) holds a `/run` body.
//! One thread looks into the inboxes Looper knows every [`POLL`], takes each complete file
//! into `done/`, runs it through the same pipeline as `POST /run` ([`crate::run::submit`]),
//! and writes `done/<name>.answer.json` with the status and body an HTTP caller would have
//! got. Filesystem permissions are the authentication: the inbox is 0700, and a file that is
//! a symlink, not a regular file, not ours or over 1 MiB is answered with an error unread.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::App;
use crate::logging::Q;
use crate::run::{self, ApiError, Trigger};

/// How often the inboxes are looked into: a hand-off is picked up within a second.
pub const POLL: Duration = Duration::from_millis(250);
/// Answered requests kept in `done/`, newest first.
const DONE_KEPT: usize = 100;
/// The suffix of an answer file in `done/`.
pub const ANSWER_SUFFIX: &str = ".answer.json";

/// The inbox of runs in `workspace`.
pub fn dir_for(workspace: &Path) -> PathBuf {
    workspace.join(".looper").join("inbox")
}

/// The answer file for the request file `name` (`x.json` → `done/x.answer.json`).
pub fn answer_path(inbox: &Path, name: &str) -> PathBuf {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    inbox.join("done").join(format!("{stem}{ANSWER_SUFFIX}"))
}

/// Creates `<workspace>/.looper/inbox` (and `done/`) with mode 0700, and
/// `.looper/.gitignore` holding `*` so that git never sees any of it. Returns the inbox.
pub fn prepare(workspace: &Path) -> io::Result<PathBuf> {
    let looper_dir = workspace.join(".looper");
    let inbox = dir_for(workspace);
    let done = inbox.join("done");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&done)?;
    // A directory made earlier (or by hand) with wider permissions is narrowed.
    for dir in [&looper_dir, &inbox, &done] {
        let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
    }
    let ignore = looper_dir.join(".gitignore");
    if !ignore.exists() {
        fs::write(&ignore, "*\n")?;
    }
    Ok(inbox)
}

/// Starts the inbox thread. It ends at shutdown.
pub fn start(app: &Arc<App>) {
    let app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("inbox".into())
        .spawn(move || {
            while !app.shutdown.wait(POLL) {
                for dir in app.inboxes() {
                    take_all(&app, &dir);
                }
            }
            log::debug!("inbox.stopped");
        });
    if let Err(e) = spawned {
        log::error!(
            "inbox.fail error={} hint=\"hand-offs through LOOPER_INBOX are not picked up\"",
            Q(&e.to_string())
        );
    }
}

/// Whether a name in an inbox is a request to take: not hidden, not still being written.
fn is_request_name(name: &str) -> bool {
    !name.starts_with('.') && !name.ends_with(".tmp")
}

/// Takes every complete request in `dir`, oldest name first.
fn take_all(app: &Arc<App>, dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_request_name(n))
        .collect();
    names.sort();
    for name in names {
        if app.shutdown.is_set() {
            return;
        }
        take(app, dir, &name);
    }
}

/// Moves one request into `done/`, answers it there, and keeps `done/` bounded.
fn take(app: &Arc<App>, dir: &Path, name: &str) {
    let done_dir = dir.join("done");
    let taken = done_dir.join(name);
    if let Err(e) = fs::create_dir_all(&done_dir).and_then(|_| fs::rename(dir.join(name), &taken)) {
        log::warn!(
            "inbox.take_failed dir={} file={} error={}",
            Q(&dir.to_string_lossy()),
            Q(name),
            Q(&e.to_string())
        );
        return;
    }
    let request_id = app.new_id();
    log::info!(
        "inbox.take request_id={request_id} dir={} file={}",
        Q(&dir.to_string_lossy()),
        Q(name)
    );
    let outcome = read_request(&taken, name)
        .and_then(|body| run::submit(app, &body, &request_id, Trigger::Inbox));
    let (status, body) = match outcome {
        Ok(body) => (200, body),
        Err(e) => {
            log::warn!(
                "run.fail request_id={request_id} status={} error={}",
                e.status,
                Q(&e.message)
            );
            (e.status, e.body())
        }
    };
    let answer = json!({"status": status, "body": body, "request_id": request_id});
    if let Err(e) = write_answer(&answer_path(dir, name), &answer) {
        log::error!(
            "inbox.answer_failed request_id={request_id} error={}",
            Q(&e.to_string())
        );
    }
    log::info!("inbox.answer request_id={request_id} status={status}");
    prune_done(&done_dir);
}

/// The body of a request file, read only when it is a regular file of ours, no symlink, at
/// most 1 MiB, and named `*.json`.
fn read_request(path: &Path, name: &str) -> Result<Vec<u8>, ApiError> {
    let refuse = |why: &str| ApiError::bad_request(format!("inbox file {name} refused: {why}"));
    let meta = fs::symlink_metadata(path).map_err(|e| refuse(&e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link"));
    }
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.uid() != crate::procs::current_uid() {
        return Err(refuse("it is not owned by Looper's user"));
    }
    if !name.ends_with(".json") {
        return Err(refuse("requests are named <name>.json"));
    }
    let too_large = || ApiError::new(413, "body is larger than 1 MiB");
    if meta.len() > crate::http::MAX_BODY as u64 {
        return Err(too_large());
    }
    // No following a link swapped in meanwhile, and no blocking on a FIFO.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(&e.to_string()))?;
    let opened = file.metadata().map_err(|e| refuse(&e.to_string()))?;
    if !opened.is_file() || opened.uid() != meta.uid() {
        return Err(refuse("it changed while being read"));
    }
    let mut body = Vec::new();
    file.take(crate::http::MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| refuse(&e.to_string()))?;
    if body.len() > crate::http::MAX_BODY {
        return Err(too_large());
    }
    Ok(body)
}

/// Writes an answer whole (a `.tmp` renamed into place), readable by our user only.
fn write_answer(path: &Path, answer: &Value) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(answer.to_string().as_bytes())?;
    f.write_all(b"\n")?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Keeps the [`DONE_KEPT`] newest answers in `done/`, with their requests.
fn prune_done(done: &Path) {
    let Ok(entries) = fs::read_dir(done) else {
        return;
    };
    let mut answers: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(ANSWER_SUFFIX)?.to_string();
            Some((e.metadata().ok()?.modified().ok()?, stem))
        })
        .collect();
    if answers.len() <= DONE_KEPT {
        return;
    }
    answers.sort();
    let excess = answers.len() - DONE_KEPT;
    for (_, stem) in answers.into_iter().take(excess) {
        for name in [
            format!("{stem}{ANSWER_SUFFIX}"),
            format!("{stem}.json"),
            stem.clone(),
        ] {
            let _ = fs::remove_file(done.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_answers() {
        assert!(is_request_name("next.json"));
        assert!(is_request_name("junk.txt"));
        assert!(!is_request_name("next.json.tmp"));
        assert!(!is_request_name(".hidden.json"));
        assert_eq!(
            answer_path(Path::new("/w/.looper/inbox"), "next.json"),
            Path::new("/w/.looper/inbox/done/next.answer.json")
        );
        assert_eq!(
            answer_path(Path::new("/i"), "junk.txt"),
            Path::new("/i/done/junk.txt.answer.json")
        );
    }

    #[test]
    fn prepare_makes_a_private_ignored_inbox() {
        let ws = std::env::temp_dir().join(format!("looper-inbox-{}", std::process::id()));
        fs::create_dir_all(ws.join(".looper/inbox")).unwrap();
        fs::set_permissions(ws.join(".looper/inbox"), fs::Permissions::from_mode(0o755)).unwrap();
        let inbox = prepare(&ws).unwrap();
        assert_eq!(inbox, ws.join(".looper/inbox"));
        for d in [".looper", ".looper/inbox", ".looper/inbox/done"] {
            let mode = fs::metadata(ws.join(d)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{d}");
        }
        assert_eq!(
            fs::read_to_string(ws.join(".looper/.gitignore")).unwrap(),
            "*\n"
        );
        fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn done_keeps_the_newest_answers_with_their_requests() {
        let done = std::env::temp_dir().join(format!("looper-done-{}", std::process::id()));
        fs::create_dir_all(&done).unwrap();
        for i in 0..DONE_KEPT + 5 {
            fs::write(done.join(format!("r{i:03}.json")), "{}").unwrap();
            let answer = done.join(format!("r{i:03}{ANSWER_SUFFIX}"));
            fs::write(&answer, "{}").unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            fs::File::options()
                .write(true)
                .open(&answer)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune_done(&done);
        assert!(!done.join("r000.json").exists());
        assert!(!done.join(format!("r004{ANSWER_SUFFIX}")).exists());
        assert!(done.join("r005.json").exists());
        assert_eq!(fs::read_dir(&done).unwrap().count(), 2 * DONE_KEPT);
        fs::remove_dir_all(&done).unwrap();
    }
}
