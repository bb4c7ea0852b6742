//! The service: one NATS service endpoint per operation, each request
//! translated into one provider call and its answer into frames
//! ([`crate::protocol`]). Errors are the HTTP API's: the same stable code
//! and message, through `berth_server`'s one mapping.

use crate::protocol::{
    CONTROL, Control, DEFAULT_PREFIX, ERROR_CODE, EVENT, ExecArgs, ForkArgs, INPUT_WINDOW,
    InfoArgs, KEEPALIVE, LOST_AFTER, ListArgs, Op, PathArgs, ResetArgs, SEQ, SERVICE_NAME,
    SessionArgs, SessionExecArgs, SessionOpenArgs, SnapshotArgs, Target, TerminalArgs, WINDOW,
};
use async_nats::service::ServiceExt as _;
use async_nats::{HeaderMap, Subject};
use berth_client::ExportCounts;
use berth_core::{ExecEvent, Output};
use berth_provider::{Progress, Provider, ServiceError, Terminal};
use berth_server::ErrorBody;
use berth_server::agent::InterruptResponse;
use berth_server::cluster::NodeList;
use berth_server::layers::{CacheGcParams, ChangeList, GcResponse};
use berth_server::v1::{
    CreateWorkspaceParams, FetchResponse, FileList, RuntimeList, WorkspaceList,
};
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{Future, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Bytes of a file or patch per frame (NATS's default payload limit is
/// 1 MiB).
const CHUNK: usize = 128 * 1024;

/// Provisioning events buffered before provisioning waits for the client.
const PROGRESS_BUFFER: usize = 256;

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The subject prefix of the endpoints: NATS subject tokens
    /// (`[A-Za-z0-9_-]`) separated by dots.
    pub prefix: String,
    /// How often a running operation sends a heartbeat, and how often its
    /// client must be heard from.
    pub keepalive: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            prefix: DEFAULT_PREFIX.into(),
            keepalive: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "NATS subject prefix {prefix:?}: expected tokens of letters, digits, `_` or `-` \
         separated by dots, such as `berth.v1`"
    )]
    Prefix { prefix: String },
    #[error("cannot start the NATS service: {0}")]
    Start(String),
}

/// Whether `prefix` is a literal NATS subject of safe tokens.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// What answers the service's requests: the provider in this process, or
/// a cluster's controller forwarding to the node holding a workspace.
pub trait Handler: Send + Sync + 'static {
    /// The frames answering a request for `op`; `inputs` are what its
    /// client types (a terminal's), dropped by an operation taking none.
    fn answer(
        &self,
        op: Op,
        message: &async_nats::Message,
        inputs: Inputs,
    ) -> BoxStream<'static, Frame>;
}

impl Handler for Provider {
    fn answer(
        &self,
        op: Op,
        message: &async_nats::Message,
        inputs: Inputs,
    ) -> BoxStream<'static, Frame> {
        answer(op, self, message, inputs)
    }
}

/// One of a terminal's inputs ([`Control::Input`], `Resize`, `Signal` or
/// `Eof`), and where to say it was applied or why not.
pub struct Input {
    pub control: Control,
    pub applied: oneshot::Sender<Result<(), ErrorBody>>,
}

/// The inputs a client sends while its answer runs, at most
/// [`INPUT_WINDOW`] held.
pub type Inputs = mpsc::Receiver<Input>;

/// Serves `handler` on `client` until `shutdown` is cancelled.
pub async fn serve(
    client: async_nats::Client,
    handler: impl Handler,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    start(client, handler, config).await?.run(shutdown).await
}

/// The service, its endpoints registered (requests from now on are
/// queued for it), not yet answering.
pub struct NatsService {
    client: async_nats::Client,
    handler: Box<dyn Handler>,
    config: ServiceConfig,
    service: async_nats::service::Service,
    requests: BoxStream<'static, (Op, async_nats::service::Request)>,
}

