//! The change list of a writable upper directory against the layers below
//! it. Only the upper directory is walked, plus the lower entries it
//! touches (deleted directories are expanded to what they held), so the
//! cost follows the number of changed files, not the size of the tree.
//!
//! The upper directory is a running workspace's: any entry may become a
//! link to a host path at any moment. It is walked through directory
//! descriptors, one name at a time, links refused ([`crate::beneath`]);
//! an entry that vanishes meanwhile is skipped, one that turns into
//! something else where a directory or a file was being opened is an
//! error, never a reason to look elsewhere.

use crate::beneath::{self, Opened};
use crate::tree::{self, Found, Meta};
use berth_core::{Change, ChangeKind, FileKind};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Lists what changed under `under` (a relative directory such as
/// `workspace`; empty for the whole tree) in `upper` compared with the
/// merged view of `lowers` (topmost first). Paths are relative to `under`
/// and sorted. A file that was copied up but is identical to the one below
/// is not a change.
pub fn changes(upper: &Path, lowers: &[PathBuf], under: &Path) -> io::Result<Vec<Change>> {
    let walker = Walker { lowers, under };
    let mut out = Vec::new();
    let root = beneath::open_trusted(upper)?;
    match beneath::open_dir_beneath(root.as_fd(), under) {
        Ok(start) => walker.dir(Path::new(""), start.as_fd(), &mut out)?,
        // No directory there in the upper layer: nothing under it changed.
        Err(e)
            if matches!(
                Errno::from_io_error(&e),
                Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
            ) => {}
        Err(e) => return Err(e),
    }
    out.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then_with(|| a.path_bytes.cmp(&b.path_bytes))
    });
    Ok(out)
}

struct Walker<'a> {
    lowers: &'a [PathBuf],
    under: &'a Path,
}

impl Walker<'_> {
    fn lower(&self, rel: &Path) -> io::Result<Option<Found>> {
        tree::lookup(self.lowers, &self.under.join(rel))
    }

    /// Walks the upper directory `dir` (at `rel`), which exists in the
    /// lowers as a directory unless it was added.
    fn dir(&self, rel: &Path, dir: BorrowedFd<'_>, out: &mut Vec<Change>) -> io::Result<()> {
        let opaque = beneath::has_flag(dir, tree::OPAQUE_XATTR);
        let names = beneath::list(dir)?;
        for name in &names {
            // Gone since the directory was read: not a change.
            if let Some(stat) = beneath::stat_at(dir, name)? {
                self.entry(&rel.join(name), dir, name, Meta::from(&stat), out)?;
            }
        }
        if opaque {
            // Everything the lowers held here and the upper lacks is gone.
            let lower = tree::list(self.lowers, &self.under.join(rel))?;
            for (name, found) in lower {
                if !names.contains(&name) {
                    self.deleted(&rel.join(&name), &found, out)?;
                }
            }
        }
        Ok(())
    }

    /// The upper entry `name` of `dir`, at `rel`, as `meta` shows it.
    fn entry(
        &self,
        rel: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: Meta,
        out: &mut Vec<Change>,
    ) -> io::Result<()> {
        if meta.is_whiteout() {
            if let Some(found) = self.lower(rel)? {
                self.deleted(rel, &found, out)?;
            }
            return Ok(());
        }
        let lower = self.lower(rel)?;
        match lower {
            None => self.added(rel, dir, name, meta, out),
            Some(found) if meta.is_dir() && found.meta.is_dir() => {
                if attrs_differ(&meta, &found.meta) {
                    push(out, rel, ChangeKind::Modified, FileKind::Dir);
                }
                match open_dir(rel, dir, name)? {
                    Some(child) => self.dir(rel, child.as_fd(), out),
                    None => Ok(()),
                }
            }
            Some(_) if meta.is_dir() => {
                // A file replaced by a directory.
                push(out, rel, ChangeKind::Modified, FileKind::Dir);
                self.added_children(rel, dir, name, out)
            }
            Some(found) => {
                if found.meta.is_dir() {
                    // A directory replaced by a file: its contents went.
                    for (name, child) in tree::list(self.lowers, &self.under.join(rel))? {
                        self.deleted(&rel.join(name), &child, out)?;
                    }
                    push(out, rel, ChangeKind::Modified, kind_of(&meta));
                } else if !same_entry(dir, name, &meta, &found)? {
                    push(out, rel, ChangeKind::Modified, kind_of(&meta));
                }
                Ok(())
            }
        }
    }

    fn added(
        &self,
        rel: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        meta: Meta,
        out: &mut Vec<Change>,
    ) -> io::Result<()> {
        push(out, rel, ChangeKind::Added, kind_of(&meta));
        if meta.is_dir() {
            self.added_children(rel, dir, name, out)?;
        }
        Ok(())
    }

    fn added_children(
        &self,
        rel: &Path,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        out: &mut Vec<Change>,
    ) -> io::Result<()> {
        let Some(child) = open_dir(rel, dir, name)? else {
            return Ok(());
        };
        for name in beneath::list(child.as_fd())? {
            let Some(stat) = beneath::stat_at(child.as_fd(), &name)? else {
                continue;
            };
            let meta = Meta::from(&stat);
            if !meta.is_whiteout() {
                self.added(&rel.join(&name), child.as_fd(), &name, meta, out)?;
            }
        }
        Ok(())
    }

    /// Reports a deleted lower entry, and for a directory all it held.
    fn deleted(&self, rel: &Path, found: &Found, out: &mut Vec<Change>) -> io::Result<()> {
        push(out, rel, ChangeKind::Deleted, kind_of(&found.meta));
        if found.meta.is_dir() {
            for (name, child) in tree::list(self.lowers, &self.under.join(rel))? {
                self.deleted(&rel.join(name), &child, out)?;
            }
        }
        Ok(())
    }
}

