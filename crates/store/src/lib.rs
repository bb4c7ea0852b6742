//! berth's embedded registry: every workspace, provisioning cache entry and
//! batch job (runs, tasks, logs), kept in one SQLite file (`$BERTH_HOME/berth.db`).
//!
//! Several berth processes (the CLI and the provider daemon) open the same
//! file at once, so the database runs in WAL mode with a busy timeout, every
//! write is one short statement or one `BEGIN IMMEDIATE` transaction, and no
//! transaction is held while anything else happens. The schema is versioned
//! with `PRAGMA user_version` and moved forward by [`schema`]'s migrations.
//!
//! Calls are synchronous and take well under a millisecond; async callers
//! wrap them as they see fit. A [`Store`] is `Send + Sync`.

mod cache;
mod error;
mod handover;
mod jobs;
mod owner;
mod schema;
mod workspaces;

pub use cache::CacheEntry;
pub use error::StoreError;
pub use workspaces::MIN_PREFIX;

use rusqlite::{Connection, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The registry file's name inside berth's home directory.
pub const DB_FILE: &str = "berth.db";

/// How long a statement waits for another process's write to finish before
/// giving up with "database is locked". Writes take microseconds, so this is
/// only reached when something is badly stuck.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The write-ahead log's pages (4 KiB each) past which a commit
/// checkpoints it (the next writer then starts it over) and a closing
/// handle empties it.
const WAL_PAGES: i64 = 128;
/// Prepared statements kept per connection: more than the registry has.
const CACHED_STATEMENTS: usize = 64;

/// Statements run through the connection's cache of prepared statements,
/// so that the frequent ones (a task's log line, a claim, a run's tasks)
/// are parsed once per connection rather than on every call.
pub(crate) trait Cached {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// A handle on the registry. Cheap calls, one connection behind a mutex:
/// calls from many threads are serialised here, calls from other handles
/// and processes are serialised by SQLite's locks.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the registry in `home`, creating `home`
    /// too, and brings its schema up to date.
    pub fn open(home: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(home).map_err(|source| StoreError::CreateDir {
            path: home.to_path_buf(),
            source,
        })?;
        let path = home.join(DB_FILE);
        // A database being created by several processes at once can answer
        // SQLITE_BUSY without consulting the busy handler (switching a new
        // file to WAL takes an exclusive lock that a concurrent opener may
        // hold); the whole opening is tried again until the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        let conn = loop {
            match Self::open_connection(&path) {
                Err(StoreError::Database { source, .. })
                    if is_busy(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other?,
            }
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Opens one connection: busy timeout, WAL, pragmas, schema.
    fn open_connection(path: &Path) -> Result<Connection, StoreError> {
        let db = |source| StoreError::Database {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(db)?;
        // The busy timeout first: switching to WAL and migrating both take
        // locks that another process opening at the same moment may hold.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        // In WAL mode `normal` never corrupts the database on a crash; it can
        // only lose the last commits on power loss, which berth's start-up
        // reconciliation (orphaned provisions) already copes with.
        conn.pragma_update(None, "synchronous", "normal")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", true).map_err(db)?;
        // Each CLI call is a process of its own: a checkpoint when it closes
        // the last connection would sync the database and delete the WAL,
        // which the next call's first write then recreates and syncs again.
        // The WAL stays instead, and is checkpointed as it fills up.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(db)?;
        // A WAL left behind has its price: the first connection of every
        // process rebuilds the WAL's index by reading each page in it. So
        // it is checkpointed at WAL_PAGES, not at SQLite's 1,000 pages
        // (4 MiB read by each call).
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)
            .map_err(db)?;
        schema::migrate(&mut conn, path)?;
        conn.set_prepared_statement_cache_capacity(CACHED_STATEMENTS);
        Ok(conn)
    }

    /// Where the registry lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A number that changes whenever another handle, in this process or
    /// another, commits to the registry (SQLite's `data_version`; this
    /// handle's own writes leave it alone): a microsecond's check of
    /// whether anything may have changed.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .pragma_query_value(None, "data_version", |row| row.get(0))
            .map_err(|source| StoreError::Database {
                path: self.path.clone(),
                source,
            })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave the connection in a
        // half-written state that matters: SQLite rolls back an unfinished
        // transaction when the next one begins. So a poisoned lock is used.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction: the write lock is
    /// taken up front, so a read-modify-write never fails half-way with
    /// "database is locked" when another process writes at the same time.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.db(e))?;
        let value = f(&tx)?;
        tx.commit().map_err(|e| self.db(e))?;
        Ok(value)
    }

    fn db(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for Store {
    /// Empties a WAL grown past [`WAL_PAGES`]. A checkpoint alone does not
    /// shorten the WAL: a later write in the same process starts it over,
    /// and a CLI call writes once at most (the activity of the workspace
    /// it used). Without this the WAL would grow by a page a call, and
    /// every call's first connection reads all of it to rebuild the
    /// index. A reader in another process holds the truncation off; the
    /// next handle to close then does it, so nobody waits here.
    fn drop(&mut self) {
        const FRAME: u64 = 4096 + 24;
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let long = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_PAGES as u64 * FRAME);
        if !long {
            return;
        }
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        // Nothing to report to: the registry is intact either way, and the
        // truncation is only tried again.
        let _ = conn.busy_timeout(Duration::ZERO);
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

/// Whether SQLite answered that the database is locked by someone else.
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err,
        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::DatabaseBusy
    )
}
