//! The change list of a writable upper directory against the layers below
//! it. Only the upper directory is walked, plus the lower entries it
//! touches (deleted directories are expanded to what they held), so the
//! cost follows the number of changed files, not the size of the tree.

use crate::tree::{self, Found, is_whiteout};
use berth_core::{Change, ChangeKind, FileKind};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Lists what changed under `under` (a relative directory such as
/// `workspace`; empty for the whole tree) in `upper` compared with the
/// merged view of `lowers` (topmost first). Paths are relative to `under`
/// and sorted. A file that was copied up but is identical to the one below
/// is not a change.
pub fn changes(upper: &Path, lowers: &[PathBuf], under: &Path) -> io::Result<Vec<Change>> {
    let walker = Walker {
        upper,
        lowers,
        under,
    };
    let mut out = Vec::new();
    let start = upper.join(under);
    if fs::symlink_metadata(&start).is_ok_and(|m| m.is_dir()) {
        walker.dir(Path::new(""), &mut out)?;
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

struct Walker<'a> {
    upper: &'a Path,
    lowers: &'a [PathBuf],
    under: &'a Path,
}

impl Walker<'_> {
    fn lower(&self, rel: &Path) -> io::Result<Option<Found>> {
        tree::lookup(self.lowers, &self.under.join(rel))
    }

    /// Walks upper directory `rel`, which exists in the lowers as a
    /// directory unless `added`.
    fn dir(&self, rel: &Path, out: &mut Vec<Change>) -> io::Result<()> {
        let dir = self.upper.join(self.under).join(rel);
        let opaque = tree::is_opaque(&dir);
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = PathBuf::from(entry.file_name());
            let child = rel.join(&name);
            let meta = entry.metadata()?;
            names.push(name);
            self.entry(&child, &entry.path(), &meta, out)?;
        }
        if opaque {
            // Everything the lowers held here and the upper lacks is gone.
            let lower = tree::list(self.lowers, &self.under.join(rel))?;
            for (name, found) in lower {
                if !names.iter().any(|n| n.as_os_str() == name.as_str()) {
                    self.deleted(&rel.join(&name), &found, out)?;
                }
            }
        }
        Ok(())
    }

    fn entry(
        &self,
        rel: &Path,
        path: &Path,
        meta: &Metadata,
        out: &mut Vec<Change>,
    ) -> io::Result<()> {
        if is_whiteout(meta) {
            if let Some(found) = self.lower(rel)? {
                self.deleted(rel, &found, out)?;
            }
            return Ok(());
        }
        let lower = self.lower(rel)?;
        match lower {
            None => self.added(rel, path, meta, out),
            Some(found) if meta.is_dir() && found.meta.is_dir() => {
                if attrs_differ(meta, &found.meta) {
                    push(out, rel, ChangeKind::Modified, FileKind::Dir);
                }
                self.dir(rel, out)
            }
            Some(_) if meta.is_dir() => {
                // A file replaced by a directory.
                push(out, rel, ChangeKind::Modified, FileKind::Dir);
                self.added_children(rel, path, out)
            }
            Some(found) => {
                if found.meta.is_dir() {
                    // A directory replaced by a file: its contents went.
                    for (name, child) in tree::list(self.lowers, &self.under.join(rel))? {
                        self.deleted(&rel.join(name), &child, out)?;
                    }
                    push(out, rel, ChangeKind::Modified, kind_of(meta));
                } else if !same_entry(path, meta, &found.path, &found.meta)? {
                    push(out, rel, ChangeKind::Modified, kind_of(meta));
                }
                Ok(())
            }
        }
    }

    fn added(
        &self,
        rel: &Path,
        path: &Path,
        meta: &Metadata,
        out: &mut Vec<Change>,
    ) -> io::Result<()> {
        push(out, rel, ChangeKind::Added, kind_of(meta));
        if meta.is_dir() {
            self.added_children(rel, path, out)?;
        }
        Ok(())
    }

    fn added_children(&self, rel: &Path, path: &Path, out: &mut Vec<Change>) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if is_whiteout(&meta) {
                continue;
            }
            self.added(&rel.join(entry.file_name()), &entry.path(), &meta, out)?;
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

fn push(out: &mut Vec<Change>, rel: &Path, kind: ChangeKind, file_kind: FileKind) {
    out.push(Change {
        path: rel.to_string_lossy().into_owned(),
        kind,
        file_kind,
    });
}

fn kind_of(meta: &Metadata) -> FileKind {
    let t = meta.file_type();
    if t.is_dir() {
        FileKind::Dir
    } else if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

fn attrs_differ(a: &Metadata, b: &Metadata) -> bool {
    a.mode() != b.mode() || a.uid() != b.uid() || a.gid() != b.gid()
}

/// Whether an upper entry is the lower one unchanged (a copy-up caused by
/// opening for write without writing, or by a no-op metadata change).
fn same_entry(upper: &Path, um: &Metadata, lower: &Path, lm: &Metadata) -> io::Result<bool> {
    if attrs_differ(um, lm) || um.len() != lm.len() {
        return Ok(false);
    }
    if um.file_type().is_symlink() {
        return Ok(fs::read_link(upper)? == fs::read_link(lower)?);
    }
    if !um.is_file() {
        return Ok(um.rdev() == lm.rdev());
    }
    same_content(upper, lower)
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut a, mut b) = (File::open(a)?, File::open(b)?);
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
