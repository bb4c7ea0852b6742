//! A workspace's files: the layer stack it runs on and the upper directory
//! above it, frozen into layers, listed as changes, exported, imported
//! into, and rebuilt on another stack.

use super::state::State;
use super::{Inner, SandboxRuntime, io_err, other};
use crate::plan::{BERTH_DIR, Dirs};
use berth_core::{Change, ExportSummary, ExportTarget, RuntimeError, Workspace, WorkspacePath};
use berth_layers::{IdShift, LayerId, LayerKind, tree};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub(super) fn holder(ws: &str) -> String {
    format!("workspace:{ws}")
}

impl Inner {
    /// Makes an empty upper directory (with the workspace root `root`
    /// owned by the workspace's root user) and a clean work directory.
    pub(super) fn fresh_upper(&self, dirs: &Dirs, root: &str) -> Result<(), RuntimeError> {
        let (shift, _) = self.shift();
        let made = (|| -> io::Result<()> {
            for dir in [&dirs.rootfs, &dirs.run] {
                fs::create_dir_all(dir)?;
            }
            // The agent, as the workspace's root, makes its socket here.
            std::os::unix::fs::lchown(&dirs.run, Some(shift), Some(shift))?;
            // The overlay's root takes this directory's mode and owner:
            // the workspace's root owns it, and may make top-level
            // directories, as in a container.
            fs::create_dir(&dirs.upper)?;
            fs::set_permissions(&dirs.upper, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::lchown(&dirs.upper, Some(shift), Some(shift))?;
            make_owned_dirs(&dirs.upper, Path::new(root.trim_start_matches('/')), shift)
        })();
        made.map_err(io_err(format!("cannot prepare `{}`", dirs.upper.display())))
    }

    /// Moves a directory away and removes it.
    pub(super) fn discard(&self, dir: &Path) -> Result<(), RuntimeError> {
        if !dir.exists() {
            return Ok(());
        }
        let trash = self.store.staging_dir().map_err(other)?.join("discarded");
        fs::rename(dir, &trash).map_err(io_err(format!("cannot move `{}` away", dir.display())))?;
        // Removal is O(size); the workspace does not wait for it.
        self.in_background(move || {
            let _ = tree::remove_tree(&trash);
        });
        Ok(())
    }

    pub(super) fn set_refs(
        &self,
        id: &str,
        old: &[LayerId],
        new: &[LayerId],
    ) -> Result<(), RuntimeError> {
        for layer in new {
            self.store.add_ref(layer, &holder(id)).map_err(other)?;
        }
        for layer in old.iter().filter(|l| !new.contains(l)) {
            self.store.remove_ref(layer, &holder(id)).map_err(other)?;
        }
        Ok(())
    }

    /// Freezes the upper directory of a stopped workspace into a layer on
    /// its stack, which becomes its new stack, with a fresh upper whose
    /// workspace root is `root`.
    pub(super) fn freeze_upper(
        &self,
        state: &mut State,
        kind: LayerKind,
        root: &str,
    ) -> Result<berth_layers::Layer, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let layer = self
            .store
            .freeze(
                &dirs.upper,
                &state.stack,
                kind,
                &format!("workspace {}", state.id),
            )
            .map_err(other)?;
        self.fresh_upper(&dirs, root)?;
        // The layers below stay referenced: they are the new layer's
        // parents, and the caller decides what the provisioned stack is.
        let new = layer.stack();
        self.set_refs(&state.id, &[], &new)?;
        state.stack = new;
        Ok(layer)
    }

