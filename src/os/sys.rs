//! Safe wrappers around the raw system calls outside process handling (which lives in
//! [`crate::os::procs`]): shutting sockets, making Looper undumpable, random bytes, waiting on
//! descriptors ([`poll_readable`], [`Inotify`], [`Bell`]), and [`Dir`], a directory held
//! open so that every later step inside it goes through the handle and never follows a link
//! someone placed there. Each `unsafe` block says why it is sound.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::time::Duration;

/// Takes the exclusive lock of the file at `path` (made mode 0600 if missing; a link is
/// not followed) without waiting, and writes this process's id into it where there is room:
/// `Ok(Err(text))` when another process holds it, with what that one wrote. A POSIX record
/// lock: this process's alone (a child forked to start a program does not inherit it, so a
/// Looper killed while starting one frees it at once), ended with the process however it
/// ends.
pub fn lock_file(path: &Path) -> io::Result<Result<File, String>> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // SAFETY: an all-zero flock is a valid value; the fields that matter are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl(F_SETLK) on a descriptor this function owns, with a pointer to a flock
    // that lives across the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &lock) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
            return Err(e);
        }
        let mut holder = String::new();
        let _ = (&mut f).take(64).read_to_string(&mut holder);
        return Ok(Err(holder.trim().to_string()));
    }
    // The holder's pid is a note for people; a full disk lets it go, not the lock.
    let _ = f
        .set_len(0)
        .and_then(|()| f.rewind())
        .and_then(|()| writeln!(f, "{}", std::process::id()));
    Ok(Ok(f))
}

/// Shuts both directions of socket `fd`: a blocked `accept` on a listening socket returns,
/// and reads and writes on a connection end. The caller keeps `fd` open meanwhile (so the
/// number cannot belong to anything else); a bad `fd` only makes the call fail.
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown(2) takes no memory from us; on a descriptor that is not a socket it
    // fails with ENOTSOCK and changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// The Landlock ABI version the kernel offers, `None` without Landlock (not built in, or
/// not enabled at boot).
pub fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, a zero size and the VERSION flag, the call only
    // returns the ABI version (or -1); it touches no memory of ours.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as i32)
}

/// Gives the memory the heap holds free back to the system (glibc keeps what a burst
/// freed: a long-lived Looper grew by about 1 KB a run). A no-op elsewhere.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim(3) only releases free heap memory; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Makes this process undumpable: no other process of the same user (only one with
/// `CAP_SYS_PTRACE`) may read its memory or `/proc/<pid>/environ`, which hold the token and
/// the Zulip key. Programs Looper starts are dumpable again (exec resets the flag).
pub fn make_undumpable() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and changes only this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fills `buf` from the kernel's random source.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into `rest`, which we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// `struct inet_diag_sockid` (linux/inet_diag.h): ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagSockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct nlmsghdr` followed by `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagRequest {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: DiagSockId,
}

/// `struct inet_diag_msg`, after the `nlmsghdr` of an answer.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMessage {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: DiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETLINK_SOCK_DIAG: i32 = 4;

/// The owner (uid) and inode of the TCP socket whose own address is `local` and whose peer
/// is `remote`, asked of the kernel through `NETLINK_SOCK_DIAG` for that one socket (no
/// listing of every socket). `None` when there is none, or the kernel will not say.
pub fn tcp_socket_owner(
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> Option<(u32, u64)> {
    use std::net::IpAddr;
    let octets = |ip: IpAddr| -> (u8, [u8; 16]) {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => {
                b[..4].copy_from_slice(&v4.octets());
                (libc::AF_INET as u8, b)
            }
            IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets()),
        }
    };
    let (family, src) = octets(local.ip());
    let (family_dst, dst) = octets(remote.ip());
    if family != family_dst {
        return None;
    }
    let request = DiagRequest {
        len: std::mem::size_of::<DiagRequest>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 0,
        pad: 0,
        states: u32::MAX,
        id: DiagSockId {
            sport: local.port().to_be(),
            dport: remote.port().to_be(),
            src,
            dst,
            interface: 0,
            cookie: [u32::MAX; 2],
        },
    };
    // SAFETY: socket(2) with constant arguments; the descriptor returned is ours alone.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns; dropping it closes it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A reply that never comes must not hold up a request.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a valid descriptor and a pointer to a timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: an all-zero sockaddr_nl is valid; the family is set below.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `request` and `kernel` are plain structs that live across the call, passed with
    // their sizes.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            (&request as *const DiagRequest).cast(),
            std::mem::size_of::<DiagRequest>(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return None;
    }
    let mut buf = [0u8; 8192];
    // SAFETY: recv(2) writes at most `buf.len()` bytes into our buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    let header = std::mem::size_of::<libc::nlmsghdr>();
    if n < (header + std::mem::size_of::<DiagMessage>()) as isize {
        return None;
    }
    let kind = u16::from_ne_bytes([buf[4], buf[5]]);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    // SAFETY: the buffer holds at least a header and a DiagMessage (checked above);
    // read_unaligned copies it out whatever the alignment, and every bit pattern is a valid
    // DiagMessage (integers only).
    let msg: DiagMessage =
        unsafe { std::ptr::read_unaligned(buf[header..].as_ptr().cast::<DiagMessage>()) };
    Some((msg.uid, u64::from(msg.inode)))
}

