//! Test support: each test gets its own directory, a fake codex under a name no other
//! process on the machine has, a Looper started from the real binary on port 0, and when it
//! wants one a fake Zulip server on loopback. Nothing here signals a process the test did
//! not start: Looper itself, and the fake codex processes and helpers it recorded.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A resource limit for Looper: `(RLIMIT_*, value)`.
pub type Limit = (libc::__rlimit_resource_t, u64);

/// How a test starts Looper, beyond its environment.
#[derive(Default)]
pub struct Launch {
    /// Resource limits: `RLIMIT_FSIZE` to make its writes fail as on a full disk,
    /// `RLIMIT_NOFILE` to run it out of descriptors.
    pub limits: Vec<Limit>,
    /// Signals it inherits as ignored (`nohup` ignores SIGHUP).
    pub ignored_signals: Vec<i32>,
    /// Its stderr is a full pipe that nobody reads (a paused terminal, `looper | less`
    /// left alone) until [`Looper::unstall_stderr`].
    pub stalled_stderr: bool,
}

/// Where a Looper's stderr goes.
enum Stderr {
    /// A file the test reads.
    File(PathBuf),
    /// A full pipe: the test holds its read end (so writes block rather than fail) and
    /// does not read it.
    Stalled(std::io::PipeReader),
    /// What was a stalled pipe, now read to its end by a thread of the test.
    Unstalled(Arc<Mutex<Vec<u8>>>),
}

/// A pipe whose buffer is already full, and its read end.
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let (reader, mut writer) = std::io::pipe().expect("pipe");
    let fd = writer.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor we own; F_GETFL/F_SETFL touch only its flags.
    let set_nonblocking = |on: bool| unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        libc::fcntl(fd, libc::F_SETFL, flags);
    };
    set_nonblocking(true);
    // Big writes first, then single bytes into what is left.
    for size in [4096, 1] {
        while writer.write(&vec![b'.'; size]).is_ok() {}
    }
    // The flag belongs to the pipe, which Looper shares: its writes must block.
    set_nonblocking(false);
    (reader, writer)
}

/// Upper bound for anything a test waits for; never an assertion about speed.
pub const PATIENCE: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Polls `f` until it returns `Some`, or panics with `what` after [`PATIENCE`].
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_with(what, String::new, f)
}

/// [`wait_for`] that, when it times out, also prints `context()`: what the test saw.
pub fn wait_for_with<T>(
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many descriptors `pid` holds open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How many threads `pid` runs.
pub fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The `looper` binary under test: the one cargo built, or `LOOPER_TEST_BINARY` (CI runs the
/// suite once against the static build).
pub fn looper_binary() -> PathBuf {
    std::env::var_os("LOOPER_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_looper")))
}

/// Writes `text` (a script, starting with its `#!` line) to `path`, executable by anyone.
pub fn program(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write a program");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A copy of the `looper` binary that any user can run (in the fixture's own directory,
/// opened to everyone): a test that starts Looper as another user must not depend on the
/// checkout's directories being open to them (a clone under root's 0700 home is not).
pub fn binary_for_anyone(fx: &Fixture) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = fx.path("anyone");
    std::fs::create_dir_all(&dir).expect("a directory for everyone");
    let copy = dir.join("looper");
    std::fs::copy(looper_binary(), &copy).expect("copy looper");
    for (path, mode) in [(&fx.dir, 0o755), (&dir, 0o755), (&copy, 0o755)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    copy
}

/// Spawns `cmd`, whose program is a fresh copy ([`binary_for_anyone`]): while another
/// test's thread forks, its child holds the copy's write descriptor until it execs, and
/// the kernel refuses to run a file open for writing ("Text file busy") for that moment.
pub fn spawn_fresh_copy(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.expect("spawn the copy of looper"),
        }
    }
}

/// A binary built from `examples/<name>.rs` (the fake codex, the stand-in model).
pub fn example_binary(name: &str) -> PathBuf {
    let looper = PathBuf::from(env!("CARGO_BIN_EXE_looper"));
    let path = looper
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it; with a filtered run, `cargo build --examples` first",
        path.display()
    );
    path
}

