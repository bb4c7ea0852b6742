//! The [`Runtime`] operations, each taking the workspace's lifecycle lock
//! where it changes the workspace and calling on the sibling modules.

use super::cache::cache_holder;
use super::{Base, NAME, SandboxRuntime, io_err, other};
use async_trait::async_trait;
use berth_core::{
    Change, ExecRequest, ExecStream, ExportSummary, ExportTarget, FileEntry, GcReport, Isolation,
    ReadStream, Runtime, RuntimeError, Snapshot, Workspace, WorkspacePath,
};
use berth_layers::{LayerId, LayerKind};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

#[async_trait]
impl Runtime for SandboxRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Linux namespaces, overlay layers, cgroups and seccomp; no daemon"
    }

    async fn available(&self) -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Err(
                "the sandbox runtime needs root (user namespaces are mapped from root)".into(),
            );
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems.contains("overlay") {
            return Err("overlayfs is not available (modprobe overlay)".into());
        }
        if !self.config.init_program.is_file() {
            return Err(format!(
                "the stage-1 init `{}` is missing (build berth-sandbox-init or set BERTH_SANDBOX_INIT)",
                self.config.init_program.display()
            ));
        }
        self.check_mechanisms().map_err(|e| e.to_string())
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let provisioning = from_cache.is_none();
        let (stack, _) = match from_cache {
            Some(key) => {
                let layer = self
                    .cached_layer(key)?
                    .ok_or_else(|| other(format!("no cache entry `{key}`")))?;
                (layer.stack(), false)
            }
            None => {
                let base = Base::parse(ws.spec.image.as_deref());
                self.blocking(move |this| this.base_stack(&base)).await?
            }
        };
        self.make_workspace(ws, stack.clone(), stack, provisioning)
    }

    fn agent_socket(&self, ws: &Workspace) -> Option<PathBuf> {
        self.config.agent_program.as_ref()?;
        Some(self.dirs(ws.id.as_str()).run.join("agent.sock"))
    }

    /// None: a sandbox's files hold symlinks the workspace made, which a
    /// host process (running as host root) would follow to host paths.
    /// Clones go in through [`Runtime::import`] instead.
    fn host_path(&self, _ws: &Workspace) -> Option<PathBuf> {
        None
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        self.import_tree(ws, host_dir, dest).await
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let state = self.start_locked(ws).await?;
        Ok(self.info(&state))
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let id = ws.id.to_string();
        self.blocking(move |this| this.stop_locked(&id, true).map(drop))
            .await
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let id = ws.id.to_string();
        let state = match self.load(&id) {
            Ok(state) => state,
            Err(RuntimeError::Gone { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let id2 = id.clone();
        self.blocking(move |this| this.stop_locked(&id2, true))
            .await?;
        let layers: Vec<LayerId> = state
            .stack
            .iter()
            .chain(&state.provisioned)
            .cloned()
            .collect();
        self.set_refs(&id, &layers, &[])?;
        self.discard(&self.ws_dir(&id))?;
        self.lifecycle.forget(&id);
        self.collect_released(layers).await;
        Ok(())
    }

    async fn settle(&self) {
        self.background.close();
        self.background.wait().await;
        self.background.reopen();
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        Ok(self.ws_dir(ws.id.as_str()).join("state.json").is_file())
    }

    fn isolation(&self, ws: &Workspace) -> Isolation {
        match self.load(ws.id.as_str()) {
            Ok(state) => self.isolation_of(&state, &ws.spec),
            Err(e) => Isolation {
                isolated: true,
                network: "unknown".into(),
                notes: vec![e.to_string()],
                ..Isolation::default()
            },
        }
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        if let Some(agent) = self.agent(ws).await? {
            return Ok(agent.exec(request, cancel).await?);
        }
        self.exec_by_init(ws, request, cancel)
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        Ok(self.file_agent(ws).await?.read_file(path).await?)
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        Ok(self
            .file_agent(ws)
            .await?
            .write_file(path, &data, None)
            .await?)
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        Ok(self.file_agent(ws).await?.list_dir(dir).await?)
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        Ok(self.file_agent(ws).await?.remove(path).await?)
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let (id, root, key) = (
            ws.id.to_string(),
            ws.spec.root().to_string(),
            key.to_string(),
        );
        let was_running = self
            .blocking(move |this| this.freeze_into_cache(&id, &root, &key))
            .await?;
        if was_running {
            self.start_locked(ws).await?;
        }
        Ok(())
    }

    async fn has_cache(&self, key: &str) -> bool {
        matches!(self.cached_layer(key), Ok(Some(_)))
    }

    async fn cache_size(&self, key: &str) -> Result<Option<u64>, RuntimeError> {
        let Some(layer) = self.cached_layer(key)? else {
            return Ok(None);
        };
        let size = tokio::task::spawn_blocking(move || berth_core::usage::disk_usage(&layer.tree))
            .await
            .map_err(other)?
            .map_err(io_err(format!("cannot measure cache entry `{key}`")))?;
        Ok(Some(size))
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        let file = self.cache_file(key);
        let mut released = Vec::new();
        if let Ok(Some(layer)) = self.cached_layer(key) {
            self.store
                .remove_ref(&layer.meta.id, &cache_holder(key))
                .map_err(other)?;
            released.push(layer.meta.id);
        }
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::io("cannot remove the cache entry", e));
            }
            _ => {}
        }
        self.collect_released(released).await;
        Ok(())
    }

    async fn snapshot(&self, ws: &Workspace) -> Result<Snapshot, RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let state = self.load(ws.id.as_str())?;
        let layer = self
            .blocking(move |this| this.copy_upper(&state, LayerKind::Snapshot))
            .await?;
        let holder = format!("snapshot:{}", layer.meta.id);
        self.store.add_ref(&layer.meta.id, &holder).map_err(other)?;
        Ok(Snapshot {
            id: layer.meta.id.to_string(),
            workspace: ws.id.clone(),
            created_at: layer.meta.created_at,
        })
    }

    async fn reset(&self, ws: &Workspace, to: Option<&str>) -> Result<(), RuntimeError> {
        let _guard = self.lifecycle.one(ws.id.as_str()).await;
        let mut state = self.load(ws.id.as_str())?;
        if to.is_none() && self.switch_to_standby(&mut state)? {
            self.prepare_standby(ws);
            return Ok(());
        }
        let stack = match to {
            None => state.provisioned.clone(),
            Some(snapshot) => {
                // An id that is no layer's, or a layer that is no
                // snapshot, is no snapshot of this runtime.
                let missing = || RuntimeError::SnapshotNotFound(snapshot.to_string());
                let id = LayerId::parse(snapshot).map_err(|_| missing())?;
                let layer = match self.store.get(&id) {
                    Err(berth_layers::StoreError::Missing(_)) => return Err(missing()),
                    found => found.map_err(other)?,
                };
                if layer.meta.kind != LayerKind::Snapshot {
                    return Err(missing());
                }
                layer.stack()
            }
        };
        self.restack(ws, stack).await?;
        self.prepare_standby(ws);
        Ok(())
    }

    fn changes_name_every_edit(&self) -> bool {
        true
    }

    async fn changes(&self, ws: &Workspace) -> Result<Vec<Change>, RuntimeError> {
        let state = self.load(ws.id.as_str())?;
        let root = ws.spec.root().to_string();
        self.blocking(move |this| this.changes_of(&state, &root))
            .await
    }

    async fn export_changes(
        &self,
        ws: &Workspace,
        target: &ExportTarget,
    ) -> Result<ExportSummary, RuntimeError> {
        self.export(ws, target).await
    }

    async fn fork(
        &self,
        origin: &Workspace,
        ws: &Workspace,
    ) -> Result<serde_json::Value, RuntimeError> {
        let _guard = self.lifecycle.one(origin.id.as_str()).await;
        let state = self.load(origin.id.as_str())?;
        let provisioned = state.provisioned.clone();
        let layer = self
            .blocking(move |this| this.copy_upper(&state, LayerKind::Snapshot))
            .await?;
        self.make_workspace(ws, layer.stack(), provisioned, false)
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), RuntimeError> {
        // An id that is no layer's, or a layer no snapshot holds, is no
        // snapshot of this runtime.
        let not_found = || RuntimeError::SnapshotNotFound(id.to_string());
        let layer = LayerId::parse(id).map_err(|_| not_found())?;
        let holder = format!("snapshot:{layer}");
        if !self.store.refs(&layer).map_err(other)?.contains(&holder) {
            return Err(not_found());
        }
        self.store.remove_ref(&layer, &holder).map_err(other)?;
        self.collect_released(vec![layer]).await;
        Ok(())
    }

    async fn gc(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let _guard = self.lifecycle.every().await;
        let live = live.to_vec();
        self.blocking(move |this| this.collect_garbage(&live)).await
    }
}
