//! Garbage collection: what workspaces the provider no longer knows left
//! behind, and the layers nothing holds.

use super::stack::holder;
use super::{Inner, io_err, other};
use berth_core::{GcReport, RuntimeError, Workspace};
use berth_layers::LayerId;
use std::collections::BTreeSet;
use std::fs;

impl Inner {
    /// Removes the workspaces that are not `live`, and every layer that
    /// nothing holds any more.
    pub(super) fn collect_garbage(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let live_ids: BTreeSet<String> = live.iter().map(|w| w.id.to_string()).collect();
        let mut report = GcReport::default();
        let sandbox = self.config.home.join("sandbox");
        for entry in fs::read_dir(&sandbox).map_err(io_err("cannot list workspaces"))? {
            let entry = entry.map_err(io_err("cannot list workspaces"))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if live_ids.contains(&id) {
                continue;
            }
            if let Ok(state) = self.stop_locked(&id, true) {
                let layers: Vec<LayerId> = state
                    .stack
                    .iter()
                    .chain(&state.provisioned)
                    .cloned()
                    .collect();
                self.set_refs(&id, &layers, &[])?;
            }
            self.discard(&entry.path())?;
            report.orphans.push(id);
        }
        let holders: BTreeSet<String> = live_ids.iter().map(|id| holder(id)).collect();
        self.store
            .drop_holders_except("workspace:", &holders)
            .map_err(other)?;
        report.removed = self
            .store
            .gc()
            .map_err(other)?
            .into_iter()
            .map(String::from)
            .collect();
        Ok(report)
    }
}
