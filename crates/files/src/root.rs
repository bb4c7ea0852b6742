//! [`Root`]: a workspace directory and the file operations inside it.
//!
//! Every operation resolves its path through [`resolve`](crate::resolve),
//! then acts relative to a directory fd it got that way, so nothing is
//! looked up twice by name and a symlink swapped in mid-operation cannot
//! redirect it. Operations that act on a name itself (remove, rename, the
//! final step of a write) resolve its parent directory and use the last
//! component as it is, so a symlink is removed or renamed, never its target.

use crate::FilesError;
use crate::resolve::{self, Fail, Resolution};
use berth_proto::{FileEntry, FileKind, WorkspacePath, exact_path};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Permissions of a file created by [`Root::write`] (umask aside).
const NEW_FILE_MODE: u32 = 0o644;
const NEW_DIR_MODE: u32 = 0o755;

/// How directories are opened to look things up in them.
const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY);

/// The same limit as path resolution, for following a write's last symlink.
const MAX_LINKS: usize = 40;

/// A workspace directory, held open. All paths are relative to it and no
/// operation reaches outside it.
#[derive(Debug)]
pub struct Root {
    /// An `O_PATH` fd on the directory: every lookup starts here, so a
    /// rename of the directory itself does not change what it means.
    fd: OwnedFd,
    /// The directory as it was named when opened, absolute.
    path: PathBuf,
    how: Resolution,
}

impl Root {
    /// Opens `dir` (which the caller trusts: it may itself be reached through
    /// symlinks) as a workspace root, with the best resolution the kernel has.
    /// A missing `dir` is [`FilesError::NotFound`] naming it.
    pub fn open(dir: &Path) -> Result<Root, FilesError> {
        let mut root = Root::open_with(dir, Resolution::Walk)?;
        root.how = resolve::probe(root.fd.as_fd());
        Ok(root)
    }

    /// Opens `dir` confining paths the way `how` says. [`Root::open`] picks
    /// for itself; this is for forcing the walk where openat2 is present.
    pub fn open_with(dir: &Path, how: Resolution) -> Result<Root, FilesError> {
        let open_root = |source: std::io::Error| FilesError::OpenRoot {
            path: dir.to_path_buf(),
            source,
        };
        let path = std::path::absolute(dir).map_err(open_root)?;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(&path, flags, Mode::empty()).map_err(|e| match e {
            // A workspace whose directory is gone: callers tell this apart.
            Errno::NOENT => FilesError::NotFound(path.display().to_string()),
            Errno::NOTDIR => FilesError::NotADirectory(path.display().to_string()),
            other => open_root(other.into()),
        })?;
        Ok(Root { fd, path, how })
    }

    /// The root directory as a host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How paths are confined on this machine.
    pub fn resolution(&self) -> Resolution {
        self.how
    }

    /// The contents of the file `p`, following symlinks inside.
    pub fn read(&self, p: &WorkspacePath) -> Result<Vec<u8>, FilesError> {
        let mut data = Vec::new();
        self.open_file(p)?
            .read_to_end(&mut data)
            .map_err(|source| io(source, p, "read"))?;
        Ok(data)
    }

