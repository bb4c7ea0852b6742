//! The files of one mirror beside its repository (its lock, a partial
//! first clone, bundles being made) and what a holder of the lock that died
//! left among them, found and removed under the lock.

use crate::GitError;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> GitError + use<> {
    let path = path.to_path_buf();
    move |source| GitError::Io { path, source }
}

/// Whether taking a lock waits for its holder.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Wait {
    Yes,
    No,
}

/// Opens and locks the lock file at `path`; `None` when it is held and
/// `wait` is [`Wait::No`]. A lock file is removed only by whoever holds it
/// (see [`sweep`]), so a lock taken on a file that is no longer at `path`
/// is let go and taken again on the new one.
pub(crate) fn take_lock(path: &Path, wait: Wait) -> io::Result<Option<File>> {
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        match wait {
            Wait::Yes => file.lock()?,
            Wait::No => match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            },
        }
        let held = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
}

/// The files of one mirror.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    root: PathBuf,
    name: String,
}

impl Entry {
    pub(crate) fn new(root: &Path, name: &str) -> Entry {
        Entry {
            root: root.to_path_buf(),
            name: name.to_owned(),
        }
    }

    pub(crate) fn repository(&self) -> PathBuf {
        self.root.join(format!("{}.git", self.name))
    }

    pub(crate) fn lock_file(&self) -> PathBuf {
        self.root.join(format!("{}.lock", self.name))
    }

    pub(crate) fn partial(&self) -> PathBuf {
        self.root.join(format!("{}.partial", self.name))
    }

    pub(crate) fn scratch(&self) -> PathBuf {
        self.root.join("scratch")
    }

    /// The prefix of this mirror's bundle directories in [`Entry::scratch`].
    pub(crate) fn scratch_prefix(&self) -> String {
        format!("{}-", self.name)
    }

    /// Marks the locked mirror as held by this process, first clearing what
    /// a holder that died left (the lock file still names it).
    pub(crate) fn claim(&self, lock: &File) -> io::Result<()> {
        if lock.metadata()?.len() > 0 {
            self.clear_leftovers()?;
        }
        lock.set_len(0)?;
        let mut writer = lock;
        writeln!(writer, "{}", std::process::id())
    }

    /// Removes everything a git process or a berth process working on this
    /// mirror makes and would have removed had it finished. Only for a
    /// mirror whose lock is held by the caller.
    pub(crate) fn clear_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        remove(&self.partial(), &mut removed)?;
        let prefix = self.scratch_prefix();
        for entry in read_dir(&self.scratch())? {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove(&entry.path(), &mut removed)?;
            }
        }
        let repository = self.repository();
        if repository.is_dir() {
            clear_git_leftovers(&repository, &mut removed)?;
        }
        Ok(removed)
    }
}

/// Removes what a git process killed in a bare repository left: its lock
/// files (`packed-refs.lock`, `refs/heads/x.lock`, ...), which would stop
/// the next fetch, and the temporary packs and quarantines of a transfer.
fn clear_git_leftovers(repository: &Path, removed: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut pending = vec![repository.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in read_dir(&dir)? {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type()?.is_dir();
            if path == repository.join("objects") {
                // Objects are never locked; transfers leave these.
                for entry in read_dir(&path)? {
                    if entry.file_name().to_string_lossy().starts_with("incoming-") {
                        remove(&entry.path(), removed)?;
                    }
                }
                for entry in read_dir(&path.join("pack"))? {
                    if entry.file_name().to_string_lossy().starts_with("tmp_") {
                        remove(&entry.path(), removed)?;
                    }
                }
            } else if name.ends_with(".lock") {
                remove(&path, removed)?;
            } else if is_dir {
                pending.push(path);
            }
        }
    }
    Ok(())
}

/// The entries of `dir`; none when it does not exist.
fn read_dir(dir: &Path) -> io::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Removes a file or a directory tree, noting it; absent is fine.
fn remove(path: &Path, removed: &mut Vec<PathBuf>) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            removed.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Clears the leftovers of every mirror under `root` nobody holds: those a
/// dead holder left, or, with `everything`, all of them, and the lock files
/// of mirrors that do not exist.
pub(crate) fn sweep(root: &Path, everything: bool) -> Result<Vec<PathBuf>, GitError> {
    let mut removed = Vec::new();
    for name in names(root)? {
        let entry = Entry::new(root, &name);
        let lock_path = entry.lock_file();
        let swept = (|| {
            if !everything && !dead_holder(&lock_path) {
                return Ok(());
            }
            let Some(lock) = take_lock(&lock_path, Wait::No)? else {
                // In use.
                return Ok(());
            };
            removed.extend(entry.clear_leftovers()?);
            if everything && !entry.repository().exists() {
                remove(&lock_path, &mut removed)?;
            } else {
                lock.set_len(0)?;
            }
            Ok(())
        })();
        swept.map_err(io_error(&lock_path))?;
    }
    Ok(removed)
}

/// The names of the mirrors that have anything under `root`.
fn names(root: &Path) -> Result<std::collections::BTreeSet<String>, GitError> {
    let mut names = std::collections::BTreeSet::new();
    let entries = read_dir(root).map_err(io_error(root))?;
    let scratch = read_dir(&root.join("scratch")).map_err(io_error(root))?;
    for entry in &entries {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if let Some((name, "git" | "lock" | "partial")) = file_name.rsplit_once('.') {
            names.insert(name.to_owned());
        }
    }
    for entry in &scratch {
        if let Some((name, _)) = entry.file_name().to_string_lossy().split_once('-') {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

/// Whether the lock file says its last holder died holding it: a holder
/// writes into it, and empties it when it lets go in good order.
fn dead_holder(lock_path: &Path) -> bool {
    std::fs::metadata(lock_path).is_ok_and(|m| m.len() > 0)
}

/// Whether any mirror under `root` was left by a holder that died, so
/// that [`sweep`] without `everything` has something to do.
pub(crate) fn any_dead_holder(root: &Path) -> Result<bool, GitError> {
    Ok(names(root)?
        .iter()
        .any(|name| dead_holder(&Entry::new(root, name).lock_file())))
}
