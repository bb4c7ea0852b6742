//! The service layer end to end, with the `local` runtime, real git
//! repositories and real processes.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::spec::Format;
use berth_core::{ExecEvent, ExecRequest, ExitStatus, ProvisionEvent, Spec, WorkspaceState};
use berth_provider::{CreateOptions, Progress, Provider, ProviderConfig, ServiceError};
use berth_runtime_local::LocalRuntime;
use berth_testkit::{
    GitHttpServer, commit_files, files_containing, make_repo, temp_dir, write_credentials,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

struct World {
    _dir: TempDir,
    home: PathBuf,
    repos: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = temp_dir();
        let home = dir.path().join("home");
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos).unwrap();
        World {
            home,
            repos,
            _dir: dir,
        }
    }

    async fn provider(&self) -> Provider {
        let config =
            ProviderConfig::new(&self.home).runtime(Arc::new(LocalRuntime::new(&self.home)));
        Provider::open(config).await.unwrap()
    }

    fn repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let path = self.repos.join(name);
        make_repo(&path, files);
        path
    }
}

fn spec(text: &str) -> Spec {
    Spec::parse(text, Format::Toml).unwrap()
}

async fn create(
    provider: &Provider,
    spec: Spec,
) -> (
    Result<berth_core::Workspace, ServiceError>,
    Vec<ProvisionEvent>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
    let result = provider
        .create(spec, CreateOptions::default(), Progress::to(sender))
        .await;
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    (result, events)
}

struct Output {
    stdout: String,
    stderr: String,
    exit: ExitStatus,
}

async fn exec(provider: &Provider, id: &str, request: ExecRequest) -> Output {
    let (_, mut events) = provider
        .exec(id, request, CancellationToken::new())
        .await
        .unwrap();
    let mut out = Output {
        stdout: String::new(),
        stderr: String::new(),
        exit: ExitStatus::default(),
    };
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => out.stdout.push_str(&String::from_utf8_lossy(&data.0)),
            ExecEvent::Stderr { data } => out.stderr.push_str(&String::from_utf8_lossy(&data.0)),
            ExecEvent::Exit(exit) => out.exit = exit,
        }
    }
    out
}

fn root_of(ws: &berth_core::Workspace) -> PathBuf {
    PathBuf::from(ws.runtime_info["root"].as_str().unwrap())
}

fn url(path: &Path) -> String {
    format!("file://{}", path.display())
}

#[tokio::test]
async fn provisions_from_a_spec_then_starts_the_next_from_the_cache_and_fetches() {
    let world = World::new();
    let upstream = world.repo("app", &[("README.md", "v1\n")]);
    let provider = world.provider().await;
    let spec = spec(&format!(
        "runtime = \"local\"\nsetup_script = \"echo setting up; echo built > app/BUILT\"\n\
         [[repositories]]\nurl = \"{}\"\npath = \"app\"\n",
        url(&upstream)
    ));

    let (first, events) = create(&provider, spec.clone()).await;
    let first = first.unwrap();
    assert_eq!(first.state, WorkspaceState::Running);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheMiss { .. }))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::Cloned { path, .. } if path == "app"))
    );
    assert!(events.iter().any(
        |e| matches!(e, ProvisionEvent::SetupOutput { data, .. } if data.0 == b"setting up\n")
    ));
    assert!(matches!(events.last(), Some(ProvisionEvent::Ready { .. })));
    let root = root_of(&first);
    assert_eq!(
        std::fs::read_to_string(root.join("app/README.md")).unwrap(),
        "v1\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("app/BUILT")).unwrap(),
        "built\n"
    );

    // Upstream moves; the second workspace starts from the cache (no clone,
    // no setup) and fetches the new commit.
    let moved = commit_files(&upstream, &[("README.md", "v2\n")], "v2");
    let (second, events) = create(&provider, spec).await;
    let second = second.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProvisionEvent::CacheHit { .. })),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| matches!(
        e,
        ProvisionEvent::Cloning { .. } | ProvisionEvent::SetupStarted
    )));
    assert!(events.iter().any(
        |e| matches!(e, ProvisionEvent::Fetched { commit, updated: true, .. } if *commit == moved)
    ));
    let root = root_of(&second);
    assert_eq!(
        std::fs::read_to_string(root.join("app/README.md")).unwrap(),
        "v2\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("app/BUILT")).unwrap(),
        "built\n"
    );
    assert_ne!(first.name, second.name, "names stay unique");
}

