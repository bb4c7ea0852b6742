//! A typed client of the NATS service, for `berth --server nats://...`:
//! the same calls as the HTTP client, answering with the same types and
//! errors ([`berth_client::ClientError`]), so that a front end reports
//! either alike.

use crate::protocol::{
    ARGS, CONTROL, Control, ERROR_CODE, EVENT, ExecArgs, ForkArgs, InfoArgs, JobArgs, KEEPALIVE,
    LOST_AFTER, ListArgs, LogArgs, Op, PathArgs, PublishArgs, ResetArgs, RunArgs, RunTaskArgs, SEQ,
    ScheduleArgs, SessionArgs, SessionExecArgs, SessionOpenArgs, SnapshotArgs, Target, TaskArgs,
    TerminalArgs, WINDOW,
};
use crate::service::Inputs;
use async_nats::{HeaderMap, Subject};
use berth_client::{ClientError, ExportCounts};
use berth_core::job::{JobRecord, Run};
use berth_core::node::NodeInfo;
use berth_core::proto::{SessionParams, TerminalParams};
use berth_core::{
    Change, ExecEvent, ExecRequest, ExecStream, FileEntry, Labels, Output, ProvisionEvent,
    ReadStream, Snapshot, Spec, Workspace,
};
use berth_jobs::api::{JobList, LogLine, LogPage, PublishResponse, RunEvent, RunList};
use berth_jobs::{JobSpec, JobSummary, Published, RunDetails, TaskDetails};
use berth_provider::{
    CacheGc, CreateOptions, FetchResult, RuntimeGc, RuntimeStatus, SessionCommand, SessionInfo,
    WorkspaceDetails,
};
use berth_server::agent::InterruptResponse;
use berth_server::cluster::NodeList;
use berth_server::layers::{CacheGcParams, ChangeList, GcResponse};
use berth_server::v1::{
    CreateWorkspaceParams, FetchResponse, FileList, RuntimeList, WorkspaceList,
};
use berth_server::{ErrorBody, ErrorResponse};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::{self, BoxStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long to wait for an answer's first frame (the service sends one at
/// least every heartbeat interval after that).
const FIRST_FRAME: Duration = Duration::from_secs(30);

/// Bytes typed into a terminal per input message.
const INPUT_CHUNK: usize = 64 * 1024;

/// A client of one berth NATS service. Cheap to clone.
#[derive(Clone)]
pub struct NatsClient {
    nats: async_nats::Client,
    prefix: String,
    /// The server's URL, for messages.
    server: String,
}

impl NatsClient {
    /// A client of the service under `prefix` on an established connection
    /// to the NATS server at `server`.
    pub fn new(nats: async_nats::Client, prefix: &str, server: &str) -> NatsClient {
        NatsClient {
            nats,
            prefix: prefix.to_owned(),
            server: berth_nats::redacted(server),
        }
    }

    /// The NATS server's URL, without credentials.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Provisions and starts a workspace, passing provisioning events to
    /// `progress` as the service streams them.
    pub async fn create(
        &self,
        spec: &Spec,
        options: &CreateOptions,
        progress: mpsc::Sender<ProvisionEvent>,
    ) -> Result<Workspace, ClientError> {
        let params = CreateWorkspaceParams::new(spec.clone(), options.clone());
        let mut call = self.call(Op::Create, &params).await?;
        loop {
            match call.next().await? {
                Frame::Item(event) => {
                    let _ = progress.send(self.decode(&event)?).await;
                }
                Frame::Done(workspace) => return self.decode(&workspace),
            }
        }
    }

    /// The workspaces carrying every label of `selector`, oldest first.
    pub async fn list(&self, all: bool, selector: &Labels) -> Result<Vec<Workspace>, ClientError> {
        let args = ListArgs {
            all,
            labels: selector.clone(),
        };
        Ok(self
            .unary::<WorkspaceList>(Op::List, &args)
            .await?
            .workspaces)
    }

    pub async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ClientError> {
        self.unary(Op::Show, &target(id)).await
    }

    pub async fn start(&self, id: &str) -> Result<Workspace, ClientError> {
        self.unary(Op::Start, &target(id)).await
    }

    pub async fn stop(&self, id: &str) -> Result<Workspace, ClientError> {
        self.unary(Op::Stop, &target(id)).await
    }

    pub async fn remove(&self, id: &str) -> Result<Workspace, ClientError> {
        self.unary(Op::Remove, &target(id)).await
    }

    /// Fetches a workspace's repositories, passing progress events to
    /// `progress` as the service streams them.
    pub async fn fetch(
        &self,
        id: &str,
        progress: mpsc::Sender<ProvisionEvent>,
    ) -> Result<Vec<FetchResult>, ClientError> {
        let mut call = self.call(Op::Fetch, &target(id)).await?;
        loop {
            match call.next().await? {
                Frame::Item(event) => {
                    let _ = progress.send(self.decode(&event)?).await;
                }
                Frame::Done(results) => {
                    return Ok(self.decode::<FetchResponse>(&results)?.results);
                }
            }
        }
    }

    pub async fn runtimes(&self) -> Result<Vec<RuntimeStatus>, ClientError> {
        Ok(self
            .unary::<RuntimeList>(Op::Runtimes, &serde_json::json!({}))
            .await?
            .runtimes)
    }

    /// Runs a command; its events arrive as the service streams them.
    /// Cancelling `cancel`, or dropping the stream, cancels the command:
    /// its whole process tree is ended.
    pub async fn exec(
        &self,
        id: &str,
        request: &ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, ClientError> {
        let args = ExecArgs {
            id: id.to_owned(),
            request: request.clone(),
        };
        let call = self.call(Op::Exec, &args).await?;
        self.events(call, cancel).await
    }

    /// A file's bytes, read as the stream is consumed.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ClientError> {
        self.bytes(Op::FilesRead, &path_args(id, path)).await
    }

    /// Writes a file; it must fit in one NATS message (the NATS server's
    /// `max_payload`, 1 MiB unless configured otherwise).
    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ClientError> {
        let limit = self.nats.server_info().max_payload;
        if data.len() > limit {
            return Err(ClientError::Api {
                status: 413,
                code: "body_too_large".into(),
                message: format!(
                    "{path}: {} bytes is more than the NATS server at {} takes in one message \
                     ({limit} bytes, its max_payload)",
                    data.len(),
                    self.server
                ),
            });
        }
        let mut headers = HeaderMap::new();
        let args = serde_json::to_string(&path_args(id, path)).map_err(|e| self.protocol(e))?;
        headers.insert(ARGS, args.as_str());
        let mut call = self.send(Op::FilesWrite, headers, data.into()).await?;
        call.done().await.map(drop)
    }

    pub async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ClientError> {
        Ok(self
            .unary::<FileList>(Op::FilesList, &path_args(id, dir))
            .await?
            .entries)
    }

    pub async fn remove_file(&self, id: &str, path: &str) -> Result<(), ClientError> {
        self.unary::<()>(Op::FilesRemove, &path_args(id, path))
            .await
    }

    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        self.unary(Op::Snapshot, &target(id)).await
    }

    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ClientError> {
        let args = ForkArgs {
            id: id.to_owned(),
            count,
        };
        Ok(self
            .unary::<WorkspaceList>(Op::Fork, &args)
            .await?
            .workspaces)
    }

    pub async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ClientError> {
        let args = ResetArgs {
            id: id.to_owned(),
            to: to.map(str::to_owned),
        };
        self.unary(Op::Reset, &args).await
    }

    pub async fn changes(&self, id: &str) -> Result<Vec<Change>, ClientError> {
        Ok(self
            .unary::<ChangeList>(Op::Changes, &target(id))
            .await?
            .changes)
    }

    pub async fn diff(&self, id: &str) -> Result<ReadStream, ClientError> {
        self.bytes(Op::Diff, &target(id)).await
    }

    /// Removes what nothing uses, in every runtime that keeps layers.
    pub async fn gc(&self) -> Result<Vec<RuntimeGc>, ClientError> {
        Ok(self
            .unary::<GcResponse>(Op::Gc, &serde_json::json!({}))
            .await?
            .runtimes)
    }

    /// Evicts unused provisioning cache entries down to `budget` bytes
    /// (the server's own budget when absent).
    pub async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ClientError> {
        self.unary(Op::GcCache, &CacheGcParams { budget }).await
    }

    pub async fn agent_info(
        &self,
        id: &str,
        detect: bool,
    ) -> Result<berth_core::proto::AgentInfo, ClientError> {
        let args = InfoArgs {
            id: id.to_owned(),
            detect,
        };
        self.unary(Op::Info, &args).await
    }

    /// Removes a snapshot; its layer goes once nothing else uses it.
    pub async fn remove_snapshot(&self, snapshot: &str) -> Result<(), ClientError> {
        let args = SnapshotArgs {
            snapshot: snapshot.to_owned(),
        };
        self.unary::<()>(Op::SnapshotRemove, &args).await
    }

    /// Writes the changed files to `output`: the archive the service
    /// streams (`is_archive`), or the files it holds unpacked into a
    /// directory.
    pub async fn export(
        &self,
        id: &str,
        output: &Path,
        is_archive: bool,
    ) -> Result<ExportCounts, ClientError> {
        let mut call = self.call(Op::Export, &target(id)).await?;
        // A refusal (no such workspace) comes before anything is written.
        let first = call.next().await?;
        let (sender, archive) = ReadStream::channel();
        let feeding = tokio::spawn(async move {
            let mut frame: Result<Frame, ClientError> = Ok(first);
            loop {
                match frame {
                    Ok(Frame::Item(chunk)) => {
                        if !sender.send(chunk.to_vec()).await {
                            // The reader gave up: its error is the answer.
                            return Ok(None);
                        }
                    }
                    Ok(Frame::Done(counts)) => {
                        sender.finish().await;
                        return Ok(Some(counts));
                    }
                    Err(e) => {
                        sender.fail(std::io::Error::other(e.to_string())).await;
                        return Err(e);
                    }
                }
                frame = call.next().await;
            }
        });
        let saved = berth_client::save_export(archive, output, is_archive).await;
        let counts = feeding
            .await
            .map_err(|e| self.protocol(format!("the export's reader failed: {e}")))??;
        saved?;
        let counts = counts.ok_or_else(|| self.protocol("the export ended without its counts"))?;
        self.decode(&counts)
    }

    /// Opens a persistent shell session in a running workspace.
    pub async fn open_session(
        &self,
        id: &str,
        params: &SessionParams,
    ) -> Result<SessionInfo, ClientError> {
        let args = SessionOpenArgs {
            id: id.to_owned(),
            params: params.clone(),
        };
        self.unary(Op::SessionOpen, &args).await
    }

    /// Closes a session, ending its shell and anything running in it.
    pub async fn close_session(&self, id: &str, session: &str) -> Result<(), ClientError> {
        self.unary::<()>(Op::SessionClose, &session_args(id, session))
            .await
    }

    /// Runs a command in a session; its events arrive as the service
    /// streams them. Cancelling `cancel`, or dropping the stream,
    /// interrupts the command; the session lives on.
    pub async fn session_exec(
        &self,
        id: &str,
        session: &str,
        command: &SessionCommand,
        cancel: CancellationToken,
    ) -> Result<ExecStream, ClientError> {
        let args = SessionExecArgs {
            id: id.to_owned(),
            session: session.to_owned(),
            command: command.clone(),
        };
        let call = self.call(Op::SessionExec, &args).await?;
        self.events(call, cancel).await
    }

    /// Interrupts the command running in a session; whether one was.
    pub async fn interrupt_session(&self, id: &str, session: &str) -> Result<bool, ClientError> {
        Ok(self
            .unary::<InterruptResponse>(Op::SessionInterrupt, &session_args(id, session))
            .await?
            .interrupted)
    }

    /// Opens a terminal (a PTY) in a running workspace, running
    /// `params.command` (a shell by default). A refusal (no such
    /// workspace, no agent) is this call's error.
    pub async fn terminal(
        &self,
        id: &str,
        params: &TerminalParams,
    ) -> Result<NatsTerminal, ClientError> {
        let args = TerminalArgs {
            id: id.to_owned(),
            params: params.clone(),
        };
        let mut call = self.call(Op::Terminal, &args).await?;
        // The first item says the program started.
        call.next().await?;
        let control = call
            .control
            .clone()
            .ok_or_else(|| self.protocol("a terminal's answer named no control subject"))?;
        let (sender, events) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Dropping the terminal drops the call, which cancels it.
                let frame = tokio::select! {
                    () = sender.closed() => return,
                    frame = call.next() => frame,
                };
                let Ok(Frame::Item(event)) = frame else {
                    return;
                };
                let Ok(event) = this.decode::<ExecEvent>(&event) else {
                    return;
                };
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(NatsTerminal {
            client: self.clone(),
            control,
            events,
        })
    }

    /// Sends one of a terminal's inputs to `control` and waits until it
    /// is applied.
    async fn input(&self, control: &Subject, input: &Control) -> Result<(), ClientError> {
        let payload = serde_json::to_vec(input).map_err(|e| self.protocol(e))?;
        let reply = self
            .nats
            .request(control.clone(), payload.into())
            .await
            .map_err(|e| self.unreachable(format!("a terminal's input: {e}")))?;
        if reply.payload.is_empty() {
            return Ok(());
        }
        let body: ErrorResponse = self.decode(&reply.payload)?;
        Err(ClientError::Api {
            status: berth_server::status_for(&body.error.code).as_u16(),
            code: body.error.code,
            message: body.error.message,
        })
    }

    /// The nodes of the cluster the service serves, by name; `None` when
    /// it serves none.
    pub async fn nodes(&self) -> Result<Option<Vec<NodeInfo>>, ClientError> {
        let list: NodeList = self.unary(Op::Nodes, &serde_json::json!({})).await?;
        Ok(list.clustered.then_some(list.nodes))
    }

    /// Registers a job from its spec (standing on its own: repositories
    /// are absolute paths or URLs) and starts a run of it.
    pub async fn start_job(&self, spec: &JobSpec) -> Result<Run, ClientError> {
        self.unary(Op::JobStart, spec).await
    }

    /// Starts a new run of a registered job.
    pub async fn run_job(&self, job: &str) -> Result<Run, ClientError> {
        self.unary(Op::JobRerun, &job_args(job)).await
    }

    pub async fn jobs(&self) -> Result<Vec<JobSummary>, ClientError> {
        Ok(self
            .unary::<JobList>(Op::JobList, &serde_json::json!({}))
            .await?
            .jobs)
    }

    /// A job's runs and the scheduled times at which none started.
    pub async fn runs(&self, job: &str) -> Result<RunList, ClientError> {
        self.unary(Op::JobRuns, &job_args(job)).await
    }

    /// Sets (or with `None` removes) a job's schedule.
    pub async fn schedule(&self, job: &str, cron: Option<&str>) -> Result<JobRecord, ClientError> {
        let args = ScheduleArgs {
            job: job.to_owned(),
            cron: cron.map(str::to_owned),
        };
        self.unary(Op::JobSchedule, &args).await
    }

    pub async fn job_run(&self, run: &str) -> Result<RunDetails, ClientError> {
        self.unary(
            Op::RunShow,
            &RunArgs {
                run: run.to_owned(),
            },
        )
        .await
    }

    /// A run's live state: a snapshot, then each change, ending once the
    /// run has ended.
    pub async fn run_events(
        &self,
        run: &str,
    ) -> Result<BoxStream<'static, Result<RunEvent, ClientError>>, ClientError> {
        self.items(
            Op::RunEvents,
            &RunArgs {
                run: run.to_owned(),
            },
        )
        .await
    }

    /// Cancels a run, or one task of it.
    pub async fn cancel_run(
        &self,
        run: &str,
        task: Option<&str>,
    ) -> Result<RunDetails, ClientError> {
        self.unary(Op::RunCancel, &run_task_args(run, task)).await
    }

    /// Queues again a run's failed tasks, or one task.
    pub async fn retry_run(
        &self,
        run: &str,
        task: Option<&str>,
    ) -> Result<RunDetails, ClientError> {
        self.unary(Op::RunRetry, &run_task_args(run, task)).await
    }

    /// Pushes each completed task's change as `branch` of its repository.
    pub async fn publish(
        &self,
        run: &str,
        branch: &str,
        message: Option<&str>,
    ) -> Result<Vec<Published>, ClientError> {
        let args = PublishArgs {
            run: run.to_owned(),
            branch: branch.to_owned(),
            message: message.map(str::to_owned),
        };
        Ok(self
            .unary::<PublishResponse>(Op::RunPublish, &args)
            .await?
            .published)
    }

    /// Every completed task's patch of a run, one after the other.
    pub async fn run_patch(&self, run: &str) -> Result<Vec<u8>, ClientError> {
        let patch = self
            .bytes(
                Op::RunPatch,
                &RunArgs {
                    run: run.to_owned(),
                },
            )
            .await?;
        self.read_all(patch).await
    }

    pub async fn task(&self, run: &str, task: &str) -> Result<TaskDetails, ClientError> {
        self.unary(Op::TaskShow, &task_args(run, task)).await
    }

    /// A page of a task's log: at most 1000 entries after `after`.
    pub async fn log_page(
        &self,
        run: &str,
        task: &str,
        after: u64,
    ) -> Result<LogPage, ClientError> {
        let args = LogArgs {
            run: run.to_owned(),
            task: task.to_owned(),
            after,
            follow: false,
        };
        self.unary(Op::TaskLog, &args).await
    }

    /// A task's log after `after`, as it is written, then its `end`.
    pub async fn follow_log(
        &self,
        run: &str,
        task: &str,
        after: u64,
    ) -> Result<BoxStream<'static, Result<LogLine, ClientError>>, ClientError> {
        let args = LogArgs {
            run: run.to_owned(),
            task: task.to_owned(),
            after,
            follow: true,
        };
        self.items(Op::TaskLog, &args).await
    }

    /// A task's patch; empty when it made none.
    pub async fn task_patch(&self, run: &str, task: &str) -> Result<Vec<u8>, ClientError> {
        let patch = self.bytes(Op::TaskPatch, &task_args(run, task)).await?;
        self.read_all(patch).await
    }

    /// Sends a request as it came (its headers and payload) and hands back
    /// its answer's frames as they arrive: a controller forwarding to a
    /// node's service. An error the service answered keeps its code; one
    /// reaching it is `node_unreachable`. What the client types (`inputs`)
    /// is passed on once the service named its control subject, one at a
    /// time. Dropping the stream before its end cancels the request there.
    pub async fn forward(
        &self,
        op: Op,
        headers: HeaderMap,
        payload: Bytes,
        inputs: Inputs,
    ) -> BoxStream<'static, crate::Frame> {
        let call = match self.send(op, headers, payload).await {
            Ok(call) => call,
            Err(err) => {
                return stream::once(async move { crate::Frame::Failed(forwarded(err)) }).boxed();
            }
        };
        let this = self.clone();
        stream::unfold(Some((call, Some(inputs))), move |state| {
            let this = this.clone();
            async move {
                let (mut call, mut inputs) = state?;
                let frame = call.next().await;
                if let Some(control) = &call.control
                    && let Some(inputs) = inputs.take()
                {
                    this.relay(control.clone(), inputs, call.stop.clone());
                }
                Some(match frame {
                    Ok(Frame::Item(item)) => (crate::Frame::Item(item), Some((call, inputs))),
                    Ok(Frame::Done(result)) => (crate::Frame::Done(result), None),
                    Err(err) => (crate::Frame::Failed(forwarded(err)), None),
                })
            }
        })
        .boxed()
    }

    /// Passes inputs on to `control`, each answered as the service there
    /// answered it, until `stop`.
    fn relay(&self, control: Subject, mut inputs: Inputs, stop: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let input = tokio::select! {
                    () = stop.cancelled() => return,
                    input = inputs.recv() => match input {
                        Some(input) => input,
                        None => return,
                    },
                };
                let outcome = this.input(&control, &input.control).await;
                let _ = input.applied.send(outcome.map_err(forwarded));
            }
        });
    }

    /// An operation answered once.
    async fn unary<T: DeserializeOwned>(
        &self,
        op: Op,
        args: &impl Serialize,
    ) -> Result<T, ClientError> {
        let mut call = self.call(op, args).await?;
        let done = call.done().await?;
        // `()` answers with an empty payload.
        let done = if done.is_empty() {
            Bytes::from_static(b"null")
        } else {
            done
        };
        self.decode(&done)
    }

    /// A command's events, from the first frame of `call` on: the first
    /// comes before the stream is handed back, so that a refusal (no such
    /// workspace) is this call's error.
    async fn events(
        &self,
        mut call: Call,
        cancel: CancellationToken,
    ) -> Result<ExecStream, ClientError> {
        let first = call.next().await?;
        let (sender, receiver) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            let mut frame = Ok(first);
            loop {
                // A broken stream ends the events without an exit, which
                // the caller reports.
                let Ok(Frame::Item(event)) = frame else {
                    return;
                };
                let Ok(event) = this.decode::<ExecEvent>(&event) else {
                    return;
                };
                if sender.send(event).await.is_err() {
                    return;
                }
                frame = tokio::select! {
                    () = cancel.cancelled() => return,
                    next = call.next() => next,
                };
            }
        });
        Ok(receiver)
    }

    /// An operation answered with JSON items, decoded as they arrive; the
    /// first comes before the stream is handed back, so that a refusal is
    /// this call's error. Dropping the stream cancels the operation.
    async fn items<T: DeserializeOwned + Send + 'static>(
        &self,
        op: Op,
        args: &impl Serialize,
    ) -> Result<BoxStream<'static, Result<T, ClientError>>, ClientError> {
        let mut call = self.call(op, args).await?;
        let first = call.next().await?;
        let state = (self.clone(), call, Some(first));
        Ok(stream::unfold(Some(state), |state| async move {
            let (this, mut call, first) = state?;
            let frame = match first {
                Some(first) => Ok(first),
                None => call.next().await,
            };
            match frame {
                Ok(Frame::Item(item)) => Some((this.decode(&item), Some((this, call, None)))),
                Ok(Frame::Done(_)) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
        .boxed())
    }

    /// Everything a byte stream holds.
    async fn read_all(&self, mut from: ReadStream) -> Result<Vec<u8>, ClientError> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes)
            .await
            .map_err(|e| self.protocol(e))?;
        Ok(bytes)
    }

    /// An operation answered with bytes, read as they are consumed.
    async fn bytes(&self, op: Op, args: &impl Serialize) -> Result<ReadStream, ClientError> {
        let mut call = self.call(op, args).await?;
        let first = call.next().await?;
        let (sender, stream) = ReadStream::channel();
        tokio::spawn(async move {
            let mut frame = Ok(first);
            loop {
                match frame {
                    Ok(Frame::Item(chunk)) => {
                        if !sender.send(chunk.to_vec()).await {
                            return;
                        }
                    }
                    Ok(Frame::Done(_)) => return sender.finish().await,
                    Err(e) => return sender.fail(std::io::Error::other(e)).await,
                }
                frame = call.next().await;
            }
        });
        Ok(stream)
    }

    async fn call(&self, op: Op, args: &impl Serialize) -> Result<Call, ClientError> {
        let payload = serde_json::to_vec(args).map_err(|e| self.protocol(e))?;
        self.send(op, HeaderMap::new(), payload.into()).await
    }

    async fn send(&self, op: Op, headers: HeaderMap, payload: Bytes) -> Result<Call, ClientError> {
        let subject = format!("{}.{}", self.prefix, op.subject());
        let inbox = self.nats.new_inbox();
        let answers = self
            .nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.unreachable(e))?;
        self.nats
            .publish_with_reply_and_headers(subject.clone(), inbox, headers, payload)
            .await
            .map_err(|e| self.unreachable(e))?;
        let state = Arc::new(CallState::default());
        let stop = CancellationToken::new();
        Ok(Call {
            client: self.clone(),
            subject,
            answers,
            next_seq: 0,
            acked: 0,
            control: None,
            wait: FIRST_FRAME,
            state,
            stop: stop.clone(),
            _guard: stop.drop_guard(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(payload).map_err(|e| self.protocol(e))
    }

    fn protocol(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            server: self.server.clone(),
            detail: detail.to_string(),
        }
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            detail: detail.to_string(),
        }
    }
}

