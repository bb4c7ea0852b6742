//! The provisioning cache's rules beyond its entries: one provision per
//! cache key at a time, and a size budget.
//!
//! Each cache key has a lock file in `$BERTH_HOME/locks/cache/`, taken with
//! `flock`, so processes as well as tasks share it. Making a workspace from
//! an entry holds it shared; provisioning an entry holds it exclusive, so
//! concurrent creations from one uncached spec clone and run setup once:
//! the first provisions, the others wait and then start from the cache.
//! Evicting an entry takes it exclusive without waiting, so an entry being
//! made or used is never evicted.
//!
//! The budget: when the entries' sizes add up to more than it, the least
//! recently used entries that no workspace (other than a removed one) was
//! made from are evicted until they fit.

use crate::{Provider, ServiceError};
use berth_core::RuntimeError;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use utoipa::ToSchema;

/// How a key's lock is held.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Making a workspace from the entry.
    Shared,
    /// Provisioning or evicting the entry.
    Exclusive,
}

/// A cache key's lock, released when dropped.
pub(crate) struct KeyLock(#[expect(dead_code, reason = "held for its lock")] File);

/// What evicting to a budget did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CacheGc {
    /// The keys of the entries evicted, least recently used first.
    pub evicted: Vec<String>,
    /// Bytes they held.
    pub freed: u64,
    /// Bytes the entries left hold.
    pub kept: u64,
}

fn lock_path(home: &Path, key: &str) -> PathBuf {
    // Keys are hex digests, so every key is a safe file name.
    home.join("locks").join("cache").join(format!("{key}.lock"))
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn lock_error(key: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Runtime {
        id: format!("cache entry {key}"),
        source: RuntimeError::Other(format!("cannot lock the cache entry: {e}")),
    }
}

impl Provider {
    /// Takes the lock of cache key `key`, waiting for whoever holds it.
    pub(crate) async fn lock_cache_key(
        &self,
        key: &str,
        hold: Hold,
    ) -> Result<KeyLock, ServiceError> {
        let path = lock_path(self.home(), key);
        // `flock` blocks, so it waits on a blocking thread.
        tokio::task::spawn_blocking(move || {
            let file = open_lock(&path)?;
            match hold {
                Hold::Shared => file.lock_shared()?,
                Hold::Exclusive => file.lock()?,
            }
            Ok::<_, std::io::Error>(KeyLock(file))
        })
        .await
        .map_err(|e| lock_error(key, e))?
        .map_err(|e| lock_error(key, e))
    }

    /// The lock of `key` held exclusive, or `None` when someone holds it.
    fn try_lock_cache_key(&self, key: &str) -> Result<Option<KeyLock>, ServiceError> {
        let file = open_lock(&lock_path(self.home(), key)).map_err(|e| lock_error(key, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(KeyLock(file))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_error(key, e)),
        }
    }

    /// The cache keys that workspaces not removed were made from.
    fn cache_keys_in_use(&self) -> Result<HashSet<String>, ServiceError> {
        Ok(self
            .store()
            .list(false)?
            .into_iter()
            .filter_map(|ws| ws.cache_key)
            .collect())
    }

    /// Evicts the least recently used entries no workspace uses until the
    /// entries hold at most `budget` bytes; with no budget, the provider's
    /// configured one, and without one every entry no workspace uses.
    pub async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ServiceError> {
        let budget = budget.or(self.inner.cache_budget).unwrap_or(0);
        let mut entries = self.store().cache_entries()?;
        // Entries written before sizes were kept are measured once.
        for entry in entries.iter_mut().filter(|e| e.size.is_none()) {
            let Ok(runtime) = self.runtime_named(&entry.runtime) else {
                continue;
            };
            if let Ok(Some(size)) = runtime.cache_size(&entry.key).await {
                entry.size = Some(size);
                self.store().put_cache_entry(entry)?;
            }
        }
        let mut report = CacheGc {
            kept: entries.iter().filter_map(|e| e.size).sum(),
            ..CacheGc::default()
        };
        let in_use = self.cache_keys_in_use()?;
        for entry in entries {
            if report.kept <= budget {
                break;
            }
            if in_use.contains(&entry.key) {
                continue;
            }
            let Ok(runtime) = self.runtime_named(&entry.runtime) else {
                continue;
            };
            let Some(_lock) = self.try_lock_cache_key(&entry.key)? else {
                continue;
            };
            // Read again under the lock: a workspace may have been made
            // from it since.
            if self.cache_keys_in_use()?.contains(&entry.key) {
                continue;
            }
            runtime
                .remove_cache(&entry.key)
                .await
                .map_err(|source| ServiceError::Runtime {
                    id: format!("cache entry {}", entry.key),
                    source,
                })?;
            self.store().remove_cache_entry(&entry.key)?;
            let size = entry.size.unwrap_or(0);
            report.kept = report.kept.saturating_sub(size);
            report.freed = report.freed.saturating_add(size);
            tracing::info!(key = %entry.key, size, "evicted a cache entry");
            report.evicted.push(entry.key);
        }
        Ok(report)
    }
}
