//! Cloning and fetching into isolated workspaces, end to end with the
//! sandbox runtime (real namespaces, overlays and git): clones go through
//! the provider's mirrors, and fetches reach a workspace as a bundle taken
//! in by the workspace's own git, so nothing the workspace wrote into its
//! checkout is ever run by the provider. Needs root and what the sandbox
//! runtime needs; its init binary is built by `cargo build -p
//! berth-runtime-sandbox`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::spec::Format;
use berth_core::{ExecEvent, ExecRequest, ProvisionEvent, Spec, Workspace};
use berth_provider::{CreateOptions, Progress, Provider, ProviderConfig};
use berth_runtime_sandbox::runtime::DEFAULT_ID_MAP;
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime};
use berth_testkit::{
    GitHttpServer, commit_files, files_containing, make_repo, temp_dir, write_credentials,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok-fetch-b7c1e9d2aa";

/// The sandbox's init, built next to this test's executable.
fn init_program() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let init = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("berth-sandbox-init");
    assert!(
        init.is_file(),
        "`{}` is missing: build it with `cargo build -p berth-runtime-sandbox`",
        init.display()
    );
    init
}

struct World {
    dir: TempDir,
    home: PathBuf,
    server: GitHttpServer,
    /// Workspaces to remove when the test ends, whatever its outcome.
    made: std::sync::Mutex<Vec<String>>,
    provider: Option<Provider>,
}

impl World {
    async fn new() -> World {
        let dir = temp_dir();
        let home = dir.path().join("home");
        let repos = dir.path().join("repos");
        make_repo(
            &repos.join("app"),
            &[("README", "one\n"), ("src/lib.txt", "library\n")],
        );
        let server = GitHttpServer::start(&repos, TOKEN);
        write_credentials(&home, "forge", TOKEN, &[&server.url()]);
        let runtime = SandboxRuntime::new(SandboxConfig {
            init_program: init_program(),
            // The static agent, as berth installs it: it handles files,
            // in any image.
            agent_program: Some(berth_agent_bin::install(&home.join("bin")).unwrap()),
            host_binds: Vec::new(),
            id_map: Some(DEFAULT_ID_MAP),
            accept_weaker: false,
            standby: true,
            ..SandboxConfig::from_env(&home)
        })
        .unwrap();
        if let Err(reason) = berth_core::Runtime::available(&runtime).await {
            panic!("the sandbox runtime cannot run here: {reason}");
        }
        let provider = Provider::open(ProviderConfig::new(&home).runtime(Arc::new(runtime)))
            .await
            .unwrap();
        World {
            dir,
            home,
            server,
            made: std::sync::Mutex::new(Vec::new()),
            provider: Some(provider),
        }
    }

    fn provider(&self) -> &Provider {
        self.provider.as_ref().unwrap()
    }

    fn upstream(&self) -> PathBuf {
        self.dir.path().join("repos/app")
    }

    fn spec(&self, setup: &str) -> Spec {
        self.spec_on("host", setup)
    }

    fn spec_on(&self, image: &str, setup: &str) -> Spec {
        Spec::parse(
            &format!(
                "runtime = \"sandbox\"\nimage = \"{image}\"\nsetup_script = \"{setup}\"\n\
                 [[repositories]]\nurl = \"{}app\"\npath = \"app\"\ncredential = \"forge\"\n",
                self.server.url()
            ),
            Format::Toml,
        )
        .unwrap()
    }