/// An error of a forwarded request: the service's, with its code, or
/// `node_unreachable`.
fn forwarded(err: ClientError) -> ErrorBody {
    match err {
        ClientError::Api { code, message, .. } => ErrorBody { code, message },
        other => ErrorBody {
            code: "node_unreachable".into(),
            message: other.to_string(),
        },
    }
}

/// A program in a workspace's terminal, through the NATS service: its
/// output, then its `Exit`, as [`NatsTerminal::next`] gives them; what is
/// typed goes one input at a time, each once the last was applied.
/// Dropping it ends the program.
pub struct NatsTerminal {
    client: NatsClient,
    control: Subject,
    events: mpsc::Receiver<ExecEvent>,
}

impl NatsTerminal {
    /// The program's next output (as `Stdout`), then its `Exit`; `None`
    /// once its events ended without one.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Writes bytes to the terminal's input.
    pub async fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        for chunk in bytes.chunks(INPUT_CHUNK) {
            let data = Output(chunk.to_vec());
            self.client
                .input(&self.control, &Control::Input { data })
                .await?;
        }
        Ok(())
    }

    /// Changes the terminal's size.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let resize = Control::Resize { rows, cols };
        self.client.input(&self.control, &resize).await
    }

    /// Sends a signal (such as 2, SIGINT) to the program.
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        let signal = Control::Signal { signal };
        self.client.input(&self.control, &signal).await
    }

    /// Ends the terminal's input, as Ctrl-D does.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        self.client.input(&self.control, &Control::Eof).await
    }
}

