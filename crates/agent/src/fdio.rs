//! Non-blocking descriptors (pipes, a terminal's master side) driven by
//! the runtime, for the parts std's process pipes cannot do: reading what
//! is buffered right now without waiting, and terminals.

use std::io;
use std::os::fd::OwnedFd;
use tokio::io::unix::AsyncFd;

/// A pipe whose read end (the agent's) is non-blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    rustix::io::ioctl_fionbio(&read, true)?;
    Ok((read, write))
}

/// Waits for and reads some bytes; 0 at end of file.
pub async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| Ok(rustix::io::read(inner.get_ref(), &mut *buf)?)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Reads what is buffered right now; `None` when nothing is (or at end of
/// file, or on error).
pub fn read_now(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> Option<usize> {
    match rustix::io::read(fd.get_ref(), buf) {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

pub async fn write_all(fd: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| Ok(rustix::io::write(inner.get_ref(), bytes)?)) {
            Ok(Ok(n)) => bytes = &bytes[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Sleeps until `at`, or forever when there is no deadline.
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Registers an owned descriptor with the runtime.
#[expect(
    unsafe_code,
    reason = "AsyncFd::register's contract is exactly what OwnedFd guarantees"
)]
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open descriptor that stays open, and
    // keeps its number, until the AsyncFd that now owns it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}
