//! A workspace attacking the host through berth's own hands: links swapped
//! in while changes are listed or exported, links left in an export's
//! target, sparse files. The workspace's side is played by a thread acting
//! on the upper directory directly, as a process inside would through the
//! overlay.

use berth_core::{Change, ChangeKind, FileKind};
use berth_layers::{IdShift, changes, export_archive, export_dir, extract_archive};
use rustix::fs::{CWD, RenameFlags};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// How many times each race is run: on the code before the walk went
/// through descriptors, each leaked within the first few dozen.
const ROUNDS: usize = 400;

/// What only the host has: a file and a directory the workspace names in
/// its links but must never get berth to read.
struct Host {
    _dir: tempfile::TempDir,
    secret: PathBuf,
    secret_dir: PathBuf,
}

const SECRET: &str = "host-only-secret-bytes";
const SUBDIRS: usize = 32;
const SECRET_NAME: &str = "host-only-entry";

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, SECRET).unwrap();
        let secret_dir = dir.path().join("secret-dir");
        fs::create_dir(&secret_dir).unwrap();
        fs::write(secret_dir.join(SECRET_NAME), SECRET).unwrap();
        fs::write(secret_dir.join("inner"), SECRET).unwrap();
        // Shaped like the workspace's directory, so that a walk that
        // strays into it mid-way finds its way on.
        for i in 0..SUBDIRS {
            let sub = secret_dir.join(format!("sub{i}"));
            fs::create_dir(&sub).unwrap();
            fs::write(sub.join(SECRET_NAME), SECRET).unwrap();
        }
        Host {
            _dir: dir,
            secret,
            secret_dir,
        }
    }
}

/// A thread that keeps swapping, as a workspace's loop would, until told
/// to stop; it reports how many swaps it made.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Swapper {
    fn start(mut swap: impl FnMut() + Send + 'static) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), swaps.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                swap();
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.swaps.load(Ordering::Relaxed)
    }
}

/// `mv -T`: `leak` becomes a regular file, then a link to the host's
/// secret, over and over.
fn swap_file_and_link(ws: &Path, host: &Host) -> impl FnMut() + Send + 'static {
    let (ws, secret) = (ws.to_path_buf(), host.secret.clone());
    move || {
        fs::write(ws.join(".leak.file"), "workspace bytes").unwrap();
        fs::rename(ws.join(".leak.file"), ws.join("leak")).unwrap();
        let _ = fs::remove_file(ws.join(".leak.link"));
        std::os::unix::fs::symlink(&secret, ws.join(".leak.link")).unwrap();
        fs::rename(ws.join(".leak.link"), ws.join("leak")).unwrap();
    }
}

/// `renameat2(RENAME_EXCHANGE)`: the directory `d` and the link `dlink`
/// to a host directory trade places, over and over.
fn exchange_dir_and_link(ws: &Path) -> impl FnMut() + Send + 'static {
    let (d, link) = (ws.join("d"), ws.join("dlink"));
    move || {
        rustix::fs::renameat_with(CWD, &d, CWD, &link, RenameFlags::EXCHANGE).unwrap();
    }
}

/// A workspace upper directory with `ws/d/inner` and directories
/// `ws/d/sub*`, a link `ws/dlink` to the host's directory, and `ws/leak`.
fn upper_with_links(host: &Host) -> (tempfile::TempDir, PathBuf) {
    let scratch = tempfile::tempdir().unwrap();
    let upper = scratch.path().join("upper");
    let ws = upper.join("ws");
    fs::create_dir_all(ws.join("d")).unwrap();
    fs::write(ws.join("d/inner"), "workspace bytes").unwrap();
    for i in 0..SUBDIRS {
        let sub = ws.join(format!("d/sub{i}"));
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("file"), "workspace bytes").unwrap();
    }
    std::os::unix::fs::symlink(&host.secret_dir, ws.join("dlink")).unwrap();
    fs::write(ws.join("leak"), "workspace bytes").unwrap();
    (scratch, upper)
}

/// Every regular file under `dir`, read through no link.
fn contents_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            out.extend(contents_under(&entry.path()));
        } else if kind.is_file() {
            out.push((entry.path(), fs::read(entry.path()).unwrap()));
        }
    }
    out
}

fn holds_secret(bytes: &[u8]) -> bool {
    bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())
}

fn file_change(path: &str) -> Change {
    Change::new(
        std::path::Path::new(path),
        ChangeKind::Added,
        FileKind::File,
    )
}

