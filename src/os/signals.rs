//! Signals that reach the right process and no other: a handle on each process (a pidfd
//! where the kernel has them, else its start time re-checked), one stop in progress
//! (SIGTERM, wait, SIGKILL what is left), and how a child starts (its own session, every
//! signal at its default). The `/proc` reading behind them is [`crate::os::procs`]'s.

use std::collections::HashSet;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::os::logging::Q;
use crate::os::procs::{is_alive, read_stat, ProcInfo};

/// How often we look again when the kernel cannot tell us about exits (no pidfd).
const STOP_POLL: Duration = Duration::from_millis(10);
/// How long survivors of SIGKILL get to disappear before we report them as remaining.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The outcome of one stop.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StopReport {
    /// Processes that were signalled and are gone.
    pub killed: Vec<i32>,
    /// Processes still alive after SIGKILL (or that we were not allowed to signal).
    pub remaining: Vec<i32>,
}

/// A handle on one target process that cannot be confused with a later one of the same pid.
struct Target {
    pid: i32,
    /// Its start time, re-checked before a signal when there is no pidfd.
    start_time: u64,
    /// A pidfd when the kernel has them (Linux 5.3+): it signals the right process and
    /// becomes readable when the process exits.
    fd: Option<OwnedFd>,
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; we own
    // the descriptor it returns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

impl Target {
    fn signal(&self, sig: i32) -> bool {
        let rc = match &self.fd {
            // SAFETY: a valid pidfd, a null siginfo and no flags, as pidfd_send_signal(2) allows.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            // Without a pidfd the pid is checked again right before the signal.
            None if read_stat(self.pid).map(|(_, start)| start) != Some(self.start_time) => {
                return false
            }
            // SAFETY: kill(2) with a pid we just verified by its start time.
            None => i64::from(unsafe { libc::kill(self.pid, sig) }),
        };
        rc == 0
    }

    fn exited(&self) -> bool {
        match &self.fd {
            Some(fd) => crate::os::sys::poll_readable(&[fd.as_raw_fd()], Duration::ZERO)[0],
            None => !is_alive(self.pid),
        }
    }
}

/// Waits until every target has exited or `limit` passes; returns the survivors.
fn wait_exits<'a>(targets: &[&'a Target], limit: Duration) -> Vec<&'a Target> {
    let deadline = Instant::now() + limit;
    let mut left = targets.to_vec();
    loop {
        left.retain(|t| !t.exited());
        let now = Instant::now();
        if left.is_empty() || now >= deadline {
            return left;
        }
        let fds: Vec<i32> = left
            .iter()
            .filter_map(|t| t.fd.as_ref().map(|f| f.as_raw_fd()))
            .collect();
        let wait = deadline - now;
        if fds.len() == left.len() {
            // Every target has a pidfd: sleep until one of them exits.
            crate::os::sys::poll_readable(&fds, wait);
        } else {
            std::thread::sleep(wait.min(STOP_POLL));
        }
    }
}

/// How long a stop waits for its signalled processes before it looks into `/proc` again for
/// processes of the same runs started meanwhile (a trap that spawns, a tool that forks as it
/// dies).
pub const RESCAN_EVERY: Duration = Duration::from_millis(100);

/// One stop in progress: the processes it has signalled, each by a handle that cannot be
/// confused with a later process of the same pid.
#[derive(Default)]
pub struct Stop {
    targets: Vec<Target>,
    /// Processes the kernel would not let us signal.
    denied: Vec<i32>,
}

impl Stop {
    /// Sends SIGTERM to each of `procs` not signalled yet. All of them are pinned first (a
    /// pidfd, and the start time checked: one gone, a zombie, or another process now is
    /// left out), then signalled, so that a process that dies because its parent was just
    /// signalled still counts as stopped by this stop. Returns how many were taken.
    pub fn terminate(&mut self, procs: &[ProcInfo]) -> usize {
        let pinned: Vec<(Target, &ProcInfo)> = procs
            .iter()
            .filter(|p| !self.covers(p))
            .filter_map(|p| {
                let fd = pidfd_open(p.pid);
                (read_stat(p.pid).map(|(_, start)| start) == Some(p.start_time)).then(|| {
                    let t = Target {
                        pid: p.pid,
                        start_time: p.start_time,
                        fd,
                    };
                    (t, p)
                })
            })
            .collect();
        let mut taken = 0;
        for (t, p) in pinned {
            if t.signal(libc::SIGTERM) || t.exited() {
                let argv0 = p.argv.first().map(String::as_str).unwrap_or("?");
                log::debug!("process.kill.term pid={} argv0={}", p.pid, Q(argv0));
                self.targets.push(t);
                taken += 1;
            } else {
                log::warn!("process.kill.denied pid={}", p.pid);
                self.denied.push(p.pid);
            }
        }
        taken
    }

