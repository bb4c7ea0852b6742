//! [`DockerRuntime`]: the [`Runtime`] over the Docker Engine API.
//!
//! Containers, images and tags are the only state, each named with the
//! berth home's id (see [`Names`]): a workspace is the container
//! `berth-<home>-<id>`, made from the image tagged `berth-<home>/base:<id>`,
//! its provisioned state the image tagged `berth-<home>/provisioned:<id>`,
//! cache entries `berth-<home>/cache:<key>`, snapshots
//! `berth-<home>/snapshot:<id>`. A restarted provider finds everything
//! again by name, and the labels let it find what its home made and no
//! longer knows, and only that. A name is removed without force, so removing
//! it never removes anything else: an image a container uses keeps its base
//! name.
//!
//! The Engine is used for what only it can do (containers, images,
//! archives, change lists); everything that runs inside goes through the
//! agent's socket, never `docker exec`.

use crate::archive;
use crate::plan::{self, ContainerPlan, EngineChange, LABEL_WORKSPACE, Names};
use async_trait::async_trait;
use berth_agent_client::{AgentClient, AgentPool};
use berth_core::{
    Change, ChangeKind, Command, ExecRequest, ExecStream, ExportSummary, ExportTarget, FileEntry,
    FileKind, GcReport, HomeId, Isolation, ReadStream, ResourceDefaults, Runtime, RuntimeError,
    Snapshot, Workspace, WorkspaceId, WorkspacePath,
};
use bollard::Docker;
use bollard::container::PathStatResponse;
use bollard::errors::Error as EngineError;
use bollard::models::{ContainerConfig, ContainerStateStatusEnum};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder,
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const NAME: &str = "docker";
const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// How long `available` and the first connection wait for the Engine.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a started container has to bring its agent up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Archive stats made at once when listing changes.
const STAT_CONCURRENCY: usize = 16;

/// The docker runtime. Cheap to share; one per provider.
pub struct DockerRuntime {
    /// `$BERTH_HOME/docker`: the agent, socket directories, staging.
    dir: PathBuf,
    /// `$BERTH_HOME`, whose id names and labels what this runtime makes.
    home: PathBuf,
    /// The home's names and labels, or why its id cannot be read.
    names: std::sync::OnceLock<Result<Names, String>>,
    /// Where the Engine is, for messages (`DOCKER_HOST` or the default).
    host: String,
    /// The memory limit and `/dev/shm` size of containers whose spec sets
    /// none.
    defaults: ResourceDefaults,
    engine: OnceCell<Docker>,
    agent_binary: OnceCell<PathBuf>,
    /// The process's agent connections.
    agents: &'static AgentPool,
    /// One lock per workspace, held while its container is started,
    /// stopped, replaced or removed, so two of those never interleave.
    lifecycles: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DockerRuntime {
    /// A runtime keeping its files in `home/docker`, talking to the Engine
    /// at `DOCKER_HOST` (a unix socket by default; Podman's compatible
    /// socket works too). Nothing is contacted until first use.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Self::with_host(home, host)
    }

    /// A runtime talking to the Engine at `host` (`unix:///path`,
    /// `tcp://host:port`, `http://...`).
    pub fn with_host(home: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        let home = home.into();
        DockerRuntime {
            dir: home.join("docker"),
            home: home.clone(),
            names: std::sync::OnceLock::new(),
            host: host.into(),
            defaults: ResourceDefaults::for_this_host(),
            engine: OnceCell::new(),
            agent_binary: OnceCell::new(),
            agents: AgentPool::shared(),
            lifecycles: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Containers made from now on get `defaults` where their spec sets
    /// no memory limit, and a `/dev/shm` of `defaults.shm` within it.
    pub fn with_defaults(mut self, defaults: ResourceDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    /// What this home calls its containers and images, and how it labels
    /// them: its id is read, or made, on first use.
    pub fn names(&self) -> Result<&Names, RuntimeError> {
        self.names
            .get_or_init(|| {
                HomeId::load_or_create(&self.home)
                    .map(|id| Names::new(&id))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|reason| RuntimeError::Unavailable {
                runtime: NAME.into(),
                reason: reason.clone(),
            })
    }

    fn gone(&self, ws: &Workspace) -> RuntimeError {
        let container = self
            .names()
            .map(|names| names.container(&ws.id))
            .unwrap_or_default();
        RuntimeError::Gone {
            id: ws.id.to_string(),
            detail: format!("its container `{container}` was removed outside berth"),
        }
    }

    /// Waits until no other start, stop, replacement or removal of the
    /// workspace's container runs, and keeps it so until dropped.
    async fn lifecycle(&self, ws: &Workspace) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.lifecycles.lock() {
            Ok(mut locks) => locks.entry(ws.id.to_string()).or_default().clone(),
            // A poisoned map only means a panic elsewhere; a fresh lock
            // still orders what follows.
            Err(_) => Arc::default(),
        };
        lock.lock_owned().await
    }

    /// The Engine, connected and with the API version both sides speak.
    async fn engine(&self) -> Result<&Docker, RuntimeError> {
        self.engine
            .get_or_try_init(|| async {
                tokio::time::timeout(PING_TIMEOUT, crate::engine::connect(&self.host))
                    .await
                    .map_err(|_| self.unreachable("no answer within 3 s"))?
                    .map_err(|e| self.unreachable(e))
            })
            .await
    }

    fn unreachable(&self, reason: impl Display) -> RuntimeError {
        RuntimeError::Unavailable {
            runtime: NAME.into(),
            reason: format!("cannot reach the Docker engine at {}: {reason}", self.host),
        }
    }

    /// An Engine failure while doing `context`.
    fn fail(&self, context: impl Display, err: EngineError) -> RuntimeError {
        match err {
            EngineError::DockerResponseServerError { message, .. } => {
                RuntimeError::Other(format!("{context}: {}", message.trim()))
            }
            EngineError::IOError { .. }
            | EngineError::HyperResponseError { .. }
            | EngineError::HyperLegacyError { .. }
            | EngineError::RequestTimeoutError
            | EngineError::SocketNotFoundError(_) => self.unreachable(err),
            other => RuntimeError::Other(format!("{context}: {other}")),
        }
    }

    fn run_dir(&self, id: &WorkspaceId) -> PathBuf {
        self.dir.join("run").join(id.as_str())
    }

    fn socket(&self, id: &WorkspaceId) -> PathBuf {
        self.run_dir(id).join(plan::SOCKET_NAME)
    }

    /// The agent executable on the host, installed once.
    async fn agent_binary(&self) -> Result<&Path, RuntimeError> {
        let dir = self.dir.join("agent");
        let path = self
            .agent_binary
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || berth_agent_bin::install(&dir))
                    .await
                    .map_err(|e| RuntimeError::Other(e.to_string()))?
                    .map_err(|e| RuntimeError::Other(e.to_string()))
            })
            .await?;
        Ok(path)
    }