#[test]
fn changes_do_not_list_a_host_directory_exchanged_in_during_the_walk() {
    let host = Host::new();
    let (_scratch, upper) = upper_with_links(&host);
    let swapper = Swapper::start(exchange_dir_and_link(&upper.join("ws")));
    let mut listed = 0;
    for _ in 0..ROUNDS {
        // A walk that meets the swap may fail; it must never look beyond.
        if let Ok(found) = changes(&upper, &[], Path::new("ws")) {
            listed += 1;
            for change in &found {
                assert!(
                    !change.path.contains(SECRET_NAME),
                    "the host directory's entries were listed: {found:?}"
                );
            }
        }
    }
    assert!(swapper.finish() > 0, "the workspace never swapped");
    assert!(listed > ROUNDS / 2, "only {listed} walks of {ROUNDS} ended");
}

#[test]
fn export_does_not_follow_a_link_swapped_in_during_the_walk() {
    let host = Host::new();
    let (scratch, upper) = upper_with_links(&host);
    // What the list said before the race began: files, as they were.
    let listed = vec![file_change("d/inner"), file_change("leak")];
    let ws = upper.join("ws");
    let swap_file = swap_file_and_link(&ws, &host);
    let mut exchange = exchange_dir_and_link(&ws);
    let mut swap_file = swap_file;
    let swapper = Swapper::start(move || {
        swap_file();
        exchange();
    });
    let (mut archives, mut copies) = (0, 0);
    for round in 0..ROUNDS {
        let out = scratch.path().join(format!("out-{round}"));
        if export_dir(&upper, Path::new("ws"), &listed, &out).is_ok() {
            copies += 1;
        }
        for (path, bytes) in contents_under(&out) {
            assert!(
                !holds_secret(&bytes),
                "the host's secret was exported into {}",
                path.display()
            );
        }
        let archive = scratch.path().join(format!("out-{round}.tar.zst"));
        if export_archive(&upper, Path::new("ws"), &listed, &archive, IdShift::NONE).is_ok() {
            archives += 1;
            let mut bytes = Vec::new();
            zstd::Decoder::new(fs::File::open(&archive).unwrap())
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            assert!(!holds_secret(&bytes), "the archive carries the secret");
        }
        let _ = fs::remove_dir_all(&out);
        let _ = fs::remove_file(&archive);
    }
    assert!(swapper.finish() > 0, "the workspace never swapped");
    assert!(
        copies > ROUNDS / 2 && archives > ROUNDS / 2,
        "too few exports ended: {copies} copies, {archives} archives of {ROUNDS}"
    );
}

#[test]
fn export_into_an_existing_directory_does_not_write_through_links_it_left() {
    let host = Host::new();
    let scratch = tempfile::tempdir().unwrap();
    let upper = scratch.path().join("upper");
    let ws = upper.join("ws");
    fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::symlink(&host.secret_dir, ws.join("d2")).unwrap();
    let link = vec![Change::new(
        std::path::Path::new("d2"),
        ChangeKind::Added,
        FileKind::Symlink,
    )];
    let target = scratch.path().join("target");
    export_dir(&upper, Path::new("ws"), &link, &target).unwrap();
    assert_eq!(fs::read_link(target.join("d2")).unwrap(), host.secret_dir);
    let first_archive = scratch.path().join("first.tar.zst");
    export_archive(
        &upper,
        Path::new("ws"),
        &link,
        &first_archive,
        IdShift::NONE,
    )
    .unwrap();
    let unpacked = scratch.path().join("unpacked");
    extract_archive(&first_archive, &unpacked).unwrap();

    // The workspace makes `d2` a real directory with a file in it.
    fs::remove_file(ws.join("d2")).unwrap();
    fs::create_dir(ws.join("d2")).unwrap();
    fs::write(ws.join("d2/planted"), "workspace bytes").unwrap();
    let now = changes(&upper, &[], Path::new("ws")).unwrap();
    assert_eq!(
        now.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
        ["d2", "d2/planted"]
    );
    let host_mode = fs::metadata(&host.secret_dir).unwrap().mode();
    let second = export_dir(&upper, Path::new("ws"), &now, &target);
    assert!(
        !host.secret_dir.join("planted").exists(),
        "the export wrote into the host directory"
    );
    second.unwrap();
    let second_archive = scratch.path().join("second.tar.zst");
    export_archive(
        &upper,
        Path::new("ws"),
        &now,
        &second_archive,
        IdShift::NONE,
    )
    .unwrap();
    extract_archive(&second_archive, &unpacked).unwrap();
    assert!(!host.secret_dir.join("planted").exists());
    for out in [&target, &unpacked] {
        let d2 = fs::symlink_metadata(out.join("d2")).unwrap();
        assert!(d2.is_dir(), "the link was replaced by a directory");
        assert_eq!(
            fs::read_to_string(out.join("d2/planted")).unwrap(),
            "workspace bytes"
        );
    }
    assert_eq!(
        fs::metadata(&host.secret_dir).unwrap().mode(),
        host_mode,
        "the host directory's mode was left alone"
    );
}

