//! What git says about a workspace around a run: HEAD, the commits between two heads, and
//! the work tree's state, read without letting the workspace's own configuration run
//! anything as Looper.
//!
//! The agent writes the workspace, `.git/config` and `.gitattributes` included, so a git
//! command that reads the work tree's content could run a program of the agent's choosing
//! (a clean filter on a racily clean file, `core.fsmonitor`, a text conversion). Looper asks
//! git only for what it keeps (HEAD, the commit graph, the index as written, the list of
//! untracked files) and compares the work tree with the index itself, by `lstat`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::os::logging::Q;

/// How long one git command may take before it is killed and its field left empty.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a short answer read (a count, a shortstat line).
const SHORT: u64 = 4096;
/// The most of a listing read (the index, the untracked files); a longer one is unknown.
const LISTING: u64 = 16 << 20;
/// How long git's output may lag its exit (a helper it left holding the pipe).
const OUTPUT_WAIT: Duration = Duration::from_secs(1);
/// The most of a file read for HEAD or a loose ref; the most of `packed-refs` looked at.
const REF_FILE: u64 = 4096;
const PACKED_REFS: u64 = 8 << 20;

pub use crate::model::Git;

/// The time a group of git questions may take together (a run's report, a hand-off's
/// summary). Once one question outlives it, git is taken to be stuck or hostile (a FIFO in
/// its configuration) and the rest are not asked: a bad git costs its own fields, once.
pub struct Budget {
    until: Instant,
    broken: AtomicBool,
}

impl Budget {
    pub fn new(limit: Duration) -> Budget {
        Budget {
            until: Instant::now() + limit,
            broken: AtomicBool::new(false),
        }
    }

    /// The time the next question may take; `None` when none is left.
    fn left(&self) -> Option<Duration> {
        if self.broken.load(Ordering::Relaxed) {
            return None;
        }
        let left = self.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| left.min(TIMEOUT))
    }
}

/// Runs `git <args>` in `workspace`, in its jail ([`crate::os::jail`]): its whole stdout (at
/// most `cap` bytes) when it exits 0 within what `budget` has left. Callers ask only
/// commands that read no work-tree content.
fn run(workspace: &Path, args: &[&str], cap: u64, budget: &Budget) -> Option<Vec<u8>> {
    // Outside a work tree every question fails: none is asked (a process saved per question).
    if !inside_git_work_tree(workspace) {
        return None;
    }
    let limit = budget.left()?;
    let mut cmd = crate::os::jail::helpers()?.git(workspace)?;
    cmd.args(args);
    match crate::os::signals::run_bounded(&mut cmd, false, limit, OUTPUT_WAIT, cap) {
        Ok(crate::os::signals::Bounded::Exited(status, out)) if status.success() => Some(out),
        Ok(crate::os::signals::Bounded::TimedOut) => {
            budget.broken.store(true, Ordering::Relaxed);
            log::warn!(
                "git.timeout workspace={} command={} seconds={:.1} hint=\"git did not answer in time (a FIFO or a slow include in its configuration?): this run's git fields stay empty\"",
                Q(&workspace.to_string_lossy()),
                Q(args.first().copied().unwrap_or("")),
                limit.as_secs_f64()
            );
            None
        }
        Err(crate::os::signals::NotStarted::Spawn(e) | crate::os::signals::NotStarted::Pipe(e)) => {
            // Its jail refused to close (or no process): this run's git fields stay empty.
            log::warn!(
                "git.not_started workspace={} error={}",
                Q(&workspace.to_string_lossy()),
                Q(&e.to_string())
            );
            None
        }
        _ => None,
    }
}

/// A listing, or `None` when it reached `LISTING` (cut, so not the whole truth).
fn listing(workspace: &Path, args: &[&str], budget: &Budget) -> Option<Vec<u8>> {
    run(workspace, args, LISTING, budget).filter(|out| (out.len() as u64) < LISTING)
}

fn text(workspace: &Path, args: &[&str], budget: &Budget) -> Option<String> {
    run(workspace, args, SHORT, budget).map(|out| String::from_utf8_lossy(&out).trim().to_string())
}