#[tokio::test]
async fn a_failed_setup_leaves_a_failed_workspace_with_its_output() {
    let world = World::new();
    let provider = world.provider().await;
    let (result, events) = create(
        &provider,
        spec("runtime = \"local\"\nsetup_script = \"echo compiling; echo 'error: missing thing' >&2; exit 3\"\n"),
    )
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), "provision_failed");
    assert!(err.to_string().contains("code 3"), "{err}");
    let Some(ProvisionEvent::Failed { output_tail, .. }) = events.last() else {
        panic!("last event is not Failed: {events:?}");
    };
    assert!(
        output_tail.contains("error: missing thing"),
        "{output_tail}"
    );
    let listed = provider.list(false).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, WorkspaceState::Failed);
    assert!(
        listed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("missing thing")
    );
    let err = provider
        .exec(
            listed[0].id.as_str(),
            ExecRequest::shell("true"),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "wrong_state");
}

#[tokio::test]
async fn the_runtime_is_never_guessed() {
    let world = World::new();
    let provider = world.provider().await;
    let (result, _) = create(&provider, spec("setup_script = \"true\"\n")).await;
    let err = result.unwrap_err();
    assert_eq!(err.code(), "no_runtime");
    assert!(err.to_string().contains("available here: local"), "{err}");
    let (result, _) = create(&provider, spec("runtime = \"warp\"\n")).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("unknown runtime `warp`")
    );
    assert!(
        provider.list(true).unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn the_clone_token_never_enters_the_workspace() {
    let world = World::new();
    let token = "tok-3b0e5c0ffee5ecret";
    world.repo("private", &[("src/lib.rs", "pub fn f() {}\n")]);
    let server = GitHttpServer::start(&world.repos, token);
    write_credentials(&world.home, "forge", token, &[&server.url()]);
    let provider = world.provider().await;

    let (ws, events) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\nsetup_script = \"env; git -C private remote -v\"\n\
             [[repositories]]\nurl = \"{}private\"\npath = \"private\"\ncredential = \"forge\"\n",
            server.url()
        )),
    )
    .await;
    let ws = ws.unwrap();
    assert!(server.served() > 0);
    let root = root_of(&ws);
    assert!(root.join("private/src/lib.rs").exists());
    assert_eq!(
        files_containing(&root, token.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(&world.home.join("logs"), token.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert!(!format!("{events:?}").contains(token));
    let env = exec(
        &provider,
        ws.id.as_str(),
        ExecRequest::shell("env; cat /proc/self/environ"),
    )
    .await;
    assert!(
        !env.stdout.contains(token),
        "the token is in a command's environment"
    );
    assert!(
        !env.stdout.contains("GIT_CONFIG"),
        "git's credential config leaked: {}",
        env.stdout
    );

    // Without the credential the server refuses, and the error is clear.
    let (result, _) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\n[[repositories]]\nurl = \"{}private\"\npath = \"p\"\n",
            server.url()
        )),
    )
    .await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("cloning"), "{err}");
    assert!(!err.contains(token));
}

#[tokio::test]
async fn a_spec_sending_a_credential_to_its_own_server_is_refused_before_any_request() {
    let world = World::new();
    let token = "tok-forge-7e1d";
    world.repo("app", &[("README", "one\n")]);
    let forge = GitHttpServer::start(&world.repos, token);
    // The spec author's server, which would record the token.
    let theirs = GitHttpServer::start(&world.repos, "anything");
    write_credentials(
        &world.home,
        "forge",
        token,
        &[&format!("{}app", forge.url())],
    );
    let provider = world.provider().await;

    let stolen = format!("{}app", theirs.url());
    for url in [
        stolen.clone(),
        // The forge's own host, outside the prefix or by a path trick.
        format!("{}app-evil", forge.url()),
        format!("{}app/../other", forge.url()),
    ] {
        let (result, events) = create(
            &provider,
            spec(&format!(
                "runtime = \"local\"\n\
                 [[repositories]]\nurl = \"{url}\"\npath = \"app\"\ncredential = \"forge\"\n"
            )),
        )
        .await;
        let err = result.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ServiceError::InvalidRequest { field, .. } if field == "repositories[0].credential"),
            "{text}"
        );
        assert!(text.contains("`forge`"), "{text}");
        assert!(text.contains(&url), "{text}");
        assert!(events.is_empty(), "{events:?}");
    }
    assert_eq!(theirs.requests(), 0, "the spec's server heard nothing");
    assert_eq!(forge.requests(), 0);
    assert!(
        provider.list(true).unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn a_fetch_goes_only_where_the_credential_allows_now() {
    let world = World::new();
    let token = "tok-forge-52aa";
    let upstream = world.repo("app", &[("README", "one\n")]);
    let forge = GitHttpServer::start(&world.repos, token);
    write_credentials(&world.home, "forge", token, &[&forge.url()]);
    let provider = world.provider().await;
    let (ws, _) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\n\
             [[repositories]]\nurl = \"{}app\"\npath = \"app\"\ncredential = \"forge\"\n",
            forge.url()
        )),
    )
    .await;
    let ws = ws.unwrap();
    commit_files(&upstream, &[("README", "two\n")], "moves");

    // The credential is narrowed to another team's repositories: the
    // workspace made before cannot use it any more.
    drop(provider);
    write_credentials(
        &world.home,
        "forge",
        token,
        &[&format!("{}other-team/", forge.url())],
    );
    let provider = world.provider().await;
    let asked = forge.requests();
    let err = provider
        .fetch(ws.id.as_str(), Progress::none())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("credential `forge` may not be sent to"),
        "{err}"
    );
    assert!(err.contains(&format!("{}app", forge.url())), "{err}");
    assert_eq!(forge.requests(), asked, "no request was made");
    assert_eq!(
        std::fs::read_to_string(root_of(&ws).join("app/README")).unwrap(),
        "one\n"
    );
}