    async fn create(&self, spec: Spec) -> (Workspace, Vec<ProvisionEvent>) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
        let result = self
            .provider()
            .create(spec, CreateOptions::default(), Progress::to(sender))
            .await;
        let mut events = Vec::new();
        while let Ok(event) = receiver.try_recv() {
            events.push(event);
        }
        let ws = result.unwrap_or_else(|e| panic!("{e}\n{events:#?}"));
        self.made.lock().unwrap().push(ws.id.to_string());
        (ws, events)
    }

    async fn read(&self, ws: &Workspace, path: &str) -> String {
        let bytes = self
            .provider()
            .read_file(ws.id.as_str(), path)
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes).unwrap()
    }

    async fn sh(&self, ws: &Workspace, script: &str) -> String {
        let (_, mut events) = self
            .provider()
            .exec(
                ws.id.as_str(),
                ExecRequest::shell(script),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        let (mut out, mut err, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(event) = events.recv().await {
            match event {
                ExecEvent::Stdout { data } => out.extend_from_slice(&data.0),
                ExecEvent::Stderr { data } => err.extend_from_slice(&data.0),
                ExecEvent::Exit(status) => code = status.code,
            }
        }
        assert_eq!(
            code,
            Some(0),
            "`{script}` failed: {}",
            String::from_utf8_lossy(&err)
        );
        String::from_utf8(out).unwrap()
    }

    /// The files the provider keeps on the host for a workspace and for
    /// everything it shares: its private upper layer, the cached layers,
    /// the mirrors and the scratch space for bundles.
    fn provider_files(&self, ws: &Workspace) -> Vec<PathBuf> {
        vec![
            self.home.join("sandbox").join(ws.id.as_str()).join("upper"),
            self.home.join("layers"),
            self.home.join("git"),
        ]
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let made = std::mem::take(&mut *self.made.lock().unwrap());
        // Teardown needs the async runtime the test ran on, which is still
        // there while the test's own values drop.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                for id in made {
                    let _ = provider.remove(&id).await;
                }
            })
        });
    }
}

