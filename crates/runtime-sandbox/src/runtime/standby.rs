//! Standby instances: once reset, a running workspace keeps a second
//! instance started on its provisioned stack, and its next reset only
//! switches to it.

use super::instance::Teardown;
use super::state::{Standby, State};
use super::{Inner, SandboxRuntime, io_err};
use crate::plan::Dirs;
use berth_core::{RuntimeError, Workspace};
use std::fs;

impl SandboxRuntime {
    /// Makes a standby for a running workspace in the background, when
    /// standbys are on: the caller has its answer meanwhile. A workspace
    /// gets one once it has been reset: one that is reset once is reset
    /// again, while a standby for every workspace would double what an
    /// idle one costs and slow every start down with a second one.
    pub(super) fn prepare_standby(&self, ws: &Workspace) {
        if !self.config.standby {
            return;
        }
        let this = self.clone_handle();
        let ws = ws.clone();
        self.background.spawn(async move {
            let _guard = this.lifecycle.one(ws.id.as_str()).await;
            match this.make_standby(&ws).await {
                // Removed meanwhile.
                Ok(()) | Err(RuntimeError::Gone { .. }) => {}
                Err(e) => tracing::warn!(id = %ws.id, error = %e, "cannot make a standby instance"),
            }
        });
    }
}

impl Inner {
    /// The upper and run directories a standby instance is made with, and
    /// that a reset moves into place.
    pub(super) fn standby_dirs(&self, id: &str) -> Dirs {
        let dir = self.ws_dir(id);
        Dirs {
            upper: dir.join("upper.standby"),
            run: dir.join("run.standby"),
            ..self.dirs(id)
        }
    }

    /// Discards a standby's upper and run directories.
    pub(super) fn discard_standby_dirs(&self, id: &str) -> Result<(), RuntimeError> {
        let dirs = self.standby_dirs(id);
        self.discard(&dirs.upper)?;
        self.discard(&dirs.run)
    }

    /// Resets a running workspace by switching to its standby, when it has
    /// one on its provisioned stack: the current instance is killed and
    /// torn down in the background, the standby's directories take the
    /// place of its own, and no start is on the way. Returns whether it
    /// switched.
    ///
    /// Each step leaves a state a start recovers from: without the upper
    /// directory, a start makes an empty one on the recorded stack, which
    /// is the reset's outcome; a standby still recorded is ended.
    pub(super) fn switch_to_standby(&self, state: &mut State) -> Result<bool, RuntimeError> {
        let id = state.id.clone();
        let (Some(current), Some(standby)) = (self.running(state), state.standby.clone()) else {
            return Ok(false);
        };
        let dirs = self.dirs(&id);
        let standby_dirs = self.standby_dirs(&id);
        if !standby.init.alive()
            || standby.stack != state.provisioned
            || !standby_dirs.upper.is_dir()
        {
            state.standby = None;
            self.finish_in_background(self.end_instance(&id, standby.init));
            self.discard_standby_dirs(&id)?;
            self.save(state)?;
            return Ok(false);
        }
        self.agents.forget(&id);
        self.finish_in_background(self.end_instance(&id, current));
        self.discard(&dirs.upper)?;
        let old = std::mem::replace(&mut state.stack, standby.stack.clone());
        state.init = None;
        self.save(state)?;
        if old != state.provisioned {
            self.set_refs(&id, &old, &state.provisioned)?;
        }
        self.discard(&dirs.run)?;
        for (from, to) in [
            (&standby_dirs.upper, &dirs.upper),
            (&standby_dirs.run, &dirs.run),
        ] {
            fs::rename(from, to).map_err(io_err(format!(
                "cannot move `{}` to `{}`",
                from.display(),
                to.display()
            )))?;
        }
        state.init = Some(standby.init);
        state.standby = None;
        self.save(state)?;
        Ok(true)
    }

    /// Makes a standby for a running workspace that has none; does nothing
    /// when it is not running or already has a usable one.
    async fn make_standby(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let id = ws.id.to_string();
        let mut state = self.load(&id)?;
        let Some(current) = self.running(&state) else {
            return Ok(());
        };
        if state.standby.is_some() {
            return Ok(());
        }
        // A berth killed while making a standby may have left one running
        // unrecorded: every instance but the current one ends.
        if let Ok(layout) = &self.cgroups {
            let keep = layout.cgroups(&self.cgroup_name(&id, current.instance));
            self.finish_in_background(Teardown {
                cgroups: layout
                    .instances(&self.cgroup_prefix(&id))
                    .into_iter()
                    .filter(|cgroups| *cgroups != keep)
                    .collect(),
                inits: Vec::new(),
                paths: Vec::new(),
            });
        }
        self.discard_standby_dirs(&id)?;
        let dirs = self.standby_dirs(&id);
        self.fresh_upper(&dirs, ws.spec.root())?;
        state.instance += 1;
        self.save(&state)?;
        let stack = state.provisioned.clone();
        let init = self
            .launch(ws, &state, &stack, state.instance, dirs)
            .await?;
        state.standby = Some(Standby { init, stack });
        self.save(&state)
    }
}
