//! The provisioning cache's budget and single-flight provisioning, with
//! real cache entries on the sandbox runtime. Needs root and what the
//! sandbox runtime needs; its init binary is built by `cargo build -p
//! berth-runtime-sandbox`.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::spec::Format;
use berth_core::{ExecEvent, ExecRequest, ProvisionEvent, Runtime, Spec, Workspace};
use berth_provider::{CreateOptions, Progress, Provider, ProviderConfig};
use berth_runtime_sandbox::runtime::DEFAULT_ID_MAP;
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime};
use berth_testkit::temp_dir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;

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
    _dir: TempDir,
    home: PathBuf,
    runtime: Arc<SandboxRuntime>,
    provider: Provider,
}

impl World {
    async fn new(budget: Option<u64>) -> World {
        let dir = temp_dir();
        let home = dir.path().join("home");
        let runtime = Arc::new(
            SandboxRuntime::new(SandboxConfig {
                init_program: init_program(),
                agent_program: None,
                host_binds: Vec::new(),
                id_map: Some(DEFAULT_ID_MAP),
                accept_weaker: false,
                standby: false,
                ..SandboxConfig::from_env(&home)
            })
            .unwrap(),
        );
        if let Err(reason) = runtime.available().await {
            panic!("the sandbox runtime cannot run here: {reason}");
        }
        let mut config = ProviderConfig::new(&home).runtime(runtime.clone());
        config.cache_budget = budget;
        let provider = Provider::open(config).await.unwrap();
        World {
            _dir: dir,
            home,
            runtime,
            provider,
        }
    }

    /// A spec whose setup writes `mib` MiB of data into its cache entry.
    fn spec(name: &str, mib: u64) -> Spec {
        Spec::parse(
            &format!(
                "runtime = \"sandbox\"\nimage = \"host\"\n\
                 setup_script = \"head -c {} /dev/zero > {name}.bin\"\n",
                mib * MIB
            ),
            Format::Toml,
        )
        .unwrap()
    }

