//! The agent's reach into Looper: git, which Looper runs on the repository the agent
//! writes, runs no program of the agent's, is not found inside a workspace, and a git that
//! never answers holds up nothing of Looper's; a state directory that is not Looper's is
//! refused; sums of the agent's numbers saturate. Each test is an attack as it was found;
//! each fails on a Looper without its fix.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{answer_of, drop_request, git, have_git, run_id_of, FakeZulip, Fixture, Looper};
use serde_json::{json, Value};

/// Git's own deadline per question in Looper: an answer slower than this waited for git.
const GIT_DEADLINE: Duration = Duration::from_secs(5);
/// Well under git's deadline: an answer this quick did not wait for a stuck git.
const QUICK: Duration = Duration::from_secs(3);

/// The git the tests themselves use (found on the tests' own `PATH`).
fn real_git() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("git"))
        .find(|p| p.is_file())
        .expect("git on PATH")
}

/// A fixture whose workspace is a real git repository with a one-item TODO list; `None`
/// (said loudly) where git is missing.
fn git_fixture(tag: &str) -> Option<(Fixture, PathBuf)> {
    if !have_git() {
        common::skip("git is not installed here");
        return None;
    }
    let fx = Fixture::new(tag);
    let ws = fx.path("ws");
    common::git_workspace_with_todo(&ws, "- [ ] one\n");
    Some((fx, ws))
}

/// A script at `path` that creates `marker` when it runs (as anyone, from anywhere).
fn payload(path: &Path, marker: &Path) {
    common::program(
        path,
        &format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    );
}

/// The row of `run_id` once its summary reached Zulip (its report is in by then).
fn reported(looper: &Looper, z: &FakeZulip, run_id: &str) -> Value {
    looper.wait(&format!("the summary of {run_id} on Zulip"), || {
        z.contents()
            .into_iter()
            .find(|m| m.contains(&format!("run {run_id} ")))
    });
    let runs = looper.get("/runs").body;
    runs["runs"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["run_id"] == run_id).cloned())
        .unwrap_or_else(|| panic!("no row for {run_id}: {runs}"))
}

/// The configuration that names the payload, given its path.
type Settings = fn(&Path) -> Vec<(String, String)>;

/// A run commits; before it ends, the agent deletes the committed blob and makes the
/// repository a partial clone whose promisor remote runs its program: git's lazy fetch of
/// the missing object (for `diff --shortstat`, `rev-list`, `diff-index` at the run's end)
/// would run it as Looper's user. Three ways to name the program: the remote's
/// `uploadpack` (run through `sh -c`), an `ext::` URL with that protocol allowed by the
/// repository, an `ssh://` URL with `core.sshCommand`. None runs; the row still has what
/// git can tell without the object.
#[test]
fn a_partial_clones_fetch_runs_nothing_as_looper() {
    if !have_git() {
        return common::skip("git is not installed here");
    }
    let variants: [(&str, Settings); 3] = [
        ("uploadpack", |p| {
            vec![
                ("remote.origin.url".into(), "/nonexistent".into()),
                (
                    "remote.origin.uploadpack".into(),
                    format!("{} #", p.display()),
                ),
            ]
        }),
        ("ext", |p| {
            vec![
                ("remote.origin.url".into(), format!("ext::{}", p.display())),
                ("protocol.ext.allow".into(), "always".into()),
                ("protocol.allow".into(), "always".into()),
            ]
        }),
        ("ssh", |p| {
            vec![
                (
                    "remote.origin.url".into(),
                    "ssh://git@example.invalid/x".into(),
                ),
                ("core.sshCommand".into(), p.display().to_string()),
            ]
        }),
    ];
    for (name, config) in variants {
        let fx = Fixture::new(&format!("jail-promisor-{name}"));
        let ws = fx.path("ws");
        let start = common::git_workspace_with_todo(&ws, "- [ ] one\n- [ ] two\n");
        let (evil, pwned) = (fx.path("payload.sh"), fx.path("PWNED"));
        payload(&evil, &pwned);
        let go = fx.path("go");
        let z = FakeZulip::start();
        let looper = fx.start_owned(&z.env_with(&[
            ("FAKE_CODEX_GIT", &real_git().to_string_lossy()),
            (
                "FAKE_CODEX",
                &format!(
                    "record;tick:TODO.md;commit:work;await:{};exit:0",
                    go.display()
                ),
            ),
        ]));
        let a = looper.run(json!({"codex_prompt": "work"}));
        assert_eq!(a.status, 200, "{name}: {}\n{}", a.body, looper.tail());
        let head = looper.wait("the run's commit", || {
            let h = git(&ws, &["rev-parse", "HEAD"]);
            (h != start).then_some(h)
        });
        // The agent's part: the blob goes, the repository becomes a partial clone.
        let blob = git(&ws, &["rev-parse", "HEAD:TODO.md"]);
        std::fs::remove_file(ws.join(".git/objects").join(&blob[..2]).join(&blob[2..]))
            .expect("the loose blob");
        let mut settings = vec![
            ("core.repositoryformatversion".to_string(), "1".to_string()),
            ("extensions.partialClone".into(), "origin".into()),
            ("remote.origin.promisor".into(), "true".into()),
        ];
        settings.extend(config(&evil));
        for (key, value) in &settings {
            git(&ws, &["config", key, value]);
        }
        std::fs::write(&go, "").unwrap();
        let row = reported(&looper, &z, &run_id_of(&a));
        assert!(
            !pwned.exists(),
            "{name}: the workspace's git configuration ran a program as Looper\n{}",
            looper.tail()
        );
        // What needs no missing object is still known.
        assert_eq!(row["git"]["head_before"], json!(start), "{name}: {row}");
        assert_eq!(row["git"]["head_after"], json!(head), "{name}: {row}");
        assert_eq!(row["git"]["commits"], 1, "{name}: {row}");
    }
}