/// Makes `dir` an empty git repository the way `git init` lays one out (codex, and so
/// Looper, run only inside a git work tree), without needing git itself.
pub fn make_git_repo(dir: &Path) {
    for sub in [".git/objects", ".git/refs/heads", ".git/refs/tags"] {
        std::fs::create_dir_all(dir.join(sub)).expect("create .git");
    }
    std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").expect("write HEAD");
    std::fs::write(
        dir.join(".git/config"),
        "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
    )
    .expect("write .git/config");
}

/// Says loudly that a test cannot run here and why; in CI (`CI=true`), where every tool is
/// installed and the suite runs as root, a skip is a failure.
pub fn skip(why: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    assert!(!ci, "skipped in CI: {why}");
    eprintln!("skipped: {why}");
}

/// Whether git can be run here (`cargo test` needs only the Rust toolchain).
pub fn have_git() -> bool {
    Command::new("git")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs git in `dir` as a test's own user; its trimmed stdout. Fails the test on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        o.status.success(),
        "git {args:?} in {}: {o:?}",
        dir.display()
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Makes `dir` (a fixture's workspace) a real git repository whose first commit holds
/// `TODO.md` with `todo`; that commit's id.
pub fn git_workspace_with_todo(dir: &Path, todo: &str) -> String {
    let _ = std::fs::remove_dir_all(dir.join(".git"));
    git(dir, &["init", "-q"]);
    std::fs::write(dir.join("TODO.md"), todo).expect("write TODO.md");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "start"]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A test's own directory with `bin/<fake codex>`, `ws/` (workspace), `rec/` (what the
/// fake codex records) and `logs/`.
pub struct Fixture {
    pub dir: PathBuf,
    /// The fake codex's unique program name, also the only process name Looper matches.
    pub codex_name: String,
    pub codex_path: PathBuf,
}

impl Fixture {
    pub fn new(tag: &str) -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let unique = format!("{}-{}-{n}", std::process::id(), tag);
        let dir = std::env::temp_dir().join(format!("looper-test-{unique}"));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "ws", "rec", "logs"] {
            std::fs::create_dir_all(dir.join(sub)).expect("create test dir");
        }
        make_git_repo(&dir.join("ws"));
        let codex_name = format!("fake-codex-{unique}");
        let codex_path = dir.join("bin").join(&codex_name);
        std::os::unix::fs::symlink(example_binary("fake_codex"), &codex_path)
            .expect("link fake codex");
        Fixture {
            dir,
            codex_name,
            codex_path,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The environment every test starts from: no Zulip, no autopoll, no delays, the fake
    /// codex, and matching scoped to its unique name.
    pub fn base_env(&self) -> Vec<(String, String)> {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", d("")),
            ("LOOPER_PORT", "0".into()),
            ("LOOPER_AUTO_START_WHEN_IDLE", "0".into()),
            (
                "CODEX_EXEC_BINARY",
                self.codex_path.to_string_lossy().into_owned(),
            ),
            ("LOOPER_CODEX_PROCESS_NAMES", self.codex_name.clone()),
            ("LOOPER_WORKSPACE", d("ws")),
            ("CODEX_EXEC_LOG_DIR", d("logs")),
            ("CODEX_EXEC_DELAY_SECONDS", "0".into()),
            ("CODEX_EXEC_STARTUP_CHECK_SECONDS", "0.2".into()),
            ("LOOPER_STOP_GRACE_SECONDS", "1".into()),
            ("FAKE_CODEX_RECORD_DIR", d("rec")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Starts Looper with the base environment plus `extra` (an empty value removes a
    /// variable) and waits until it listens.
    pub fn start(&self, extra: &[(&str, &str)]) -> Looper {
        self.start_limited(extra, &[])
    }

    /// [`Fixture::start`] with owned values.
    pub fn start_owned(&self, extra: &[(&str, String)]) -> Looper {
        let pairs: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.start(&pairs)
    }

    /// [`Fixture::start`] with resource limits on Looper (`RLIMIT_FSIZE` to make its writes
    /// fail as on a full disk, `RLIMIT_NOFILE` to run it out of descriptors).
    pub fn start_limited(&self, extra: &[(&str, &str)], limits: &[Limit]) -> Looper {
        let launch = Launch {
            limits: limits.to_vec(),
            ..Launch::default()
        };
        self.launch(extra, &launch)
    }

    /// [`Fixture::start`] as `launch` says.
    pub fn launch(&self, extra: &[(&str, &str)], launch: &Launch) -> Looper {
        let (child, stderr) = self.spawn_with(&looper_binary(), &self.dir, extra, launch);
        self.wait_ready(child, stderr)
    }

    /// Waits until the Looper just spawned listens.
    fn wait_ready(&self, child: Child, stderr: Stderr) -> Looper {
        let mut looper = Looper {
            child: Some(child),
            port: 0,
            stderr,
            log_dir: self.path("logs"),
            rec_dir: self.path("rec"),
            codex_name: self.codex_name.clone(),
        };
        let pid = u64::from(looper.pid());
        // `None` once it has exited (a zombie until reaped below, so the pid stays its own).
        let port = looper.wait("server.start in the log", || {
            if !alive(pid) {
                return Some(None);
            }
            let text = looper.log_text();
            let line = text.lines().find(|l| l.contains(" server.start "))?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("port="))
                .and_then(|p| p.parse().ok())
                .map(Some)
        });
        match port {
            Some(port) => looper.port = port,
            None => {
                // Taken out, so that the drop does not signal a pid no longer ours.
                let status = looper.child.take().and_then(|mut c| c.wait().ok());
                let status = status.map(|s| s.to_string()).unwrap_or_default();
                panic!("looper exited at start ({status}):\n{}", looper.tail());
            }
        }
        looper
    }

    /// [`Fixture::start`] with another working directory than the test's own.
    pub fn start_in(&self, cwd: &Path, extra: &[(&str, &str)]) -> Looper {
        let (child, stderr) = self.spawn_with(&looper_binary(), cwd, extra, &Launch::default());
        self.wait_ready(child, stderr)
    }

    /// [`Fixture::start`] of another copy of the `looper` binary (`binary`).
    pub fn start_binary(&self, binary: &Path, extra: &[(&str, &str)]) -> Looper {
        let (child, stderr) = self.spawn_with(binary, &self.dir, extra, &Launch::default());
        self.wait_ready(child, stderr)
    }

    /// Spawns Looper without waiting (for start-up failures); its stderr goes to the file
    /// returned.
    pub fn spawn(&self, extra: &[(&str, &str)]) -> (Child, PathBuf) {
        let launch = Launch::default();
        match self.spawn_with(&looper_binary(), &self.dir, extra, &launch) {
            (child, Stderr::File(path)) => (child, path),
            _ => unreachable!("stderr goes to a file unless the launch stalls it"),
        }
    }

    fn spawn_with(
        &self,
        binary: &Path,
        cwd: &Path,
        extra: &[(&str, &str)],
        launch: &Launch,
    ) -> (Child, Stderr) {
        let mut env: HashMap<String, String> = self.base_env().into_iter().collect();
        for (k, v) in extra {
            if v.is_empty() {
                env.remove(*k);
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        let (stderr, to) = if launch.stalled_stderr {
            let (reader, writer) = full_pipe();
            (Stderr::Stalled(reader), Stdio::from(writer))
        } else {
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            let path = self.dir.join(format!("looper-stderr-{n}.txt"));
            let file = std::fs::File::create(&path).expect("stderr file");
            (Stderr::File(path), Stdio::from(file))
        };
        let mut cmd = Command::new(binary);
        cmd.env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(to);
        let limits = launch.limits.clone();
        let ignored = launch.ignored_signals.clone();
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec; setrlimit(2) and signal(2) are
        // async-signal-safe, `lim` lives on the child's stack for the call, and the vectors
        // were moved in before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for (resource, limit) in &limits {
                    let lim = libc::rlimit {
                        rlim_cur: *limit,
                        rlim_max: *limit,
                    };
                    if libc::setrlimit(*resource, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for sig in &ignored {
                    libc::signal(*sig, libc::SIG_IGN);
                }
                Ok(())
            });
        }
        // A copy of the binary just written (`start_binary`) is busy while another test
        // thread's child sits between fork and exec with the copy's descriptor: try again.
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.expect("start looper"),
            }
        };
        (child, stderr)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A running Looper started by this test.
pub struct Looper {
    child: Option<Child>,
    pub port: u16,
    stderr: Stderr,
    pub log_dir: PathBuf,
    rec_dir: PathBuf,
    codex_name: String,
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Looper {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A raw TCP connection to this Looper, for requests an HTTP client would not send.
    pub fn raw(&self) -> std::net::TcpStream {
        std::net::TcpStream::connect(("127.0.0.1", self.port))
            .unwrap_or_else(|e| panic!("connect to looper: {e}\n{}", self.tail()))
    }

    /// What Looper wrote to stderr (nothing read yet while it is stalled).
    pub fn stderr(&self) -> String {
        match &self.stderr {
            Stderr::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            Stderr::Stalled(_) => String::new(),
            Stderr::Unstalled(got) => {
                String::from_utf8_lossy(&got.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
            }
        }
    }

    /// The server log file as it is now. Its lines are written by a thread of their own: a
    /// line logged before an answer may reach the file just after it. To see a line, or to
    /// see that one is absent, wait with [`Looper::log_with`] for it, or for a line logged
    /// after it would have been.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("looper-server.log")).unwrap_or_default()
    }

    /// The whole server log file once it holds `needle` (it may not exist yet). Its lines
    /// keep their order: every line logged before `needle`'s is in the text returned.
    pub fn log_with(&self, needle: &str) -> String {
        self.wait_text(&format!("{needle:?} in the server log"), needle, || {
            self.server_log()
        })
    }

    /// [`Looper::log_with`] for stderr, which is written by a thread of its own too.
    pub fn stderr_with(&self, needle: &str) -> String {
        self.wait_text(&format!("{needle:?} on stderr"), needle, || self.stderr())
    }

    /// Waits until `read()` holds `needle`; that text.
    fn wait_text(&self, what: &str, needle: &str, read: impl Fn() -> String) -> String {
        self.wait(what, || {
            let text = read();
            text.contains(needle).then_some(text)
        })
    }

    /// The server log as the test can read it: stderr, or the log file while stderr was
    /// stalled.
    fn log_text(&self) -> String {
        match &self.stderr {
            Stderr::File(_) => self.stderr(),
            _ => self.server_log(),
        }
    }

    /// The last lines of the server log, for failure messages.
    pub fn tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Starts reading a stalled stderr, from a thread of its own, to its end.
    pub fn unstall_stderr(&mut self) {
        let got = Arc::<Mutex<Vec<u8>>>::default();
        let unstalled = Stderr::Unstalled(Arc::clone(&got));
        let Stderr::Stalled(mut reader) = std::mem::replace(&mut self.stderr, unstalled) else {
            panic!("stderr was not stalled");
        };
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 64 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                got.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
    }

    /// Run `run_id`'s row in `/runs` (the test fails when there is none).
    pub fn row(&self, run_id: &str) -> Value {
        let a = self.get("/runs");
        a.body["runs"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["run_id"] == run_id))
            .cloned()
            .unwrap_or_else(|| panic!("no row for {run_id}: {}\n{}", a.body, self.tail()))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request(minreq::get(self.url(path)))
    }

    pub fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut rq = minreq::get(self.url(path));
        for (k, v) in headers {
            rq = rq.with_header(*k, *v);
        }
        self.request(rq)
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.post_with(path, body, &[])
    }

    pub fn post_with(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
        let mut rq = minreq::post(self.url(path))
            .with_header("Content-Type", "application/json")
            .with_body(body.to_string());
        for (k, v) in headers {
            rq = rq.with_header(*k, *v);
        }
        self.request(rq)
    }

    /// POST /run with `fields` merged over zero delays and a short startup check.
    pub fn run(&self, fields: Value) -> Answer {
        self.post("/run", &run_body(fields))
    }

    /// [`Looper::run`] as the operator, presenting `token` (the fields that choose a program
    /// need it).
    pub fn run_as(&self, token: &str, fields: Value) -> Answer {
        let bearer = format!("Bearer {token}");
        self.post_with("/run", &run_body(fields), &[("Authorization", &bearer)])
    }

    fn request(&self, rq: minreq::Request) -> Answer {
        let response = rq
            .with_timeout(60)
            .send()
            .unwrap_or_else(|e| panic!("request failed: {e}\n{}", self.tail()));
        let body = serde_json::from_slice(response.as_bytes()).unwrap_or_else(|e| {
            panic!(
                "answer is not JSON ({e}): {:?}\n{}",
                response.as_str().unwrap_or("<binary>"),
                self.tail()
            )
        });
        Answer {
            status: response.status_code,
            body,
        }
    }

    /// [`wait_for`] that, when it times out, prints the server log's tail.
    pub fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        wait_for_with(
            what,
            || format!("server log, last lines:\n{}", self.tail()),
            f,
        )
    }

    /// The history row of `run_id` once the run has ended.
    /// Asserts that run `row` was started by autopoll as the pause for `reason` ended, not
    /// before `not_before` (Unix seconds).
    pub fn assert_resumed(&self, row: &Value, not_before: i64, reason: &str) {
        let started = row["started_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp());
        assert!(
            started.is_some_and(|s| s >= not_before),
            "started before {not_before}: {row}\n{}",
            self.tail()
        );
        let line = format!("autopoll.resume reason={reason}_cleared");
        assert!(
            self.server_log().contains(&line),
            "no {line}\n{}",
            self.tail()
        );
    }

    /// The hold of `/status` with that reason, if one holds.
    pub fn hold_for(&self, reason: &str) -> Option<Value> {
        let status = self.get("/status").body;
        status["holds"]
            .as_array()?
            .iter()
            .find(|h| h["reason"] == reason)
            .cloned()
    }

    pub fn ended_row(&self, run_id: &str) -> Value {
        self.wait(&format!("run {run_id} to end"), || {
            let runs = self.get("/runs").body;
            runs["runs"]
                .as_array()?
                .iter()
                .find(|r| r["run_id"] == run_id && !r["return_code"].is_null())
                .cloned()
        })
    }

    /// Every record the fake codex wrote, oldest first.
    pub fn records(&self) -> Vec<Value> {
        let mut out: Vec<Value> = std::fs::read_dir(&self.rec_dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.ends_with(".json") && name.starts_with(|c: char| c.is_ascii_digit())
                    })
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        // In start order (not by pid: pids wrap around on a busy machine).
        out.sort_by_key(|v| v["started_ns"].as_u64());
        out
    }

    /// The answers the fake codex's `post` steps got, oldest first (waits for `n` of them).
    pub fn posts(&self, n: usize) -> Vec<Value> {
        self.wait(&format!("{n} answers to the fake codex's POSTs"), || {
            let mut found: Vec<(std::time::SystemTime, Value)> = std::fs::read_dir(&self.rec_dir)
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("post-"))
                .filter_map(|e| {
                    let t = e.metadata().ok()?.modified().ok()?;
                    Some((
                        t,
                        serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?,
                    ))
                })
                .collect();
            found.sort_by_key(|(t, _)| *t);
            (found.len() >= n).then(|| found.into_iter().map(|(_, v)| v).collect())
        })
    }

    /// Waits for the fake codex with `pid` to write its record.
    pub fn record_of(&self, pid: u64) -> Value {
        self.wait("the fake codex's record", || {
            self.records()
                .into_iter()
                .find(|r| r["pid"].as_u64() == Some(pid))
        })
    }

    /// The contents of a run log once its trailer is written.
    pub fn finished_log(&self, path: &str) -> String {
        self.wait("the run log's trailer", || {
            let text = std::fs::read_to_string(path).ok()?;
            text.contains("\n# codex_exec_return_code=").then_some(text)
        })
    }

    /// Sends `sig` to this Looper (a process this test started).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of the child this test spawned and has not reaped.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for Looper to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let pid = u64::from(self.child.as_ref()?.id());
        // Until reaped it is a zombie: the pid stays its own, and `wait` returns at once.
        self.wait("looper to exit", || (!alive(pid)).then_some(()));
        let status = self.child.take()?.wait().expect("reap looper");
        status.code()
    }
}

