//! The [`Runtime`] trait: how a workspace is isolated and where its files
//! live. The provider drives provisioning, caching and the registry; a
//! runtime only makes, runs and removes what it is told to.

use crate::layers::{Change, ExportSummary, ExportTarget, GcReport, Snapshot};
use crate::{ExecEvent, ExecRequest, FileEntry, PathError, ReadStream, Workspace, WorkspacePath};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// The events of one running command; the last is always `Exit`.
pub type ExecStream = tokio::sync::mpsc::Receiver<ExecEvent>;

/// The isolation a workspace actually has, reported as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Isolation {
    /// Whether commands are isolated from the host at all.
    pub isolated: bool,
    /// Namespaces in force (`mount`, `pid`, `net`, ...).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Limits enforced, as `memory=536870912`, `pids=64`, ...
    #[serde(default)]
    pub limits: Vec<String>,
    /// Whether a seccomp filter is in force.
    #[serde(default)]
    pub seccomp: bool,
    /// The network a workspace sees.
    pub network: String,
    /// Anything a user should know about this isolation.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// What isolated runtimes give a workspace where its spec leaves a limit
/// open: without them one workspace could take half the host's memory,
/// through its shared memory (`/dev/shm`) alone, or fill the host's disk
/// through `/tmp`. A spec's `limits.memory` and `limits.tmp` override
/// [`ResourceDefaults::memory`] and [`ResourceDefaults::tmp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDefaults {
    /// The memory limit of a workspace whose spec sets none.
    pub memory: u64,
    /// The size of the tmpfs at `/dev/shm`, at most the workspace's
    /// memory limit.
    pub shm: u64,
    /// The size of the tmpfs at `/tmp`, at most the workspace's memory
    /// limit: its pages are charged to the workspace's memory.
    pub tmp: u64,
}

impl ResourceDefaults {
    /// The most the default memory limit is, however large the host.
    pub const MEMORY_CAP: u64 = 4 << 30;
    /// The default size of `/dev/shm`, as Docker gives containers.
    pub const SHM: u64 = 64 << 20;
    /// The default size of `/tmp`.
    pub const TMP: u64 = 1 << 30;

    /// The defaults on a host with `ram` bytes of memory: half of it, at
    /// most [`Self::MEMORY_CAP`]; `/dev/shm` of [`Self::SHM`], `/tmp` of
    /// [`Self::TMP`].
    pub fn for_ram(ram: u64) -> Self {
        ResourceDefaults {
            memory: (ram / 2).clamp(1, Self::MEMORY_CAP),
            shm: Self::SHM,
            tmp: Self::TMP,
        }
    }

    /// The defaults on this host (its `MemTotal`; the cap if unknown),
    /// read once per process: each runtime's configuration and the
    /// provider's ask, and the host's memory does not change under them.
    pub fn for_this_host() -> Self {
        static HERE: std::sync::OnceLock<ResourceDefaults> = std::sync::OnceLock::new();
        *HERE.get_or_init(|| {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            let ram_kib = meminfo.lines().find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
            match ram_kib {
                Some(kib) => Self::for_ram(kib.saturating_mul(1024)),
                None => Self::for_ram(Self::MEMORY_CAP.saturating_mul(2)),
            }
        })
    }

    /// The memory limit of a workspace of `spec`.
    pub fn memory(&self, spec: &crate::Spec) -> u64 {
        spec.limits.memory.unwrap_or(self.memory)
    }

    /// The size of the `/dev/shm` of a workspace of `spec`.
    pub fn shm(&self, spec: &crate::Spec) -> u64 {
        self.shm.min(self.memory(spec))
    }

    /// The size of the `/tmp` of a workspace of `spec`: its `limits.tmp`
    /// or the default, at most its memory limit.
    pub fn tmp(&self, spec: &crate::Spec) -> u64 {
        spec.limits.tmp.unwrap_or(self.tmp).min(self.memory(spec))
    }

