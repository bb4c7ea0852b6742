//! berth's service layer. Every front end (the CLI, the HTTP API, later NATS)
//! is a thin translation over [`Provider`]: it owns the registry, the git
//! credentials and the runtimes, provisions workspaces through the cache,
//! and runs their operations.

mod agent;
mod cache;
pub mod config;
mod deadlines;
mod error;
mod layers;
mod patch;
mod provision;
mod publish;
mod sessions;

pub use agent::{SessionCommand, SessionInfo, Terminal};
pub use cache::CacheGc;
pub use config::{Config, ConfigError};
pub use deadlines::{Busy, REAP_INTERVAL, Reaped};
pub use error::ServiceError;
pub use layers::{ExportedArchive, Gc, RuntimeGc};
pub use provision::Progress;

use berth_core::{
    Clock, ExecRequest, ExecStream, FileEntry, Isolation, Labels, ReadStream, Runtime, Spec,
    SystemClock, Workspace, WorkspaceId, WorkspacePath, WorkspaceState,
};
use berth_git::{Credentials, Git};
use berth_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// Bytes kept per output stream of a command when the request sets no limit.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 16 << 20;

/// Makes a runtime ([`ProviderConfig::lazy_runtimes`]), or says why it
/// cannot be used here.
pub type OpenRuntime = Box<dyn Fn() -> Result<Arc<dyn Runtime>, String> + Send + Sync>;

/// How a provider is set up.
pub struct ProviderConfig {
    /// berth's state directory: registry, credentials, runtimes' files.
    pub home: PathBuf,
    /// The runtime used when neither the spec nor the request names one
    /// ([`Config::runtime`]).
    pub default_runtime: Option<String>,
    /// Bytes kept per output stream when a request sets no limit.
    pub output_limit: u64,
    pub runtimes: Vec<Arc<dyn Runtime>>,
    /// Runtimes made when first needed, by name: a command on one
    /// workspace sets up the runtime that workspace uses and no other.
    pub lazy_runtimes: Vec<(&'static str, OpenRuntime)>,
    /// The time deadlines are measured by.
    pub clock: Arc<dyn Clock>,
    /// Bytes the provisioning cache may hold before its least recently used
    /// entries are evicted (from `BERTH_CACHE_BUDGET`); no limit when absent.
    pub cache_budget: Option<u64>,
}

impl ProviderConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        ProviderConfig {
            home: home.into(),
            default_runtime: None,
            output_limit: DEFAULT_OUTPUT_LIMIT,
            runtimes: Vec::new(),
            lazy_runtimes: Vec::new(),
            clock: Arc::new(SystemClock),
            cache_budget: None,
        }
    }

    pub fn runtime(mut self, runtime: Arc<dyn Runtime>) -> Self {
        self.runtimes.push(runtime);
        self
    }
}

/// Options of a new workspace beyond its spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateOptions {
    /// Overrides the spec's runtime.
    #[serde(default)]
    pub runtime: Option<String>,
    /// Overrides the spec's name; an explicit name must be free.
    #[serde(default)]
    pub name: Option<String>,
    /// `key=value` tags to list and remove the workspace by.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub labels: Labels,
    /// Overrides the spec's `timeouts.idle`: seconds without use after
    /// which the workspace is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub idle: Option<u64>,
    /// Overrides the spec's `timeouts.lifetime`: seconds after creation at
    /// which the workspace is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub lifetime: Option<u64>,
}

/// A runtime and whether it can be used here.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuntimeStatus {
    pub name: String,
    pub description: String,
    pub available: bool,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A workspace with the isolation actually in force and its deadlines.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceDetails {
    #[serde(flatten)]
    pub workspace: Workspace,
    pub isolation: Isolation,
    /// When it is stopped unless used before (`timeouts.idle`), in
    /// milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_deadline: Option<i64>,
    /// When it is removed (`timeouts.lifetime`), in milliseconds since the
    /// Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removal_deadline: Option<i64>,
}

