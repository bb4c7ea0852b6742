//! The registry against a real SQLite file: records, lookups, the cache,
//! migrations, several handles and processes at once, and crashes.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::{Spec, Workspace, WorkspaceId, WorkspaceState, now_ms};
use berth_store::{CacheEntry, Store, StoreError};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;

fn workspace(name: &str) -> Workspace {
    workspace_with_id(WorkspaceId::generate(), name)
}

fn workspace_with_id(id: WorkspaceId, name: &str) -> Workspace {
    let now = now_ms();
    Workspace {
        id,
        name: name.to_owned(),
        runtime: "local".to_owned(),
        spec: Spec::parse(
            r#"{"name": "demo", "repositories": [{"url": "file:///srv/repo", "path": "src/repo",
                "ref": "main", "credential": "forge"}], "setup_script": "make", "env": {"A": "1"}}"#,
            berth_core::spec::Format::Json,
        )
        .unwrap(),
        state: WorkspaceState::Creating,
        labels: [("team".to_owned(), "search".to_owned())].into(),
        runtime_info: json!({"dir": "/tmp/x"}),
        cache_key: None,
        error: None,
        owner_pid: None,
        created_at: now,
        updated_at: now,
        last_active_at: now,
        node: None,
    }
}

fn id(text: &str) -> WorkspaceId {
    WorkspaceId::from_string(text)
}

fn raw(home: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(home.join(berth_store::DB_FILE)).unwrap()
}

#[test]
fn open_creates_the_home_directory_and_a_wal_database() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("nested/home");
    let store = Store::open(&home).unwrap();
    assert_eq!(store.path(), home.join("berth.db"));
    let mode: String = raw(&home)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // Opening again (as every CLI call does) keeps what is there.
    store.insert_workspace(&workspace("a")).unwrap();
    drop(store);
    assert_eq!(Store::open(&home).unwrap().list(false).unwrap().len(), 1);
}

#[test]
fn a_process_that_wrote_and_closed_leaves_the_wal_for_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let ws = workspace("a");
    store.insert_workspace(&ws).unwrap();
    drop(store);
    // Not checkpointed and deleted on close: the next process's first
    // write appends to it rather than creating and syncing a new one.
    let wal = tmp.path().join("berth.db-wal");
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "{}",
        wal.display()
    );
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get(&ws.id).unwrap(), ws);
}

#[test]
fn many_processes_writing_keep_the_wal_each_open_reads_short() {
    let tmp = tempfile::tempdir().unwrap();
    // Each call a process of its own, as the CLI's are: open, write, close.
    for i in 0..400 {
        let store = Store::open(tmp.path()).unwrap();
        let ws = workspace(&format!("ws-{i}"));
        store.insert_workspace(&ws).unwrap();
        store.record_activity(&ws.id, now_ms()).unwrap();
        drop(store);
    }
    // Every open reads the whole WAL to rebuild its index: it is
    // checkpointed and started over long before SQLite's 4 MiB default.
    let wal = std::fs::metadata(tmp.path().join("berth.db-wal"))
        .unwrap()
        .len();
    assert!(wal < 1 << 20, "the WAL holds {wal} bytes");
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.list(false).unwrap().len(), 400);
}

#[test]
fn many_processes_writing_once_each_keep_the_wal_each_open_reads_short() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = workspace("busy");
    Store::open(tmp.path())
        .unwrap()
        .insert_workspace(&ws)
        .unwrap();
    // `berth exec` after `berth exec`: each opens the registry, records
    // that the workspace was used, and ends. No process writes twice, so
    // none gets to start the WAL over after a checkpoint.
    let mut last = 0;
    for i in 0..400 {
        let store = Store::open(tmp.path()).unwrap();
        last = ws.created_at + 1_000 * i;
        store.record_activity(&ws.id, last).unwrap();
        drop(store);
    }
    let wal = std::fs::metadata(tmp.path().join("berth.db-wal"))
        .unwrap()
        .len();
    assert!(wal < 1 << 20, "the WAL holds {wal} bytes");
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get(&ws.id).unwrap().last_active_at, last);
}