    /// What [`Isolation::notes`] says of a workspace of `spec` with a
    /// `memory` limit, a `/dev/shm` of `shm` bytes and a `/tmp` tmpfs of
    /// `tmp` bytes (`None`: on disk, as workspaces made before `/tmp` was
    /// bounded have it): the sizes, and where they come from.
    pub fn notes(spec: &crate::Spec, memory: u64, shm: u64, tmp: Option<u64>) -> [String; 3] {
        let source = match spec.limits.memory {
            Some(_) => "limits.memory",
            None => "the default, BERTH_DEFAULT_MEMORY",
        };
        let tmp = match tmp {
            Some(size) => format!(
                "/tmp is a tmpfs of {} ({}, at most the memory limit), starting with \
                 what the setup script left there: its files count against the memory \
                 limit; what is written there later is in no changes, export, snapshot, \
                 fork or cache, and a reset or restart brings back the provisioned /tmp",
                crate::spec::format_bytes(size),
                match spec.limits.tmp {
                    Some(_) => "limits.tmp",
                    None => "BERTH_TMP_SIZE",
                }
            ),
            None => "/tmp is on disk with the workspace's other files, unbounded: \
                     the workspace was made before /tmp was a tmpfs"
                .into(),
        };
        [
            format!(
                "memory limit {} ({source})",
                crate::spec::format_bytes(memory)
            ),
            format!(
                "/dev/shm is a tmpfs of {} (BERTH_SHM_SIZE, at most the memory limit)",
                crate::spec::format_bytes(shm)
            ),
            tmp,
        ]
    }
}

/// A runtime's failure, naming the workspace, path or resource involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("no such file or directory: `{0}`")]
    NotFound(String),
    #[error("no snapshot `{0}`")]
    SnapshotNotFound(String),
    #[error("path `{0}` leads outside the workspace")]
    Escapes(String),
    #[error("`{path}` is {problem}")]
    WrongKind { path: String, problem: &'static str },
    #[error("workspace {id} is gone from the runtime: {detail}")]
    Gone { id: String, detail: String },
    #[error("runtime `{runtime}` is unavailable: {reason}")]
    Unavailable { runtime: String, reason: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime `{runtime}` does not support {operation}")]
    Unsupported {
        runtime: String,
        operation: &'static str,
    },
    /// A request refused as the caller's mistake, where the message alone
    /// names the path or field: how an agent's refusal that carries no path
    /// apart (a working directory, a shell) or whose kind no variant above
    /// holds reaches the provider.
    #[error("{message}")]
    Refused { reason: Refusal, message: String },
    /// The workspace's agent did not answer an operation in time: it is
    /// stopped, wedged or starved.
    #[error(
        "its agent did not answer `{operation}` within {after:?}; it may be stopped or overloaded"
    )]
    AgentTimeout {
        operation: &'static str,
        after: std::time::Duration,
    },
    #[error(transparent)]
    MissingExit(#[from] crate::MissingExit),
    #[error("{0}")]
    Other(String),
}

/// Why a request was refused, for [`RuntimeError::Refused`]: each reason is
/// one way the caller's request can be wrong or not fit the workspace, so
/// front ends can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A path (a file, a directory, a working directory) does not exist.
    NotFound,
    /// A path leads outside the workspace.
    Escapes,
    /// A path is of the wrong kind: a directory where a file is needed, or
    /// the other way round.
    WrongKind,
    /// The request is malformed or makes no sense in its context.
    BadRequest,
    /// The command could not be started (no such program, say).
    NotStarted,
    /// Something already exists where the request would create it.
    AlreadyExists,
    /// The workspace does not let the path be changed: a read-only or
    /// immutable file or directory, or one the agent's user may not write.
    PermissionDenied,
    /// The workspace cannot offer what was asked: a session or terminal
    /// where there is no shell, a watch the system cannot set up.
    Unsupported,
}

