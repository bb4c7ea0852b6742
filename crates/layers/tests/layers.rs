//! The layer store against a real overlayfs: changes made through a
//! mounted overlay are listed exactly, frozen layers stack, references
//! keep layers alive across a reopen, exports round-trip.
//!
//! Mounting needs root and overlayfs; the tests say so when missing.

#![expect(clippy::unwrap_used, reason = "a failing step should fail the test")]

use berth_core::{Change, ChangeKind, FileKind};
use berth_layers::{
    IdShift, LayerKind, LayerStore, changes, export_archive, export_dir, extract_archive,
};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "layers/hostile.rs"]
mod hostile;

fn require_overlay() {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    assert!(
        filesystems.contains("overlay"),
        "these tests need overlayfs (modprobe overlay)"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root to mount overlayfs"
    );
}

/// Runs `script` with the overlay of `lowers` (topmost first) and `upper`
/// mounted at `$M`, in a private mount namespace that dies with it.
fn through_overlay(lowers: &[PathBuf], upper: &Path, script: &str) {
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path().join("work");
    let merged = scratch.path().join("merged");
    fs::create_dir_all(&work).unwrap();
    fs::create_dir_all(&merged).unwrap();
    let lowerdir: Vec<_> = lowers.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-euc"])
        .arg(format!(
            "mount -t overlay overlay -o \"$O\" \"$M\"; cd \"$M\"; {script}"
        ))
        .env("O", options)
        .env("M", &merged)
        .status()
        .unwrap();
    assert!(status.success(), "script failed in the overlay: {script}");
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn base(store: &LayerStore) -> berth_layers::Layer {
    store
        .get_or_build(LayerKind::Base, &[b"test-base"], "test", |tree| {
            write(tree, "ws/src/a/b/keep.txt", "keep\n");
            write(tree, "ws/src/a/b/edit.txt", "before\n");
            write(tree, "ws/src/a/old/x.txt", "x\n");
            write(tree, "ws/src/a/old/deep/y.txt", "y\n");
            write(tree, "ws/gone.txt", "gone\n");
            write(tree, "ws/mode.sh", "echo\n");
            write(tree, "ws/same.txt", "same\n");
            write(tree, "ws/replaced/one.txt", "1\n");
            write(tree, "ws/replaced/two.txt", "2\n");
            write(tree, "outside.txt", "not under ws\n");
            Ok(())
        })
        .unwrap()
}

fn change(path: &str, kind: ChangeKind, file_kind: FileKind) -> Change {
    Change::new(std::path::Path::new(path), kind, file_kind)
}

#[test]
fn changes_are_exact_for_edits_deletions_renames_and_replaced_dirs() {
    require_overlay();
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let base = base(&store);
    let upper = home.path().join("upper");
    fs::create_dir(&upper).unwrap();
    through_overlay(
        std::slice::from_ref(&base.tree),
        &upper,
        "printf after > ws/src/a/b/edit.txt
         mv ws/src/a/old ws/src/a/new
         rm ws/gone.txt
         chmod 755 ws/mode.sh
         cp ws/same.txt /tmp/same.$$ && cat /tmp/same.$$ > ws/same.txt && rm /tmp/same.$$
         mkdir -p ws/brand/new && printf n > ws/brand/new/file.txt
         rm -rf ws/replaced && mkdir ws/replaced && printf 3 > ws/replaced/three.txt
         ln -s src/a/b/keep.txt ws/link
         printf t > outside2.txt",
    );
    let got = changes(&upper, std::slice::from_ref(&base.tree), Path::new("ws")).unwrap();
    use ChangeKind::*;
    use FileKind::{Dir, File, Symlink};
    let expected = vec![
        change("brand", Added, Dir),
        change("brand/new", Added, Dir),
        change("brand/new/file.txt", Added, File),
        change("gone.txt", Deleted, File),
        change("link", Added, Symlink),
        change("mode.sh", Modified, File),
        change("replaced/one.txt", Deleted, File),
        change("replaced/three.txt", Added, File),
        change("replaced/two.txt", Deleted, File),
        change("src/a/b/edit.txt", Modified, File),
        change("src/a/new", Added, Dir),
        change("src/a/new/deep", Added, Dir),
        change("src/a/new/deep/y.txt", Added, File),
        change("src/a/new/x.txt", Added, File),
        change("src/a/old", Deleted, Dir),
        change("src/a/old/deep", Deleted, Dir),
        change("src/a/old/deep/y.txt", Deleted, File),
        change("src/a/old/x.txt", Deleted, File),
    ];
    assert_eq!(got, expected);
}

#[test]
fn a_frozen_upper_stacks_and_the_next_upper_starts_clean() {
    require_overlay();
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let base = base(&store);
    let upper = home.path().join("upper");
    fs::create_dir(&upper).unwrap();
    through_overlay(
        std::slice::from_ref(&base.tree),
        &upper,
        "printf frozen > ws/src/a/b/edit.txt; rm -r ws/src/a/old",
    );
    let frozen = store
        .freeze(
            &upper,
            std::slice::from_ref(&base.meta.id),
            LayerKind::Snapshot,
            "test",
        )
        .unwrap();
    assert!(!upper.exists(), "freezing moves the upper directory");
    assert_eq!(
        frozen.stack(),
        vec![base.meta.id.clone(), frozen.meta.id.clone()]
    );

    let next = home.path().join("next");
    fs::create_dir(&next).unwrap();
    let lowers = store.trees_top_first(&frozen.stack());
    through_overlay(
        &lowers,
        &next,
        "test \"$(cat ws/src/a/b/edit.txt)\" = frozen; test ! -e ws/src/a/old; test -f ws/src/a/b/keep.txt",
    );
    assert_eq!(changes(&next, &lowers, Path::new("ws")).unwrap(), vec![]);

    // Deleting again on top of the frozen layer reports against it.
    through_overlay(&lowers, &next, "rm ws/src/a/b/edit.txt");
    assert_eq!(
        changes(&next, &lowers, Path::new("ws")).unwrap(),
        vec![change(
            "src/a/b/edit.txt",
            ChangeKind::Deleted,
            FileKind::File
        )]
    );
}

/// The base, and a cache layer frozen on it holding `ws/file`.
fn cached_on_base(
    store: &LayerStore,
    scratch: &Path,
) -> (berth_layers::Layer, berth_layers::Layer) {
    let base = base(store);
    let upper = scratch.join("upper");
    write(&upper, "ws/file", "x");
    let top = store
        .freeze(
            &upper,
            std::slice::from_ref(&base.meta.id),
            LayerKind::Cache,
            "ws1",
        )
        .unwrap();
    (base, top)
}

#[test]
fn referenced_layers_and_their_parents_survive_gc_and_a_reopen() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("layers");
    let store = LayerStore::open(&root).unwrap();
    let (base, top) = cached_on_base(&store, home.path());
    let loose = store
        .get_or_build(LayerKind::Base, &[b"loose"], "test", |_| Ok(()))
        .unwrap();
    store.add_ref(&top.meta.id, "cache:key1").unwrap();
    assert!(store.add_ref(&top.meta.id, "../escape").is_err());

    let reopened = LayerStore::open(&root).unwrap();
    assert_eq!(reopened.gc().unwrap(), vec![loose.meta.id.clone()]);
    assert!(
        reopened.contains(&base.meta.id),
        "a parent of a held layer stays"
    );
    assert!(reopened.contains(&top.meta.id));
    assert_eq!(reopened.refs(&top.meta.id).unwrap(), vec!["cache:key1"]);
    assert_eq!(
        fs::read_to_string(reopened.get(&top.meta.id).unwrap().tree.join("ws/file")).unwrap(),
        "x"
    );

    reopened.remove_ref(&top.meta.id, "cache:key1").unwrap();
    let mut removed = reopened.gc().unwrap();
    removed.sort();
    let mut expected = vec![base.meta.id, top.meta.id];
    expected.sort();
    assert_eq!(removed, expected);
    assert!(reopened.list().unwrap().is_empty());
}