#[test]
fn a_workspace_reads_back_as_it_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut ws = workspace("full");
    ws.cache_key = Some("k1".into());
    ws.error = Some("setup failed".into());
    ws.owner_pid = Some(std::process::id());
    ws.runtime_info = json!({"dir": "/w", "nested": [1, 2, {"x": null}]});
    store.insert_workspace(&ws).unwrap();
    assert_eq!(store.get(&ws.id).unwrap(), ws);
}

#[test]
fn get_of_an_unknown_id_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let err = store.get(&id("01nosuchworkspace")).unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert_eq!(err.to_string(), "no workspace `01nosuchworkspace`");
}

#[test]
fn names_are_unique_among_workspaces_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let first = workspace("web");
    store.insert_workspace(&first).unwrap();
    let err = store.insert_workspace(&workspace("web")).unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyExists(name) if name == "web"));
    assert!(err.to_string().contains("`web`"), "{err}");
    assert_eq!(store.list(true).unwrap().len(), 1, "nothing was written");

    store
        .set_state(&first.id, WorkspaceState::Removed, None)
        .unwrap();
    let second = workspace("web");
    store.insert_workspace(&second).unwrap();
    let live: Vec<_> = store
        .list(false)
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(live, vec![second.id.clone()]);
    let all: Vec<_> = store
        .list(true)
        .unwrap()
        .into_iter()
        .map(|w| w.id)
        .collect();
    assert_eq!(all, vec![first.id.clone(), second.id]);

    // Bringing the removed one back would make two live `web`s.
    let err = store
        .set_state(&first.id, WorkspaceState::Running, None)
        .unwrap_err();
    assert!(matches!(&err, StoreError::AlreadyExists(name) if name == "web"));
    assert_eq!(store.get(&first.id).unwrap().state, WorkspaceState::Removed);
}

#[test]
fn a_duplicate_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let ws = workspace("a");
    store.insert_workspace(&ws).unwrap();
    let mut again = ws.clone();
    again.name = "b".into();
    let err = store.insert_workspace(&again).unwrap_err();
    assert!(matches!(&err, StoreError::DuplicateId(i) if *i == ws.id.to_string()));
}

#[test]
fn list_is_in_creation_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    for (name, created) in [("c", 300), ("a", 100), ("b", 200)] {
        let mut ws = workspace(name);
        ws.created_at = created;
        store.insert_workspace(&ws).unwrap();
    }
    let names: Vec<_> = store
        .list(false)
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
}

#[test]
fn resolve_takes_ids_prefixes_and_names() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let a = workspace_with_id(id("01abcd0000000000000000000a"), "alpha");
    let b = workspace_with_id(id("01abcd0000000000000000000b"), "beta");
    let c = workspace_with_id(id("01ffff0000000000000000000c"), "gamma");
    for ws in [&a, &b, &c] {
        store.insert_workspace(ws).unwrap();
    }
    let resolve = |q: &str| store.resolve(q).map(|w| w.id);

    assert_eq!(resolve("01abcd0000000000000000000a").unwrap(), a.id);
    assert_eq!(
        resolve("01ABCD0000000000000000000A").unwrap(),
        a.id,
        "ids pasted in upper case"
    );
    assert_eq!(resolve("01ff").unwrap(), c.id);
    assert_eq!(resolve("beta").unwrap(), b.id);

    // Too short to be a prefix.
    let err = store.resolve("01f").unwrap_err();
    assert_eq!(err.to_string(), "no workspace `01f`");

    let err = store.resolve("01abcd").unwrap_err();
    let StoreError::Ambiguous { candidates, .. } = &err else {
        panic!("expected ambiguity, got {err}");
    };
    assert_eq!(candidates.len(), 2);
    let message = err.to_string();
    assert!(
        message.contains("01abcd0000000000000000000a (alpha, creating)"),
        "{message}"
    );
    assert!(
        message.contains("01abcd0000000000000000000b (beta, creating)"),
        "{message}"
    );

    assert!(matches!(store.resolve("delta"), Err(StoreError::NotFound(q)) if q == "delta"));
}

