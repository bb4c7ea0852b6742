//! The socket server: accepts connections, checks the handshake, and runs
//! each connection's operations concurrently, routing control frames
//! (stdin, signals, resizes, cancellation) to them by id.

use crate::{Agent, exec, files, info, session, terminal, watch};
use berth_proto::frame::{self, FrameDecoder};
use berth_proto::{AgentMessage, ClientMessage, ErrorCode, Frame, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

/// What a client can tell a running operation.
#[derive(Debug)]
pub enum Control {
    Stdin(Vec<u8>),
    CloseStdin,
    Signal(i32),
    Resize {
        rows: u16,
        cols: u16,
    },
    /// The client took one `data` frame of a read.
    Ack,
    Cancel,
}

/// Control frames for one operation. `None` from `recv` means the client
/// is gone, which cancels the operation.
pub type Controls = mpsc::UnboundedReceiver<Control>;

/// Where an operation sends its frames.
#[derive(Debug, Clone)]
pub struct Outbox {
    id: u64,
    frames: mpsc::Sender<Vec<u8>>,
}

impl Outbox {
    /// Sends one frame; false when the connection is gone.
    pub async fn send(&self, message: AgentMessage, payload: &[u8]) -> bool {
        match frame::encode(&Frame::with_payload(self.id, message, payload.to_vec())) {
            Ok(bytes) => self.frames.send(bytes).await.is_ok(),
            Err(_) => false,
        }
    }

    pub async fn message(&self, message: AgentMessage) -> bool {
        self.send(message, &[]).await
    }

    pub async fn error(&self, code: ErrorCode, message: impl Into<String>) -> bool {
        self.message(AgentMessage::error(code, message)).await
    }
}

/// A request to run one command in a session.
#[derive(Debug)]
pub struct SessionRun {
    pub command: String,
    pub timeout_ms: Option<u64>,
    pub output_limit: Option<u64>,
    pub controls: Controls,
    pub out: Outbox,
    pub _done: DoneGuard,
}

/// Tells the connection an operation has ended when dropped, however it
/// ended, so its id is freed.
#[derive(Debug)]
pub struct DoneGuard {
    id: u64,
    done: mpsc::UnboundedSender<u64>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.done.send(self.id);
    }
}