/// HEAD's object id, if `workspace` is in a repository with a commit: read from the
/// repository's own files (`HEAD`, the loose ref it names, `packed-refs`), never by running
/// git, so that it costs no process and nothing the agent configured can hold it up. Each
/// file is opened without following a link at its end and without blocking (a FIFO is no
/// file), and read only so far. `None` where only git could tell (a reftable repository).
pub fn head(workspace: &Path) -> Option<String> {
    let (git_dir, common_dir) = git_dirs(workspace)?;
    let mut content = read_small(&git_dir.join("HEAD"))?;
    // A symbolic ref may name another one: a few steps at most.
    for _ in 0..5 {
        let value = content.trim();
        if is_object_id(value) {
            return Some(value.to_string());
        }
        let name = value.strip_prefix("ref:")?.trim();
        if !is_ref_name(name) {
            return None;
        }
        // Refs of one worktree live in its own git directory, the others in the common one.
        let per_worktree = ["refs/worktree/", "refs/bisect/", "refs/rewritten/"]
            .iter()
            .any(|p| name.starts_with(p));
        let base = if per_worktree { &git_dir } else { &common_dir };
        match read_small(&base.join(name)) {
            Some(next) => content = next,
            None => return packed_ref(&common_dir, name),
        }
    }
    None
}

/// The git directory of the work tree `workspace` lies in, and its common directory (they
/// differ for a linked worktree).
fn git_dirs(workspace: &Path) -> Option<(PathBuf, PathBuf)> {
    let dir = workspace.canonicalize().ok()?;
    let top = dir.ancestors().find(|d| {
        let dot = d.join(".git");
        std::fs::metadata(&dot)
            .is_ok_and(|m| (m.is_dir() && dot.join("HEAD").is_file()) || m.is_file())
    })?;
    let dot = top.join(".git");
    let git_dir = if dot.is_dir() {
        dot
    } else {
        let text = read_small(&dot)?;
        let named = text.strip_prefix("gitdir:")?.trim();
        top.join(named)
    };
    let common_dir = match read_small(&git_dir.join("commondir")) {
        Some(c) => git_dir.join(c.trim()),
        None => git_dir.clone(),
    };
    Some((git_dir, common_dir))
}

/// A small regular file as text (at most [`REF_FILE`] bytes).
fn read_small(path: &Path) -> Option<String> {
    crate::os::paths::read_regular(path, REF_FILE)
}

/// Whether `dir` lies inside a git work tree, as codex demands of its workspace: some
/// directory from `dir` up holds a `.git` directory (with a `HEAD`) or a `.git` file
/// pointing elsewhere (`gitdir: ...`, worktrees and submodules). Read from the file system
/// alone: no `git` process.
pub fn inside_git_work_tree(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    dir.ancestors().any(|d| {
        let dot_git = d.join(".git");
        match std::fs::metadata(&dot_git) {
            Ok(m) if m.is_dir() => dot_git.join("HEAD").is_file(),
            // Its first bytes only, never blocking: the agent may leave a huge file or
            // swap in a FIFO.
            Ok(m) if m.is_file() => {
                use std::io::Read;
                use std::os::unix::fs::OpenOptionsExt;
                let mut start = Vec::new();
                std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(&dot_git)
                    .and_then(|f| f.take(7).read_to_end(&mut start))
                    .is_ok_and(|_| start == b"gitdir:")
            }
            _ => false,
        }
    })
}

/// The object id `packed-refs` gives `name`: one bounded read, one pass over the bytes
/// (no allocation a line), and, where git says the file is sorted, no further than where
/// `name` would stand.
fn packed_ref(common_dir: &Path, name: &str) -> Option<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    crate::os::paths::open_regular(&common_dir.join("packed-refs"))?
        .take(PACKED_REFS)
        .read_to_end(&mut bytes)
        .ok()?;
    let wanted = name.as_bytes();
    let mut sorted = false;
    for line in bytes.split(|b| *b == b'\n') {
        if let Some(header) = line.strip_prefix(b"# pack-refs with:") {
            sorted = header.split(|b| *b == b' ').any(|w| w == b"sorted");
            continue;
        }
        let Some(space) = line.iter().position(|b| *b == b' ') else {
            continue;
        };
        let (id, refname) = (&line[..space], &line[space + 1..]);
        if refname == wanted {
            let id = std::str::from_utf8(id).ok()?;
            return is_object_id(id).then(|| id.to_string());
        }
        if sorted && !refname.is_empty() && refname > wanted {
            return None;
        }
    }
    None
}

/// A ref name as git allows it under `refs/`, and nothing that could leave the directory.
fn is_ref_name(name: &str) -> bool {
    name.starts_with("refs/")
        && name.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && !c.ends_with(".lock")
                && c.bytes()
                    .all(|b| b > b' ' && b != 0x7f && !b"~^:?*[\\".contains(&b))
        })
        && !name.contains("..")
}

