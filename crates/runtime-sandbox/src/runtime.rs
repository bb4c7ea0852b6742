//! The [`Runtime`](berth_core::Runtime) implementation: workspaces as overlays of layers from
//! the layer store, run by the stage-1 init, with their state kept in
//! `$BERTH_HOME/sandbox/<id>/state.json` so a restarted provider finds
//! them again.
//!
//! Nothing is mounted on the host: the overlay lives only in the
//! workspace's own mount namespace, so when its processes end, for any
//! reason, the mounts go with them. A workspace is its upper directory,
//! its layer stack, and (while running) the pid of its init.
//!
//! Each start makes a new instance (cgroups, overlay work directory, init
//! config named by a counter), so an old one is torn down in the
//! background while the next runs. Once reset, a running workspace also
//! keeps a standby instance on its provisioned stack, and its next reset
//! switches to it.
//!
//! With an agent configured (as berth runs it), commands and files go to
//! the agent over its socket, exactly as in docker; without one, each
//! command is run by the stage-1 init joining the workspace's namespaces,
//! and file operations are refused.
//!
//! The pieces, one concern each: `config` (how the runtime is set up),
//! `base` (where a base filesystem comes from), `state` (a workspace on
//! disk), `instance` (starting and stopping inits), `standby`, `stack`
//! (layers, changes, export, import), `cache`, `isolation`, `inside` (commands
//! without an agent), `gc`, and `operations` (the [`Runtime`](berth_core::Runtime) trait).

mod base;
mod cache;
mod config;
mod engine;
mod gc;
mod inside;
mod instance;
mod isolation;
mod lifecycle;
mod operations;
mod stack;
mod standby;
mod state;

pub use base::{Base, ImageExporter};
pub use config::{DEFAULT_ID_MAP, DEFAULT_PIDS, SandboxConfig};
pub use engine::EngineExporter;

use crate::cgroup::{self, Layout};
use crate::plan::{self, HostBase};
use berth_agent_client::{AgentClient, AgentPool};
use berth_core::{HomeId, RuntimeError, Workspace};
use berth_layers::LayerStore;
use lifecycle::Lifecycle;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

const NAME: &str = "sandbox";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// The sandbox runtime.
pub struct SandboxRuntime {
    inner: Arc<Inner>,
}

impl std::ops::Deref for SandboxRuntime {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The runtime's state, shared with blocking tasks.
#[doc(hidden)]
pub struct Inner {
    config: SandboxConfig,
    /// Names this home's cgroups, which live in the host's hierarchy
    /// beside every other home's.
    home_id: HomeId,
    store: LayerStore,
    cgroups: Result<Layout, String>,
    host: HostBase,
    exporter: Option<Arc<dyn ImageExporter>>,
    /// The process's agent connections: one per running workspace's
    /// agent.
    agents: &'static AgentPool,
    lifecycle: Lifecycle,
    /// Work going on after an answer (standbys being made, teardowns,
    /// removals of discarded trees), which `settle` waits for.
    background: TaskTracker,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::io(context, source)
}

fn other(error: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Other(error.to_string())
}

impl SandboxRuntime {
    pub fn new(config: SandboxConfig) -> Result<Self, RuntimeError> {
        Self::with_exporter(config, None)
    }

    /// A runtime that can base workspaces on container images (`docker:NAME`)
    /// through `exporter`.
    pub fn with_exporter(
        config: SandboxConfig,
        exporter: Option<Arc<dyn ImageExporter>>,
    ) -> Result<Self, RuntimeError> {
        Ok(SandboxRuntime {
            inner: Arc::new(Inner::new(config, exporter)?),
        })
    }

    fn clone_handle(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// Runs `work` on a thread for blocking work: it waits for processes to
    /// end, polls cgroups or walks trees, which must not hold up the async
    /// threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let this = self.clone_handle();
        tokio::task::spawn_blocking(move || work(&this))
            .await
            .map_err(other)?
    }

    /// The agent that handles a workspace's files: without one, file
    /// operations are refused.
    async fn file_agent(&self, ws: &Workspace) -> Result<AgentClient, RuntimeError> {
        self.agent(ws)
            .await?
            .ok_or_else(|| RuntimeError::Unsupported {
                runtime: "sandbox".into(),
                operation: "file operations without an agent",
            })
    }

    /// The agent serving a running workspace, when the runtime runs one.
    async fn agent(&self, ws: &Workspace) -> Result<Option<AgentClient>, RuntimeError> {
        if self.config.agent_program.is_none() {
            return Ok(None);
        }
        let id = ws.id.to_string();
        // A live connection means a running agent: every command and file
        // operation takes this path, so it reads no state from disk.
        if let Some(agent) = self.agents.connected(&id) {
            return Ok(Some(agent));
        }
        let state = self.load(&id)?;
        if self.running(&state).is_none() {
            return Err(RuntimeError::Gone {
                id,
                detail: "it is not running".into(),
            });
        }
        let socket = self.dirs(&id).run.join("agent.sock");
        Ok(Some(self.agents.get(&id, &socket, START_TIMEOUT).await?))
    }
}

impl Inner {
    fn new(
        config: SandboxConfig,
        exporter: Option<Arc<dyn ImageExporter>>,
    ) -> Result<Self, RuntimeError> {
        let store = LayerStore::open(config.home.join("layers")).map_err(other)?;
        let sandbox = config.home.join("sandbox");
        fs::create_dir_all(&sandbox)
            .map_err(io_err(format!("cannot create `{}`", sandbox.display())))?;
        let cgroups = cgroup::detect().map_err(|e| e.to_string());
        let host = plan::host_base(Path::new("/"), &config.host_binds);
        let home_id = HomeId::load_or_create(&config.home).map_err(other)?;
        Ok(Inner {
            config,
            home_id,
            store,
            cgroups,
            host,
            exporter,
            agents: AgentPool::shared(),
            lifecycle: Lifecycle::default(),
            background: TaskTracker::new(),
        })
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// Goes on with blocking `work` after the answer, on a thread for
    /// blocking work that `settle` waits for. Outside a tokio runtime
    /// (berth always has one) the work is done at once.
    fn in_background(&self, work: impl FnOnce() + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(self.background.spawn_blocking_on(work, &handle)),
            Err(_) => work(),
        }
    }
}
