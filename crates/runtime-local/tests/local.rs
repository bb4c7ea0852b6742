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
        node: None,
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

/// A command of `ws` that leaves a daemon (`sleep {marker}`) running.
async fn leave_daemon(rt: &LocalRuntime, ws: &Workspace, marker: &str) {
    let script = format!("(setsid sleep {marker} >/dev/null 2>&1 &); echo left");
    let (out, status) = run(rt, ws, ExecRequest::shell(script)).await;
    assert_eq!((out.as_str(), status.code), ("left\n", Some(0)));
    attacks::wait_for(&format!("sleep {marker}"), 1);
}

/// The cgroup directories named `id` beneath `berth-local`, in any home.
fn cgroups_named(id: &WorkspaceId) -> Vec<std::path::PathBuf> {
    let mount = berth_exec::cgroup::v2_mount().unwrap();
    std::fs::read_dir(mount.join("berth-local"))
        .unwrap()
        .map(|home| home.unwrap().path().join(id.as_str()))
        .filter(|dir| dir.is_dir())
        .collect()
}

#[tokio::test]
async fn two_homes_with_a_workspace_of_the_same_id_never_end_each_others_commands() {
    let (home_a, home_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (
        LocalRuntime::new(home_a.path()),
        LocalRuntime::new(home_b.path()),
    );
    let ws_a = created(&a).await;
    cgroups_here(&a, &ws_a);
    // The other home has a workspace of the same id (a copied registry).
    let ws_b = Workspace {
        runtime_info: b.create(&ws_a, None).await.unwrap(),
        ..ws_a.clone()
    };
    let (marker_a, marker_b) = (attacks::marker(), attacks::marker());
    let _sweep = (
        Sweep(format!("sleep {marker_a}")),
        Sweep(format!("sleep {marker_b}")),
    );
    leave_daemon(&a, &ws_a, &marker_a).await;
    leave_daemon(&b, &ws_b, &marker_b).await;
    assert_eq!(cgroups_named(&ws_a.id).len(), 2, "one cgroup per home");

    a.remove(&ws_a).await.unwrap();
    let left = attacks::survivors(&format!("sleep {marker_a}"), GONE_WITHIN);
    assert!(left.is_empty(), "survived the removal: {left:?}");
    assert_eq!(
        attacks::processes_with(&format!("sleep {marker_b}")).len(),
        1,
        "the other home's command was ended with this one's workspace"
    );
    assert_eq!(cgroups_named(&ws_a.id).len(), 1, "the removed one is gone");
    b.remove(&ws_b).await.unwrap();
    assert!(cgroups_named(&ws_a.id).is_empty());
}

#[tokio::test]
async fn gc_ends_the_leftover_commands_of_workspaces_this_home_forgot_and_no_others() {
    let (home, other_home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (rt, other) = (
        LocalRuntime::new(home.path()),
        LocalRuntime::new(other_home.path()),
    );
    let (kept, forgotten, elsewhere) = (
        created(&rt).await,
        created(&rt).await,
        created(&other).await,
    );
    cgroups_here(&rt, &kept);
    let markers = [attacks::marker(), attacks::marker(), attacks::marker()];
    let _sweep: Vec<Sweep> = markers
        .iter()
        .map(|marker| Sweep(format!("sleep {marker}")))
        .collect();
    leave_daemon(&rt, &kept, &markers[0]).await;
    leave_daemon(&rt, &forgotten, &markers[1]).await;
    leave_daemon(&other, &elsewhere, &markers[2]).await;

    // The registry no longer knows `forgotten` (removed while its berth
    // process was killed); a new runtime of the same home collects it.
    let report = LocalRuntime::new(home.path())
        .gc(std::slice::from_ref(&kept))
        .await
        .unwrap();
    assert_eq!(report.orphans, [forgotten.id.to_string()]);
    let left = attacks::survivors(&format!("sleep {}", markers[1]), GONE_WITHIN);
    assert!(left.is_empty(), "survived gc: {left:?}");
    assert!(cgroups_named(&forgotten.id).is_empty());
    for marker in [&markers[0], &markers[2]] {
        assert_eq!(
            attacks::processes_with(&format!("sleep {marker}")).len(),
            1,
            "gc ended a live workspace's or another home's command"
        );
    }
    // Nothing left to collect.
    assert!(
        rt.gc(std::slice::from_ref(&kept))
            .await
            .unwrap()
            .orphans
            .is_empty()
    );
    rt.remove(&kept).await.unwrap();
    other.remove(&elsewhere).await.unwrap();
}