/// Registers the service and its endpoints on `client`.
pub async fn start(
    client: async_nats::Client,
    handler: impl Handler,
    config: ServiceConfig,
) -> Result<NatsService, ServeError> {
    if !valid_prefix(&config.prefix) {
        return Err(ServeError::Prefix {
            prefix: config.prefix,
        });
    }
    let service = client
        .service_builder()
        .description("berth: fresh, isolated, pre-provisioned workspaces for coding agents")
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    let group = service.group(&config.prefix);
    let mut endpoints = Vec::new();
    for op in Op::ALL {
        let endpoint = group
            .endpoint_builder()
            .name(op.name())
            .add(op.subject())
            .await
            .map_err(|e| ServeError::Start(format!("{}: {e}", op.subject())))?;
        endpoints.push(endpoint.map(move |request| (op, request)));
    }
    // Registered once the server has seen the subscriptions.
    client
        .flush()
        .await
        .map_err(|e| ServeError::Start(e.to_string()))?;
    Ok(NatsService {
        client,
        handler: Box::new(handler),
        config,
        service,
        requests: stream::select_all(endpoints).boxed(),
    })
}

impl NatsService {
    /// Answers requests, each on a task of its own, until `shutdown` is
    /// cancelled; requests still running then finish on their own.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ServeError> {
        tracing::info!(prefix = %self.config.prefix, "serving the berth API over NATS");
        loop {
            let (op, request) = tokio::select! {
                () = shutdown.cancelled() => break,
                next = self.requests.next() => match next {
                    Some(next) => next,
                    None => break,
                },
            };
            let Some(reply) = request.message.reply.clone() else {
                // Nowhere to answer: nothing is done.
                continue;
            };
            let (typed, inputs) = mpsc::channel(INPUT_WINDOW);
            let frames = self.handler.answer(op, &request.message, inputs);
            let answer = Answer {
                typed,
                client: self.client.clone(),
                reply,
                prefix: self.config.prefix.clone(),
                keepalive: self.config.keepalive,
                request,
            };
            tokio::spawn(answer.send(frames));
        }
        drop(self.requests);
        self.service
            .stop()
            .await
            .map_err(|e| ServeError::Start(e.to_string()))
    }
}

/// One frame of an answer, before it is sent.
pub enum Frame {
    /// A progress or output event, or a chunk of bytes.
    Item(Bytes),
    /// The result, as JSON (empty for none).
    Done(Bytes),
    Failed(ErrorBody),
}