impl Drop for Looper {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A graceful stop first: Looper stops and reaps its own runs.
            // SAFETY: kill(2) on the pid of the child this test spawned and has not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Clean up what the fake codex runs of this test started, if still there. Each pid
        // is checked to still be one of ours (its command line names our fake) first.
        for rec in self.records() {
            let pids = std::iter::once(rec["pid"].as_u64())
                .chain(
                    rec["helpers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| v.as_u64()),
                )
                .flatten();
            for pid in pids {
                let cmd = cmdline(pid);
                let ours = cmd.contains(&self.codex_name)
                    || cmd.starts_with("fake-tool")
                    || cmd.starts_with("fake-orphan")
                    || cmd.starts_with("fake-escaped");
                if alive(pid) && ours {
                    // SAFETY: kill(2) on a process this test started (through Looper).
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
            }
        }
    }
}

/// One request the fake Zulip received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The form fields of the body.
    pub fn form(&self) -> HashMap<String, String> {
        self.body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (form_decode(k), form_decode(v)))
            .collect()
    }
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A canned answer: status, extra headers, body.
pub type Canned = (u16, Vec<(String, String)>, String);

/// A Zulip stand-in on loopback: records every request and answers from a queue of canned
/// answers, then with success (`id` 42). `/api/v1/users` lists one user, Tessa (id 8).
pub struct FakeZulip {
    pub port: u16,
    server: Arc<tiny_http::Server>,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub script: Arc<Mutex<VecDeque<Canned>>>,
}

