//! Reading `/proc`: which processes are live `codex exec` runs (by program and arguments,
//! or by the `LOOPER_RUN_ID` in their environment), their process trees, and which of them
//! a stop takes. Signalling them is [`crate::os::signals`]'s.
//!
//! The matching rules are plain functions over a snapshot of `/proc` so that they can be
//! tested with made-up process tables.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Programs that run a script named in `argv[1]` (a `node` shim runs `codex.js`).
const INTERPRETERS: &[&str] = &[
    "node", "nodejs", "bun", "deno", "sh", "bash", "dash", "python", "python3",
];

/// Architectures that start a target triple, for `codex-<target-triple>` names.
const TRIPLE_ARCHES: &[&str] = &[
    "x86_64",
    "aarch64",
    "arm64",
    "armv7",
    "arm",
    "i686",
    "riscv64",
    "powerpc64le",
    "s390x",
];

/// What we know of one process from one read of `/proc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// Clock ticks since boot; with the pid it names one process even if the pid is reused.
    pub start_time: u64,
    pub argv: Vec<String>,
    /// The value of `LOOPER_RUN_ID` in its environment, if any.
    pub run_id: Option<String>,
    /// The value of `LOOPER_URL` in its environment, if any.
    pub looper_url: Option<String>,
    /// Its working directory, when known already; else read from `/proc` when asked for
    /// (only `LOOPER_STOP_SCOPE=workspace` needs it).
    pub cwd: Option<PathBuf>,
}

impl ProcInfo {
    /// The workspace of a `codex exec` process: its `-C`/`--cd` argument (relative to its
    /// working directory), else its working directory.
    pub fn workspace(&self) -> Option<PathBuf> {
        let cwd = self
            .cwd
            .clone()
            .or_else(|| fs::read_link(format!("/proc/{}/cwd", self.pid)).ok());
        let mut args = self.argv.iter().skip(1);
        let mut named = None;
        while let Some(a) = args.next() {
            if a == "-C" || a == "--cd" {
                named = args.next().cloned();
            } else if let Some(v) = a.strip_prefix("--cd=") {
                named = Some(v.to_string());
            } else if a == "--" {
                break;
            }
        }
        match named {
            Some(dir) => Some(match &cwd {
                Some(cwd) => cwd.join(dir),
                None => PathBuf::from(dir),
            }),
            None => cwd,
        }
    }
}

/// Which runs a selection takes (when it is not a shutdown's list of run ids).
pub enum Scope<'a> {
    /// Every live codex exec run of the user, and every process of ours.
    All,
    /// Only processes carrying a run id of ours.
    Own,
    /// Only codex exec runs whose workspace is `dir` (canonical), and processes carrying one
    /// of `run_ids` (runs of that workspace).
    Workspace {
        dir: &'a Path,
        run_ids: &'a HashSet<String>,
    },
}

/// `(ppid, start_time)` from `/proc/<pid>/stat`, or `None` for a zombie or a gone process.
pub(crate) fn read_stat(pid: i32) -> Option<(i32, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// The start time of `pid` (clock ticks since boot), unless it is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    read_stat(pid).map(|(_, start)| start)
}

/// Whether `pid` names a live (not zombie) process right now.
pub fn is_alive(pid: i32) -> bool {
    read_stat(pid).is_some()
}

fn split_nul(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty())
}

/// The entries of `dir` whose names are numbers (pids in `/proc`, descriptors in
/// `/proc/self/fd`); `None` when the directory cannot be read.
fn numbered_entries(dir: &Path) -> Option<Vec<(i32, fs::DirEntry)>> {
    let entries = fs::read_dir(dir).ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| Some((e.file_name().to_str()?.parse::<i32>().ok()?, e)))
            .collect(),
    )
}

/// One snapshot of the processes of user `uid`. Entries that vanish mid-scan are skipped.
pub fn scan(uid: u32) -> std::io::Result<Vec<ProcInfo>> {
    scan_in(Path::new("/proc"), uid, &[])
}