    /// The regular file `p`, following symlinks inside, opened for
    /// reading: what was checked is what is read, however the path
    /// changes afterwards.
    pub fn open_file(&self, p: &WorkspacePath) -> Result<std::fs::File, FilesError> {
        // Non-blocking so that a FIFO planted in the workspace cannot hang
        // the reader; it is refused below as not a regular file.
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = self
            .open_rel(p.as_str(), flags, true)
            .map_err(|f| fail(f, p, "read"))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| errno(e, p, "read"))?;
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => Ok(std::fs::File::from(fd)),
            FileType::Directory => Err(FilesError::IsADirectory(p.to_string())),
            _ => Err(FilesError::NotAFile(p.to_string())),
        }
    }

    /// Writes `data` to `p`, creating its parent directories. An existing
    /// file keeps its permissions; a new one gets 0644 (less the umask).
    pub fn write(&self, p: &WorkspacePath, data: &[u8]) -> Result<(), FilesError> {
        self.write_file(p, data, None)
    }

    /// Writes `data` to `p` with the permission bits `mode`.
    pub fn write_with_mode(
        &self,
        p: &WorkspacePath,
        data: &[u8],
        mode: u32,
    ) -> Result<(), FilesError> {
        self.write_file(p, data, Some(mode & 0o7777))
    }

    /// The entries of the directory `dir`, sorted by name, with paths
    /// relative to the root. Symlinks are listed as symlinks.
    pub fn list(&self, dir: &WorkspacePath) -> Result<Vec<FileEntry>, FilesError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY;
        let fd = self
            .open_rel(dir.as_str(), flags, true)
            .map_err(|f| fail(f, dir, "list"))?;
        let mut entries = Vec::new();
        let mut stream = rustix::fs::Dir::read_from(&fd).map_err(|e| errno(e, dir, "list"))?;
        while let Some(entry) = stream.read() {
            let entry = entry.map_err(|e| errno(e, dir, "list"))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let stat = match rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed since the directory was read.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(errno(e, dir, "list")),
            };
            let path = if dir.is_root() {
                name.to_vec()
            } else {
                [dir.as_str().as_bytes(), b"/", name].concat()
            };
            entries.push(entry_of(&path, &stat));
        }
        entries.sort_by(|a, b| a.raw_path().cmp(&b.raw_path()));
        Ok(entries)
    }

    /// What `p` is; a symlink is reported as a symlink, not as its target.
    pub fn stat(&self, p: &WorkspacePath) -> Result<FileEntry, FilesError> {
        let fd = self
            .open_rel(p.as_str(), OFlags::PATH, false)
            .map_err(|f| fail(f, p, "stat"))?;
        let stat = rustix::fs::fstat(&fd).map_err(|e| errno(e, p, "stat"))?;
        Ok(entry_of(p.as_str().as_bytes(), &stat))
    }

    /// Removes a file, a symlink (not its target) or a directory with
    /// everything in it.
    pub fn remove(&self, p: &WorkspacePath) -> Result<(), FilesError> {
        let (dir, name) = self.parent_of(p, "removed", "remove")?;
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| errno(e, p, "remove"))?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree(&dir, name).map_err(|e| errno(e, p, "remove"))
        } else {
            rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(|e| errno(e, p, "remove"))
        }
    }

    /// Creates the directory `p` and any missing parents; an existing
    /// directory is fine.
    pub fn mkdir(&self, p: &WorkspacePath) -> Result<(), FilesError> {
        self.make_dirs(p.as_str(), p)
    }

    /// Moves `from` to `to`, creating `to`'s parents. A symlink is moved
    /// as a symlink; an existing file at `to` is replaced.
    pub fn rename(&self, from: &WorkspacePath, to: &WorkspacePath) -> Result<(), FilesError> {
        let (from_dir, from_name) = self.parent_of(from, "renamed", "rename")?;
        if to.is_root() {
            return Err(FilesError::Root("replaced"));
        }
        self.make_dirs(parent(to), to)?;
        let (to_dir, to_name) = self.parent_of(to, "replaced", "rename")?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name).map_err(|e| match e {
            Errno::NOENT => FilesError::NotFound(from.to_string()),
            other => FilesError::Rename {
                from: from.to_string(),
                to: to.to_string(),
                source: other.into(),
            },
        })
    }

    /// A host path for the directory `p`, checked to lead where the
    /// confined resolution leads (for a command's working directory).
    pub fn resolve_dir(&self, p: &WorkspacePath) -> Result<PathBuf, FilesError> {
        let dir = self
            .open_rel(p.as_str(), DIR_PATH, true)
            .map_err(|f| fail(f, p, "use directory"))?;
        let confined = rustix::fs::fstat(&dir).map_err(|e| errno(e, p, "use directory"))?;
        let host = p.under(&self.path);
        let by_name = std::fs::metadata(&host).map_err(|source| io(source, p, "use directory"))?;
        if by_name.dev() != confined.st_dev || by_name.ino() != confined.st_ino {
            return Err(FilesError::Changed(p.to_string()));
        }
        Ok(host)
    }

    fn open_rel(&self, rel: &str, flags: OFlags, follow: bool) -> Result<OwnedFd, Fail> {
        resolve::open(self.fd.as_fd(), self.how, rel, flags, Mode::empty(), follow)
    }

    /// Creates `dir` and its missing parents, naming `asked` (the path the
    /// caller gave) in errors.
    fn make_dirs(&self, dir: &str, asked: &WorkspacePath) -> Result<(), FilesError> {
        // Usually the directory is there already: one lookup instead of one
        // per level.
        if self.open_rel(dir, DIR_PATH, true).is_ok() {
            return Ok(());
        }
        let parts: Vec<&str> = dir.split('/').filter(|part| !part.is_empty()).collect();
        for (depth, part) in parts.iter().enumerate() {
            let parent = self
                .open_rel(&parts[..depth].join("/"), DIR_PATH, true)
                .map_err(|f| fail(f, asked, "create directory"))?;
            match rustix::fs::mkdirat(&parent, *part, Mode::from_raw_mode(NEW_DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(errno(e, asked, "create directory")),
            }
        }
        // What exists may be a file, or a symlink leading elsewhere.
        self.open_rel(dir, DIR_PATH, true)
            .map(drop)
            .map_err(|f| fail(f, asked, "create directory"))
    }

    /// The directory holding `p` and `p`'s last component.
    fn parent_of<'p>(
        &self,
        p: &'p WorkspacePath,
        refused: &'static str,
        op: &'static str,
    ) -> Result<(OwnedFd, &'p str), FilesError> {
        let name = p.components().last().ok_or(FilesError::Root(refused))?;
        let dir = self
            .open_rel(parent(p), DIR_PATH, true)
            .map_err(|f| fail(f, p, op))?;
        Ok((dir, name))
    }

    fn write_file(
        &self,
        p: &WorkspacePath,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), FilesError> {
        let name = p
            .components()
            .last()
            .ok_or_else(|| FilesError::IsADirectory(p.to_string()))?;
        self.make_dirs(parent(p), p)?;
        // Where the data goes: `p`, or the file a symlink at `p` leads to
        // (the link's target is written, not the link replaced).
        let mut dir_rel = parent(p).to_owned();
        let mut name = name.to_owned();
        for _ in 0..=MAX_LINKS {
            let dir = self
                .open_rel(&dir_rel, DIR_PATH, true)
                .map_err(|f| fail(f, p, "write"))?;
            let existing = match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            {
                Ok(stat) => Some(stat),
                Err(Errno::NOENT) => None,
                Err(e) => return Err(errno(e, p, "write")),
            };
            let Some(stat) = existing else {
                let exact = mode.is_some();
                return replace(&dir, &name, data, mode.unwrap_or(NEW_FILE_MODE), exact)
                    .map_err(|e| errno(e, p, "write"));
            };
            match FileType::from_raw_mode(stat.st_mode) {
                FileType::Directory => return Err(FilesError::IsADirectory(p.to_string())),
                FileType::Symlink => {
                    let target = rustix::fs::readlinkat(&dir, name.as_str(), Vec::new())
                        .map_err(|e| errno(e, p, "write"))?;
                    let target = target
                        .into_string()
                        .map_err(|_| FilesError::NotAFile(p.to_string()))?;
                    if target.starts_with('/') {
                        return Err(escapes(p));
                    }
                    let joined = if dir_rel.is_empty() {
                        target
                    } else {
                        format!("{dir_rel}/{target}")
                    };
                    let (head, last) = match joined.rsplit_once('/') {
                        Some((head, last)) => (head.to_owned(), last.to_owned()),
                        None => (String::new(), joined),
                    };
                    if last.is_empty() || last == "." || last == ".." {
                        // The link names a directory.
                        return Err(FilesError::IsADirectory(p.to_string()));
                    }
                    dir_rel = head;
                    name = last;
                }
                _ => {
                    let keep = mode.unwrap_or(stat.st_mode & 0o7777);
                    return replace(&dir, &name, data, keep, true)
                        .map_err(|e| errno(e, p, "write"));
                }
            }
        }
        Err(FilesError::SymlinkLoop(p.to_string()))
    }
}

