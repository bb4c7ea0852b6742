//! Workspace records: insert, look up (by id, id prefix or name), list, and
//! the single-field updates the provider makes as a workspace lives.

use crate::Cached as _;
use crate::{Store, StoreError, owner};
use berth_core::{Spec, Workspace, WorkspaceId, WorkspaceState, now_ms};
use rusqlite::{ErrorCode, OptionalExtension, ToSql, params};

/// The shortest id prefix `resolve` accepts, so that a typo of one or two
/// characters is not taken for an id.
pub const MIN_PREFIX: usize = 4;

const COLUMNS: &str = "id, name, runtime, spec, state, runtime_info, cache_key, error, owner_pid, \
                       created_at, updated_at, labels, last_active_at";

impl Store {
    /// Adds a workspace. Its name must not be used by another workspace that
    /// is not removed.
    pub fn insert_workspace(&self, ws: &Workspace) -> Result<(), StoreError> {
        let spec = encode(ws, "spec", &ws.spec)?;
        let info = encode(ws, "runtime_info", &ws.runtime_info)?;
        let labels = encode(ws, "labels", &ws.labels)?;
        let owner_start = ws.owner_pid.and_then(owner::start_time);
        let result = self.conn().run(
            "INSERT INTO workspaces (id, name, runtime, spec, state, runtime_info, cache_key,
                 error, owner_pid, owner_start, created_at, updated_at, labels, last_active_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                ws.id.as_str(),
                ws.name,
                ws.runtime,
                spec,
                ws.state.as_str(),
                info,
                ws.cache_key,
                ws.error,
                ws.owner_pid,
                owner_start,
                ws.created_at,
                ws.updated_at,
                labels,
                ws.last_active_at,
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Err(StoreError::DuplicateId(ws.id.to_string()))
            }
            Err(e) if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                Err(StoreError::AlreadyExists(ws.name.clone()))
            }
            Err(e) => Err(self.db(e)),
        }
    }

    /// The workspace with exactly this id, removed or not.
    pub fn get(&self, id: &WorkspaceId) -> Result<Workspace, StoreError> {
        self.find_by_id(id.as_str())?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// An exact id, a unique id prefix (at least [`MIN_PREFIX`] characters),
    /// or the name of a workspace that is not removed.
    ///
    /// Workspaces that are not removed come first: a prefix or name that
    /// matches one of them and some removed ones means that one. A query
    /// that is both a name and a prefix of different workspaces is
    /// ambiguous, never silently one of them.
    pub fn resolve(&self, query: &str) -> Result<Workspace, StoreError> {
        // Ids are lowercase ULIDs; accept them as pasted in upper case.
        let id_query = query.to_ascii_lowercase();
        if let Some(ws) = self.find_by_id(&id_query)? {
            return Ok(ws);
        }
        let mut matches = self.select(
            &format!("SELECT {COLUMNS} FROM workspaces WHERE name = ?1 AND state <> 'removed'"),
            &[&query],
        )?;
        if id_query.len() >= MIN_PREFIX {
            let by_prefix = self.select(
                &format!(
                    // The range lets the primary key's index find the
                    // candidates; U+10FFFF sorts after every character.
                    "SELECT {COLUMNS} FROM workspaces
                     WHERE id >= ?1 AND id < ?1 || char(1114111) AND substr(id, 1, length(?1)) = ?1
                     ORDER BY created_at, id"
                ),
                &[&id_query],
            )?;
            for ws in by_prefix {
                if !matches.iter().any(|m| m.id == ws.id) {
                    matches.push(ws);
                }
            }
        }
        let live: Vec<&Workspace> = matches
            .iter()
            .filter(|ws| ws.state != WorkspaceState::Removed)
            .collect();
        let chosen: Vec<&Workspace> = if live.is_empty() {
            matches.iter().collect()
        } else {
            live
        };
        match chosen.as_slice() {
            [] => Err(StoreError::NotFound(query.to_owned())),
            [one] => Ok((*one).clone()),
            several => Err(StoreError::Ambiguous {
                query: query.to_owned(),
                candidates: several
                    .iter()
                    .map(|ws| format!("{} ({}, {})", ws.id, ws.name, ws.state))
                    .collect(),
            }),
        }
    }

    /// Every workspace, oldest first; removed ones only if asked for.
    pub fn list(&self, include_removed: bool) -> Result<Vec<Workspace>, StoreError> {
        let filter = if include_removed {
            ""
        } else {
            "WHERE state <> 'removed'"
        };
        self.select(
            &format!("SELECT {COLUMNS} FROM workspaces {filter} ORDER BY created_at, id"),
            &[],
        )
    }

    /// The workspaces whose idle deadline (`timeouts.idle` seconds after
    /// their last use, while running) or removal deadline
    /// (`timeouts.lifetime` seconds after creation, unless being made or
    /// removed) is at or before `now` (ms since the Unix epoch), oldest
    /// first. Found by SQLite alone, so that a process opening the registry
    /// reads no other workspace.
    pub fn past_deadline(&self, now: i64) -> Result<Vec<Workspace>, StoreError> {
        self.select(
            &format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE state NOT IN ('removed', 'creating')
                   AND (created_at + json_extract(spec, '$.timeouts.lifetime') * 1000.0 <= ?1
                        OR (state = 'running'
                            AND max(last_active_at, created_at)
                                + json_extract(spec, '$.timeouts.idle') * 1000.0 <= ?1))
                 ORDER BY created_at, id"
            ),
            &[&now],
        )
    }

    /// Moves a workspace to `state`, recording `error` (or clearing it).
    /// Leaving `creating` also forgets the owning process.
    pub fn set_state(
        &self,
        id: &WorkspaceId,
        state: WorkspaceState,
        error: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        self.update(
            id,
            "state = ?3, error = ?4,
             owner_pid = CASE WHEN ?3 = 'creating' THEN owner_pid END,
             owner_start = CASE WHEN ?3 = 'creating' THEN owner_start END",
            &[&state.as_str(), &error],
        )
    }

    pub fn set_runtime_info(
        &self,
        id: &WorkspaceId,
        info: &serde_json::Value,
    ) -> Result<Workspace, StoreError> {
        let info = serde_json::to_string(info).map_err(|source| StoreError::Encode {
            what: "workspace",
            key: id.to_string(),
            field: "runtime_info",
            source,
        })?;
        self.update(id, "runtime_info = ?3", &[&info])
    }

    pub fn set_cache_key(
        &self,
        id: &WorkspaceId,
        key: Option<&str>,
    ) -> Result<Workspace, StoreError> {
        self.update(id, "cache_key = ?3", &[&key])
    }

    /// Records that the workspace was used at `at` (ms since the Unix
    /// epoch); an earlier time than the one recorded changes nothing. Its
    /// `updated_at` stays: being used is not a change of the record.
    pub fn record_activity(&self, id: &WorkspaceId, at: i64) -> Result<(), StoreError> {
        self.conn()
            .run(
                "UPDATE workspaces SET last_active_at = max(last_active_at, ?2) WHERE id = ?1",
                params![id.as_str(), at],
            )
            .map_err(|e| self.db(e))?;
        Ok(())
    }

    /// Records the process provisioning the workspace (`None`: nobody).
    pub fn set_owner(&self, id: &WorkspaceId, pid: Option<u32>) -> Result<Workspace, StoreError> {
        let start = pid.and_then(owner::start_time);
        self.update(id, "owner_pid = ?3, owner_start = ?4", &[&pid, &start])
    }

    /// Workspaces left `creating` by a process that is no longer alive (or
    /// by no recorded process): what a crashed provision left behind.
    pub fn orphaned_provisions(&self) -> Result<Vec<Workspace>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS}, owner_start FROM workspaces WHERE state = 'creating'
                 ORDER BY created_at, id"
            ))
            .map_err(|e| self.db(e))?;
        let rows = stmt
            .query_map([], |row| Ok((RawWorkspace::read(row)?, row.get(13)?)))
            .and_then(Iterator::collect::<Result<Vec<(RawWorkspace, Option<i64>)>, _>>)
            .map_err(|e| self.db(e))?;
        drop(stmt);
        drop(conn);
        let mut orphans = Vec::new();
        for (raw, start) in rows {
            let ws = raw.into_workspace()?;
            if !ws.owner_pid.is_some_and(|pid| owner::is_alive(pid, start)) {
                orphans.push(ws);
            }
        }
        Ok(orphans)
    }

    fn find_by_id(&self, id: &str) -> Result<Option<Workspace>, StoreError> {
        let raw = self
            .conn()
            .row(
                &format!("SELECT {COLUMNS} FROM workspaces WHERE id = ?1"),
                [id],
                RawWorkspace::read,
            )
            .optional()
            .map_err(|e| self.db(e))?;
        raw.map(RawWorkspace::into_workspace).transpose()
    }

    fn select(&self, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Workspace>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(|e| self.db(e))?;
        let raws = stmt
            .query_map(params, RawWorkspace::read)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| self.db(e))?;
        raws.into_iter().map(RawWorkspace::into_workspace).collect()
    }

    /// Applies `set` (whose own parameters start at `?3`) to one workspace
    /// and returns the workspace as it now is, in one write transaction.
    fn update(
        &self,
        id: &WorkspaceId,
        set: &str,
        values: &[&dyn ToSql],
    ) -> Result<Workspace, StoreError> {
        let (id_text, now) = (id.as_str(), now_ms());
        let mut params: Vec<&dyn ToSql> = vec![&id_text, &now];
        params.extend_from_slice(values);
        let sql = format!(
            "UPDATE workspaces SET {set}, updated_at = ?2 WHERE id = ?1 RETURNING {COLUMNS}"
        );
        let raw = self.write(|tx| {
            match tx
                .row(&sql, params.as_slice(), RawWorkspace::read)
                .optional()
            {
                Ok(raw) => Ok(raw),
                // Bringing a removed workspace back while its name is taken.
                Err(e) if is_constraint(&e, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                    let name: String = tx
                        .row(
                            "SELECT name FROM workspaces WHERE id = ?1",
                            [id.as_str()],
                            |r| r.get(0),
                        )
                        .map_err(|e| self.db(e))?;
                    Err(StoreError::AlreadyExists(name))
                }
                Err(e) => Err(self.db(e)),
            }
        })?;
        raw.ok_or_else(|| StoreError::NotFound(id.to_string()))?
            .into_workspace()
    }
}

