//! Provisioning: from a spec to a running workspace, through the cache.
//!
//! On a cache miss the repositories are cloned on the provider side (where
//! the credentials are) from the provider's mirrors, moved into the
//! workspace, the setup script runs inside the runtime, and the result is
//! saved under the spec's cache key, with the commit each repository was
//! cloned at. On a hit the workspace starts from the cached state and, for
//! each repository whose upstream ref (asked with one `ls-remote`) is no
//! longer that commit, fetches what moved: into an isolated workspace as a
//! bundle its own git takes in, into its own upper layer. Progress is
//! reported as [`ProvisionEvent`]s; a failure leaves the workspace `failed`
//! with the failing step's output tail.

use crate::cache::Hold;
use crate::error::step_name;
use crate::{CreateOptions, FetchResult, Provider, ServiceError};
use berth_core::events::ProvisionStep;
use berth_core::output::{self, Step};
use berth_core::{
    ExecRequest, Output, ProvisionEvent, Runtime, Spec, Workspace, WorkspaceId, WorkspacePath,
    WorkspaceState,
};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lines of a failing step's output kept in the workspace's error.
const TAIL_LINES: usize = 20;

/// Where provisioning events go: a channel, or nowhere.
#[derive(Clone, Default)]
pub struct Progress(Option<mpsc::Sender<ProvisionEvent>>);

impl Progress {
    pub fn none() -> Self {
        Progress(None)
    }

    pub fn to(sender: mpsc::Sender<ProvisionEvent>) -> Self {
        Progress(Some(sender))
    }

    async fn send(&self, event: ProvisionEvent) {
        // A receiver that went away does not stop provisioning.
        if let Some(sender) = &self.0 {
            let _ = sender.send(event).await;
        }
    }
}

/// Where clones are prepared before they move into a workspace.
pub(crate) fn staging_dir(home: &Path, id: &WorkspaceId) -> PathBuf {
    home.join("staging").join(id.as_str())
}

/// The provider's mirrors of upstream repositories, which every clone and
/// every fetch into an isolated workspace goes through.
pub(crate) fn mirrors(home: &Path) -> berth_git::Mirrors {
    berth_git::Mirrors::new(home.join("git").join("mirrors"))
}

fn log_path(home: &Path, id: &WorkspaceId) -> PathBuf {
    home.join("logs").join(format!("{id}.setup.log"))
}

/// A provisioning step that failed.
struct Failure {
    step: ProvisionStep,
    message: String,
    output_tail: String,
}

impl Failure {
    fn new(step: ProvisionStep, message: impl ToString) -> Self {
        Failure {
            step,
            message: message.to_string(),
            output_tail: String::new(),
        }
    }
}

/// The last lines of a stream of output.
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    partial: String,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        for c in String::from_utf8_lossy(data).chars() {
            if c == '\n' {
                self.lines.push_back(std::mem::take(&mut self.partial));
                if self.lines.len() > TAIL_LINES {
                    self.lines.pop_front();
                }
            } else {
                self.partial.push(c);
            }
        }
    }

    fn text(mut self) -> String {
        if !self.partial.is_empty() {
            self.lines.push_back(self.partial);
            if self.lines.len() > TAIL_LINES {
                self.lines.pop_front();
            }
        }
        Vec::from(self.lines).join("\n")
    }
}

