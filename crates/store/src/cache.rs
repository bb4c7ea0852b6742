//! Provisioning cache entries: a provisioned state (repositories cloned,
//! setup run) kept by a runtime under the spec's cache key.

use crate::Cached as _;
use crate::{Store, StoreError};
use berth_core::now_ms;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// One cached provisioned state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The spec's cache key.
    pub key: String,
    /// The runtime that holds the cached state.
    pub runtime: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When a workspace was last made from it, ms since the Unix epoch.
    pub last_used_at: i64,
    /// What the runtime needs to find the cached state; its own shape.
    pub info: serde_json::Value,
    /// The disk space it takes, in bytes, when the runtime could tell.
    pub size: Option<u64>,
}

const COLUMNS: &str = "key, runtime, created_at, last_used_at, info, size";

impl Store {
    /// Adds the entry, or replaces the entry with the same key.
    pub fn put_cache_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let info = serde_json::to_string(&entry.info).map_err(|source| StoreError::Encode {
            what: "cache entry",
            key: entry.key.clone(),
            field: "info",
            source,
        })?;
        self.conn()
            .run(
                "INSERT INTO cache_entries (key, runtime, created_at, last_used_at, info, size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET runtime = excluded.runtime,
                     created_at = excluded.created_at, last_used_at = excluded.last_used_at,
                     info = excluded.info, size = excluded.size",
                params![
                    entry.key,
                    entry.runtime,
                    entry.created_at,
                    entry.last_used_at,
                    info,
                    entry
                        .size
                        .map(|size| i64::try_from(size).unwrap_or(i64::MAX)),
                ],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    pub fn cache_entry(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let raw = self
            .conn()
            .row(
                &format!("SELECT {COLUMNS} FROM cache_entries WHERE key = ?1"),
                [key],
                RawEntry::read,
            )
            .optional()
            .map_err(|e| self.db(e))?;
        raw.map(RawEntry::into_entry).transpose()
    }

    /// Records that a workspace was just made from the entry.
    pub fn touch_cache_entry(&self, key: &str) -> Result<(), StoreError> {
        let changed = self
            .conn()
            .run(
                "UPDATE cache_entries SET last_used_at = ?2 WHERE key = ?1",
                params![key, now_ms()],
            )
            .map_err(|e| self.db(e))?;
        if changed == 0 {
            return Err(StoreError::CacheEntryNotFound(key.to_owned()));
        }
        Ok(())
    }

    /// Forgets the entry; forgetting a missing entry succeeds.
    pub fn remove_cache_entry(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .run("DELETE FROM cache_entries WHERE key = ?1", [key])
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Every entry, least recently used first (the order to evict in).
    pub fn cache_entries(&self) -> Result<Vec<CacheEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM cache_entries ORDER BY last_used_at, key"
            ))
            .map_err(|e| self.db(e))?;
        let raws = stmt
            .query_map([], RawEntry::read)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        raws.into_iter().map(RawEntry::into_entry).collect()
    }
}

/// A row as stored, before its JSON is checked.
struct RawEntry {
    key: String,
    runtime: String,
    created_at: i64,
    last_used_at: i64,
    info: String,
    size: Option<i64>,
}

impl RawEntry {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawEntry> {
        Ok(RawEntry {
            key: row.get(0)?,
            runtime: row.get(1)?,
            created_at: row.get(2)?,
            last_used_at: row.get(3)?,
            info: row.get(4)?,
            size: row.get(5)?,
        })
    }

    fn into_entry(self) -> Result<CacheEntry, StoreError> {
        let info = serde_json::from_str(&self.info).map_err(|e| StoreError::Corrupt {
            what: "cache entry",
            key: self.key.clone(),
            field: "info",
            detail: e.to_string(),
        })?;
        Ok(CacheEntry {
            key: self.key,
            runtime: self.runtime,
            created_at: self.created_at,
            last_used_at: self.last_used_at,
            info,
            size: self.size.and_then(|size| u64::try_from(size).ok()),
        })
    }
}