impl RuntimeError {
    /// Wraps an I/O error with what was being done, mapping "not found".
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }
    /// The answer of a runtime that lacks `operation`.
    pub fn unsupported(runtime: &str, operation: &'static str) -> Self {
        RuntimeError::Unsupported {
            runtime: runtime.to_string(),
            operation,
        }
    }
}

/// One way of isolating workspaces. Every call names the workspace by its
/// registry record, whose `runtime_info` is what `create` returned.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// The name used in specs, `--runtime` and `BERTH_RUNTIME`.
    fn name(&self) -> &'static str;

    /// A one-line description for `berth runtimes`.
    fn description(&self) -> &'static str;

    /// Whether the runtime can be used on this machine; the reason if not.
    async fn available(&self) -> Result<(), String>;

    /// Makes the workspace's filesystem, empty or from the cache entry
    /// `from_cache`, and returns the runtime info to store with it.
    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError>;

    /// The workspace's files as the provider's own processes see them
    /// (where provider-side git runs), if the runtime exposes them.
    fn host_path(&self, ws: &Workspace) -> Option<PathBuf>;

    /// Moves a directory prepared on the host (a clone) into the workspace,
    /// replacing whatever was at `dest`.
    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError>;

    /// Starts the workspace so that commands can run; returns updated info.
    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError>;

    /// Stops everything running in the workspace, keeping its files.
    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError>;

    /// Removes the workspace and everything it holds. Removing what is
    /// already gone succeeds.
    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError>;

    /// Whether the workspace still exists in the runtime.
    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError>;

    /// The isolation in force for this workspace.
    fn isolation(&self, ws: &Workspace) -> Isolation;

    /// Runs a command. Cancelling the token, or dropping the stream, ends
    /// the command's whole process tree; the stream then ends with `Exit`.
    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError>;

    /// Opens a file for reading; its bytes are read as the stream is
    /// consumed, never all at once.
    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError>;

    /// Writes a file, creating its parent directories.
    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError>;

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError>;

    /// Removes a file, or a directory with everything in it.
    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError>;

    /// Saves the workspace's current state as the cache entry `key`.
    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError>;

    /// Whether the cache entry `key` exists.
    async fn has_cache(&self, key: &str) -> bool;

    /// Removes the cache entry `key`; removing a missing entry succeeds.
    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError>;

    /// The disk space the cache entry `key` holds beyond what it stands
    /// on, in bytes; `None` when this runtime cannot tell.
    async fn cache_size(&self, _key: &str) -> Result<Option<u64>, RuntimeError> {
        Ok(None)
    }

    /// Waits for the work the runtime goes on with after answering (such
    /// as preparing what makes the next reset fast); a process calls it
    /// before it ends so that nothing is left half done.
    async fn settle(&self) {}

    /// The host path of the unix socket where the workspace's agent serves
    /// the agent protocol, for runtimes whose workspaces have an agent.
    fn agent_socket(&self, ws: &Workspace) -> Option<PathBuf> {
        let _ = ws;
        None
    }

    /// Copies the directory `src` of the workspace into the new host
    /// directory `host_dir`, for provider-side work on it (a git fetch) in
    /// runtimes without a [`Runtime::host_path`]; [`Runtime::import`] puts
    /// it back.
    async fn copy_out(
        &self,
        ws: &Workspace,
        src: &WorkspacePath,
        host_dir: &Path,
    ) -> Result<(), RuntimeError> {
        let _ = (ws, src, host_dir);
        Err(RuntimeError::unsupported(self.name(), "copying files out"))
    }

    /// Freezes the workspace's current files into a snapshot, leaving the
    /// workspace running as it is.
    async fn snapshot(&self, ws: &Workspace) -> Result<Snapshot, RuntimeError> {
        let _ = ws;
        Err(RuntimeError::unsupported(self.name(), "snapshots"))
    }

    /// Returns the workspace's files to its provisioned state, or to the
    /// snapshot `to`. Processes running in it are ended.
    async fn reset(&self, ws: &Workspace, to: Option<&str>) -> Result<(), RuntimeError> {
        let _ = (ws, to);
        Err(RuntimeError::unsupported(self.name(), "reset"))
    }

    /// The paths added, modified and deleted since the provisioned state
    /// (or the snapshot last reset to), sorted by path.
    async fn changes(&self, ws: &Workspace) -> Result<Vec<Change>, RuntimeError> {
        let _ = ws;
        Err(RuntimeError::unsupported(self.name(), "changes"))
    }

    /// Whether [`Runtime::changes`] names every file whose content
    /// changed, whatever its times say (an overlay's upper layer does; the
    /// docker Engine's list can miss an edit that puts its file's times
    /// back), so that a diff may read only the files it names.
    fn changes_name_every_edit(&self) -> bool {
        false
    }

    /// Writes the added and modified files to `target`.
    async fn export_changes(
        &self,
        ws: &Workspace,
        target: &ExportTarget,
    ) -> Result<ExportSummary, RuntimeError> {
        let _ = (ws, target);
        Err(RuntimeError::unsupported(self.name(), "export"))
    }

    /// Makes the filesystem of the new workspace `ws` from `origin`'s
    /// current state, like `create`; the two are independent afterwards.
    async fn fork(
        &self,
        origin: &Workspace,
        ws: &Workspace,
    ) -> Result<serde_json::Value, RuntimeError> {
        let _ = (origin, ws);
        Err(RuntimeError::unsupported(self.name(), "fork"))
    }

    /// Removes a snapshot; its layer goes once nothing else uses it.
    async fn remove_snapshot(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::unsupported(self.name(), "snapshots"))
    }

    /// Removes the runtime's workspaces not in `live` and every layer that
    /// no workspace, cache entry or snapshot uses.
    async fn gc(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let _ = live;
        Err(RuntimeError::unsupported(self.name(), "garbage collection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_memory_is_half_the_host_at_most_the_cap_and_shm_fits_in_it() {
        let small = ResourceDefaults::for_ram(2 << 30);
        assert_eq!((small.memory, small.shm), (1 << 30, 64 << 20));
        let large = ResourceDefaults::for_ram(256 << 30);
        assert_eq!(large.memory, ResourceDefaults::MEMORY_CAP);
        let here = ResourceDefaults::for_this_host();
        assert!(here.memory > 0 && here.memory <= ResourceDefaults::MEMORY_CAP);

        let mut spec = crate::Spec::default();
        assert_eq!(large.memory(&spec), 4 << 30);
        assert_eq!(large.shm(&spec), 64 << 20);
        spec.limits.memory = Some(16 << 20);
        assert_eq!(large.memory(&spec), 16 << 20, "the spec's limit wins");
        assert_eq!(
            large.shm(&spec),
            16 << 20,
            "/dev/shm fits in the memory limit"
        );
    }

    #[test]
    fn tmp_has_the_default_size_or_the_specs_at_most_the_memory_limit() {
        let defaults = ResourceDefaults::for_ram(16 << 30);
        let mut spec = crate::Spec::default();
        assert_eq!(defaults.tmp(&spec), ResourceDefaults::TMP);
        spec.limits.tmp = Some(256 << 20);
        assert_eq!(defaults.tmp(&spec), 256 << 20, "the spec's size wins");
        spec.limits.memory = Some(64 << 20);
        assert_eq!(
            defaults.tmp(&spec),
            64 << 20,
            "/tmp fits in the memory limit"
        );
        spec.limits.tmp = None;
        assert_eq!(defaults.tmp(&spec), 64 << 20);

        let [_, _, tmpfs] = ResourceDefaults::notes(&spec, 64 << 20, 64 << 20, Some(64 << 20));
        assert!(
            tmpfs.starts_with("/tmp is a tmpfs of 64MiB (BERTH_TMP_SIZE"),
            "{tmpfs}"
        );
        let [_, _, disk] = ResourceDefaults::notes(&spec, 64 << 20, 64 << 20, None);
        assert!(disk.starts_with("/tmp is on disk"), "{disk}");
    }
}