#[test]
fn resolve_prefers_workspaces_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let old = workspace_with_id(id("01abcd0000000000000000000a"), "web");
    let new = workspace_with_id(id("01abcd0000000000000000000b"), "api");
    store.insert_workspace(&old).unwrap();
    store.insert_workspace(&new).unwrap();
    store
        .set_state(&old.id, WorkspaceState::Removed, None)
        .unwrap();

    // The removed workspace's name no longer resolves ...
    assert!(matches!(store.resolve("web"), Err(StoreError::NotFound(_))));
    // ... its exact id still does, and so does a prefix only it has ...
    assert_eq!(store.resolve(old.id.as_str()).unwrap().id, old.id);
    assert_eq!(
        store.resolve("01abcd0000000000000000000a").unwrap().id,
        old.id
    );
    // ... and a prefix shared with a live workspace means the live one.
    assert_eq!(store.resolve("01abcd").unwrap().id, new.id);
}

#[test]
fn a_name_that_is_also_another_workspaces_prefix_is_ambiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let a = workspace_with_id(id("01abcd0000000000000000000a"), "x");
    let b = workspace_with_id(id("01ffff0000000000000000000b"), "01abcd");
    store.insert_workspace(&a).unwrap();
    store.insert_workspace(&b).unwrap();
    let err = store.resolve("01abcd").unwrap_err();
    assert!(matches!(err, StoreError::Ambiguous { ref candidates, .. } if candidates.len() == 2));
    // A name that prefixes nothing is just the name.
    let c = workspace_with_id(id("01eeee0000000000000000000c"), "01zz-name");
    store.insert_workspace(&c).unwrap();
    assert_eq!(store.resolve("01zz-name").unwrap().id, c.id);
}

#[test]
fn updates_change_one_field_and_the_update_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut ws = workspace("w");
    ws.updated_at = 1;
    store.insert_workspace(&ws).unwrap();

    let failed = store
        .set_state(&ws.id, WorkspaceState::Failed, Some("setup exited with 2"))
        .unwrap();
    assert_eq!(failed.state, WorkspaceState::Failed);
    assert_eq!(failed.error.as_deref(), Some("setup exited with 2"));
    assert!(failed.updated_at > 1);
    assert_eq!(failed.spec, ws.spec);

    let running = store
        .set_state(&ws.id, WorkspaceState::Running, None)
        .unwrap();
    assert_eq!(running.error, None, "a new state clears the old error");

    let info = json!({"dir": "/elsewhere", "pid": 42});
    assert_eq!(
        store.set_runtime_info(&ws.id, &info).unwrap().runtime_info,
        info
    );
    assert_eq!(
        store
            .set_cache_key(&ws.id, Some("abc"))
            .unwrap()
            .cache_key
            .as_deref(),
        Some("abc")
    );
    assert_eq!(store.set_cache_key(&ws.id, None).unwrap().cache_key, None);
    assert_eq!(store.get(&ws.id).unwrap().runtime_info, info, "persisted");

    let missing = id("01missing");
    for err in [
        store
            .set_state(&missing, WorkspaceState::Stopped, None)
            .unwrap_err(),
        store.set_runtime_info(&missing, &info).unwrap_err(),
        store.set_cache_key(&missing, None).unwrap_err(),
        store.set_owner(&missing, None).unwrap_err(),
    ] {
        assert_eq!(err.to_string(), "no workspace `01missing`");
    }
}