    /// Whether `p` was signalled by this stop already, or cannot be.
    pub fn covers(&self, p: &ProcInfo) -> bool {
        self.denied.contains(&p.pid)
            || self
                .targets
                .iter()
                .any(|t| t.pid == p.pid && t.start_time == p.start_time)
    }

    /// Waits up to `limit` for every signalled process to exit; whether they all have.
    pub fn wait(&self, limit: Duration) -> bool {
        let all: Vec<&Target> = self.targets.iter().collect();
        wait_exits(&all, limit).is_empty()
    }

    /// SIGKILLs the signalled processes still alive, waits for them a little, and says what
    /// became of every process this stop signalled: `killed` holds those signalled and gone,
    /// `remaining` those still alive (or never signalled: denied).
    pub fn finish(self) -> StopReport {
        let all: Vec<&Target> = self.targets.iter().collect();
        let survivors = wait_exits(&all, Duration::ZERO);
        for t in &survivors {
            log::info!("process.kill.sigkill pid={} reason=survived_sigterm", t.pid);
            t.signal(libc::SIGKILL);
        }
        let remaining: HashSet<i32> = wait_exits(&survivors, KILL_WAIT)
            .iter()
            .map(|t| t.pid)
            .collect();
        let mut report = StopReport::default();
        for t in &self.targets {
            if remaining.contains(&t.pid) {
                report.remaining.push(t.pid);
            } else {
                report.killed.push(t.pid);
            }
        }
        report.remaining.extend(self.denied);
        report.killed.sort_unstable();
        report.killed.dedup();
        report.remaining.sort_unstable();
        report.remaining.dedup();
        report
    }
}

/// SIGKILLs `pid` and reaps it. The caller's promise (no memory safety hangs on it, only
/// whom the signal reaches): `pid` is a child this process spawned and nobody has reaped,
/// so it cannot name another process yet.
pub fn kill_and_reap_child(pid: u32) {
    let mut status = 0;
    // SAFETY: kill(2) and waitpid(2) take plain integers and, for waitpid, a pointer to an
    // int that lives on this stack for the call.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        libc::waitpid(pid as i32, &mut status, 0);
    }
}

/// Sends `sig` to the process group led by `pid`. The caller's promise, as for
/// [`kill_and_reap_child`]: `pid` is an unreaped child that leads its own group.
pub fn signal_child_group(pid: u32, sig: i32) {
    // SAFETY: killpg(2) takes plain integers and touches no memory of ours.
    unsafe { libc::killpg(pid as i32, sig) };
}

/// Makes the spawned program lead a session of its own (so that a terminal's or Looper's
/// signals to our group do not reach it), starting with every signal's default disposition
/// and an empty signal mask (see [`reset_signals`]); with `cgroup_procs` (an open
/// `cgroup.procs` of the run's cgroup) it joins that cgroup before exec, so that everything
/// it starts stays in it.
pub fn detach_on_spawn(cmd: &mut std::process::Command, cgroup_procs: Option<i32>) {
    use std::os::unix::process::CommandExt;
    let last = libc::SIGRTMAX();
    // SAFETY: the closure runs in the forked child before exec and only calls setsid(2),
    // `reset_signals` (whose calls are async-signal-safe) and write(2) on a descriptor the
    // parent keeps open until the spawn returns, all async-signal-safe; it reads no memory
    // of the parent but its captured integers.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            reset_signals(last);
            if let Some(fd) = cgroup_procs {
                // "0": the writing process itself. A failure leaves the run to the /proc
                // method of stopping, which always applies too.
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            Ok(())
        });
    }
}

