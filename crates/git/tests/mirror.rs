//! Mirrors and the ways a fetch reaches a checkout without any git of the
//! provider reading the checkout's configuration: a bundle taken in by the
//! checkout's own git (the requests of `berth_git::inside`, run here
//! directly where a workspace would run them), and a copy fetched under a
//! configuration berth writes. Real git, real repositories, a real
//! token-guarded HTTP server.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::spec::Repository;
use berth_core::{Command, ExecRequest, WorkspacePath};
use berth_git::inside::{self, Ran};
use berth_git::{Credential, Credentials, Git, GitError, Mirrors};
use berth_testkit::{self as kit, GitHttpServer};
use std::path::{Path, PathBuf};

/// A token of this test process's own: tests running beside it hold
/// theirs, so a search for this one finds only what this test started.
fn token() -> String {
    format!("berth-mirror-token-{}", std::process::id())
}

struct World {
    token: String,
    dir: tempfile::TempDir,
    server: GitHttpServer,
    git: Git,
    mirrors: Mirrors,
}

impl World {
    fn new() -> World {
        let dir = kit::temp_dir();
        kit::make_repo(
            &dir.path().join("repos/project"),
            &[("README", "hello\n"), ("src/lib.txt", "one\n")],
        );
        let token = token();
        let server = GitHttpServer::start(&dir.path().join("repos"), &token);
        let mut credentials = Credentials::new();
        credentials.insert(
            "forge",
            Credential::bearer(&token, [server.url().parse().unwrap()]),
        );
        World {
            token,
            mirrors: Mirrors::new(dir.path().join("mirrors")),
            dir,
            server,
            git: Git::new(credentials),
        }
    }

    fn upstream(&self) -> PathBuf {
        self.dir.path().join("repos/project")
    }

    fn repo(&self, reference: Option<&str>) -> Repository {
        Repository {
            url: format!("{}project", self.server.url()),
            path: WorkspacePath::parse("project").unwrap(),
            reference: reference.map(str::to_owned),
            credential: Some("forge".to_owned()),
        }
    }

    fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join("workspaces").join(name)
    }

    async fn clone(&self, name: &str) -> PathBuf {
        let dest = self.dest(name);
        self.git
            .clone_with_mirror(&self.repo(None), &self.mirrors, &dest)
            .await
            .unwrap();
        dest
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Runs an in-workspace request with the checkout's parent as the
/// workspace root, as a runtime's exec would.
fn run(root: &Path, request: &ExecRequest) -> Ran {
    let Command::Argv(argv) = &request.command else {
        panic!("inside requests are argv: {:?}", request.command);
    };
    let cwd = match &request.cwd {
        Some(cwd) => root.join(cwd),
        None => root.to_path_buf(),
    };
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(cwd)
        .envs(&request.env)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The fetch the provider makes into an isolated workspace, with the
/// workspace's side run in `checkout` directly.
async fn fetch_inside(world: &World, checkout: &Path) -> Result<berth_git::FetchOutcome, GitError> {
    let root = checkout.parent().unwrap();
    let path = WorkspacePath::parse(checkout.file_name().unwrap().to_str().unwrap()).unwrap();
    let probe = inside::read_probe(&path, &run(root, &inside::probe(&path)))?;
    let upstream = probe.upstream.clone().unwrap();
    let mirror = world.git.mirror(&world.repo(None), &world.mirrors).await?;
    let catch_up = world
        .git
        .catch_up(&mirror, &upstream, &probe.have)
        .await?
        .unwrap();
    drop(mirror);
    let name = ".git/test.bundle";
    if let Some(bytes) = &catch_up.bundle {
        std::fs::write(checkout.join(name), bytes).unwrap();
    }
    let request = inside::advance(
        &path,
        &upstream,
        &catch_up.commit,
        catch_up.bundle.as_ref().map(|_| name),
        &catch_up.branch_ref,
    );
    let ran = run(root, &request);
    let _ = std::fs::remove_file(checkout.join(name));
    inside::read_advance(&path, &upstream, &ran)
}

#[tokio::test]
async fn clones_through_a_mirror_leave_the_token_nowhere_and_reuse_it() {
    let world = World::new();
    let before = world.server.served();
    let first = world.clone("first").await;
    let first_requests = world.server.served() - before;
    assert_eq!(read(&first.join("README")), "hello\n");
    assert_eq!(
        kit::git(&first, &["config", "remote.origin.url"]),
        world.repo(None).url
    );
    assert_eq!(
        kit::git(&first, &["symbolic-ref", "--short", "HEAD"]),
        "main"
    );
    assert_eq!(
        kit::git(&first, &["rev-parse", "--abbrev-ref", "main@{upstream}"]),
        "origin/main"
    );

    let before = world.server.served();
    let second = world.clone("second").await;
    let second_requests = world.server.served() - before;
    assert_eq!(kit::head(&second), kit::head(&first));
    assert!(
        second_requests < first_requests,
        "an unchanged upstream is only listed: {second_requests} requests, the first clone \
         {first_requests}"
    );
    let mirror = world.mirrors.path_for(&world.repo(None).url);
    assert_eq!(
        kit::git(&mirror, &["rev-parse", "--is-bare-repository"]),
        "true"
    );
    for dir in [&first, &second, &mirror] {
        let found = kit::files_containing(dir, world.token.as_bytes());
        assert!(found.is_empty(), "the token is in {found:?}");
    }
    // The clone's objects are its own: writing them cannot touch the mirror.
    let pack = std::fs::read_dir(first.join(".git/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pack"))
        .unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&pack).unwrap()),
        1,
        "{} is hard-linked",
        pack.display()
    );

    // The default branch changing upstream is followed.
    kit::git(&world.upstream(), &["checkout", "--quiet", "-b", "trunk"]);
    kit::commit_files(&world.upstream(), &[("TRUNK", "t\n")], "trunk");
    let third = world.clone("third").await;
    assert_eq!(
        kit::git(&third, &["symbolic-ref", "--short", "HEAD"]),
        "trunk"
    );
}

