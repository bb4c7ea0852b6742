//! The OpenAPI document against the server it describes: schemathesis
//! (installed by `scripts/prepare` into `target/schemathesis`) fuzzes every
//! operation of a live server with all its checks, and finds no server
//! error, no answer outside the schema and no undocumented status.
//!
//! The server is the one `berth serve` runs, on a free loopback port with a
//! token, over a provider whose only runtime is `fake`: fuzzed specs run no
//! setup script anywhere. It runs in a network namespace of its own, with
//! schemathesis beside it, so that a fuzzed repository URL reaches nothing
//! off this machine: the namespace has a loopback interface and nothing
//! else.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long the whole run may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(240);

/// The installed schemathesis: `$BERTH_SCHEMATHESIS`, or the one
/// `scripts/prepare` installs into the target directory.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("BERTH_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    // This test runs as `<target>/<profile>/deps/http-<hash>`.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    target.join("schemathesis/bin/schemathesis")
}

/// Moves this thread, and every thread and process it starts from now on,
/// into a new network namespace whose only interface is loopback, up.
fn private_network() {
    #[expect(
        unsafe_code,
        reason = "unshare of the network namespace alone: no file table or filesystem state is \
                  unshared, which is what makes unshare unsafe"
    )]
    let unshared = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) };
    if let Err(e) = unshared {
        panic!(
            "this test needs root for a network namespace of its own (unshare: {e}); CI runs \
             as root"
        );
    }
    let up = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run `ip` (scripts/prepare installs iproute2): {e}"));
    assert!(up.success(), "`ip link set lo up` failed: {up}");
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        links.lines().count() == 1 && links.contains(": lo:"),
        "the namespace has more than loopback: {links}"
    );
}

#[test]
fn schemathesis_finds_no_server_error_schema_violation_or_undocumented_status() {
    let program = schemathesis();
    assert!(
        program.is_file(),
        "schemathesis is not installed at {}: run scripts/prepare, which installs it there \
         (or set BERTH_SCHEMATHESIS)",
        program.display()
    );
    private_network();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(fuzz(program));
}

/// Serves the API with a few workspaces in every state, so that listings
/// and lookups answer with each shape a workspace can have, then runs
/// schemathesis against it.
async fn fuzz(program: PathBuf) {
    let home = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeRuntime::new());
    let mut config = ProviderConfig::new(home.path()).runtime(fake.clone());
    config.default_runtime = Some("fake".into());
    let provider = Provider::open(config).await.unwrap();
    seed(&provider, &fake).await;
    // Every command a fuzzed spec or request runs succeeds, so that fuzzed
    // workspaces get past provisioning and their routes are reached.
    fake.on("", Behaviour::ok(""));

    let server = berth_server::bind(
        provider,
        ServerConfig {
            listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
            token: Some(TOKEN.into()),
            // As Derrick's invocation runs it: its create needs no body.
            default_spec: Some(berth_core::Spec {
                runtime: Some("fake".into()),
                ..berth_core::Spec::default()
            }),
            ..ServerConfig::default()
        },
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));

    // Its own directory: schemathesis keeps its example database there.
    let scratch = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(&program)
        .current_dir(scratch.path())
        .arg("--config-file")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml"))
        .args([
            "run",
            &format!("http://{addr}/v1/openapi.json"),
            "--checks",
            "all",
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("schemathesis ran past {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}

/// Workspaces running, stopped, removed, failed while being made (no
/// runtime information) and failed in their setup script.
async fn seed(provider: &Provider, fake: &FakeRuntime) {
    let create = |name: &str, setup: Option<&str>| {
        let spec = berth_core::Spec {
            name: Some(name.into()),
            runtime: Some("fake".into()),
            setup_script: setup.map(str::to_string),
            ..berth_core::Spec::default()
        };
        provider.create(spec, Default::default(), berth_provider::Progress::none())
    };
    fake.on("true", Behaviour::ok(""));
    create("running", Some("true")).await.unwrap();
    let stopped = create("stopped", None).await.unwrap();
    provider.stop(stopped.id.as_str()).await.unwrap();
    let removed = create("removed", None).await.unwrap();
    provider.remove(removed.id.as_str()).await.unwrap();
    fake.on("exit 3", Behaviour::fail("setup failed\n", 3));
    create("failed-setup", Some("exit 3")).await.unwrap_err();
    fake.fail_creates(Some("the fake refuses".into()));
    create("failed-create", None).await.unwrap_err();
    fake.fail_creates(None);
}
