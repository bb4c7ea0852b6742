//! A runner: claims tasks from the queue and runs each in a workspace of
//! its own, provisioned through the provider (so the provisioning cache
//! serves every later run), running the job's steps in the checkout with
//! the run's timeout, streaming their output into the task's log, and
//! reporting the result with the repository's patch.
//!
//! Each task held is heartbeated; the answer carries cancellation, which
//! ends the step's processes with the workspace's usual grace. Within the
//! process a cancellation reaches the attempt at once, and the queue wakes
//! idle runners when work comes; the heartbeat and a slow poll carry what
//! other processes do. A runner that stops mid-task (killed, or its
//! process restarted) leaves the task to be requeued once its heartbeats
//! are missed. A task's workspace is removed after its result is recorded;
//! one still being provisioned when its task is cancelled or times out is
//! removed once made.

use crate::queue::{Claim, Heartbeat, QueueError, TaskQueue};
use crate::service::Jobs;
use crate::spec::{JobSpec, Keep};
use crate::utf8::Utf8Stream;
use berth_core::Clock;
use berth_core::Workspace;
use berth_core::job::{Finish, LogEvent, Task, TaskState};
use berth_core::{ExecEvent, ExecRequest, Labels};
use berth_provider::{CreateOptions, Progress, Provider, ServiceError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a runner works.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Names the runner in the tasks it holds.
    pub id: String,
    /// Tasks at once, over every run.
    pub slots: usize,
    /// How often a held task is heartbeated: how soon a cancellation made
    /// in another process reaches it (one made in this process does at
    /// once).
    pub heartbeat: Duration,
    /// How often an idle runner looks for work queued by other processes
    /// and for stalled tasks (work queued in this process wakes it at once).
    pub poll: Duration,
    /// Bytes of output kept per attempt in the task's log; the rest is
    /// counted in a truncation mark.
    pub log_limit: u64,
    /// Bytes a task's patch may have.
    pub patch_limit: u64,
}

impl RunnerConfig {
    pub fn new(id: impl Into<String>) -> Self {
        RunnerConfig {
            id: id.into(),
            slots: 8,
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            log_limit: 4 << 20,
            patch_limit: 64 << 20,
        }
    }
}

/// The longest wait before an errored task is tried again.
const MAX_BACKOFF_MS: i64 = 60_000;

#[derive(Clone)]
pub struct Runner {
    provider: Provider,
    jobs: Jobs,
    queue: Arc<dyn TaskQueue>,
    clock: Arc<dyn Clock>,
    config: Arc<RunnerConfig>,
    /// Removals of finished tasks' workspaces, awaited at shutdown.
    removals: TaskTracker,
}

/// Why an attempt stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    /// The queue no longer knows this attempt: nothing it says counts.
    Lost,
}

impl Runner {
    /// A runner of `jobs`' queue, provisioning through `provider`.
    pub fn new(provider: Provider, jobs: Jobs, config: RunnerConfig) -> Self {
        Runner {
            provider,
            queue: jobs.queue(),
            clock: jobs.clock(),
            jobs,
            config: Arc::new(config),
            removals: TaskTracker::new(),
        }
    }

    /// Claims and runs tasks until `shutdown`; tasks still held then are
    /// left to be requeued when their heartbeats are missed, workspaces of
    /// tasks that ended are removed before it returns.
    pub async fn serve(&self, shutdown: CancellationToken) {
        let mut running = JoinSet::new();
        let mut work = self.queue.work();
        let mut poll = tokio::time::interval(self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while running.len() < self.config.slots {
                match self.queue.claim(&self.config.id).await {
                    Ok(Some(claim)) => {
                        let runner = self.clone();
                        running.spawn(async move { runner.execute(claim).await });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim a task");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(Err(e)) = done {
                        tracing::warn!(error = %e, "a task's result was not recorded");
                    }
                }
                _ = work.changed() => {}
                _ = poll.tick() => {
                    if let Err(e) = self.queue.requeue_stalled().await {
                        tracing::warn!(error = %e, "cannot requeue stalled tasks");
                    }
                }
            }
        }
        self.removals.close();
        self.removals.wait().await;
        self.removals.reopen();
    }

