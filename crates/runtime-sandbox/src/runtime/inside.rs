//! Commands in workspaces without an agent: each is run by the stage-1
//! init joining the workspace's namespaces. Files are the agent's alone.

use super::Inner;
use berth_core::{ExecRequest, ExecStream, RuntimeError, Workspace, WorkspacePath};
use std::io;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl Inner {
    /// Runs a command by the stage-1 init joining the workspace's
    /// namespaces, for workspaces without an agent.
    pub(super) fn exec_by_init(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        let id = ws.id.to_string();
        let state = self.load(&id)?;
        let init = self.running(&state).ok_or_else(|| RuntimeError::Gone {
            id: id.clone(),
            detail: "it is not running".into(),
        })?;
        let cwd = inside_path(
            ws,
            &WorkspacePath::parse(request.cwd.as_deref().unwrap_or_default())?,
        );
        let mut argv = vec![self.config.init_program.display().to_string()];
        argv.extend(self.config.init_args.iter().cloned());
        argv.extend([
            "exec".into(),
            self.config_path(&id, init.instance).display().to_string(),
            init.pid.to_string(),
            cwd,
            "--".into(),
        ]);
        argv.extend(request.command.to_argv());
        let mut env = self.base_env(ws);
        for (key, value) in request.env {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }
        let running = berth_exec::spawn(
            berth_exec::Spawn {
                argv,
                cwd: PathBuf::from("/"),
                env,
                stdin: match request.stdin {
                    Some(bytes) => berth_exec::Stdin::Bytes(bytes),
                    None => berth_exec::Stdin::Null,
                },
                timeout: request.timeout_ms.map(Duration::from_millis),
                output_limit: request.output_limit,
                grace: berth_exec::DEFAULT_GRACE,
                cgroup: None,
                shepherd: None,
                nice: None,
            },
            cancel,
        )
        .map_err(|e| RuntimeError::Spawn {
            command: request.command.display(),
            source: io::Error::other(e.to_string()),
        })?;
        Ok(running.events)
    }
}

/// The absolute path inside of a path of workspace `ws`.
fn inside_path(ws: &Workspace, path: &WorkspacePath) -> String {
    match (ws.spec.root(), path.as_str()) {
        (root, "") => root.to_string(),
        ("/", rel) => format!("/{rel}"),
        (root, rel) => format!("{root}/{rel}"),
    }
}
