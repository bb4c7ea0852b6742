//! The directory an export or an extraction writes into. Everything is
//! made relative to the target's descriptor, one name at a time, and
//! nothing already there is ever written through: whatever stands where an
//! entry goes (a file, a directory, a link an earlier export left) is
//! replaced, and a link where a directory is needed is removed and a real
//! directory made in its place. So a target can be exported into again and
//! again, and whatever the workspace turned its links into, every write
//! lands inside the target.

use crate::beneath;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Permissions of the directories made on the way to an entry.
const DIR_MODE: u32 = 0o755;

pub struct Target {
    root: OwnedFd,
    shown: PathBuf,
    /// The last parent directory made or opened, reused by its siblings.
    last: Option<(PathBuf, OwnedFd)>,
}

impl Target {
    /// Opens `dest`, created with its parents when missing. `dest` itself
    /// is the caller's to name and may be reached through links.
    pub fn open(dest: &Path) -> io::Result<Target> {
        fs::create_dir_all(dest)?;
        Ok(Target {
            root: beneath::open_trusted(dest)?,
            shown: dest.to_path_buf(),
            last: None,
        })
    }

    /// Writes a new file at `rel` with the permission bits `mode` (set
    /// exactly, past the umask), replacing what was there.
    pub fn file(&mut self, rel: &Path, mode: u32) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        clear(dir.as_fd(), &name)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&dir, name.as_bytes(), flags, Mode::from_raw_mode(mode))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Makes a link at `rel` pointing to `target`, replacing what was there.
    pub fn symlink(&mut self, rel: &Path, target: &OsStr) -> io::Result<()> {
        let (dir, name) = self.parent(rel)?;
        clear(dir.as_fd(), &name)?;
        Ok(rustix::fs::symlinkat(
            target.as_bytes(),
            &dir,
            name.as_bytes(),
        )?)
    }

    /// Makes a hard link at `rel` to the entry `existing` (a path in the
    /// target, made earlier), replacing what was at `rel`.
    pub fn hard_link(&mut self, rel: &Path, existing: &Path) -> io::Result<()> {
        let (from_parent, from_name) = split(existing)?;
        let from_dir = beneath::open_dir_beneath(self.root.as_fd(), from_parent)?;
        let (dir, name) = self.parent(rel)?;
        clear(dir.as_fd(), &name)?;
        Ok(rustix::fs::linkat(
            &from_dir,
            from_name.as_bytes(),
            &dir,
            name.as_bytes(),
            AtFlags::empty(),
        )?)
    }

    /// Makes sure a directory is at `rel` with the permission bits `mode`.
    pub fn dir(&mut self, rel: &Path, mode: u32) -> io::Result<()> {
        let (parent, name) = self.parent(rel)?;
        let dir = enter(parent.as_fd(), &name)?;
        Ok(rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))?)
    }

    /// The directory that holds `rel`, made on the way where missing, and
    /// `rel`'s last name.
    fn parent(&mut self, rel: &Path) -> io::Result<(OwnedFd, OsString)> {
        let (parent, name) = split(rel)?;
        if let Some((path, fd)) = &self.last
            && path == parent
        {
            return Ok((fd.try_clone()?, name.to_os_string()));
        }
        let mut dir = self.root.try_clone()?;
        for part in beneath::names(parent)? {
            dir = enter(dir.as_fd(), part)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.shown.display())))?;
        }
        self.last = Some((parent.to_path_buf(), dir.try_clone()?));
        Ok((dir, name.to_os_string()))
    }
}

/// `rel`'s parent and last name; a path without a name (empty, `..`) is
/// refused.
fn split(rel: &Path) -> io::Result<(&Path, &OsStr)> {
    let names = beneath::names(rel)?;
    let name = names.last().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` names no entry", rel.display()),
        )
    })?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// Opens the directory `name` in `dir`, making it if missing and replacing
/// whatever else stands there (a link above all: it is never followed).
fn enter(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    match beneath::open_dir(dir, name) {
        Ok(fd) => return Ok(fd),
        Err(e) => match Errno::from_io_error(&e) {
            Some(Errno::NOENT) => {}
            Some(Errno::LOOP | Errno::NOTDIR) => clear(dir, name)?,
            _ => return Err(e),
        },
    }
    match rustix::fs::mkdirat(dir, name.as_bytes(), Mode::from_raw_mode(DIR_MODE)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    beneath::open_dir(dir, name)
}

/// Removes whatever is at `name` in `dir`: a file or link by unlinking it
/// (a link's target is untouched), a directory with all it holds.
fn clear(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name.as_bytes(), AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) => berth_files::remove_tree_at(dir, name.as_bytes()),
        Err(e) => Err(e.into()),
    }
}