    /// Runs one claimed task to its end and reports it.
    pub async fn execute(&self, claim: Claim) -> Result<Task, QueueError> {
        let task = claim.task.clone();
        let stop = CancellationToken::new();
        let reason = Arc::new(std::sync::Mutex::new(None));
        let beating = self.heartbeat(&claim, stop.clone(), reason.clone());
        let mut log = Log::new(self, &task);
        let spec = serde_json::from_value::<JobSpec>(claim.spec.clone());
        let (outcome, workspace) = match &spec {
            Ok(spec) => self.attempt(&claim, spec, &mut log, &stop).await,
            Err(e) => (
                Outcome::errored(format!("the run's job spec cannot be read: {e}")),
                None,
            ),
        };
        beating.abort();
        // Whatever becomes of the result, the workspace goes once it is
        // recorded (or refused), off the task's slot.
        let _removal = workspace.map(|id| Removal {
            runner: self.clone(),
            id,
        });
        let stopped = *reason.lock().unwrap_or_else(|p| p.into_inner());
        if stopped == Some(Stop::Lost) {
            return Err(QueueError::Lost { task: task.id });
        }
        let mut finish = outcome.finish;
        if stopped == Some(Stop::Cancelled) && finish.state != Some(TaskState::Completed) {
            finish.state = Some(TaskState::Cancelled);
            finish.error = Some("cancelled".into());
        }
        let spec = spec.ok();
        let retries = spec.as_ref().map_or(0, |s| s.run.retries);
        if finish.state == Some(TaskState::Errored) && task.attempts <= retries {
            let backoff = 1000_i64
                .saturating_mul(1 << task.attempts.saturating_sub(1).min(16))
                .min(MAX_BACKOFF_MS);
            finish.retry_at = Some(self.clock.now_ms() + backoff);
        }
        log.finish(&finish).await;
        let done = self.queue.complete(&task.id, &claim.token, finish).await?;
        if let Some(publish) = spec.and_then(|s| s.publish)
            && done.state == TaskState::Completed
        {
            self.publish(&done, &publish, &mut log).await;
        }
        Ok(done)
    }

    /// Pushes a completed task's change as the job's `[publish]` asks; the
    /// outcome goes to the task's log (the task stays completed).
    async fn publish(&self, task: &Task, publish: &crate::spec::Publish, log: &mut Log<'_>) {
        let message = publish
            .message
            .clone()
            .unwrap_or_else(|| format!("berth job run {}", task.run_id));
        let text = match self
            .jobs
            .publish_task(&self.provider, task, &publish.branch, &message)
            .await
        {
            Ok(published) => match (published.commit, published.error) {
                (Some(commit), _) => format!("published {commit} as branch {}", publish.branch),
                (None, error) => format!(
                    "publishing to branch {} failed: {}",
                    publish.branch,
                    error.unwrap_or_default()
                ),
            },
            Err(e) => format!("publishing to branch {} failed: {e}", publish.branch),
        };
        log.note(text).await;
    }

