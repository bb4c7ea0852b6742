//! The operations: each sends its first frame under a fresh id and reads
//! the agent's frames for that id until the final one.

use crate::{AgentClient, ClientError};
use berth_core::ReadStream;
use berth_proto::frame::MAX_PAYLOAD;
use berth_proto::{
    AgentInfo, AgentMessage, ClientMessage, ExecEvent, ExecRequest, ExitStatus, FileEntry, Frame,
    SessionParams, Stream, TerminalParams, WatchEvent, WorkspacePath,
};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One operation's frames. Dropped before its final frame, it cancels the
/// operation in the agent.
#[derive(Debug)]
pub(crate) struct Op {
    client: AgentClient,
    id: u64,
    rx: mpsc::UnboundedReceiver<Frame<AgentMessage>>,
    finished: bool,
}

impl Op {
    pub(crate) fn new(
        client: AgentClient,
        id: u64,
        rx: mpsc::UnboundedReceiver<Frame<AgentMessage>>,
    ) -> Self {
        Op {
            client,
            id,
            rx,
            finished: false,
        }
    }

    /// The next frame; `Closed` when the connection is lost first.
    async fn next(&mut self) -> Result<Frame<AgentMessage>, ClientError> {
        let frame = self.rx.recv().await.ok_or(ClientError::Closed)?;
        if frame.message.is_final() {
            self.finished = true;
        }
        Ok(frame)
    }

    /// The next frame, which must come within `limit`.
    async fn next_within(
        &mut self,
        operation: &'static str,
        limit: Duration,
    ) -> Result<Frame<AgentMessage>, ClientError> {
        tokio::time::timeout(limit, self.next())
            .await
            .map_err(|_| ClientError::Timeout {
                operation,
                after: limit,
            })?
    }

    /// The next frame, which must come within the client's answer deadline.
    async fn next_answer(
        &mut self,
        operation: &'static str,
    ) -> Result<Frame<AgentMessage>, ClientError> {
        let limit = self.client.deadlines().answer;
        self.next_within(operation, limit).await
    }

    fn send(&self, message: ClientMessage, payload: &[u8]) -> Result<(), ClientError> {
        self.client.send(self.id, &message, payload)
    }