/// `p` without its last component (empty for the root).
fn parent(p: &WorkspacePath) -> &str {
    p.as_str().rsplit_once('/').map_or("", |(head, _)| head)
}

/// Tells temporary files of concurrent writes in one process apart.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` into a new file beside `name` and renames it over `name`,
/// so a reader sees the old content or the new, never a mix. The data is
/// not fsynced: a workspace is scratch space and speed matters more than
/// surviving a power cut. `exact`: set `mode` as it is, past the umask
/// (it is the permission an existing file had).
fn replace(dir: &OwnedFd, name: &str, data: &[u8], mode: u32, exact: bool) -> Result<(), Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let pid = std::process::id();
    let (temp, fd) = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        // Not derived from `name`, so a 255-byte name still fits.
        let temp = format!(".berth-write-{pid}-{n}.tmp");
        match rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(mode)) {
            Ok(fd) => break (temp, fd),
            // Left by a process with the same pid that was killed mid-write.
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    };
    let written = (|| {
        if exact {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        }
        let mut file = std::fs::File::from(fd);
        file.write_all(data)
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
        drop(file);
        rustix::fs::renameat(dir, temp.as_str(), dir, name)
    })();
    if written.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    }
    written
}

/// Removes the directory `name` in `parent` and everything under it, never
/// following a symlink. By hand because `std::fs::remove_dir_all` takes a
/// path, which would be looked up again by name after it was checked.
fn remove_tree(parent: &impl AsFd, name: &str) -> Result<(), Errno> {
    remove_tree_bytes(parent.as_fd(), name.as_bytes())
}

