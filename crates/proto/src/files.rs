//! Files in a workspace: what listing and stat report.

use crate::path::WorkspacePath;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a directory listing, or the answer to a stat.
///
/// A path that is not UTF-8 is carried exactly in `path_bytes`: see
/// [`exact_path`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the workspace root, for display: each sequence of
    /// bytes that is not UTF-8 replaced by U+FFFD.
    pub path: String,
    /// The path's raw bytes in standard base64, present only when they are
    /// not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    pub kind: FileKind,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub modified: i64,
}

impl FileEntry {
    /// The path's exact bytes.
    pub fn raw_path(&self) -> Cow<'_, [u8]> {
        raw_path(&self.path, self.path_bytes.as_deref())
    }
}

/// A path named by bytes a workspace chose, kept exact on a wire whose
/// paths are strings: its display form (each invalid sequence replaced by
/// U+FFFD) and, only when it is not UTF-8, its raw bytes in standard
/// base64. Two such paths may share a display form, never their bytes.
pub fn exact_path(raw: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(raw).into_owned(),
            Some(STANDARD.encode(raw)),
        ),
    }
}

/// The bytes of a path given as [`exact_path`] gives it: `path_bytes`
/// decoded, or `path` itself when there are none (or they are not base64).
pub fn raw_path<'a>(path: &'a str, path_bytes: Option<&str>) -> Cow<'a, [u8]> {
    match path_bytes.and_then(|bytes| STANDARD.decode(bytes).ok()) {
        Some(raw) => Cow::Owned(raw),
        None => Cow::Borrowed(path.as_bytes()),
    }
}

/// What happened to a path under a watched directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// Created, or moved in.
    Created,
    /// Contents or metadata changed.
    Modified,
    /// Removed, or moved away.
    Removed,
    /// Events were lost (the kernel's queue overflowed); rescan.
    Overflow,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Path relative to the workspace root; the watched directory itself
    /// for `overflow`.
    pub path: WorkspacePath,
    pub kind: WatchKind,
    /// Whether the path is a directory.
    #[serde(default)]
    pub dir: bool,
}