    /// Creates a workspace; whether it came from the cache.
    async fn create(&self, spec: Spec) -> (Workspace, bool) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1024);
        let ws = self
            .provider
            .create(spec, CreateOptions::default(), Progress::to(sender))
            .await
            .unwrap();
        let mut hit = None;
        while let Ok(event) = receiver.try_recv() {
            match event {
                ProvisionEvent::CacheHit { .. } => hit = Some(true),
                ProvisionEvent::CacheMiss { .. } => hit = Some(false),
                _ => {}
            }
        }
        (ws, hit.unwrap())
    }

    /// The setup logs written: one per setup script that ran.
    fn setups_run(&self) -> usize {
        std::fs::read_dir(self.home.join("logs"))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

async fn output(provider: &Provider, ws: &Workspace, script: &str) -> String {
    let (_, mut events) = provider
        .exec(
            ws.id.as_str(),
            ExecRequest::shell(script),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let (mut out, mut code) = (Vec::new(), None);
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => out.extend_from_slice(&data.0),
            ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit(status) => code = status.code,
        }
    }
    assert_eq!(code, Some(0), "`{script}` failed");
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn gc_cache_evicts_the_least_recently_used_entries_no_workspace_uses() {
    let world = World::new(None).await;
    let (a, _) = world.create(World::spec("a", 4)).await;
    let (b, _) = world.create(World::spec("b", 4)).await;
    let (c, _) = world.create(World::spec("c", 4)).await;
    let [key_a, key_b, key_c] = [&a, &b, &c].map(|ws| ws.cache_key.clone().unwrap());

    let everything = world.provider.gc_cache(Some(u64::MAX)).await.unwrap();
    assert!(everything.evicted.is_empty());
    assert!(
        everything.kept >= 12 * MIB && everything.kept < 16 * MIB,
        "three entries of 4 MiB measure {} bytes",
        everything.kept
    );

    // Every entry is in use: none is evicted, even past the budget.
    assert!(
        world
            .provider
            .gc_cache(Some(0))
            .await
            .unwrap()
            .evicted
            .is_empty()
    );
    for ws in [&a, &b] {
        world.provider.remove(ws.id.as_str()).await.unwrap();
    }

    // Just over the budget: the least recently used unused entry goes.
    let over = world
        .provider
        .gc_cache(Some(everything.kept - MIB))
        .await
        .unwrap();
    assert_eq!(over.evicted, [key_a.as_str()]);
    assert!(over.freed >= 4 * MIB, "{over:?}");
    assert!(!world.runtime.has_cache(&key_a).await);
    assert!(world.runtime.has_cache(&key_b).await);

    let all = world.provider.gc_cache(Some(0)).await.unwrap();
    assert_eq!(all.evicted, [key_b.as_str()], "c is in use");
    assert!(!world.runtime.has_cache(&key_b).await);
    assert!(world.runtime.has_cache(&key_c).await);

    // An evicted spec is provisioned again; the kept one starts from the
    // cache, with the files its setup made.
    let (again, hit) = world.create(World::spec("a", 4)).await;
    assert!(!hit, "a's entry was evicted");
    let (c2, hit) = world.create(World::spec("c", 4)).await;
    assert!(hit);
    assert_eq!(
        output(&world.provider, &c2, "wc -c < c.bin").await.trim(),
        (4 * MIB).to_string()
    );
    for ws in [&again, &c, &c2] {
        world.provider.remove(ws.id.as_str()).await.unwrap();
    }
}

#[tokio::test]
async fn a_new_entry_past_the_configured_budget_evicts_the_oldest_unused_one() {
    let world = World::new(Some(6 * MIB)).await;
    let (a, _) = world.create(World::spec("a", 4)).await;
    let key_a = a.cache_key.clone().unwrap();
    world.provider.remove(a.id.as_str()).await.unwrap();
    assert!(world.runtime.has_cache(&key_a).await, "within its budget");

    let (b, _) = world.create(World::spec("b", 4)).await;
    assert!(!world.runtime.has_cache(&key_a).await, "evicted for b");
    assert!(
        world
            .runtime
            .has_cache(b.cache_key.as_deref().unwrap())
            .await
    );

    // b is in use: a third entry leaves the cache over its budget rather
    // than evict it.
    let (c, _) = world.create(World::spec("c", 4)).await;
    assert!(
        world
            .runtime
            .has_cache(b.cache_key.as_deref().unwrap())
            .await
    );
    assert!(
        world
            .runtime
            .has_cache(c.cache_key.as_deref().unwrap())
            .await
    );
    for ws in [&b, &c] {
        world.provider.remove(ws.id.as_str()).await.unwrap();
    }
}

#[tokio::test]
async fn ten_concurrent_creations_from_one_uncached_spec_run_setup_once() {
    let world = World::new(None).await;
    // The setup takes a while, so that every creation starts while the
    // first is still provisioning.
    let spec = Spec::parse(
        "runtime = \"sandbox\"\nimage = \"host\"\n\
         setup_script = \"echo ran >> ran.txt; sleep 1\"\n",
        Format::Toml,
    )
    .unwrap();
    let creations = (0..10).map(|_| {
        let provider = world.provider.clone();
        let spec = spec.clone();
        tokio::spawn(async move {
            provider
                .create(spec, CreateOptions::default(), Progress::none())
                .await
        })
    });
    let made: Vec<Workspace> = futures_join(creations).await;
    assert_eq!(made.len(), 10);
    assert_eq!(world.setups_run(), 1, "the setup script ran once");
    for ws in &made {
        assert_eq!(output(&world.provider, ws, "cat ran.txt").await, "ran\n");
    }
    for ws in &made {
        world.provider.remove(ws.id.as_str()).await.unwrap();
    }
}

/// Waits for every task, each of which must have made its workspace.
async fn futures_join(
    tasks: impl Iterator<
        Item = tokio::task::JoinHandle<Result<Workspace, berth_provider::ServiceError>>,
    >,
) -> Vec<Workspace> {
    let mut made = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        made.push(task.await.unwrap().unwrap());
    }
    made
}

#[tokio::test]
async fn a_huge_sparse_file_or_a_link_to_the_host_counts_only_what_it_holds() {
    let world = World::new(None).await;
    let spec = Spec::parse(
        "runtime = \"sandbox\"\nimage = \"host\"\n\
         setup_script = \"truncate -s 50G huge.sparse && ln -s / host-root && ln -s /usr usr-link\"\n",
        Format::Toml,
    )
    .unwrap();
    let (ws, _) = world.create(spec).await;
    assert_eq!(
        output(&world.provider, &ws, "wc -c < huge.sparse")
            .await
            .trim(),
        (50u64 << 30).to_string()
    );
    let measured = world.provider.gc_cache(Some(u64::MAX)).await.unwrap();
    assert!(
        measured.kept < MIB,
        "the entry holds almost nothing but measures {} bytes",
        measured.kept
    );
    world.provider.remove(ws.id.as_str()).await.unwrap();
}