fn target(id: &str) -> Target {
    Target { id: id.to_owned() }
}

fn session_args(id: &str, session: &str) -> SessionArgs {
    SessionArgs {
        id: id.to_owned(),
        session: session.to_owned(),
    }
}

fn job_args(job: &str) -> JobArgs {
    JobArgs {
        job: job.to_owned(),
    }
}

fn run_task_args(run: &str, task: Option<&str>) -> RunTaskArgs {
    RunTaskArgs {
        run: run.to_owned(),
        task: task.map(str::to_owned),
    }
}

fn task_args(run: &str, task: &str) -> TaskArgs {
    TaskArgs {
        run: run.to_owned(),
        task: task.to_owned(),
    }
}

fn path_args(id: &str, path: &str) -> PathArgs {
    PathArgs {
        id: id.to_owned(),
        path: path.to_owned(),
    }
}

/// A frame of an answer, as the caller sees it (heartbeats are taken care
/// of by [`Call`]).
enum Frame {
    Item(Bytes),
    Done(Bytes),
}

/// What the keepalive task shares with its call.
#[derive(Default)]
struct CallState {
    received: AtomicU64,
    finished: AtomicBool,
}

/// One request's answer being received. Dropped before its last frame, it
/// tells the service to cancel.
struct Call {
    client: NatsClient,
    subject: String,
    answers: async_nats::Subscriber,
    next_seq: u64,
    acked: u64,
    /// Where acknowledgements and `cancel` go, once the first frame named it.
    control: Option<Subject>,
    /// How long the service may be silent.
    wait: Duration,
    state: Arc<CallState>,
    /// Stops the keepalive task (which then sends `cancel` if the answer
    /// is not finished).
    stop: CancellationToken,
    _guard: DropGuard,
}

