//! Reading trees in overlayfs upper-dir format: whiteouts, opaque
//! directories, and what a stack of such trees shows as one merged view.

use rustix::fs::FileType;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The xattr overlayfs sets on a directory that hides the layers below.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What the change list compares of an entry, from a stat of a layer's
/// path or of a descriptor in a workspace's upper directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// The whole `st_mode`: kind and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub rdev: u64,
}

impl Meta {
    pub fn kind(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == FileType::Directory
    }

    /// Whether the entry is a whiteout: a 0:0 character device.
    pub fn is_whiteout(&self) -> bool {
        self.kind() == FileType::CharacterDevice && self.rdev == 0
    }
}

impl From<&Metadata> for Meta {
    fn from(meta: &Metadata) -> Self {
        Meta {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            size: meta.len(),
            rdev: meta.rdev(),
        }
    }
}

impl From<&rustix::fs::Stat> for Meta {
    fn from(stat: &rustix::fs::Stat) -> Self {
        Meta {
            mode: stat.st_mode,
            uid: stat.st_uid,
            gid: stat.st_gid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            rdev: stat.st_rdev,
        }
    }
}

/// Whether a directory is opaque (lower layers' contents hidden).
pub fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut value), Ok(n) if n >= 1 && value[0] == b'y')
}

/// Marks a directory opaque.
pub fn set_opaque(dir: &Path) -> io::Result<()> {
    rustix::fs::lsetxattr(dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
        .map_err(io::Error::from)
}

/// Creates a whiteout at `path`, hiding what lower layers have there.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .map_err(io::Error::from)
}

fn lstat(path: &Path) -> io::Result<Option<Meta>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(Meta::from(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A path under a regular file: nothing there.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// An entry of the merged view of a stack of layers.
#[derive(Debug)]
pub struct Found {
    /// The entry's host path in the topmost layer that holds it.
    pub path: PathBuf,
    pub meta: Meta,
}

/// Looks up `rel` in the merged view of `layers` (topmost first), as
/// overlayfs would show it: whiteouts and opaque directories stop the
/// search, and a non-directory hides everything below it.
///
/// Layers are frozen, so they are read by path; every component is
/// `lstat`ed on the way, so no link in them is ever followed.
pub fn lookup(layers: &[PathBuf], rel: &Path) -> io::Result<Option<Found>> {
    let components: Vec<_> = rel.components().collect();
    'layers: for layer in layers {
        let mut at = layer.clone();
        let mut hides_below = false;
        for (i, component) in components.iter().enumerate() {
            at.push(component);
            let Some(meta) = lstat(&at)? else {
                if hides_below {
                    return Ok(None);
                }
                continue 'layers;
            };
            if meta.is_whiteout() {
                return Ok(None);
            }
            if i + 1 == components.len() {
                return Ok(Some(Found { path: at, meta }));
            }
            if !meta.is_dir() {
                return Ok(None);
            }
            hides_below |= is_opaque(&at);
        }
        let meta = Meta::from(&fs::symlink_metadata(&at)?);
        return Ok(Some(Found { path: at, meta }));
    }
    Ok(None)
}

/// The directories, topmost first, that overlayfs merges to show
/// directory `rel` of `layers`; empty when `rel` is no directory there.
fn merged_dirs(layers: &[PathBuf], rel: &Path) -> io::Result<Vec<PathBuf>> {
    let components: Vec<_> = rel.components().collect();
    let mut dirs = Vec::new();
    'layers: for layer in layers {
        let mut at = layer.clone();
        let mut hides_below = false;
        for (i, component) in components.iter().enumerate() {
            at.push(component);
            let Some(meta) = lstat(&at)? else {
                if hides_below {
                    return Ok(dirs);
                }
                continue 'layers;
            };
            if meta.is_whiteout() || !meta.is_dir() {
                return Ok(dirs);
            }
            let last = i + 1 == components.len();
            hides_below |= is_opaque(&at) && !last;
            if last && is_opaque(&at) {
                dirs.push(at);
                return Ok(dirs);
            }
        }
        dirs.push(at);
        if hides_below {
            return Ok(dirs);
        }
    }
    Ok(dirs)
}

/// The children of directory `rel` in the merged view of `layers`
/// (topmost first), by name.
pub fn list(layers: &[PathBuf], rel: &Path) -> io::Result<BTreeMap<OsString, Found>> {
    let mut seen: BTreeMap<OsString, Option<Found>> = BTreeMap::new();
    for dir in merged_dirs(layers, rel)? {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if seen.contains_key(&name) {
                continue;
            }
            let meta = Meta::from(&entry.metadata()?);
            let value = (!meta.is_whiteout()).then(|| Found {
                path: entry.path(),
                meta,
            });
            seen.insert(name, value);
        }
    }
    Ok(seen
        .into_iter()
        .filter_map(|(name, found)| found.map(|f| (name, f)))
        .collect())
}

/// Adds `shift` to the owner and group of every entry under `root` whose
/// ids are below `range`: how a tree made by host root comes to belong to
/// the workspace's root user inside its user namespace.
pub fn shift_ownership(root: &Path, shift: u32, range: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(root)?;
    shift_one(root, &meta, shift, range)?;
    if meta.is_dir() {
        for entry in fs::read_dir(root)? {
            shift_ownership(&entry?.path(), shift, range)?;
        }
    }
    Ok(())
}

fn shift_one(path: &Path, meta: &Metadata, shift: u32, range: u32) -> io::Result<()> {
    let shifted = |id: u32| if id < range { id + shift } else { id };
    let (uid, gid) = (shifted(meta.uid()), shifted(meta.gid()));
    if (uid, gid) != (meta.uid(), meta.gid()) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
        // chown clears set-id bits; keep what the tree had.
        if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

/// Copies a tree with everything overlayfs cares about (owners, modes,
/// times, xattrs, device nodes, hard links). This uses `cp -a` because it
/// gets every one of those right, including trusted xattrs and whiteouts;
/// a hand-written copy would have to redo each.
pub fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let output = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from)
        .arg(to)
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cp -a {} {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Removes a tree; a missing tree is already removed.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
