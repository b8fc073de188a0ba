//! The jail of the programs Looper runs on the agent's data (today: git, on the repository
//! the agent writes). The agent controls `.git/config`, and git's configuration can name
//! programs to run (a partial clone's lazy fetch runs `remote.<name>.uploadpack` through
//! `sh -c`, `core.sshCommand`, `credential.helper`, `core.askPass`, …) and files to open
//! (`include.path` to a FIFO blocks it). So git is:
//!
//! - found once, at start, as an absolute path from `PATH` entries that are absolute and
//!   outside every workspace known then, and never used on a workspace it lies inside;
//! - run with an environment and command-line settings that switch off every fetch and
//!   every helper git could call;
//! - where the kernel has Landlock, run inside a domain that reads anything, writes
//!   nothing, executes only git's own binaries (and the loader they need), connects and
//!   binds no TCP port, and signals or reaches no abstract socket outside itself;
//! - unable to start another process or open a socket (a seccomp filter,
//!   [`crate::os::seccomp`]), with at most 1 GiB to allocate;
//! - bounded: its process group is killed at its deadline and at Looper's shutdown
//!   ([`crate::os::signals::run_bounded`]).
//!
//! `server.start` and `/status` say which protection is in force (`helper_jail`).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, AccessNet, PathBeneath, PathFd, RestrictionStatus, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::os::logging::Q;

/// The protection Looper's helpers run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Landlock (with the kernel's ABI version) and the environment below.
    Landlock(i32),
    /// The environment and settings only: the kernel has no (usable) Landlock.
    Environment,
}

impl Method {
    /// `landlock` or `environment`, as `server.start` and `/status` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Landlock(_) => "landlock",
            Method::Environment => "environment",
        }
    }
}

/// git as Looper runs it: where it is, and what its jail lets it execute.
#[derive(Debug, Clone)]
pub struct Git {
    /// The binary, absolute and with every link resolved.
    pub path: PathBuf,
    /// The ELF interpreter of the binary (the dynamic loader), which `exec` opens too.
    interpreter: Option<PathBuf>,
}

/// The helpers of one server, found at start.
#[derive(Debug, Clone)]
pub struct Helpers {
    pub git: Option<Git>,
    /// `node`, for a Zulip script written in JavaScript (the operator's, not jailed).
    pub node: Option<PathBuf>,
    pub method: Method,
}

static HELPERS: OnceLock<Helpers> = OnceLock::new();

/// The helpers as found at start; `None` before [`install`] (the command line, unit tests):
/// no git is run then.
pub fn helpers() -> Option<&'static Helpers> {
    HELPERS.get()
}

/// Makes `helpers` the process's helpers (once; later calls change nothing).
pub fn install(helpers: Helpers) -> &'static Helpers {
    HELPERS.get_or_init(|| helpers)
}

/// How much lower git's CPU priority is than Looper's.
const HELPER_NICE: libc::c_int = 10;

/// The settings that switch off whatever git's configuration could make it fetch or call:
/// given on the command line, they win over every configuration file.
const SETTINGS: [&str; 8] = [
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "diff.external=",
    "core.askPass=",
    // An empty value empties the list of helpers read before it.
    "credential.helper=",
    "protocol.allow=never",
    "core.alternateRefsCommand=",
    // Blobs past this are taken as binary, never loaded whole to be compared.
    "core.bigFileThreshold=16m",
];

/// The environment git runs with (nothing else of Looper's): no system or global
/// configuration, no lazy fetch of a partial clone's missing objects, no protocol at all,
/// no prompt, no replacement objects.
const ENVIRONMENT: [(&str, &str); 10] = [
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_ATTR_NOSYSTEM", "1"),
    ("GIT_OPTIONAL_LOCKS", "0"),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("GIT_NO_LAZY_FETCH", "1"),
    ("GIT_ALLOW_PROTOCOL", "none"),
    ("GIT_PROTOCOL_FROM_USER", "0"),
    ("GIT_NO_REPLACE_OBJECTS", "1"),
    ("LC_ALL", "C"),
];

/// Whether `p` lies inside `dir`, both as they really are.
fn inside(p: &Path, dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    p.canonicalize().is_ok_and(|p| p.starts_with(dir))
}