#[tokio::test]
async fn exec_uses_the_spec_environment_not_the_providers() {
    let world = World::new();
    let provider = world.provider().await;
    // cargo gives the test process (the provider here) variables of its own.
    let providers_own = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let (ws, _) = create(
        &provider,
        spec("runtime = \"local\"\nenv = { FROM_SPEC = \"yes\" }\n"),
    )
    .await;
    let ws = ws.unwrap();
    std::fs::create_dir_all(root_of(&ws).join("sub")).unwrap();
    let mut request = ExecRequest::shell("echo $FROM_SPEC $FROM_REQUEST $CARGO_MANIFEST_DIR; pwd");
    request.env.insert("FROM_REQUEST".into(), "also".into());
    request.cwd = Some("sub".into());
    let out = exec(&provider, ws.id.as_str(), request).await;
    assert_eq!(out.exit.code, Some(0), "{}", out.stderr);
    let mut lines = out.stdout.lines();
    assert_eq!(lines.next(), Some("yes also"), "not {providers_own}");
    assert!(lines.next().unwrap().ends_with("/sub"));

    let mut escape = ExecRequest::shell("pwd");
    escape.cwd = Some("../..".into());
    let err = provider
        .exec(ws.id.as_str(), escape, CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_path");
    assert!(err.to_string().contains("../.."), "{err}");
}

#[tokio::test]
async fn timeouts_end_the_command_and_keep_its_output() {
    let world = World::new();
    let provider = world.provider().await;
    let (ws, _) = create(
        &provider,
        spec("runtime = \"local\"\n[timeouts]\nexec = 1\n"),
    )
    .await;
    let ws = ws.unwrap();
    let out = exec(
        &provider,
        ws.id.as_str(),
        ExecRequest::shell("echo before; trap '' TERM; sleep 30"),
    )
    .await;
    assert!(out.exit.timed_out, "the spec's exec timeout applies");
    assert_eq!(out.stdout, "before\n");
}

/// Timeouts of seconds too many to count in milliseconds are as good as
/// none: the setup and the command run, instead of the provider panicking.
#[tokio::test]
async fn timeouts_too_large_for_milliseconds_do_not_panic() {
    let world = World::new();
    let provider = world.provider().await;
    let max = u64::MAX;
    let (ws, _) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\nsetup_script = \"true\"\n[timeouts]\nexec = {max}\nsetup = {max}\n"
        )),
    )
    .await;
    let ws = ws.unwrap();
    let out = exec(&provider, ws.id.as_str(), ExecRequest::shell("echo ran")).await;
    assert_eq!((out.stdout.as_str(), out.exit.code), ("ran\n", Some(0)));
}