/// What one name in a directory is, read without following it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Entry {
    pub kind: Kind,
    pub uid: u32,
    pub nlink: u64,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// Last change of its contents, seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    File,
    Dir,
    Link,
    /// A FIFO, socket or device.
    Other,
}

fn entry_of(st: &libc::stat64) -> Entry {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Link,
        _ => Kind::Other,
    };
    Entry {
        kind,
        uid: st.st_uid,
        nlink: st.st_nlink,
        size: st.st_size as u64,
        dev: st.st_dev,
        ino: st.st_ino,
        mtime: (st.st_mtime, st.st_mtime_nsec),
    }
}

/// A name inside a directory: one path component, never `.`, `..` or anything with a `/`.
fn component(name: &OsStr) -> io::Result<CString> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain file name: {:?}", name),
        ));
    }
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A directory held open. Every operation names an entry inside it by one component and
/// never follows a symbolic link at that name, so a link swapped in by whoever else writes
/// there cannot redirect it; and the handle stays on the directory it opened even if that
/// is renamed away meanwhile.
#[derive(Debug)]
pub struct Dir(OwnedFd);

impl Dir {
    /// Opens `path` as a directory. Links in `path` itself are followed: the path comes from
    /// Looper's configuration, or was made canonical before.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid C string and flags; the descriptor returned is ours alone.
        let fd = check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The directory `name` inside this one, made with `mode` when missing and `create` is
    /// set. Refused when `name` is a link or anything but a directory, or is owned by
    /// another user than `uid`.
    pub fn subdir(&self, name: &str, create: Option<u32>, uid: u32) -> io::Result<Dir> {
        let c = component(OsStr::new(name))?;
        if let Some(mode) = create {
            // SAFETY: a valid descriptor and C string; mkdirat(2) creates no link to follow.
            let rc = unsafe { libc::mkdirat(self.fd(), c.as_ptr(), mode) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::AlreadyExists {
                    return Err(e);
                }
            }
        }
        // SAFETY: as above; O_NOFOLLOW makes a link at `name` fail with ELOOP.
        let fd = check(unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                io::Error::other(format!("{name} is a link or not a directory"))
            } else {
                e
            }
        })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let dir = Dir(unsafe { OwnedFd::from_raw_fd(fd) });
        let me = dir.stat_self()?;
        if me.uid != uid {
            return Err(io::Error::other(format!(
                "{name} belongs to user {}, not to Looper's user",
                me.uid
            )));
        }
        Ok(dir)
    }

    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// What this directory itself is.
    pub fn stat_self(&self) -> io::Result<Entry> {
        // SAFETY: `st` is written whole by a successful fstat64(2) before it is read.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a pointer to our own `st`.
        check(unsafe { libc::fstat64(self.fd(), &mut st) })?;
        Ok(entry_of(&st))
    }

    /// What `name` is, without following it.
    pub fn stat(&self, name: &OsStr) -> io::Result<Entry> {
        let c = component(name)?;
        // SAFETY: as in `stat_self`.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, C string and pointer; AT_SYMLINK_NOFOLLOW reads a
        // link itself.
        check(unsafe {
            libc::fstatat64(self.fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW)
        })?;
        Ok(entry_of(&st))
    }

    /// Sets this directory's permission bits.
    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: fchmod(2) on our own descriptor.
        check(unsafe { libc::fchmod(self.fd(), mode) }).map(|_| ())
    }

    fn open_at(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = component(name)?;
        // SAFETY: a valid descriptor and C string; the descriptor returned is ours alone.
        let fd = check(unsafe {
            libc::openat(
                self.fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode,
            )
        })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Creates `name` as a new file (never an existing one, never through a link) with
    /// `mode`, open for writing.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        self.open_at(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)
    }

    /// Opens `name` for reading, without following a link and without blocking on a FIFO.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        self.open_at(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
    }

    /// Moves `name` to `to_name` in `to`. A link at either name is moved or replaced as
    /// itself, never followed.
    pub fn rename(&self, name: &OsStr, to: &Dir, to_name: &OsStr) -> io::Result<()> {
        let (a, b) = (component(name)?, component(to_name)?);
        // SAFETY: valid descriptors and C strings.
        check(unsafe { libc::renameat(self.fd(), a.as_ptr(), to.fd(), b.as_ptr()) }).map(|_| ())
    }

    /// Removes the entry `name` (a link is removed, not what it points to).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = component(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// The names in this directory (not `.` and `..`).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        Ok(self.entries()?.into_iter().map(|(n, _)| n).collect())
    }

    /// The names in this directory (not `.` and `..`), each with whether the directory
    /// listing itself says it is a directory (no `stat` asked: a listing of thousands of
    /// planted directories costs no more than its reading).
    pub fn entries(&self) -> io::Result<Vec<(OsString, bool)>> {
        let dot = CString::new(".").map_err(|_| io::Error::other("NUL"))?;
        // A descriptor of our own for the stream, which closes it.
        // SAFETY: a valid descriptor and C string.
        let fd = check(unsafe {
            libc::openat(
                self.fd(),
                dot.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a fresh directory descriptor; on success the stream owns it.
        let stream = unsafe { libc::fdopendir(fd) };
        if stream.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so `fd` is still ours to close.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: `stream` is a valid open stream used by this thread only.
            let ent = unsafe { libc::readdir64(stream) };
            if ent.is_null() {
                break;
            }
            // SAFETY: a non-null entry from readdir64 holds a NUL-terminated name, valid
            // until the next readdir64 on this stream; it is copied out at once.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                // SAFETY: as above, the entry is valid until the next readdir64.
                let is_dir = unsafe { (*ent).d_type } == libc::DT_DIR;
                names.push((OsString::from_vec(bytes.to_vec()), is_dir));
            }
        }
        // SAFETY: the stream came from fdopendir and is closed once.
        unsafe { libc::closedir(stream) };
        Ok(names)
    }
}