/// Makes the spawned program start with every signal's default disposition and an empty
/// signal mask (see [`reset_signals`]).
pub fn default_signals_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let last = libc::SIGRTMAX();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // `reset_signals`, whose calls are async-signal-safe; it captures an integer only.
    unsafe {
        cmd.pre_exec(move || {
            reset_signals(last);
            Ok(())
        });
    }
}

/// In a forked child before exec: every signal up to `last` back to its default
/// disposition, and nothing blocked. A handler goes at exec by itself, but an ignored
/// signal and the mask are inherited: Looper started under `nohup` would pass SIGHUP on as
/// ignored, and its own ignored SIGXFSZ would let a run write past a file-size limit.
///
/// # Safety
/// Only in a child between fork and exec: it changes the signal handling of the whole
/// process.
unsafe fn reset_signals(last: i32) {
    // A zeroed kernel `sigaction` is SIG_DFL with no flags and an empty mask, whatever the
    // architecture's field order. The raw call, because the C library refuses the two
    // real-time signals it keeps for itself, which can be inherited as ignored too; the
    // kernel refuses only SIGKILL and SIGSTOP, which cannot be ignored.
    let default = [0 as libc::c_ulong; 4];
    for sig in 1..=last {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            default.as_ptr(),
            std::ptr::null_mut::<libc::c_void>(),
            // The kernel's signal set: a bit a signal.
            (last as usize).div_ceil(8),
        );
    }
    let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    libc::sigemptyset(empty.as_mut_ptr());
    libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
}

/// SIGKILLs `pid`, read from a cgroup of one of our runs, if it is still in that cgroup
/// (`group`, the cgroup's directory name) once pinned by a pidfd: a pid reused meanwhile is
/// left alone.
pub fn kill_member(pid: i32, group: &str) {
    let Some(fd) = pidfd_open(pid) else {
        return;
    };
    let inside = fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| {
        c.lines()
            .any(|l| l.starts_with("0::") && l.trim_end().ends_with(&format!("/{group}")))
    });
    if inside {
        let t = Target {
            pid,
            start_time: 0,
            fd: Some(fd),
        };
        t.signal(libc::SIGKILL);
    }
}

/// Ignores SIGXFSZ, so that a full file-size limit makes writes fail with an error we log
/// instead of killing the server.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// One process Looper started, held by a pidfd opened while it was still an unreaped child
/// (so it names that process and no later one with its pid): signalled and waited on
/// through it.
pub struct Process(Target);

impl Process {
    /// `pid`: a child of ours not reaped yet; `start_time`: its start (for kernels without
    /// pidfds, where the pid is checked again before each signal).
    pub fn of_child(pid: u32, start_time: Option<u64>) -> Process {
        Process(Target {
            pid: pid as i32,
            start_time: start_time.unwrap_or(0),
            fd: pidfd_open(pid as i32),
        })
    }

    /// A process an earlier Looper started (not our child): pinned by a pidfd, then checked
    /// to be the process that started at `start_time` (so a later holder of the pid is never
    /// taken for it). `None`: it is gone, or the pid is another's now.
    pub fn adopt(pid: u32, start_time: u64) -> Option<Process> {
        let fd = pidfd_open(pid as i32)?;
        (read_stat(pid as i32).map(|(_, start)| start) == Some(start_time)).then(|| {
            Process(Target {
                pid: pid as i32,
                start_time,
                fd: Some(fd),
            })
        })
    }

    /// Sends `sig`; false when the process is gone (or cannot be told apart from another).
    pub fn signal(&self, sig: i32) -> bool {
        self.0.signal(sig)
    }
}

/// A process to wait for, opened once (a pidfd where the kernel has them) and waited on as
/// often as needed. It is never signalled.
pub struct Waiter(Target);

impl Waiter {
    pub fn new(pid: i32) -> Waiter {
        Waiter(Target {
            pid,
            start_time: 0,
            fd: pidfd_open(pid),
        })
    }

    /// Waits up to `limit` for the process to exit; true when it has.
    pub fn wait(&self, limit: Duration) -> bool {
        wait_exits(&[&self.0], limit).is_empty()
    }

