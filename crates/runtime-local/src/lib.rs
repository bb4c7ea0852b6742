//! The `local` runtime: a workspace is a directory on this host and commands
//! run as the provider's user, with no isolation — and it says so.
//!
//! Commands get an environment built from the spec, never the provider's
//! own, so provider secrets do not leak into them. Where the host lets
//! berth make cgroups (cgroup v2, as root), each command runs in a cgroup
//! of its own beneath `berth-local/<home id>/<workspace id>`: a timeout or
//! a cancel ends everything the command started, stopping or removing the
//! workspace ends whatever of its commands still runs, and `berth gc` ends
//! and removes the cgroups of this home's workspaces that are gone. Elsewhere only the
//! command's process group is ended, and `berth show` says so. The provisioning cache is
//! a directory per key, copied into new workspaces (with reflinks where the
//! filesystem has them).

use async_trait::async_trait;
use berth_core::{
    ExecRequest, ExecStream, FileEntry, GcReport, HomeId, Isolation, ReadStream, Refusal, Runtime,
    RuntimeError, Workspace, WorkspacePath,
};
use berth_exec::{Cgroups, DEFAULT_GRACE, Spawn, Stdin};
use berth_files::{FilesError, Root};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// PATH for commands when the provider has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables passed from the provider's environment to commands: locale,
/// terminal and search path, nothing that could carry a secret.
const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "TERM", "TZ", "USER", "LOGNAME"];

/// What the registry keeps for a local workspace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalInfo {
    /// The workspace root on this host.
    pub root: PathBuf,
}

pub struct LocalRuntime {
    home: PathBuf,
    workspaces: PathBuf,
    cache: PathBuf,
    /// Where workspaces' cgroups go, once looked for; why none otherwise.
    cgroup_root: OnceLock<Result<PathBuf, String>>,
    /// Each workspace's commands' cgroups, once made.
    cgroups: Mutex<HashMap<String, Arc<Cgroups>>>,
}

/// The directory beneath the cgroup v2 mount that holds local workspaces'
/// cgroups, one directory per home (named by its [`HomeId`]) and in it one
/// per workspace.
const CGROUP_DIR: &str = "berth-local";

impl LocalRuntime {
    /// A runtime keeping its workspaces and cache under `home`.
    pub fn new(home: &Path) -> Self {
        LocalRuntime {
            home: home.to_path_buf(),
            workspaces: home.join("local").join("workspaces"),
            cache: home.join("local").join("cache"),
            cgroup_root: OnceLock::new(),
            cgroups: Mutex::new(HashMap::new()),
        }
    }

    /// Where this home's workspaces' cgroups go, if this host lets berth
    /// make them: looked for on first use (by making a probe cgroup there).
    fn cgroup_root(&self) -> Result<&Path, &str> {
        self.cgroup_root
            .get_or_init(|| {
                let mount = berth_exec::cgroup::v2_mount()
                    .ok_or_else(|| "this host mounts no cgroup v2".to_string())?;
                let home = HomeId::load_or_create(&self.home).map_err(|e| e.to_string())?;
                let root = mount.join(CGROUP_DIR).join(home.as_str());
                Cgroups::open(&root.join("probe"))
                    .map_err(|e| format!("cannot make cgroups in {}: {e}", root.display()))?;
                let _ = std::fs::remove_dir(root.join("probe"));
                Ok(root)
            })
            .as_deref()
            .map_err(String::as_str)
    }

    /// The cgroups of workspace `ws`'s commands, when the host has them.
    fn commands_cgroups(&self, ws: &Workspace) -> Option<Arc<Cgroups>> {
        let root = self.cgroup_root().ok()?;
        let mut cgroups = self.cgroups.lock().ok()?;
        if let Some(found) = cgroups.get(ws.id.as_str()) {
            return Some(found.clone());
        }
        let made = Cgroups::open(&root.join(ws.id.as_str())).ok()?;
        cgroups.insert(ws.id.to_string(), made.clone());
        Some(made)
    }