impl FakeZulip {
    pub fn start() -> FakeZulip {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind fake zulip"));
        let port = server.server_addr().to_ip().expect("ip").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<VecDeque<Canned>>> = Arc::new(Mutex::new(VecDeque::new()));
        let (srv, rec, scr) = (server.clone(), received.clone(), script.clone());
        std::thread::spawn(move || {
            while let Ok(mut rq) = srv.recv() {
                let mut body = String::new();
                let _ = rq.as_reader().read_to_string(&mut body);
                let r = Received {
                    method: rq.method().to_string(),
                    url: rq.url().to_string(),
                    headers: rq
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body,
                };
                let canned = if r.url.starts_with("/api/v1/users/me") {
                    (
                        200,
                        vec![],
                        r#"{"result":"success","msg":"","full_name":"Looper Bot","email":"bot@example.com","user_id":99}"#.to_string(),
                    )
                } else if r.url.starts_with("/api/v1/users") {
                    (
                        200,
                        vec![],
                        r#"{"result":"success","msg":"","members":[{"user_id":3,"full_name":"Other Person","email":"o@x"},{"user_id":8,"full_name":"Tessa Example","email":"tessa@example.com"}]}"#.to_string(),
                    )
                } else {
                    scr.lock().unwrap().pop_front().unwrap_or((
                        200,
                        vec![],
                        r#"{"result":"success","msg":"","id":42}"#.to_string(),
                    ))
                };
                let canned = if canned.0 == 0 {
                    // A slow Zulip: wait as told, then answer success.
                    let ms = canned.1.iter().find(|(k, _)| k == "X-Delay-Ms");
                    let ms: u64 = ms.and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
                    std::thread::sleep(Duration::from_millis(ms));
                    (
                        200,
                        vec![],
                        r#"{"result":"success","msg":"","id":43}"#.to_string(),
                    )
                } else {
                    canned
                };
                rec.lock().unwrap().push(r);
                let mut response =
                    tiny_http::Response::from_string(canned.2).with_status_code(canned.0);
                for (k, v) in canned.1 {
                    response = response.with_header(
                        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("header"),
                    );
                }
                let _ = rq.respond(response);
            }
        });
        FakeZulip {
            port,
            server,
            received,
            script,
        }
    }

