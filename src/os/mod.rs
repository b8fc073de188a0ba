//! What Looper asks of the operating system, behind safe functions: raw calls, processes
//! and their signals, sockets, cgroups, the helpers' jail, paths and files that others may
//! have planted, the server log, and text shown to a terminal. Nothing here knows a run.

pub(crate) mod cgroup;
pub(crate) mod freshness;
pub(crate) mod jail;
pub(crate) mod logging;
pub(crate) mod paths;
pub(crate) mod procs;
pub(crate) mod seccomp;
pub(crate) mod shutdown;
pub(crate) mod signals;
pub(crate) mod sockets;
pub(crate) mod sys;
pub(crate) mod tokens;
pub(crate) mod visible;
