//! Opening a path beneath the root without ever leaving it.
//!
//! The rule, whichever way it is enforced: a path is resolved from the root
//! one component at a time; symlinks inside are followed, but an absolute
//! symlink, a `..` that would climb above the root (even on the way to
//! somewhere inside) or a `/proc` magic link is refused. Absolute symlinks
//! are refused rather than re-rooted (`RESOLVE_IN_ROOT`) because for the
//! `local` runtime the workspace is a host directory: a link to `/etc` means
//! the host's `/etc` to every command run there, so it must not quietly mean
//! something else here.
//!
//! The kernel enforces it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_MAGICLINKS)` (Linux 5.6+). Where openat2 is missing (older
//! kernels) or filtered (some container seccomp profiles), [`walk`] does the
//! same resolution by hand, race-free: every step opens one component with
//! `O_NOFOLLOW` relative to the directory fd of the previous step, reads a
//! symlink through the fd it opened, and handles `..` by going back to a
//! directory fd it already holds instead of opening `..`, so a directory
//! moved or a symlink swapped mid-way can never take it above the root.

use rustix::fd::{BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::collections::VecDeque;

/// How a [`Root`](crate::Root) confines paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The kernel's `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`.
    Openat2,
    /// A component-by-component walk with `O_NOFOLLOW`, for kernels without
    /// openat2. It also refuses ordinary symlinks inside `/proc`.
    Walk,
}

/// Why a path could not be opened.
#[derive(Debug)]
pub(crate) enum Fail {
    Errno(Errno),
    /// It would lead outside the root.
    Escapes,
    /// Too many symlinks, or a symlink loop.
    Loop,
}

impl From<Errno> for Fail {
    fn from(errno: Errno) -> Self {
        Fail::Errno(errno)
    }
}

/// The kernel's own limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// How often to retry when openat2 reports that a concurrent rename may
/// have raced with a `..` (EAGAIN): it asks for a retry, not an error.
const RETRIES: usize = 8;

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Which resolution this kernel supports, tried on the root itself.
pub(crate) fn probe(root: BorrowedFd<'_>) -> Resolution {
    match rustix::fs::openat2(
        root,
        ".",
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH,
    ) {
        Ok(_) => Resolution::Openat2,
        // ENOSYS on kernels before 5.6; EPERM or ENOSYS where a seccomp
        // filter does not know the call. The walk works everywhere.
        Err(_) => Resolution::Walk,
    }
}

/// Opens `rel` (relative, `/`-separated, may hold `..`; empty for the root)
/// beneath `root` with `flags`. With `follow` false a final symlink is not
/// followed, as with `O_NOFOLLOW`.
pub(crate) fn open(
    root: BorrowedFd<'_>,
    how: Resolution,
    rel: &str,
    flags: OFlags,
    mode: Mode,
    follow: bool,
) -> Result<OwnedFd, Fail> {
    if how == Resolution::Walk {
        return walk_open(root, rel, flags, mode, follow);
    }
    let path = if rel.is_empty() { "." } else { rel };
    let mut flags = flags | OFlags::CLOEXEC;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    for _ in 0..RETRIES {
        match rustix::fs::openat2(root, path, flags, mode, BENEATH) {
            Ok(fd) => return Ok(fd),
            Err(Errno::AGAIN) => continue,
            Err(Errno::XDEV) => return Err(Fail::Escapes),
            // A loop, a refused magic link, or a final symlink with
            // O_NOFOLLOW: the walk tells them apart (and is as safe).
            Err(Errno::LOOP) => return walk_open(root, rel, flags, mode, follow),
            Err(errno) => return Err(Fail::Errno(errno)),
        }
    }
    Err(Fail::Errno(Errno::AGAIN))
}

fn walk_open(
    root: BorrowedFd<'_>,
    rel: &str,
    flags: OFlags,
    mode: Mode,
    follow: bool,
) -> Result<OwnedFd, Fail> {
    let flags = flags | OFlags::CLOEXEC;
    let (dir, name) = walk(root, rel, follow)?;
    let fd = match name {
        None => rustix::fs::openat(&dir, ".", flags, mode),
        // O_NOFOLLOW: the walk saw no symlink here (or was told not to
        // follow one); if one was swapped in since, the open fails.
        Some(name) => rustix::fs::openat(&dir, name.as_slice(), flags | OFlags::NOFOLLOW, mode),
    };
    Ok(fd?)
}

/// Resolves `rel` beneath `root` to the directory holding its last
/// component and that component's name (`None` when the path ends at a
/// directory reached through `.` or `..`). The last component is followed
/// if it is a symlink and `follow` is set; it need not exist.
pub(crate) fn walk(
    root: BorrowedFd<'_>,
    rel: &str,
    follow: bool,
) -> Result<(OwnedFd, Option<Vec<u8>>), Fail> {
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    // The directories from the root down to where the walk is; `..` pops.
    let mut stack = vec![rustix::fs::openat(root, ".", dir_flags, Mode::empty())?];
    let mut queue = components(rel.as_bytes())?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        let last = queue.is_empty();
        match name.as_slice() {
            b"." => continue,
            b".." => {
                if stack.len() == 1 {
                    return Err(Fail::Escapes);
                }
                stack.pop();
                continue;
            }
            _ => {}
        }
        let Some(top) = stack.last() else {
            return Err(Fail::Escapes);
        };
        if last && !follow {
            return Ok((pop(stack)?, Some(name)));
        }
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(top, name.as_slice(), flags, Mode::empty()) {
            Ok(fd) => fd,
            // A file about to be created.
            Err(Errno::NOENT) if last => return Ok((pop(stack)?, Some(name))),
            Err(errno) => return Err(Fail::Errno(errno)),
        };
        match FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Fail::Loop);
                }
                // A procfs symlink may be a magic link (`/proc/self/root`,
                // `/proc/<pid>/fd/<n>`) that jumps without a path; telling
                // them apart needs openat2, so every one is refused.
                if rustix::fs::fstatfs(top)?.f_type == rustix::fs::PROC_SUPER_MAGIC {
                    return Err(Fail::Escapes);
                }
                // Read through the fd just opened, so the link read is the
                // link checked.
                let target = rustix::fs::readlinkat(&fd, "", Vec::new())?.into_bytes();
                if target.is_empty() {
                    return Err(Fail::Errno(Errno::NOENT));
                }
                let mut parts = components(&target)?;
                parts.extend(queue);
                queue = parts;
            }
            FileType::Directory if !last => stack.push(fd),
            _ if last => return Ok((pop(stack)?, Some(name))),
            _ => return Err(Fail::Errno(Errno::NOTDIR)),
        }
    }
    Ok((pop(stack)?, None))
}

fn pop(mut stack: Vec<OwnedFd>) -> Result<OwnedFd, Fail> {
    stack.pop().ok_or(Fail::Escapes)
}

/// Splits a relative path or symlink target into components, the way the
/// kernel reads it: absolute is an escape, empty does not exist, and a
/// trailing `/` demands a directory (kept as a final `.`).
fn components(path: &[u8]) -> Result<VecDeque<Vec<u8>>, Fail> {
    if path.first() == Some(&b'/') {
        return Err(Fail::Escapes);
    }
    let mut parts: VecDeque<Vec<u8>> = path
        .split(|&b| b == b'/')
        .filter(|part| !part.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if path.ends_with(b"/") {
        parts.push_back(b".".to_vec());
    }
    Ok(parts)
}