#[test]
fn collecting_what_was_released_leaves_unrelated_unreferenced_layers() {
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let (base, top) = cached_on_base(&store, home.path());
    // Made by someone else and not referenced yet.
    let fresh = store
        .get_or_build(LayerKind::Base, &[b"fresh"], "test", |_| Ok(()))
        .unwrap();
    store.add_ref(&top.meta.id, "workspace:a").unwrap();
    store.remove_ref(&top.meta.id, "workspace:a").unwrap();

    let mut removed = store
        .gc_released(std::slice::from_ref(&top.meta.id))
        .unwrap();
    removed.sort();
    let mut expected = vec![base.meta.id, top.meta.id];
    expected.sort();
    assert_eq!(removed, expected, "the released layer and the one below it");
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(store.contains(&fresh.meta.id));
}

#[test]
fn what_was_released_stays_while_it_or_a_layer_on_it_is_referenced() {
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let (base, top) = cached_on_base(&store, home.path());
    let released = std::slice::from_ref(&top.meta.id);

    // A workspace lets go of a layer the cache still holds.
    store.add_ref(&top.meta.id, "cache:key1").unwrap();
    store.add_ref(&top.meta.id, "workspace:a").unwrap();
    store.remove_ref(&top.meta.id, "workspace:a").unwrap();
    assert_eq!(store.gc_released(released).unwrap(), Vec::new());

    // Nothing holds the released layer itself, but a snapshot made on it
    // is held: neither it nor its base may go.
    store.remove_ref(&top.meta.id, "cache:key1").unwrap();
    let upper = home.path().join("snapshot");
    write(&upper, "ws/other", "y");
    let snapshot = store
        .freeze(&upper, &top.stack(), LayerKind::Cache, "ws2")
        .unwrap();
    store.add_ref(&snapshot.meta.id, "snapshot:s").unwrap();
    assert_eq!(store.gc_released(released).unwrap(), Vec::new());
    assert!(store.contains(&base.meta.id) && store.contains(&top.meta.id));

    store.remove_ref(&snapshot.meta.id, "snapshot:s").unwrap();
    let mut removed = store
        .gc_released(std::slice::from_ref(&snapshot.meta.id))
        .unwrap();
    removed.sort();
    let mut expected = vec![base.meta.id, top.meta.id, snapshot.meta.id];
    expected.sort();
    assert_eq!(removed, expected, "the snapshot and the layers below it");
}