#[tokio::test]
async fn files_are_read_written_listed_and_removed_within_the_workspace() {
    let world = World::new();
    let provider = world.provider().await;
    let (ws, _) = create(&provider, spec("runtime = \"local\"\n")).await;
    let id = ws.unwrap().id.to_string();
    provider
        .write_file(&id, "a/b/c.txt", b"hello".to_vec())
        .await
        .unwrap();
    assert_eq!(
        provider
            .read_file(&id, "a/b/c.txt")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"hello"
    );
    let listed = provider.list_files(&id, "a").await.unwrap();
    assert_eq!(
        listed.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        ["a/b"]
    );
    for bad in ["../outside", "/etc/passwd"] {
        let err = provider.read_file(&id, bad).await.unwrap_err();
        assert_eq!(err.code(), "invalid_path", "{bad}: {err}");
    }
    let root = root_of(&provider.get(&id).unwrap());
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let err = provider
        .read_file(&id, "etc-link/hostname")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_path", "{err}");
    assert!(err.to_string().contains("outside"), "{err}");
    provider.remove_file(&id, "a").await.unwrap();
    let err = provider.read_file(&id, "a/b/c.txt").await.unwrap_err();
    assert_eq!(err.code(), "file_not_found");
    assert!(err.to_string().contains("a/b/c.txt"), "{err}");
}

#[tokio::test]
async fn a_fetch_that_cannot_fast_forward_keeps_local_work() {
    let world = World::new();
    let upstream = world.repo("lib", &[("lib.txt", "one\n")]);
    let provider = world.provider().await;
    let (ws, _) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\n[[repositories]]\nurl = \"{}\"\npath = \"lib\"\n",
            url(&upstream)
        )),
    )
    .await;
    let ws = ws.unwrap();
    let file = root_of(&ws).join("lib/lib.txt");
    std::fs::write(&file, "local edit\n").unwrap();
    commit_files(&upstream, &[("lib.txt", "upstream edit\n")], "upstream");
    let err = provider
        .fetch(ws.id.as_str(), Progress::none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("lib"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "local edit\n");

    std::fs::write(&file, "one\n").unwrap();
    let results = provider
        .fetch(ws.id.as_str(), Progress::none())
        .await
        .unwrap();
    assert!(results[0].updated);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "upstream edit\n");
}

#[tokio::test]
async fn an_interrupted_provision_is_cleaned_and_marked_failed_on_restart() {
    let world = World::new();
    let provider = world.provider().await;
    let (ws, _) = create(&provider, spec("runtime = \"local\"\n")).await;
    let ws = ws.unwrap();
    drop(provider);

    // Make the record look like a provision whose process died mid-way.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let store = berth_store::Store::open(&world.home).unwrap();
    store
        .set_state(&ws.id, WorkspaceState::Creating, None)
        .unwrap();
    store.set_owner(&ws.id, Some(dead_pid)).unwrap();
    drop(store);

    let provider = world.provider().await;
    let after = provider.get(ws.id.as_str()).unwrap();
    assert_eq!(after.state, WorkspaceState::Failed);
    assert!(after.error.unwrap().contains("interrupted"));
    assert!(!root_of(&ws).exists(), "what the provision left is cleaned");
}

#[tokio::test]
async fn a_workspace_removed_behind_berths_back_is_reported_failed() {
    let world = World::new();
    let provider = world.provider().await;
    let mut roots = Vec::new();
    for name in ["first", "second", "third"] {
        let (ws, _) = create(
            &provider,
            spec(&format!("runtime = \"local\"\nname = \"{name}\"\n")),
        )
        .await;
        roots.push(root_of(&ws.unwrap()));
    }
    for root in &roots {
        std::fs::remove_dir_all(root).unwrap();
    }
    drop(provider);
    let provider = world.provider().await;
    let gone = |ws: &berth_core::Workspace| {
        ws.state == WorkspaceState::Failed
            && ws
                .error
                .as_deref()
                .is_some_and(|e| e.contains("removed outside berth"))
    };

    // A command notices that its workspace is gone, and opening the
    // provider looked at no other.
    let err = provider
        .exec(
            "first",
            ExecRequest::shell("true"),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "wrong_state", "{err}");
    assert!(gone(&provider.get("first").unwrap()));
    assert_eq!(
        provider.get("second").unwrap().state,
        WorkspaceState::Running,
        "as the registry had it: nothing touched it yet"
    );
    // `show` and `ls` check what they show.
    assert!(gone(&provider.describe("second").await.unwrap().workspace));
    let listed = provider
        .list_labelled(false, &berth_core::Labels::new())
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(gone), "{listed:?}");
}