    /// Waits for the final frame, each frame within `limit`, failing on an
    /// error answer.
    async fn answer(
        mut self,
        operation: &'static str,
        limit: Duration,
    ) -> Result<Frame<AgentMessage>, ClientError> {
        loop {
            let frame = self.next_within(operation, limit).await?;
            match frame.message {
                AgentMessage::Error(body) => return Err(ClientError::Agent(body)),
                _ if frame.message.is_final() => return Ok(frame),
                _ => {}
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.client.send(self.id, &ClientMessage::Cancel, &[]);
        }
        self.client.forget(self.id);
    }
}

/// Waits for the `started` answer, at most `limit`, and returns the pid.
async fn started(
    op: &mut Op,
    operation: &'static str,
    limit: Duration,
) -> Result<u32, ClientError> {
    match op.next_within(operation, limit).await?.message {
        AgentMessage::Started { pid } => Ok(pid),
        AgentMessage::Error(body) => Err(ClientError::Agent(body)),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(message: &AgentMessage) -> ClientError {
    ClientError::Protocol(format!("{message:?}"))
}

/// A running command, session command or terminal.
#[derive(Debug)]
pub struct Process {
    /// The process id in the workspace (none for a session command, which
    /// runs inside the session's shell).
    pub pid: Option<u32>,
    /// Output as produced, then `Exit`. A terminal's output is `Stdout`.
    pub events: mpsc::Receiver<ExecEvent>,
    client: AgentClient,
    id: u64,
    cancel: CancellationToken,
}

impl Process {
    /// Writes bytes to the command's stdin (or the terminal's input).
    pub fn write(&self, bytes: &[u8]) -> Result<(), ClientError> {
        for chunk in bytes.chunks(MAX_PAYLOAD) {
            self.client.send(self.id, &ClientMessage::Stdin, chunk)?;
        }
        Ok(())
    }

    /// Closes stdin (for a terminal: sends end-of-file, Ctrl-D).
    pub fn close_stdin(&self) -> Result<(), ClientError> {
        self.client.send(self.id, &ClientMessage::CloseStdin, &[])
    }

    /// Sends a signal to the process group (for a session command: to the
    /// command, not the shell).
    pub fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.client
            .send(self.id, &ClientMessage::Signal { signal }, &[])
    }

    /// Resizes a terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.client
            .send(self.id, &ClientMessage::Resize { rows, cols }, &[])
    }

    /// Ends the process tree; `events` still ends with `Exit`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Reads every event to the end: stdout, stderr and the exit status.
    pub async fn output(mut self) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        collect(&mut self.events).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Reads an event stream to its end: stdout, stderr and the exit status.
/// The events of an agent's command always end with `Exit` (a lost
/// connection is an exit that says it was cancelled), so none is missing
/// here but for a forwarding task that died; that too reads as a loss.
pub async fn collect(events: &mut mpsc::Receiver<ExecEvent>) -> (Vec<u8>, Vec<u8>, ExitStatus) {
    match berth_core::output::collect(events).await {
        Ok(done) => (done.stdout, done.stderr, done.exit),
        Err(berth_core::MissingExit) => (Vec::new(), Vec::new(), lost()),
    }
}

/// The exit reported when the agent went away before the command ended.
fn lost() -> ExitStatus {
    ExitStatus {
        cancelled: true,
        ..Default::default()
    }
}

/// Forwards an operation's output frames as events until `Exit`; cancels
/// it when `cancel` fires or the receiver is dropped. Past `deadline` (a
/// command's timeout and the grace for ending it) the agent is taken for
/// unresponsive: the events end with a note on stderr and an exit that
/// says the command timed out, and the operation is cancelled.
///
/// A command may also run silent for as long as it likes (one without a
/// timeout has no deadline), but its agent must go on answering: after
/// [`Deadlines::answer`](crate::Deadlines::answer) without a frame the
/// client asks the agent for its info, which it answers at once, and one
/// that does not answer within that deadline ends the command's events
/// the same way, saying the agent stopped answering.
fn forward(
    mut op: Op,
    cancel: CancellationToken,
    deadline: Option<Instant>,
) -> mpsc::Receiver<ExecEvent> {
    let (tx, rx) = mpsc::channel(64);
    let started = Instant::now();
    let idle = op.client.deadlines().answer;
    tokio::spawn(async move {
        let mut cancelled = false;
        let mut quiet_until = Instant::now() + idle;
        // The check in flight: whether the agent answered.
        let mut check: Option<Pin<Box<dyn Future<Output = bool> + Send>>> = None;
        loop {
            let frame = tokio::select! {
                frame = op.next() => {
                    quiet_until = Instant::now() + idle;
                    check = None;
                    frame
                }
                () = tokio::time::sleep_until(quiet_until), if check.is_none() => {
                    let client = op.client.clone();
                    check = Some(Box::pin(async move { client.info(false).await.is_ok() }));
                    continue;
                }
                answered = async { check.as_mut()?.await.then_some(()) }, if check.is_some() => {
                    check = None;
                    if answered.is_some() {
                        quiet_until = Instant::now() + idle;
                        continue;
                    }
                    let note = format!(
                        "berth: the agent stopped answering {:?} after the command started (no answer to a check within {idle:?}); it may be stopped or overloaded\n",
                        started.elapsed()
                    );
                    let _ = tx.send(ExecEvent::output(Stream::Stderr, note.into_bytes())).await;
                    let _ = tx.send(ExecEvent::Exit(lost())).await;
                    return;
                }
                () = until(deadline) => {
                    let note = format!(
                        "berth: the agent did not report the command's end within {:?} of its start; it may be stopped or overloaded\n",
                        started.elapsed()
                    );
                    let _ = tx.send(ExecEvent::output(Stream::Stderr, note.into_bytes())).await;
                    let exit = ExitStatus {
                        timed_out: true,
                        ..lost()
                    };
                    let _ = tx.send(ExecEvent::Exit(exit)).await;
                    return;
                }
                () = cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    let _ = op.send(ClientMessage::Cancel, &[]);
                    continue;
                }
                () = tx.closed(), if !cancelled => {
                    cancelled = true;
                    let _ = op.send(ClientMessage::Cancel, &[]);
                    continue;
                }
            };
            let event = match frame {
                Ok(Frame {
                    message: AgentMessage::Output { stream },
                    payload,
                    ..
                }) => ExecEvent::output(stream, payload),
                Ok(Frame {
                    message: AgentMessage::Exit(status),
                    ..
                }) => {
                    let _ = tx.send(ExecEvent::Exit(status)).await;
                    return;
                }
                Ok(Frame {
                    message: AgentMessage::Error(body),
                    ..
                }) => {
                    let message = format!("{body}\n").into_bytes();
                    let _ = tx.send(ExecEvent::output(Stream::Stderr, message)).await;
                    let _ = tx.send(ExecEvent::Exit(lost())).await;
                    return;
                }
                Ok(_) => continue,
                Err(_) => {
                    let _ = tx.send(ExecEvent::Exit(lost())).await;
                    return;
                }
            };
            if tx.send(event).await.is_err() && !cancelled {
                cancelled = true;
                let _ = op.send(ClientMessage::Cancel, &[]);
            }
        }
    });
    rx
}

/// Waits until `deadline`; forever without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// When a command with `timeout_ms` that starts now must have ended.
fn exec_deadline(client: &AgentClient, timeout_ms: Option<u64>) -> Option<Instant> {
    let limit = client
        .deadlines()
        .exec(timeout_ms.map(Duration::from_millis))?;
    Some(Instant::now() + limit)
}

/// How long to wait for a command to start: the answer deadline, or less
/// when the command's whole deadline is nearer.
fn start_limit(client: &AgentClient, deadline: Option<Instant>) -> Duration {
    let answer = client.deadlines().answer;
    deadline.map_or(answer, |d| answer.min(d - Instant::now()))
}

/// A persistent shell; closed when dropped.
#[derive(Debug)]
pub struct Session {
    pub pid: u32,
    client: AgentClient,
    op: Op,
}

impl Session {
    /// Starts a command in the session and streams its output. Commands
    /// queue behind one another.
    pub async fn start(
        &self,
        command: &str,
        timeout_ms: Option<u64>,
        output_limit: Option<u64>,
    ) -> Result<Process, ClientError> {
        let deadline = exec_deadline(&self.client, timeout_ms);
        let mut op = self.client.start(
            ClientMessage::RunInSession {
                session: self.op.id,
                command: command.into(),
                timeout_ms,
                output_limit,
            },
            Vec::new(),
        )?;
        // Ready says the command is queued: it may wait behind another, so
        // its own deadline starts once it is its turn, which the client
        // cannot see; the queue's answer itself is immediate.
        match op.next_answer("run_in_session").await?.message {
            AgentMessage::Ready => {}
            AgentMessage::Error(body) => return Err(ClientError::Agent(body)),
            other => return Err(unexpected(&other)),
        }
        let id = op.id;
        let cancel = CancellationToken::new();
        Ok(Process {
            pid: None,
            events: forward(op, cancel.clone(), deadline),
            client: self.client.clone(),
            id,
            cancel,
        })
    }

