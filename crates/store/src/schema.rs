//! The registry's schema and its forward-only migrations.
//!
//! The database's `PRAGMA user_version` is the number of migrations applied.
//! Opening a registry applies the missing ones in one `BEGIN IMMEDIATE`
//! transaction, so two processes opening an old file at once migrate it
//! exactly once and a crash mid-migration leaves the old version intact.
//! Migrations are never edited once released: a change is a new entry.
//!
//! Later concepts (layers, snapshots, jobs and their logs) each get their
//! own tables through a new migration and their own module beside
//! `workspaces` and `cache`.

use crate::StoreError;
use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

/// Migration `i` brings the schema from version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the workspaces.
    "CREATE TABLE workspaces (
        id           TEXT PRIMARY KEY NOT NULL,
        name         TEXT NOT NULL,
        runtime      TEXT NOT NULL,
        spec         TEXT NOT NULL,             -- the Spec as JSON
        state        TEXT NOT NULL,
        runtime_info TEXT NOT NULL DEFAULT '{}', -- the runtime's own JSON
        cache_key    TEXT,
        error        TEXT,
        created_at   INTEGER NOT NULL,          -- ms since the Unix epoch
        updated_at   INTEGER NOT NULL
    ) STRICT;
    -- Names are unique among the workspaces that are not removed; removed
    -- ones stay listed and keep their names.
    CREATE UNIQUE INDEX workspaces_live_name ON workspaces (name) WHERE state <> 'removed';
    CREATE INDEX workspaces_created ON workspaces (created_at, id);",
    // 2: who is provisioning a workspace, so that a crashed provision can
    // be found; and the provisioning cache.
    "ALTER TABLE workspaces ADD COLUMN owner_pid INTEGER;
    -- The owner's start time (clock ticks after boot), so that a new process
    -- that was given a dead owner's pid is not taken for the owner.
    ALTER TABLE workspaces ADD COLUMN owner_start INTEGER;
    CREATE INDEX workspaces_state ON workspaces (state);
    CREATE TABLE cache_entries (
        key          TEXT PRIMARY KEY NOT NULL,
        runtime      TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        info         TEXT NOT NULL DEFAULT '{}'  -- the runtime's own JSON
    ) STRICT;",
    // 3: the user's labels of each workspace.
    "ALTER TABLE workspaces ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'; -- a JSON object",
    // 4: batch jobs: their runs, tasks (the queue), attempts, logs and the
    // scheduled times that were skipped.
    "CREATE TABLE jobs (
        name         TEXT PRIMARY KEY NOT NULL,
        spec         TEXT NOT NULL,             -- the job spec as JSON
        schedule     TEXT,                      -- a cron expression
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE job_runs (
        id           TEXT PRIMARY KEY NOT NULL,
        job          TEXT NOT NULL REFERENCES jobs (name),
        spec         TEXT NOT NULL,             -- the job spec the run started with
        state        TEXT NOT NULL,
        trigger      TEXT NOT NULL,
        concurrency  INTEGER NOT NULL,
        cancelled    INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL,
        ended_at     INTEGER
    ) STRICT;
    CREATE INDEX job_runs_job ON job_runs (job, created_at);
    CREATE TABLE job_tasks (
        id           TEXT PRIMARY KEY NOT NULL,
        run_id       TEXT NOT NULL REFERENCES job_runs (id),
        position     INTEGER NOT NULL,
        url          TEXT NOT NULL,
        ref          TEXT,
        credential   TEXT,
        state        TEXT NOT NULL,
        queued_at    INTEGER NOT NULL,          -- FIFO order; not claimed before it
        attempts     INTEGER NOT NULL DEFAULT 0,
        resets       INTEGER NOT NULL DEFAULT 0,
        token        TEXT,                      -- the current attempt's claim
        runner       TEXT,
        heartbeat_at INTEGER,
        cancel       INTEGER NOT NULL DEFAULT 0,
        exit_code    INTEGER,
        failed_step  TEXT,
        error        TEXT,
        base_commit  TEXT,
        workspace    TEXT,
        patch        BLOB,
        started_at   INTEGER,
        ended_at     INTEGER,
        published_branch TEXT,
        published_commit TEXT
    ) STRICT;
    CREATE INDEX job_tasks_run ON job_tasks (run_id, position);
    CREATE INDEX job_tasks_queue ON job_tasks (state, queued_at);
    CREATE TABLE job_attempts (
        task_id      TEXT NOT NULL REFERENCES job_tasks (id),
        attempt      INTEGER NOT NULL,
        state        TEXT NOT NULL,
        runner       TEXT,
        exit_code    INTEGER,
        failed_step  TEXT,
        error        TEXT,
        started_at   INTEGER NOT NULL,
        ended_at     INTEGER,
        PRIMARY KEY (task_id, attempt)
    ) STRICT;
    CREATE TABLE job_logs (
        task_id      TEXT NOT NULL REFERENCES job_tasks (id),
        seq          INTEGER NOT NULL,
        attempt      INTEGER NOT NULL,
        at           INTEGER NOT NULL,
        event        TEXT NOT NULL,             -- a LogEvent as JSON
        PRIMARY KEY (task_id, seq)
    ) STRICT;
    CREATE TABLE job_skipped_times (
        job          TEXT NOT NULL REFERENCES jobs (name),
        at           INTEGER NOT NULL,
        reason       TEXT NOT NULL
    ) STRICT;",
    // 5: when each workspace was last used (its idle deadline counts from
    // it), and the disk space each cache entry takes (its budget counts it).
    "ALTER TABLE workspaces ADD COLUMN last_active_at INTEGER NOT NULL DEFAULT 0; -- ms
    ALTER TABLE cache_entries ADD COLUMN size INTEGER; -- bytes; NULL when unknown",
    // 6: a cluster's runs: whether its event stream holds each run's
    // making (a run made straight in the registry is shared once), and how
    // far the registry folded that stream.
    "ALTER TABLE job_runs ADD COLUMN shared INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE cluster_folds (
        stream       TEXT PRIMARY KEY NOT NULL,
        seq          INTEGER NOT NULL           -- the last stream sequence applied
    ) STRICT;",
];

/// The schema version this build writes.
pub(crate) const LATEST: i64 = MIGRATIONS.len() as i64;

pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let db = |source| StoreError::Database {
        path: path.to_path_buf(),
        source,
    };
    let version = user_version(conn).map_err(db)?;
    if version == LATEST {
        // The common case, checked without taking the write lock.
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db)?;
    // Read again under the lock: another process may have migrated since.
    let version = user_version(&tx).map_err(db)?;
    let pending = usize::try_from(version)
        .ok()
        .and_then(|applied| MIGRATIONS.get(applied..))
        .ok_or_else(|| StoreError::UnknownVersion {
            path: path.to_path_buf(),
            found: version,
            supported: LATEST,
        })?;
    for sql in pending {
        tx.execute_batch(sql).map_err(db)?;
    }
    tx.pragma_update(None, "user_version", LATEST).map_err(db)?;
    tx.commit().map_err(db)
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}