fn is_object_id(s: &str) -> bool {
    (40..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// One entry of the index as git wrote it, with the `lstat` data git compares.
#[derive(Debug, PartialEq)]
struct Entry {
    /// `<mode> <object id> <stage>\t<path>`: what is staged.
    staged: Vec<u8>,
    path: Vec<u8>,
    mode: u32,
    stage: u8,
    mtime: (i64, i64),
    size: u32,
}

/// Reads `git ls-files --stage --debug -z`: each entry's line ends in NUL and is followed
/// by indented `key: value` lines (mtime and size among them).
fn parse_index(out: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest.iter().position(|b| *b == 0)?;
        let staged = &rest[..end];
        rest = &rest[end + 1..];
        let tab = staged.iter().position(|b| *b == b'\t')?;
        let head = std::str::from_utf8(&staged[..tab]).ok()?;
        let mut words = head.split(' ');
        let mode = u32::from_str_radix(words.next()?, 8).ok()?;
        let stage = words.nth(1)?.parse().ok()?;
        let mut entry = Entry {
            staged: staged.to_vec(),
            path: staged[tab + 1..].to_vec(),
            mode,
            stage,
            mtime: (0, 0),
            size: 0,
        };
        while rest.starts_with(b"  ") {
            let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let line = std::str::from_utf8(&rest[..nl]).ok()?;
            rest = rest.get(nl + 1..).unwrap_or_default();
            for field in line.split('\t') {
                match field.trim().split_once(": ") {
                    Some(("mtime", v)) => {
                        let (s, ns) = v.split_once(':')?;
                        entry.mtime = (s.parse().ok()?, ns.parse().ok()?);
                    }
                    Some(("size", v)) => entry.size = v.parse().ok()?,
                    _ => {}
                }
            }
        }
        entries.push(entry);
    }
    Some(entries)
}

const GITLINK: u32 = 0o160000;
const SYMLINK: u32 = 0o120000;

impl Entry {
    /// Whether the file at its path looks as the index says (what `git status` trusts
    /// before it reads any content); a submodule is not looked into.
    fn unchanged(&self, workspace: &Path) -> bool {
        if self.mode == GITLINK {
            return true;
        }
        let Ok(m) = std::fs::symlink_metadata(workspace.join(OsStr::from_bytes(&self.path))) else {
            return false;
        };
        let kind_matches = if self.mode == SYMLINK {
            m.file_type().is_symlink()
        } else {
            m.is_file()
        };
        let ns_matches = self.mtime.1 == 0 || self.mtime.1 == m.mtime_nsec();
        kind_matches && self.size == m.len() as u32 && self.mtime.0 == m.mtime() && ns_matches
    }
}

/// The work tree as Looper sees it: HEAD, the index and the untracked files (ignored ones
/// left out), all relative to the workspace.
pub struct Tree {
    pub head: Option<String>,
    entries: Vec<Entry>,
    untracked: Vec<u8>,
}

impl Tree {
    /// `None` outside a repository, or when a listing failed or was too long.
    pub fn read(workspace: &Path, budget: &Budget) -> Option<Tree> {
        let index = listing(workspace, &["ls-files", "--stage", "--debug", "-z"], budget)?;
        let untracked = listing(
            workspace,
            &["ls-files", "--others", "--exclude-standard", "-z"],
            budget,
        )?;
        Some(Tree {
            head: head(workspace),
            entries: parse_index(&index)?,
            untracked,
        })
    }

    /// A fingerprint: HEAD, what is staged, each tracked file's `lstat` and each untracked
    /// file's path and `lstat`. Equal fingerprints: nothing was touched.
    pub fn digest(&self, workspace: &Path) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.head.hash(&mut h);
        let stat = |path: &[u8], h: &mut std::collections::hash_map::DefaultHasher| {
            match std::fs::symlink_metadata(workspace.join(OsStr::from_bytes(path))) {
                Ok(m) => (m.mode(), m.len(), m.mtime(), m.mtime_nsec(), m.ino()).hash(h),
                Err(_) => "gone".hash(h),
            }
        };
        for e in &self.entries {
            e.staged.hash(&mut h);
            stat(&e.path, &mut h);
        }
        for path in self.untracked.split(|b| *b == 0).filter(|p| !p.is_empty()) {
            path.hash(&mut h);
            stat(path, &mut h);
        }
        h.finish()
    }

    /// Whether anything differs from HEAD: staged changes (`staged`, from
    /// [`staged_changes`]), a conflict, a tracked file changed or gone, an untracked file.
    fn dirty(&self, workspace: &Path, staged: bool) -> bool {
        staged
            || !self.untracked.is_empty()
            || self
                .entries
                .iter()
                .any(|e| e.stage != 0 || !e.unchanged(workspace))
    }
}