/// What fetching one repository did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchResult {
    pub path: String,
    pub previous: String,
    pub commit: String,
    pub updated: bool,
}

/// The service layer. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

struct Inner {
    home: PathBuf,
    store: Store,
    git: Git,
    runtimes: BTreeMap<&'static str, RuntimeSlot>,
    default_runtime: Option<String>,
    output_limit: u64,
    /// The process's agent connections, shared with the runtimes.
    agents: &'static berth_agent_client::AgentPool,
    clock: Arc<dyn Clock>,
    activity: deadlines::Activity,
    cache_budget: Option<u64>,
    sessions: sessions::Sessions,
    /// Per running workspace, the token that ends what was opened in its
    /// current instance (terminals) when it is stopped, reset or removed.
    instances: Mutex<HashMap<String, CancellationToken>>,
    /// Per workspace provisioned by this process, what its repositories
    /// were provisioned at.
    provisioned: Mutex<HashMap<String, patch::Provisioned>>,
}

/// A runtime, made on first use when it was configured lazily.
struct RuntimeSlot {
    made: OnceLock<Result<Arc<dyn Runtime>, String>>,
    open: Option<OpenRuntime>,
}

impl RuntimeSlot {
    fn made(runtime: Arc<dyn Runtime>) -> RuntimeSlot {
        RuntimeSlot {
            made: OnceLock::from(Ok(runtime)),
            open: None,
        }
    }

    fn lazy(open: OpenRuntime) -> RuntimeSlot {
        RuntimeSlot {
            made: OnceLock::new(),
            open: Some(open),
        }
    }