#[test]
fn activity_moves_only_forward_and_leaves_the_update_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let mut ws = workspace("busy");
    ws.updated_at = 7;
    ws.last_active_at = 1_000;
    store.insert_workspace(&ws).unwrap();
    store.record_activity(&ws.id, 5_000).unwrap();
    store.record_activity(&ws.id, 3_000).unwrap();
    let read = store.get(&ws.id).unwrap();
    assert_eq!(read.last_active_at, 5_000, "an older time does not go back");
    assert_eq!(read.updated_at, 7);
}

#[test]
fn leaving_creating_forgets_the_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let ws = workspace("w");
    store.insert_workspace(&ws).unwrap();
    let owned = store.set_owner(&ws.id, Some(std::process::id())).unwrap();
    assert_eq!(owned.owner_pid, Some(std::process::id()));
    let running = store
        .set_state(&ws.id, WorkspaceState::Running, None)
        .unwrap();
    assert_eq!(running.owner_pid, None);
}

#[test]
fn orphaned_provisions_are_those_whose_owner_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let me = std::process::id();

    let mine = workspace("mine");
    store.insert_workspace(&mine).unwrap();
    store.set_owner(&mine.id, Some(me)).unwrap();

    let ownerless = workspace("ownerless");
    store.insert_workspace(&ownerless).unwrap();

    let mut exited = Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    let dead = workspace("dead");
    store.insert_workspace(&dead).unwrap();
    store.set_owner(&dead.id, Some(dead_pid)).unwrap();

    // Our pid, but recorded with another start time: the pid was reused.
    let reused = workspace("reused");
    store.insert_workspace(&reused).unwrap();
    store.set_owner(&reused.id, Some(me)).unwrap();
    raw(tmp.path())
        .execute(
            "UPDATE workspaces SET owner_start = owner_start + 1 WHERE id = ?1",
            [reused.id.as_str()],
        )
        .unwrap();

    // Not creating: never an orphaned provision, whoever owned it.
    let done = workspace("done");
    store.insert_workspace(&done).unwrap();
    store
        .set_state(&done.id, WorkspaceState::Running, None)
        .unwrap();

    let mut orphans: Vec<_> = store
        .orphaned_provisions()
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect();
    // Made in the same millisecond, so in id order among themselves.
    orphans.sort();
    assert_eq!(orphans, ["dead", "ownerless", "reused"]);
}

#[test]
fn past_deadline_finds_exactly_the_workspaces_whose_deadline_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let at = 1_000_000_000;
    let make = |name: &str, state, idle, lifetime, used: i64| {
        let mut ws = workspace(name);
        ws.state = state;
        ws.spec.timeouts.idle = idle;
        ws.spec.timeouts.lifetime = lifetime;
        ws.created_at = at;
        ws.last_active_at = at + used;
        store.insert_workspace(&ws).unwrap();
        ws.id
    };
    use WorkspaceState::*;
    let idle_now = make("idle-now", Running, Some(10), None, 5_000);
    make("idle-soon", Running, Some(10), None, 5_001);
    make("idle-stopped", Stopped, Some(1), None, 0);
    let old_stopped = make("old-stopped", Stopped, None, Some(15), 0);
    let old_running = make("old-running", Running, Some(3_600), Some(15), 14_000);
    make("old-creating", Creating, None, Some(1), 0);
    make("old-removed", Removed, Some(1), Some(1), 0);
    make("never", Running, Some(u64::MAX), Some(u64::MAX), 0);
    make("no-timeouts", Running, None, None, 0);

    let found: Vec<WorkspaceId> = store
        .past_deadline(at + 15_000)
        .unwrap()
        .into_iter()
        .map(|ws| ws.id)
        .collect();
    let mut expected = vec![idle_now, old_stopped, old_running];
    expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    assert_eq!(found, expected);
    assert!(store.past_deadline(at + 14_999).unwrap().is_empty());
}

#[test]
fn a_provision_killed_mid_way_is_found_orphaned() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_child("provision", tmp.path());
    let mut lines = child_lines(&mut child);
    let id = id(lines.next().unwrap().strip_prefix("ID ").unwrap());
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.get(&id).unwrap().owner_pid, Some(child.id()));
    assert!(
        store.orphaned_provisions().unwrap().is_empty(),
        "a live provision is not orphaned"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let orphans = store.orphaned_provisions().unwrap();
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0].id, id);
}

