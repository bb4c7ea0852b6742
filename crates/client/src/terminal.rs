//! An interactive terminal in a workspace, over the server's WebSocket
//! (`/v1/workspaces/{id}/terminal`): binary frames carry the terminal's
//! bytes both ways, text frames its control messages and, last, the
//! program's exit.

use crate::{Client, ClientError};
use berth_core::{Command, ExecEvent, Stream};
use futures::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The connection a terminal's WebSocket runs over: TCP or a unix socket.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// A program running in a workspace's terminal. Dropping it closes the
/// connection, which ends the program.
pub struct Terminal {
    socket: WebSocketStream<Box<dyn Connection>>,
    client: Client,
}

impl Client {
    /// Opens a terminal of `rows` by `cols` in workspace `id`, running
    /// `command` (the workspace's shell when `None`). Errors before the
    /// terminal starts (no such workspace, not running) are the server's.
    pub async fn terminal(
        &self,
        id: &str,
        command: Option<&Command>,
        rows: u16,
        cols: u16,
    ) -> Result<Terminal, ClientError> {
        let mut url = self
            .base
            .join(&Self::workspace_path(id, "/terminal"))
            .map_err(|e| ClientError::BadServer {
                server: self.server.clone(),
                reason: format!("cannot address the terminal of `{id}`: {e}"),
            })?;
        // The server takes shell text: an argv is quoted into it.
        let command = match command {
            None => None,
            Some(Command::Shell(text)) => Some(text.clone()),
            Some(Command::Argv(argv)) => Some(
                shlex::try_join(argv.iter().map(String::as_str)).map_err(|e| {
                    ClientError::Local {
                        what: "the terminal's command".into(),
                        source: std::io::Error::other(e),
                    }
                })?,
            ),
        };
        {
            let mut query = url.query_pairs_mut();
            if let Some(command) = &command {
                query.append_pair("command", command);
            }
            query
                .append_pair("rows", &rows.to_string())
                .append_pair("cols", &cols.to_string());
        }
        let connection: Box<dyn Connection> = match &self.socket {
            Some(path) => Box::new(
                UnixStream::connect(path)
                    .await
                    .map_err(|e| self.unreachable(e))?,
            ),
            None => {
                // `[::1]:7433` as well as `host:7433`.
                let host = url.host_str().unwrap_or_default();
                let port = url.port_or_known_default().unwrap_or(80);
                Box::new(
                    TcpStream::connect(format!("{host}:{port}"))
                        .await
                        .map_err(|e| self.unreachable(e))?,
                )
            }
        };
        // Only the scheme differs: the handshake is made over `connection`.
        let _ = url.set_scheme("ws");
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| self.protocol(e.to_string()))?;
        if let Some(token) = &self.token {
            let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| self.protocol(format!("the token cannot be sent: {e}")))?;
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, bearer);
        }
        let (socket, _) = tokio_tungstenite::client_async(request, connection)
            .await
            .map_err(|e| match e {
                WsError::Http(response) => {
                    let status = StatusCode::from_u16(response.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    self.refusal(status, response.body().as_deref().unwrap_or_default())
                }
                other => self.unreachable(other),
            })?;
        Ok(Terminal {
            socket,
            client: self.clone(),
        })
    }
}

impl Terminal {
    /// The program's next output (as `Stdout`), then its `Exit`; `None`
    /// once the connection ended without one.
    pub async fn next(&mut self) -> Option<ExecEvent> {
        while let Some(Ok(message)) = self.socket.next().await {
            match message {
                Message::Binary(data) => {
                    return Some(ExecEvent::output(Stream::Stdout, data.to_vec()));
                }
                // Of the text frames, only the exit is an event; an error
                // answering a control message is not one.
                Message::Text(text) => {
                    if let Ok(exit @ ExecEvent::Exit(_)) = serde_json::from_str(&text) {
                        return Some(exit);
                    }
                }
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        None
    }

    /// Writes bytes to the terminal's input.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send(Message::binary(bytes.to_vec())).await
    }

    /// Changes the terminal's size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), ClientError> {
        self.control(serde_json::json!({ "type": "resize", "rows": rows, "cols": cols }))
            .await
    }

    /// Ends the terminal's input (as Ctrl-D does).
    pub async fn close_stdin(&mut self) -> Result<(), ClientError> {
        self.control(serde_json::json!({ "type": "eof" })).await
    }

    async fn control(&mut self, message: serde_json::Value) -> Result<(), ClientError> {
        self.send(Message::text(message.to_string())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), ClientError> {
        self.socket
            .send(message)
            .await
            .map_err(|e| self.client.unreachable(e))
    }
}