    /// The bot's email in [`FakeZulip::env`] (the one `/api/v1/users/me` names).
    pub const EMAIL: &'static str = "bot@example.com";

    /// The API key in [`FakeZulip::env`]: distinctive, for asserting it is never shown.
    pub const KEY: &'static str = "zk-0123456789abcdef-secret";

    pub fn site(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Zulip variables that point Looper at this server: `ZULIP_SITE`,
    /// `ZULIP_BOT_EMAIL` ([`FakeZulip::EMAIL`]) and `ZULIP_BOT_API_KEY` ([`FakeZulip::KEY`]).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env_with(&[])
    }

    /// [`FakeZulip::env`] followed by `extra`; a later pair overrides an earlier one of the
    /// same name, with [`Fixture::start_owned`] as with [`cli`].
    pub fn env_with(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let triple = [
            ("ZULIP_SITE", self.site()),
            ("ZULIP_BOT_EMAIL", Self::EMAIL.to_string()),
            ("ZULIP_BOT_API_KEY", Self::KEY.to_string()),
        ];
        let extra = extra.iter().map(|(k, v)| (*k, v.to_string()));
        triple.into_iter().chain(extra).collect()
    }

    pub fn push(&self, status: u16, headers: &[(&str, &str)], body: &str) {
        self.script.lock().unwrap().push_back((
            status,
            headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body.to_string(),
        ));
    }

