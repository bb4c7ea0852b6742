//! Idle and lifetime deadlines, with the `local` runtime and real
//! processes, on a clock the tests move: nothing here waits for minutes.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::{Clock, ExecEvent, ExecRequest, ManualClock, Spec, WorkspaceState, now_ms};
use berth_provider::{CreateOptions, Progress, Provider, ProviderConfig, Reaped};
use berth_runtime_local::LocalRuntime;
use berth_testkit::temp_dir;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

async fn open(home: &Path, clock: &ManualClock) -> Provider {
    let mut config = ProviderConfig::new(home).runtime(Arc::new(LocalRuntime::new(home)));
    config.clock = Arc::new(clock.clone());
    Provider::open(config).await.unwrap()
}

fn spec(text: &str) -> Spec {
    Spec::parse(text, berth_core::spec::Format::Toml).unwrap()
}

async fn create(provider: &Provider, spec: Spec, options: CreateOptions) -> berth_core::Workspace {
    provider
        .create(
            spec,
            CreateOptions {
                runtime: Some("local".into()),
                ..options
            },
            Progress::none(),
        )
        .await
        .unwrap()
}

async fn run(provider: &Provider, id: &str, script: &str) -> i32 {
    let (_, mut events) = provider
        .exec(id, ExecRequest::shell(script), CancellationToken::new())
        .await
        .unwrap();
    let mut code = None;
    while let Some(event) = events.recv().await {
        if let ExecEvent::Exit(status) = event {
            code = Some(status.shell_code());
        }
    }
    code.unwrap()
}

fn state(provider: &Provider, id: &str) -> WorkspaceState {
    provider.get(id).unwrap().state
}

fn home() -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir();
    let home = dir.path().join("home");
    (dir, home)
}

#[tokio::test]
async fn an_idle_workspace_is_stopped_with_its_files_kept_and_each_use_moves_the_deadline() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"idle\""),
        CreateOptions {
            idle: Some(600),
            ..CreateOptions::default()
        },
    )
    .await;
    let id = ws.id.as_str();
    assert_eq!(
        ws.spec.timeouts.idle,
        Some(600),
        "the request's idle is kept"
    );
    assert_eq!(
        provider.describe(id).await.unwrap().idle_deadline,
        Some(clock.now_ms() + 600_000)
    );

    clock.advance_secs(599);
    assert_eq!(provider.reap().await.unwrap(), []);
    assert_eq!(run(&provider, id, "echo kept > notes.txt").await, 0);
    clock.advance_secs(599);
    provider
        .write_file(id, "more.txt", b"x".to_vec())
        .await
        .unwrap();
    clock.advance_secs(599);
    provider.list_files(id, "").await.unwrap();
    clock.advance_secs(599);
    assert_eq!(
        provider.reap().await.unwrap(),
        [],
        "a command, a write and a listing each moved the deadline"
    );
    assert_eq!(
        provider.describe(id).await.unwrap().idle_deadline,
        Some(clock.now_ms() + 1_000)
    );

    clock.advance_secs(1);
    assert_eq!(
        provider.reap().await.unwrap(),
        [Reaped::Stopped(ws.id.clone())]
    );
    assert_eq!(state(&provider, id), WorkspaceState::Stopped);
    assert_eq!(provider.describe(id).await.unwrap().idle_deadline, None);

    // Its files are kept; started again, it has a new idle time.
    provider.start(id).await.unwrap();
    let mut file = provider.read_file(id, "notes.txt").await.unwrap();
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut file, &mut text)
        .await
        .unwrap();
    assert_eq!(text, "kept\n");
    clock.advance_secs(300);
    assert_eq!(provider.reap().await.unwrap(), []);
    assert_eq!(state(&provider, id), WorkspaceState::Running);
    provider.remove(id).await.unwrap();
}

#[tokio::test]
async fn a_command_running_past_the_idle_timeout_keeps_its_workspace_running() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"busy\"\n[timeouts]\nidle = 60"),
        CreateOptions::default(),
    )
    .await;
    let id = ws.id.as_str();
    let cancel = CancellationToken::new();
    let (_, mut events) = provider
        .exec(
            id,
            ExecRequest::shell("echo started; sleep 600"),
            cancel.clone(),
        )
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ExecEvent::Stdout { .. })
    ));

    clock.advance_secs(3600);
    assert_eq!(provider.reap().await.unwrap(), []);
    assert_eq!(state(&provider, id), WorkspaceState::Running);

    // Its idle time counts from the command's end.
    cancel.cancel();
    while events.recv().await.is_some() {}
    // The guard is dropped by the task that relayed the events.
    tokio::time::timeout(Duration::from_secs(10), async {
        while provider.get(id).unwrap().last_active_at < clock.now_ms() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    clock.advance_secs(59);
    assert_eq!(provider.reap().await.unwrap(), []);
    clock.advance_secs(1);
    assert_eq!(
        provider.reap().await.unwrap(),
        [Reaped::Stopped(ws.id.clone())]
    );
    provider.remove(id).await.unwrap();
}

#[tokio::test]
async fn a_process_the_workspace_left_running_does_not_postpone_its_idle_stop() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"sneaky\"\n[timeouts]\nidle = 60"),
        CreateOptions::default(),
    )
    .await;
    let id = ws.id.as_str();
    // A detached loop that keeps writing in the workspace: the workspace is
    // busy in its own eyes, but nobody is using it.
    run(
        &provider,
        id,
        "setsid sh -c 'while :; do date > heartbeat; sleep 0.05; done' >/dev/null 2>&1 &",
    )
    .await;
    clock.advance_secs(61);
    assert_eq!(
        provider.reap().await.unwrap(),
        [Reaped::Stopped(ws.id.clone())]
    );
    provider.remove(id).await.unwrap();
}

