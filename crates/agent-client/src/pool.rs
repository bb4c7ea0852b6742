//! Connections to many agents at once, one per workspace: made on first
//! use, and made again once a connection is lost (the workspace
//! restarted). A process keeps one pool, [`AgentPool::shared`], which the
//! runtimes (for commands and files) and the provider (for sessions,
//! terminals and what the agent reports) all use, so that each workspace's
//! agent has one connection from it.

use crate::{AgentClient, ClientError, Deadlines};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Agent connections by workspace id.
#[derive(Debug)]
pub struct AgentPool {
    clients: Mutex<HashMap<String, AgentClient>>,
    deadlines: Deadlines,
    /// This process's nice value, which no agent it uses falls below.
    nice: i32,
}

impl Default for AgentPool {
    fn default() -> Self {
        Self::with_deadlines(Deadlines::from_env())
    }
}

impl AgentPool {
    /// The process's one pool, whose connections wait for answers as long
    /// as [`Deadlines::from_env`] says.
    pub fn shared() -> &'static AgentPool {
        static SHARED: OnceLock<AgentPool> = OnceLock::new();
        SHARED.get_or_init(AgentPool::default)
    }

    /// A pool of its own whose connections wait for answers as long as
    /// [`Deadlines::from_env`] says.
    pub fn new() -> Self {
        Self::default()
    }

    /// A pool whose connections wait for answers as long as `deadlines`
    /// says.
    pub fn with_deadlines(deadlines: Deadlines) -> Self {
        AgentPool {
            clients: Mutex::new(HashMap::new()),
            deadlines,
            nice: rustix::process::getpriority_process(None).unwrap_or(0),
        }
    }

    /// The connection to workspace `id`'s agent, connecting to `socket`
    /// (waiting at most `wait` for it to appear) when there is none yet or
    /// the last one was lost.
    pub async fn get(
        &self,
        id: &str,
        socket: &Path,
        wait: Duration,
    ) -> Result<AgentClient, ClientError> {
        if let Some(client) = self.connected(id) {
            return Ok(client);
        }
        // Two callers may both connect here; the later connection replaces
        // the earlier, which closes once its operations end.
        let client = AgentClient::connect_with(socket, wait, self.deadlines).await?;
        client.hold_priority(self.nice);
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(id.to_string(), client.clone());
        }
        Ok(client)
    }

    /// The live connection to workspace `id`'s agent, if there is one,
    /// with the agent's priority held (see [`crate::priority`]).
    pub fn connected(&self, id: &str) -> Option<AgentClient> {
        let client = {
            let clients = self.clients.lock().ok()?;
            clients.get(id).filter(|c| c.is_connected()).cloned()?
        };
        client.hold_priority(self.nice);
        Some(client)
    }

    /// Drops the connection to workspace `id`'s agent (it is stopping).
    pub fn forget(&self, id: &str) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::frame::{self, FrameDecoder};
    use berth_proto::{AgentMessage, ClientMessage, Frame, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{UnixListener, UnixStream};

    /// Answers one connection's hello, then keeps it open until told to
    /// drop it.
    async fn greet(mut stream: UnixStream, hang_up: tokio::sync::oneshot::Receiver<()>) {
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 4096];
        loop {
            if let Ok(Some(frame)) = decoder.next_frame::<ClientMessage>() {
                assert!(matches!(frame.message, ClientMessage::Hello { .. }));
                break;
            }
            let n = stream.read(&mut buf).await.unwrap();
            decoder.feed(&buf[..n]);
        }
        let hello = Frame::new(
            0,
            AgentMessage::Hello {
                version: PROTOCOL_VERSION,
                agent: "test".into(),
            },
        );
        stream
            .write_all(&frame::encode(&hello).unwrap())
            .await
            .unwrap();
        let _ = hang_up.await;
    }

    #[tokio::test]
    async fn reuses_a_live_connection_and_replaces_a_lost_one() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let pool = AgentPool::new();
        let wait = Duration::from_secs(5);

        let (hang_up, first_hung) = tokio::sync::oneshot::channel();
        let get = pool.get("ws1", &socket, wait);
        let accept = async {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(greet(stream, first_hung));
        };
        let (first, ()) = tokio::join!(get, accept);
        let first = first.unwrap();
        // A second get reuses the connection: no one accepts another.
        let again = pool.get("ws1", &socket, wait).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&first.inner, &again.inner));

        hang_up.send(()).unwrap();
        while first.is_connected() {
            tokio::task::yield_now().await;
        }
        assert!(pool.connected("ws1").is_none());
        let (_keep, second_hung) = tokio::sync::oneshot::channel();
        let get = pool.get("ws1", &socket, wait);
        let accept = async {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(greet(stream, second_hung));
        };
        let (second, ()) = tokio::join!(get, accept);
        assert!(!std::sync::Arc::ptr_eq(
            &first.inner,
            &second.unwrap().inner
        ));

        pool.forget("ws1");
        assert!(pool.connected("ws1").is_none());
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("none.sock");
        let err = AgentPool::new()
            .get("ws1", &socket, Duration::from_millis(20))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