/// Opens the upper directory `name` of `dir` (at `rel`); `None` when it
/// went meanwhile.
fn open_dir(rel: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<OwnedFd>> {
    match beneath::open_dir_entry(dir, name)? {
        Opened::Yes(fd) => Ok(Some(fd)),
        Opened::Gone => Ok(None),
        Opened::Changed => Err(changed(rel)),
    }
}

/// The error of an entry that became something else while it was read.
pub(crate) fn changed(rel: &Path) -> io::Error {
    io::Error::other(format!(
        "`{}` changed while it was being read; try again",
        rel.display()
    ))
}

fn push(out: &mut Vec<Change>, rel: &Path, kind: ChangeKind, file_kind: FileKind) {
    out.push(Change::new(rel, kind, file_kind));
}

fn kind_of(meta: &Meta) -> FileKind {
    match meta.kind() {
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        FileType::RegularFile => FileKind::File,
        _ => FileKind::Other,
    }
}

fn attrs_differ(a: &Meta, b: &Meta) -> bool {
    a.mode != b.mode || a.uid != b.uid || a.gid != b.gid
}

/// Whether the upper entry `name` of `dir` is the lower one unchanged (a
/// copy-up caused by opening for write without writing, or by a no-op
/// metadata change). What changed kind meanwhile is not the same.
fn same_entry(dir: BorrowedFd<'_>, name: &OsStr, um: &Meta, lower: &Found) -> io::Result<bool> {
    let lm = &lower.meta;
    if attrs_differ(um, lm) || um.size != lm.size {
        return Ok(false);
    }
    match um.kind() {
        FileType::Symlink => match beneath::read_link(dir, name)? {
            Opened::Yes(target) => Ok(target == fs::read_link(&lower.path)?.into_os_string()),
            Opened::Gone | Opened::Changed => Ok(false),
        },
        FileType::RegularFile => match beneath::open_file(dir, name)? {
            Opened::Yes((upper, _)) => {
                // A frozen layer's file, checked by `lstat` when looked up.
                let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let lower = rustix::fs::open(&lower.path, flags, Mode::empty())?;
                same_content(upper, File::from(lower))
            }
            Opened::Gone | Opened::Changed => Ok(false),
        },
        _ => Ok(um.rdev == lm.rdev),
    }
}

fn same_content(mut a: File, mut b: File) -> io::Result<bool> {
    let (mut ba, mut bb) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut ba)?;
        let m = read_full(&mut b, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
