//! A cgroup (v2) per run, where Looper may make one: a process that leaves the run's
//! session, process group and environment (`setsid env -i sh -c '...' &`) stays in the
//! run's cgroup, and a stop ends the whole cgroup. Elsewhere (no cgroup v2 mount, or no
//! right to make groups: a user unit without `Delegate=yes`) stops keep to `/proc`, and
//! `/status` says which method is in force.
//!
//! Layout: `<Looper's own cgroup>/looper-<pid>/run-<run id>`, found from
//! `/proc/self/mountinfo` (the `cgroup2` mount, wherever it is: `/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on a hybrid hierarchy) and `/proc/self/cgroup` (`0::<path>`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a killed cgroup gets to empty before it is left for the next stop.
const EMPTY_WAIT: Duration = Duration::from_secs(2);
const EMPTY_POLL: Duration = Duration::from_millis(10);

/// The mount point of the cgroup v2 hierarchy, from the text of `/proc/self/mountinfo`.
pub fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes spaces and the like as `\ooo` (octal).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's cgroup v2 path, from the text of `/proc/self/cgroup` (`0::/a/b`).
pub fn own_path(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
}

/// The cgroups of this Looper's runs.
#[derive(Debug)]
pub struct Cgroups {
    /// `<own cgroup>/looper-<pid>`: every run's group lives below it.
    base: PathBuf,
}

impl Cgroups {
    /// Makes this Looper's cgroup; `Err` says why runs cannot have cgroups here (then the
    /// `/proc` method is all there is). Empty groups a killed Looper left are removed.
    pub fn setup() -> Result<Cgroups, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = v2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let own = own_path(&cgroup).ok_or("this process has no cgroup v2 path")?;
        let parent = mount.join(own.trim_start_matches('/'));
        remove_stale(&parent);
        let base = parent.join(format!("looper-{}", std::process::id()));
        std::fs::create_dir(&base)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        // Proves that processes may be moved there: write access to cgroup.procs.
        OpenOptions::new()
            .write(true)
            .open(base.join("cgroup.procs"))
            .map_err(|e| {
                let _ = std::fs::remove_dir(&base);
                format!("cannot move processes into {}: {e}", base.display())
            })?;
        Ok(Cgroups { base })
    }

    /// Makes the cgroup of run `run_id`.
    pub fn create(&self, run_id: &str) -> io::Result<RunGroup> {
        let path = self.base.join(format!("run-{run_id}"));
        std::fs::create_dir(&path)?;
        let procs = OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir(&path);
            })?;
        Ok(RunGroup { path, procs })
    }

    /// Removes this Looper's cgroup (at shutdown; it fails while any group is populated).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Empty groups of Loopers that are gone (killed before they could clean up).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("looper-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if crate::os::procs::is_alive(pid) {
            continue;
        }
        if let Ok(runs) = std::fs::read_dir(e.path()) {
            for run in runs.flatten().filter(|r| r.path().is_dir()) {
                let _ = std::fs::remove_dir(run.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// A run's cgroup while it is being spawned: the child joins it before it execs.
pub struct RunGroup {
    pub path: PathBuf,
    procs: File,
}

impl RunGroup {
    /// The open `cgroup.procs` the child writes `0` to (itself) before exec.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }
}

/// The pids in the cgroup at `path` (none when it is gone).
pub fn members(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether anything still lives in the cgroup at `path`.
pub fn populated(path: &Path) -> bool {
    match std::fs::read_to_string(path.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => !members(path).is_empty(),
    }
}

/// Ends everything in the cgroup at `path` (`cgroup.kill`, Linux 5.14+; else SIGKILL to
/// each member, over and over until none is left), waits a little for it to empty, and
/// removes it. Whether it is gone.
pub fn kill_and_remove(path: &Path) -> bool {
    if !path.exists() {
        return true;
    }
    let killed = OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"))
        .is_ok();
    let deadline = Instant::now() + EMPTY_WAIT;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    while populated(path) && Instant::now() < deadline {
        if !killed {
            for pid in members(path) {
                crate::os::signals::kill_member(pid, &name);
            }
        }
        std::thread::sleep(EMPTY_POLL);
    }
    remove(path)
}

/// Removes the cgroup at `path` when it is empty; whether it is gone.
pub fn remove(path: &Path) -> bool {
    std::fs::remove_dir(path).is_ok() || !path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_mount_and_own_path_are_read_from_proc() {
        let hybrid = "25 30 0:21 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(
            v2_mount("31 1 0:27 / /mnt/my\\040groups rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/mnt/my groups"))
        );
        assert_eq!(
            v2_mount("25 30 0:21 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        assert_eq!(
            own_path("4:memory:/x\n0::/user.slice/looper.service\n").as_deref(),
            Some("/user.slice/looper.service")
        );
        assert_eq!(own_path("1:cpu:/\n"), None);
    }
}