impl Provider {
    /// Provisions and starts a workspace from a spec.
    pub async fn create(
        &self,
        spec: Spec,
        options: CreateOptions,
        progress: Progress,
    ) -> Result<Workspace, ServiceError> {
        let mut spec = spec;
        spec.timeouts.idle = options.idle.or(spec.timeouts.idle);
        spec.timeouts.lifetime = options.lifetime.or(spec.timeouts.lifetime);
        spec.validate()?;
        berth_core::label::validate(&options.labels).map_err(|e| ServiceError::InvalidRequest {
            field: "labels".into(),
            message: e.to_string(),
        })?;
        if let Some(name) = &options.name {
            Spec {
                name: Some(name.clone()),
                ..Spec::default()
            }
            .validate()?;
        }
        let runtime = self.choose_runtime(&spec, &options).await?;
        // Before anything is made or any request is sent: a credential goes
        // only where its URL prefixes allow.
        for (i, repo) in spec.repositories.iter().enumerate() {
            if let Some(credential) = &repo.credential
                && let Err(e) = self.git().credentials().authorize(credential, &repo.url)
            {
                return Err(ServiceError::InvalidRequest {
                    field: format!("repositories[{i}].credential"),
                    message: e.to_string(),
                });
            }
        }
        let ws = self.register(spec, &options, None, runtime.name())?;
        progress
            .send(ProvisionEvent::Created {
                id: ws.id.clone(),
                name: ws.name.clone(),
            })
            .await;
        match self.provision(ws.clone(), &runtime, &progress).await {
            Ok(ws) => {
                // Its idle time counts from when it is ready.
                self.used(&ws);
                progress
                    .send(ProvisionEvent::Ready { id: ws.id.clone() })
                    .await;
                Ok(ws)
            }
            Err(failure) => {
                let error = if failure.output_tail.is_empty() {
                    failure.message.clone()
                } else {
                    format!("{}\n{}", failure.message, failure.output_tail)
                };
                self.store()
                    .set_state(&ws.id, WorkspaceState::Failed, Some(&error))?;
                let _ = tokio::fs::remove_dir_all(staging_dir(self.home(), &ws.id)).await;
                progress
                    .send(ProvisionEvent::Failed {
                        step: failure.step,
                        message: failure.message.clone(),
                        output_tail: failure.output_tail,
                    })
                    .await;
                Err(ServiceError::ProvisionFailed {
                    id: ws.id.to_string(),
                    step: step_name(failure.step),
                    message: failure.message,
                })
            }
        }
    }

