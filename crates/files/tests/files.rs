//! File operations on real directories, with both ways of confining paths
//! (the kernel's openat2 and the hand walk): escapes by `..`, absolute and
//! relative symlinks, chains, loops, `/proc` magic links and races are
//! refused; everything inside works.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_files::{FilesError, Resolution, Root};
use berth_proto::{FileKind, WorkspacePath};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

const SECRET: &[u8] = b"outside the workspace";

/// A temporary directory holding a workspace `ws` and, beside it, a
/// directory `outside` with a secret file that no operation may touch.
struct Fixture {
    _tmp: tempfile::TempDir,
    ws: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&ws).unwrap();
        fs::create_dir_all(outside.join("dir")).unwrap();
        fs::write(outside.join("secret"), SECRET).unwrap();
        fs::write(outside.join("dir/secret"), SECRET).unwrap();
        Fixture {
            _tmp: tmp,
            ws,
            outside,
        }
    }

    /// A root per resolution: what `open` picks here, and the walk.
    fn roots(&self) -> Vec<Root> {
        let probed = Root::open(&self.ws).unwrap();
        let walk = Root::open_with(&self.ws, Resolution::Walk).unwrap();
        vec![probed, walk]
    }

    fn file(&self, rel: &str, data: &str) {
        let path = self.ws.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    fn link(&self, rel: &str, target: impl AsRef<Path>) {
        let path = self.ws.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// Everything under `outside`, to show that nothing there changed.
    fn outside_state(&self) -> Tree {
        tree(&self.outside)
    }
}

/// Every path under a directory with its content (a link: its target).
type Tree = BTreeMap<PathBuf, Vec<u8>>;

fn tree(dir: &Path) -> Tree {
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.insert(path.clone(), b"<dir>".to_vec());
            found.extend(tree(&path));
        } else if meta.is_symlink() {
            let target = fs::read_link(&path).unwrap();
            found.insert(path, target.into_os_string().into_encoded_bytes());
        } else {
            found.insert(path.clone(), fs::read(&path).unwrap());
        }
    }
    found
}

fn p(text: &str) -> WorkspacePath {
    WorkspacePath::parse(text).unwrap()
}

fn assert_escapes<T: std::fmt::Debug>(result: Result<T, FilesError>, path: &str) {
    match result {
        Err(FilesError::Escapes(reported)) => {
            assert_eq!(reported, path);
            let message = FilesError::Escapes(reported).to_string();
            assert_eq!(
                message,
                format!("path `{path}` leads outside the workspace")
            );
        }
        other => panic!("expected `{path}` to be refused as an escape, got {other:?}"),
    }
}

#[test]
fn this_kernel_confines_paths_with_openat2() {
    let fx = Fixture::new();
    assert_eq!(
        Root::open(&fx.ws).unwrap().resolution(),
        Resolution::Openat2,
        "openat2 is unavailable (Linux older than 5.6, or filtered by seccomp): \
         the walk is used instead and these tests only check the walk"
    );
}

#[test]
fn writes_create_parents_and_read_back() {
    let fx = Fixture::new();
    for (i, root) in fx.roots().iter().enumerate() {
        let path = p(&format!("r{i}/deep/er/file.txt"));
        root.write(&path, b"hello").unwrap();
        assert_eq!(root.read(&path).unwrap(), b"hello");
        assert_eq!(fs::read(fx.ws.join(path.as_str())).unwrap(), b"hello");
        root.write(&path, b"again").unwrap();
        assert_eq!(root.read(&path).unwrap(), b"again");
        // The write went through a temporary file that is gone now.
        let names: Vec<_> = root
            .list(&p(&format!("r{i}/deep/er")))
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(names, [path.as_str()]);
    }
}