    /// The workspace's container: running or not, or `Gone`.
    async fn inspect(
        &self,
        ws: &Workspace,
    ) -> Result<bollard::models::ContainerInspectResponse, RuntimeError> {
        let name = self.names()?.container(&ws.id);
        match self.engine().await?.inspect_container(&name, None).await {
            Ok(found) => Ok(found),
            Err(e) if not_found(&e) => Err(self.gone(ws)),
            Err(e) => Err(self.fail(format!("cannot inspect container `{name}`"), e)),
        }
    }

    async fn is_running(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        let found = self.inspect(ws).await?;
        Ok(found.state.and_then(|s| s.running).unwrap_or(false))
    }

    /// The connection to a running workspace's agent: for what the
    /// [`Runtime`] trait does not carry (sessions, terminals, watches,
    /// interpreter detection).
    pub async fn agent(&self, ws: &Workspace) -> Result<AgentClient, RuntimeError> {
        if let Some(client) = self.agents.connected(ws.id.as_str()) {
            return Ok(client);
        }
        if !self.is_running(ws).await? {
            return Err(RuntimeError::Gone {
                id: ws.id.to_string(),
                detail: format!(
                    "its container `{}` is not running",
                    self.names()?.container(&ws.id)
                ),
            });
        }
        Ok(self
            .agents
            .get(ws.id.as_str(), &self.socket(&ws.id), START_TIMEOUT)
            .await?)
    }

