//! The cgroups of runs, from a run's spawn until they are empty and removed (a run that
//! exited may leave an escaped process in its group: the next stop ends it).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
/// A run's cgroup.
#[derive(Debug, Clone)]
pub struct Group {
    pub run_id: String,
    pub workspace: PathBuf,
    pub path: PathBuf,
}

/// The cgroups of runs that still exist.
#[derive(Default)]
pub struct Groups(Mutex<Vec<Group>>);

impl Groups {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Group>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the cgroup of a run.
    pub fn add(&self, group: Group) {
        self.list().push(group);
    }

    pub fn all(&self) -> Vec<Group> {
        self.list().clone()
    }

    /// Removes the cgroup at `path` when it is empty (`kill`: ends what is in it first);
    /// whether it is gone.
    pub fn release(&self, path: &Path, kill: bool) -> bool {
        let gone = if kill {
            crate::os::cgroup::kill_and_remove(path)
        } else {
            crate::os::cgroup::remove(path)
        };
        if gone {
            self.list().retain(|g| g.path != path);
        }
        gone
    }

    /// For every cgroup, the pids in it, with the run it belongs to.
    pub fn members(&self) -> Vec<(String, Vec<i32>)> {
        self.all()
            .into_iter()
            .map(|g| (g.run_id.clone(), crate::os::cgroup::members(&g.path)))
            .collect()
    }
}