impl Helpers {
    /// Finds git and node on `path_var` (absolute entries outside every one of
    /// `workspaces`), and chooses git's jail: Landlock where the kernel's ABI bars files and
    /// TCP (4 or later), git is an ELF program (a script would need a shell) and the ruleset
    /// can be built. Runs no process: start-up stays quick.
    pub fn find(path_var: Option<&str>, workspaces: &[PathBuf]) -> Helpers {
        let find = |name: &str| {
            let dirs = path_var?.split(':').filter(|d| d.starts_with('/'));
            dirs.map(|d| Path::new(d).join(name))
                .filter(|p| !workspaces.iter().any(|w| inside(p, w)))
                .find(|p| crate::os::paths::is_executable_file(p))
                .and_then(|p| p.canonicalize().ok())
        };
        let node = find("node");
        let Some(path) = find("git") else {
            return Helpers {
                git: None,
                node,
                method: Method::Environment,
            };
        };
        let (method, git) = match elf_interpreter(&path) {
            // A script (a wrapper around git) needs a shell the jail would not let it run.
            None => (
                Err("git is not an ELF program (a script?)".to_string()),
                Git {
                    path,
                    interpreter: None,
                },
            ),
            Some(interpreter) => {
                let git = Git { path, interpreter };
                let method = match crate::os::sys::landlock_abi() {
                    Some(abi) if abi >= 4 => git.ruleset().map(|_| Method::Landlock(abi)),
                    Some(abi) => Err(format!("the kernel's Landlock ABI {abi} cannot bar TCP")),
                    None => Err("the kernel has no Landlock".to_string()),
                };
                (method, git)
            }
        };
        let method = method.unwrap_or_else(|why| {
            log::warn!(
                "helper_jail.unavailable reason={} hint=\"git runs with its environment and settings locked down only\"",
                Q(&why)
            );
            Method::Environment
        });
        Helpers {
            git: Some(git),
            node,
            method,
        }
    }

    /// A command for git on `workspace` (its `-C`), jailed; `None` when there is no git, or
    /// when the one found lies inside `workspace` (the agent's to rewrite).
    pub fn git(&self, workspace: &Path) -> Option<Command> {
        let git = self.git.as_ref()?;
        if inside(&git.path, workspace) {
            log::warn!(
                "git.refused path={} workspace={} hint=\"the git found at start lies inside this workspace: its fields stay empty\"",
                Q(&git.path.to_string_lossy()),
                Q(&workspace.to_string_lossy())
            );
            return None;
        }
        let mut cmd = git.command(self.method);
        cmd.arg("-C").arg(workspace).arg("--no-pager");
        Some(cmd)
    }
}