    /// Waits for a just-started container's agent; tells why when the
    /// container ends first.
    async fn wait_for_agent(&self, ws: &Workspace) -> Result<AgentClient, RuntimeError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket(&ws.id);
        loop {
            let attempt = self
                .agents
                .get(ws.id.as_str(), &socket, Duration::from_millis(200))
                .await;
            let err = match attempt {
                Ok(client) => return Ok(client),
                Err(err) => err,
            };
            let found = self.inspect(ws).await?;
            let state = found.state.unwrap_or_default();
            let name = self.names()?.container(&ws.id);
            if !state.running.unwrap_or(false) {
                let logs = self.logs_tail(&name).await;
                return Err(RuntimeError::Other(format!(
                    "container `{name}` exited with code {} before its agent answered{}",
                    state.exit_code.unwrap_or(-1),
                    if logs.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{logs}")
                    }
                )));
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::Other(format!(
                    "the agent in container `{name}` did not answer within {} s: {err}",
                    START_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// The last lines a container wrote, for an error message.
    async fn logs_tail(&self, name: &str) -> String {
        let Ok(docker) = self.engine().await else {
            return String::new();
        };
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail("20")
            .build();
        let chunks: Vec<_> = docker
            .logs(name, Some(options))
            .take(200)
            .filter_map(|c| async move { c.ok() })
            .collect()
            .await;
        let text: String = chunks.iter().map(|c| c.to_string()).collect();
        text.trim_end().to_string()
    }

    /// Creates the workspace's container from `image`, replacing any
    /// container of that name left by an interrupted create or reset.
    ///
    /// Every container berth makes for a workspace is made here, so this
    /// is where it waits, when `image` is one berth committed, until the
    /// wall clock is past the second of the commit: see
    /// [`plan::first_write_at`]. The wait overlaps the removal and the
    /// creation.
    async fn make_container(
        &self,
        ws: &Workspace,
        image: &str,
        bounded_tmp: bool,
    ) -> Result<String, RuntimeError> {
        let docker = self.engine().await?;
        let first_write = self.first_write_at(image).await?;
        let agent = self.agent_binary().await?.display().to_string();
        let run_dir = self.run_dir(&ws.id);
        tokio::fs::create_dir_all(&run_dir)
            .await
            .map_err(|e| RuntimeError::io(format!("cannot create `{}`", run_dir.display()), e))?;
        let _ = tokio::fs::remove_file(self.socket(&ws.id)).await;
        let name = self.names()?.container(&ws.id);
        self.remove_container(&name).await?;
        self.tag(image, &self.names()?.repo(plan::BASE), ws.id.as_str())
            .await?;
        let base = self.names()?.base_image(&ws.id);
        let body = plan::container_body(&ContainerPlan {
            id: &ws.id,
            names: self.names()?,
            spec: &ws.spec,
            image: &base,
            agent: &agent,
            run_dir: &run_dir.display().to_string(),
            defaults: self.defaults,
            bounded_tmp,
        });
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.fail(format!("cannot create container `{name}`"), e))?;
        if let Some(moment) = first_write {
            wait_until(moment).await;
        }
        Ok(created.id)
    }

    /// When a container made from `image` may first be written to; `None`
    /// for at once (a user's image, or a missing one, which the create
    /// that follows names).
    async fn first_write_at(&self, image: &str) -> Result<Option<SystemTime>, RuntimeError> {
        let found = match self.engine().await?.inspect_image(image).await {
            Ok(found) => found,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(self.fail(format!("cannot inspect image `{image}`"), e)),
        };
        let labels = found.config.as_ref().and_then(|c| c.labels.as_ref());
        Ok(plan::first_write_at(
            labels,
            found.created.as_deref(),
            SystemTime::now(),
        ))
    }

    /// Force-removes a container and its anonymous volumes; a missing one
    /// is fine.
    async fn remove_container(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .engine()
            .await?
            .remove_container(name, Some(options))
            .await
        {
            Err(e) if !not_found(&e) => {
                Err(self.fail(format!("cannot remove container `{name}`"), e))
            }
            _ => Ok(()),
        }
    }

    /// Removes an image reference; a missing one is fine. Never forced:
    /// Podman removes the containers of an image removed by force. An image
    /// with other names only loses this one, and every image a container
    /// uses has its base name (see [`plan::BASE`]).
    async fn untag(&self, image: &str) -> Result<(), RuntimeError> {
        let options = RemoveImageOptionsBuilder::new().build();
        match self
            .engine()
            .await?
            .remove_image(image, Some(options), None)
            .await
        {
            Err(e) if !not_found(&e) => Err(self.fail(format!("cannot remove image `{image}`"), e)),
            _ => Ok(()),
        }
    }

    /// Tags `image` as `repo:tag`, moving the tag if it named another.
    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), RuntimeError> {
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.engine()
            .await?
            .tag_image(image, Some(options))
            .await
            .map_err(|e| self.fail(format!("cannot tag image `{image}` as `{repo}:{tag}`"), e))
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.engine().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(self.fail(format!("cannot inspect image `{image}`"), e)),
        }
    }

    /// Commits the workspace's container to an image; returns its id.
    async fn commit(
        &self,
        ws: &Workspace,
        repo_tag: Option<(&str, &str)>,
    ) -> Result<String, RuntimeError> {
        let name = self.names()?.container(&ws.id);
        let mut options = CommitContainerOptionsBuilder::new()
            .container(&name)
            .pause(true);
        if let Some((repo, tag)) = repo_tag {
            options = options.repo(repo).tag(tag);
        }
        match self
            .engine()
            .await?
            .commit_container(options.build(), ContainerConfig::default())
            .await
        {
            Ok(id) => Ok(id.id),
            Err(e) if not_found(&e) => Err(self.gone(ws)),
            Err(e) => Err(self.fail(format!("cannot commit container `{name}`"), e)),
        }
    }

    async fn start_container(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let name = self.names()?.container(&ws.id);
        match self.engine().await?.start_container(&name, None).await {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Err(self.gone(ws)),
            Err(e) => Err(self.fail(format!("cannot start container `{name}`"), e)),
        }
    }

    async fn stop_container(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.agents.forget(ws.id.as_str());
        let name = self.names()?.container(&ws.id);
        let options = StopContainerOptionsBuilder::new()
            .t(plan::STOP_TIMEOUT_SECS)
            .build();
        match self
            .engine()
            .await?
            .stop_container(&name, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Err(self.gone(ws)),
            Err(e) => Err(self.fail(format!("cannot stop container `{name}`"), e)),
        }
    }

    /// Replaces the workspace's container with a fresh one from `image`,
    /// running again if it was running.
    async fn recreate(&self, ws: &Workspace, image: &str) -> Result<(), RuntimeError> {
        let running = self.is_running(ws).await?;
        if running {
            self.stop_container(ws).await?;
        }
        self.agents.forget(ws.id.as_str());
        self.make_container(ws, image, true).await?;
        if running {
            self.start_container(ws).await?;
            self.wait_for_agent(ws).await?;
            self.seed_tmp(ws).await?;
        }
        Ok(())
    }

    /// Copies the image's [`plan::TMP_SEED`], if it has one, into the
    /// `/tmp` tmpfs of a just-started container.
    async fn seed_tmp(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let name = self.names()?.container(&ws.id);
        if self.stat(&name, plan::TMP_SEED).await?.is_none() {
            return Ok(());
        }
        self.run_inside(ws, plan::SEED_TMP).await
    }

