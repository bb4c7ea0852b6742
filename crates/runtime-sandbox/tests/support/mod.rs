//! What the sandbox's integration tests share: the binaries they run, the
//! runtime's configuration, workspace records, running a command to its
//! end, and ending a workspace's processes whatever state a failed test
//! left it in.

#![allow(dead_code, reason = "each test binary uses a part")]

use berth_core::{
    ExecEvent, ExecRequest, ResourceDefaults, Runtime, Spec, Workspace, WorkspaceId, WorkspaceState,
};
use berth_runtime_sandbox::runtime::DEFAULT_ID_MAP;
use berth_runtime_sandbox::{SandboxConfig, SandboxRuntime, cgroup};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The agent binary built next to the init binary (`cargo build -p
/// berth-agent`, which a workspace-wide build or test run does).
pub fn agent_binary() -> PathBuf {
    let init = PathBuf::from(env!("CARGO_BIN_EXE_berth-sandbox-init"));
    let agent = init.with_file_name("berth-agent");
    assert!(
        agent.is_file(),
        "`{}` is missing: build it with `cargo build -p berth-agent`",
        agent.display()
    );
    agent
}

/// The runtime as the tests run it: full isolation, the test build's init,
/// no agent unless a test adds one.
pub fn config(home: &Path) -> SandboxConfig {
    SandboxConfig {
        home: home.to_path_buf(),
        init_program: PathBuf::from(env!("CARGO_BIN_EXE_berth-sandbox-init")),
        init_args: Vec::new(),
        agent_program: None,
        host_binds: Vec::new(),
        id_map: Some(DEFAULT_ID_MAP),
        accept_weaker: false,
        standby: true,
        defaults: ResourceDefaults::for_this_host(),
    }
}

/// A runtime that can run here, or a failed test saying why not.
pub async fn runtime(config: SandboxConfig) -> SandboxRuntime {
    let runtime = SandboxRuntime::new(config).unwrap();
    if let Err(reason) = runtime.available().await {
        panic!("the sandbox runtime cannot run here: {reason}");
    }
    runtime
}

/// A workspace record, as the provider would hand it to the runtime.
pub fn workspace(name: &str, spec: Spec) -> Workspace {
    Workspace {
        id: WorkspaceId::generate(),
        name: name.into(),
        runtime: "sandbox".into(),
        spec,
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
    }
}

/// The cgroups of every instance of workspace `id` that exist now, as
/// the runtime names them (`<home id>-<workspace id>.<instance>`),
/// whatever the home.
pub fn instances(layout: &cgroup::Layout, id: &str) -> Vec<cgroup::Cgroups> {
    let parent = &layout.cgroups("").parents[0];
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.split_once('-')
                .is_some_and(|(_, rest)| rest.starts_with(&format!("{id}.")))
        })
        .map(|name| layout.cgroups(&name))
        .collect()
}

/// Ends every process of every instance of workspace `id` and removes
/// their cgroups.
pub fn end_instances(id: &str) {
    let Ok(layout) = cgroup::detect() else {
        return;
    };
    for cgroups in instances(&layout, id) {
        let _ = cgroup::kill_and_remove(&cgroups, Duration::from_secs(10));
    }
}

/// How a command ended, and what it wrote.
pub struct Ran {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command to its end.
pub async fn run(rt: &SandboxRuntime, ws: &Workspace, request: ExecRequest) -> Ran {
    let mut events = rt
        .exec(ws, request, CancellationToken::new())
        .await
        .unwrap();
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let (mut code, mut signal) = (None, None);
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => stdout.extend_from_slice(&data.0),
            ExecEvent::Stderr { data } => stderr.extend_from_slice(&data.0),
            ExecEvent::Exit(status) => (code, signal) = (status.code, status.signal),
        }
    }
    Ran {
        code,
        signal,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