impl Git {
    /// `git`, with the environment and settings above, in its jail for `method`.
    fn command(&self, method: Method) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear().envs(ENVIRONMENT);
        if let Some(dir) = self.path.parent() {
            cmd.env("PATH", dir);
        }
        for setting in SETTINGS {
            cmd.arg("-c").arg(setting);
        }
        // Background work: it yields the CPU to Looper's answers and to the runs.
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setpriority(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpriority(libc::PRIO_PROCESS, 0, HELPER_NICE);
                Ok(())
            });
        }
        if let Method::Landlock(_) = method {
            match self.ruleset() {
                Ok(ruleset) => confine_on_spawn(&mut cmd, ruleset),
                // The spawn fails (its fields stay empty) rather than run git unjailed.
                Err(e) => refuse_on_spawn(&mut cmd, e),
            }
        }
        limit_on_spawn(&mut cmd);
        cmd
    }

    /// The Landlock ruleset: read anything; execute (and read) git and its loader only (the
    /// commands Looper asks are git's builtins); write `/dev/null` only; nothing else of the file system (no write, no new
    /// file, no link, no device ioctl), no TCP port to bind or connect, no signal or
    /// abstract socket outside.
    fn ruleset(&self) -> Result<RulesetCreated, String> {
        self.build_ruleset().map_err(|e| e.to_string())
    }

    fn build_ruleset(&self) -> Result<RulesetCreated, Box<dyn std::error::Error>> {
        let abi = ABI::V6;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .handle_access(AccessNet::from_all(abi))?
            .scope(Scope::from_all(abi))?
            .create()?
            .add_rule(PathBeneath::new(
                PathFd::new("/")?,
                AccessFs::ReadFile | AccessFs::ReadDir,
            ))?;
        // git opens /dev/null for reading and writing at every start; writes vanish there.
        ruleset = ruleset.add_rule(PathBeneath::new(
            PathFd::new("/dev/null")?,
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?;
        let own = [Some(&self.path), self.interpreter.as_ref()];
        for path in own.into_iter().flatten() {
            ruleset = ruleset.add_rule(PathBeneath::new(
                PathFd::new(path)?,
                AccessFs::Execute | AccessFs::ReadFile,
            ))?;
        }
        Ok(ruleset)
    }
}

/// Makes the spawned program enter `ruleset`'s Landlock domain right before exec (and
/// `no_new_privs`); a domain the kernel did not enforce fails the spawn.
fn confine_on_spawn(cmd: &mut Command, ruleset: RulesetCreated) {
    let mut ruleset = Some(ruleset);
    // SAFETY: the closure runs in the forked child before exec. It calls prctl(2) and
    // landlock_restrict_self(2) through the crate on a ruleset built in the parent (no
    // allocation on the way, the status returned is plain data), and reads only what it
    // owns.
    unsafe {
        cmd.pre_exec(move || {
            let Some(ruleset) = ruleset.take() else {
                return Err(std::io::Error::other("the jail was used twice"));
            };
            match ruleset.restrict_self() {
                Ok(RestrictionStatus {
                    ruleset: RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced,
                    ..
                }) => Ok(()),
                Ok(_) => Err(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                Err(_) => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
            }
        });
    }
}

/// The most memory a helper may allocate (its heap and private writable mappings): a
/// configuration that makes git load huge blobs whole costs that helper its fields, not
/// the machine its memory.
const HELPER_DATA_LIMIT: libc::rlim_t = 1 << 30;

/// Makes the spawned program start no process and open no socket ([`crate::os::seccomp`]),
/// and allocate at most [`HELPER_DATA_LIMIT`].
fn limit_on_spawn(cmd: &mut Command) {
    let filter = crate::os::seccomp::filter();
    // SAFETY: the closure runs in the forked child before exec; it calls setrlimit(2) with
    // a value on its stack and enters a filter built in the parent (prctl(2) only): all
    // async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: HELPER_DATA_LIMIT,
                rlim_max: HELPER_DATA_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            match &filter {
                Some(f) => f.enter(),
                None => Ok(()),
            }
        });
    }
}

/// Makes the spawn fail: the jail could not be built.
fn refuse_on_spawn(cmd: &mut Command, why: String) {
    log::warn!("helper_jail.build_failed error={}", Q(&why));
    // SAFETY: the closure runs in the forked child before exec and only returns an error.
    unsafe {
        cmd.pre_exec(|| Err(std::io::Error::from_raw_os_error(libc::EPERM)));
    }
}

/// Whether `path` is a 64-bit ELF program, and if so its `PT_INTERP`: the loader that
/// `exec` opens with it (`Some(None)`: a static program).
fn elf_interpreter(path: &Path) -> Option<Option<PathBuf>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head).ok()?;
    // `\x7fELF`, 64-bit, little-endian.
    if head[..4] != *b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u64_at = |b: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (phoff, entsize, count) = (
        u64_at(&head, 0x20),
        u16_at(&head, 0x36),
        u16_at(&head, 0x38),
    );
    if entsize < 56 || count > 256 {
        return None;
    }
    for i in 0..u64::from(count) {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * u64::from(entsize)))
            .ok()?;
        f.read_exact(&mut ph).ok()?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) != PT_INTERP {
            continue;
        }
        let (offset, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
        if size == 0 || size > 4096 {
            return None;
        }
        let mut name = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(offset)).ok()?;
        f.read_exact(&mut name).ok()?;
        let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
        use std::os::unix::ffi::OsStrExt;
        let interp = PathBuf::from(OsStr::from_bytes(&name[..end]));
        return interp.canonicalize().ok().map(Some);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_of_a_dynamic_binary_is_found() {
        // Whatever runs the tests is an ELF program of this machine.
        let me = std::env::current_exe().unwrap();
        match elf_interpreter(&me) {
            Some(Some(interp)) => assert!(interp.is_absolute() && interp.is_file(), "{interp:?}"),
            Some(None) => {} // a static build (musl)
            None => panic!("the test binary is no ELF program"),
        }
        assert_eq!(elf_interpreter(Path::new("/nonexistent")), None);
        assert_eq!(elf_interpreter(Path::new("/etc/hostname")), None);
    }
}
