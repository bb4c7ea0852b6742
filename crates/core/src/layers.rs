//! Types of the layer operations a runtime may offer beyond running
//! commands: snapshots, reset, change listing, export and fork. Runtimes
//! without layers answer these with [`crate::RuntimeError::Unsupported`].

use crate::{FileKind, WorkspaceId};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// What happened to one path since the workspace's base state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One changed path, relative to the workspace root.
///
/// A workspace may name a file with bytes that are not UTF-8. Such a
/// path is carried exactly in `path_bytes` (standard base64 of the raw
/// bytes) and `path` holds it for display only, each invalid sequence
/// replaced by U+FFFD; two such paths may share a `path` but never a
/// `path_bytes`. A UTF-8 path has no `path_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub path: String,
    /// The path's raw bytes in standard base64, present only when they are
    /// not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes: Option<String>,
    pub kind: ChangeKind,
    /// What the path is (for deletions: what it was).
    #[schema(value_type = String)]
    pub file_kind: FileKind,
}

impl Change {
    /// The change of `path`, kept exact whether or not it is UTF-8.
    pub fn new(path: &Path, kind: ChangeKind, file_kind: FileKind) -> Self {
        let (path, path_bytes) = crate::proto::exact_path(path.as_os_str().as_bytes());
        Change {
            path,
            path_bytes,
            kind,
            file_kind,
        }
    }

    /// The path's exact bytes.
    pub fn raw_path(&self) -> Cow<'_, [u8]> {
        crate::proto::raw_path(&self.path, self.path_bytes.as_deref())
    }
}

/// Whether `id` can be a snapshot's id in any runtime: 1-128 lowercase
/// letters and digits (a layer's hash, an image tag's ULID).
pub fn is_snapshot_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// A frozen state of a workspace that it can be reset to or forked from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    /// The snapshot's id (the id of the layer holding it).
    pub id: String,
    /// The workspace it was taken from.
    pub workspace: WorkspaceId,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// Where exported changes go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportTarget {
    /// A `.tar.zst` archive written at this host path.
    Archive {
        #[schema(value_type = String)]
        path: PathBuf,
    },
    /// Changed files copied into this host directory.
    Directory {
        #[schema(value_type = String)]
        path: PathBuf,
    },
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportSummary {
    /// Files, links and directories written.
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Paths deleted in the workspace; an export cannot carry them as files.
    pub deleted: Vec<String>,
}

/// What a garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    /// Ids of the layers removed.
    pub removed: Vec<String>,
    /// Workspaces removed because the registry no longer knows them.
    pub orphans: Vec<String>,
}