#[test]
fn cache_entries_are_kept_touched_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let entry = |key: &str, used: i64| CacheEntry {
        key: key.into(),
        runtime: "local".into(),
        created_at: 10,
        last_used_at: used,
        info: json!({"dir": format!("/cache/{key}")}),
        size: Some(4096),
    };
    assert_eq!(store.cache_entry("k1").unwrap(), None);
    store.put_cache_entry(&entry("k1", 50)).unwrap();
    store.put_cache_entry(&entry("k2", 20)).unwrap();
    assert_eq!(store.cache_entry("k1").unwrap(), Some(entry("k1", 50)));
    let mut unknown = entry("k3", 5);
    unknown.size = None;
    store.put_cache_entry(&unknown).unwrap();
    assert_eq!(store.cache_entry("k3").unwrap(), Some(unknown));
    store.remove_cache_entry("k3").unwrap();

    let keys = |store: &Store| -> Vec<String> {
        store
            .cache_entries()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert_eq!(keys(&store), ["k2", "k1"], "least recently used first");

    store.touch_cache_entry("k2").unwrap();
    assert!(store.cache_entry("k2").unwrap().unwrap().last_used_at >= now_ms() - 60_000);
    assert_eq!(keys(&store), ["k1", "k2"]);

    // Putting an existing key replaces it.
    let mut replaced = entry("k1", 60);
    replaced.info = json!({"dir": "/new"});
    store.put_cache_entry(&replaced).unwrap();
    assert_eq!(store.cache_entry("k1").unwrap(), Some(replaced));

    store.remove_cache_entry("k1").unwrap();
    store.remove_cache_entry("k1").unwrap();
    assert_eq!(store.cache_entry("k1").unwrap(), None);
    let err = store.touch_cache_entry("k1").unwrap_err();
    assert_eq!(err.to_string(), "no provisioning cache entry `k1`");
}

/// The schema as version 1 wrote it, kept here verbatim: the test is that a
/// database written by that version opens and works under this one.
const VERSION_1: &str = "
    CREATE TABLE workspaces (
        id TEXT PRIMARY KEY NOT NULL, name TEXT NOT NULL, runtime TEXT NOT NULL,
        spec TEXT NOT NULL, state TEXT NOT NULL, runtime_info TEXT NOT NULL DEFAULT '{}',
        cache_key TEXT, error TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX workspaces_live_name ON workspaces (name) WHERE state <> 'removed';
    CREATE INDEX workspaces_created ON workspaces (created_at, id);
    INSERT INTO workspaces VALUES ('01oldworkspace0000000000000', 'old', 'local',
        '{\"name\":\"old\",\"setup_script\":\"true\"}', 'running', '{\"dir\":\"/w/old\"}',
        'key1', NULL, 1000, 2000);
    PRAGMA user_version = 1;";

#[test]
fn a_version_1_database_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    raw(tmp.path()).execute_batch(VERSION_1).unwrap();

    let store = Store::open(tmp.path()).unwrap();
    let version: i64 = raw(tmp.path())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 6);

    let old = store.resolve("old").unwrap();
    assert_eq!(old.id.as_str(), "01oldworkspace0000000000000");
    assert_eq!(old.spec.setup_script.as_deref(), Some("true"));
    assert_eq!(old.runtime_info, json!({"dir": "/w/old"}));
    assert_eq!(old.cache_key.as_deref(), Some("key1"));
    assert_eq!((old.created_at, old.updated_at), (1000, 2000));
    assert_eq!(old.owner_pid, None);
    assert!(
        old.labels.is_empty(),
        "a workspace from before labels has none"
    );
    assert_eq!(
        old.idle_deadline(),
        None,
        "a workspace from before deadlines has none"
    );

    // What version 2 added works on the migrated file.
    store.set_owner(&old.id, Some(std::process::id())).unwrap();
    store
        .put_cache_entry(&CacheEntry {
            key: "key1".into(),
            runtime: "local".into(),
            created_at: 1,
            last_used_at: 1,
            info: json!({}),
            size: None,
        })
        .unwrap();
    assert!(store.cache_entry("key1").unwrap().is_some());
    assert!(matches!(
        store.insert_workspace(&workspace("old")),
        Err(StoreError::AlreadyExists(_))
    ));
}

