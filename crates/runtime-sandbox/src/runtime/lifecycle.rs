//! The lock that keeps changes of one workspace's lifecycle from
//! interleaving, while different workspaces change at once.

use std::collections::HashMap;
use std::sync::Arc;

/// Serialises changes of each workspace's lifecycle (start, stop, reset,
/// freeze, standby) so two never interleave, while different workspaces
/// change at once; `gc`, which looks at them all, excludes everything.
#[derive(Default)]
pub(super) struct Lifecycle {
    all: Arc<tokio::sync::RwLock<()>>,
    each: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one workspace's lifecycle changes.
pub(super) struct LifecycleGuard {
    _one: tokio::sync::OwnedMutexGuard<()>,
    _all: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl Lifecycle {
    pub(super) async fn one(&self, id: &str) -> LifecycleGuard {
        let all = self.all.clone().read_owned().await;
        let lock = self
            .each
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone();
        LifecycleGuard {
            _one: lock.lock_owned().await,
            _all: all,
        }
    }

    pub(super) async fn every(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.all.clone().write_owned().await
    }

    /// Forgets a removed workspace's lock.
    pub(super) fn forget(&self, id: &str) {
        self.each
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }
}