impl Call {
    /// The answer's next item, or its result.
    async fn next(&mut self) -> Result<Frame, ClientError> {
        if self.state.finished.load(Ordering::Relaxed) {
            return Err(self.client.protocol("read past the end of an answer"));
        }
        loop {
            let message = tokio::time::timeout(self.wait, self.answers.next())
                .await
                .map_err(|_| {
                    self.client.unreachable(format!(
                        "no word from the berth service on {} for {:?}",
                        self.subject, self.wait
                    ))
                })?
                .ok_or_else(|| self.client.unreachable("the NATS connection closed"))?;
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                self.state.finished.store(true, Ordering::Relaxed);
                return Err(self
                    .client
                    .unreachable(format!("no berth service answers on {}", self.subject)));
            }
            let headers = message.headers.clone().unwrap_or_default();
            let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
            let seq = header(SEQ).and_then(|seq| seq.parse::<u64>().ok());
            if seq != Some(self.next_seq) {
                self.state.finished.store(true, Ordering::Relaxed);
                return Err(self.client.protocol(format!(
                    "frame {} of {} arrived as {seq:?}: frames were lost",
                    self.next_seq, self.subject
                )));
            }
            if self.next_seq == 0 {
                self.begin(header(CONTROL), header(KEEPALIVE))?;
            }
            self.next_seq += 1;
            self.state.received.store(self.next_seq, Ordering::Relaxed);
            if self.next_seq - self.acked >= WINDOW / 2 {
                self.acked = self.next_seq;
                self.keepalive_now().await;
            }
            match header(EVENT).as_deref() {
                Some("alive") => continue,
                Some("item") => return Ok(Frame::Item(message.payload)),
                Some("done") => {
                    self.state.finished.store(true, Ordering::Relaxed);
                    return Ok(Frame::Done(message.payload));
                }
                Some("error") => {
                    self.state.finished.store(true, Ordering::Relaxed);
                    let body: ErrorResponse = self.client.decode(&message.payload)?;
                    let code = header(ERROR_CODE).unwrap_or(body.error.code);
                    return Err(ClientError::Api {
                        status: berth_server::status_for(&code).as_u16(),
                        code,
                        message: body.error.message,
                    });
                }
                other => {
                    self.state.finished.store(true, Ordering::Relaxed);
                    return Err(self
                        .client
                        .protocol(format!("a frame of unknown kind {other:?}")));
                }
            }
        }
    }

    /// Skips to the result.
    async fn done(&mut self) -> Result<Bytes, ClientError> {
        loop {
            if let Frame::Done(result) = self.next().await? {
                return Ok(result);
            }
        }
    }

    /// The first frame named the control subject and heartbeat interval:
    /// the keepalive task starts.
    fn begin(
        &mut self,
        control: Option<String>,
        keepalive: Option<String>,
    ) -> Result<(), ClientError> {
        let (Some(control), Some(keepalive)) =
            (control, keepalive.and_then(|ms| ms.parse::<u64>().ok()))
        else {
            return Err(self
                .client
                .protocol("the first frame names no control subject or heartbeat interval"));
        };
        let keepalive = Duration::from_millis(keepalive.max(1));
        self.wait = keepalive * (LOST_AFTER + 1);
        let control = Subject::from(control);
        self.control = Some(control.clone());
        let nats = self.client.nats.clone();
        let state = self.state.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            // The first acknowledgement one period from now: the service
            // needs none sooner.
            let mut ticks =
                tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => {
                        let received = state.received.load(Ordering::Relaxed);
                        send(&nats, &control, &Control::Ack { received }).await;
                    }
                }
            }
            if !state.finished.load(Ordering::Relaxed) {
                send(&nats, &control, &Control::Cancel).await;
            }
        });
        Ok(())
    }

    /// Acknowledges what has arrived at once (the window is half used).
    async fn keepalive_now(&self) {
        if let Some(control) = &self.control {
            let received = self.next_seq;
            send(&self.client.nats, control, &Control::Ack { received }).await;
        }
    }
}

async fn send(nats: &async_nats::Client, control: &Subject, message: &Control) {
    if let Ok(payload) = serde_json::to_vec(message) {
        let _ = nats.publish(control.clone(), payload.into()).await;
    }
}