#[test]
fn a_database_from_a_newer_berth_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    raw(tmp.path())
        .execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
        .unwrap();
    let err = Store::open(tmp.path()).err().unwrap();
    assert!(matches!(
        err,
        StoreError::UnknownVersion {
            found: 99,
            supported: 6,
            ..
        }
    ));
    assert!(err.to_string().contains("berth.db"), "{err}");
    let version: i64 = raw(tmp.path())
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 99);
}

#[test]
fn corrupt_rows_are_reported_with_their_id_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let ws = workspace("w");
    store.insert_workspace(&ws).unwrap();
    raw(tmp.path())
        .execute("UPDATE workspaces SET state = 'exploded'", [])
        .unwrap();
    let err = store.get(&ws.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "workspace `{}` has an unreadable `state` in the registry: unknown state `exploded`",
            ws.id
        )
    );
}

#[test]
fn threads_and_handles_share_one_file_without_lock_errors() {
    const THREADS: usize = 8;
    const EACH: usize = 40;
    let tmp = tempfile::tempdir().unwrap();
    let handles = [
        Arc::new(Store::open(tmp.path()).unwrap()),
        Arc::new(Store::open(tmp.path()).unwrap()),
    ];
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&handles[t % 2]);
            std::thread::spawn(move || -> Result<(), StoreError> {
                for i in 0..EACH {
                    let ws = workspace(&format!("t{t}-{i}"));
                    store.insert_workspace(&ws)?;
                    store.set_owner(&ws.id, Some(std::process::id()))?;
                    store.set_runtime_info(&ws.id, &json!({"thread": t, "i": i}))?;
                    store.set_state(&ws.id, WorkspaceState::Running, None)?;
                    store.resolve(&ws.name)?;
                    if i % 10 == 0 {
                        store.list(false)?;
                    }
                    store.put_cache_entry(&CacheEntry {
                        key: format!("k{}", i % 5),
                        runtime: "local".into(),
                        created_at: now_ms(),
                        last_used_at: now_ms(),
                        info: json!({"by": t}),
                        size: Some(1),
                    })?;
                    store.touch_cache_entry(&format!("k{}", i % 5))?;
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap().unwrap();
    }
    let all = handles[0].list(false).unwrap();
    assert_eq!(all.len(), THREADS * EACH);
    assert!(all.iter().all(|w| w.state == WorkspaceState::Running
        && w.runtime_info["thread"].is_u64()
        && w.owner_pid.is_none()));
    assert_eq!(handles[1].cache_entries().unwrap().len(), 5);
}

#[test]
fn processes_share_one_file_without_lock_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Each child opens its own store at the same moment as the others, so
    // creation and migration race too.
    let mut children: Vec<Child> = (0..3).map(|_| spawn_child("writer", tmp.path())).collect();
    let store = Store::open(tmp.path()).unwrap();
    for i in 0..WRITES {
        let ws = workspace(&format!("parent-{i}"));
        store.insert_workspace(&ws).unwrap();
        store
            .set_state(&ws.id, WorkspaceState::Stopped, None)
            .unwrap();
    }
    for child in &mut children {
        let lines: Vec<String> = child_lines(child).collect();
        assert_eq!(lines, ["DONE"]);
        assert!(child.wait().unwrap().success());
    }
    let all = store.list(false).unwrap();
    assert_eq!(all.len(), 4 * WRITES);
    let running = all
        .iter()
        .filter(|w| w.state == WorkspaceState::Running)
        .count();
    assert_eq!(running, 3 * WRITES);
}