/// [`scan`] again shortly after `previous`: a process already there is taken from it
/// unread (reading `/proc` is slow on these machines, a few ms a scan); only new pids are
/// read. For a stop's second look, which wants the processes born meanwhile.
pub fn rescan(uid: u32, previous: &[ProcInfo]) -> std::io::Result<Vec<ProcInfo>> {
    scan_in(Path::new("/proc"), uid, previous)
}

/// The `LOOPER_RUN_ID` and `LOOPER_URL` a process was started with (`base`: its `/proc`
/// directory); `None` where it has none or cannot be read.
fn run_tags(base: &Path) -> (Option<String>, Option<String>) {
    let (mut run_id, mut looper_url) = (None, None);
    if let Ok(environ) = fs::read(base.join("environ")) {
        for var in split_nul(&environ) {
            if let Some(v) = var.strip_prefix(b"LOOPER_RUN_ID=") {
                run_id = Some(String::from_utf8_lossy(v).into_owned());
            } else if let Some(v) = var.strip_prefix(b"LOOPER_URL=") {
                looper_url = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    (run_id, looper_url)
}

/// The processes of user `uid` started as a run of the Looper at `url`, with their run id:
/// [`scan`]'s environment check alone, about a fifth of a full scan's cost, for the
/// question every request asks (is this caller a run?).
pub fn runs_of(uid: u32, url: &str) -> Vec<(i32, String)> {
    let Some(entries) = numbered_entries(Path::new("/proc")) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|(pid, _)| {
            let base = Path::new("/proc").join(pid.to_string());
            if fs::metadata(&base).ok()?.uid() != uid {
                return None;
            }
            match run_tags(&base) {
                (Some(id), Some(u)) if u == url => Some((pid, id)),
                _ => None,
            }
        })
        .collect()
}

/// [`scan`] of a `/proc` mounted at `proc`. Not being able to list it is an error, never an
/// empty table: "nothing runs" would start a second codex beside the first.
fn scan_in(proc: &Path, uid: u32, previous: &[ProcInfo]) -> std::io::Result<Vec<ProcInfo>> {
    let mut out = Vec::new();
    let entries = numbered_entries(proc)
        .ok_or_else(|| std::io::Error::other(format!("cannot list {}", proc.display())))?;
    let known: HashMap<i32, &ProcInfo> = previous.iter().map(|p| (p.pid, p)).collect();
    for (pid, _) in entries {
        if let Some(p) = known.get(&pid) {
            out.push((*p).clone());
            continue;
        }
        let base = Path::new("/proc").join(pid.to_string());
        match fs::metadata(&base) {
            Ok(m) if m.uid() == uid => {}
            _ => continue,
        }
        let Some((ppid, start_time)) = read_stat(pid) else {
            continue;
        };
        let argv = fs::read(base.join("cmdline"))
            .map(|b| {
                split_nul(&b)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let (run_id, looper_url) = run_tags(&base);
        out.push(ProcInfo {
            pid,
            ppid,
            uid,
            start_time,
            argv,
            run_id,
            looper_url,
            cwd: None,
        });
    }
    Ok(out)
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Which program names count as codex.
#[derive(Debug, Clone)]
pub struct Names {
    /// Exact basenames.
    pub exact: Vec<String>,
    /// Also any `codex-<target-triple>` (only with the default names).
    pub triples: bool,
}

impl Names {
    /// The configured list exactly as given (it scopes matching, say to a test's fake
    /// codex); else the defaults plus the basenames of the binaries in use.
    pub fn new<'a>(
        configured: Option<&[String]>,
        binaries: impl IntoIterator<Item = &'a str>,
    ) -> Names {
        if let Some(list) = configured {
            return Names {
                exact: list.to_vec(),
                triples: false,
            };
        }
        let mut exact = vec!["codex".to_string(), "codex.js".to_string()];
        for b in binaries {
            let b = basename(b).to_string();
            if !b.is_empty() && !exact.contains(&b) {
                exact.push(b);
            }
        }
        Names {
            exact,
            triples: true,
        }
    }

    fn matches(&self, name: &str) -> bool {
        if self.exact.iter().any(|n| n == name) {
            return true;
        }
        self.triples
            && name.strip_prefix("codex-").is_some_and(|triple| {
                let parts: Vec<&str> = triple.split('-').collect();
                parts.len() >= 3 && TRIPLE_ARCHES.contains(&parts[0])
            })
    }
}

/// Whether `argv` is a `codex exec` run: the program (or the script an interpreter runs)
/// is one of `names`, and `exec` or `e` stands as a whole argument after it. Options such
/// as `--ask-for-approval never` may come first (the original missed those runs).
pub fn is_codex_exec(argv: &[String], names: &Names) -> bool {
    let Some(first) = argv.first() else {
        return false;
    };
    let mut prog = 0;
    if INTERPRETERS.contains(&basename(first)) {
        // Skip the interpreter's own options (`node --no-warnings codex.js`).
        match argv.iter().skip(1).position(|a| !a.starts_with('-')) {
            Some(i) => prog = i + 1,
            None => return false,
        }
    }
    names.matches(basename(&argv[prog])) && argv[prog + 1..].iter().any(|a| a == "exec" || a == "e")
}

/// What a stop is looking for.
pub struct Selector<'a> {
    pub names: &'a Names,
    /// Processes whose `LOOPER_URL` is this one carry a run of ours (or of an earlier Looper
    /// on the same address), wherever they moved to.
    pub looper_url: &'a str,
    /// Only these run ids, when stopping the runs of this server at shutdown.
    pub only_run_ids: Option<&'a HashSet<String>>,
    /// Otherwise, which runs (`LOOPER_STOP_SCOPE`).
    pub scope: Scope<'a>,
    /// Processes to stop whatever they look like (the children Looper spawned itself), each
    /// named by pid and start time, so that a pid reused since is left alone.
    pub extra_pids: &'a [(i32, u64)],
    pub self_pid: i32,
}

/// The processes to stop: every matching run, every process of its run id, and all their
/// descendants; never this process or its ancestors.
pub fn select(table: &[ProcInfo], sel: &Selector) -> Vec<ProcInfo> {
    let by_pid: HashMap<i32, &ProcInfo> = table.iter().map(|p| (p.pid, p)).collect();
    let mut protected = HashSet::new();
    let mut cur = sel.self_pid;
    while cur > 0 && protected.insert(cur) {
        cur = by_pid.get(&cur).map(|p| p.ppid).unwrap_or(0);
    }
    let ours = |p: &ProcInfo| p.run_id.is_some() && p.looper_url.as_deref() == Some(sel.looper_url);
    let mut roots: Vec<i32> = table
        .iter()
        .filter(|p| match sel.only_run_ids {
            Some(ids) => ours(p) && p.run_id.as_ref().is_some_and(|id| ids.contains(id)),
            None => match &sel.scope {
                Scope::All => ours(p) || is_codex_exec(&p.argv, sel.names),
                Scope::Own => ours(p),
                Scope::Workspace { dir, run_ids } => {
                    let of_run =
                        ours(p) && p.run_id.as_ref().is_some_and(|id| run_ids.contains(id));
                    let in_dir = || {
                        p.workspace()
                            .and_then(|w| w.canonicalize().ok())
                            .is_some_and(|w| w == *dir)
                    };
                    of_run || (is_codex_exec(&p.argv, sel.names) && in_dir())
                }
            },
        })
        .map(|p| p.pid)
        .chain(
            table
                .iter()
                .filter(|p| sel.extra_pids.contains(&(p.pid, p.start_time)))
                .map(|p| p.pid),
        )
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut chosen = HashSet::new();
    while let Some(pid) = roots.pop() {
        if protected.contains(&pid) || !chosen.insert(pid) {
            continue;
        }
        roots.extend(children.get(&pid).into_iter().flatten().copied());
    }
    let mut out: Vec<ProcInfo> = table
        .iter()
        .filter(|p| chosen.contains(&p.pid))
        .cloned()
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// The pids of `table` that descend from the process `(pid, start_time)`, itself included.
pub fn descendants(table: &[ProcInfo], root: (i32, u64)) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    if !table.iter().any(|p| (p.pid, p.start_time) == root) {
        return out;
    }
    let mut todo = vec![root.0];
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) {
            continue;
        }
        out.push(pid);
        todo.extend(children.get(&pid).into_iter().flatten().copied());
    }
    out
}

/// The real user id of this process.
pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail and has no preconditions.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    fn defaults() -> Names {
        Names::new(None, [])
    }

    #[test]
    fn an_unreadable_proc_is_an_error_not_an_empty_table() {
        assert!(scan_in(Path::new("/nonexistent/proc"), current_uid(), &[]).is_err());
        let table = scan(current_uid()).expect("/proc is readable here");
        assert!(table.iter().any(|p| p.pid == std::process::id() as i32));
    }

    #[test]
    fn finds_runs_started_with_options_before_exec() {
        let n = defaults();
        assert!(is_codex_exec(
            &argv(
                "/usr/bin/codex --ask-for-approval never exec --sandbox workspace-write -C /w hi"
            ),
            &n
        ));
        assert!(is_codex_exec(&argv("codex exec hi"), &n));
        assert!(is_codex_exec(&argv("codex e hi"), &n));
        assert!(is_codex_exec(
            &argv("node --no-warnings /usr/lib/node_modules/@openai/codex/bin/codex.js exec hi"),
            &n
        ));
        assert!(is_codex_exec(
            &argv("/opt/codex-x86_64-unknown-linux-musl exec x"),
            &n
        ));
    }

    #[test]
    fn leaves_other_programs_alone() {
        let n = defaults();
        assert!(!is_codex_exec(&argv("codex"), &n));
        assert!(!is_codex_exec(&argv("codex resume"), &n));
        assert!(!is_codex_exec(&argv("vim codex exec"), &n));
        assert!(!is_codex_exec(&argv("codex-responses-api-proxy exec"), &n));
        assert!(!is_codex_exec(&argv("mycodex exec"), &n));
        // The word inside the prompt does not count: it must be an argument of its own.
        assert!(!is_codex_exec(&argv("codex please-exec"), &n));
        assert!(!is_codex_exec(&[], &n));
    }

    #[test]
    fn configured_names_replace_the_defaults() {
        let list = vec!["fake-codex-1".to_string()];
        let n = Names::new(Some(&list), ["/tmp/x/my-codex"]);
        assert!(is_codex_exec(&argv("/tmp/fake-codex-1 exec"), &n));
        assert!(!is_codex_exec(&argv("/tmp/x/my-codex exec"), &n));
        assert!(!is_codex_exec(&argv("codex exec"), &n));
        assert!(!is_codex_exec(
            &argv("codex-x86_64-unknown-linux-musl exec"),
            &n
        ));
        let n = Names::new(None, ["/tmp/x/my-codex"]);
        assert!(is_codex_exec(&argv("/tmp/x/my-codex exec"), &n));
        assert!(is_codex_exec(&argv("codex exec"), &n));
    }

    fn proc(pid: i32, ppid: i32, cmd: &str, run: Option<(&str, &str)>) -> ProcInfo {
        ProcInfo {
            pid,
            ppid,
            uid: 1,
            start_time: pid as u64,
            argv: argv(cmd),
            run_id: run.map(|r| r.0.to_string()),
            looper_url: run.map(|r| r.1.to_string()),
            cwd: None,
        }
    }

    #[test]
    fn selects_runs_descendants_and_tagged_processes_only() {
        let url = "http://127.0.0.1:1/run";
        let table = vec![
            proc(1, 0, "init", None),
            proc(10, 1, "looper", None),
            proc(20, 1, "codex --ask-for-approval never exec hi", None),
            proc(21, 20, "bash -c make", None),
            proc(22, 21, "make", None),
            proc(30, 1, "escaped-daemon", Some(("r1", url))),
            proc(
                40,
                1,
                "other-looper-run",
                Some(("r2", "http://127.0.0.1:2/run")),
            ),
            proc(50, 1, "vim", None),
        ];
        let names = defaults();
        let sel = Selector {
            names: &names,
            looper_url: url,
            only_run_ids: None,
            scope: Scope::All,
            extra_pids: &[],
            self_pid: 10,
        };
        let pids: Vec<i32> = select(&table, &sel).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![20, 21, 22, 30]);
    }

    #[test]
    fn never_selects_itself_or_its_ancestors() {
        let url = "http://127.0.0.1:1/run";
        // Looper started from inside a codex run, carrying that run's id.
        let table = vec![
            proc(20, 1, "codex exec hi", Some(("r1", url))),
            proc(21, 20, "looper", Some(("r1", url))),
            proc(22, 21, "child", Some(("r1", url))),
        ];
        let names = defaults();
        let sel = Selector {
            names: &names,
            looper_url: url,
            only_run_ids: None,
            scope: Scope::All,
            extra_pids: &[],
            self_pid: 21,
        };
        let pids: Vec<i32> = select(&table, &sel).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![22]);
    }

    #[test]
    fn shutdown_selects_only_the_named_runs() {
        let url = "u";
        let table = vec![
            proc(20, 1, "codex exec hi", Some(("r1", url))),
            proc(30, 1, "codex exec other", None),
        ];
        let names = defaults();
        let ids: HashSet<String> = ["r1".to_string()].into();
        let sel = Selector {
            names: &names,
            looper_url: url,
            only_run_ids: Some(&ids),
            scope: Scope::All,
            extra_pids: &[],
            self_pid: 5,
        };
        let pids: Vec<i32> = select(&table, &sel).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![20]);
    }

    /// A child of ours is named by pid and start time: a process that got the same pid
    /// later (a reused pid) is left alone.
    #[test]
    fn our_children_are_known_by_pid_and_start_time() {
        let table = vec![
            proc(20, 1, "some-program", None),
            proc(21, 20, "its-child", None),
        ];
        let names = defaults();
        let select_with = |extra: &[(i32, u64)]| -> Vec<i32> {
            let sel = Selector {
                names: &names,
                looper_url: "u",
                only_run_ids: None,
                scope: Scope::All,
                extra_pids: extra,
                self_pid: 5,
            };
            select(&table, &sel).iter().map(|p| p.pid).collect()
        };
        // `proc` gives each process the start time of its pid number.
        assert_eq!(select_with(&[(20, 20)]), vec![20, 21]);
        assert!(
            select_with(&[(20, 19)]).is_empty(),
            "a reused pid was taken"
        );
    }

    #[test]
    fn a_runs_workspace_is_its_cd_argument_else_its_directory() {
        let mut p = proc(
            20,
            1,
            "codex --ask-for-approval never exec -C ws -- -C x",
            None,
        );
        p.cwd = Some("/home/me".into());
        assert_eq!(p.workspace(), Some(PathBuf::from("/home/me/ws")));
        p.argv = argv("codex exec --cd=/abs hi");
        assert_eq!(p.workspace(), Some(PathBuf::from("/abs")));
        p.argv = argv("codex exec hi");
        assert_eq!(p.workspace(), Some(PathBuf::from("/home/me")));
    }

    #[test]
    fn scanning_survives_processes_vanishing_mid_scan() {
        // Short-lived children come and go while we scan: entries that vanish are skipped.
        let churn = std::thread::spawn(|| {
            for _ in 0..40 {
                if let Ok(mut c) = std::process::Command::new("true").spawn() {
                    let _ = c.wait();
                }
            }
        });
        let me = std::process::id() as i32;
        for _ in 0..40 {
            let table = scan(current_uid()).unwrap();
            assert!(table.iter().any(|p| p.pid == me));
        }
        churn.join().unwrap();
    }

    #[test]
    fn scan_sees_this_process() {
        let me = std::process::id() as i32;
        let table = scan(current_uid()).unwrap();
        let mine = table.iter().find(|p| p.pid == me).expect("own entry");
        assert!(!mine.argv.is_empty());
    }
}