#[test]
fn writes_keep_an_existing_files_permissions() {
    let fx = Fixture::new();
    fx.file("run.sh", "#!/bin/sh\n");
    fs::set_permissions(fx.ws.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    for root in fx.roots() {
        root.write(&p("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
        let mode = fs::metadata(fx.ws.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);

        root.write_with_mode(&p("secret.key"), b"k", 0o600).unwrap();
        assert_eq!(root.stat(&p("secret.key")).unwrap().mode, 0o600);
        root.write_with_mode(&p("secret.key"), b"k2", 0o640)
            .unwrap();
        assert_eq!(root.stat(&p("secret.key")).unwrap().mode, 0o640);
    }
}

#[test]
fn reading_a_directory_or_a_fifo_is_refused_without_hanging() {
    let fx = Fixture::new();
    fs::create_dir(fx.ws.join("dir")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(fx.ws.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    for root in fx.roots() {
        assert!(matches!(root.read(&p("dir")), Err(FilesError::IsADirectory(d)) if d == "dir"));
        assert!(matches!(root.read(&p("pipe")), Err(FilesError::NotAFile(d)) if d == "pipe"));
        assert!(matches!(root.read(&p("nope")), Err(FilesError::NotFound(d)) if d == "nope"));
        assert!(matches!(
            root.write(&p("dir"), b"x"),
            Err(FilesError::IsADirectory(_))
        ));
        assert!(matches!(
            root.write(&WorkspacePath::root(), b"x"),
            Err(FilesError::IsADirectory(_))
        ));
    }
}

#[test]
fn parent_components_and_absolute_paths_never_become_workspace_paths() {
    for raw in [
        "..",
        "a/../../etc/passwd",
        "../outside/secret",
        "/etc/passwd",
    ] {
        assert!(WorkspacePath::parse(raw).is_err(), "{raw} was accepted");
    }
}

#[test]
fn symlinks_leading_outside_are_refused() {
    let fx = Fixture::new();
    fx.link("abs", &fx.outside);
    fx.link("abs-file", fx.outside.join("secret"));
    fx.link("etc", "/etc");
    fx.link("rel", "../outside");
    fx.link("rel-file", "../outside/secret");
    fx.link("deep/er/up", "../../../outside");
    // Inside, but by an absolute path: refused, never re-rooted.
    fx.file("inside.txt", "inside");
    fx.link("abs-inside", fx.ws.join("inside.txt"));
    let before = fx.outside_state();
    for root in fx.roots() {
        for path in [
            "abs/secret",
            "abs-file",
            "etc/passwd",
            "rel/secret",
            "rel-file",
            "deep/er/up/secret",
            "abs-inside",
        ] {
            assert_escapes(root.read(&p(path)), path);
            assert_escapes(root.stat(&p(&format!("{path}/x"))), &format!("{path}/x"));
        }
        for dir in ["abs", "etc", "rel", "deep/er/up", "abs/dir"] {
            assert_escapes(root.list(&p(dir)), dir);
            assert_escapes(root.resolve_dir(&p(dir)), dir);
            let new = format!("{dir}/new");
            assert_escapes(root.write(&p(&new), b"x"), &new);
            assert_escapes(
                root.mkdir(&p(&format!("{dir}/made"))),
                &format!("{dir}/made"),
            );
            assert_escapes(
                root.remove(&p(&format!("{dir}/secret"))),
                &format!("{dir}/secret"),
            );
            assert_escapes(
                root.rename(&p("inside.txt"), &p(&format!("{dir}/moved"))),
                &format!("{dir}/moved"),
            );
        }
        // Writing through a file symlink that points out.
        for path in ["abs-file", "rel-file"] {
            assert_escapes(root.write(&p(path), b"overwritten"), path);
        }
    }
    assert_eq!(fx.outside_state(), before, "nothing outside changed");
    assert_eq!(fs::read(fx.ws.join("inside.txt")).unwrap(), b"inside");
}

#[test]
fn symlinks_inside_are_followed() {
    let fx = Fixture::new();
    fx.file("src/lib/code.rs", "fn main() {}");
    fx.link("code", "src/lib/code.rs");
    fx.link("lib", "src/lib");
    fx.link("deep/er/lib", "../../src/lib");
    fx.link("chain1", "chain2");
    fx.link("chain2", "deep/er/lib/code.rs");
    fx.link("dangling", "src/new.txt");
    for (i, root) in fx.roots().iter().enumerate() {
        for path in ["code", "lib/code.rs", "deep/er/lib/code.rs", "chain1"] {
            assert_eq!(root.read(&p(path)).unwrap(), b"fn main() {}", "{path}");
        }
        let listed: Vec<_> = root.list(&p("deep/er/lib")).unwrap();
        assert_eq!(listed[0].path, "deep/er/lib/code.rs");
        assert_eq!(
            root.resolve_dir(&p("deep/er/lib")).unwrap(),
            fx.ws.join("deep/er/lib")
        );

        // Writing through a link writes its target; the link stays a link.
        let content = format!("version {i}");
        root.write(&p("chain1"), content.as_bytes()).unwrap();
        assert_eq!(
            fs::read(fx.ws.join("src/lib/code.rs")).unwrap(),
            content.as_bytes()
        );
        assert_eq!(root.stat(&p("chain1")).unwrap().kind, FileKind::Symlink);
        root.write(&p("lib/other.rs"), b"x").unwrap();
        assert!(fx.ws.join("src/lib/other.rs").is_file());
        // A dangling link inside: writing creates its target.
        root.write(&p("dangling"), b"new").unwrap();
        assert_eq!(fs::read(fx.ws.join("src/new.txt")).unwrap(), b"new");
        fs::remove_file(fx.ws.join("src/new.txt")).unwrap();
        fs::write(fx.ws.join("src/lib/code.rs"), "fn main() {}").unwrap();
    }
}

#[test]
fn symlink_loops_and_long_chains_are_refused() {
    let fx = Fixture::new();
    fx.link("a", "b");
    fx.link("b", "a");
    fx.link("self", "self/x");
    for root in fx.roots() {
        for path in ["a", "b", "self", "a/x"] {
            assert!(
                matches!(root.read(&p(path)), Err(FilesError::SymlinkLoop(ref s)) if s == path),
                "{path}"
            );
        }
        assert!(matches!(
            root.write(&p("a"), b"x"),
            Err(FilesError::SymlinkLoop(_))
        ));
    }
}

#[test]
fn proc_magic_links_are_refused() {
    // /proc/self/root and /proc/self/cwd are magic links: they jump to a
    // directory without a path, so a root that reaches /proc is a way out.
    for root in [
        Root::open(Path::new("/proc/self")).unwrap(),
        Root::open_with(Path::new("/proc/self"), Resolution::Walk).unwrap(),
    ] {
        assert_escapes(root.read(&p("root/etc/hostname")), "root/etc/hostname");
        assert_escapes(root.list(&p("cwd")), "cwd");
        assert_escapes(root.stat(&p("fd/0/x")), "fd/0/x");
        // What is really inside still works.
        assert!(!root.read(&p("stat")).unwrap().is_empty());
    }
    let fx = Fixture::new();
    fx.link("proc-root", "/proc/self/root");
    for root in fx.roots() {
        assert_escapes(
            root.read(&p("proc-root/etc/hostname")),
            "proc-root/etc/hostname",
        );
    }
}

#[test]
fn list_is_sorted_with_paths_from_the_root() {
    let fx = Fixture::new();
    for name in ["zeta", "alpha", "Beta", "m/inner"] {
        fx.file(&format!("dir/{name}"), name);
    }
    fx.link("dir/link", "../outside");
    for root in fx.roots() {
        let entries = root.list(&p("dir")).unwrap();
        let got: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            got,
            [
                ("dir/Beta", FileKind::File),
                ("dir/alpha", FileKind::File),
                ("dir/link", FileKind::Symlink),
                ("dir/m", FileKind::Dir),
                ("dir/zeta", FileKind::File),
            ]
        );
        assert_eq!(entries[1].size, 5);
        let top: Vec<_> = root.list(&WorkspacePath::root()).unwrap();
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].path, "dir");
        assert!(matches!(
            root.list(&p("dir/alpha")),
            Err(FilesError::NotADirectory(d)) if d == "dir/alpha"
        ));
        assert!(matches!(
            root.list(&p("nope")),
            Err(FilesError::NotFound(_))
        ));
    }
}

#[test]
fn stat_reports_what_is_there() {
    let fx = Fixture::new();
    fx.file("f", "12345");
    fx.link("l", "f");
    fs::create_dir(fx.ws.join("d")).unwrap();
    for root in fx.roots() {
        let f = root.stat(&p("f")).unwrap();
        assert_eq!((f.path.as_str(), f.kind, f.size), ("f", FileKind::File, 5));
        assert!(f.modified > 1_600_000_000);
        assert_eq!(root.stat(&p("l")).unwrap().kind, FileKind::Symlink);
        assert_eq!(root.stat(&p("d")).unwrap().kind, FileKind::Dir);
        assert_eq!(
            root.stat(&WorkspacePath::root()).unwrap().kind,
            FileKind::Dir
        );
        assert!(matches!(
            root.stat(&p("f/x")),
            Err(FilesError::NotADirectory(_))
        ));
    }
}

#[test]
fn remove_takes_files_links_and_whole_directories_but_never_their_targets() {
    let fx = Fixture::new();
    let before = fx.outside_state();
    for root in fx.roots() {
        fx.file("keep/file", "kept");
        fx.file("tree/a/b/c.txt", "c");
        fx.file("tree/top.txt", "t");
        fx.link("tree/a/out", &fx.outside);
        fx.link("tree/a/keep", "../../keep");
        fx.link("link-to-keep", "keep");
        fx.link("link-out", "../outside");
        fx.file("plain", "p");

        root.remove(&p("plain")).unwrap();
        assert!(!fx.ws.join("plain").exists());
        root.remove(&p("link-to-keep")).unwrap();
        assert!(fx.ws.join("keep/file").is_file(), "a link's target stays");
        root.remove(&p("link-out")).unwrap();
        root.remove(&p("tree")).unwrap();
        assert!(!fx.ws.join("tree").exists());
        assert_eq!(fs::read(fx.ws.join("keep/file")).unwrap(), b"kept");

        assert!(matches!(root.remove(&p("tree")), Err(FilesError::NotFound(t)) if t == "tree"));
        let err = root.remove(&WorkspacePath::root()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the workspace root itself cannot be removed"
        );
        assert!(fx.ws.is_dir());
        fs::remove_dir_all(fx.ws.join("keep")).unwrap();
    }
    assert_eq!(fx.outside_state(), before);
}

#[test]
fn mkdir_makes_parents_and_accepts_what_exists() {
    let fx = Fixture::new();
    fx.file("file", "f");
    for root in fx.roots() {
        root.mkdir(&p("x/y/z")).unwrap();
        root.mkdir(&p("x/y/z")).unwrap();
        root.mkdir(&WorkspacePath::root()).unwrap();
        assert!(fx.ws.join("x/y/z").is_dir());
        assert!(matches!(
            root.mkdir(&p("file/sub")),
            Err(FilesError::NotADirectory(f)) if f == "file/sub"
        ));
        assert!(matches!(
            root.mkdir(&p("file")),
            Err(FilesError::NotADirectory(_))
        ));
        fs::remove_dir_all(fx.ws.join("x")).unwrap();
    }
}

#[test]
fn rename_moves_names_inside_the_workspace() {
    let fx = Fixture::new();
    for root in fx.roots() {
        fx.file("a.txt", "a");
        fx.link("lnk", "a.txt");
        root.rename(&p("a.txt"), &p("moved/into/b.txt")).unwrap();
        assert_eq!(fs::read(fx.ws.join("moved/into/b.txt")).unwrap(), b"a");
        root.rename(&p("lnk"), &p("moved/lnk")).unwrap();
        assert!(
            fs::symlink_metadata(fx.ws.join("moved/lnk"))
                .unwrap()
                .is_symlink()
        );
        root.rename(&p("moved"), &p("again")).unwrap();
        assert!(fx.ws.join("again/into/b.txt").is_file());

        assert!(matches!(
            root.rename(&p("nope"), &p("x")),
            Err(FilesError::NotFound(n)) if n == "nope"
        ));
        assert!(matches!(
            root.rename(&WorkspacePath::root(), &p("x")),
            Err(FilesError::Root("renamed"))
        ));
        assert!(matches!(
            root.rename(&p("again"), &WorkspacePath::root()),
            Err(FilesError::Root("replaced"))
        ));
        let err = root.rename(&p("again"), &p("again/inside")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot rename `again` to `again/inside`"),
            "{err}"
        );
        fs::remove_dir_all(fx.ws.join("again")).unwrap();
    }
}

#[test]
fn resolve_dir_gives_a_checked_host_path() {
    let fx = Fixture::new();
    fx.file("sub/dir/f", "f");
    fx.link("to-sub", "sub");
    for root in fx.roots() {
        assert_eq!(
            root.resolve_dir(&p("sub/dir")).unwrap(),
            fx.ws.join("sub/dir")
        );
        assert_eq!(root.resolve_dir(&WorkspacePath::root()).unwrap(), fx.ws);
        assert_eq!(
            root.resolve_dir(&p("to-sub/dir")).unwrap(),
            fx.ws.join("to-sub/dir")
        );
        assert!(matches!(
            root.resolve_dir(&p("sub/dir/f")),
            Err(FilesError::NotADirectory(_))
        ));
        assert!(matches!(
            root.resolve_dir(&p("none")),
            Err(FilesError::NotFound(_))
        ));
    }
}

#[test]
fn a_missing_root_is_not_found_by_its_host_path() {
    let fx = Fixture::new();
    let gone = fx.ws.join("gone");
    let err = Root::open(&gone).unwrap_err();
    assert!(matches!(&err, FilesError::NotFound(path) if *path == gone.display().to_string()));
    fs::write(&gone, "a file").unwrap();
    assert!(matches!(
        Root::open(&gone),
        Err(FilesError::NotADirectory(_))
    ));
}

#[test]
fn a_root_keeps_meaning_its_directory_after_being_moved() {
    let fx = Fixture::new();
    fx.file("f", "mine");
    let root = Root::open(&fx.ws).unwrap();
    let moved = fx.ws.with_file_name("moved");
    fs::rename(&fx.ws, &moved).unwrap();
    fs::create_dir(&fx.ws).unwrap();
    assert_eq!(root.read(&p("f")).unwrap(), b"mine");
}

#[test]
fn a_symlink_swapped_mid_read_never_leads_outside() {
    // `d` flips between a link to a directory inside and a link to one
    // outside while another thread reads `d/secret` as fast as it can:
    // each read sees the inside file or is refused, never the secret.
    let fx = Fixture::new();
    fx.file("real/secret", "inside");
    fx.link("d", "real");
    fx.link("in-link", "real");
    fx.link("out-link", "../outside");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (ws, stop) = (fx.ws.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (from, target) = if flips.is_multiple_of(2) {
                    ("tmp-out", "../outside")
                } else {
                    ("tmp-in", "real")
                };
                symlink(target, ws.join(from)).unwrap();
                fs::rename(ws.join(from), ws.join("d")).unwrap();
                flips += 1;
            }
            flips
        })
    };
    let (mut inside, mut refused) = (0, 0);
    for root in fx.roots() {
        for _ in 0..3000 {
            match root.read(&p("d/secret")) {
                Ok(data) => {
                    assert_eq!(data, b"inside");
                    inside += 1;
                }
                Err(FilesError::Escapes(_)) | Err(FilesError::NotFound(_)) => refused += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    assert!(flips > 10, "the link flipped {flips} times");
    assert!(
        inside > 0 && refused > 0,
        "{inside} inside, {refused} refused"
    );
}

// ---- properties over random layouts -----------------------------------------

/// Names the random paths and links are made of.
const NAMES: &[&str] = &["a", "b", "f", "l0", "l1", "l2", "outside", "."];

/// Where random links may point: inside, above, outside, absolute, loops.
fn targets(ws: &Path) -> Vec<String> {
    let mut targets: Vec<String> = [
        "a",
        "b",
        "f",
        "a/b",
        "a/b/f",
        "l0",
        "l1",
        "l2/f",
        "..",
        "../..",
        "../outside",
        "../../outside/secret",
        "../ws/a",
        "b/../..",
        "./f",
        "f/",
        "a/",
        ".",
        "a/../f",
        "/etc",
        "/etc/hostname",
        "/proc/self/root",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    targets.push(ws.join("a").display().to_string());
    targets
}

/// The same random layout built in a fresh workspace: a few directories and
/// files and then links at random places to random targets.
fn build(fx: &Fixture, links: &[(usize, usize, usize)]) {
    fx.file("f", "root f");
    fx.file("a/f", "a f");
    fx.file("a/b/f", "a b f");
    fx.file("b/f", "b f");
    let dirs = ["", "a", "a/b", "b"];
    let targets = targets(&fx.ws);
    for &(dir, name, target) in links {
        let at = fx.ws.join(dirs[dir]).join(["l0", "l1", "l2"][name]);
        if fs::symlink_metadata(&at).is_err() {
            symlink(&targets[target], at).unwrap();
        }
    }
}

fn layout() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    prop::collection::vec((0..4usize, 0..3usize, 0..23usize), 0..8)
}

fn random_path() -> impl Strategy<Value = WorkspacePath> {
    prop::collection::vec(prop::sample::select(NAMES), 1..5)
        .prop_map(|parts| WorkspacePath::parse(&parts.join("/")).unwrap())
}

/// An outcome reduced to what two resolutions must agree on.
fn outcome<T: std::fmt::Debug>(result: &Result<T, FilesError>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(FilesError::Io { source, .. }) => format!("io {:?}", source.kind()),
        Err(FilesError::Rename { source, .. }) => format!("rename {:?}", source.kind()),
        Err(other) => other.to_string(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The kernel's resolution and the walk agree on every lookup, and
    /// whatever is read or listed really lies inside the workspace.
    #[test]
    fn lookups_agree_and_stay_inside(links in layout(), paths in prop::collection::vec(random_path(), 1..8)) {
        let fx = Fixture::new();
        build(&fx, &links);
        let kernel = Root::open(&fx.ws).unwrap();
        let walk = Root::open_with(&fx.ws, Resolution::Walk).unwrap();
        let ws = fs::canonicalize(&fx.ws).unwrap();
        for path in &paths {
            let read = kernel.read(path);
            prop_assert_eq!(outcome(&read), outcome(&walk.read(path)), "read {}", path);
            prop_assert_eq!(outcome(&kernel.list(path)), outcome(&walk.list(path)), "list {}", path);
            prop_assert_eq!(outcome(&kernel.stat(path)), outcome(&walk.stat(path)), "stat {}", path);
            let dir = kernel.resolve_dir(path);
            prop_assert_eq!(outcome(&dir), outcome(&walk.resolve_dir(path)), "resolve_dir {}", path);
            if let Ok(data) = read {
                prop_assert_ne!(data.as_slice(), SECRET);
                let host = fs::canonicalize(fx.ws.join(path.as_str())).unwrap();
                prop_assert!(host.starts_with(&ws), "{} read {}", path, host.display());
            }
            if let Ok(dir) = dir {
                prop_assert!(fs::canonicalize(dir).unwrap().starts_with(&ws));
            }
        }
    }

    /// Writes, directory creation, renames and removals through random
    /// paths change nothing outside, whichever resolution is used, and the
    /// two resolutions leave identical workspaces.
    #[test]
    fn changes_never_reach_outside(
        links in layout(),
        ops in prop::collection::vec((0..4usize, random_path(), random_path()), 1..6),
    ) {
        let results: Vec<(Vec<String>, Tree)> = [None, Some(Resolution::Walk)]
            .into_iter()
            .map(|how| {
                let fx = Fixture::new();
                build(&fx, &links);
                let before = fx.outside_state();
                let root = match how {
                    None => Root::open(&fx.ws).unwrap(),
                    Some(how) => Root::open_with(&fx.ws, how).unwrap(),
                };
                let outcomes = ops
                    .iter()
                    .map(|(op, path, other)| match op {
                        0 => outcome(&root.write(path, b"written")),
                        1 => outcome(&root.mkdir(path)),
                        2 => outcome(&root.rename(path, other)),
                        _ => outcome(&root.remove(path)),
                    })
                    .collect();
                assert_eq!(fx.outside_state(), before, "something outside changed");
                let inside = tree(&fx.ws)
                    .into_iter()
                    .map(|(path, data)| {
                        // Absolute link targets name this fixture's directory.
                        let data = String::from_utf8_lossy(&data)
                            .replace(&fx.ws.display().to_string(), "<ws>")
                            .into_bytes();
                        (path.strip_prefix(&fx.ws).unwrap().to_path_buf(), data)
                    })
                    .collect();
                (outcomes, inside)
            })
            .collect();
        prop_assert_eq!(&results[0].0, &results[1].0);
        prop_assert_eq!(&results[0].1, &results[1].1);
    }
}