#[tokio::test]
async fn without_the_token_the_mirror_is_refused_clearly() {
    let world = World::new();
    let git = Git::new(Credentials::new());
    let mut repo = world.repo(None);
    repo.credential = None;
    let err = git
        .clone_with_mirror(&repo, &world.mirrors, &world.dest("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Authentication { .. }), "{err}");
    assert!(!world.dest("x").exists(), "nothing is left behind");
}

#[tokio::test]
async fn concurrent_clones_of_one_url_all_succeed() {
    let world = World::new();
    let upstream_head = kit::head(&world.upstream());
    let mut tasks = Vec::new();
    for n in 0..4 {
        let (git, mirrors, repo) = (
            Clone::clone(&world.git),
            world.mirrors.clone(),
            world.repo(None),
        );
        let dest = world.dest(&format!("ws{n}"));
        tasks.push(tokio::spawn(async move {
            git.clone_with_mirror(&repo, &mirrors, &dest).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), upstream_head);
    }
    let mirror = world.mirrors.path_for(&world.repo(None).url);
    kit::git(&mirror, &["fsck", "--no-progress"]);
}

#[tokio::test]
async fn tags_commits_and_other_refs_come_through_the_mirror() {
    let world = World::new();
    let upstream = world.upstream();
    kit::tag(&upstream, "v1");
    let tagged = kit::head(&upstream);
    kit::git(&upstream, &["checkout", "--quiet", "-b", "doomed"]);
    let orphan = kit::commit_files(&upstream, &[("doomed.txt", "gone\n")], "doomed");
    kit::git(&upstream, &["update-ref", "refs/pull/1/head", &orphan]);
    kit::checkout(&upstream, "main");
    kit::git(&upstream, &["branch", "--quiet", "-D", "doomed"]);
    kit::commit_files(&upstream, &[("README", "moved\n")], "moved");

    for (name, reference, expected) in [
        ("tag", "v1", &tagged),
        ("commit", orphan.as_str(), &orphan),
        ("pull", "refs/pull/1/head", &orphan),
    ] {
        let dest = world.dest(name);
        let commit = world
            .git
            .clone_with_mirror(&world.repo(Some(reference)), &world.mirrors, &dest)
            .await
            .unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(&commit, expected, "{reference}");
        assert_eq!(
            kit::git(&dest, &["config", "remote.origin.url"]),
            world.repo(None).url
        );
    }
    let err = world
        .git
        .clone_with_mirror(
            &world.repo(Some("nope")),
            &world.mirrors,
            &world.dest("nope"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::MissingRef { .. }), "{err}");
}

#[tokio::test]
async fn a_bundle_fast_forwards_a_checkout_through_its_own_git() {
    let world = World::new();
    let checkout = world.clone("ws").await;
    kit::git(&checkout, &["update-ref", Git::BASE_REF, "HEAD"]);
    let before = kit::head(&checkout);

    // Nothing moved: no bundle, nothing changes.
    let mirror = world
        .git
        .mirror(&world.repo(None), &world.mirrors)
        .await
        .unwrap();
    let none = world
        .git
        .catch_up(&mirror, "main", std::slice::from_ref(&before))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(none.bundle, None);
    assert!(
        world
            .git
            .catch_up(&mirror, "gone", &[])
            .await
            .unwrap()
            .is_none()
    );
    drop(mirror);
    let outcome = fetch_inside(&world, &checkout).await.unwrap();
    assert!(!outcome.updated);

    let moved = kit::commit_files(&world.upstream(), &[("NEWS", "news\n")], "news");
    std::fs::write(checkout.join("untracked.txt"), "mine\n").unwrap();
    let outcome = fetch_inside(&world, &checkout).await.unwrap();
    assert_eq!(
        (
            outcome.previous.as_str(),
            outcome.commit.as_str(),
            outcome.updated
        ),
        (before.as_str(), moved.as_str(), true)
    );
    assert_eq!(read(&checkout.join("NEWS")), "news\n");
    assert_eq!(read(&checkout.join("untracked.txt")), "mine\n");
    assert_eq!(kit::git(&checkout, &["rev-parse", Git::BASE_REF]), moved);
    assert_eq!(kit::git(&checkout, &["rev-parse", "origin/main"]), moved);
    assert!(!checkout.join(".git/test.bundle").exists());

    // A conflicting local change stops it; the change survives.
    std::fs::write(checkout.join("NEWS"), "local\n").unwrap();
    kit::commit_files(&world.upstream(), &[("NEWS", "more news\n")], "more");
    let err = fetch_inside(&world, &checkout).await.unwrap_err();
    assert!(matches!(err, GitError::CannotFastForward { .. }), "{err}");
    assert_eq!(read(&checkout.join("NEWS")), "local\n");
    assert_eq!(kit::head(&checkout), moved);
}

#[tokio::test]
async fn a_copied_checkout_is_fetched_without_reading_its_configuration() {
    let world = World::new();
    let marker = world.dir.path().join("ran");
    let hostile = |checkout: &Path| {
        let command = format!("sh -c 'echo ran >> {}; cat'", marker.display());
        for key in ["filter.x.clean", "filter.x.smudge", "core.fsmonitor"] {
            kit::git(checkout, &["config", key, &command]);
        }
        kit::git(checkout, &["config", "filter.x.required", "true"]);
        std::fs::write(checkout.join(".git/info/attributes"), "* filter=x\n").unwrap();
        std::fs::read(checkout.join(".git/config")).unwrap()
    };
    let copy = world.clone("copy").await;
    let config = hostile(&copy);
    let before = kit::head(&copy);
    let moved = kit::commit_files(&world.upstream(), &[("NEWS", "news\n")], "news");

    let outcome = world
        .git
        .fetch_copy(&world.repo(None), &world.mirrors, &copy)
        .await
        .unwrap();
    assert_eq!((outcome.previous, outcome.commit), (before, moved.clone()));
    assert_eq!(read(&copy.join("NEWS")), "news\n");
    assert_eq!(kit::git(&copy, &["rev-parse", Git::BASE_REF]), moved);
    assert!(!marker.exists(), "the copy's filter ran");
    assert_eq!(std::fs::read(copy.join(".git/config")).unwrap(), config);

    // The same configuration does run under a git that reads it, which is
    // what the in-place fetch of a `local` workspace is.
    let local = world.clone("local").await;
    hostile(&local);
    kit::commit_files(&world.upstream(), &[("NEWS", "more\n")], "more");
    world.git.fetch(&world.repo(None), &local).await.unwrap();
    assert!(marker.exists(), "the hostile configuration is real");
}

#[tokio::test]
async fn a_copy_that_leads_outside_itself_through_git_or_links_within_it_is_refused() {
    let world = World::new();
    let copy = world.clone("linked").await;
    std::fs::rename(copy.join(".git"), world.dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(world.dir.path().join("elsewhere"), copy.join(".git")).unwrap();
    let err = world
        .git
        .fetch_copy(&world.repo(None), &world.mirrors, &copy)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::UnsafeCheckout { .. }), "{err}");

    // A link deeper down: objects fetched would be written where it
    // leads, and refs read from there.
    for (name, link) in [
        ("objects-linked", "objects/pack"),
        ("refs-linked", "refs/heads"),
        ("head-linked", "HEAD"),
    ] {
        let copy = world.clone(name).await;
        let elsewhere = world.dir.path().join(format!("{name}-target"));
        std::fs::create_dir(&elsewhere).unwrap();
        let link = copy.join(".git").join(link);
        let _ = std::fs::remove_dir_all(&link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = world
            .git
            .fetch_copy(&world.repo(None), &world.mirrors, &copy)
            .await
            .unwrap_err();
        assert!(
            matches!(err, GitError::UnsafeCheckout { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("is a link"), "{name}: {err}");
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{name}: git wrote through the link"
        );
    }

    let copy = world.clone("borrowing").await;
    std::fs::write(copy.join(".git/objects/info/alternates"), "/etc\n").unwrap();
    let err = world
        .git
        .fetch_copy(&world.repo(None), &world.mirrors, &copy)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("borrows"), "{err}");
}

/// The name of a mirror's files: `NAME.git`, `NAME.lock`, ...
fn mirror_name(world: &World, url: &str) -> String {
    let path = world.mirrors.path_for(url);
    path.file_stem().unwrap().to_str().unwrap().to_owned()
}

/// Everything in the mirrors' directory and its scratch space, sorted.
fn mirror_files(world: &World) -> Vec<String> {
    let root = world.mirrors.root();
    let mut names = Vec::new();
    for dir in [root.to_path_buf(), root.join("scratch")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten() {
            let path = entry.unwrap().path();
            names.push(path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_clone_leaves_no_git_process_with_the_token() {
    let world = World::new();
    world.server.stall();
    let (git, mirrors, repo, dest) = (
        Clone::clone(&world.git),
        world.mirrors.clone(),
        world.repo(None),
        world.dest("dropped"),
    );
    let clone = tokio::spawn(async move { git.clone_with_mirror(&repo, &mirrors, &dest).await });
    tokio::task::block_in_place(|| world.server.wait_for_stalled(1));
    let holding = kit::processes_holding(&world.token);
    let commands: Vec<String> = holding.iter().map(|pid| kit::command_of(*pid)).collect();
    assert!(
        commands.iter().any(|c| c.contains("remote-http")),
        "git's helper holds the token too: {commands:?}"
    );

    clone.abort();
    assert!(clone.await.unwrap_err().is_cancelled());
    kit::wait_for_exit(&holding, std::time::Duration::from_secs(10));
    assert_eq!(kit::processes_holding(&world.token), Vec::<u32>::new());

    // Its mirror is free for the next clone, which finds nothing in the way.
    world.server.resume();
    let dest = world.clone("next").await;
    assert_eq!(kit::head(&dest), kit::head(&world.upstream()));
    let name = mirror_name(&world, &world.repo(None).url);
    assert_eq!(
        mirror_files(&world),
        [format!("{name}.git"), format!("{name}.lock")]
    );
}

#[tokio::test]
async fn a_mirror_a_killed_fetch_left_is_cleared_before_its_next_use() {
    let world = World::new();
    world.clone("first").await;
    let url = world.repo(None).url;
    let name = mirror_name(&world, &url);
    let mirror = world.mirrors.path_for(&url);
    // What `kill -9` of a provision in the middle of a fetch into the mirror
    // leaves: the lock file naming the dead holder, git's lock of the branch
    // it was updating, a quarantine of objects half received, a bundle.
    let root = world.mirrors.root();
    std::fs::write(root.join(format!("{name}.lock")), "4194000\n").unwrap();
    std::fs::write(mirror.join("refs/heads/main.lock"), "").unwrap();
    std::fs::create_dir(mirror.join("objects/incoming-Xy12ab")).unwrap();
    std::fs::create_dir_all(root.join(format!("scratch/{name}-bundle"))).unwrap();

    let moved = kit::commit_files(&world.upstream(), &[("README", "moved\n")], "moved");
    let second = world.clone("second").await;
    assert_eq!(kit::head(&second), moved);
    assert!(!mirror.join("refs/heads/main.lock").exists());
    assert!(!mirror.join("objects/incoming-Xy12ab").exists());
    assert_eq!(
        mirror_files(&world),
        [
            format!("{name}.git"),
            format!("{name}.lock"),
            "scratch".into()
        ]
    );
    assert_eq!(
        std::fs::read_to_string(root.join(format!("{name}.lock"))).unwrap(),
        "",
        "released in good order"
    );
}

#[tokio::test]
async fn recovery_and_gc_clear_what_interrupted_clones_left_and_spare_mirrors_in_use() {
    let world = World::new();
    let root = world.mirrors.root().to_path_buf();
    kit::make_repo(&world.dir.path().join("repos/other"), &[("a", "b")]);
    let other_url = format!("{}other", world.server.url());
    let mut other = world.repo(None);
    other.url = other_url.clone();
    world
        .git
        .clone_with_mirror(&other, &world.mirrors, &world.dest("other"))
        .await
        .unwrap();
    let other = mirror_name(&world, &other_url);
    // A mirror in use, making a bundle.
    let held = world
        .git
        .mirror(&world.repo(None), &world.mirrors)
        .await
        .unwrap();
    let busy = mirror_name(&world, &world.repo(None).url);
    std::fs::create_dir_all(root.join(format!("scratch/{busy}-bundle"))).unwrap();
    std::fs::create_dir(root.join(format!("{busy}.partial"))).unwrap();
    // The first clone of a URL, killed with its berth: the lock names the
    // dead process.
    let dead = "d".repeat(64);
    std::fs::write(root.join(format!("{dead}.lock")), "4194000\n").unwrap();
    std::fs::create_dir_all(root.join(format!("{dead}.partial/objects"))).unwrap();
    std::fs::create_dir_all(root.join(format!("scratch/{dead}-bundle"))).unwrap();
    // A fetch killed on its own (its berth lived on and released the lock).
    std::fs::write(root.join(format!("{other}.git/packed-refs.lock")), "").unwrap();

    // At start, only what a dead holder left goes.
    let mut removed = world.mirrors.recover().await.unwrap();
    removed.sort();
    assert_eq!(
        removed,
        [
            root.join(format!("{dead}.partial")),
            root.join(format!("scratch/{dead}-bundle")),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(root.join(format!("{dead}.lock"))).unwrap(),
        ""
    );

    // gc takes the rest, except what the mirror in use is making.
    let mut removed = world.mirrors.gc().await.unwrap();
    removed.sort();
    let mut expected = [
        root.join(format!("{dead}.lock")),
        root.join(format!("{other}.git/packed-refs.lock")),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    let mut kept = vec![
        format!("{busy}.git"),
        format!("{busy}.lock"),
        format!("{busy}.partial"),
        format!("{other}.git"),
        format!("{other}.lock"),
        "scratch".into(),
        format!("scratch/{busy}-bundle"),
    ];
    kept.sort();
    assert_eq!(mirror_files(&world), kept);
    drop(held);
    assert!(world.mirrors.recover().await.unwrap().is_empty());
}

/// What a patch made on the host compares with: a commit's files through
/// the mirror, with their modes, the attributes on their way, and a bound.
#[tokio::test]
async fn a_commits_files_come_from_the_mirror_with_modes_attributes_and_a_bound() {
    let world = World::new();
    let upstream = world.upstream();
    std::fs::create_dir_all(upstream.join("bin")).unwrap();
    std::fs::write(upstream.join("bin/run"), "#!/bin/sh\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(upstream.join("bin/run"), executable).unwrap();
    std::os::unix::fs::symlink("README", upstream.join("link")).unwrap();
    kit::git(&upstream, &["add", "link"]);
    let commit = kit::commit_files(&upstream, &[("src/big.txt", &"x".repeat(4000))], "more");
    world.clone("first").await;

    let paths: Vec<String> = [
        "src/lib.txt",
        "bin/run",
        "link",
        "src",
        "nope",
        "src/nope/deeper",
    ]
    .map(str::to_owned)
    .to_vec();
    let url = world.repo(None).url;
    let read = |commit: String, paths: Vec<String>, limit: u64| {
        let (world, url) = (&world, &url);
        async move {
            world
                .git
                .commit_files(&world.mirrors, url, &commit, &paths, limit)
                .await
                .unwrap()
        }
    };
    let base = read(commit.clone(), paths, 1 << 20).await.unwrap();
    assert!(!base.attributes);
    let seen: Vec<Option<(u32, Vec<u8>)>> = base
        .files
        .iter()
        .map(|f| f.as_ref().map(|f| (f.mode, f.data.clone())))
        .collect();
    assert_eq!(
        seen,
        [
            Some((0o100644, b"one\n".to_vec())),
            Some((0o100755, b"#!/bin/sh\n".to_vec())),
            Some((0o120000, b"README".to_vec())),
            Some((0o40000, Vec::new())),
            None,
            None,
        ]
    );
    let lib = base.files[0].as_ref().unwrap();
    assert_eq!(
        lib.id,
        kit::git(&upstream, &["rev-parse", &format!("{commit}:src/lib.txt")])
    );

    assert_eq!(
        read(commit.clone(), vec!["src/big.txt".into()], 1000).await,
        None,
        "past the bound"
    );

    std::fs::write(upstream.join("src/.gitattributes"), "*.txt text\n").unwrap();
    let attributed = kit::commit_files(&upstream, &[("README", "again\n")], "attributes");
    world.clone("second").await;
    let base = read(attributed.clone(), vec!["README".into()], 1 << 20)
        .await
        .unwrap();
    assert_eq!(base.files[0].as_ref().unwrap().data, b"again\n");
    assert!(!base.attributes, "none on the way to README");
    let base = read(attributed, vec!["src/lib.txt".into()], 1 << 20)
        .await
        .unwrap();
    assert!(
        base.attributes,
        "src/.gitattributes is on the way to src/lib.txt"
    );
}