/// Whether the index differs from HEAD (no work-tree file is read).
fn staged_changes(workspace: &Path, budget: &Budget) -> Option<bool> {
    let out = run(
        workspace,
        &[
            "diff-index",
            "--cached",
            "--relative",
            "--name-only",
            "-z",
            "HEAD",
            "--",
        ],
        SHORT,
        budget,
    )?;
    Some(!out.is_empty())
}

/// HEAD now (from `tree`, read by the caller), the commits since `before` and their
/// shortstat, and whether the tree is dirty.
pub fn state(
    workspace: &Path,
    before: Option<String>,
    tree: Option<&Tree>,
    budget: &Budget,
) -> Git {
    let after = tree.and_then(|t| t.head.clone());
    let mut state = Git {
        head_before: before.clone(),
        head_after: after.clone(),
        ..Git::default()
    };
    if let (Some(b), Some(a)) = (&before, &after) {
        state.commits = commits_between(workspace, b, a, budget);
        // Between two commits: no work-tree file is read; no external diff, no textconv.
        let args = [
            "diff",
            "--shortstat",
            "--no-ext-diff",
            "--no-textconv",
            b,
            a,
        ];
        if let Some(stat) = text(workspace, &args, budget) {
            let (files, plus, minus) = parse_shortstat(&stat);
            state.files_changed = Some(files);
            state.insertions = Some(plus);
            state.deletions = Some(minus);
        }
    }
    if let Some(t) = tree.filter(|t| t.head.is_some()) {
        state.dirty = staged_changes(workspace, budget).map(|staged| t.dirty(workspace, staged));
    }
    state
}

/// The commits reachable from `after` and not from `before`.
pub fn commits_between(
    workspace: &Path,
    before: &str,
    after: &str,
    budget: &Budget,
) -> Option<u64> {
    if before == after {
        return Some(0);
    }
    let range = format!("{before}..{after}");
    text(workspace, &["rev-list", "--count", &range], budget).and_then(|n| n.parse().ok())
}