/// The frames answering one request.
fn answer(
    op: Op,
    provider: &Provider,
    message: &async_nats::Message,
    inputs: Inputs,
) -> BoxStream<'static, Frame> {
    let provider = provider.clone();
    let payload = message.payload.clone();
    match op {
        Op::Create => with_args(op, &payload, |params: CreateWorkspaceParams| {
            let (spec, options) = params.into_parts();
            with_progress(
                move |progress| async move { provider.create(spec, options, progress).await },
            )
        }),
        Op::List => with_args(op, &payload, |args: ListArgs| {
            done(async move {
                Ok(WorkspaceList {
                    workspaces: provider.list_labelled(args.all, &args.labels).await?,
                })
            })
        }),
        Op::Show => with_args(op, &payload, |args: Target| {
            done(async move { provider.describe(&args.id).await })
        }),
        Op::Start => with_args(op, &payload, |args: Target| {
            done(async move { provider.start(&args.id).await })
        }),
        Op::Stop => with_args(op, &payload, |args: Target| {
            done(async move { provider.stop(&args.id).await })
        }),
        Op::Remove => with_args(op, &payload, |args: Target| {
            done(async move { provider.remove(&args.id).await })
        }),
        Op::Fetch => with_args(op, &payload, |args: Target| {
            with_progress(move |progress| async move {
                let results = provider.fetch(&args.id, progress).await?;
                Ok(FetchResponse { results })
            })
        }),
        Op::Runtimes => done(async move {
            Ok(RuntimeList {
                runtimes: provider.runtimes().await,
            })
        }),
        Op::Exec => with_args(op, &payload, |args: ExecArgs| exec(provider, args)),
        Op::FilesList => with_args(op, &payload, |args: PathArgs| {
            done(async move {
                Ok(FileList {
                    entries: provider.list_files(&args.id, &args.path).await?,
                })
            })
        }),
        Op::FilesRead => with_args(op, &payload, |args: PathArgs| {
            bytes(async move { provider.read_file(&args.id, &args.path).await })
        }),
        Op::FilesWrite => {
            let args = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(crate::protocol::ARGS))
                .map(|value| Bytes::copy_from_slice(value.as_str().as_bytes()))
                .unwrap_or_default();
            with_args(op, &args, |args: PathArgs| {
                done(async move {
                    provider
                        .write_file(&args.id, &args.path, payload.to_vec())
                        .await
                })
            })
        }
        Op::FilesRemove => with_args(op, &payload, |args: PathArgs| {
            done(async move { provider.remove_file(&args.id, &args.path).await })
        }),
        Op::Snapshot => with_args(op, &payload, |args: Target| {
            done(async move { provider.snapshot(&args.id).await })
        }),
        Op::Fork => with_args(op, &payload, |args: ForkArgs| {
            done(async move {
                Ok(WorkspaceList {
                    workspaces: provider.fork(&args.id, args.count).await?,
                })
            })
        }),
        Op::Reset => with_args(op, &payload, |args: ResetArgs| {
            done(async move { provider.reset(&args.id, args.to.as_deref()).await })
        }),
        Op::Changes => with_args(op, &payload, |args: Target| {
            done(async move {
                Ok(ChangeList {
                    changes: provider.changes(&args.id).await?,
                })
            })
        }),
        Op::Diff => with_args(op, &payload, |args: Target| {
            bytes(async move { provider.diff(&args.id).await })
        }),
        Op::Gc => done(async move {
            Ok(GcResponse {
                runtimes: provider.gc().await?.runtimes,
            })
        }),
        Op::GcCache => with_args(op, &payload, |args: CacheGcParams| {
            done(async move { provider.gc_cache(args.budget).await })
        }),
        Op::Info => with_args(op, &payload, |args: InfoArgs| {
            done(async move { provider.agent_info(&args.id, args.detect).await })
        }),
        Op::SnapshotRemove => with_args(op, &payload, |args: SnapshotArgs| {
            done(async move { provider.remove_snapshot(&args.snapshot).await })
        }),
        Op::Export => with_args(op, &payload, |args: Target| export(provider, args)),
        Op::SessionOpen => with_args(op, &payload, |args: SessionOpenArgs| {
            done(async move { provider.open_session(&args.id, args.params).await })
        }),
        Op::SessionClose => with_args(op, &payload, |args: SessionArgs| {
            done(async move {
                provider
                    .close_session(&args.id, &args.session)
                    .await
                    .map(drop)
            })
        }),
        Op::SessionExec => with_args(op, &payload, |args: SessionExecArgs| {
            events(
                async move {
                    provider
                        .session_exec(&args.id, &args.session, args.command)
                        .await
                },
                (),
            )
        }),
        Op::SessionInterrupt => with_args(op, &payload, |args: SessionArgs| {
            done(async move {
                let interrupted = provider.interrupt_session(&args.id, &args.session).await?;
                Ok::<_, ServiceError>(InterruptResponse { interrupted })
            })
        }),
        Op::Terminal => with_args(op, &payload, |args: TerminalArgs| {
            terminal(provider, args, inputs)
        }),
        // A provider serves no cluster, as an HTTP server without one.
        Op::Nodes => done(async {
            Ok::<_, ServiceError>(NodeList {
                clustered: false,
                nodes: Vec::new(),
            })
        }),
        Op::JobStart
        | Op::JobList
        | Op::JobRerun
        | Op::JobRuns
        | Op::JobSchedule
        | Op::RunShow
        | Op::RunEvents
        | Op::RunCancel
        | Op::RunRetry
        | Op::RunPublish
        | Op::RunPatch
        | Op::TaskShow
        | Op::TaskLog
        | Op::TaskPatch => stream::once(async move {
            Frame::Failed(ErrorBody {
                code: "unsupported".into(),
                message: format!(
                    "`{}`: this service runs no jobs; ask the cluster's server (berth serve)",
                    op.subject()
                ),
            })
        })
        .boxed(),
    }
}

/// The request's arguments, or an `invalid_body` error naming what is
/// wrong with them.
pub(crate) fn with_args<A: DeserializeOwned>(
    op: Op,
    payload: &[u8],
    then: impl FnOnce(A) -> BoxStream<'static, Frame>,
) -> BoxStream<'static, Frame> {
    // An operation without arguments may be sent an empty payload.
    let payload = if payload.is_empty() { b"{}" } else { payload };
    match serde_json::from_slice(payload) {
        Ok(args) => then(args),
        Err(e) => stream::once(async move {
            Frame::Failed(ErrorBody {
                code: "invalid_body".into(),
                message: format!("the {} request: {e}", op.subject()),
            })
        })
        .boxed(),
    }
}