    /// Runs a command to its end: stdout, stderr and exit status.
    pub async fn run(&self, command: &str) -> Result<(Vec<u8>, Vec<u8>, ExitStatus), ClientError> {
        Ok(self.start(command, None, None).await?.output().await)
    }

    /// Closes the session, ending its shell; returns how the shell ended.
    pub async fn close(mut self) -> Result<ExitStatus, ClientError> {
        self.op.send(ClientMessage::Cancel, &[])?;
        loop {
            let frame = self.op.next_answer("close_session").await?;
            match frame.message {
                AgentMessage::Exit(status) => return Ok(status),
                AgentMessage::Error(body) => return Err(ClientError::Agent(body)),
                _ => {}
            }
        }
    }
}

/// Changes under a watched directory; the watch ends when dropped.
#[derive(Debug)]
pub struct Watch {
    pub events: mpsc::Receiver<WatchEvent>,
}

/// A terminal is a process whose output is the terminal's.
pub type Terminal = Process;

/// Writes to a command's stdin.
pub type Stdin = Process;

impl AgentClient {
    /// Runs a command: its events, ending with `Exit`. Cancelling the token
    /// or dropping the receiver ends the command's process tree.
    pub async fn exec(
        &self,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<mpsc::Receiver<ExecEvent>, ClientError> {
        let deadline = exec_deadline(self, request.timeout_ms);
        let mut op = self.start(
            ClientMessage::Exec {
                request,
                stream_stdin: false,
            },
            Vec::new(),
        )?;
        started(&mut op, "exec", start_limit(self, deadline)).await?;
        Ok(forward(op, cancel, deadline))
    }

    /// Starts a command whose stdin stays open for [`Process::write`]
    /// until [`Process::close_stdin`] (when `stream_stdin`).
    pub async fn spawn(
        &self,
        request: ExecRequest,
        stream_stdin: bool,
    ) -> Result<Process, ClientError> {
        let deadline = exec_deadline(self, request.timeout_ms);
        self.started(
            ClientMessage::Exec {
                request,
                stream_stdin,
            },
            "exec",
            deadline,
        )
        .await
    }

    /// Opens a terminal running `params.command` (a shell by default).
    pub async fn terminal(&self, params: TerminalParams) -> Result<Terminal, ClientError> {
        self.started(ClientMessage::OpenTerminal(params), "open_terminal", None)
            .await
    }

    async fn started(
        &self,
        message: ClientMessage,
        operation: &'static str,
        deadline: Option<Instant>,
    ) -> Result<Process, ClientError> {
        let mut op = self.start(message, Vec::new())?;
        let pid = started(&mut op, operation, start_limit(self, deadline)).await?;
        let id = op.id;
        let cancel = CancellationToken::new();
        Ok(Process {
            pid: Some(pid),
            events: forward(op, cancel.clone(), deadline),
            client: self.clone(),
            id,
            cancel,
        })
    }

    /// Opens a persistent shell session.
    pub async fn session(&self, params: SessionParams) -> Result<Session, ClientError> {
        let mut op = self.start(ClientMessage::OpenSession(params), Vec::new())?;
        match op.next_answer("open_session").await?.message {
            AgentMessage::Started { pid } => Ok(Session {
                pid,
                client: self.clone(),
                op,
            }),
            AgentMessage::Error(body) => Err(ClientError::Agent(body)),
            other => Err(unexpected(&other)),
        }
    }

    /// Opens a file for reading: refusals (a missing file, a path leading
    /// out) come back here, the bytes as the stream is read. The agent
    /// sends only a few chunks ahead of what the stream's reader took.
    pub async fn read_file(&self, path: &WorkspacePath) -> Result<ReadStream, ClientError> {
        let mut op = self.start(ClientMessage::ReadFile { path: path.clone() }, Vec::new())?;
        let first = op.next_answer("read_file").await?;
        let mut reader = FileReader {
            op,
            path: path.clone(),
            chunk: Vec::new(),
            at: 0,
            ended: false,
            patience: self.deadlines().answer,
            waiting: None,
        };
        reader.take(first).map_err(|e| match e {
            Taken::Refused(err) => err,
            Taken::Broken(message) => ClientError::Protocol(message),
        })?;
        Ok(ReadStream::new(reader))
    }

    /// Writes a file (in frames of at most the payload limit), creating
    /// its parent directories. `mode` applies to a new file.
    pub async fn write_file(
        &self,
        path: &WorkspacePath,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut chunks = data.chunks(MAX_PAYLOAD).peekable();
        let mut append = false;
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let message = ClientMessage::WriteFile {
                path: path.clone(),
                append,
                mode,
            };
            self.done("write_file", message, chunk.to_vec()).await?;
            append = true;
            if chunks.peek().is_none() {
                return Ok(());
            }
        }
    }