#[test]
fn a_writer_killed_at_any_moment_leaves_a_consistent_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = spawn_child("crash", tmp.path());
    // Let it write for a while, then kill it wherever it is.
    let mut lines = child_lines(&mut child);
    for _ in 0..3 {
        assert_eq!(lines.next().as_deref(), Some("PROGRESS"));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let integrity: String = raw(tmp.path())
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let store = Store::open(tmp.path()).unwrap();
    let all = store.list(true).unwrap();
    assert!(all.len() >= 30, "the child wrote {} workspaces", all.len());
    for ws in &all {
        // Every update is all-or-nothing: a failed workspace has its error
        // and its info together, never one without the other.
        match ws.state {
            WorkspaceState::Failed => {
                assert_eq!(ws.error.as_deref(), Some(ws.name.as_str()));
            }
            WorkspaceState::Creating => assert_eq!(ws.error, None),
            other => panic!("unexpected state {other}"),
        }
    }
    // And the registry is writable again at once.
    store.insert_workspace(&workspace("after")).unwrap();
}

// ---- child processes -------------------------------------------------------

const WRITES: usize = 60;
const CHILD_ENV: &str = "BERTH_STORE_TEST_CHILD";
const HOME_ENV: &str = "BERTH_STORE_TEST_HOME";

/// Re-runs this test binary as a separate process doing `role` on the
/// registry in `home` (see `child_process`).
fn spawn_child(role: &str, home: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, role)
        .env(HOME_ENV, home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The child's protocol messages (after `@@`), skipping the test harness's
/// own output, which may share their line.
fn child_lines(child: &mut Child) -> impl Iterator<Item = String> + use<> {
    let stdout: ChildStdout = child.stdout.take().unwrap();
    BufReader::new(stdout)
        .lines()
        .map(Result::unwrap)
        .filter_map(|line| line.split_once("@@").map(|(_, message)| message.to_owned()))
}

#[test]
#[ignore = "run as a child process by the tests above"]
fn child_process() {
    let role = std::env::var(CHILD_ENV).unwrap();
    let home = std::path::PathBuf::from(std::env::var(HOME_ENV).unwrap());
    let store = Store::open(&home).unwrap();
    let pid = std::process::id();
    match role.as_str() {
        "writer" => {
            for i in 0..WRITES {
                let ws = workspace(&format!("{pid}-{i}"));
                store.insert_workspace(&ws).unwrap();
                store.set_owner(&ws.id, Some(pid)).unwrap();
                store
                    .set_state(&ws.id, WorkspaceState::Running, None)
                    .unwrap();
                store.resolve(&ws.name).unwrap();
            }
            println!("@@DONE");
        }
        "provision" => {
            let mut ws = workspace("provisioning");
            ws.owner_pid = Some(pid);
            store.insert_workspace(&ws).unwrap();
            println!("@@ID {}", ws.id);
            // Provisioning "forever", until the parent kills this process.
            std::io::stdin().read_line(&mut String::new()).unwrap();
        }
        "crash" => {
            for i in 0.. {
                let ws = workspace(&format!("w{i}"));
                store.insert_workspace(&ws).unwrap();
                store
                    .set_state(&ws.id, WorkspaceState::Failed, Some(&ws.name))
                    .unwrap();
                if i % 10 == 9 {
                    println!("@@PROGRESS");
                }
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn the_data_version_moves_when_another_handle_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let watcher = Store::open(tmp.path()).unwrap();
    let writer = Store::open(tmp.path()).unwrap();
    let before = watcher.data_version().unwrap();
    assert_eq!(
        watcher.data_version().unwrap(),
        before,
        "nothing was written"
    );
    writer.insert_workspace(&workspace("a")).unwrap();
    let after = watcher.data_version().unwrap();
    assert_ne!(after, before, "another handle's commit is seen");
    assert_eq!(watcher.data_version().unwrap(), after);
}