#[tokio::test]
async fn a_workspace_outliving_its_lifetime_is_removed_by_the_next_process_that_opens_berth() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"brief\"\n[timeouts]\nlifetime = 3600"),
        CreateOptions::default(),
    )
    .await;
    let id = ws.id.to_string();
    let created = ws.created_at;
    let details = provider.describe(&id).await.unwrap();
    assert_eq!(details.removal_deadline, Some(created + 3_600_000));
    assert_eq!(
        details.idle_deadline, None,
        "no idle timeout, no idle deadline"
    );

    // Use does not lengthen a lifetime, and neither does stopping.
    clock.advance_secs(3000);
    assert_eq!(run(&provider, &id, "true").await, 0);
    provider.stop(&id).await.unwrap();
    assert_eq!(provider.reap().await.unwrap(), []);
    assert_eq!(
        provider.describe(&id).await.unwrap().removal_deadline,
        Some(created + 3_600_000)
    );
    drop(provider);

    clock.advance_secs(600);
    let later = open(&home, &clock).await;
    let gone = later.get(&id).unwrap();
    assert_eq!(gone.state, WorkspaceState::Removed);
    assert!(!home.join("local").join("workspaces").join(&id).exists());
}

#[tokio::test]
async fn a_request_deadline_overrides_the_specs_and_zero_is_refused() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"mine\"\n[timeouts]\nidle = 60\nlifetime = 60"),
        CreateOptions {
            lifetime: Some(7200),
            ..CreateOptions::default()
        },
    )
    .await;
    assert_eq!(ws.spec.timeouts.idle, Some(60));
    assert_eq!(ws.spec.timeouts.lifetime, Some(7200));
    let refused = provider
        .create(
            spec("name = \"never\""),
            CreateOptions {
                runtime: Some("local".into()),
                idle: Some(0),
                ..CreateOptions::default()
            },
            Progress::none(),
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("timeouts.idle"), "{refused}");
    assert!(provider.get("never").is_err(), "nothing was made");
    provider.remove(ws.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn the_reaper_a_server_runs_applies_deadlines_as_the_clock_passes_them() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"served\"\n[timeouts]\nidle = 60"),
        CreateOptions::default(),
    )
    .await;
    let reaper = tokio::spawn(provider.clone().reap_forever());
    clock.advance_secs(61);
    tokio::time::timeout(Duration::from_secs(30), async {
        while state(&provider, ws.id.as_str()) != WorkspaceState::Stopped {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the reaper stopped the idle workspace");
    reaper.abort();
    provider.remove(ws.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn an_open_terminal_keeps_its_workspace_running_until_it_closes() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let provider = open(&home, &clock).await;
    let ws = create(
        &provider,
        spec("name = \"term\"\n[timeouts]\nidle = 60"),
        CreateOptions::default(),
    )
    .await;
    // What the HTTP and CLI terminals hold while one is open.
    let terminal = provider.busy(&provider.get(ws.id.as_str()).unwrap());
    clock.advance_secs(7200);
    assert_eq!(provider.reap().await.unwrap(), []);
    drop(terminal);
    clock.advance_secs(59);
    assert_eq!(provider.reap().await.unwrap(), []);
    clock.advance_secs(1);
    assert_eq!(
        provider.reap().await.unwrap(),
        [Reaped::Stopped(ws.id.clone())]
    );
    provider.remove(ws.id.as_str()).await.unwrap();
}

#[tokio::test]
async fn commands_of_many_processes_within_a_second_write_the_registry_once() {
    let (_dir, home) = home();
    let clock = ManualClock::at(now_ms());
    let first = open(&home, &clock).await;
    let ws = create(&first, spec("name = \"burst\""), CreateOptions::default()).await;
    clock.advance_secs(5);
    assert_eq!(run(&first, "burst", "true").await, 0);
    let written = first.get("burst").unwrap().last_active_at;
    assert_eq!(written, clock.now_ms());
    drop(first);
    // A second process's short command, half a second later: the use the
    // first one recorded stands, neither its start nor its end is written.
    clock.advance_ms(500);
    let second = open(&home, &clock).await;
    assert_eq!(run(&second, ws.id.as_str(), "true").await, 0);
    assert_eq!(second.get("burst").unwrap().last_active_at, written);
}