/// An operation answered once, when done. It runs on a task of its own, so
/// that it completes even if its client goes away.
fn done<T: Serialize + Send + 'static>(
    operation: impl Future<Output = Result<T, ServiceError>> + Send + 'static,
) -> BoxStream<'static, Frame> {
    answered(operation)
}

/// [`done`], for an operation of any service's errors.
pub(crate) fn answered<T, E>(
    operation: impl Future<Output = Result<T, E>> + Send + 'static,
) -> BoxStream<'static, Frame>
where
    T: Serialize + Send + 'static,
    E: Into<ErrorBody> + Send + 'static,
{
    stream::once(async move { finished(tokio::spawn(operation).await) }).boxed()
}

/// An operation whose progress events stream as `item`s before its result;
/// it runs on a task of its own, so that it completes even if its client
/// goes away.
fn with_progress<T, Fut>(operation: impl FnOnce(Progress) -> Fut) -> BoxStream<'static, Frame>
where
    T: Serialize + Send + 'static,
    Fut: Future<Output = Result<T, ServiceError>> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(PROGRESS_BUFFER);
    let task = tokio::spawn(operation(Progress::to(sender)));
    tokio_stream::wrappers::ReceiverStream::new(receiver)
        .map(|event| Frame::Item(json(&event)))
        .chain(stream::once(async move { finished(task.await) }))
        .boxed()
}

fn finished<T: Serialize, E: Into<ErrorBody>>(
    outcome: Result<Result<T, E>, tokio::task::JoinError>,
) -> Frame {
    match outcome {
        Ok(Ok(value)) => Frame::Done(json(&value)),
        Ok(Err(err)) => Frame::Failed(err.into()),
        Err(err) => Frame::Failed(ErrorBody {
            code: "internal".into(),
            message: format!("the operation's task failed: {err}"),
        }),
    }
}

/// A command's events as `item`s. Dropping the stream (the client went
/// away or cancelled) cancels the command.
fn exec(provider: Provider, args: ExecArgs) -> BoxStream<'static, Frame> {
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    events(
        async move { provider.exec(&args.id, args.request, cancel).await },
        guard,
    )
}

