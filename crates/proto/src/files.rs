//! Files in a workspace: what listing and stat report.

use crate::path::WorkspacePath;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a directory listing, or the answer to a stat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the workspace root.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub modified: i64,
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