#[test]
fn holders_unknown_to_the_registry_are_dropped() {
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let layer = base(&store);
    store.add_ref(&layer.meta.id, "workspace:a").unwrap();
    store.add_ref(&layer.meta.id, "workspace:b").unwrap();
    store.add_ref(&layer.meta.id, "cache:k").unwrap();
    let keep = ["workspace:b".to_string()].into_iter().collect();
    store.drop_holders_except("workspace:", &keep).unwrap();
    assert_eq!(
        store.refs(&layer.meta.id).unwrap(),
        vec!["cache:k", "workspace:b"]
    );
}

#[test]
fn tarball_imports_are_content_addressed_and_shift_ownership() {
    let home = tempfile::tempdir().unwrap();
    let store = LayerStore::open(home.path().join("layers")).unwrap();
    let src = home.path().join("rootfs");
    write(&src, "etc/os-release", "ID=test\n");
    write(&src, "bin/tool", "#!/bin/sh\n");
    fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let tarball = home.path().join("rootfs.tar");
    let status = Command::new("tar")
        .args(["-C"])
        .arg(&src)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());

    let first = store.import_tarball(&tarball, 100_000, 65_536).unwrap();
    let again = store.import_tarball(&tarball, 100_000, 65_536).unwrap();
    assert_eq!(first.meta.id, again.meta.id);
    assert_eq!(store.list().unwrap().len(), 1);
    let tool = fs::metadata(first.tree.join("bin/tool")).unwrap();
    assert_eq!((tool.uid(), tool.gid()), (100_000, 100_000));
    assert_eq!(tool.mode() & 0o777, 0o755);

    let from_dir = store.import_dir(&src, 100_000, 65_536).unwrap();
    assert_eq!(
        fs::read_to_string(from_dir.tree.join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(from_dir.meta.kind, LayerKind::Base);
}

#[test]
fn exports_round_trip_through_an_archive_and_a_directory() {
    let home = tempfile::tempdir().unwrap();
    let upper = home.path().join("upper");
    write(&upper, "src/new.rs", "fn main() {}\n");
    write(&upper, "docs/readme.md", "hello\n");
    fs::set_permissions(upper.join("src/new.rs"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("new.rs", upper.join("src/link.rs")).unwrap();
    let list = vec![
        change("docs/readme.md", ChangeKind::Modified, FileKind::File),
        change("old.txt", ChangeKind::Deleted, FileKind::File),
        change("src", ChangeKind::Added, FileKind::Dir),
        change("src/link.rs", ChangeKind::Added, FileKind::Symlink),
        change("src/new.rs", ChangeKind::Added, FileKind::File),
    ];
    let archive = home.path().join("changes.tar.zst");
    let summary = export_archive(&upper, Path::new(""), &list, &archive, IdShift::NONE).unwrap();
    assert_eq!(summary.entries, 4);
    assert_eq!(summary.bytes, 13 + 6);
    assert_eq!(summary.deleted, vec!["old.txt"]);

    let out = home.path().join("out");
    assert_eq!(extract_archive(&archive, &out).unwrap(), 4);
    assert_eq!(
        fs::read_to_string(out.join("src/new.rs")).unwrap(),
        "fn main() {}\n"
    );
    assert_eq!(
        fs::read_link(out.join("src/link.rs")).unwrap(),
        Path::new("new.rs")
    );
    assert_eq!(
        fs::metadata(out.join("src/new.rs")).unwrap().mode() & 0o777,
        0o750
    );

    let copied = home.path().join("copied");
    let summary = export_dir(&upper, Path::new(""), &list, &copied).unwrap();
    assert_eq!(summary.entries, 4);
    assert_eq!(
        fs::read_to_string(copied.join("docs/readme.md")).unwrap(),
        "hello\n"
    );
}

#[test]
fn extraction_refuses_entries_that_climb_out() {
    let home = tempfile::tempdir().unwrap();
    let archive = home.path().join("evil.tar.zst");
    let encoder = zstd::Encoder::new(fs::File::create(&archive).unwrap(), 3).unwrap();
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    let name = b"../escaped.txt";
    header.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    header.set_size(4);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &b"evil"[..]).unwrap();
    builder.into_inner().unwrap().finish().unwrap();

    let dest = home.path().join("dest");
    assert!(extract_archive(&archive, &dest).is_err());
    assert!(!home.path().join("escaped.txt").exists());
}

#[test]
fn reopening_clears_only_what_dead_processes_left() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("layers");
    let store = LayerStore::open(&root).unwrap();
    let mine = store.staging_dir().unwrap();
    let stale = root.join(".tmp").join("999999999-01abc");
    fs::create_dir_all(stale.join("tree")).unwrap();
    LayerStore::open(&root).unwrap();
    assert!(mine.exists(), "a live process's staging stays");
    assert!(!stale.exists(), "a dead process's staging goes");
}
