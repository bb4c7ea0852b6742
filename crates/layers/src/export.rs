//! Export of a change list: the added and modified entries of a
//! workspace's files as a `.tar.zst` archive or copied into a host
//! directory, and extraction of such an archive. Deleted paths cannot
//! travel as files; they are returned in the summary.
//!
//! The files are a running workspace's: each entry is opened beneath the
//! workspace's directory descriptor with links refused at every component,
//! checked on its descriptor, and copied from it ([`crate::beneath`]). An
//! entry exported is what is there when it is opened (an entry gone since
//! it was listed is left out; one that keeps changing kind under the export
//! fails it). Into a directory, nothing is written through what the
//! target already holds ([`crate::target`]), files keep their permission
//! bits but not set-id or sticky bits, and sparse files stay sparse, in
//! archives too.

use crate::beneath::{self, Opened};
use crate::changes::changed;
use crate::sparse::{self, Exactly};
use crate::target::Target;
use berth_core::{Change, ChangeKind, ExportSummary, FileKind};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{FileType, Stat};
use rustix::io::Errno;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Owner and group ids in an archive: the ids inside the workspace, that
/// is, host ids minus `shift` for ids within `[shift, shift + range)`.
#[derive(Debug, Clone, Copy)]
pub struct IdShift {
    pub shift: u32,
    pub range: u32,
}

impl IdShift {
    pub const NONE: IdShift = IdShift { shift: 0, range: 0 };

    fn unshift(self, id: u32) -> u32 {
        if id >= self.shift && id - self.shift < self.range {
            id - self.shift
        } else {
            id
        }
    }
}

/// How often an entry that changes kind between its stat and its open is
/// looked at again before the export gives up on it.
const ATTEMPTS: usize = 3;

/// The permission bits an exported file or directory keeps on the host.
const HOST_MODE: u32 = 0o777;

fn summary_of(changes: &[Change]) -> ExportSummary {
    ExportSummary {
        deleted: changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Deleted)
            .map(|c| c.path.clone())
            .collect(),
        ..ExportSummary::default()
    }
}

fn exported(changes: &[Change]) -> impl Iterator<Item = &Change> {
    changes
        .iter()
        .filter(|c| c.kind != ChangeKind::Deleted && c.file_kind != FileKind::Other)
}

/// Writes the added and modified entries listed in `changes` of the
/// directory `under` of `root` (`root` is berth's, `under` the workspace's)
/// into a zstd-compressed tar at `out`.
pub fn export_archive(
    root: &Path,
    under: &Path,
    changes: &[Change],
    out: &Path,
    ids: IdShift,
) -> io::Result<ExportSummary> {
    let mut summary = summary_of(changes);
    let mut source = Source::open(root, under)?;
    let file = BufWriter::new(File::create(out)?);
    let encoder = zstd::Encoder::new(file, 3)?;
    let mut builder = tar::Builder::new(encoder);
    for change in exported(changes) {
        let rel = Path::new(&change.path);
        let Some(entry) = source.entry(rel)? else {
            continue;
        };
        let stat = entry.stat();
        let mut header = tar::Header::new_gnu();
        header.set_mode(stat.st_mode & 0o7777);
        header.set_uid(ids.unshift(stat.st_uid).into());
        header.set_gid(ids.unshift(stat.st_gid).into());
        header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
        header.set_size(0);
        match entry {
            Entry::File { file, stat } => {
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                let segments = sparse::segments(&file, size)?;
                if sparse::has_holes(&segments, size) {
                    let data = sparse::entry(&mut header, file, size, segments, rel)?;
                    builder.append_data(&mut header, rel, data)?;
                } else {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    builder.append_data(&mut header, rel, Exactly::new(file, size, rel))?;
                }
                summary.bytes += size;
            }
            Entry::Link { target, .. } => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, rel, Path::new(&target))?;
            }
            Entry::Dir { .. } => {
                header.set_entry_type(tar::EntryType::Directory);
                builder.append_data(&mut header, rel, io::empty())?;
            }
        }
        summary.entries += 1;
    }
    builder.into_inner()?.finish()?.flush()?;
    Ok(summary)
}

/// Copies the added and modified entries listed in `changes` of the
/// directory `under` of `root` into the host directory `dest` (created if
/// missing; what it holds is replaced entry by entry, never written
/// through). Files are owned by whoever runs this.
pub fn export_dir(
    root: &Path,
    under: &Path,
    changes: &[Change],
    dest: &Path,
) -> io::Result<ExportSummary> {
    let mut summary = summary_of(changes);
    let mut source = Source::open(root, under)?;
    let mut target = Target::open(dest)?;
    for change in exported(changes) {
        let rel = Path::new(&change.path);
        let Some(entry) = source.entry(rel)? else {
            continue;
        };
        match entry {
            Entry::File { mut file, stat } => {
                let size = u64::try_from(stat.st_size).unwrap_or(0);
                let mut out = target.file(rel, stat.st_mode & HOST_MODE)?;
                sparse::copy(&mut file, &mut out, size, rel)?;
                summary.bytes += size;
            }
            Entry::Link { target: to, .. } => target.symlink(rel, &to)?,
            Entry::Dir { stat } => target.dir(rel, stat.st_mode & HOST_MODE)?,
        }
        summary.entries += 1;
    }
    Ok(summary)
}