    /// The runtime, made now if it was not yet; why it cannot be used.
    fn get(&self) -> Result<&Arc<dyn Runtime>, &str> {
        self.made
            .get_or_init(|| match &self.open {
                Some(open) => open(),
                None => Err("it was never set up".into()),
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

/// The bounds a command runs within, once the exec rules are applied.
pub(crate) struct Bounds {
    pub timeout_ms: Option<u64>,
    pub output_limit: u64,
}

impl Provider {
    /// Opens the registry in `config.home` and settles what a previous
    /// process left behind: interrupted provisions are cleaned and marked
    /// failed, what their git processes left in the mirrors is removed,
    /// and the deadlines that passed are applied (see [`Provider::reap`]).
    /// Whether each workspace's runtime state is still there is asked
    /// when a command touches it, not here ([`Provider::reconcile`]).
    pub async fn open(config: ProviderConfig) -> Result<Provider, ServiceError> {
        std::fs::create_dir_all(&config.home).map_err(|e| ServiceError::InvalidRequest {
            field: "BERTH_HOME".into(),
            message: format!("cannot create {}: {e}", config.home.display()),
        })?;
        let store = Store::open(&config.home)?;
        let credentials = Credentials::load(&config.home).map_err(ServiceError::Credentials)?;
        let provider = Provider {
            inner: Arc::new(Inner {
                home: config.home,
                store,
                git: Git::new(credentials),
                runtimes: config
                    .runtimes
                    .into_iter()
                    .map(|r| (r.name(), RuntimeSlot::made(r)))
                    .chain(
                        config
                            .lazy_runtimes
                            .into_iter()
                            .map(|(name, open)| (name, RuntimeSlot::lazy(open))),
                    )
                    .collect(),
                default_runtime: config.default_runtime,
                output_limit: config.output_limit,
                agents: berth_agent_client::AgentPool::shared(),
                clock: config.clock,
                activity: deadlines::Activity::default(),
                cache_budget: config.cache_budget,
                sessions: sessions::Sessions::default(),
                instances: Mutex::new(HashMap::new()),
                provisioned: Mutex::new(HashMap::new()),
            }),
        };
        provider.recover().await?;
        provider.reap().await?;
        provider.start_heartbeat();
        Ok(provider)
    }

    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// The runtime for specs and requests that name none.
    pub fn default_runtime(&self) -> Option<&str> {
        self.inner.default_runtime.as_deref()
    }

    /// Bytes kept per output stream when a request sets no limit; also
    /// the most a front end holds in memory of one answer it cannot stream.
    pub fn output_limit(&self) -> u64 {
        self.inner.output_limit
    }

    /// The time deadlines are measured by.
    pub fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn git(&self) -> &Git {
        &self.inner.git
    }

    pub(crate) fn agents(&self) -> &berth_agent_client::AgentPool {
        self.inner.agents
    }

    /// A token cancelled when the current instance of workspace `id`
    /// ends (it is stopped, reset or removed).
    pub(crate) fn instance(&self, id: &WorkspaceId) -> CancellationToken {
        self.instances()
            .entry(id.to_string())
            .or_default()
            .child_token()
    }

    /// Ends what belongs to the current instance of workspace `id`, which
    /// was stopped, reset or removed, whichever front end asked: its
    /// sessions and terminals, and the pooled connection to its agent.
    pub(crate) fn end_instance(&self, id: &WorkspaceId) {
        if let Some(instance) = self.instances().remove(id.as_str()) {
            instance.cancel();
        }
        self.inner.sessions.end_workspace(id);
        self.agents().forget(id.as_str());
    }

    /// The commits workspace `id`'s repositories were provisioned at, in
    /// the spec's order, when this process provisioned it and nothing
    /// (a fetch, a reset) has moved them since.
    pub fn provisioned_commits(&self, id: &str) -> Option<Vec<String>> {
        self.provisioned_of(id).map(|p| p.commits)
    }

    pub(crate) fn provisioned_of(&self, id: &str) -> Option<patch::Provisioned> {
        self.provisioned_map().get(id).cloned()
    }

    pub(crate) fn set_provisioned(
        &self,
        id: &WorkspaceId,
        provisioned: Option<patch::Provisioned>,
    ) {
        let mut map = self.provisioned_map();
        match provisioned {
            Some(p) => map.insert(id.to_string(), p),
            None => map.remove(id.as_str()),
        };
    }

    fn provisioned_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, patch::Provisioned>> {
        // Every change is a single insert or remove.
        self.inner
            .provisioned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn instances(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        // Every change is a single insert or remove: the map stays
        // consistent whatever panicked while holding it.
        self.inner
            .instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The exec rules, the one place they are applied to every command a
    /// workspace runs (exec, session commands, Derrick's routes): what the
    /// request leaves open, the spec's `timeouts.exec` and the provider's
    /// output limit fill in.
    pub(crate) fn bound(
        &self,
        ws: &Workspace,
        timeout_ms: Option<u64>,
        output_limit: Option<u64>,
    ) -> Bounds {
        Bounds {
            timeout_ms: timeout_ms
                .or_else(|| ws.spec.timeouts.exec.map(|secs| secs.saturating_mul(1000))),
            output_limit: output_limit.unwrap_or(self.inner.output_limit),
        }
    }

    /// A command's environment: the spec's, with `asked` over it.
    pub(crate) fn environment(
        &self,
        ws: &Workspace,
        asked: BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = ws.spec.env.clone();
        env.extend(asked);
        env
    }

    /// Every runtime that can be set up here, each made now if it was not
    /// yet.
    pub(crate) fn runtime_list(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        self.inner
            .runtimes
            .values()
            .filter_map(|slot| slot.get().ok())
    }

    /// The runtime called `name`; why it cannot be used here.
    pub(crate) fn runtime_named(&self, name: &str) -> Result<Arc<dyn Runtime>, ServiceError> {
        match self.inner.runtimes.get(name).map(RuntimeSlot::get) {
            Some(Ok(runtime)) => Ok(runtime.clone()),
            Some(Err(reason)) => Err(ServiceError::RuntimeUnavailable {
                name: name.into(),
                reason: reason.into(),
            }),
            None => Err(ServiceError::RuntimeUnavailable {
                name: name.into(),
                reason: "this provider was started without it".into(),
            }),
        }
    }

    /// The runtimes this provider knows, and whether each works here.
    pub async fn runtimes(&self) -> Vec<RuntimeStatus> {
        let mut statuses = Vec::new();
        for (name, slot) in &self.inner.runtimes {
            statuses.push(match slot.get() {
                Ok(runtime) => {
                    let reason = runtime.available().await.err();
                    RuntimeStatus {
                        name: runtime.name().into(),
                        description: runtime.description().into(),
                        available: reason.is_none(),
                        reason,
                    }
                }
                Err(reason) => RuntimeStatus {
                    name: (*name).into(),
                    description: String::new(),
                    available: false,
                    reason: Some(reason.into()),
                },
            });
        }
        statuses
    }

    async fn available_runtimes(&self) -> String {
        let names: Vec<String> = self
            .runtimes()
            .await
            .into_iter()
            .filter(|r| r.available)
            .map(|r| r.name)
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Chooses the runtime: the request's, else the spec's, else the default.
    /// Never guessed.
    pub(crate) async fn choose_runtime(
        &self,
        spec: &Spec,
        options: &CreateOptions,
    ) -> Result<Arc<dyn Runtime>, ServiceError> {
        let name = options
            .runtime
            .as_ref()
            .or(spec.runtime.as_ref())
            .or(self.inner.default_runtime.as_ref());
        let Some(name) = name else {
            return Err(ServiceError::NoRuntime {
                available: self.available_runtimes().await,
            });
        };
        if !self.inner.runtimes.contains_key(name.as_str()) {
            return Err(ServiceError::UnknownRuntime {
                name: name.clone(),
                available: self.available_runtimes().await,
            });
        }
        let runtime = self.runtime_named(name)?;
        runtime
            .available()
            .await
            .map_err(|reason| ServiceError::RuntimeUnavailable {
                name: name.clone(),
                reason,
            })?;
        Ok(runtime)
    }

    /// Waits for the work the runtimes go on with after answering; call
    /// it before the process ends. A runtime never made has none.
    pub async fn settle(&self) {
        for slot in self.inner.runtimes.values() {
            if let Some(Ok(runtime)) = slot.made.get() {
                runtime.settle().await;
            }
        }
    }

    pub(crate) fn runtime_of(&self, ws: &Workspace) -> Result<Arc<dyn Runtime>, ServiceError> {
        self.runtime_named(&ws.runtime)
    }

    /// Every workspace as the registry has it, oldest first; removed ones
    /// only when asked.
    pub fn list(&self, include_removed: bool) -> Result<Vec<Workspace>, ServiceError> {
        Ok(self.store().list(include_removed)?)
    }

    /// The workspaces that carry every label of `selector`, oldest first,
    /// each checked with its runtime ([`Provider::reconcile`]): what `ls`
    /// shows.
    pub async fn list_labelled(
        &self,
        include_removed: bool,
        selector: &Labels,
    ) -> Result<Vec<Workspace>, ServiceError> {
        let mut workspaces = self.list(include_removed)?;
        workspaces.retain(|ws| berth_core::label::matches(&ws.labels, selector));
        let mut checked = Vec::with_capacity(workspaces.len());
        for ws in workspaces {
            checked.push(self.reconcile(ws).await?);
        }
        Ok(checked)
    }

    /// A workspace by id, unique id prefix, or name.
    pub fn get(&self, id: &str) -> Result<Workspace, ServiceError> {
        if !berth_core::spec::is_name(id) {
            return Err(ServiceError::InvalidId {
                kind: "workspace",
                id: id.to_string(),
                expected: "an id, a unique id prefix or a name: \
                           1-128 letters, digits, `-`, `_`, `.`",
            });
        }
        Ok(self.store().resolve(id)?)
    }

    /// A workspace by id ([`Provider::get`]), checked with its runtime
    /// ([`Provider::reconcile`]). Every operation on one workspace looks
    /// it up here, so a command checks the workspace it touches and no
    /// other.
    pub(crate) async fn touched(&self, id: &str) -> Result<Workspace, ServiceError> {
        let ws = self.get(id)?;
        self.reconcile(ws).await
    }

    /// `ws`, marked failed first when it is running or stopped but its
    /// runtime has no state for it any more (it was removed outside
    /// berth). A runtime that cannot answer (an engine out of reach)
    /// changes nothing: the operation itself then says what is wrong.
    async fn reconcile(&self, ws: Workspace) -> Result<Workspace, ServiceError> {
        if !matches!(ws.state, WorkspaceState::Running | WorkspaceState::Stopped) {
            return Ok(ws);
        }
        let Ok(runtime) = self.runtime_of(&ws) else {
            return Ok(ws);
        };
        if let Ok(false) = runtime.exists(&ws).await {
            return Ok(self.store().set_state(
                &ws.id,
                WorkspaceState::Failed,
                Some("its runtime state is gone: it was removed outside berth"),
            )?);
        }
        Ok(ws)
    }

    /// A workspace with the isolation in force.
    pub async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ServiceError> {
        let workspace = self.touched(id).await?;
        let isolation = self.runtime_of(&workspace)?.isolation(&workspace);
        Ok(WorkspaceDetails {
            idle_deadline: workspace.idle_deadline(),
            removal_deadline: workspace.removal_deadline(),
            workspace,
            isolation,
        })
    }

    /// Starts a stopped workspace; starting a running one does nothing.
    pub async fn start(&self, id: &str) -> Result<Workspace, ServiceError> {
        let ws = self.touched(id).await?;
        match ws.state {
            WorkspaceState::Running => return Ok(ws),
            WorkspaceState::Stopped => {}
            state => {
                return Err(ServiceError::WrongState {
                    id: ws.id.to_string(),
                    state,
                    hint: "only a stopped workspace can be started",
                });
            }
        }
        let runtime = self.runtime_of(&ws)?;
        let info = runtime
            .start(&ws)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        self.store().set_runtime_info(&ws.id, &info)?;
        // Its idle time counts from now.
        self.used(&ws);
        Ok(self
            .store()
            .set_state(&ws.id, WorkspaceState::Running, None)?)
    }

    /// Stops a running workspace, keeping its files.
    pub async fn stop(&self, id: &str) -> Result<Workspace, ServiceError> {
        let ws = self.touched(id).await?;
        match ws.state {
            WorkspaceState::Stopped => return Ok(ws),
            WorkspaceState::Running => {}
            state => {
                return Err(ServiceError::WrongState {
                    id: ws.id.to_string(),
                    state,
                    hint: "only a running workspace can be stopped",
                });
            }
        }
        let runtime = self.runtime_of(&ws)?;
        self.end_instance(&ws.id);
        runtime
            .stop(&ws)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        Ok(self
            .store()
            .set_state(&ws.id, WorkspaceState::Stopped, None)?)
    }

    /// Removes a workspace and everything in it; the record stays, marked
    /// removed.
    pub async fn remove(&self, id: &str) -> Result<Workspace, ServiceError> {
        let ws = self.get(id)?;
        if ws.state == WorkspaceState::Removed {
            return Ok(ws);
        }
        let orphaned = || -> Result<bool, ServiceError> {
            Ok(self
                .store()
                .orphaned_provisions()?
                .iter()
                .any(|o| o.id == ws.id))
        };
        if ws.state == WorkspaceState::Creating && !orphaned()? {
            return Err(ServiceError::WrongState {
                id: ws.id.to_string(),
                state: ws.state,
                hint: "it is still being provisioned",
            });
        }
        let runtime = self.runtime_of(&ws)?;
        self.end_instance(&ws.id);
        self.set_provisioned(&ws.id, None);
        runtime
            .remove(&ws)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        self.inner.activity.forget(&ws.id);
        Ok(self
            .store()
            .set_state(&ws.id, WorkspaceState::Removed, None)?)
    }

    async fn running(&self, id: &str) -> Result<(Workspace, Arc<dyn Runtime>), ServiceError> {
        let ws = self.touched(id).await?;
        if ws.state != WorkspaceState::Running {
            return Err(ServiceError::WrongState {
                id: ws.id.to_string(),
                state: ws.state,
                hint: "start it first",
            });
        }
        let runtime = self.runtime_of(&ws)?;
        self.used(&ws);
        Ok((ws, runtime))
    }

    /// Runs a command in a running workspace, within the exec rules
    /// ([`Provider::bound`]).
    pub async fn exec(
        &self,
        id: &str,
        mut request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<(WorkspaceId, ExecStream), ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        if let Some(cwd) = &request.cwd {
            WorkspacePath::parse(cwd)?;
        }
        if request
            .command
            .to_argv()
            .first()
            .is_none_or(|p| p.is_empty())
        {
            return Err(ServiceError::InvalidRequest {
                field: "command".into(),
                message: "expected a command to run".into(),
            });
        }
        let bounds = self.bound(&ws, request.timeout_ms, request.output_limit);
        request.timeout_ms = bounds.timeout_ms;
        request.output_limit = Some(bounds.output_limit);
        request.env = self.environment(&ws, std::mem::take(&mut request.env));
        let events = runtime
            .exec(&ws, request, cancel)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))?;
        let events = self.hold_while_running(&ws, events);
        Ok((ws.id, events))
    }

    /// Opens a file of a running workspace; its bytes are read as the
    /// stream is consumed.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let path = WorkspacePath::parse(path)?;
        runtime
            .read_file(&ws, &path)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let path = WorkspacePath::parse(path)?;
        if path.is_root() {
            return Err(ServiceError::InvalidRequest {
                field: "path".into(),
                message: "expected a file path, found the workspace root".into(),
            });
        }
        runtime
            .write_file(&ws, &path, data)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    pub async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let dir = WorkspacePath::parse(dir)?;
        runtime
            .list_files(&ws, &dir)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    pub async fn remove_file(&self, id: &str, path: &str) -> Result<(), ServiceError> {
        let (ws, runtime) = self.running(id).await?;
        let path = WorkspacePath::parse(path)?;
        if path.is_root() {
            return Err(ServiceError::InvalidRequest {
                field: "path".into(),
                message: "refusing to remove the workspace root; remove the workspace instead"
                    .into(),
            });
        }
        runtime
            .remove_file(&ws, &path)
            .await
            .map_err(|e| ServiceError::runtime(&ws.id, e))
    }

    /// Settles what an earlier process left: see [`Provider::open`].
    async fn recover(&self) -> Result<(), ServiceError> {
        // The git processes of a provision that was killed died with it;
        // what they were making in the mirrors goes before anyone trips on
        // it.
        match provision::mirrors(self.home()).recover().await {
            Ok(removed) => {
                for path in removed {
                    tracing::warn!(path = %path.display(), "removed what an interrupted git left");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not clear what interrupted git left"),
        }
        for ws in self.store().orphaned_provisions()? {
            tracing::warn!(id = %ws.id, "cleaning an interrupted provision");
            if let Ok(runtime) = self.runtime_of(&ws)
                && let Err(e) = runtime.remove(&ws).await
            {
                tracing::warn!(id = %ws.id, error = %e, "could not clean an interrupted provision");
            }
            let _ = tokio::fs::remove_dir_all(provision::staging_dir(self.home(), &ws.id)).await;
            let pid = ws
                .owner_pid
                .map(|p| format!(" (pid {p})"))
                .unwrap_or_default();
            self.store().set_state(
                &ws.id,
                WorkspaceState::Failed,
                Some(&format!(
                    "provisioning was interrupted: the process provisioning it{pid} ended"
                )),
            )?;
        }
        Ok(())
    }
}