    /// Records the new workspace as `creating`, owned by this process. An
    /// explicit name must be free; any other (`default_name`, the spec's)
    /// gets a numeric suffix when taken.
    pub(crate) fn register(
        &self,
        spec: Spec,
        options: &CreateOptions,
        default_name: Option<String>,
        runtime: &str,
    ) -> Result<Workspace, ServiceError> {
        let id = WorkspaceId::generate();
        let now = self.clock().now_ms();
        let base_name = options
            .name
            .clone()
            .or(default_name)
            .or_else(|| spec.name.clone())
            .unwrap_or_else(|| format!("ws-{}", &id.as_str()[id.as_str().len() - 6..]));
        let mut ws = Workspace {
            id,
            name: base_name.clone(),
            runtime: runtime.into(),
            spec,
            state: WorkspaceState::Creating,
            labels: options.labels.clone(),
            runtime_info: serde_json::Value::Null,
            cache_key: None,
            error: None,
            owner_pid: Some(std::process::id()),
            created_at: now,
            updated_at: now,
            last_active_at: now,
            node: None,
        };
        for suffix in 2.. {
            match self.store().insert_workspace(&ws) {
                Ok(()) => return Ok(ws),
                Err(berth_store::StoreError::AlreadyExists(_)) if options.name.is_none() => {
                    ws.name = format!("{base_name}-{suffix}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the suffixes never run out")
    }

    async fn provision(
        &self,
        mut ws: Workspace,
        runtime: &Arc<dyn Runtime>,
        progress: &Progress,
    ) -> Result<Workspace, Failure> {
        let key = ws.spec.cache_key(runtime.name());
        let store_err = |e: berth_store::StoreError| Failure::new(ProvisionStep::Create, e);
        let lock_err = |e: ServiceError| Failure::new(ProvisionStep::Create, e);
        // Made from the cache under a shared hold of its key; provisioned
        // under an exclusive one, taken by one creation while the others
        // wait and then find the entry it made.
        let mut lock = self
            .lock_cache_key(&key, Hold::Shared)
            .await
            .map_err(lock_err)?;
        let mut cached = self.cached(&key, runtime).await;
        if cached.is_none() {
            drop(lock);
            lock = self
                .lock_cache_key(&key, Hold::Exclusive)
                .await
                .map_err(lock_err)?;
            cached = self.cached(&key, runtime).await;
        }

        let commits: Vec<String> = if let Some(entry) = cached {
            progress
                .send(ProvisionEvent::CacheHit { key: key.clone() })
                .await;
            // Upstream is asked while the workspace is made: neither
            // waits for the other.
            let commits = cloned_commits(&entry);
            let repositories = ws.spec.repositories.clone();
            let made = async {
                ws.runtime_info = runtime
                    .create(&ws, Some(&key))
                    .await
                    .map_err(|e| Failure::new(ProvisionStep::Create, e))?;
                self.store()
                    .set_runtime_info(&ws.id, &ws.runtime_info)
                    .map_err(store_err)?;
                // Made from the entry: in use, so never evicted from here on.
                self.store()
                    .set_cache_key(&ws.id, Some(&key))
                    .map_err(store_err)?;
                drop(lock);
                self.start_runtime(&mut ws, runtime).await
            };
            let (made, unmoved) = tokio::join!(made, self.unmoved(&repositories, &commits));
            made?;
            let fetched = self
                .fetch_into(&ws, runtime, &unmoved, progress)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Fetch, e))?;
            let _ = self.store().touch_cache_entry(&key);
            fetched.into_iter().map(|f| f.commit).collect()
        } else {
            progress
                .send(ProvisionEvent::CacheMiss { key: key.clone() })
                .await;
            ws.runtime_info = runtime
                .create(&ws, None)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Create, e))?;
            self.store()
                .set_runtime_info(&ws.id, &ws.runtime_info)
                .map_err(store_err)?;
            let commits = self.clone_into(&ws, runtime, progress).await?;
            self.start_runtime(&mut ws, runtime).await?;
            if let Some(script) = ws.spec.setup_script.clone() {
                self.run_setup(&ws, runtime, &script, progress).await?;
            }
            runtime
                .save_cache(&ws, &key)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Cache, e))?;
            let size = match runtime.cache_size(&key).await {
                Ok(size) => size,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot measure a cache entry");
                    None
                }
            };
            let now = self.clock().now_ms();
            self.store()
                .put_cache_entry(&berth_store::CacheEntry {
                    key: key.clone(),
                    runtime: runtime.name().into(),
                    created_at: now,
                    last_used_at: now,
                    info: serde_json::json!({ "workspace": ws.id, "commits": commits }),
                    size,
                })
                .map_err(|e| Failure::new(ProvisionStep::Cache, e))?;
            self.store()
                .set_cache_key(&ws.id, Some(&key))
                .map_err(store_err)?;
            drop(lock);
            progress
                .send(ProvisionEvent::Cached { key: key.clone() })
                .await;
            if self.inner.cache_budget.is_some()
                && let Err(e) = self.gc_cache(None).await
            {
                tracing::warn!(error = %e, "cannot keep the cache within its budget");
            }
            commits
        };
        let provisioned = crate::patch::Provisioned {
            commits,
            exact: ws.spec.setup_script.is_none(),
        };
        // Leaving `creating` clears the owner in the same update, so no
        // other process ever sees an ownerless provision.
        let ws = self
            .store()
            .set_state(&ws.id, WorkspaceState::Running, None)
            .map_err(store_err)?;
        self.set_provisioned(&ws.id, Some(provisioned));
        Ok(ws)
    }

    /// The entry `key`, when the registry and the runtime both have it.
    async fn cached(
        &self,
        key: &str,
        runtime: &Arc<dyn Runtime>,
    ) -> Option<berth_store::CacheEntry> {
        let entry = self.store().cache_entry(key).ok()??;
        runtime.has_cache(key).await.then_some(entry)
    }

    async fn start_runtime(
        &self,
        ws: &mut Workspace,
        runtime: &Arc<dyn Runtime>,
    ) -> Result<(), Failure> {
        ws.runtime_info = runtime
            .start(ws)
            .await
            .map_err(|e| Failure::new(ProvisionStep::Start, e))?;
        self.store()
            .set_runtime_info(&ws.id, &ws.runtime_info)
            .map(drop)
            .map_err(|e| Failure::new(ProvisionStep::Start, e))
    }

    /// Clones every repository into the workspace; returns the commit each
    /// was checked out at, in the spec's order.
    async fn clone_into(
        &self,
        ws: &Workspace,
        runtime: &Arc<dyn Runtime>,
        progress: &Progress,
    ) -> Result<Vec<String>, Failure> {
        let staging = staging_dir(self.home(), &ws.id);
        let total = ws.spec.repositories.len();
        let mut commits = Vec::with_capacity(total);
        for (index, repo) in ws.spec.repositories.iter().enumerate() {
            progress
                .send(ProvisionEvent::Cloning {
                    repository: repo.url.clone(),
                    path: repo.path.to_string(),
                    index,
                    total,
                })
                .await;
            let dest = staging.join(index.to_string());
            self.git()
                .clone_with_mirror(repo, &mirrors(self.home()), &dest)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Clone, e))?;
            let commit = self
                .git()
                .mark_base(&dest)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Clone, e))?;
            runtime
                .import(ws, &dest, &repo.path)
                .await
                .map_err(|e| Failure::new(ProvisionStep::Clone, e))?;
            progress
                .send(ProvisionEvent::Cloned {
                    repository: repo.url.clone(),
                    path: repo.path.to_string(),
                    commit: commit.clone(),
                })
                .await;
            commits.push(commit);
        }
        let _ = tokio::fs::remove_dir_all(&staging).await;
        Ok(commits)
    }

    async fn run_setup(
        &self,
        ws: &Workspace,
        runtime: &Arc<dyn Runtime>,
        script: &str,
        progress: &Progress,
    ) -> Result<(), Failure> {
        let fail = |e: &dyn std::fmt::Display| Failure::new(ProvisionStep::Setup, e);
        progress.send(ProvisionEvent::SetupStarted).await;
        let log_file = log_path(self.home(), &ws.id);
        if let Some(dir) = log_file.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| fail(&e))?;
        }
        let mut log = tokio::fs::File::create(&log_file)
            .await
            .map_err(|e| fail(&e))?;
        let mut request = ExecRequest::shell(script);
        request.timeout_ms = ws.spec.timeouts.setup.map(|secs| secs.saturating_mul(1000));
        let mut events = runtime
            .exec(ws, request, CancellationToken::new())
            .await
            .map_err(|e| fail(&e))?;
        let mut tail = Tail::default();
        let ended = loop {
            match output::next(&mut events).await {
                Ok(Step::Output(stream, data)) => {
                    tail.push(&data);
                    let _ = log.write_all(&data).await;
                    progress
                        .send(ProvisionEvent::SetupOutput {
                            stream,
                            data: Output(data),
                        })
                        .await;
                }
                Ok(Step::Exit(status)) => break Ok(status),
                Err(missing) => break Err(missing),
            }
        };
        let _ = log.flush().await;
        let status = ended.map_err(|missing| {
            fail(&format!(
                "the setup script's {missing} (log: {})",
                log_file.display()
            ))
        })?;
        progress
            .send(ProvisionEvent::SetupFinished {
                exit_code: status.shell_code(),
            })
            .await;
        if status.success() {
            return Ok(());
        }
        let message = if status.timed_out {
            format!(
                "the setup script ran past its timeout of {} s (log: {})",
                ws.spec.timeouts.setup.unwrap_or_default(),
                log_file.display()
            )
        } else {
            format!(
                "the setup script exited with code {} (log: {})",
                status.shell_code(),
                log_file.display()
            )
        };
        Err(Failure {
            step: ProvisionStep::Setup,
            message,
            output_tail: tail.text(),
        })
    }

    /// Fetches upstream changes into every repository of a workspace.
    pub async fn fetch(
        &self,
        id: &str,
        progress: Progress,
    ) -> Result<Vec<FetchResult>, ServiceError> {
        let ws = self.get(id)?;
        if !matches!(ws.state, WorkspaceState::Running | WorkspaceState::Stopped) {
            return Err(ServiceError::WrongState {
                id: ws.id.to_string(),
                state: ws.state,
                hint: "only a running or stopped workspace can fetch",
            });
        }
        let runtime = self.runtime_of(&ws)?;
        self.set_provisioned(&ws.id, None);
        self.fetch_into(&ws, &runtime, &[], &progress).await
    }

    /// Per repository, the commit it was cloned at (`at`, in the same
    /// order) when upstream still points there, all asked at once.
    async fn unmoved(
        &self,
        repositories: &[berth_core::spec::Repository],
        at: &[String],
    ) -> Vec<Option<String>> {
        let checks = repositories
            .iter()
            .zip(at)
            .map(|(repo, commit)| async move {
                self.upstream_is_at(repo, commit)
                    .await
                    .then(|| commit.clone())
            });
        futures::future::join_all(checks).await
    }

    /// Whether `repo`'s ref upstream still points at `commit`, asked
    /// without fetching: a ref that looks like a commit never moves. When
    /// upstream cannot be asked, the fetch that follows says why.
    async fn upstream_is_at(&self, repo: &berth_core::spec::Repository, commit: &str) -> bool {
        match self.git().upstream_commit(repo).await {
            Ok(Some(upstream)) => upstream == commit,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Fetches one repository. In place, with provider-side git, when the
    /// runtime exposes the workspace's files (`local`: no isolation to
    /// keep); otherwise the workspace's own git takes in a bundle made from
    /// the provider's mirror (see [`berth_git::inside`]), so nothing of the
    /// checkout is ever read by a git process of the provider.
    async fn fetch_repository(
        &self,
        ws: &Workspace,
        runtime: &Arc<dyn Runtime>,
        repo: &berth_core::spec::Repository,
    ) -> Result<berth_git::FetchOutcome, ServiceError> {
        let git_error = |source| ServiceError::Git {
            id: ws.id.to_string(),
            source,
        };
        if let Some(root) = runtime.host_path(ws) {
            let checkout = repo.path.under(&root);
            let outcome = self.git().fetch(repo, &checkout).await.map_err(git_error)?;
            if outcome.updated {
                self.git().mark_base(&checkout).await.map_err(git_error)?;
            }
            return Ok(outcome);
        }
        if ws.state == WorkspaceState::Stopped {
            return Err(ServiceError::WrongState {
                id: ws.id.to_string(),
                state: ws.state,
                hint: "fetching runs git inside the workspace; start it first",
            });
        }
        let probed = run_inside(ws, runtime, berth_git::inside::probe(&repo.path)).await?;
        let probe = match berth_git::inside::read_probe(&repo.path, &probed) {
            Ok(probe) => probe,
            Err(no_git @ berth_git::GitError::NoGitInside { .. }) => {
                return self.fetch_by_copy(ws, runtime, repo, no_git).await;
            }
            Err(e) => return Err(git_error(e)),
        };
        let unchanged = berth_git::FetchOutcome {
            commit: probe.head.clone(),
            previous: probe.head.clone(),
            updated: false,
        };
        let Some(upstream) = probe.upstream.as_deref() else {
            // A tag or commit checkout, or a branch following nothing on
            // `origin`: there is nothing to follow.
            return Ok(unchanged);
        };
        let catch_up = {
            // The mirror stays locked only while it is updated and read.
            let mirror = self
                .git()
                .mirror(repo, &mirrors(self.home()))
                .await
                .map_err(git_error)?;
            self.git()
                .catch_up(&mirror, upstream, &probe.have)
                .await
                .map_err(git_error)?
        };
        let Some(catch_up) = catch_up else {
            // The branch is gone upstream; the checkout keeps what it has.
            return Ok(unchanged);
        };
        // Inside `.git`, where neither the work tree nor `git status` sees
        // it, under a name no concurrent fetch shares; removed whatever
        // happens.
        let bundle = match catch_up.bundle {
            Some(bytes) => {
                let name = bundle_name();
                let at = repo.path.join(&WorkspacePath::parse(&name)?);
                runtime
                    .write_file(ws, &at, bytes)
                    .await
                    .map_err(|e| ServiceError::runtime(&ws.id, e))?;
                Some((at, name))
            }
            None => None,
        };
        let request = berth_git::inside::advance(
            &repo.path,
            upstream,
            &catch_up.commit,
            bundle.as_ref().map(|(_, name)| name.as_str()),
            &catch_up.branch_ref,
        );
        let advanced = run_inside(ws, runtime, request).await;
        if let Some((at, _)) = &bundle
            && let Err(e) = runtime.remove_file(ws, at).await
        {
            tracing::warn!(workspace = %ws.id, path = %at, "cannot remove the fetch bundle: {e}");
        }
        berth_git::inside::read_advance(&repo.path, upstream, &advanced?).map_err(git_error)
    }

    /// Fetches on a copy of the checkout brought out of a workspace that
    /// has no git, and puts it back: provider-side git, but under a
    /// configuration of berth's own (see [`berth_git::Git::fetch_copy`]).
    /// Without a way to copy out, the workspace's lack of git (`no_git`) is
    /// the error.
    async fn fetch_by_copy(
        &self,
        ws: &Workspace,
        runtime: &Arc<dyn Runtime>,
        repo: &berth_core::spec::Repository,
        no_git: berth_git::GitError,
    ) -> Result<berth_git::FetchOutcome, ServiceError> {
        let git_error = |source| ServiceError::Git {
            id: ws.id.to_string(),
            source,
        };
        let staging = staging_dir(self.home(), &ws.id).join("fetch");
        let _ = tokio::fs::remove_dir_all(&staging).await;
        if let Some(parent) = staging.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                ServiceError::runtime(&ws.id, berth_core::RuntimeError::io("create staging", e))
            })?;
        }
        match runtime.copy_out(ws, &repo.path, &staging).await {
            Ok(()) => {}
            Err(berth_core::RuntimeError::Unsupported { .. }) => return Err(git_error(no_git)),
            Err(e) => return Err(ServiceError::runtime(&ws.id, e)),
        }
        let fetched = async {
            let outcome = self
                .git()
                .fetch_copy(repo, &mirrors(self.home()), &staging)
                .await
                .map_err(git_error)?;
            if outcome.updated {
                runtime
                    .import(ws, &staging, &repo.path)
                    .await
                    .map_err(|e| ServiceError::runtime(&ws.id, e))?;
            }
            Ok(outcome)
        }
        .await;
        let _ = tokio::fs::remove_dir_all(&staging).await;
        fetched
    }

    /// Fetches into every repository of the workspace, except one whose
    /// checkout is known to be at the commit its upstream ref still points
    /// at (`unmoved`, in the spec's order; see [`Provider::unmoved`]).
    async fn fetch_into(
        &self,
        ws: &Workspace,
        runtime: &Arc<dyn Runtime>,
        unmoved: &[Option<String>],
        progress: &Progress,
    ) -> Result<Vec<FetchResult>, ServiceError> {
        let mut results = Vec::new();
        for (index, repo) in ws.spec.repositories.iter().enumerate() {
            progress
                .send(ProvisionEvent::Fetching {
                    path: repo.path.to_string(),
                })
                .await;
            let outcome = match unmoved.get(index) {
                Some(Some(commit)) => berth_git::FetchOutcome {
                    commit: commit.clone(),
                    previous: commit.clone(),
                    updated: false,
                },
                _ => self.fetch_repository(ws, runtime, repo).await?,
            };
            progress
                .send(ProvisionEvent::Fetched {
                    path: repo.path.to_string(),
                    commit: outcome.commit.clone(),
                    updated: outcome.updated,
                })
                .await;
            results.push(FetchResult {
                path: repo.path.to_string(),
                previous: outcome.previous,
                commit: outcome.commit,
                updated: outcome.updated,
            });
        }
        Ok(results)
    }
}

/// The commits a cache entry's repositories were cloned at, in the spec's
/// order; none for an entry that did not record them.
fn cloned_commits(entry: &berth_store::CacheEntry) -> Vec<String> {
    entry
        .info
        .get("commits")
        .and_then(|commits| serde_json::from_value(commits.clone()).ok())
        .unwrap_or_default()
}

/// A file name for a bundle inside a checkout's `.git`, unique among the
/// fetches of this provider.
fn bundle_name() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".git/berth-fetch-{}-{n}.bundle", std::process::id())
}

/// Runs a command inside the workspace and collects how it ended.
async fn run_inside(
    ws: &Workspace,
    runtime: &Arc<dyn Runtime>,
    request: ExecRequest,
) -> Result<berth_git::inside::Ran, ServiceError> {
    let mut events = runtime
        .exec(ws, request, CancellationToken::new())
        .await
        .map_err(|e| ServiceError::runtime(&ws.id, e))?;
    let done = output::collect(&mut events)
        .await
        .map_err(|e| ServiceError::runtime(&ws.id, e.into()))?;
    Ok(berth_git::inside::Ran {
        code: done.exit.code,
        stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
    })
}
