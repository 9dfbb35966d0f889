//! The crate's only `unsafe`: turning a file descriptor owned by the engine into something the
//! runtime can wait on.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// A duplicate of `fd` wrapped so that monoio can wait for it to become readable (an io_uring
/// PollAdd, or epoll on the fallback driver) through `UnixDatagram::readable(false)`. The wrapper
/// is only ever polled for readiness, never read from or written to, so its socket type is a
/// vehicle for the runtime's readiness API and nothing more. It owns its own duplicate: dropping
/// it never closes the engine's descriptor.
pub fn pollable_dup(fd: RawFd) -> io::Result<UnixDatagram> {
    // SAFETY: `fd` comes from the engine's `completion_fd()`, which stays open for as long as the
    // shard lives; the shard outlives this call, and the borrow ends before it returns (we keep
    // only the duplicate).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed.try_clone_to_owned()?;
    Ok(UnixDatagram::from(owned))
}

/// Takes an exclusive advisory lock on `file` without blocking: `Ok(false)` if another process
/// holds it. The lock lives as long as the descriptor (the process), so a crashed daemon never
/// leaves it behind.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock only reads the descriptor number, which `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Takes ownership of a descriptor the runtime has just given up (`IntoRawFd::into_raw_fd` on
/// an accepted stream), so it can travel to another core's event loop and be closed if it never
/// arrives.
pub fn owned_fd(raw: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `raw` comes straight from `into_raw_fd`, which hands over sole ownership of an
    // open descriptor; nothing else closes or uses it afterwards.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
}

/// Sends SIGUSR1 (drain) to process `pid` (`scd drain`).
pub fn signal_drain(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, libc::SIGUSR1) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
