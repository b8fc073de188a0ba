//! The inbox: a hand-off that needs no network. Inside codex's default sandbox no socket
//! can be opened, so the agent's last step cannot reach Looper over HTTP; it can write files
//! in its workspace. Every run therefore gets `LOOPER_INBOX=<workspace>/.looper/inbox`: a
//! file `<name>.json` dropped there (written as `*.tmp`, then renamed) holds a `/run` body.
//! One thread looks into the inboxes Looper knows whenever the kernel says a name landed in
//! one ([`Doorbell`]: inotify; every [`POLL`] where it has none), takes each complete file
//! into `taken/` (as `<request id>@<name>`), hands it to [`Desk::hand_off`] (the same
//! pipeline as `POST /run`, as a request *of a run* of that workspace: the hand-off only,
//! see [`crate::run::trust`]), writes `done/<name>.answer.json` with the status and body an
//! HTTP caller would have got, and moves the request into `done/`. A request a crash left in
//! `taken/` is carried out again under its request id the next time the inbox is looked into
//! (the stale check makes that safe), or answered with the run it had started.
//!
//! Everything in a workspace is written by the agent, so nothing here follows a name it may
//! have placed: `.looper`, the inbox and `done/` are opened once as directories without
//! following links (a link, or a directory of another user, is refused), and every later
//! step goes through those handles ([`crate::os::sys::Dir`]): requests are read only when they
//! are regular files of ours with no other hard link, answers are written as new files and
//! renamed into place, and pruning removes names inside `done/` only.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Refusal, Why};
use crate::os::logging::Q;
use crate::os::shutdown::Shutdown;
use crate::os::sys::{Bell, Dir, Inotify, Kind};

/// How often the inboxes are looked into where the kernel cannot say when a file lands.
pub const POLL: Duration = Duration::from_millis(250);
/// With inotify, the inboxes are still looked into this often: a safety net for events the
/// kernel dropped (its queue overflowed), at a cost of one wake-up a minute.
const SAFETY_NET: Duration = Duration::from_secs(60);
/// What lands a request in an inbox: a rename into it, or a file written and closed there.
const LANDED: u32 = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
/// A name that appeared otherwise (a link, a FIFO, a file still being written) is looked at
/// [`POLL`] later, as before inotify.
const APPEARED: u32 = libc::IN_CREATE;
/// Answered requests kept in `done/`, newest first.
const DONE_KEPT: usize = 100;
/// The suffix of an answer file in `done/`.
pub const ANSWER_SUFFIX: &str = ".answer.json";
/// The most a request file may hold (as a `/run` body).
const MAX_REQUEST: u64 = crate::model::MAX_BODY as u64;

/// The inbox of runs in `workspace`.
pub fn dir_for(workspace: &Path) -> PathBuf {
    workspace.join(".looper").join("inbox")
}

/// The answer file for the request file `name` (`x.json` → `done/x.answer.json`).
pub fn answer_path(inbox: &Path, name: &str) -> PathBuf {
    inbox.join("done").join(answer_name(name))
}

fn answer_name(name: &str) -> String {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    format!("{stem}{ANSWER_SUFFIX}")
}

/// One workspace's inbox, held open.
pub struct Inbox {
    /// The workspace (canonical): requests from here are its runs' hand-offs.
    pub workspace: PathBuf,
    /// `<workspace>/.looper/inbox`, for runs' `LOOPER_INBOX`.
    pub path: PathBuf,
    dir: Dir,
    /// Requests being carried out, named `<request id>@<name>`: what a crash leaves here
    /// is carried out again (or answered from the run it started) when the inbox is next
    /// looked into.
    taken: Option<Dir>,
    done: Dir,
}

/// Opens (creating when missing, mode 0700) `<workspace>/.looper`, its `inbox` and
/// `inbox/done`, none of them through a link, and writes `.looper/.gitignore` holding `*`
/// when there is none, so that git never sees any of it.
pub fn prepare(workspace: &Path) -> io::Result<Inbox> {
    open(workspace, true)
}

/// [`prepare`] without creating anything: the inbox of a workspace, if it has a sound one.
pub fn existing(workspace: &Path) -> io::Result<Inbox> {
    open(workspace, false)
}

