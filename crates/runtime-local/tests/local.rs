//! The local runtime on this host: what a command starts ends with it when
//! it times out or is cancelled, and with the workspace when it is
//! removed, however it detached. Needs root (cgroups).
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_core::{
    ExecEvent, ExecRequest, ExitStatus, Runtime, Spec, Workspace, WorkspaceId, WorkspaceState,
};
use berth_runtime_local::LocalRuntime;
use berth_testkit::attacks;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long processes may take to go once their end was decided.
const GONE_WITHIN: Duration = Duration::from_secs(10);

async fn created(rt: &LocalRuntime) -> Workspace {
    let ws = Workspace {
        id: WorkspaceId::generate(),
        name: "test".into(),
        runtime: "local".into(),
        spec: Spec::default(),
        state: WorkspaceState::Creating,
        labels: Default::default(),
        runtime_info: serde_json::Value::Null,
        cache_key: None,
        error: None,
        owner_pid: None,
        created_at: 0,
        updated_at: 0,
        last_active_at: 0,
    };
    let info = rt.create(&ws, None).await.unwrap();
    Workspace {
        runtime_info: info,
        ..ws
    }
}

async fn run(rt: &LocalRuntime, ws: &Workspace, request: ExecRequest) -> (String, ExitStatus) {
    let mut events = rt
        .exec(ws, request, CancellationToken::new())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => out.extend(data.0),
            ExecEvent::Stderr { .. } => {}
            ExecEvent::Exit(status) => return (String::from_utf8(out).unwrap(), status),
        }
    }
    panic!("no exit status")
}

/// Ends the marked processes a failed test left behind.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for (pid, _) in attacks::processes_with(&self.0) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

fn cgroups_here(rt: &LocalRuntime, ws: &Workspace) {
    let notes = rt.isolation(ws).notes.join("\n");
    assert!(
        notes.contains("a cgroup of its own"),
        "this host gives berth no cgroups (run as root): {notes}"
    );
}

#[tokio::test]
async fn timeout_ends_a_setsid_double_forked_child() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let ws = created(&rt).await;
    cgroups_here(&rt, &ws);
    let marker = attacks::marker();
    let _sweep = Sweep(format!("sleep {marker}"));

    let mut request = ExecRequest::shell(attacks::detaching(&marker));
    request.timeout_ms = Some(1000);
    let (out, status) = run(&rt, &ws, request).await;
    assert_eq!(out, "started\n");
    assert!(status.timed_out, "{status:?}");
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the timeout: {left:?}");
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn cancel_ends_a_child_that_ignores_sigterm_in_its_own_session() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let ws = created(&rt).await;
    cgroups_here(&rt, &ws);
    let marker = attacks::marker();
    let _sweep = Sweep(format!("sleep {marker}"));

    let cancel = CancellationToken::new();
    let mut events = rt
        .exec(
            &ws,
            ExecRequest::shell(attacks::detaching(&marker)),
            cancel.clone(),
        )
        .await
        .unwrap();
    assert!(matches!(
        events.recv().await,
        Some(ExecEvent::Stdout { .. })
    ));
    attacks::wait_for(&format!("sleep {marker}"), 4);
    cancel.cancel();
    let mut exit = None;
    while let Some(event) = events.recv().await {
        if let ExecEvent::Exit(status) = event {
            exit = Some(status);
        }
    }
    assert!(exit.unwrap().cancelled);
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the cancel: {left:?}");
    rt.remove(&ws).await.unwrap();
}

#[tokio::test]
async fn removing_a_local_workspace_ends_what_its_commands_left_running() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let ws = created(&rt).await;
    cgroups_here(&rt, &ws);
    let marker = attacks::marker();
    let _sweep = Sweep(format!("sleep {marker}"));

    // The command ends at once and leaves a daemon, as `cmd &` does.
    let script = format!("(setsid sleep {marker} >/dev/null 2>&1 &); echo left");
    let (out, status) = run(&rt, &ws, ExecRequest::shell(script)).await;
    assert_eq!((out.as_str(), status.code), ("left\n", Some(0)));
    attacks::wait_for(&format!("sleep {marker}"), 1);

    // Removed by another runtime, as another `berth` process would.
    LocalRuntime::new(home.path()).remove(&ws).await.unwrap();
    let left = attacks::survivors(&format!("sleep {marker}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the removal: {left:?}");
}