    /// Waits up to `limit` for the process to exit or for `also` to become readable; true
    /// when it exited. Without a pidfd it waits at most 50 ms, so that `also` is not missed
    /// for long.
    pub fn wait_or(&self, limit: Duration, also: std::os::fd::RawFd) -> bool {
        match &self.0.fd {
            Some(fd) => crate::os::sys::poll_readable(&[fd.as_raw_fd(), also], limit)[0],
            None => self.wait(limit.min(Duration::from_millis(50))),
        }
    }
}

/// Waits up to `limit` for `pid` (not necessarily our child) to exit; true when it has.
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    Waiter::new(pid).wait(limit)
}

/// The helpers running now (each the leader of a process group of its own, unreaped), so
/// that shutdown ends them; and whether shutdown did (no helper starts after it).
static HELPERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static HELPERS_CLOSED: AtomicBool = AtomicBool::new(false);

fn lock_helpers() -> std::sync::MutexGuard<'static, Vec<u32>> {
    HELPERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// At shutdown: kills every helper's process group (a git blocked on a FIFO, a Zulip script
/// that hangs) and lets no new helper start. Their callers see them time out.
pub fn end_helpers() {
    HELPERS_CLOSED.store(true, Ordering::Release);
    let running = lock_helpers();
    for pid in running.iter() {
        log::info!("helper.killed pid={pid} reason=shutdown");
        signal_child_group(*pid, libc::SIGKILL);
    }
}

/// How a helper program ([`run_bounded`]) ended.
pub enum Bounded {
    /// It exited: its status and what it printed (at most the limit asked for).
    Exited(std::process::ExitStatus, Vec<u8>),
    /// It outlived the time given and was killed with its process group.
    TimedOut,
}

/// Why a helper program could not start: no pipe for its output, or no process.
pub enum NotStarted {
    Pipe(std::io::Error),
    Spawn(std::io::Error),
}

/// Runs a short-lived helper (the Zulip script, git) in a process group of its own, with
/// every signal at its default and no input; its stdout (and, with `with_stderr`, its stderr
/// too) is read up to `max_output` bytes and the rest drained, so that it never blocks on a
/// full pipe. It gets `limit` to exit, then it and its group are killed; a descendant left
/// holding the pipe is waited for `output_wait` at most.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    with_stderr: bool,
    limit: Duration,
    output_wait: Duration,
    max_output: u64,
) -> Result<Bounded, NotStarted> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let (mut reader, writer) = std::io::pipe().map_err(NotStarted::Pipe)?;
    let stderr = if with_stderr {
        Stdio::from(writer.try_clone().map_err(NotStarted::Pipe)?)
    } else {
        Stdio::null()
    };
    cmd.stdin(Stdio::null())
        .stdout(writer)
        .stderr(stderr)
        .process_group(0);
    default_signals_on_spawn(cmd);
    if HELPERS_CLOSED.load(Ordering::Acquire) {
        return Err(NotStarted::Spawn(std::io::Error::other(
            "Looper is shutting down",
        )));
    }
    let spawned = cmd.spawn();
    // The Command holds the pipe's write ends: replace them so that we see end-of-file.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned.map_err(NotStarted::Spawn)?;
    let pid = child.id();
    {
        let mut running = lock_helpers();
        running.push(pid);
        if HELPERS_CLOSED.load(Ordering::Acquire) {
            // Shutdown looked before this one was listed.
            signal_child_group(pid, libc::SIGKILL);
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut reader).take(max_output).read_to_end(&mut out);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        let _ = tx.send(out);
    });
    // The child is reaped here and only here, after the wait: until then its pid (and
    // process group) cannot belong to anyone else, so the kill hits only the helper's group.
    let exited = wait_gone(pid as i32, limit);
    {
        // Unlisted before it is reaped: whoever kills the listed groups kills only ours.
        let mut running = lock_helpers();
        running.retain(|p| *p != pid);
        if !exited {
            signal_child_group(pid, libc::SIGKILL);
        }
    }
    if !exited {
        let _ = child.wait();
        return Ok(Bounded::TimedOut);
    }
    let status = child.wait().map_err(NotStarted::Spawn)?;
    Ok(Bounded::Exited(
        status,
        rx.recv_timeout(output_wait).unwrap_or_default(),
    ))
}