/// Unpacks an archive written by [`export_archive`] into `dest`: see
/// [`extract`].
pub fn extract_archive(archive: &Path, dest: &Path) -> io::Result<u64> {
    extract(
        zstd::Decoder::new(File::open(archive)?)?,
        dest,
        Path::new(""),
    )
}

/// Unpacks a tar stream into the directory `under` (a plain relative path)
/// of `dest` (created if missing) the way [`export_dir`] writes: relative
/// to the target's descriptor, never through what it holds, `under`
/// included. Entries that would land outside (absolute paths, `..`) are
/// refused; owners are not restored, permission bits are (without set-id
/// or sticky bits), files' times are, and zeros become holes. Devices and
/// FIFOs are skipped. Returns the entries written.
pub fn extract(reader: impl Read, dest: &Path, under: &Path) -> io::Result<u64> {
    beneath::names(under)?;
    let mut target = Target::open(dest)?;
    let mut archive = tar::Archive::new(reader);
    let mut count = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let outside = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "archive entry `{}` leads outside `{}`",
                    path.display(),
                    dest.display()
                ),
            )
        };
        if beneath::names(&path).map_err(|_| outside())?.is_empty() {
            // The archive's own top directory (`.`): `under` itself.
            continue;
        }
        let path = under.join(&path);
        let link = entry.link_name()?.map(|l| l.into_owned());
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mode = entry.header().mode()? & HOST_MODE;
                let mtime = entry.header().mtime()?;
                let mut file = target.file(&path, mode)?;
                sparse::write_holey(&mut entry, &mut file)?;
                let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                file.set_times(std::fs::FileTimes::new().set_modified(time))?;
            }
            tar::EntryType::Directory => target.dir(&path, entry.header().mode()? & HOST_MODE)?,
            tar::EntryType::Symlink => {
                let to = link.ok_or_else(outside)?;
                target.symlink(&path, to.as_os_str())?;
            }
            tar::EntryType::Link => {
                let to = link.ok_or_else(outside)?;
                beneath::names(&to).map_err(|_| outside())?;
                target.hard_link(&path, &under.join(to))?;
            }
            _ => continue,
        }
        count += 1;
    }
    Ok(count)
}

/// An entry of the workspace's files, opened.
enum Entry {
    File { file: File, stat: Stat },
    Dir { stat: Stat },
    Link { target: OsString, stat: Stat },
}

impl Entry {
    fn stat(&self) -> &Stat {
        match self {
            Entry::File { stat, .. } | Entry::Dir { stat } | Entry::Link { stat, .. } => stat,
        }
    }
}

/// The workspace's files an export reads: a directory descriptor, and the
/// last parent directory opened beneath it (siblings come together in a
/// sorted change list).
struct Source {
    /// `None` when the workspace has no such directory: nothing to export.
    root: Option<OwnedFd>,
    last: Option<(PathBuf, OwnedFd)>,
}

impl Source {
    fn open(root: &Path, under: &Path) -> io::Result<Source> {
        let trusted = beneath::open_trusted(root)?;
        let root = match beneath::open_dir_beneath(trusted.as_fd(), under) {
            Ok(dir) => Some(dir),
            Err(e) if gone_or_changed(&e) => None,
            Err(e) => return Err(e),
        };
        Ok(Source { root, last: None })
    }

    /// What is at `rel` now, opened; `None` when nothing exportable is.
    fn entry(&mut self, rel: &Path) -> io::Result<Option<Entry>> {
        let names = beneath::names(rel)?;
        let Some(name) = names.last() else {
            return Ok(None);
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        for _ in 0..ATTEMPTS {
            let Opened::Yes(dir) = self.parent(parent)? else {
                return Ok(None);
            };
            let Some(stat) = beneath::stat_at(dir.as_fd(), name)? else {
                return Ok(None);
            };
            let opened = match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => match beneath::open_file(dir.as_fd(), name)? {
                    Opened::Yes((file, stat)) => Opened::Yes(Entry::File { file, stat }),
                    Opened::Gone => Opened::Gone,
                    Opened::Changed => Opened::Changed,
                },
                FileType::Symlink => match beneath::read_link(dir.as_fd(), name)? {
                    Opened::Yes(target) => Opened::Yes(Entry::Link { target, stat }),
                    Opened::Gone => Opened::Gone,
                    Opened::Changed => Opened::Changed,
                },
                FileType::Directory => Opened::Yes(Entry::Dir { stat }),
                _ => Opened::Gone,
            };
            match opened {
                Opened::Yes(entry) => return Ok(Some(entry)),
                Opened::Gone => return Ok(None),
                Opened::Changed => self.last = None,
            }
        }
        Err(changed(rel))
    }

    /// The directory `rel` beneath the root, opened.
    fn parent(&mut self, rel: &Path) -> io::Result<Opened<OwnedFd>> {
        let Some(root) = &self.root else {
            return Ok(Opened::Gone);
        };
        if let Some((path, fd)) = &self.last
            && path == rel
        {
            return Ok(Opened::Yes(fd.try_clone()?));
        }
        match beneath::open_dir_beneath(root.as_fd(), rel) {
            Ok(dir) => {
                self.last = Some((rel.to_path_buf(), dir.try_clone()?));
                Ok(Opened::Yes(dir))
            }
            // No directory at `rel` now (a link is none to an export):
            // nothing beneath it is there to export.
            Err(e) if gone_or_changed(&e) => Ok(Opened::Gone),
            Err(e) => Err(e),
        }
    }
}

fn gone_or_changed(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
    )
}