    /// The text of every message received, oldest first.
    pub fn contents(&self) -> Vec<String> {
        self.messages()
            .iter()
            .map(|m| m.form()["content"].clone())
            .collect()
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.url.starts_with("/api/v1/messages"))
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for FakeZulip {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Drops a request into `inbox` as an agent would: `*.tmp`, then renamed.
pub fn drop_request(inbox: &Path, name: &str, body: &str) {
    let tmp = inbox.join(format!("{name}.tmp"));
    std::fs::write(&tmp, body).expect("write request");
    std::fs::rename(&tmp, inbox.join(name)).expect("rename request");
}

/// Waits for Looper's answer to the request file `name` in `inbox`.
pub fn answer_of(looper: &Looper, inbox: &Path, name: &str) -> Value {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    let path = inbox.join("done").join(format!("{stem}.answer.json"));
    let text = looper.wait(&format!("the answer to {name}"), || {
        std::fs::read_to_string(&path).ok()
    });
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {text:?} is not JSON ({e})\n{}", looper.tail()))
}

/// A session file of the owner's own codex (one no Looper started) under `codex_home`,
/// named by `tag`, whose one `token_count` event reports the account's windows `limits`
/// (`{"primary": {used_percent, window_minutes, resets_at}, "secondary": …}`).
pub fn owners_session(codex_home: &Path, tag: &str, limits: serde_json::Value) {
    let day = chrono::Local::now().format("%Y/%m/%d").to_string();
    let dir = codex_home.join("sessions").join(day);
    std::fs::create_dir_all(&dir).unwrap();
    let event = serde_json::json!({"type": "event_msg",
        "payload": {"type": "token_count", "rate_limits": limits}});
    let tmp = dir.join(format!(".{tag}.tmp"));
    std::fs::write(&tmp, format!("{event}\n")).unwrap();
    std::fs::rename(&tmp, dir.join(format!("rollout-owner-{tag}.jsonl"))).unwrap();
}

/// A `/run` body: `fields` merged over a test message.
pub fn run_body(fields: Value) -> String {
    let mut body = serde_json::json!({"zulip_message": "test run"});
    if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            b.insert(k.clone(), v.clone());
        }
    }
    body.to_string()
}

/// The operator's token the tests that choose a program start Looper with.
pub const OPERATOR_TOKEN: &str = "operator-secret";

/// The pid of the run a `/run` answer started.
pub fn pid_of(answer: &Answer) -> u64 {
    answer.body["codex_exec_result"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {}", answer.body))
}

/// The id of the run a `/run` answer started.
pub fn run_id_of(answer: &Answer) -> String {
    answer.body["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run_id in {}", answer.body))
        .to_string()
}

/// Runs `looper <args>` with `env` (nothing else of the test's environment but PATH).
pub fn cli(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(looper_binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &fx.dir)
        .envs(env.iter().copied())
        .current_dir(&fx.dir)
        .output()
        .expect("run looper cli")
}

pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Reads `path` relative to nothing; a helper for string asserts with context.
pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.as_ref().display()))
}
