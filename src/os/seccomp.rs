//! A seccomp filter for the helpers' jail: the process that enters it starts no other
//! process and opens no socket. git's builtins that Looper asks need neither; without this,
//! a program git were made to run (its ELF loader can run any file it may read) could still
//! reach a UNIX socket or send UDP. Threads stay allowed (`clone` with `CLONE_THREAD`).
//!
//! On an architecture this filter does not know, it allows everything (said at start as
//! the jail's method, never silently stricter or looser than claimed).

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// `struct sock_fprog`.
#[repr(C)]
struct Program {
    len: u16,
    filter: *const Instruction,
}

const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Offsets into `struct seccomp_data`: the syscall number, the architecture, the low half
/// of the first argument (little-endian machines).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;

const CLONE_THREAD: u32 = 0x0001_0000;

/// The architecture's audit id, and the numbers of `clone`, `clone3` and the calls refused
/// outright (process creation, sockets).
struct Calls {
    arch: u32,
    clone: u32,
    clone3: u32,
    refused: &'static [u32],
}

#[cfg(target_arch = "x86_64")]
const CALLS: Option<Calls> = Some(Calls {
    arch: 0xC000_003E,
    clone: 56,
    clone3: 435,
    // fork, vfork, socket, socketpair.
    refused: &[57, 58, 41, 53],
});

#[cfg(target_arch = "aarch64")]
const CALLS: Option<Calls> = Some(Calls {
    arch: 0xC000_00B7,
    clone: 220,
    clone3: 435,
    // socket, socketpair (no fork or vfork there).
    refused: &[198, 199],
});

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const CALLS: Option<Calls> = None;

/// Whether this build has a filter for its architecture.
pub fn available() -> bool {
    CALLS.is_some()
}

const fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

/// The filter's instructions, built before the fork (no allocation after it).
pub struct Filter(Vec<Instruction>);

/// The filter for this architecture; `None` where there is none.
pub fn filter() -> Option<Filter> {
    let calls = CALLS.as_ref()?;
    let errno = |e: i32| RET_ERRNO | (e as u32 & 0xffff);
    let mut p = vec![
        stmt(LD_W_ABS, ARCH),
        // Another architecture's calls (a 32-bit one on this kernel): refused whole.
        jump(JEQ_K, calls.arch, 1, 0),
        stmt(RET_K, errno(libc::EPERM)),
        stmt(LD_W_ABS, NR),
    ];
    for nr in calls.refused {
        p.push(jump(JEQ_K, *nr, 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
    }
    // clone3 cannot be looked into: "not there", and the C library falls back to clone.
    p.push(jump(JEQ_K, calls.clone3, 0, 1));
    p.push(stmt(RET_K, errno(libc::ENOSYS)));
    // clone: a thread goes, a process does not.
    p.push(jump(JEQ_K, calls.clone, 0, 3));
    p.push(stmt(LD_W_ABS, ARG0_LOW));
    p.push(jump(JSET_K, CLONE_THREAD, 1, 0));
    p.push(stmt(RET_K, errno(libc::EPERM)));
    p.push(stmt(RET_K, RET_ALLOW));
    Some(Filter(p))
}

impl Filter {
    /// Enters the filter (with `no_new_privs`, which it needs). Only between fork and exec:
    /// it makes only async-signal-safe calls and reads the filter built before.
    ///
    /// # Safety
    /// Call only in a child between fork and exec (the filter binds the calling thread,
    /// and so the program it execs).
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        let prog = Program {
            len: self.0.len() as u16,
            filter: self.0.as_ptr(),
        };
        // SAFETY (both calls): prctl(2) with plain integers, and for the filter a pointer to
        // `prog`, which lives on this stack for the call and points at instructions this
        // process owns; the kernel copies the filter.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const Program,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Runs `program args` inside the filter; its exit status and output.
    fn filtered(program: &str, args: &[&str]) -> std::process::Output {
        let filter = filter().expect("a filter for this machine");
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        // SAFETY: the closure runs in the forked child before exec and only enters the
        // filter built above (prctl(2), async-signal-safe).
        unsafe {
            cmd.pre_exec(move || filter.enter());
        }
        cmd.output().expect("spawn")
    }

    /// Inside the filter a program runs, but starts no process and opens no socket.
    #[test]
    fn a_filtered_program_starts_nothing_and_opens_no_socket() {
        if !available() {
            return;
        }
        assert!(filtered("/bin/sh", &["-c", "exit 0"]).status.success());
        // A command that is no builtin needs a process of its own.
        let forked = filtered("/bin/sh", &["-c", "/bin/true"]);
        assert!(!forked.status.success(), "{forked:?}");
        let piped = filtered("/bin/sh", &["-c", "echo x | cat"]);
        assert!(!piped.status.success(), "{piped:?}");
        // A socket, from a program that makes one for a name it cannot resolve otherwise.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port().to_string();
        let bash = std::path::Path::new("/bin/bash");
        if bash.exists() {
            let tcp = filtered(
                "/bin/bash",
                &["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")],
            );
            assert!(!tcp.status.success(), "{tcp:?}");
        }
    }
}