fn open(workspace: &Path, create: bool) -> io::Result<Inbox> {
    let uid = crate::os::procs::current_uid();
    let workspace = workspace.canonicalize()?;
    let mode = create.then_some(0o700);
    let ws = Dir::open(&workspace)?;
    let looper = ws.subdir(".looper", mode, uid)?;
    let dir = looper.subdir("inbox", mode, uid)?;
    let done = dir.subdir("done", mode, uid)?;
    let taken = match dir.subdir("taken", mode, uid) {
        Ok(d) => Some(d),
        Err(e) if !create && e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if create {
        // A directory made earlier (or by hand) with wider permissions is narrowed.
        for d in [&looper, &dir, &done].into_iter().chain(taken.as_ref()) {
            d.chmod(0o700)?;
        }
        match looper.create_new(OsStr::new(".gitignore"), 0o644) {
            Ok(mut f) => f.write_all(b"*\n")?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Inbox {
        path: dir_for(&workspace),
        workspace,
        dir,
        taken,
        done,
    })
}

/// What wakes the inbox thread: the kernel, when a request lands in a watched inbox, or
/// Looper (a new inbox to look into, shutdown). Without inotify or an eventfd it falls back
/// to looking every [`POLL`].
pub struct Doorbell {
    inotify: Option<Inotify>,
    bell: Option<Bell>,
}

impl Doorbell {
    pub fn new() -> Doorbell {
        let doorbell = Doorbell {
            inotify: Inotify::new().ok(),
            bell: Bell::new().ok(),
        };
        if doorbell.inotify.is_none() || doorbell.bell.is_none() {
            log::info!(
                "inbox.polling interval_ms={} reason=no_inotify",
                POLL.as_millis()
            );
        }
        doorbell
    }

    /// Watches `inbox` (by its handle: whatever the agent renames, the directory Looper
    /// opened is the one watched).
    pub fn watch(&self, inbox: &Inbox) {
        if let Some(n) = &self.inotify {
            if let Err(e) = n.watch_dir(&inbox.dir, LANDED | APPEARED) {
                log::warn!(
                    "inbox.watch_failed dir={} error={} hint=\"looked into every minute only\"",
                    Q(&inbox.path.to_string_lossy()),
                    Q(&e.to_string())
                );
            }
        }
    }

    /// Wakes the inbox thread.
    pub fn ring(&self) {
        if let Some(b) = &self.bell {
            b.ring();
        }
    }

    /// Sleeps until something landed, a ring, or the fallback interval.
    fn wait(&self) {
        let (Some(n), Some(b)) = (&self.inotify, &self.bell) else {
            std::thread::sleep(POLL);
            return;
        };
        let rang = crate::os::sys::poll_readable(&[n.fd(), b.fd()], SAFETY_NET)[1];
        let seen = n.drain();
        if !rang && seen & APPEARED != 0 && seen & (LANDED | libc::IN_Q_OVERFLOW) == 0 {
            // Only a name that appeared (a `.tmp` being written, a link, a FIFO): looked at
            // again after the time it had before inotify, or as soon as anything lands (the
            // rename that follows a `.tmp`), whichever comes first.
            crate::os::sys::poll_readable(&[n.fd(), b.fd()], POLL);
            n.drain();
        }
        b.clear();
    }
}

impl Default for Doorbell {
    fn default() -> Doorbell {
        Doorbell::new()
    }
}

/// What the inbox thread works for: the inboxes to look into, and where a request goes.
pub trait Desk: Send + Sync + 'static {
    fn inboxes(&self) -> Vec<Arc<Inbox>>;
    fn doorbell(&self) -> &Doorbell;
    fn shutdown(&self) -> &Shutdown;
    /// A fresh request id.
    fn new_id(&self) -> String;

    /// What became of request `request_id` if it got as far as its run: the run's row.
    fn run_of(&self, request_id: &str) -> Option<Value>;
    /// Serves `body` as a hand-off from a run of `workspace`: the answer's body, or why not.
    fn hand_off(
        self: &Arc<Self>,
        workspace: &Path,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, Refusal>;
}

/// Starts the inbox thread. It ends at shutdown.
pub fn start<D: Desk>(app: &Arc<D>) {
    let app = Arc::clone(app);
    let spawned = std::thread::Builder::new()
        .name("inbox".into())
        .spawn(move || {
            while !app.shutdown().is_set() {
                for inbox in app.inboxes() {
                    take_all(&app, &inbox);
                }
                app.doorbell().wait();
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

/// Takes every complete request in `inbox`, oldest name first, after those a crash left
/// half done.
fn take_all<D: Desk>(app: &Arc<D>, inbox: &Inbox) {
    if let Some(taken) = &inbox.taken {
        let mut left: Vec<OsString> = taken.names().unwrap_or_default();
        left.sort();
        for name in left {
            if app.shutdown().is_set() {
                return;
            }
            resume_taken(app, inbox, taken, &name);
        }
    }
    let Ok(entries) = inbox.dir.entries() else {
        return;
    };
    // Directories the listing names as such are passed over without a `stat` each.
    let mut names: Vec<OsString> = entries
        .into_iter()
        .filter(|(n, is_dir)| !is_dir && is_request_name(&n.to_string_lossy()))
        .map(|(n, _)| n)
        .filter(|n| inbox.dir.stat(n).is_ok_and(|e| e.kind != Kind::Dir))
        .collect();
    names.sort();
    for name in names {
        if app.shutdown().is_set() {
            return;
        }
        take(app, inbox, &name);
    }
}

/// Reads one request, moves it into `taken/` under its request id (into `done/` where the
/// inbox has no `taken/`), carries it out, answers it in `done/`, moves it there, and keeps
/// `done/` bounded.
fn take<D: Desk>(app: &Arc<D>, inbox: &Inbox, name: &OsStr) {
    let shown = name.to_string_lossy().into_owned();
    let body = read_request(&inbox.dir, name, &shown);
    let request_id = app.new_id();
    let (held, held_name) = match &inbox.taken {
        Some(taken) => (taken, OsString::from(format!("{request_id}@{shown}"))),
        None => (&inbox.done, name.to_os_string()),
    };
    if let Err(e) = inbox.dir.rename(name, held, &held_name) {
        // Never taken twice: what cannot be moved is removed (it stays the agent's file).
        log::warn!(
            "inbox.take_failed dir={} file={} error={}",
            Q(&inbox.path.to_string_lossy()),
            Q(&shown),
            Q(&e.to_string())
        );
        let _ = inbox.dir.unlink(name);
        return;
    }
    log::info!(
        "inbox.take request_id={request_id} dir={} file={}",
        Q(&inbox.path.to_string_lossy()),
        Q(&shown)
    );
    let outcome = body.and_then(|body| app.hand_off(&inbox.workspace, &body, &request_id));
    answer(inbox, &shown, &request_id, outcome);
    if inbox.taken.is_some() {
        finish_taken(inbox, held, &held_name, &shown);
    } else {
        prune_done(&inbox.done);
    }
}

/// Carries out again a request a crash left in `taken/` (`<request id>@<name>`), under its
/// own request id: the stale check makes that safe, and one whose run was started already
/// is answered with that run instead.
fn resume_taken<D: Desk>(app: &Arc<D>, inbox: &Inbox, taken: &Dir, held_name: &OsStr) {
    let held = held_name.to_string_lossy().into_owned();
    let Some((request_id, shown)) = held.split_once('@') else {
        let _ = taken.unlink(held_name);
        return;
    };
    log::warn!(
        "inbox.resume request_id={request_id} dir={} file={} hint=\"taken before Looper stopped; carried out now\"",
        Q(&inbox.path.to_string_lossy()),
        Q(shown)
    );
    let outcome = match app.run_of(request_id) {
        Some(row) => Ok(json!({
            "ok": true,
            "request_id": request_id,
            "run_id": row["run_id"],
            "recovered": true,
            "note": "Looper stopped before it answered; the run it started is this one",
            "run": row,
        })),
        None => read_request(taken, held_name, shown)
            .and_then(|body| app.hand_off(&inbox.workspace, &body, request_id)),
    };
    answer(inbox, shown, request_id, outcome);
    finish_taken(inbox, taken, held_name, shown);
}

/// Moves an answered request from `taken/` into `done/` under its own name.
fn finish_taken(inbox: &Inbox, taken: &Dir, held_name: &OsStr, shown: &str) {
    if let Err(e) = taken.rename(held_name, &inbox.done, OsStr::new(shown)) {
        log::warn!(
            "inbox.finish_failed dir={} file={} error={}",
            Q(&inbox.path.to_string_lossy()),
            Q(shown),
            Q(&e.to_string())
        );
        let _ = taken.unlink(held_name);
    }
    prune_done(&inbox.done);
}

/// Writes the answer to request `shown` in `done/`.
fn answer(inbox: &Inbox, shown: &str, request_id: &str, outcome: Result<Value, Refusal>) {
    let (status, body) = match outcome {
        Ok(body) => (200, body),
        Err(e) => {
            log::warn!(
                "run.fail request_id={request_id} status={} error={}",
                e.status(),
                Q(&e.message)
            );
            (e.status(), e.body())
        }
    };
    let answer = json!({"status": status, "body": body, "request_id": request_id});
    if let Err(e) = write_answer(&inbox.done, &answer_name(shown), request_id, &answer) {
        log::error!(
            "inbox.answer_failed request_id={request_id} error={}",
            Q(&e.to_string())
        );
    }
    log::info!("inbox.answer request_id={request_id} status={status}");
}

/// The body of a request file, read only when it is named `*.json` and is a regular file of
/// ours with no other hard link (one linked to a file elsewhere is not the agent's to hand
/// over), at most 1 MiB, and still that file once opened.
fn read_request(dir: &Dir, name: &OsStr, shown: &str) -> Result<Vec<u8>, Refusal> {
    let refuse = |why: &str| Refusal::bad_request(format!("inbox file {shown:?} refused: {why}"));
    let meta = dir.stat(name).map_err(|e| refuse(&e.to_string()))?;
    match meta.kind {
        Kind::Link => return Err(refuse("it is a symbolic link")),
        Kind::File => {}
        _ => return Err(refuse("it is not a regular file")),
    }
    if meta.uid != crate::os::procs::current_uid() {
        return Err(refuse("it is not owned by Looper's user"));
    }
    if meta.nlink != 1 {
        return Err(refuse("it has other hard links"));
    }
    if !name.as_bytes().ends_with(b".json") {
        return Err(refuse("requests are named <name>.json"));
    }
    let too_large = || Refusal::new(Why::TooLarge, "body is larger than 1 MiB");
    if meta.size > MAX_REQUEST {
        return Err(too_large());
    }
    let file = dir.open_read(name).map_err(|e| refuse(&e.to_string()))?;
    let opened = file.metadata().map_err(|e| refuse(&e.to_string()))?;
    {
        use std::os::unix::fs::MetadataExt;
        if !opened.is_file() || opened.ino() != meta.ino || opened.dev() != meta.dev {
            return Err(refuse("it changed while being read"));
        }
    }
    let mut body = Vec::new();
    file.take(MAX_REQUEST + 1)
        .read_to_end(&mut body)
        .map_err(|e| refuse(&e.to_string()))?;
    if body.len() as u64 > MAX_REQUEST {
        return Err(too_large());
    }
    Ok(body)
}

/// Writes an answer whole, readable by our user only: a new file of a name nobody else
/// knows, renamed over `name` (a link there is replaced, not followed).
fn write_answer(done: &Dir, name: &str, request_id: &str, answer: &Value) -> io::Result<()> {
    let tmp = OsString::from(format!(".answer-{request_id}.tmp"));
    let mut f = done.create_new(&tmp, 0o600)?;
    let written = f
        .write_all(answer.to_string().as_bytes())
        .and_then(|_| f.write_all(b"\n"));
    drop(f);
    let moved = written.and_then(|_| done.rename(&tmp, done, OsStr::new(name)));
    if moved.is_err() {
        let _ = done.unlink(&tmp);
    }
    moved
}

/// Keeps the [`DONE_KEPT`] newest answers in `done/`, with their requests.
fn prune_done(done: &Dir) {
    let Ok(names) = done.names() else {
        return;
    };
    let mut answers: Vec<((i64, i64), String)> = names
        .iter()
        .filter_map(|n| {
            let name = n.to_str()?;
            let stem = name.strip_suffix(ANSWER_SUFFIX)?.to_string();
            let meta = done.stat(n).ok()?;
            Some((meta.mtime, stem))
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
            let name = OsString::from(name);
            // Names only: a directory planted there is left alone.
            if done.stat(&name).is_ok_and(|e| e.kind != Kind::Dir) {
                let _ = done.unlink(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

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
        assert_eq!(inbox.path, ws.join(".looper/inbox"));
        for d in [
            ".looper",
            ".looper/inbox",
            ".looper/inbox/done",
            ".looper/inbox/taken",
        ] {
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
        prune_done(&Dir::open(&done).unwrap());
        assert!(!done.join("r000.json").exists());
        assert!(!done.join(format!("r004{ANSWER_SUFFIX}")).exists());
        assert!(done.join("r005.json").exists());
        assert_eq!(fs::read_dir(&done).unwrap().count(), 2 * DONE_KEPT);
        fs::remove_dir_all(&done).unwrap();
    }
}