/// A `git` planted on Looper's `PATH` inside the workspace (direnv's `PATH_add bin` puts
/// such an entry there before Looper starts) never runs: Looper found its git at start,
/// outside every workspace.
#[test]
fn a_git_planted_in_the_workspace_never_runs() {
    let Some((fx, ws)) = git_fixture("jail-planted") else {
        return;
    };
    let bin = ws.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pwned = fx.path("PWNED");
    std::fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\ntouch {}\nexec {} \"$@\"\n",
            pwned.display(),
            real_git().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("git"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("PATH", &path),
        ("FAKE_CODEX_GIT", &real_git().to_string_lossy()),
        ("FAKE_CODEX", "record;tick:TODO.md;commit:work;exit:0"),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}\n{}", a.body, looper.tail());
    let row = reported(&looper, &z, &run_id_of(&a));
    assert!(
        !pwned.exists(),
        "the workspace's git ran as Looper\n{}",
        looper.tail()
    );
    // Looper's own git answered.
    assert_eq!(row["git"]["commits"], 1, "{row}");
    assert_eq!(row["git"]["dirty"], false, "{row}");
    let status = looper.get("/status").body;
    let start = looper.log_with(" server.start ");
    assert!(
        !start.contains(&format!("git={}", bin.join("git").display())),
        "{start}"
    );
    assert!(status["helper_jail"].is_string(), "{status}");
}

/// Where the kernel has Landlock (this machine kind: ABI 7), git runs inside it, and
/// `server.start` and `/status` say so.
#[test]
fn the_jail_in_force_is_said() {
    let fx = Fixture::new("jail-said");
    let looper = fx.start(&[]);
    let status = looper.get("/status").body;
    let start = looper.log_with(" server.start ");
    let said = status["helper_jail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        start.contains(&format!(" helper_jail={said}")),
        "{start}\n{status}"
    );
    // The kernel's own answer (securityfs, which lists the LSMs, is often not mounted):
    // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) is the ABI version.
    // SAFETY: the documented version query; it reads and writes no memory.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if have_git() && abi >= 4 {
        assert_eq!(said, "landlock", "{start}");
        assert!(start.contains(&format!(" landlock_abi={abi}")), "{start}");
    } else if abi < 4 {
        common::skip("the kernel has no Landlock (ABI 4 or later) here");
    }
}