fn fetched(events: &[ProvisionEvent]) -> Option<(String, bool)> {
    events.iter().find_map(|e| match e {
        ProvisionEvent::Fetched {
            commit, updated, ..
        } => Some((commit.clone(), *updated)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_hit_takes_in_what_moved_upstream_and_the_token_stays_out() {
    let world = World::new().await;
    let spec = world.spec("echo ran >> setup.log");
    let (first, events) = world.create(spec.clone()).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheMiss { .. }))
    );
    assert_eq!(world.read(&first, "app/README").await, "one\n");

    let moved = commit_files(&world.upstream(), &[("NEWS", "moved upstream\n")], "news");
    let (second, events) = world.create(spec).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheHit { .. })),
        "{events:#?}"
    );
    assert_eq!(fetched(&events), Some((moved.clone(), true)));
    assert_eq!(world.read(&second, "app/NEWS").await, "moved upstream\n");
    assert_eq!(
        world.read(&second, "setup.log").await,
        "ran\n",
        "setup ran once"
    );
    // The workspace's git sees a clean, fast-forwarded branch that follows
    // the real (credential-free) URL, with the base moved along.
    let status = world
        .sh(
            &second,
            "cd app && git status --porcelain --branch && git rev-parse HEAD refs/berth/base \
             origin/main && git config remote.origin.url && ls .git",
        )
        .await;
    let mut lines = status.lines();
    assert_eq!(lines.next(), Some("## main...origin/main"), "{status}");
    for _ in 0..3 {
        assert_eq!(lines.next(), Some(moved.as_str()), "{status}");
    }
    assert_eq!(
        lines.next(),
        Some(format!("{}app", world.server.url()).as_str())
    );
    assert!(!status.contains(".bundle"), "the bundle is left: {status}");
    // The first workspace has its own upper layer: untouched.
    let first_status = world.sh(&first, "ls app; cat app/README").await;
    assert_eq!(first_status, "README\nsrc\none\n");

    // Neither workspace, nor the cached layer, the mirror or the bundles'
    // scratch space holds the token.
    for ws in [&first, &second] {
        for dir in world.provider_files(ws) {
            assert!(dir.exists(), "{} is where files are kept", dir.display());
            let found = files_containing(&dir, TOKEN.as_bytes());
            assert!(found.is_empty(), "the token is in {found:?}");
        }
        let env = world
            .sh(
                ws,
                "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline | tr '\\0' '\\n'",
            )
            .await;
        assert!(env.contains("PATH="), "{env}");
        assert!(!env.contains(TOKEN));
    }
    let scratch = world.home.join("git/mirrors/scratch");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "bundles are removed from {}",
        scratch.display()
    );
    assert!(!format!("{events:?}").contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_hit_with_upstream_unmoved_runs_no_git_inside() {
    let world = World::new().await;
    // The cached state has a `git` first on PATH that logs every call and
    // runs the real one.
    let mut spec = world.spec("true");
    let bin = format!("{}/.bin", spec.root());
    spec.env.insert(
        "PATH".to_owned(),
        format!("{bin}:/usr/local/bin:/usr/bin:/bin"),
    );
    spec.setup_script = Some(format!(
        r#"real=$(command -v git) && mkdir -p {bin} &&
printf '#!/bin/sh\necho "$*" >> {bin}/calls\nexec %s "$@"\n' "$real" > {bin}/git &&
chmod +x {bin}/git"#
    ));
    let calls = format!("cat {bin}/calls 2>/dev/null; true");
    let calls = calls.as_str();
    let (first, _) = world.create(spec.clone()).await;
    let head = world.sh(&first, "cd app && git rev-parse HEAD").await;
    let head = head.trim();

    let (second, events) = world.create(spec.clone()).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheHit { .. })),
        "{events:#?}"
    );
    assert_eq!(fetched(&events), Some((head.to_owned(), false)));
    assert_eq!(world.sh(&second, calls).await, "", "git ran inside");
    let status = world
        .sh(
            &second,
            "cd app && git status --porcelain --branch && git rev-parse HEAD refs/berth/base",
        )
        .await;
    assert_eq!(status, format!("## main...origin/main\n{head}\n{head}\n"));

    // Once upstream moves, the workspace's git takes in what moved.
    let moved = commit_files(&world.upstream(), &[("NEWS", "moved\n")], "news");
    let (third, events) = world.create(spec).await;
    assert_eq!(fetched(&events), Some((moved, true)));
    assert_eq!(world.read(&third, "app/NEWS").await, "moved\n");
    assert_ne!(
        world.sh(&third, calls).await,
        "",
        "the fetch ran no git inside"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conflicting_local_change_stops_the_fetch_and_survives() {
    let world = World::new().await;
    let (ws, _) = world.create(world.spec("true")).await;
    let id = ws.id.as_str();
    world
        .provider()
        .write_file(id, "app/README", b"local edit\n".to_vec())
        .await
        .unwrap();
    commit_files(&world.upstream(), &[("README", "upstream edit\n")], "edit");

    let err = world
        .provider()
        .fetch(id, Progress::none())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cannot_fast_forward", "{err}");
    let text = err.to_string();
    assert!(text.contains(id) && text.contains("app"), "{text}");
    assert!(text.contains("would lose local changes"), "{text}");
    assert_eq!(world.read(&ws, "app/README").await, "local edit\n");

    // Once the change is gone, the same fetch goes through.
    world.sh(&ws, "cd app && git checkout -- README").await;
    let results = world.provider().fetch(id, Progress::none()).await.unwrap();
    assert!(results[0].updated, "{results:?}");
    assert_eq!(world.read(&ws, "app/README").await, "upstream edit\n");

    // A local commit that upstream does not have is a divergence.
    world
        .sh(
            &ws,
            "cd app && echo mine > MINE && git add MINE && \
             git -c user.name=t -c user.email=t@t commit -qm mine",
        )
        .await;
    commit_files(&world.upstream(), &[("THEIRS", "theirs\n")], "theirs");
    let err = world
        .provider()
        .fetch(id, Progress::none())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "cannot_fast_forward", "{err}");
    assert!(err.to_string().contains("diverged"), "{err}");
    assert_eq!(world.read(&ws, "app/MINE").await, "mine\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_config_that_runs_programs_never_runs_on_the_host() {
    let world = World::new().await;
    let (ws, _) = world.create(world.spec("true")).await;
    let marker = world.dir.path().join("ran-on-the-host");
    // Every way a checkout's configuration can make git run a program:
    // a filter on every file, a file-system monitor, hooks. Each writes the
    // host marker, and also a file inside the workspace, which shows it ran.
    let command = format!(
        "sh -c 'echo ran >> {}; echo ran >> .git/ran-inside; cat'",
        marker.display()
    );
    world
        .provider()
        .write_file(
            ws.id.as_str(),
            "app/.git/evil-hooks/post-merge",
            format!("#!/bin/sh\n{command}\n").into_bytes(),
        )
        .await
        .unwrap();
    world
        .sh(
            &ws,
            &format!(
                "cd app && git config filter.x.clean \"{command}\" && \
                 git config filter.x.smudge \"{command}\" && \
                 git config core.fsmonitor \"{command}\" && \
                 git config core.hooksPath .git/evil-hooks && \
                 chmod +x .git/evil-hooks/post-merge && \
                 echo '* filter=x' > .git/info/attributes"
            ),
        )
        .await;
    commit_files(&world.upstream(), &[("NEWS", "news\n")], "news");

    let results = world
        .provider()
        .fetch(ws.id.as_str(), Progress::none())
        .await
        .unwrap();
    assert!(results[0].updated, "{results:?}");
    assert_eq!(world.read(&ws, "app/NEWS").await, "news\n");
    assert!(
        !world.read(&ws, "app/.git/ran-inside").await.is_empty(),
        "the checkout's programs ran, inside the workspace"
    );
    assert!(
        !marker.exists(),
        "a program of the checkout's configuration ran on the host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_clone_of_a_url_only_asks_what_is_new() {
    let world = World::new().await;
    // A file big enough that downloading it again would show.
    let blob: String = (0..200_000).map(|i| format!("{i:x}\n")).collect();
    commit_files(&world.upstream(), &[("big.txt", blob.as_str())], "big");
    let before = world.server.served();
    world.create(world.spec("echo one")).await;
    let first = world.server.served() - before;

    // A different setup script: a cache miss, so a clone, of the same URL.
    let before = world.server.served();
    let (ws, events) = world.create(world.spec("echo two")).await;
    let second = world.server.served() - before;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheMiss { .. }))
    );
    assert_eq!(world.read(&ws, "app/big.txt").await.len(), blob.len());
    assert!(
        second < first,
        "the second clone made {second} requests, the first {first}"
    );
    println!("requests: first clone {first}, second clone {second}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_without_git_or_stopped_is_told_so() {
    let world = World::new().await;
    // A base of busybox alone: a shell, no git.
    let rootfs = world.dir.path().join("busybox-root");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let applets = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .unwrap();
    for applet in String::from_utf8(applets.stdout).unwrap().lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    // The sandbox's init runs inside as the workspace's first process; it
    // needs its shared libraries there.
    let ldd = std::process::Command::new("ldd")
        .arg(init_program())
        .output()
        .unwrap();
    for library in String::from_utf8(ldd.stdout)
        .unwrap()
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let target = rootfs.join(library.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(library, &target).unwrap();
    }
    let image = format!("dir:{}", rootfs.display());
    let (ws, _) = world.create(world.spec_on(&image, "true")).await;
    assert_eq!(world.read(&ws, "app/README").await, "one\n");
    let id = ws.id.as_str();
    let err = world
        .provider()
        .fetch(id, Progress::none())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(id) && text.contains("app") && text.contains("no `git`"),
        "{text}"
    );

    let (ws, _) = world.create(world.spec("true")).await;
    world.provider().stop(ws.id.as_str()).await.unwrap();
    let err = world
        .provider()
        .fetch(ws.id.as_str(), Progress::none())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "wrong_state", "{err}");
    assert!(err.to_string().contains("start it"), "{err}");
}