/// Removes the directory `name` in `parent` and everything under it,
/// relative to descriptors all the way down, never following a symlink.
pub fn remove_tree_at(parent: rustix::fd::BorrowedFd<'_>, name: &[u8]) -> std::io::Result<()> {
    Ok(remove_tree_bytes(parent, name)?)
}

fn remove_tree_bytes(parent: rustix::fd::BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    // Entries created while the tree is emptied make the last unlink fail
    // with ENOTEMPTY; another pass picks them up.
    for _ in 0..3 {
        let mut stream = rustix::fs::Dir::read_from(&dir)?;
        while let Some(entry) = stream.read() {
            let entry = entry?;
            let child = entry.file_name().to_bytes();
            if child == b"." || child == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                FileType::Directory => true,
                FileType::Unknown => {
                    let stat = rustix::fs::statat(&dir, child, AtFlags::SYMLINK_NOFOLLOW)?;
                    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                }
                _ => false,
            };
            let removed = if is_dir {
                remove_tree_bytes(dir.as_fd(), child)
            } else {
                rustix::fs::unlinkat(&dir, child, AtFlags::empty())
            };
            match removed {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Err(Errno::NOTEMPTY) => continue,
            other => return other,
        }
    }
    Err(Errno::NOTEMPTY)
}

/// The entry of the path `raw`, kept exact whether or not it is UTF-8.
fn entry_of(raw: &[u8], stat: &Stat) -> FileEntry {
    let (path, path_bytes) = exact_path(raw);
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileEntry {
        path,
        path_bytes,
        kind,
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mode: stat.st_mode & 0o7777,
        modified: stat.st_mtime,
    }
}

fn escapes(p: &WorkspacePath) -> FilesError {
    FilesError::Escapes(p.to_string())
}

fn fail(fail: Fail, p: &WorkspacePath, op: &'static str) -> FilesError {
    match fail {
        Fail::Escapes => escapes(p),
        Fail::Loop => FilesError::SymlinkLoop(p.to_string()),
        Fail::Errno(e) => errno(e, p, op),
    }
}

fn errno(e: Errno, p: &WorkspacePath, op: &'static str) -> FilesError {
    let path = p.to_string();
    match e {
        Errno::NOENT => FilesError::NotFound(path),
        Errno::NOTDIR => FilesError::NotADirectory(path),
        Errno::ISDIR => FilesError::IsADirectory(path),
        Errno::EXIST => FilesError::AlreadyExists(path),
        Errno::LOOP => FilesError::SymlinkLoop(path),
        other => io(other.into(), p, op),
    }
}

fn io(source: std::io::Error, p: &WorkspacePath, op: &'static str) -> FilesError {
    match Errno::from_io_error(&source) {
        Some(Errno::NOENT) => FilesError::NotFound(p.to_string()),
        _ => FilesError::Io {
            op,
            path: p.to_string(),
            source,
        },
    }
}