/// A FIFO in the workspace's git configuration (`include.path`) blocks every git command
/// until its deadline. Releases whatever git still waits on it when dropped.
struct Fifo(PathBuf);

impl Fifo {
    fn include_in(ws: &Path) -> Fifo {
        let fifo = ws.join(".gitfifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path inside this test's directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Written as text: a git of the test's own would block on it from now on too.
        let mut config = std::fs::read_to_string(ws.join(".git/config")).unwrap();
        config.push_str(&format!("[include]\n\tpath = {}\n", fifo.display()));
        std::fs::write(ws.join(".git/config"), config).unwrap();
        Fifo(fifo)
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        // An empty write end opened and closed: a reader blocked on it reads end-of-file.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.0);
    }
}

/// The git processes of Looper `pid` asking about `ws`.
fn gits_of(pid: u32, ws: &Path) -> Vec<u64> {
    let ws = ws.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
                .filter(|p| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                    let ppid = stat
                        .rfind(')')
                        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                        .and_then(|x| x.parse::<u32>().ok());
                    let argv = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    ppid == Some(pid) && argv.contains(" -C ") && argv.contains(&ws)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// With a git that never answers, `/run` and a hand-off (whose summary counts the run's
/// commits) are answered well before git's deadline: nothing that asks git holds the run
/// guard or `/run`'s path for long (HEAD is read from the repository's files).
#[test]
fn a_git_that_never_answers_holds_up_no_trigger() {
    let Some((fx, ws)) = git_fixture("jail-fifo") else {
        return;
    };
    let z = FakeZulip::start();
    let looper =
        fx.start_owned(&z.env_with(&[("FAKE_CODEX", "record;exit-if-prompt:second:0;sleep:600")]));
    let a = looper.run(json!({"codex_prompt": "first"}));
    assert_eq!(a.status, 200, "{}", a.body);
    // The run commits (HEAD moves: its summary asks git for the count), then the agent
    // makes every git of the workspace wait on a FIFO.
    std::fs::write(ws.join("work.txt"), "work\n").unwrap();
    git(&ws, &["add", "work.txt"]);
    git(&ws, &["commit", "-q", "-m", "work"]);
    let _fifo = Fifo::include_in(&ws);
    let inbox = ws.join(".looper/inbox");
    let asked = Instant::now();
    let body = json!({"zulip_message": "next", "codex_prompt": "second",
                      "from_run_id": run_id_of(&a)});
    drop_request(&inbox, "next.json", &body.to_string());
    let answer = answer_of(&looper, &inbox, "next.json");
    let took = asked.elapsed();
    assert_eq!(answer["status"], 200, "{answer}\n{}", looper.tail());
    assert!(
        took < QUICK,
        "the hand-off took {took:?}: git ({GIT_DEADLINE:?} deadline) held the run guard\n{}",
        looper.tail()
    );
    let asked = Instant::now();
    let b = looper.run(json!({"codex_prompt": "third"}));
    let took = asked.elapsed();
    assert_eq!(b.status, 200, "{}\n{}", b.body, looper.tail());
    assert!(
        took < QUICK,
        "/run took {took:?}: it waited for git\n{}",
        looper.tail()
    );
}

/// The operator stops a run whose workspace's git never answers; the run's TERM trap drops
/// a hand-off in its inbox on the way out. It starts nothing: a run being stopped can no
/// longer hand off (its watcher, busy with git, noticed its exit late: the hand-off of a run
/// that still looked active was taken, and started a run after the operator's stop).
#[test]
fn a_stopped_run_can_no_longer_hand_off() {
    let Some((fx, ws)) = git_fixture("jail-term") else {
        return;
    };
    let _fifo = Fifo::include_in(&ws);
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[("FAKE_CODEX", "record;term-handoff:bye")]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let pid = common::pid_of(&a);
    looper.record_of(pid);
    let stop = looper.run(json!({"zulip_message": "stop", "codex_prompt": ""}));
    assert_eq!(stop.status, 200, "{}", stop.body);
    let inbox = ws.join(".looper/inbox");
    let answer = answer_of(&looper, &inbox, &format!("term-{pid}.json"));
    assert_eq!(answer["status"], 409, "{answer}\n{}", looper.tail());
    assert!(
        answer["body"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stale")),
        "{answer}"
    );
    assert_eq!(looper.records().len(), 1, "a run started after the stop");
    let runs = looper.get("/runs").body;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");
}

/// A git blocked on a FIFO does not outlive Looper: its process group is ended at shutdown.
#[test]
fn no_git_outlives_looper() {
    let Some((fx, ws)) = git_fixture("jail-shutdown") else {
        return;
    };
    let _fifo = Fifo::include_in(&ws);
    let mut looper = fx.start(&[("FAKE_CODEX", "record;exit:0")]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    // Its end's report asks git, which waits on the FIFO.
    let pid = looper.pid();
    let stuck = looper.wait("a git of Looper's waiting on the FIFO", || {
        gits_of(pid, &ws).first().copied()
    });
    looper.signal(libc::SIGTERM);
    assert_eq!(looper.wait_exit(), Some(0));
    assert!(
        !common::alive(stuck),
        "git {stuck} outlived Looper's shutdown"
    );
}

/// A log directory others may write (made first by another user under `/tmp`, mode 0777)
/// is refused at start, naming the variable: a `loop-state.json` forged there made Looper
/// report the loop finished and post the other user's queued message as its bot. So is one
/// another user owns, one of Looper's own inside either, and a state file of another
/// user's in Looper's own directory.
#[test]
fn a_state_directory_that_is_not_loopers_is_refused() {
    let fx = Fixture::new("jail-statedir");
    let shared = fx.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let forged = json!({"holds": {}, "outbox": [{"content": "forged by another user",
                        "queued_at": "2026-12-01T00:00:00+00:00", "request_id": "x"}]});
    std::fs::write(shared.join("loop-state.json"), forged.to_string()).unwrap();
    let z = FakeZulip::start();
    let refused = |dir: &Path, words: &[&str]| {
        let mut env = z.env();
        env.push(("CODEX_EXEC_LOG_DIR", dir.to_string_lossy().into_owned()));
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (mut child, stderr) = fx.spawn(&pairs);
        let status = common::wait_for("Looper to refuse to start", || {
            child.try_wait().unwrap().or_else(|| {
                if std::fs::read_to_string(&stderr).is_ok_and(|s| s.contains(" server.start ")) {
                    // It started: our child, ended before the test fails.
                    let _ = child.kill();
                    panic!(
                        "Looper started on {}:\n{}",
                        dir.display(),
                        common::read(&stderr)
                    );
                }
                None
            })
        });
        let said = common::read(&stderr);
        assert_eq!(status.code(), Some(2), "{said}");
        for w in words {
            assert!(said.contains(w), "{w:?} not in: {said}");
        }
    };
    refused(
        &shared,
        &["CODEX_EXEC_LOG_DIR", "written by group or others"],
    );
    // Looper's own private directory is no safer inside one where anyone may rename it
    // away and put theirs in its place.
    let inside = shared.join("mine");
    std::fs::create_dir(&inside).unwrap();
    std::fs::set_permissions(&inside, std::fs::Permissions::from_mode(0o700)).unwrap();
    refused(
        &inside,
        &[
            "CODEX_EXEC_LOG_DIR",
            "lies in",
            "written by group or others",
        ],
    );
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        common::skip("playing another user's directory and file needs root");
    } else {
        let chown = |p: &Path| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            // SAFETY: chown(2) on a path of this test's own, with a valid C string.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
        };
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&shared);
        refused(&shared, &["CODEX_EXEC_LOG_DIR", "belongs to user 65534"]);
        refused(
            &inside,
            &["CODEX_EXEC_LOG_DIR", "lies in", "belongs to user 65534"],
        );
        let own = fx.path("logs");
        std::fs::write(own.join("loop-state.json"), forged.to_string()).unwrap();
        chown(&own.join("loop-state.json"));
        refused(&own, &["CODEX_EXEC_LOG_DIR", "loop-state.json", "65534"]);
    }
    assert!(z.messages().is_empty(), "a forged message was posted");
}

/// The directories Looper makes for its state are its user's alone (0700).
#[test]
fn a_new_state_directory_is_private() {
    let fx = Fixture::new("jail-private");
    let deep = fx.path("state/looper/logs");
    let looper = fx.start(&[("CODEX_EXEC_LOG_DIR", &deep.to_string_lossy())]);
    for dir in ["state", "state/looper", "state/looper/logs"] {
        let mode = std::fs::metadata(fx.path(dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{dir}\n{}", looper.tail());
    }
}

/// Token sums saturate: two runs whose session files say 10^19 tokens each (more than a
/// u64 holds together) show the largest count in `/metrics`, never a wrapped small one.
#[test]
fn token_sums_saturate() {
    let fx = Fixture::new("jail-sums");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("FAKE_CODEX_USAGE", "10000000000000000000,0,0,0"),
        ("FAKE_CODEX", "record;turn:big;exit:0"),
    ]));
    for _ in 0..2 {
        let a = looper.run(json!({"codex_prompt": "work"}));
        assert_eq!(a.status, 200, "{}", a.body);
        let row = reported(&looper, &z, &run_id_of(&a));
        assert_eq!(
            row["tokens"]["used"],
            json!(10_000_000_000_000_000_000u64),
            "{row}"
        );
    }
    let metrics = minreq::get(looper.url("/metrics")).send().unwrap();
    let metrics = metrics.as_str().unwrap().to_string();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("looper_tokens_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    // 2·10^19 wrapped around 2^64 would be about 1.55·10^18.
    assert!(value >= u64::MAX as f64, "{line}");
}

/// `looper <args>` with its stdout on a pseudo-terminal (as in a person's terminal); what it
/// wrote there.
fn on_a_terminal(fx: &Fixture, args: &[&str], url: &str) -> Vec<u8> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: posix_openpt(3) returns a fresh descriptor or -1; grantpt, unlockpt and
    // ptsname_r work on it, the name written into a buffer of ours with its length.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0, "no pseudo-terminal");
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        assert!(s >= 0, "cannot open the terminal's other end");
        (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s))
    };
    let mut child = std::process::Command::new(common::looper_binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &fx.dir)
        .env("LOOPER_URL", url)
        .stdin(std::process::Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(slave);
    let mut seen = Vec::new();
    let mut master = master;
    // Until the terminal's other end is closed by the command's exit (then: EIO).
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        seen.extend_from_slice(&buf[..n]);
    }
    child.wait().unwrap();
    seen
}