#[tokio::test]
async fn lifecycle_stop_start_remove() {
    let world = World::new();
    let provider = world.provider().await;
    let (ws, _) = create(&provider, spec("runtime = \"local\"\nname = \"life\"\n")).await;
    let ws = ws.unwrap();
    assert_eq!(
        provider.stop("life").await.unwrap().state,
        WorkspaceState::Stopped
    );
    let err = provider
        .exec("life", ExecRequest::shell("true"), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("stopped"), "{err}");
    assert_eq!(
        provider.start("life").await.unwrap().state,
        WorkspaceState::Running
    );
    assert_eq!(
        provider.remove(ws.id.as_str()).await.unwrap().state,
        WorkspaceState::Removed
    );
    assert!(!root_of(&ws).exists());
    assert!(provider.list(false).unwrap().is_empty());
    assert_eq!(provider.list(true).unwrap().len(), 1);
    let err = provider.get("nonexistent").unwrap_err();
    assert_eq!(err.code(), "not_found");
    assert!(err.to_string().contains("nonexistent"));
}

#[tokio::test]
async fn diff_shows_every_change_since_provisioning_committed_or_not() {
    let world = World::new();
    let upstream = world.repo(
        "app",
        &[
            ("keep.txt", "same\n"),
            ("edit.txt", "old\n"),
            ("gone.txt", "bye\n"),
        ],
    );
    let provider = world.provider().await;
    let (ws, _) = create(
        &provider,
        spec(&format!(
            "runtime = \"local\"\n[[repositories]]\nurl = \"{}\"\npath = \"src/app\"\n",
            url(&upstream)
        )),
    )
    .await;
    let id = ws.unwrap().id.to_string();
    let out = exec(
        &provider,
        &id,
        ExecRequest::shell(
            "cd src/app && echo new > edit.txt && rm gone.txt && echo fresh > added.txt && \
             git -c user.name=a -c user.email=a@b commit -qm agent-commit edit.txt && echo later >> edit.txt",
        ),
    )
    .await;
    assert_eq!(out.exit.code, Some(0), "{}", out.stderr);
    let patch = provider.diff(&id).await.unwrap();
    let patch = String::from_utf8(patch.read_all(u64::MAX).await.unwrap()).unwrap();
    assert!(
        patch.contains("diff --git a/src/app/edit.txt b/src/app/edit.txt"),
        "{patch}"
    );
    assert!(
        patch.contains("-old\n+new\n+later\n"),
        "committed and uncommitted edits: {patch}"
    );
    assert!(
        patch.contains("deleted file mode") && patch.contains("src/app/gone.txt"),
        "{patch}"
    );
    assert!(
        patch.contains("new file mode") && patch.contains("+fresh"),
        "{patch}"
    );
    assert!(!patch.contains("keep.txt"), "{patch}");
    // The repository's index lends its stat data to the diff: an edit
    // that keeps the file's size and puts its time back is found anyway,
    // and an index the workspace broke only makes the diff read every file.
    let out = exec(
        &provider,
        &id,
        ExecRequest::shell(
            "cd src/app && cp -p keep.txt ../keep.ref && printf 'SAME\\n' > keep.txt && \
             touch -r ../keep.ref keep.txt && rm ../keep.ref",
        ),
    )
    .await;
    assert_eq!(out.exit.code, Some(0), "{}", out.stderr);
    let patch = provider.diff(&id).await.unwrap();
    let patch = String::from_utf8(patch.read_all(u64::MAX).await.unwrap()).unwrap();
    assert!(patch.contains("-same\n+SAME\n"), "{patch}");
    let index = exec(
        &provider,
        &id,
        ExecRequest::shell("cd src/app && cp .git/index index.good && echo garbage > .git/index"),
    )
    .await;
    assert_eq!(index.exit.code, Some(0), "{}", index.stderr);
    let broken = provider.diff(&id).await.unwrap();
    let broken = String::from_utf8(broken.read_all(u64::MAX).await.unwrap()).unwrap();
    assert!(broken.contains("-same\n+SAME\n"), "{broken}");
    assert!(broken.contains("-old\n+new\n+later\n"), "{broken}");
    let restored = exec(
        &provider,
        &id,
        ExecRequest::shell("cd src/app && mv index.good .git/index && git checkout -q keep.txt"),
    )
    .await;
    assert_eq!(restored.exit.code, Some(0), "{}", restored.stderr);
    // The repository's own index is untouched.
    let status = exec(
        &provider,
        &id,
        ExecRequest::shell("cd src/app && git status --porcelain"),
    )
    .await;
    assert!(status.stdout.contains("?? added.txt"), "{}", status.stdout);
    // The file the patch passed through is gone.
    let left = exec(&provider, &id, ExecRequest::shell("ls src/app/.git")).await;
    assert!(!left.stdout.contains("berth-diff"), "{}", left.stdout);

    let err = provider.changes(&id).await.unwrap_err();
    assert!(
        err.to_string().contains("does not support"),
        "local says so: {err}"
    );
}