/// A command's events as `item`s, then `done`; `guard` is dropped with
/// the stream (the client went away or cancelled), and the receiver of
/// the events with it, which interrupts a session's command.
fn events<W: Send + 'static>(
    start: impl Future<Output = Result<(W, berth_core::ExecStream), ServiceError>> + Send + 'static,
    guard: impl Send + 'static,
) -> BoxStream<'static, Frame> {
    stream::once(async move {
        match start.await {
            Ok((_, events)) => stream::unfold((events, guard), |(mut events, guard)| async move {
                let event = events.recv().await?;
                Some((Frame::Item(json(&event)), (events, guard)))
            })
            .chain(stream::once(async { Frame::Done(Bytes::new()) }))
            .boxed(),
            Err(err) => stream::once(async move { Frame::Failed(err.into()) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}

/// A terminal's output as `stdout` items (the first empty: it started),
/// then its `exit` and `done`; what the client types is applied as it
/// comes. Dropping the stream (the client went away or cancelled) ends
/// the program.
fn terminal(provider: Provider, args: TerminalArgs, inputs: Inputs) -> BoxStream<'static, Frame> {
    let started = ExecEvent::Stdout {
        data: Output(Vec::new()),
    };
    stream::once(async move {
        match provider.terminal(&args.id, args.params).await {
            Ok(terminal) => stream::once(async move { Frame::Item(json(&started)) })
                .chain(stream::unfold(
                    Some((terminal, inputs)),
                    |state| async move {
                        let (mut terminal, mut inputs) = state?;
                        loop {
                            tokio::select! {
                                event = terminal.next() => {
                                    let event = event?;
                                    let ended = matches!(event, ExecEvent::Exit(_));
                                    let next = (!ended).then_some((terminal, inputs));
                                    return Some((Frame::Item(json(&event)), next));
                                }
                                Some(input) = inputs.recv() => {
                                    let applied = apply(&terminal, input.control);
                                    let _ = input.applied.send(applied);
                                }
                            }
                        }
                    },
                ))
                .chain(stream::once(async { Frame::Done(Bytes::new()) }))
                .boxed(),
            Err(err) => stream::once(async move { Frame::Failed(err.into()) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}

/// Applies one input to a terminal.
fn apply(terminal: &Terminal, control: Control) -> Result<(), ErrorBody> {
    Ok(match control {
        Control::Input { data } => terminal.write(&data.0),
        Control::Resize { rows, cols } => terminal.resize(rows, cols),
        Control::Signal { signal } => terminal.signal(signal),
        Control::Eof => terminal.close_stdin(),
        Control::Ack { .. } | Control::Cancel => Ok(()),
    }?)
}

/// The changes exported as an archive, in chunks as the client takes
/// them, then what it holds.
fn export(provider: Provider, args: Target) -> BoxStream<'static, Frame> {
    stream::once(async move {
        match provider.export_archive(&args.id).await {
            Ok(archive) => {
                let counts = ExportCounts {
                    entries: archive.summary.entries,
                    bytes: archive.summary.bytes,
                    deleted: archive.summary.deleted.len() as u64,
                };
                tokio_util::io::ReaderStream::with_capacity(archive.file, CHUNK)
                    .map(|chunk| match chunk {
                        Ok(chunk) => Frame::Item(chunk),
                        Err(e) => Frame::Failed(ErrorBody {
                            code: "internal".into(),
                            message: format!("reading the exported archive failed: {e}"),
                        }),
                    })
                    .chain(stream::once(async move { Frame::Done(json(&counts)) }))
                    .boxed()
            }
            Err(err) => stream::once(async move { Frame::Failed(err.into()) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}

/// Bytes held whole (a patch), in chunks, then `done`.
pub(crate) fn chunked(bytes: Vec<u8>) -> BoxStream<'static, Frame> {
    let chunks: Vec<Frame> = bytes
        .chunks(CHUNK)
        .map(|chunk| Frame::Item(Bytes::copy_from_slice(chunk)))
        .collect();
    stream::iter(chunks)
        .chain(stream::once(async { Frame::Done(Bytes::new()) }))
        .boxed()
}

/// What is read from a workspace (a file, a patch), in chunks, as the
/// client takes them. A read that fails midway ends with an error frame,
/// never early.
fn bytes(
    open: impl Future<Output = Result<berth_core::ReadStream, ServiceError>> + Send + 'static,
) -> BoxStream<'static, Frame> {
    stream::once(async move {
        match open.await {
            Ok(reader) => tokio_util::io::ReaderStream::with_capacity(reader, CHUNK)
                .map(|chunk| match chunk {
                    Ok(chunk) => Frame::Item(chunk),
                    Err(e) => Frame::Failed(ErrorBody {
                        code: "read_failed".into(),
                        message: format!("reading from the workspace failed: {e}"),
                    }),
                })
                .chain(stream::once(async { Frame::Done(Bytes::new()) }))
                .boxed(),
            Err(err) => stream::once(async move { Frame::Failed(err.into()) }).boxed(),
        }
    })
    .flatten()
    .boxed()
}

pub(crate) fn json<T: Serialize>(value: &T) -> Bytes {
    // Every type sent serialises; a failure would be a bug, reported as
    // the JSON of an error rather than a panic.
    serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode: {e}\"}}").into_bytes())
        .into()
}

/// Sends one request's frames to its reply subject, heeding the client's
/// acknowledgements and cancellation.
struct Answer {
    client: async_nats::Client,
    /// Where a terminal's inputs go.
    typed: mpsc::Sender<Input>,
    reply: Subject,
    prefix: String,
    keepalive: Duration,
    request: async_nats::service::Request,
}

impl Answer {
    async fn send(self, mut frames: BoxStream<'static, Frame>) {
        let control_subject = format!(
            "{}.control.{}",
            self.prefix,
            self.client
                .new_inbox()
                .rsplit('.')
                .next()
                .unwrap_or_default()
        );
        let mut control = match self.client.subscribe(control_subject.clone()).await {
            Ok(control) => control,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to a control subject");
                return;
            }
        };
        let mut sent: u64 = 0;
        let mut acked: u64 = 0;
        let mut silent: u32 = 0;
        // The first beat one period from now: an interval's immediate first
        // tick still waits for the timer's next millisecond.
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.keepalive, self.keepalive);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                biased;
                message = control.next() => {
                    let Some(message) = message else { return };
                    match serde_json::from_slice::<Control>(&message.payload) {
                        Ok(Control::Ack { received }) => {
                            acked = acked.max(received);
                            silent = 0;
                        }
                        Ok(Control::Cancel) => return,
                        Ok(input) => {
                            silent = 0;
                            self.take(input, message.reply).await;
                        }
                        Err(_) => {}
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    silent += 1;
                    if silent > LOST_AFTER {
                        tracing::debug!(subject = %self.request.message.subject, "the client is gone");
                        return;
                    }
                    ("alive", Bytes::new(), None)
                }
                frame = frames.next(), if sent.saturating_sub(acked) < WINDOW => match frame {
                    Some(Frame::Item(payload)) => ("item", payload, None),
                    Some(Frame::Done(payload)) => ("done", payload, None),
                    None => ("done", Bytes::new(), None),
                    Some(Frame::Failed(error)) => ("error", Bytes::new(), Some(error)),
                },
            };
            let (event, payload, error) = frame;
            let mut headers = HeaderMap::new();
            headers.insert(EVENT, event);
            headers.insert(SEQ, sent.to_string().as_str());
            if sent == 0 {
                headers.insert(CONTROL, control_subject.as_str());
                headers.insert(KEEPALIVE, self.keepalive.as_millis().to_string().as_str());
            }
            sent += 1;
            let published = match (event, error) {
                ("done", _) => {
                    // Through the service, which counts it in $SRV.STATS.
                    self.request
                        .respond_with_headers(Ok(payload), headers)
                        .await
                        .map_err(|e| e.to_string())
                }
                (_, Some(error)) => {
                    let status = berth_server::status_for(&error.code).as_u16();
                    headers.insert(ERROR_CODE, error.code.as_str());
                    headers.insert("Nats-Service-Error", one_line(&error.message).as_str());
                    headers.insert("Nats-Service-Error-Code", status.to_string().as_str());
                    let body = json(&berth_server::ErrorResponse { error });
                    self.client
                        .publish_with_headers(self.reply.clone(), headers, body)
                        .await
                        .map_err(|e| e.to_string())
                }
                _ => self
                    .client
                    .publish_with_headers(self.reply.clone(), headers, payload)
                    .await
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = published {
                tracing::warn!(error = %e, "cannot answer over NATS");
                return;
            }
            if event == "done" || event == "error" {
                return;
            }
        }
    }
}

impl Answer {
    /// Hands a terminal's input on, answering `reply` once it is applied,
    /// or at once when it is refused: the operation takes no input, or
    /// the client sent more than [`INPUT_WINDOW`] before their answers.
    async fn take(&self, control: Control, reply: Option<Subject>) {
        let (applied, outcome) = oneshot::channel();
        let refused = match self.typed.try_send(Input { control, applied }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(_)) => Some(ErrorBody {
                code: "invalid_request".into(),
                message: format!(
                    "more than {INPUT_WINDOW} inputs were sent before their answers; \
                     this one is dropped"
                ),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Some(ErrorBody {
                code: "invalid_request".into(),
                message: format!("{} takes no input", self.request.message.subject),
            }),
        };
        let Some(reply) = reply else { return };
        let client = self.client.clone();
        let answered = async move {
            let outcome = match refused {
                Some(error) => Err(error),
                None => outcome.await.unwrap_or_else(|_| {
                    Err(ErrorBody {
                        code: "wrong_state".into(),
                        message: "the terminal has ended".into(),
                    })
                }),
            };
            let body = match outcome {
                Ok(()) => Bytes::new(),
                Err(error) => json(&berth_server::ErrorResponse { error }),
            };
            if let Err(e) = client.publish(reply, body).await {
                tracing::debug!(error = %e, "cannot answer a terminal's input");
            }
        };
        // Applied on the answer's own task, later: the wait is elsewhere.
        tokio::spawn(answered);
    }
}

/// A message fit for a header value: one line.
fn one_line(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_literal_tokens() {
        assert!(valid_prefix("berth.v1"));
        assert!(valid_prefix("team-a.berth_2"));
        for bad in [
            "",
            "berth.",
            ".berth",
            "berth.*",
            "berth.>",
            "a b",
            "berth..v1",
        ] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}