fn encode<T: serde::Serialize>(
    ws: &Workspace,
    field: &'static str,
    value: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode {
        what: "workspace",
        key: ws.id.to_string(),
        field,
        source,
    })
}

fn is_constraint(error: &rusqlite::Error, extended: i32) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _)
        if e.code == ErrorCode::ConstraintViolation && e.extended_code == extended)
}

/// A row as stored, before its JSON and state are checked.
struct RawWorkspace {
    id: String,
    name: String,
    runtime: String,
    spec: String,
    state: String,
    runtime_info: String,
    cache_key: Option<String>,
    error: Option<String>,
    owner_pid: Option<i64>,
    created_at: i64,
    updated_at: i64,
    labels: String,
    last_active_at: i64,
}

impl RawWorkspace {
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawWorkspace> {
        Ok(RawWorkspace {
            id: row.get(0)?,
            name: row.get(1)?,
            runtime: row.get(2)?,
            spec: row.get(3)?,
            state: row.get(4)?,
            runtime_info: row.get(5)?,
            cache_key: row.get(6)?,
            error: row.get(7)?,
            owner_pid: row.get(8)?,
            created_at: row.get(9)?,
            updated_at: row.get(10)?,
            labels: row.get(11)?,
            last_active_at: row.get(12)?,
        })
    }

    fn into_workspace(self) -> Result<Workspace, StoreError> {
        let corrupt = |field, detail: String| StoreError::Corrupt {
            what: "workspace",
            key: self.id.clone(),
            field,
            detail,
        };
        let spec: Spec =
            serde_json::from_str(&self.spec).map_err(|e| corrupt("spec", e.to_string()))?;
        let runtime_info = serde_json::from_str(&self.runtime_info)
            .map_err(|e| corrupt("runtime_info", e.to_string()))?;
        let labels =
            serde_json::from_str(&self.labels).map_err(|e| corrupt("labels", e.to_string()))?;
        let state = WorkspaceState::parse(&self.state)
            .ok_or_else(|| corrupt("state", format!("unknown state `{}`", self.state)))?;
        let owner_pid = self
            .owner_pid
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("owner_pid", e.to_string()))?;
        Ok(Workspace {
            id: WorkspaceId::from_string(self.id),
            name: self.name,
            runtime: self.runtime,
            spec,
            state,
            labels,
            runtime_info,
            cache_key: self.cache_key,
            error: self.error,
            owner_pid,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_active_at: self.last_active_at,
            node: None,
        })
    }
}
