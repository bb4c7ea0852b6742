//! The cache of provisioned states: an entry names a layer by its key,
//! in `$BERTH_HOME/sandbox-cache/`, and holds a reference to it.

use super::{Inner, io_err, other};
use berth_core::RuntimeError;
use berth_layers::{LayerId, LayerKind};
use std::fs;
use std::io;
use std::path::PathBuf;

pub(super) fn cache_holder(key: &str) -> String {
    format!(
        "cache:{}",
        LayerId::derive(&[b"cache-key", key.as_bytes()]).short()
    )
}

impl Inner {
    pub(super) fn cache_file(&self, key: &str) -> PathBuf {
        let name = LayerId::derive(&[b"cache-key", key.as_bytes()]);
        self.config.home.join("sandbox-cache").join(name.as_str())
    }

    pub(super) fn cached_layer(
        &self,
        key: &str,
    ) -> Result<Option<berth_layers::Layer>, RuntimeError> {
        let file = self.cache_file(key);
        let text = match fs::read_to_string(&file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(io_err(format!("cannot read cache entry `{key}`")))?,
        };
        let id = LayerId::parse(text.trim()).map_err(other)?;
        match self.store.get(&id) {
            Ok(layer) => Ok(Some(layer)),
            Err(berth_layers::StoreError::Missing(_)) => Ok(None),
            Err(e) => Err(other(e)),
        }
    }

    /// Stops workspace `id` (all its processes ended), freezes its upper
    /// directory into a cache layer, which becomes its provisioned stack,
    /// and records it under `key`, with a fresh upper whose workspace root
    /// is `root`. Returns whether it was running, for the caller to start
    /// it again. Blocking: it waits for the processes and copies the tree.
    pub(super) fn freeze_into_cache(
        &self,
        id: &str,
        root: &str,
        key: &str,
    ) -> Result<bool, RuntimeError> {
        let was_running = self.running(&self.load(id)?).is_some();
        let mut state = self.stop_locked(id, true)?;
        let layer = self.freeze_upper(&mut state, LayerKind::Cache, root)?;
        let old_provisioned = std::mem::replace(&mut state.provisioned, state.stack.clone());
        state.provisioning = false;
        let keep: Vec<LayerId> = state.stack.clone();
        self.set_refs(id, &old_provisioned, &keep)?;
        self.save(&state)?;
        self.store
            .add_ref(&layer.meta.id, &cache_holder(key))
            .map_err(other)?;
        let file = self.cache_file(key);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create the cache directory"))?;
        }
        fs::write(&file, layer.meta.id.as_str())
            .map_err(io_err(format!("cannot record cache entry `{key}`")))?;
        Ok(was_running)
    }
}
