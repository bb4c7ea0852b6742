//! The connection: handshake, a writer task, and a reader task that routes
//! the agent's frames to the operation they belong to.

use crate::ops::Op;
use crate::{ClientError, Deadlines};
use berth_proto::frame::{self, FrameDecoder};
use berth_proto::{AgentMessage, ClientMessage, Frame, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

type Routes = Arc<Mutex<Option<HashMap<u64, mpsc::UnboundedSender<Frame<AgentMessage>>>>>>;

/// A connection to one agent. Cheap to clone; every clone shares it.
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    /// Operations waiting for frames; `None` once the connection is gone.
    routes: Routes,
    next_id: AtomicU64,
    agent_version: String,
    path: PathBuf,
    deadlines: Deadlines,
    /// The agent's process id, as the kernel gave it for the connection.
    peer: Option<u32>,
}

impl AgentClient {
    /// Connects to the agent at `path`, retrying while the socket is not
    /// there yet or refuses connections (the agent is starting), for at
    /// most `wait`, then shakes hands; waits for answers as long as
    /// [`Deadlines::from_env`] says.
    pub async fn connect(path: &Path, wait: Duration) -> Result<Self, ClientError> {
        Self::connect_with(path, wait, Deadlines::from_env()).await
    }

    /// [`AgentClient::connect`], waiting for answers as long as `deadlines`
    /// says.
    pub async fn connect_with(
        path: &Path,
        wait: Duration,
        deadlines: Deadlines,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + wait;
        let mut delay = Duration::from_millis(2);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(stream) => break stream,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    tokio::time::sleep(delay.min(deadline - Instant::now())).await;
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        };
        // An agent that accepted (the kernel does, even for a stopped one)
        // but never answers the hello.
        tokio::time::timeout(deadlines.answer, Self::handshake(stream, path, deadlines))
            .await
            .map_err(|_| ClientError::Timeout {
                operation: "hello",
                after: deadlines.answer,
            })?
    }

    async fn handshake(
        stream: UnixStream,
        path: &Path,
        deadlines: Deadlines,
    ) -> Result<Self, ClientError> {
        let peer = stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok());
        let (mut reader, mut writer) = stream.into_split();
        let hello = frame::encode(&Frame::new(
            0,
            ClientMessage::Hello {
                version: PROTOCOL_VERSION,
                client: format!("berth-agent-client {}", env!("CARGO_PKG_VERSION")),
            },
        ))?;
        let refused = |message: String| ClientError::Handshake {
            path: path.to_path_buf(),
            message,
        };
        writer
            .write_all(&hello)
            .await
            .map_err(|e| refused(e.to_string()))?;
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let answer = loop {
            if let Some(frame) = decoder
                .next_frame::<AgentMessage>()
                .map_err(|e| refused(e.to_string()))?
            {
                break frame;
            }
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| refused(e.to_string()))?;
            if n == 0 {
                return Err(refused("the connection closed".into()));
            }
            decoder.feed(&buf[..n]);
        };
        let agent_version = match answer.message {
            AgentMessage::Hello { agent, .. } => agent,
            AgentMessage::Error(body) => return Err(refused(body.message)),
            other => return Err(refused(format!("expected hello, got {other:?}"))),
        };
        let (frames, outgoing) = mpsc::unbounded_channel();
        let routes: Routes = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(write_frames(writer, outgoing));
        tokio::spawn(read_frames(reader, decoder, buf, routes.clone()));
        Ok(AgentClient {
            inner: Arc::new(Inner {
                frames,
                routes,
                next_id: AtomicU64::new(1),
                agent_version,
                path: path.to_path_buf(),
                deadlines,
                peer,
            }),
        })
    }

    /// Puts each thread of the agent whose nice value the workspace raised
    /// above `nice` back at it (see [`crate::priority`]).
    pub(crate) fn hold_priority(&self, nice: i32) {
        if let Some(pid) = self.inner.peer {
            crate::priority::hold(pid, nice);
        }
    }

    /// The version the agent reported in the handshake.
    pub fn agent_version(&self) -> &str {
        &self.inner.agent_version
    }

    /// How long this client waits for the agent's answers.
    pub fn deadlines(&self) -> Deadlines {
        self.inner.deadlines
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.inner.path
    }

    /// Whether the connection is still up.
    pub fn is_connected(&self) -> bool {
        self.inner
            .routes
            .lock()
            .map(|r| r.is_some())
            .unwrap_or(false)
    }

    /// Starts an operation: registers its route, then sends its first frame.
    pub(crate) fn start(
        &self,
        message: ClientMessage,
        payload: Vec<u8>,
    ) -> Result<Op, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut routes = self.inner.routes.lock().map_err(|_| ClientError::Closed)?;
            routes.as_mut().ok_or(ClientError::Closed)?.insert(id, tx);
        }
        let op = Op::new(self.clone(), id, rx);
        self.send(id, &message, &payload)?;
        Ok(op)
    }

    /// Sends one frame for operation `id`.
    pub(crate) fn send(
        &self,
        id: u64,
        message: &ClientMessage,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let mut bytes = Vec::with_capacity(64 + payload.len());
        frame::encode_into(&mut bytes, id, message, payload)?;
        self.inner
            .frames
            .send(bytes)
            .map_err(|_| ClientError::Closed)
    }

    pub(crate) fn forget(&self, id: u64) {
        if let Ok(mut routes) = self.inner.routes.lock()
            && let Some(routes) = routes.as_mut()
        {
            routes.remove(&id);
        }
    }
}

async fn write_frames(mut writer: OwnedWriteHalf, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>) {
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
}

async fn read_frames(
    mut reader: OwnedReadHalf,
    mut decoder: FrameDecoder,
    mut buf: Vec<u8>,
    routes: Routes,
) {
    'read: loop {
        loop {
            match decoder.next_frame::<AgentMessage>() {
                Ok(Some(frame)) => route(&routes, frame),
                Ok(None) => break,
                Err(err) if err.is_fatal() => break 'read,
                // A frame this client cannot read (a newer agent's message)
                // is skipped; its operation will see its final frame.
                Err(_) => {}
            }
        }
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => decoder.feed(&buf[..n]),
        }
    }
    // Every waiting operation sees its channel close: the agent is gone.
    if let Ok(mut routes) = routes.lock() {
        routes.take();
    }
}

fn route(routes: &Routes, frame: Frame<AgentMessage>) {
    let Ok(mut routes) = routes.lock() else {
        return;
    };
    let Some(routes) = routes.as_mut() else {
        return;
    };
    let last = frame.message.is_final();
    let id = frame.id;
    if let Some(tx) = routes.get(&id)
        && (tx.send(frame).is_err() || last)
    {
        routes.remove(&id);
    }
}