/// Serves one connection until the client leaves or the agent stops and
/// every operation has ended.
pub async fn serve(agent: Arc<Agent>, stream: UnixStream) {
    let (mut reader, writer) = stream.into_split();
    let (frames, outgoing) = mpsc::channel(256);
    let writing = tokio::spawn(write_frames(writer, outgoing));
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut conn = Connection {
        agent: agent.clone(),
        frames,
        ops: HashMap::new(),
        sessions: HashMap::new(),
        greeted: false,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut reading = true;
    loop {
        if !reading && conn.ops.is_empty() {
            break;
        }
        tokio::select! {
            read = reader.read(&mut buf), if reading => {
                let n = match read {
                    Ok(0) | Err(_) => 0,
                    Ok(n) => n,
                };
                if n == 0 {
                    // The client is gone: every operation sees its control
                    // channel close and cancels itself.
                    reading = false;
                    conn.ops.clear();
                    conn.sessions.clear();
                    continue;
                }
                decoder.feed(&buf[..n]);
                loop {
                    match decoder.next_frame::<ClientMessage>() {
                        Ok(Some(frame)) => {
                            if !conn.handle(frame, &done_tx).await {
                                reading = false;
                                conn.ops.clear();
                                conn.sessions.clear();
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(err) if err.is_fatal() => {
                            conn.reply(0, AgentMessage::error(ErrorCode::BadRequest, err.to_string())).await;
                            reading = false;
                            conn.ops.clear();
                            conn.sessions.clear();
                            break;
                        }
                        Err(err) => {
                            let id = match &err {
                                berth_proto::FrameError::Message { id: Some(id), .. } => *id,
                                _ => 0,
                            };
                            conn.reply(id, AgentMessage::error(ErrorCode::BadRequest, err.to_string())).await;
                        }
                    }
                }
            }
            Some(id) = done_rx.recv() => {
                conn.ops.remove(&id);
                conn.sessions.remove(&id);
            }
            () = agent.shutdown.cancelled(), if reading => {
                // Operations are ended by the same token; keep delivering
                // their last frames, but take no new work.
                reading = false;
            }
        }
    }
    drop(conn);
    let _ = writing.await;
}

async fn write_frames(mut writer: OwnedWriteHalf, mut outgoing: mpsc::Receiver<Vec<u8>>) {
    while let Some(mut bytes) = outgoing.recv().await {
        // Coalesce what is already queued into one write.
        while bytes.len() < 256 * 1024 {
            match outgoing.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

struct Connection {
    agent: Arc<Agent>,
    frames: mpsc::Sender<Vec<u8>>,
    ops: HashMap<u64, mpsc::UnboundedSender<Control>>,
    sessions: HashMap<u64, mpsc::UnboundedSender<SessionRun>>,
    greeted: bool,
}

impl Connection {
    fn outbox(&self, id: u64) -> Outbox {
        Outbox {
            id,
            frames: self.frames.clone(),
        }
    }

    async fn reply(&self, id: u64, message: AgentMessage) {
        self.outbox(id).message(message).await;
    }

    /// Handles one frame; false ends the connection.
    async fn handle(
        &mut self,
        frame: Frame<ClientMessage>,
        done: &mpsc::UnboundedSender<u64>,
    ) -> bool {
        let Frame {
            id,
            message,
            payload,
        } = frame;
        if !self.greeted {
            return self.greet(id, message).await;
        }
        let control = match message {
            ClientMessage::Stdin => Some(Control::Stdin(payload)),
            ClientMessage::CloseStdin => Some(Control::CloseStdin),
            ClientMessage::Signal { signal } => Some(Control::Signal(signal)),
            ClientMessage::Resize { rows, cols } => Some(Control::Resize { rows, cols }),
            ClientMessage::Ack => Some(Control::Ack),
            ClientMessage::Cancel => Some(Control::Cancel),
            ClientMessage::Hello { .. } => {
                self.reply(
                    id,
                    AgentMessage::error(ErrorCode::BadRequest, "hello was already exchanged"),
                )
                .await;
                return true;
            }
            other => {
                self.start(id, other, payload, done).await;
                None
            }
        };
        if let Some(control) = control {
            // Control for an operation that has just ended is not an
            // error: the client could not know yet.
            if let Some(op) = self.ops.get(&id) {
                let _ = op.send(control);
            }
        }
        true
    }

    async fn greet(&mut self, id: u64, message: ClientMessage) -> bool {
        match message {
            ClientMessage::Hello { version, .. } if version == PROTOCOL_VERSION => {
                self.greeted = true;
                self.reply(
                    id,
                    AgentMessage::Hello {
                        version: PROTOCOL_VERSION,
                        agent: crate::VERSION.into(),
                    },
                )
                .await;
                true
            }
            ClientMessage::Hello { version, .. } => {
                let msg = format!(
                    "protocol version {version} is not served; this agent ({}) speaks version {PROTOCOL_VERSION}",
                    crate::VERSION
                );
                self.reply(id, AgentMessage::error(ErrorCode::Version, msg))
                    .await;
                false
            }
            _ => {
                self.reply(
                    id,
                    AgentMessage::error(ErrorCode::BadRequest, "the first frame must be a hello"),
                )
                .await;
                false
            }
        }
    }

    async fn start(
        &mut self,
        id: u64,
        message: ClientMessage,
        payload: Vec<u8>,
        done: &mpsc::UnboundedSender<u64>,
    ) {
        let out = self.outbox(id);
        if self.ops.contains_key(&id) {
            out.error(
                ErrorCode::DuplicateId,
                format!("operation id {id} is already in use"),
            )
            .await;
            return;
        }
        if let ClientMessage::RunInSession {
            session,
            command,
            timeout_ms,
            output_limit,
        } = message
        {
            let Some(runs) = self.sessions.get(&session) else {
                out.error(
                    ErrorCode::UnknownOperation,
                    format!("no open session with id {session}"),
                )
                .await;
                return;
            };
            // Acknowledged before the session can answer anything else,
            // so the client knows the command is queued; it may wait
            // behind another one.
            out.message(AgentMessage::Ready).await;
            let (tx, controls) = mpsc::unbounded_channel();
            let run = SessionRun {
                command,
                timeout_ms,
                output_limit,
                controls,
                out: out.clone(),
                _done: DoneGuard {
                    id,
                    done: done.clone(),
                },
            };
            if runs.send(run).is_err() {
                out.error(
                    ErrorCode::UnknownOperation,
                    format!("session {session} has ended"),
                )
                .await;
                return;
            }
            // The session task answers; this id only routes control until
            // the run (and its guard) is dropped.
            self.ops.insert(id, tx);
            return;
        }
        let (tx, controls) = mpsc::unbounded_channel();
        self.ops.insert(id, tx);
        let agent = self.agent.clone();
        let guard = DoneGuard {
            id,
            done: done.clone(),
        };
        let op = match message {
            ClientMessage::OpenSession(params) => {
                let (runs_tx, runs) = mpsc::unbounded_channel();
                self.sessions.insert(id, runs_tx);
                Op::Session(params, runs)
            }
            other => Op::Other(other),
        };
        self.agent.tasks.spawn(async move {
            agent
                .operations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match op {
                Op::Session(params, runs) => {
                    session::run(&agent, params, controls, runs, out).await;
                }
                Op::Other(message) => run_op(&agent, message, payload, controls, out).await,
            }
            agent
                .operations
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(guard);
        });
    }
}

enum Op {
    Session(
        berth_proto::SessionParams,
        mpsc::UnboundedReceiver<SessionRun>,
    ),
    Other(ClientMessage),
}

async fn run_op(
    agent: &Arc<Agent>,
    message: ClientMessage,
    payload: Vec<u8>,
    controls: Controls,
    out: Outbox,
) {
    match message {
        ClientMessage::Exec {
            request,
            stream_stdin,
        } => exec::run(agent, request, stream_stdin, controls, out).await,
        ClientMessage::OpenTerminal(params) => terminal::run(agent, params, controls, out).await,
        ClientMessage::Watch { path, recursive } => {
            watch::run(agent, path, recursive, controls, out).await
        }
        ClientMessage::Info { detect } => info::run(agent, detect, out).await,
        ClientMessage::ReadFile { path } => files::read(agent, path, controls, out).await,
        other => files::run(agent, other, payload, out).await,
    }
}
