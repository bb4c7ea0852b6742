//! Export of a change list: the added and modified entries of an upper
//! directory as a `.tar.zst` archive or copied into a host directory, and
//! extraction of such an archive. Deleted paths cannot travel as files;
//! they are returned in the summary.

use berth_core::{Change, ChangeKind, ExportSummary, FileKind};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

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

/// Writes the added and modified entries of `root` (the upper directory
/// under the workspace root) listed in `changes` into a zstd-compressed tar
/// at `out`.
pub fn export_archive(
    root: &Path,
    changes: &[Change],
    out: &Path,
    ids: IdShift,
) -> io::Result<ExportSummary> {
    let mut summary = summary_of(changes);
    let file = BufWriter::new(File::create(out)?);
    let encoder = zstd::Encoder::new(file, 3)?;
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    for change in exported(changes) {
        let path = root.join(&change.path);
        let meta = fs::symlink_metadata(&path)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_uid(ids.unshift(meta.uid()).into());
        header.set_gid(ids.unshift(meta.gid()).into());
        match change.file_kind {
            FileKind::File => {
                builder.append_data(&mut header, &change.path, File::open(&path)?)?;
                summary.bytes += meta.len();
            }
            FileKind::Symlink => {
                header.set_size(0);
                builder.append_link(&mut header, &change.path, fs::read_link(&path)?)?;
            }
            _ => {
                header.set_size(0);
                builder.append_data(&mut header, &change.path, io::empty())?;
            }
        }
        summary.entries += 1;
    }
    builder.into_inner()?.finish()?.flush()?;
    Ok(summary)
}

/// Copies the added and modified entries of `root` listed in `changes`
/// into the host directory `dest` (created if missing), with their modes;
/// files are owned by whoever runs this.
pub fn export_dir(root: &Path, changes: &[Change], dest: &Path) -> io::Result<ExportSummary> {
    let mut summary = summary_of(changes);
    fs::create_dir_all(dest)?;
    for change in exported(changes) {
        let from = root.join(&change.path);
        let to = dest.join(&change.path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        let meta = fs::symlink_metadata(&from)?;
        match change.file_kind {
            FileKind::File => {
                remove_existing(&to)?;
                summary.bytes += fs::copy(&from, &to)?;
            }
            FileKind::Symlink => {
                remove_existing(&to)?;
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            }
            _ => {
                fs::create_dir_all(&to)?;
                fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
        }
        summary.entries += 1;
    }
    Ok(summary)
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks an archive written by [`export_archive`] into `dest`. Entries
/// that would land outside `dest` (absolute paths, `..`) are refused by
/// the tar reader; owners are not restored.
pub fn extract_archive(archive: &Path, dest: &Path) -> io::Result<u64> {
    fs::create_dir_all(dest)?;
    let decoder = zstd::Decoder::new(File::open(archive)?)?;
    let mut tar = tar::Archive::new(decoder);
    tar.set_preserve_ownerships(false);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    let mut count = 0;
    for entry in tar.entries()? {
        let mut entry = entry?;
        if !entry.unpack_in(dest)? {
            let path = entry.path()?.display().to_string();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("archive entry `{path}` leads outside `{}`", dest.display()),
            ));
        }
        count += 1;
    }
    Ok(count)
}