    /// Heartbeats the claim until aborted; a cancellation (answered by a
    /// heartbeat, or signalled in this process at once) or a lost claim
    /// stops the attempt.
    fn heartbeat(
        &self,
        claim: &Claim,
        stop: CancellationToken,
        reason: Arc<std::sync::Mutex<Option<Stop>>>,
    ) -> tokio::task::JoinHandle<()> {
        let queue = self.queue.clone();
        let (task, token) = (claim.task.id.clone(), claim.token.clone());
        let every = self.config.heartbeat;
        let cancelled = claim.cancelled.clone();
        tokio::spawn(async move {
            // The claim is fresh: the first heartbeat is due one period on.
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = cancelled.cancelled() => {
                        *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(Stop::Cancelled);
                        stop.cancel();
                        return;
                    }
                }
                let why = match queue.heartbeat(&task, &token).await {
                    Ok(Heartbeat::Continue) => continue,
                    Ok(Heartbeat::Cancel) => Stop::Cancelled,
                    Err(QueueError::Lost { .. }) => Stop::Lost,
                    Err(e) => {
                        tracing::warn!(task = %task, error = %e, "cannot heartbeat");
                        continue;
                    }
                };
                *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                stop.cancel();
                return;
            }
        })
    }

    /// Provisions, runs the steps and collects the patch; answers the
    /// workspace to remove unless it is kept.
    async fn attempt(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        log: &mut Log<'_>,
        stop: &CancellationToken,
    ) -> (Outcome, Option<String>) {
        let task = &claim.task;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(spec.run.timeout);
        let ws_spec = spec.spec_for(&task.url, task.reference.clone(), task.credential.clone());
        let mut labels = Labels::new();
        labels.insert("berth.job".into(), label_value(&spec.name));
        labels.insert("berth.run".into(), task.run_id.clone());
        labels.insert("berth.task".into(), task.id.clone());
        log.note(format!("provisioning a workspace for {}", task.url))
            .await;
        let options = CreateOptions {
            labels,
            ..CreateOptions::default()
        };
        let started = Instant::now();
        let provider = self.provider.clone();
        let mut create =
            Box::pin(async move { provider.create(ws_spec, options, Progress::none()).await });
        let created = tokio::select! {
            created = &mut create => created,
            _ = tokio::time::sleep_until(deadline) => {
                self.remove_once_made(create);
                let outcome = Outcome::new(TaskState::TimedOut, "provisioning ran past the run's timeout");
                return (outcome, None);
            }
            _ = stop.cancelled() => {
                self.remove_once_made(create);
                return (Outcome::new(TaskState::Cancelled, "cancelled"), None);
            }
        };
        let ws = match created {
            Ok(ws) => ws,
            Err(e) => {
                log.note(format!("provisioning failed: {e}")).await;
                return (Outcome::errored(format!("provisioning failed: {e}")), None);
            }
        };
        tracing::debug!(task = %task.id, ms = elapsed_ms(started), "provisioned");
        let id = ws.id.to_string();
        let mut outcome = self
            .in_workspace(claim, spec, &id, log, stop, deadline)
            .await;
        let keep =
            spec.run.keep == Keep::Failed && outcome.finish.state != Some(TaskState::Completed);
        if keep {
            log.note(format!("the workspace {id} is kept for inspection"))
                .await;
            outcome.finish.workspace = Some(id);
            return (outcome, None);
        }
        (outcome, Some(id))
    }

    async fn in_workspace(
        &self,
        claim: &Claim,
        spec: &JobSpec,
        ws: &str,
        log: &mut Log<'_>,
        stop: &CancellationToken,
        deadline: tokio::time::Instant,
    ) -> Outcome {
        // The commit the checkout was provisioned at, which its patch is
        // against.
        let Some(commit) = self
            .provider
            .provisioned_commits(ws)
            .and_then(|commits| commits.into_iter().next())
        else {
            return Outcome::errored(format!(
                "workspace {ws} does not say what commit it was provisioned at"
            ));
        };
        if let Err(e) = self
            .queue
            .set_base(&claim.task.id, &claim.token, &commit)
            .await
        {
            return Outcome::errored(e.to_string());
        }
        let started = Instant::now();
        for (i, step) in spec.steps.iter().enumerate() {
            let number = i as u32 + 1;
            let name = step.name.clone().unwrap_or_else(|| number.to_string());
            log.event(LogEvent::StepStart {
                step: number,
                name: name.clone(),
            })
            .await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Outcome::step(TaskState::TimedOut, None, &name, "the run's timeout passed");
            }
            let mut request = ExecRequest::shell(step.run.clone());
            request.timeout_ms = Some(left.as_millis().max(1) as u64);
            let events = self.provider.exec(ws, request, stop.child_token()).await;
            let mut events = match events {
                Ok((_, events)) => events,
                Err(e) => return Outcome::errored(format!("cannot run step {name}: {e}")),
            };
            let mut status = None;
            while let Some(event) = events.recv().await {
                match event {
                    ExecEvent::Stdout { data } => log.output(false, &data.0).await,
                    ExecEvent::Stderr { data } => log.output(true, &data.0).await,
                    ExecEvent::Exit(exit) => status = Some(exit),
                }
            }
            log.end_streams().await;
            let Some(status) = status else {
                return Outcome::errored(format!("step {name} ended without an exit status"));
            };
            let code = status.shell_code();
            log.event(LogEvent::StepEnd {
                step: number,
                exit_code: code,
            })
            .await;
            if status.cancelled {
                return Outcome::step(TaskState::Cancelled, Some(code), &name, "cancelled");
            }
            if status.timed_out {
                return Outcome::step(
                    TaskState::TimedOut,
                    Some(code),
                    &name,
                    &format!(
                        "step {name} ran past the run's timeout of {} s",
                        spec.run.timeout
                    ),
                );
            }
            if code != 0 {
                return Outcome::step(
                    TaskState::Failed,
                    Some(code),
                    &name,
                    &format!("step {name} exited with {code}"),
                );
            }
        }
        tracing::debug!(task = %claim.task.id, ms = elapsed_ms(started), "steps ran");
        let started = Instant::now();
        let patch = match self.provider.diff(ws).await {
            Ok(stream) => stream.read_all(self.config.patch_limit).await,
            Err(e) => return Outcome::errored(format!("cannot collect the patch: {e}")),
        };
        tracing::debug!(task = %claim.task.id, ms = elapsed_ms(started), "patch collected");
        match patch {
            Ok(patch) => Outcome {
                finish: Finish {
                    state: Some(TaskState::Completed),
                    exit_code: Some(0),
                    patch: Some(patch),
                    ..Finish::default()
                },
            },
            Err(e) => Outcome::new(TaskState::Failed, &format!("cannot collect the patch: {e}")),
        }
    }

    /// Lets a provisioning the attempt stopped waiting for finish, off the
    /// task's slot, and removes the workspace it made: dropped half-way, it
    /// would leave that workspace registered, and running, for good.
    fn remove_once_made(
        &self,
        create: impl Future<Output = Result<Workspace, ServiceError>> + Send + 'static,
    ) {
        let runner = self.clone();
        self.removals.spawn(async move {
            if let Ok(ws) = create.await {
                drop(Removal {
                    runner,
                    id: ws.id.to_string(),
                });
            }
        });
    }
}