    pub async fn list_dir(&self, path: &WorkspacePath) -> Result<Vec<FileEntry>, ClientError> {
        let op = self.start(ClientMessage::ListDir { path: path.clone() }, Vec::new())?;
        match op
            .answer("list_dir", self.deadlines().answer)
            .await?
            .message
        {
            AgentMessage::Entries { entries } => Ok(entries),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn stat(&self, path: &WorkspacePath) -> Result<FileEntry, ClientError> {
        let op = self.start(ClientMessage::Stat { path: path.clone() }, Vec::new())?;
        match op.answer("stat", self.deadlines().answer).await?.message {
            AgentMessage::Entry { entry } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a file, or a directory with everything in it.
    pub async fn remove(&self, path: &WorkspacePath) -> Result<(), ClientError> {
        self.done(
            "remove",
            ClientMessage::Remove { path: path.clone() },
            Vec::new(),
        )
        .await
    }

    /// Creates a directory and any missing parents.
    pub async fn mkdir(&self, path: &WorkspacePath) -> Result<(), ClientError> {
        self.done(
            "mkdir",
            ClientMessage::Mkdir { path: path.clone() },
            Vec::new(),
        )
        .await
    }

    pub async fn rename(
        &self,
        from: &WorkspacePath,
        to: &WorkspacePath,
    ) -> Result<(), ClientError> {
        let message = ClientMessage::Rename {
            from: from.clone(),
            to: to.clone(),
        };
        self.done("rename", message, Vec::new()).await
    }

    async fn done(
        &self,
        operation: &'static str,
        message: ClientMessage,
        payload: Vec<u8>,
    ) -> Result<(), ClientError> {
        let op = self.start(message, payload)?;
        match op.answer(operation, self.deadlines().answer).await?.message {
            AgentMessage::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Streams changes under `path` until the returned watch is dropped.
    pub async fn watch(&self, path: &WorkspacePath, recursive: bool) -> Result<Watch, ClientError> {
        let mut op = self.start(
            ClientMessage::Watch {
                path: path.clone(),
                recursive,
            },
            Vec::new(),
        )?;
        // Changes made once this returns are reported.
        match op.next_answer("watch").await?.message {
            AgentMessage::Ready => {}
            AgentMessage::Error(body) => return Err(ClientError::Agent(body)),
            other => return Err(unexpected(&other)),
        }
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = op.next() => match frame {
                        Ok(Frame { message: AgentMessage::Changed { event }, .. }) => {
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Watch { events: rx })
    }

    /// The agent's version, interpreters and resource use; with `detect`,
    /// interpreters are probed again first.
    pub async fn info(&self, detect: bool) -> Result<AgentInfo, ClientError> {
        let op = self.start(ClientMessage::Info { detect }, Vec::new())?;
        let (operation, limit) = match detect {
            true => ("detect", self.deadlines().detect),
            false => ("info", self.deadlines().answer),
        };
        match op.answer(operation, limit).await?.message {
            AgentMessage::Info { info } => Ok(info),
            other => Err(unexpected(&other)),
        }
    }
}

/// A file as the agent streams it: each `data` frame is acknowledged when
/// taken, so the agent never runs more than its window ahead of the reader.
/// A read that stops before the last frame is an error, never a short file.
struct FileReader {
    op: Op,
    path: WorkspacePath,
    chunk: Vec<u8>,
    at: usize,
    ended: bool,
    /// How long the next chunk may take to come.
    patience: Duration,
    /// Armed while a read waits for the agent's next chunk.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

enum Taken {
    Refused(ClientError),
    Broken(String),
}

impl FileReader {
    fn take(&mut self, frame: Frame<AgentMessage>) -> Result<(), Taken> {
        match frame.message {
            AgentMessage::Data { last } => {
                if last {
                    self.op.finished = true;
                    self.ended = true;
                } else if self.op.send(ClientMessage::Ack, &[]).is_err() {
                    return Err(Taken::Broken("the connection to the agent was lost".into()));
                }
                self.chunk = frame.payload;
                self.at = 0;
                Ok(())
            }
            AgentMessage::Error(body) => {
                self.op.finished = true;
                Err(Taken::Refused(ClientError::Agent(body)))
            }
            other => Err(Taken::Broken(format!("{other:?}"))),
        }
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.chunk.len() {
                let n = buf.remaining().min(this.chunk.len() - this.at);
                buf.put_slice(&this.chunk[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let frame = match this.op.rx.poll_recv(cx) {
                Poll::Ready(frame) => {
                    this.waiting = None;
                    frame
                }
                Poll::Pending => {
                    let patience = this.patience;
                    let waiting = this
                        .waiting
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
                    std::task::ready!(waiting.as_mut().poll(cx));
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        ClientError::Timeout {
                            operation: "read_file",
                            after: patience,
                        },
                    )));
                }
            };
            let Some(frame) = frame else {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the connection to the agent was lost before the end of `{}`",
                        this.path
                    ),
                )));
            };
            if let Err(taken) = this.take(frame) {
                let message = match taken {
                    Taken::Refused(err) => err.to_string(),
                    Taken::Broken(message) => {
                        format!(
                            "unexpected answer from the agent reading `{}`: {message}",
                            this.path
                        )
                    }
                };
                return Poll::Ready(Err(std::io::Error::other(message)));
            }
        }
    }
}