    /// Ends every process of workspace `ws`'s commands that still runs,
    /// whichever berth process started it, and removes their cgroups.
    async fn end_commands(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let Ok(root) = self.cgroup_root() else {
            return Ok(());
        };
        let dir = root.join(ws.id.as_str());
        if let Ok(mut cgroups) = self.cgroups.lock() {
            cgroups.remove(ws.id.as_str());
        }
        blocking(move || end_cgroup(&dir)).await
    }

    fn root(&self, ws: &Workspace) -> PathBuf {
        serde_json::from_value::<LocalInfo>(ws.runtime_info.clone())
            .map(|info| info.root)
            .unwrap_or_else(|_| self.workspaces.join(ws.id.as_str()))
    }

    fn open_root(&self, ws: &Workspace) -> Result<Root, RuntimeError> {
        let root = self.root(ws);
        Root::open(&root).map_err(|e| match e {
            FilesError::NotFound(_) => RuntimeError::Gone {
                id: ws.id.to_string(),
                detail: format!("its directory {} no longer exists", root.display()),
            },
            other => files_error(other),
        })
    }

    fn environment(
        &self,
        ws: &Workspace,
        root: &Path,
        request: &ExecRequest,
    ) -> Vec<(String, String)> {
        let mut env: std::collections::BTreeMap<String, String> = PASSED_THROUGH
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
            .collect();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.insert("HOME".into(), root.display().to_string());
        env.insert("BERTH_WORKSPACE_ID".into(), ws.id.to_string());
        env.insert("BERTH_WORKSPACE_ROOT".into(), root.display().to_string());
        env.extend(ws.spec.env.clone());
        env.extend(request.env.clone());
        env.into_iter().collect()
    }
}

/// Kills every process in the workspace cgroup `dir` and in the commands'
/// cgroups beneath it, and removes it.
fn end_cgroup(dir: &Path) -> Result<(), RuntimeError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let cgroups =
        Cgroups::open(dir).map_err(|e| RuntimeError::io(format!("open {}", dir.display()), e))?;
    cgroups
        .kill_all()
        .map_err(|e| RuntimeError::io(format!("end the processes in {}", dir.display()), e))?;
    drop(cgroups);
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("remove {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RuntimeError::Other(format!("file task failed: {e}")))?
}