#[test]
fn export_keeps_a_sparse_file_sparse_in_a_directory_and_an_archive() {
    let scratch = tempfile::tempdir().unwrap();
    let upper = scratch.path().join("upper");
    fs::create_dir_all(upper.join("ws")).unwrap();
    let size: u64 = 2 << 30;
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = fs::File::create(upper.join("ws/sparse.bin")).unwrap();
        file.write_all(b"head").unwrap();
        file.seek(SeekFrom::Start(size - 4)).unwrap();
        file.write_all(b"tail").unwrap();
    }
    let listed = vec![file_change("sparse.bin")];
    let copied = scratch.path().join("copied");
    let summary = export_dir(&upper, Path::new("ws"), &listed, &copied).unwrap();
    assert_eq!(summary.bytes, size);
    let archive = scratch.path().join("sparse.tar.zst");
    export_archive(&upper, Path::new("ws"), &listed, &archive, IdShift::NONE).unwrap();
    let unpacked = scratch.path().join("unpacked");
    extract_archive(&archive, &unpacked).unwrap();

    let entry_type = {
        let decoder = zstd::Decoder::new(fs::File::open(&archive).unwrap()).unwrap();
        let mut tar = tar::Archive::new(decoder);
        let entry = tar.entries().unwrap().next().unwrap().unwrap();
        entry.header().entry_type()
    };
    assert_eq!(entry_type, tar::EntryType::GNUSparse);
    for out in [copied.join("sparse.bin"), unpacked.join("sparse.bin")] {
        let meta = fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), size, "{}", out.display());
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{} takes {} bytes on disk",
            out.display(),
            meta.blocks() * 512
        );
        let mut file = fs::File::open(&out).unwrap();
        let mut head = [0u8; 4];
        file.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"head");
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(size - 4)).unwrap();
        let mut tail = [0u8; 4];
        file.read_exact(&mut tail).unwrap();
        assert_eq!(&tail, b"tail");
    }
}

/// A tar archive of `entries` (name, type, link target, data); names are
/// written raw, so they may climb with `..`.
fn hostile_tar(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_gnu();
        let raw = &mut header.as_gnu_mut().unwrap().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        if !link.is_empty() {
            header.set_link_name(link).unwrap();
        }
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(8).unwrap();
            header.set_device_minor(0).unwrap();
        }
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

#[test]
fn a_hostile_base_image_neither_climbs_out_nor_brings_device_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("layer");
    fs::create_dir(&tree).unwrap();
    let tar = hostile_tar(&[
        ("../climbed", tar::EntryType::Regular, "", b"out"),
        ("disk", tar::EntryType::Block, "", b""),
        ("tty", tar::EntryType::Char, "", b""),
        ("ok.txt", tar::EntryType::Regular, "", b"ok"),
    ]);
    berth_layers::unpack_tarball(&tar[..], &tree, 0, 0).unwrap();
    assert!(!dir.path().join("climbed").exists());
    assert!(fs::symlink_metadata(tree.join("disk")).is_err());
    assert!(fs::symlink_metadata(tree.join("tty")).is_err());
    assert_eq!(fs::read(tree.join("ok.txt")).unwrap(), b"ok");
}

#[test]
fn a_hostile_base_image_cannot_write_through_its_own_link() {
    let host = Host::new();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("layer");
    fs::create_dir(&tree).unwrap();
    let outside = host.secret_dir.display().to_string();
    let tar = hostile_tar(&[
        ("escape", tar::EntryType::Symlink, &outside, b""),
        ("escape/planted", tar::EntryType::Regular, "", b"planted"),
    ]);
    assert!(berth_layers::unpack_tarball(&tar[..], &tree, 0, 0).is_err());
    assert!(!host.secret_dir.join("planted").exists());
}