/// Removes a finished task's workspace when dropped: in the background,
/// tracked so that the runner's shutdown waits for it.
struct Removal {
    runner: Runner,
    id: String,
}

impl Drop for Removal {
    fn drop(&mut self) {
        let provider = self.runner.provider.clone();
        let id = std::mem::take(&mut self.id);
        self.runner.removals.spawn(async move {
            let started = Instant::now();
            if let Err(e) = provider.remove(&id).await {
                tracing::warn!(workspace = %id, error = %e, "cannot remove a task's workspace");
            }
            tracing::debug!(workspace = %id, ms = elapsed_ms(started), "removed");
        });
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A label value from a job name: names allow what label values allow,
/// up to their length.
fn label_value(name: &str) -> String {
    name.chars().take(63).collect()
}

/// How an attempt ended, before it is reported.
struct Outcome {
    finish: Finish,
}

impl Outcome {
    fn new(state: TaskState, error: &str) -> Self {
        Outcome {
            finish: Finish {
                state: Some(state),
                error: Some(error.to_owned()),
                ..Finish::default()
            },
        }
    }

    fn errored(error: String) -> Self {
        Outcome::new(TaskState::Errored, &error)
    }

    fn step(state: TaskState, code: Option<i32>, step: &str, error: &str) -> Self {
        let mut outcome = Outcome::new(state, error);
        outcome.finish.exit_code = code;
        outcome.finish.failed_step = Some(step.to_owned());
        outcome
    }
}

/// The task's log as the attempt writes it: output kept up to the
/// runner's bound, the rest counted into one truncation mark at the end.
struct Log<'a> {
    runner: &'a Runner,
    task: String,
    attempt: u32,
    left: u64,
    dropped: u64,
    stdout: Utf8Stream,
    stderr: Utf8Stream,
}

impl<'a> Log<'a> {
    fn new(runner: &'a Runner, task: &Task) -> Self {
        Log {
            runner,
            task: task.id.clone(),
            attempt: task.attempts,
            left: runner.config.log_limit,
            dropped: 0,
            stdout: Utf8Stream::default(),
            stderr: Utf8Stream::default(),
        }
    }

    async fn event(&mut self, event: LogEvent) {
        if let Err(e) = self.runner.queue.log(&self.task, self.attempt, event).await {
            tracing::warn!(task = %self.task, error = %e, "cannot append to a task's log");
        }
    }

    async fn note(&mut self, text: String) {
        self.event(LogEvent::Note { text }).await;
    }

    /// Output of a step, kept up to the log's bound; a character split
    /// between two chunks of a stream is logged whole with the second.
    async fn output(&mut self, stderr: bool, data: &[u8]) {
        let keep = (data.len() as u64).min(self.left) as usize;
        self.dropped += (data.len() - keep) as u64;
        self.left -= keep as u64;
        if keep == 0 {
            return;
        }
        let stream = if stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let text = stream.decode(&data[..keep]);
        self.text(stderr, text).await;
    }

    /// Ends the step's streams: a character left incomplete is logged as
    /// U+FFFD.
    async fn end_streams(&mut self) {
        let (out, err) = (self.stdout.finish(), self.stderr.finish());
        self.text(false, out).await;
        self.text(true, err).await;
    }

    async fn text(&mut self, stderr: bool, text: String) {
        if text.is_empty() {
            return;
        }
        self.event(if stderr {
            LogEvent::Stderr { text }
        } else {
            LogEvent::Stdout { text }
        })
        .await;
    }

    /// The truncation mark, if output was dropped, and the outcome.
    async fn finish(&mut self, finish: &Finish) {
        if self.dropped > 0 {
            self.event(LogEvent::Truncated {
                dropped_bytes: self.dropped,
            })
            .await;
        }
        let state = finish.state.unwrap_or(TaskState::Errored);
        let text = match (&finish.error, finish.retry_at) {
            (Some(error), Some(_)) => format!("{state}: {error}; it will be tried again"),
            (Some(error), None) => format!("{state}: {error}"),
            (None, _) => state.to_string(),
        };
        self.note(text).await;
    }
}