/// Waits up to `timeout` until one of `fds` is readable (or hung up); which ones are. A
/// failed poll (or a timeout) says none.
pub fn poll_readable(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structs for the whole call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents != 0).collect()
}

/// An inotify instance: the kernel makes it readable when something happens to what it
/// watches, so that a waiting thread sleeps until then instead of looking every so often.
pub struct Inotify(OwnedFd);

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        // SAFETY: inotify_init1 takes flags and returns a new descriptor or -1.
        let fd = check(unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Inotify(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `path` for the events in `mask`.
    pub fn watch_path(&self, path: &Path, mask: u32) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        // SAFETY: a valid inotify descriptor and C string.
        check(unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), c.as_ptr(), mask) })?;
        Ok(())
    }

    /// Watches the directory `dir` holds open, by its handle (`/proc/self/fd/N` names the
    /// open directory itself, whatever names point where now).
    pub fn watch_dir(&self, dir: &Dir, mask: u32) -> io::Result<()> {
        let by_handle = format!("/proc/self/fd/{}", dir.0.as_raw_fd());
        self.watch_path(Path::new(&by_handle), mask | libc::IN_ONLYDIR)
    }

    /// Reads every pending event; what happened, all events' masks together (the caller
    /// looks at what it watches itself). `IN_Q_OVERFLOW`: events were lost.
    pub fn drain(&self) -> u32 {
        const HEAD: usize = 16;
        let mut buf = [0u8; 4096];
        let mut seen = 0;
        loop {
            // SAFETY: a valid descriptor and a buffer of `buf.len()` bytes; non-blocking, so
            // the loop ends when nothing is left (-1, EAGAIN).
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return seen;
            }
            // Each event: wd, mask, cookie, len (4 bytes each), then `len` bytes of name.
            let mut at = 0;
            while at + HEAD <= n as usize {
                let word =
                    |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
                seen |= word(at + 4);
                at += HEAD + word(at + 12) as usize;
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A bell one thread rings to wake another that waits on it (an eventfd).
pub struct Bell(OwnedFd);

impl Bell {
    pub fn new() -> io::Result<Bell> {
        // SAFETY: eventfd takes an initial value and flags and returns a new descriptor or -1.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Bell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd; a full counter (EAGAIN)
        // still leaves it readable, which is all a ring means.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Takes the rings so far.
    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64 from our non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("looper-sys-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A link at a name is never followed: not to open a directory, not to create a file,
    /// not to read one; moving and removing it touch the link alone.
    #[test]
    fn links_inside_a_held_directory_are_never_followed() {
        let d = scratch("links");
        let outside = d.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "keep").unwrap();
        let inner = d.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), inner.join("file")).unwrap();
        let dir = Dir::open(&inner).unwrap();
        let uid = dir.stat_self().unwrap().uid;
        assert!(dir.subdir("sub", Some(0o700), uid).is_err());
        assert!(dir.create_new(OsStr::new("file"), 0o600).is_err());
        assert!(dir.open_read(OsStr::new("file")).is_err());
        assert_eq!(dir.stat(OsStr::new("file")).unwrap().kind, Kind::Link);
        assert!(
            dir.subdir("../outside", None, uid).is_err(),
            "not one component"
        );
        let real = dir.subdir("real", Some(0o700), uid).unwrap();
        dir.rename(OsStr::new("file"), &real, OsStr::new("moved"))
            .unwrap();
        real.unlink(OsStr::new("moved")).unwrap();
        dir.unlink(OsStr::new("sub")).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "keep"
        );
        let mut f = real.create_new(OsStr::new("new"), 0o600).unwrap();
        f.write_all(b"x").unwrap();
        let mut text = String::new();
        real.open_read(OsStr::new("new"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "x");
        assert_eq!(real.names().unwrap(), vec![OsString::from("new")]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