    /// Whether the `/tmp` on the container's layer holds anything (a
    /// container without one holds nothing there).
    async fn tmp_holds_files(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        let name = self.names()?.container(&ws.id);
        if self.stat(&name, plan::TMP).await?.is_none() {
            return Ok(false);
        }
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(plan::TMP)
            .build();
        let stream = self
            .engine()
            .await?
            .download_from_container(&name, Some(options));
        archive::has_children(stream)
            .await
            .map_err(|e| RuntimeError::io(format!("cannot list `/tmp` of `{name}`"), e))
    }

    /// Runs `script` as root in the workspace's running container, through
    /// its agent; an error unless it exits 0, with what it wrote to stderr.
    async fn run_inside(&self, ws: &Workspace, script: &str) -> Result<(), RuntimeError> {
        let mut request = ExecRequest::new(Command::Shell(script.into()));
        request.timeout_ms = u64::try_from(plan::TMP_COPY_TIMEOUT.as_millis()).ok();
        let mut events = self
            .agent(ws)
            .await?
            .exec(request, CancellationToken::new())
            .await?;
        let (_, stderr, exit) = berth_agent_client::collect(&mut events).await;
        if exit.code == Some(0) {
            return Ok(());
        }
        Err(RuntimeError::Other(format!(
            "`{script}` in container `{}` failed ({exit:?}): {}",
            self.names()?.container(&ws.id),
            String::from_utf8_lossy(&stderr).trim_end()
        )))
    }

    /// What the provider stores with the workspace.
    async fn info(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        let found = self.inspect(ws).await?;
        let state = found
            .state
            .and_then(|s| s.status)
            .unwrap_or(ContainerStateStatusEnum::EMPTY);
        let host_config = found.host_config.as_ref();
        Ok(serde_json::json!({
            "container": found.id,
            "memory": host_config.and_then(|h| h.memory),
            "shm_size": host_config.and_then(|h| h.shm_size),
            "tmp_size": host_config.and_then(plan::tmp_size),
            "name": self.names()?.container(&ws.id),
            "image": found.config.and_then(|c| c.image),
            "state": state.to_string(),
            "socket": self.socket(&ws.id),
            "engine": self.host,
        }))
    }