/// ` 3 files changed, 10 insertions(+), 2 deletions(-)`: (files, insertions, deletions);
/// an empty line is no change.
fn parse_shortstat(line: &str) -> (u64, u64, u64) {
    let mut out = (0, 0, 0);
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        if what.starts_with("file") {
            out.0 = n;
        } else if what.starts_with("insertion") {
            out.1 = n;
        } else if what.starts_with("deletion") {
            out.2 = n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "45b983be36b73c0788dc9cbcb76cbb80fc7bb057";
    const B: &str = "0123456789abcdef0123456789abcdef01234567";

    /// HEAD is read from the repository's files as git keeps them: a symbolic ref to a
    /// loose ref, to a packed one (sorted or not), a detached HEAD, a linked worktree;
    /// whatever is not a plain small file (a link, a FIFO) or not a ref name says nothing,
    /// at once.
    #[test]
    fn head_is_read_from_the_repositorys_files() {
        let dir = std::env::temp_dir().join(format!("looper-head-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let git = dir.join("ws/.git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        let write = |p: &str, text: &str| std::fs::write(git.join(p), text).unwrap();
        let ws = dir.join("ws");
        write("HEAD", "ref: refs/heads/main\n");
        assert_eq!(head(&ws), None, "an unborn branch has no HEAD");
        write("refs/heads/main", &format!("{A}\n"));
        assert_eq!(head(&ws).as_deref(), Some(A));
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        write(
            "packed-refs",
            &format!("# pack-refs with: peeled fully-peeled sorted \n{B} refs/heads/a\n{A} refs/heads/main\n^{B}\n"),
        );
        assert_eq!(head(&ws).as_deref(), Some(A), "packed");
        write(
            "packed-refs",
            &format!("# pack-refs with: sorted\n{B} refs/heads/zz\n{A} refs/heads/main\n"),
        );
        assert_eq!(head(&ws), None, "sorted: not looked for past its place");
        write("HEAD", &format!("{B}\n"));
        assert_eq!(head(&ws).as_deref(), Some(B), "detached");
        write("HEAD", "ref: refs/heads/../../../etc/passwd\n");
        assert_eq!(head(&ws), None);
        write("HEAD", "ref: refs/heads/.invalid\n");
        assert_eq!(head(&ws), None, "a reftable repository");
        std::fs::remove_file(git.join("HEAD")).unwrap();
        let fifo = std::ffi::CString::new(git.join("HEAD").to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path in this test's directory.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(head(&ws), None, "a FIFO blocks nothing");
        std::fs::remove_file(git.join("HEAD")).unwrap();
        std::os::unix::fs::symlink(git.join("packed-refs"), git.join("HEAD")).unwrap();
        assert_eq!(head(&ws), None, "a link is not followed");
        // A linked worktree: `.git` names its git directory, which names the common one.
        std::fs::remove_file(git.join("HEAD")).unwrap();
        write("HEAD", "ref: refs/heads/main\n");
        let wt = dir.join("wt");
        std::fs::create_dir_all(git.join("worktrees/wt")).unwrap();
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(
            wt.join(".git"),
            format!("gitdir: {}\n", git.join("worktrees/wt").display()),
        )
        .unwrap();
        write("worktrees/wt/HEAD", "ref: refs/heads/main\n");
        write("worktrees/wt/commondir", "../..\n");
        write("packed-refs", &format!("{A} refs/heads/main\n"));
        assert_eq!(head(&wt).as_deref(), Some(A), "worktree");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `packed-refs` is looked at up to its cap: a ref beyond it is not found (the agent's
    /// 64 MiB of refs cost seconds a read, under the run guard), one before it is.
    #[test]
    fn packed_refs_are_read_up_to_their_cap() {
        let dir = std::env::temp_dir().join(format!("looper-packed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let filler = format!("{B} refs/tags/filler\n");
        let mut text = format!("{A} refs/heads/early\n");
        text.push_str(&filler.repeat(PACKED_REFS as usize / filler.len() + 1));
        text.push_str(&format!("{A} refs/heads/late\n"));
        std::fs::write(dir.join("packed-refs"), text).unwrap();
        assert_eq!(packed_ref(&dir, "refs/heads/early").as_deref(), Some(A));
        assert_eq!(packed_ref(&dir, "refs/heads/late"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn git_work_trees_are_found_from_any_depth() {
        let dir = std::env::temp_dir().join(format!("looper-git-{}", std::process::id()));
        let deep = dir.join("repo/src/deep");
        std::fs::create_dir_all(&deep).unwrap();
        assert!(!inside_git_work_tree(&deep), "no .git yet");
        std::fs::create_dir_all(dir.join("repo/.git")).unwrap();
        assert!(
            !inside_git_work_tree(&deep),
            "a .git without HEAD is no repository"
        );
        std::fs::write(dir.join("repo/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        assert!(inside_git_work_tree(&deep));
        assert!(inside_git_work_tree(&dir.join("repo")));
        assert!(!inside_git_work_tree(&dir));
        std::fs::create_dir_all(dir.join("wt")).unwrap();
        std::fs::write(
            dir.join("wt/.git"),
            "gitdir: /elsewhere/.git/worktrees/wt\n",
        )
        .unwrap();
        assert!(inside_git_work_tree(&dir.join("wt")));
        assert!(!inside_git_work_tree(&dir.join("missing")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shortstat_reads_as_git_prints_it() {
        assert_eq!(
            parse_shortstat(" 3 files changed, 10 insertions(+), 2 deletions(-)"),
            (3, 10, 2)
        );
        assert_eq!(parse_shortstat(" 1 file changed, 1 deletion(-)"), (1, 0, 1));
        assert_eq!(parse_shortstat(""), (0, 0, 0));
    }

    #[test]
    fn the_index_listing_reads_paths_with_any_byte() {
        let out = b"100644 45b983be36b73c0788dc9cbcb76cbb80fc7bb057 0\ta\n  ctime: 1:2\0  ctime: 17:5\n  mtime: 1796285909:508518201\n  dev: 65024\tino: 1\n  uid: 0\tgid: 0\n  size: 3\tflags: 0\n120000 45b983be36b73c0788dc9cbcb76cbb80fc7bb057 2\tl\0  mtime: 4:0\n  size: 1\tflags: 0\n";
        let entries = parse_index(out).expect("parsed");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].path, b"a\n  ctime: 1:2");
        assert_eq!(
            (
                entries[0].mode,
                entries[0].stage,
                entries[0].mtime,
                entries[0].size
            ),
            (0o100644, 0, (1796285909, 508518201), 3)
        );
        assert_eq!(
            (entries[1].mode, entries[1].stage, entries[1].mtime),
            (SYMLINK, 2, (4, 0))
        );
        assert_eq!(parse_index(b""), Some(Vec::new()));
        assert_eq!(parse_index(b"100644 x 0\ta"), None);
    }
}