fn files_error(err: FilesError) -> RuntimeError {
    match err {
        FilesError::NotFound(path) => RuntimeError::NotFound(path),
        FilesError::Escapes(path) => RuntimeError::Escapes(path),
        FilesError::NotADirectory(path) => RuntimeError::WrongKind {
            path,
            problem: "not a directory",
        },
        FilesError::IsADirectory(path) => RuntimeError::WrongKind {
            path,
            problem: "a directory",
        },
        FilesError::NotAFile(path) => RuntimeError::WrongKind {
            path,
            problem: "not a regular file",
        },
        FilesError::AlreadyExists(_) => RuntimeError::Refused {
            reason: Refusal::AlreadyExists,
            message: err.to_string(),
        },
        FilesError::Io { ref source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            RuntimeError::Refused {
                reason: Refusal::PermissionDenied,
                message: err.to_string(),
            }
        }
        other => RuntimeError::Other(other.to_string()),
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn name(&self) -> &'static str {
        "local"
    }

    fn description(&self) -> &'static str {
        "a directory on this host; no isolation"
    }

    async fn available(&self) -> Result<(), String> {
        Ok(())
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let root = self.workspaces.join(ws.id.as_str());
        tokio::fs::create_dir_all(&self.workspaces)
            .await
            .map_err(|e| RuntimeError::io(format!("create {}", self.workspaces.display()), e))?;
        match from_cache {
            Some(key) => copy_tree(&self.cache.join(key), &root).await?,
            None => tokio::fs::create_dir(&root)
                .await
                .map_err(|e| RuntimeError::io(format!("create {}", root.display()), e))?,
        }
        Ok(serde_json::json!(LocalInfo { root }))
    }

    fn host_path(&self, ws: &Workspace) -> Option<PathBuf> {
        Some(self.root(ws))
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        let target = dest.under(&self.root(ws));
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RuntimeError::io(format!("create {}", parent.display()), e))?;
        }
        if dest.is_root() {
            // The workspace root exists already: move the clone's entries in.
            let mut entries = tokio::fs::read_dir(host_dir)
                .await
                .map_err(|e| RuntimeError::io(format!("read {}", host_dir.display()), e))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| RuntimeError::io(format!("read {}", host_dir.display()), e))?
            {
                let to = target.join(entry.file_name());
                tokio::fs::rename(entry.path(), &to)
                    .await
                    .map_err(|e| RuntimeError::io(format!("move into {}", to.display()), e))?;
            }
            return Ok(());
        }
        match tokio::fs::remove_dir_all(&target).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::io(format!("replace {}", target.display()), e));
            }
            _ => {}
        }
        tokio::fs::rename(host_dir, &target)
            .await
            .map_err(|e| RuntimeError::io(format!("move into {}", target.display()), e))
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        self.open_root(ws)?;
        Ok(ws.runtime_info.clone())
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.end_commands(ws).await
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.end_commands(ws).await?;
        let root = self.root(ws);
        blocking(move || match std::fs::remove_dir_all(&root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("remove {}", root.display()), e))
            }
            _ => Ok(()),
        })
        .await
    }

    /// Ends and removes the cgroups of this home's workspaces that are not
    /// in `live` (removed while no berth process could end them): another
    /// home's are not looked at.
    async fn gc(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let Ok(root) = self.cgroup_root() else {
            return Ok(GcReport::default());
        };
        let root = root.to_path_buf();
        let live: Vec<String> = live.iter().map(|ws| ws.id.to_string()).collect();
        let orphans = blocking(move || {
            let entries = std::fs::read_dir(&root)
                .map_err(|e| RuntimeError::io(format!("list {}", root.display()), e))?;
            let mut orphans = Vec::new();
            for entry in entries {
                let entry =
                    entry.map_err(|e| RuntimeError::io(format!("list {}", root.display()), e))?;
                let Ok(id) = entry.file_name().into_string() else {
                    continue;
                };
                if entry.path().is_dir() && !live.contains(&id) {
                    end_cgroup(&entry.path())?;
                    orphans.push(id);
                }
            }
            orphans.sort();
            Ok(orphans)
        })
        .await?;
        if let Ok(mut cgroups) = self.cgroups.lock() {
            cgroups.retain(|id, _| !orphans.contains(id));
        }
        Ok(GcReport {
            removed: Vec::new(),
            orphans,
        })
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        Ok(tokio::fs::metadata(self.root(ws))
            .await
            .is_ok_and(|m| m.is_dir()))
    }

    fn isolation(&self, _ws: &Workspace) -> Isolation {
        let processes = match self.cgroup_root() {
            Ok(root) => format!(
                "each command runs in a cgroup of its own beneath {}: a timeout or a cancel \
                 ends everything it started, and stopping or removing the workspace ends \
                 what its commands left running",
                root.display()
            ),
            Err(reason) => format!(
                "no cgroup for commands ({reason}): a timeout or a cancel ends the command's \
                 process group only, and what left it keeps running"
            ),
        };
        Isolation {
            isolated: false,
            network: "host".into(),
            notes: vec![
                "no isolation: commands run on this host as the provider's user; \
                 only their environment is the workspace's own"
                    .into(),
                processes,
            ],
            ..Isolation::default()
        }
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        let root_dir = self.root(ws);
        let root = self.open_root(ws)?;
        let cwd = match &request.cwd {
            Some(dir) => {
                let dir = WorkspacePath::parse(dir)?;
                blocking(move || root.resolve_dir(&dir).map_err(files_error)).await?
            }
            None => root_dir.clone(),
        };
        let spawn = Spawn {
            argv: request.command.to_argv(),
            cwd,
            env: self.environment(ws, &root_dir, &request),
            stdin: request.stdin.map(Stdin::Bytes).unwrap_or_default(),
            timeout: request.timeout_ms.map(Duration::from_millis),
            output_limit: request.output_limit,
            grace: DEFAULT_GRACE,
            cgroup: self.commands_cgroups(ws).and_then(|c| c.make().ok()),
            shepherd: None,
            nice: None,
        };
        let command = request.command.display();
        let running = berth_exec::spawn(spawn, cancel).map_err(|e| match e {
            berth_exec::SpawnError::Spawn { source, .. } => RuntimeError::Spawn { command, source },
            other => RuntimeError::Other(other.to_string()),
        })?;
        Ok(running.events)
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        let root = self.open_root(ws)?;
        let path = path.clone();
        let file = blocking(move || root.open_file(&path).map_err(files_error)).await?;
        Ok(ReadStream::new(tokio::fs::File::from_std(file)))
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        let root = self.open_root(ws)?;
        let path = path.clone();
        blocking(move || root.write(&path, &data).map_err(files_error)).await
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        let root = self.open_root(ws)?;
        let dir = dir.clone();
        blocking(move || root.list(&dir).map_err(files_error)).await
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        let root = self.open_root(ws)?;
        let path = path.clone();
        blocking(move || root.remove(&path).map_err(files_error)).await
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        let entry = self.cache.join(key);
        let partial = self.cache.join(format!(".{key}.partial"));
        let _ = tokio::fs::remove_dir_all(&partial).await;
        tokio::fs::create_dir_all(&self.cache)
            .await
            .map_err(|e| RuntimeError::io(format!("create {}", self.cache.display()), e))?;
        copy_tree(&self.root(ws), &partial).await?;
        // Replacing an entry is a rename, so a reader sees the old or the new tree.
        let _ = tokio::fs::remove_dir_all(&entry).await;
        tokio::fs::rename(&partial, &entry)
            .await
            .map_err(|e| RuntimeError::io(format!("save cache entry {}", entry.display()), e))
    }

    async fn has_cache(&self, key: &str) -> bool {
        tokio::fs::metadata(self.cache.join(key))
            .await
            .is_ok_and(|m| m.is_dir())
    }

    async fn cache_size(&self, key: &str) -> Result<Option<u64>, RuntimeError> {
        let entry = self.cache.join(key);
        let measured = entry.clone();
        blocking(move || {
            berth_core::usage::disk_usage(&measured).map_err(|e| {
                RuntimeError::io(format!("measure cache entry {}", measured.display()), e)
            })
        })
        .await
        .map(Some)
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        let entry = self.cache.join(key);
        match tokio::fs::remove_dir_all(&entry).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io(
                format!("remove cache entry {}", entry.display()),
                e,
            )),
            _ => Ok(()),
        }
    }
}

