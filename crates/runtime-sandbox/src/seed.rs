//! Seeding a workspace's `/tmp` tmpfs with the `/tmp` its layers hold.
//!
//! `/tmp` is a tmpfs of a bounded size, so that a workspace cannot fill
//! the host's disk through it; yet what a setup script leaves in `/tmp`
//! is part of the provisioned state (clients read it afterwards).
//! Provisioning therefore runs with `/tmp` on the overlay, so the cache
//! layer holds it, and every start mounts the tmpfs and copies the
//! overlay's `/tmp` into it before the workspace's init runs: the first
//! workspace (restarted after its state is frozen), a cache hit, a reset
//! and a fork all begin with the provisioned `/tmp`, within the bound (a
//! provisioned `/tmp` larger than it fails the start with "No space left
//! on device", naming the file).
//!
//! The copy runs as host root, in the init's private mount namespace, over
//! files a hostile setup script made. So it goes through descriptors only:
//! each entry is opened beneath the directory it was listed in with
//! `O_NOFOLLOW` and checked with `fstat`; symlinks are copied as links,
//! never followed; devices, sockets and FIFOs are left out; hard links
//! become separate files; depth is bounded so the copy's own stack is.
//! An empty `/tmp` costs one open and one directory read. No crate copies
//! a tree this way (fs_extra, copy_dir and the like walk paths and follow
//! links), hence by hand.

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Directories deeper than this below `/tmp` fail the copy.
pub const MAX_DEPTH: usize = 256;

/// An error of the copy, with the path below `/tmp` it happened at.
#[derive(Debug, thiserror::Error)]
#[error("cannot copy `/tmp/{path}` into the workspace's /tmp: {source}")]
pub struct SeedError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

/// Opens the directory at `path` to copy from, refusing a symlink.
pub fn open_source(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Copies what directory `src` holds into directory `dst` (the new tmpfs),
/// and gives `dst` the owner of `src`.
pub fn copy(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<(), SeedError> {
    let here = |e: Errno| SeedError {
        path: String::new(),
        source: e.into(),
    };
    let stat = rfs::fstat(src).map_err(here)?;
    rfs::fchown(
        dst,
        Some(rfs::Uid::from_raw(stat.st_uid)),
        Some(rfs::Gid::from_raw(stat.st_gid)),
    )
    .map_err(here)?;
    copy_dir(src, dst, "", 0)
}

fn copy_dir(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    prefix: &str,
    depth: usize,
) -> Result<(), SeedError> {
    let fail = |name: &str, source: io::Error| SeedError {
        path: format!("{prefix}{name}"),
        source,
    };
    if depth >= MAX_DEPTH {
        return Err(fail(
            "",
            io::Error::other(format!("more than {MAX_DEPTH} directories deep")),
        ));
    }
    let dir = rfs::Dir::read_from(src).map_err(|e| fail("", e.into()))?;
    for entry in dir {
        let entry = entry.map_err(|e| fail("", e.into()))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        copy_entry(src, dst, name, prefix, depth)?;
    }
    Ok(())
}

/// Copies entry `name` of `src` into `dst`, a directory with all it holds.
fn copy_entry(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &CStr,
    prefix: &str,
    depth: usize,
) -> Result<(), SeedError> {
    let path = format!("{prefix}{}", name.to_string_lossy());
    let here = |source| SeedError {
        path: path.clone(),
        source,
    };
    if let Some((from, to, meta)) = copy_one(src, dst, name).map_err(here)? {
        copy_dir(from.as_fd(), to.as_fd(), &format!("{path}/"), depth + 1)?;
        meta.apply(&to).map_err(here)?;
    }
    Ok(())
}

/// Copies a file or link; for a directory, makes it and returns both
/// ends and what to give it once it is filled.
fn copy_one(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    name: &CStr,
) -> io::Result<Option<(OwnedFd, OwnedFd, Meta)>> {
    let stat = rfs::statat(src, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let meta = Meta::of(&stat);
    let open = |flags: OFlags| -> io::Result<OwnedFd> {
        let fd = rfs::openat(
            src,
            name,
            flags | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        )?;
        if FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode)
            != FileType::from_raw_mode(stat.st_mode)
        {
            return Err(io::Error::other("changed while it was copied"));
        }
        Ok(fd)
    };
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::Directory => {
            let from = open(OFlags::DIRECTORY)?;
            rfs::mkdirat(dst, name, Mode::RWXU)?;
            let to = rfs::openat(
                dst,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            return Ok(Some((from, to, meta)));
        }
        FileType::RegularFile => {
            let from = open(OFlags::empty())?;
            let to = rfs::openat(
                dst,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::RUSR | Mode::WUSR,
            )?;
            let mut to = File::from(to);
            io::copy(&mut File::from(from), &mut to)?;
            meta.apply(&OwnedFd::from(to))?;
        }
        FileType::Symlink => {
            let target = rfs::readlinkat(src, name, Vec::new())?;
            rfs::symlinkat(&target, dst, name)?;
            rfs::chownat(dst, name, meta.uid, meta.gid, AtFlags::SYMLINK_NOFOLLOW)?;
            rfs::utimensat(dst, name, &meta.times, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        // Devices, sockets and FIFOs: nothing a later process can use.
        _ => {}
    }
    Ok(None)
}

/// What a copy keeps of its original besides the contents.
struct Meta {
    uid: Option<rfs::Uid>,
    gid: Option<rfs::Gid>,
    mode: Mode,
    times: Timestamps,
}

impl Meta {
    fn of(stat: &rfs::Stat) -> Self {
        let time = |sec, nsec| rfs::Timespec {
            tv_sec: sec as _,
            tv_nsec: nsec as _,
        };
        Meta {
            uid: Some(rfs::Uid::from_raw(stat.st_uid)),
            gid: Some(rfs::Gid::from_raw(stat.st_gid)),
            mode: Mode::from_raw_mode(stat.st_mode & 0o7777),
            times: Timestamps {
                last_access: time(stat.st_atime, stat.st_atime_nsec),
                last_modification: time(stat.st_mtime, stat.st_mtime_nsec),
            },
        }
    }

    /// The mode after the owner, which clears set-id bits.
    fn apply(&self, fd: &OwnedFd) -> io::Result<()> {
        rfs::fchown(fd, self.uid, self.gid)?;
        rfs::fchmod(fd, self.mode)?;
        Ok(rfs::futimens(fd, &self.times)?)
    }
}
