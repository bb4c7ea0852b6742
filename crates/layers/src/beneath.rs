//! Opening what lies beneath a directory descriptor one name at a time,
//! never through a link: how host-side code touches a workspace's files,
//! where a link may be swapped in at any moment. Every lookup is of one
//! name relative to a descriptor already open, with `O_NOFOLLOW`, and what
//! was opened is checked on the descriptor itself; nothing is looked up by
//! path twice, so a swap between a check and a use cannot redirect it.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path};

/// How directories are opened to be read and looked into.
const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Opens the directory `path`, which the caller trusts (berth's own
/// directory, or the target a user named): links on the way are followed.
pub fn open_trusted(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Opens the directory `name` in `dir`; a link there is refused (`ELOOP`
/// or `ENOTDIR`), never followed.
pub fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name.as_bytes(),
        DIR,
        Mode::empty(),
    )?)
}

/// Opens the directory `rel` beneath `root`, one component at a time,
/// refusing links at every one. Only plain names are allowed: no `..`,
/// no root.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut dir = rustix::fs::openat(root, ".", DIR, Mode::empty())?;
    for name in names(rel)? {
        dir = open_dir(dir.as_fd(), name)?;
    }
    Ok(dir)
}

/// The plain names of a relative path; anything else is refused.
pub fn names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    rel.components()
        .filter(|c| *c != Component::CurDir)
        .map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

/// The entry `name` in `dir` itself (a link is reported as a link), or
/// `None` when there is none.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rustix::fs::statat(dir, name.as_bytes(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The names in the directory `dir`, without `.` and `..`.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut stream = rustix::fs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = stream.read() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    Ok(names)
}

/// Why an entry could not be opened as the kind it was listed as.
#[derive(Debug)]
pub enum Opened<T> {
    Yes(T),
    /// Nothing is there any more.
    Gone,
    /// Something else is there now (a link swapped in, a directory where a
    /// file was).
    Changed,
}

/// Opens the regular file `name` in `dir` for reading. A link there is not
/// followed and anything but a regular file is not read (a FIFO cannot
/// hang the reader, a device is not touched beyond the open).
pub fn open_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Opened<(File, Stat)>> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let fd = match rustix::fs::openat(dir, name.as_bytes(), flags | OFlags::CLOEXEC, Mode::empty())
    {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(Opened::Gone),
        Err(Errno::LOOP | Errno::NXIO | Errno::NODEV) => return Ok(Opened::Changed),
        Err(e) => return Err(e.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(Opened::Changed);
    }
    Ok(Opened::Yes((File::from(fd), stat)))
}

/// The target of the link `name` in `dir`.
pub fn read_link(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Opened<OsString>> {
    match rustix::fs::readlinkat(dir, name.as_bytes(), Vec::new()) {
        Ok(target) => Ok(Opened::Yes(OsString::from_vec(target.into_bytes()))),
        Err(Errno::NOENT) => Ok(Opened::Gone),
        // Not a link (any more).
        Err(Errno::INVAL) => Ok(Opened::Changed),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` in `dir`, telling a directory that went or
/// was replaced apart from a failure.
pub fn open_dir_entry(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Opened<OwnedFd>> {
    match open_dir(dir, name) {
        Ok(fd) => Ok(Opened::Yes(fd)),
        Err(e) => match Errno::from_io_error(&e) {
            Some(Errno::NOENT) => Ok(Opened::Gone),
            Some(Errno::LOOP | Errno::NOTDIR) => Ok(Opened::Changed),
            _ => Err(e),
        },
    }
}

/// Whether the directory `dir` carries the xattr `name` set to `y`.
pub fn has_flag(dir: impl AsFd, name: &str) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::fgetxattr(dir, name, &mut value), Ok(n) if n >= 1 && value[0] == b'y')
}