    /// Stats a path in a container; `None` when it does not exist.
    async fn stat(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<PathStatResponse>, RuntimeError> {
        let options = ContainerArchiveInfoOptionsBuilder::new().path(path).build();
        match self
            .engine()
            .await?
            .get_container_archive_info(container, Some(options))
            .await
        {
            Ok(stat) => Ok(Some(stat)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.fail(format!("cannot stat `{path}` in `{container}`"), e)),
        }
    }

    /// Uploads `host_dir` as `dest` of the workspace.
    async fn upload(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        let name = self.names()?.container(&ws.id);
        let target = inside(ws, dest);
        let (stream, packing) = archive::pack(
            host_dir.to_path_buf(),
            target.trim_start_matches('/').to_string(),
        );
        let options = UploadToContainerOptionsBuilder::new().path("/").build();
        let uploaded = self
            .engine()
            .await?
            .upload_to_container(&name, Some(options), bollard::body_try_stream(stream))
            .await;
        let packed = packing
            .await
            .map_err(|e| RuntimeError::Other(e.to_string()))?;
        packed.map_err(|e| RuntimeError::io(format!("cannot pack `{}`", host_dir.display()), e))?;
        match uploaded {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Err(self.gone(ws)),
            Err(e) => Err(self.fail(format!("cannot copy into `{target}` of `{name}`"), e)),
        }
    }

    /// Removes `path` of a running workspace through its agent; the root
    /// is emptied instead.
    async fn clear(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        let agent = self.agent(ws).await?;
        let targets = if path.is_root() {
            agent
                .list_dir(path)
                .await?
                .into_iter()
                .map(|e| WorkspacePath::parse(&e.path))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![path.clone()]
        };
        for target in targets {
            match agent.remove(&target).await {
                Err(e) if e.code() != Some(berth_core::proto::ErrorCode::NotFound) => {
                    return Err(e.into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The kind of each present path under the workspace root `root`,
    /// from stats in `container`.
    async fn kinds(
        &self,
        container: &str,
        root: &str,
        paths: Vec<String>,
    ) -> Result<HashMap<String, Option<FileKind>>, RuntimeError> {
        futures::stream::iter(paths)
            .map(|path| async move {
                let stat = self.stat(container, &plan::inside(root, &path)).await?;
                Ok::<_, RuntimeError>((path, stat.map(|s| plan::file_kind(s.file_mode))))
            })
            .buffer_unordered(STAT_CONCURRENCY)
            .try_collect()
            .await
    }

    /// What deleted paths were, read from the container's image through a
    /// container that is created for it and never started; deleted
    /// directories are expanded to everything they held.
    async fn deleted(
        &self,
        ws: &Workspace,
        image: &str,
        paths: Vec<String>,
    ) -> Result<Vec<Change>, RuntimeError> {
        let docker = self.engine().await?;
        let names = self.names()?;
        let probe = names.probe(&ulid::Ulid::generate().to_string().to_lowercase());
        let body = bollard::models::ContainerCreateBody {
            image: Some(image.to_string()),
            entrypoint: Some(vec![plan::AGENT_PATH.into()]),
            labels: Some(names.labels()),
            network_disabled: Some(true),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&probe).build();
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.fail(format!("cannot read the base of `{}`", ws.id), e))?;
        let result = self.deleted_in(&probe, ws.spec.root(), paths).await;
        self.remove_container(&probe).await?;
        result
    }

    async fn deleted_in(
        &self,
        probe: &str,
        root: &str,
        paths: Vec<String>,
    ) -> Result<Vec<Change>, RuntimeError> {
        let kinds = self.kinds(probe, root, paths).await?;
        let mut out = Vec::new();
        for (path, kind) in kinds {
            let kind = kind.unwrap_or(FileKind::Other);
            if kind == FileKind::Dir {
                let options = DownloadFromContainerOptionsBuilder::new()
                    .path(&plan::inside(root, &path))
                    .build();
                let stream = self
                    .engine()
                    .await?
                    .download_from_container(probe, Some(options));
                let entries = archive::list(stream).await.map_err(|e| {
                    RuntimeError::io(format!("cannot list deleted directory `{path}`"), e)
                })?;
                let parent = parent_of(&path);
                for (entry, kind) in entries {
                    out.push(change(join(parent, &entry), ChangeKind::Deleted, kind));
                }
            } else {
                out.push(change(path, ChangeKind::Deleted, kind));
            }
        }
        Ok(out)
    }

    /// Downloads `paths` of the container into `staging`, each at its own
    /// relative path.
    async fn download(
        &self,
        ws: &Workspace,
        paths: &[String],
        staging: &Path,
    ) -> Result<(), RuntimeError> {
        let name = self.names()?.container(&ws.id);
        for path in paths {
            let options = DownloadFromContainerOptionsBuilder::new()
                .path(&plan::inside(ws.spec.root(), path))
                .build();
            let stream = self
                .engine()
                .await?
                .download_from_container(&name, Some(options));
            let under = PathBuf::from(parent_of(path));
            archive::unpack(stream, staging.to_path_buf(), under)
                .await
                .map_err(|e| {
                    RuntimeError::io(format!("cannot copy `{path}` out of `{name}`"), e)
                })?;
        }
        Ok(())
    }

    /// Puts the link `path` of the workspace back as a link in `staging`
    /// when the engine's download followed it (Podman's does, where
    /// Docker's keeps links): its text is then read from the archive of
    /// the link's directory, and nothing the link pointed to is kept.
    async fn keep_link(
        &self,
        ws: &Workspace,
        path: &str,
        staging: &Path,
    ) -> Result<(), RuntimeError> {
        let staged = staging.join(path);
        let followed = match tokio::fs::symlink_metadata(&staged).await {
            Ok(meta) if meta.file_type().is_symlink() => return Ok(()),
            Ok(meta) => Some(meta.is_dir()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(RuntimeError::io(
                    format!("cannot read `{}`", staged.display()),
                    e,
                ));
            }
        };
        let name = self.names()?.container(&ws.id);
        let parent = plan::inside(ws.spec.root(), parent_of(path));
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(&parent)
            .build();
        let stream = self
            .engine()
            .await?
            .download_from_container(&name, Some(options));
        // The archive holds the directory under its own name.
        let base = parent.rsplit('/').next().unwrap_or_default();
        let file = path.rsplit('/').next().unwrap_or_default();
        let in_archive = Path::new(base).join(file);
        let cannot = |e| RuntimeError::io(format!("cannot read the link `{path}` of `{name}`"), e);
        let Some(target) = archive::link_target(stream, in_archive)
            .await
            .map_err(cannot)?
        else {
            // Replaced by something else since the change list was made.
            return Ok(());
        };
        let removed = match followed {
            Some(true) => tokio::fs::remove_dir_all(&staged).await,
            Some(false) => tokio::fs::remove_file(&staged).await,
            None => Ok(()),
        };
        removed.map_err(cannot)?;
        tokio::fs::symlink(target, &staged).await.map_err(cannot)
    }

    fn staging(&self) -> PathBuf {
        self.dir
            .join("tmp")
            .join(ulid::Ulid::generate().to_string().to_lowercase())
    }
}

/// Sleeps until the wall clock reads `moment`, at most
/// [`plan::LONGEST_FIRST_WRITE_WAIT`] even if the clock is stepped. The
/// wall clock is read again after each sleep: it, not the monotonic clock
/// the timer runs on, stamps files.
async fn wait_until(moment: SystemTime) {
    let give_up = Instant::now() + plan::LONGEST_FIRST_WRITE_WAIT;
    while let Ok(left) = moment.duration_since(SystemTime::now()) {
        let now = Instant::now();
        if left.is_zero() || now >= give_up {
            return;
        }
        tokio::time::sleep(left.min(give_up - now)).await;
    }
}

fn not_found(err: &EngineError) -> bool {
    matches!(
        err,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The absolute path in the container of a path of workspace `ws`.
fn inside(ws: &Workspace, path: &WorkspacePath) -> String {
    plan::inside(ws.spec.root(), path.as_str())
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/')
        .map(|(parent, _)| parent)
        .unwrap_or("")
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn change(path: String, kind: ChangeKind, file_kind: FileKind) -> Change {
    Change::new(std::path::Path::new(&path), kind, file_kind)
}

fn change_kind(kind: bollard::models::ChangeType) -> ChangeKind {
    match kind {
        bollard::models::ChangeType::_0 => ChangeKind::Modified,
        bollard::models::ChangeType::_1 => ChangeKind::Added,
        bollard::models::ChangeType::_2 => ChangeKind::Deleted,
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn description(&self) -> &'static str {
        "Docker containers from any local image (or Podman's Docker-compatible API), \
         served by the injected berth agent"
    }

    async fn available(&self) -> Result<(), String> {
        let docker = self.engine().await.map_err(|e| unavailable_reason(&e))?;
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable_reason(&self.fail("ping", e))),
            Err(_) => Err(unavailable_reason(
                &self.unreachable("no answer within 3 s"),
            )),
        }
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        let image = match (from_cache, &ws.spec.image) {
            (Some(key), _) => self.names()?.cache_image(key),
            (None, Some(image)) => image.clone(),
            (None, None) => {
                return Err(RuntimeError::Other(
                    "the docker runtime needs `image` in the spec: a local Docker image".into(),
                ));
            }
        };
        if !self.image_exists(&image).await? {
            return Err(RuntimeError::Other(match from_cache {
                Some(key) => format!("the cache image `{image}` of entry `{key}` is gone"),
                None => format!(
                    "image `{image}` is not in the Docker engine at {}: pull, build or \
                     `docker import` it first",
                    self.host
                ),
            }));
        }
        // From a user's image, the container is being provisioned: its
        // `/tmp` stays on its layer until the commit (see [`plan::TMP`]).
        self.make_container(ws, &image, from_cache.is_some())
            .await?;
        // Until a cache entry is saved, the image is the provisioned state.
        self.tag(
            &image,
            &self.names()?.repo(plan::PROVISIONED),
            ws.id.as_str(),
        )
        .await?;
        self.info(ws).await
    }

    fn host_path(&self, _ws: &Workspace) -> Option<PathBuf> {
        None
    }

    fn agent_socket(&self, ws: &Workspace) -> Option<PathBuf> {
        Some(self.socket(&ws.id))
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        let name = self.names()?.container(&ws.id);
        let exists = self.stat(&name, &inside(ws, dest)).await?.is_some();
        if !exists {
            // A 404 may also mean the container went: then say that.
            self.inspect(ws).await?;
            return self.upload(ws, host_dir, dest).await;
        }
        // What was at `dest` goes first, through the agent; a stopped
        // workspace is started for it and stopped again.
        let running = self.is_running(ws).await?;
        if !running {
            self.start_container(ws).await?;
            self.wait_for_agent(ws).await?;
        }
        let result = match self.clear(ws, dest).await {
            Ok(()) => self.upload(ws, host_dir, dest).await,
            Err(e) => Err(e),
        };
        if !running {
            self.stop_container(ws).await?;
        }
        result
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        self.start_container(ws).await?;
        self.wait_for_agent(ws).await?;
        self.seed_tmp(ws).await?;
        self.info(ws).await
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        self.stop_container(ws).await
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        if let Ok(mut locks) = self.lifecycles.lock() {
            locks.remove(ws.id.as_str());
        }
        self.agents.forget(ws.id.as_str());
        self.remove_container(&self.names()?.container(&ws.id))
            .await?;
        self.untag(&self.names()?.base_image(&ws.id)).await?;
        self.untag(&self.names()?.provisioned_image(&ws.id)).await?;
        let run_dir = self.run_dir(&ws.id);
        match tokio::fs::remove_dir_all(&run_dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RuntimeError::io(
                format!("cannot remove `{}`", run_dir.display()),
                e,
            )),
            _ => Ok(()),
        }
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        match self.inspect(ws).await {
            Ok(_) => Ok(true),
            Err(RuntimeError::Gone { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn isolation(&self, ws: &Workspace) -> Isolation {
        // What the container was made with, as recorded when it was made
        // or started: the runtime's defaults may have changed since.
        let recorded = |key: &str| {
            ws.runtime_info
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .filter(|bytes| *bytes > 0)
        };
        let made_with = ResourceDefaults {
            memory: recorded("memory").unwrap_or(self.defaults.memory),
            shm: recorded("shm_size").unwrap_or(self.defaults.shm),
            tmp: self.defaults.tmp,
        };
        // A container recorded without a `tmp_size` was made before `/tmp`
        // was a tmpfs: its `/tmp` is on its writable layer. One recorded
        // with none was being provisioned; every container after that has
        // the tmpfs.
        let tmp = match ws.runtime_info.get("tmp_size") {
            Some(_) => Some(recorded("tmp_size").unwrap_or(made_with.tmp(&ws.spec))),
            None if ws.runtime_info.get("container").is_some() => None,
            None => Some(made_with.tmp(&ws.spec)),
        };
        plan::isolation(&ws.spec, made_with, tmp)
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        Ok(self.agent(ws).await?.exec(request, cancel).await?)
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<ReadStream, RuntimeError> {
        Ok(self.agent(ws).await?.read_file(path).await?)
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        Ok(self.agent(ws).await?.write_file(path, &data, None).await?)
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        Ok(self.agent(ws).await?.list_dir(dir).await?)
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        Ok(self.agent(ws).await?.remove(path).await?)
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        if !plan::valid_tag(key) {
            return Err(RuntimeError::Other(format!(
                "`{key}` cannot be a cache key: it is not a valid image tag"
            )));
        }
        let found = self.inspect(ws).await?;
        let on_layer = found
            .host_config
            .as_ref()
            .and_then(plan::tmp_size)
            .is_none();
        let running = found.state.and_then(|s| s.running).unwrap_or(false);
        if on_layer && running && self.tmp_holds_files(ws).await? {
            self.run_inside(ws, plan::STASH_TMP).await?;
        }
        let image = self
            .commit(ws, Some((&self.names()?.repo(plan::CACHE), key)))
            .await?;
        self.tag(
            &image,
            &self.names()?.repo(plan::PROVISIONED),
            ws.id.as_str(),
        )
        .await?;
        // The container is remade from what was just saved, so that its
        // change list starts from the provisioned state.
        self.recreate(ws, &self.names()?.provisioned_image(&ws.id))
            .await
    }

    async fn has_cache(&self, key: &str) -> bool {
        let Ok(names) = self.names() else {
            return false;
        };
        plan::valid_tag(key) && matches!(self.image_exists(&names.cache_image(key)).await, Ok(true))
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        if !plan::valid_tag(key) {
            return Ok(());
        }
        self.untag(&self.names()?.cache_image(key)).await
    }

    async fn copy_out(
        &self,
        ws: &Workspace,
        src: &WorkspacePath,
        host_dir: &Path,
    ) -> Result<(), RuntimeError> {
        let name = self.names()?.container(&ws.id);
        let path = inside(ws, src);
        if self.stat(&name, &path).await?.is_none() {
            self.inspect(ws).await?;
            return Err(RuntimeError::NotFound(src.as_str().to_string()));
        }
        let parent = host_dir.parent().unwrap_or(Path::new("/"));
        let unpacked = parent.join(format!(
            ".berth-copy-{}",
            ulid::Ulid::generate().to_string().to_lowercase()
        ));
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(&path)
            .build();
        let stream = self
            .engine()
            .await?
            .download_from_container(&name, Some(options));
        let result = async {
            archive::unpack(stream, unpacked.clone(), PathBuf::new())
                .await
                .map_err(|e| {
                    RuntimeError::io(format!("cannot copy `{path}` out of `{name}`"), e)
                })?;
            // The archive holds the directory under its own name; a link
            // there (the workspace's to make) is not taken for it.
            let base = path.rsplit('/').next().unwrap_or_default();
            let copied = unpacked.join(base);
            if !tokio::fs::symlink_metadata(&copied)
                .await
                .is_ok_and(|m| m.is_dir())
            {
                return Err(RuntimeError::WrongKind {
                    path: src.to_string(),
                    problem: "not a directory",
                });
            }
            tokio::fs::rename(copied, host_dir).await.map_err(|e| {
                RuntimeError::io(
                    format!("cannot move the copy to `{}`", host_dir.display()),
                    e,
                )
            })
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&unpacked).await;
        result
    }

    async fn snapshot(&self, ws: &Workspace) -> Result<Snapshot, RuntimeError> {
        let id = ulid::Ulid::generate().to_string().to_lowercase();
        self.commit(ws, Some((&self.names()?.repo(plan::SNAPSHOT), &id)))
            .await?;
        Ok(Snapshot {
            id,
            workspace: ws.id.clone(),
            created_at: berth_core::now_ms(),
        })
    }

    async fn reset(&self, ws: &Workspace, to: Option<&str>) -> Result<(), RuntimeError> {
        let _lifecycle = self.lifecycle(ws).await;
        let image = match to {
            Some(id) if !plan::valid_tag(id) => {
                return Err(RuntimeError::SnapshotNotFound(id.to_string()));
            }
            Some(id) => self.names()?.snapshot_image(id),
            None => self.names()?.provisioned_image(&ws.id),
        };
        if !self.image_exists(&image).await? {
            return Err(match to {
                Some(id) => RuntimeError::SnapshotNotFound(id.to_string()),
                None => RuntimeError::Other(format!(
                    "the provisioned state of workspace {} (image `{image}`) is gone",
                    ws.id
                )),
            });
        }
        self.inspect(ws).await?;
        self.recreate(ws, &image).await
    }

    /// The Engine's change list of the container against its image, kept
    /// to the workspace root. The Engine finds a changed file by comparing
    /// its mode, owner, size and mtime with the image's, the mtimes to the
    /// second when either has no nanoseconds. So an edit that keeps a
    /// file's size and puts back an old mtime on purpose (`touch -r`,
    /// `cp -p`, unpacking a tar) can be invisible: a limit of the Engine.
    /// An ordinary edit is always seen, one made just after a commit
    /// included (see [`plan::first_write_at`]).
    async fn changes(&self, ws: &Workspace) -> Result<Vec<Change>, RuntimeError> {
        let name = self.names()?.container(&ws.id);
        let listed = match self.engine().await?.container_changes(&name).await {
            Ok(listed) => listed.unwrap_or_default(),
            Err(e) if not_found(&e) => return Err(self.gone(ws)),
            Err(e) => return Err(self.fail(format!("cannot list the changes of `{name}`"), e)),
        };
        let engine: Vec<EngineChange> = plan::workspace_changes(
            ws.spec.root(),
            listed
                .iter()
                .map(|c| (c.path.as_str(), change_kind(c.kind))),
        );
        let (deleted, present): (Vec<_>, Vec<_>) = engine
            .into_iter()
            .partition(|c| c.kind == ChangeKind::Deleted);
        let kinds = self
            .kinds(
                &name,
                ws.spec.root(),
                present.iter().map(|c| c.path.clone()).collect(),
            )
            .await?;
        let mut out = Vec::new();
        for c in present {
            match kinds.get(&c.path).copied().flatten() {
                // The Engine marks every directory above a change as
                // modified; only the entries themselves are changes.
                Some(FileKind::Dir) if c.kind == ChangeKind::Modified => {}
                Some(kind) => out.push(change(c.path, c.kind, kind)),
                // Gone again since the list was made.
                None => {}
            }
        }
        if !deleted.is_empty() {
            let image = self.inspect(ws).await?.image.unwrap_or_default();
            let paths = deleted.into_iter().map(|c| c.path).collect();
            out.extend(self.deleted(ws, &image, paths).await?);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    async fn export_changes(
        &self,
        ws: &Workspace,
        target: &ExportTarget,
    ) -> Result<ExportSummary, RuntimeError> {
        let changes = self.changes(ws).await?;
        // An added directory is downloaded whole; what lies under it comes
        // with it.
        let added_dirs: HashSet<&str> = changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Added && c.file_kind == FileKind::Dir)
            .map(|c| c.path.as_str())
            .collect();
        let under_added = |path: &str| {
            let mut parent = parent_of(path);
            while !parent.is_empty() {
                if added_dirs.contains(parent) {
                    return true;
                }
                parent = parent_of(parent);
            }
            false
        };
        let wanted: Vec<String> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted && c.file_kind != FileKind::Other)
            .filter(|c| !under_added(&c.path))
            .map(|c| c.path.clone())
            .collect();
        let links: Vec<String> = changes
            .iter()
            .filter(|c| c.kind != ChangeKind::Deleted && c.file_kind == FileKind::Symlink)
            .filter(|c| !under_added(&c.path))
            .map(|c| c.path.clone())
            .collect();
        let staging = self.staging();
        let result = async {
            tokio::fs::create_dir_all(&staging).await.map_err(|e| {
                RuntimeError::io(format!("cannot create `{}`", staging.display()), e)
            })?;
            self.download(ws, &wanted, &staging).await?;
            for link in &links {
                self.keep_link(ws, link, &staging).await?;
            }
            let target = target.clone();
            let root = staging.clone();
            tokio::task::spawn_blocking(move || match &target {
                ExportTarget::Archive { path } => berth_layers::export_archive(
                    &root,
                    Path::new(""),
                    &changes,
                    path,
                    berth_layers::IdShift::NONE,
                )
                .map_err(|e| RuntimeError::io(format!("cannot export to `{}`", path.display()), e)),
                ExportTarget::Directory { path } => {
                    berth_layers::export_dir(&root, Path::new(""), &changes, path).map_err(|e| {
                        RuntimeError::io(format!("cannot export to `{}`", path.display()), e)
                    })
                }
            })
            .await
            .map_err(|e| RuntimeError::Other(e.to_string()))?
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }

    async fn fork(
        &self,
        origin: &Workspace,
        ws: &Workspace,
    ) -> Result<serde_json::Value, RuntimeError> {
        let image = self.commit(origin, None).await?;
        self.make_container(ws, &image, true).await?;
        // The fork resets to the origin's provisioned state, as the origin
        // does; if that is gone, to the fork point.
        let provisioned = self.names()?.provisioned_image(&origin.id);
        let base = if self.image_exists(&provisioned).await? {
            provisioned
        } else {
            image
        };
        self.tag(
            &base,
            &self.names()?.repo(plan::PROVISIONED),
            ws.id.as_str(),
        )
        .await?;
        self.info(ws).await
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), RuntimeError> {
        let image = self.names()?.snapshot_image(id);
        if !plan::valid_tag(id) || !self.image_exists(&image).await? {
            return Err(RuntimeError::SnapshotNotFound(id.to_string()));
        }
        self.untag(&image).await
    }

    async fn gc(&self, live: &[Workspace]) -> Result<GcReport, RuntimeError> {
        let docker = self.engine().await?;
        let live: BTreeSet<&str> = live.iter().map(|w| w.id.as_str()).collect();
        let mut report = GcReport::default();
        let names = self.names()?;
        let filters = names.label_filter();
        let containers = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.fail("cannot list berth's containers", e))?;
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let id = labels.get(LABEL_WORKSPACE).cloned().unwrap_or_default();
            if !names.is_ours(&labels) || live.contains(id.as_str()) {
                continue;
            }
            if let Some(container_id) = container.id {
                self.remove_container(&container_id).await?;
            }
            // Probe containers left by an interrupted change listing have
            // no workspace.
            if !id.is_empty() {
                let ws = WorkspaceId::from_string(id.clone());
                self.agents.forget(&id);
                self.untag(&names.base_image(&ws)).await?;
                self.untag(&names.provisioned_image(&ws)).await?;
                let _ = tokio::fs::remove_dir_all(self.run_dir(&ws)).await;
                report.orphans.push(id);
            }
        }
        // Images committed from this home's containers that nothing names
        // any more (replaced provisioned states, forks' bases).
        let images = docker
            .list_images(Some(
                ListImagesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(|e| self.fail("cannot list berth's images", e))?;
        for image in images {
            if !names.is_ours(&image.labels) || !plan::dangling(&image.repo_tags) {
                continue;
            }
            let options = RemoveImageOptionsBuilder::new().build();
            // An image a container still uses stays.
            if docker
                .remove_image(&image.id, Some(options), None)
                .await
                .is_ok()
            {
                report.removed.push(image.id);
            }
        }
        Ok(report)
    }
}

fn unavailable_reason(err: &RuntimeError) -> String {
    match err {
        RuntimeError::Unavailable { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}