/// Copies a directory tree, keeping modes, links and times. `cp` is used
/// because it is the one tool that does reflinks (instant copies on btrfs
/// and xfs) and falls back to a full copy elsewhere.
async fn copy_tree(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    let output = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(from)
        .arg(to)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .output()
        .await
        .map_err(|source| RuntimeError::Spawn {
            command: "cp".into(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Other(format!(
            "copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_reason_and_name_the_path() {
        let forbidden = |kind: std::io::ErrorKind| FilesError::Io {
            op: "write",
            path: "locked/new.txt".into(),
            source: kind.into(),
        };
        for kind in [
            std::io::ErrorKind::PermissionDenied,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ] {
            match files_error(forbidden(kind)) {
                RuntimeError::Refused {
                    reason: Refusal::PermissionDenied,
                    message,
                } => assert!(message.contains("locked/new.txt"), "{message}"),
                other => panic!("{kind:?}: {other:?}"),
            }
        }
        assert!(matches!(
            files_error(FilesError::AlreadyExists("a".into())),
            RuntimeError::Refused {
                reason: Refusal::AlreadyExists,
                ..
            }
        ));
        assert!(matches!(
            files_error(forbidden(std::io::ErrorKind::StorageFull)),
            RuntimeError::Other(_)
        ));
    }
}