    /// Freezes a copy of the workspace's upper directory on top of its
    /// stack: O(changed files). A running workspace is paused meanwhile
    /// (cgroup freezer), so the copy is one consistent state.
    pub(super) fn copy_upper(
        &self,
        state: &State,
        kind: LayerKind,
    ) -> Result<berth_layers::Layer, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let paused = match (&self.cgroups, self.running(state)) {
            (Ok(layout), Some(init)) => {
                let cgroups = layout.cgroups(&self.cgroup_name(&state.id, init.instance));
                layout
                    .freeze(&cgroups, true)
                    .map_err(other)?
                    .then_some((layout, cgroups))
            }
            _ => None,
        };
        let copied = self
            .store
            .freeze_copy(
                &dirs.upper,
                &state.stack,
                kind,
                &format!("workspace {}", state.id),
            )
            .map_err(other);
        if let Some((layout, cgroups)) = paused {
            layout.freeze(&cgroups, false).map_err(other)?;
        }
        copied
    }

    /// The changes under the workspace root `root`; under `/`, berth's
    /// own directory is left out.
    pub(super) fn changes_of(
        &self,
        state: &State,
        root: &str,
    ) -> Result<Vec<Change>, RuntimeError> {
        let dirs = self.dirs(&state.id);
        let lowers = self.store.trees_top_first(&state.stack);
        let under = Path::new(root.trim_start_matches('/'));
        let mut changes = berth_layers::changes(&dirs.upper, &lowers, under).map_err(io_err(
            format!("cannot list the changes of workspace {}", state.id),
        ))?;
        if under.as_os_str().is_empty() {
            changes.retain(|c| !Path::new(&c.path).starts_with(BERTH_DIR));
        }
        Ok(changes)
    }

    /// Rebuilds a workspace on `stack` with an empty upper directory,
    /// restarting it if it was running.
    pub(super) async fn restack(
        &self,
        ws: &Workspace,
        stack: Vec<LayerId>,
    ) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let was_running = self.running(&self.load(&id)?).is_some();
        let mut state = self.stop_locked(&id, false)?;
        let dirs = self.dirs(&id);
        self.discard(&dirs.upper)?;
        self.fresh_upper(&dirs, ws.spec.root())?;
        let old = state.stack.clone();
        self.set_refs(&id, &[], &stack)?;
        state.stack = stack;
        let keep: Vec<LayerId> = state
            .stack
            .iter()
            .chain(&state.provisioned)
            .cloned()
            .collect();
        self.set_refs(&id, &old, &keep)?;
        self.save(&state)?;
        if was_running {
            self.start_locked(ws).await?;
        }
        Ok(())
    }

    /// Moves (or copies) `host_dir` into a stopped workspace's upper
    /// directory at `dest`, handed to the workspace's root.
    pub(super) async fn import_tree(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let state = self.load(&id)?;
        let (shift, range) = self.shift();
        let dirs = self.dirs(&id);
        let host_dir = host_dir.to_path_buf();
        let rel = Path::new(ws.spec.root().trim_start_matches('/')).join(dest.as_str());
        if self.running(&state).is_some() {
            // A live overlay must not have its upper directory changed
            // underneath, and its merged view is the workspace's to shape.
            return Err(RuntimeError::Other(format!(
                "workspace {id} is running; import into it before starting it"
            )));
        }
        let lowers = self.store.trees_top_first(&state.stack);
        tokio::task::spawn_blocking(move || -> Result<(), RuntimeError> {
            tree::shift_ownership(&host_dir, shift, range).map_err(io_err(format!(
                "cannot hand `{}` to the workspace's root",
                host_dir.display()
            )))?;
            // The parents first: none may be a link, or what follows
            // would reach through it to the host.
            if let Some(parent) = rel.parent() {
                make_owned_dirs(&dirs.upper, parent, shift)
                    .map_err(io_err("cannot create the destination"))?;
            }
            let target = dirs.upper.join(&rel);
            tree::remove_tree(&target).map_err(io_err("cannot replace the destination"))?;
            if let Err(e) = fs::rename(&host_dir, &target) {
                if e.raw_os_error() != Some(libc::EXDEV) {
                    return Err(RuntimeError::io(
                        format!("cannot move `{}` into the workspace", host_dir.display()),
                        e,
                    ));
                }
                tree::copy_tree(&host_dir, &target)
                    .map_err(io_err("cannot copy into the workspace"))?;
                tree::remove_tree(&host_dir)
                    .map_err(io_err("cannot remove the imported directory"))?;
            }
            // Whatever the layers held there is replaced, not merged.
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir())
                && tree::lookup(&lowers, &rel).ok().flatten().is_some()
            {
                tree::set_opaque(&target).map_err(io_err("cannot mark the destination opaque"))?;
            }
            Ok(())
        })
        .await
        .map_err(other)?
    }
}

impl SandboxRuntime {
    /// The automatic collection, once a workspace, cache entry or snapshot
    /// let go of `released`: removes those of them (and of the layers below
    /// them) that nothing uses any more. Its failures are left to an
    /// explicit `gc`, which reports them: what let go has succeeded.
    pub(super) async fn collect_released(&self, released: Vec<LayerId>) {
        let this = self.clone_handle();
        let _ = tokio::task::spawn_blocking(move || this.store.gc_released(&released)).await;
    }

    /// Copies the workspace's changes to `target`.
    pub(super) async fn export(
        &self,
        ws: &Workspace,
        target: &ExportTarget,
    ) -> Result<ExportSummary, RuntimeError> {
        let state = self.load(ws.id.as_str())?;
        let target = target.clone();
        let (shift, range) = self.shift();
        let under = ws.spec.root().to_string();
        self.blocking(move |this| {
            let changes = this.changes_of(&state, &under)?;
            let upper = this.dirs(&state.id).upper;
            let under = Path::new(under.trim_start_matches('/'));
            match &target {
                ExportTarget::Archive { path } => berth_layers::export_archive(
                    &upper,
                    under,
                    &changes,
                    path,
                    IdShift { shift, range },
                )
                .map_err(io_err(format!("cannot export to `{}`", path.display()))),
                ExportTarget::Directory { path } => {
                    berth_layers::export_dir(&upper, under, &changes, path)
                        .map_err(io_err(format!("cannot export to `{}`", path.display())))
                }
            }
        })
        .await
    }
}

/// Makes the directories of `rel` under `base` that are missing, each
/// owned by the workspace's root (`shift`) with mode 0755, so that the
/// workspace can write in them. An existing component must be a real
/// directory: a link the workspace made is never followed.
fn make_owned_dirs(base: &Path, rel: &Path, shift: u32) -> io::Result<()> {
    let mut dir = base.to_path_buf();
    for part in rel.components() {
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                std::os::unix::fs::lchown(&dir, Some(shift), Some(shift))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !fs::symlink_metadata(&dir)?.is_dir() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("`{}` is not a directory", dir.display()),
                    ));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