/// The agent's escape sequences (a clipboard write, a title, a clear screen, hidden text, a
/// C1 CSI) reach no terminal as they are: `looper logs` and `looper trigger --follow` show
/// them as text on a terminal (`--raw` and a pipe keep the bytes), the server's stderr
/// shows them as text (its log file keeps the bytes), and Zulip gets none of them.
#[test]
fn the_agents_bytes_reach_no_terminal_raw() {
    let fx = Fixture::new("jail-terminal");
    let z = FakeZulip::start();
    let evil = "\u{1b}]52;c;ZXZpbA==\u{7} \u{1b}]0;pwned\u{7} \u{1b}[2J \u{1b}[8mhidden \u{9b}31m";
    let said_file = fx.path("evil.txt");
    std::fs::write(&said_file, evil).unwrap();
    let file = said_file.display();
    let looper = fx.start_owned(&z.env_with(&[
        ("LOOPER_NOTIFY_ON_EXIT", "1"),
        (
            "FAKE_CODEX",
            &format!("record;print-file:{file};turn-file:{file};exit:0"),
        ),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    looper.ended_row(&id);
    let url = looper.url("/run");
    let has_esc = |b: &[u8]| b.contains(&0x1b) || b.windows(2).any(|w| w == [0xc2, 0x9b]);
    let shown = on_a_terminal(&fx, &["logs", &id], &url);
    let text = String::from_utf8_lossy(&shown);
    assert!(!has_esc(&shown), "{text}");
    assert!(
        text.contains("^[]52;c;ZXZpbA==^G ^[]0;pwned^G ^[[2J ^[[8mhidden \\u009b31m"),
        "{text}"
    );
    let raw = on_a_terminal(&fx, &["logs", &id, "--raw"], &url);
    assert!(has_esc(&raw), "--raw lost the bytes");
    let piped = common::cli(&fx, &["logs", &id], &[("LOOPER_URL", &url)]);
    assert!(has_esc(&piped.stdout), "a pipe lost the bytes");
    let followed = on_a_terminal(
        &fx,
        &["trigger", "--message", "m", "--prompt", "again", "--follow"],
        &url,
    );
    let text = String::from_utf8_lossy(&followed);
    assert!(!has_esc(&followed) && text.contains("^[]52;c;"), "{text}");
    // The server's stderr (a terminal under `cargo run`, the journal under systemd).
    let stderr = looper.stderr_with("^[]52;c;");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{9b}'),
        "{stderr}"
    );
    assert!(
        looper.server_log().contains(evil),
        "the log file lost the bytes"
    );
    // Zulip: the exit notice quotes the last line, the summary the last message.
    let said = looper.wait("the exit notice", || {
        z.contents()
            .into_iter()
            .find(|m| m.contains(&format!("run {id} ended")))
    });
    assert!(
        !has_esc(said.as_bytes()) && !said.contains('\u{7}'),
        "{said:?}"
    );
    assert!(said.contains("> ]52;c;ZXZpbA=="), "{said:?}");
}

/// A final message that ends with a count of its own (`codex`, `ok`, `tokens used`, `1`)
/// does not set the run's tokens, even without codex's session file: codex prints the
/// message twice, and only its own count sits between the two. The row says where its
/// count came from.
#[test]
fn a_forged_printed_count_counts_nothing() {
    let fx = Fixture::new("jail-forged");
    let z = FakeZulip::start();
    let looper = fx.start_owned(&z.env_with(&[
        ("FAKE_CODEX_NO_SESSION", "1"),
        ("FAKE_CODEX_USAGE", "5000,1000,250,0"),
        (
            "FAKE_CODEX",
            "record;turn:x\ncodex\nok\ntokens used\n1;exit:0",
        ),
    ]));
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let row = reported(&looper, &z, &run_id_of(&a));
    assert_eq!(
        row["tokens"],
        json!({"used": 4250, "source": "printed"}),
        "{row}"
    );
}

/// A run's row is ended together with its report: while git (blocked here on a FIFO) still
/// counts its commits, the row stays open; once the report is in, `ended_at`, the outcome
/// and the tokens appear at once. A client that waits for `ended_at` never reads
/// `tokens: null` for a run that printed its count.
#[test]
fn a_row_ends_with_its_report() {
    let Some((fx, ws)) = git_fixture("jail-pending") else {
        return;
    };
    let fifo = Fifo::include_in(&ws);
    let looper = fx.start(&[("FAKE_CODEX", "record;turn:done;exit:0")]);
    let a = looper.run(json!({"codex_prompt": "work"}));
    assert_eq!(a.status, 200, "{}", a.body);
    let id = run_id_of(&a);
    looper.wait("the run's report waiting on git", || {
        (!gits_of(looper.pid(), &ws).is_empty()).then_some(())
    });
    let row = looper.row(&id);
    assert_eq!(
        row["ended_at"],
        json!(null),
        "the row was ended before its report: {row}\n{}",
        looper.tail()
    );
    // The include goes, then the git waiting on it reads its end.
    let config = std::fs::read_to_string(ws.join(".git/config")).unwrap();
    let freed = config.split("[include]").next().unwrap().to_string();
    std::fs::write(ws.join(".git/config"), freed).unwrap();
    drop(fifo);
    let row = looper.wait("the run's row to end", || {
        let row = looper.row(&id);
        row["ended_at"].is_string().then_some(row)
    });
    assert_eq!(row["outcome"], json!("ok"), "{row}");
    assert!(
        row["tokens"]["used"].as_u64().is_some_and(|t| t > 0),
        "{row}"
    );
}
