//! Safe wrappers around the few raw system calls outside process handling (which lives in
//! [`crate::procs`]). Each `unsafe` block says why it is sound.

use std::os::fd::RawFd;

/// Shuts both directions of socket `fd`: a blocked `accept` on a listening socket returns,
/// and reads and writes on a connection end. The caller keeps `fd` open meanwhile (so the
/// number cannot belong to anything else); a bad `fd` only makes the call fail.
pub fn shutdown_socket(fd: RawFd) {
    // SAFETY: shutdown(2) takes no memory from us; on a descriptor that is not a socket it
    // fails with ENOTSOCK and changes nothing.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}
