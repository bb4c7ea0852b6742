//! Routes to a workspace's agent beyond plain commands: what it reports
//! (version, interpreters, resources), persistent shell sessions, and an
//! interactive terminal over a WebSocket. Runtimes without an agent
//! (`local`) answer these with the service layer's `unsupported` error.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiQuery, JsonOrDefault};
use crate::openapi::wire;
use crate::stream::{self, negotiate};
use crate::v1::{ExecResponse, StreamQuery, WorkspaceRef};
use crate::workspaces::WorkspaceTerminal;
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use berth_core::proto::{AgentInfo, SessionParams, TerminalParams};
use berth_core::{Command, ExecEvent};
use berth_provider::{SessionCommand, SessionInfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(info))
        .routes(routes!(open_session))
        .routes(routes!(close_session))
        .routes(routes!(session_exec))
        .routes(routes!(session_interrupt))
        .routes(routes!(terminal))
}

/// A session, as its routes' paths name it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionRef {
    /// An id, a unique id prefix, or a name
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub id: String,
    /// A session id
    pub session: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InfoQuery {
    /// Probe the interpreters again before answering.
    #[serde(default)]
    pub detect: bool,
}

/// How to start a session. Every field is optional; so is the body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSessionParams {
    /// The shell to run; `bash` when the workspace has it, else `sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Starting directory relative to the workspace root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the shell's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InterruptResponse {
    /// Whether a command was running (and was interrupted).
    pub interrupted: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// What to run, as shell text; an interactive shell when absent.
    #[serde(default)]
    pub command: Option<String>,
    /// Working directory relative to the workspace root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Rows of the terminal; 24 when absent.
    #[serde(default)]
    #[param(maximum = 65535)]
    pub rows: Option<u16>,
    /// Columns of the terminal; 80 when absent.
    #[serde(default)]
    #[param(maximum = 65535)]
    pub cols: Option<u16>,
}

/// A control message a terminal's client sends as a WebSocket text frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TerminalControl {
    /// The client's window changed size.
    Resize { rows: u16, cols: u16 },
    /// Sends a signal (a number, such as 2 for SIGINT) to the program.
    Signal { signal: i32 },
    /// Ends the terminal's input (as Ctrl-D does).
    Eof,
}

/// The agent's version, uptime, resource use and the interpreters found in
/// the workspace (python, node, ruby, go, java, perl, R, bash, sh, and any
/// the image's hints file names), each with its path and version.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/info",
    tag = "agent",
    params(WorkspaceRef, InfoQuery),
    responses(
        (status = 200, description = "What the agent reports", body = wire::AgentInfo),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime has no agent", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn info(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<InfoQuery>,
) -> Result<Json<AgentInfo>, ApiError> {
    Ok(Json(state.workspaces.agent_info(&id, query.detect).await?))
}

/// Opens a persistent shell in a running workspace. Commands run in it one
/// after another, and `cd`, exported variables and functions persist from
/// one to the next. It lives until it is closed or the workspace stops.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/sessions",
    tag = "agent",
    params(WorkspaceRef),
    request_body(content = Option<OpenSessionParams>, description = "Optional"),
    responses(
        (status = 201, description = "The session", body = SessionInfo),
        (status = 400, description = "A working directory leaving the workspace or not a directory", body = ErrorResponse),
        (status = 404, description = "No such workspace or working directory", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime has no agent, or the shell cannot start", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn open_session(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    JsonOrDefault(params): JsonOrDefault<OpenSessionParams>,
) -> Result<(StatusCode, Json<SessionInfo>), ApiError> {
    let params = SessionParams {
        shell: params.shell,
        cwd: params.cwd,
        env: params.env,
    };
    let session = state.workspaces.open_session(&id, params).await?;
    Ok((StatusCode::CREATED, Json(session)))
}

/// Closes a session, ending its shell and anything running in it.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}/sessions/{session}",
    tag = "agent",
    params(SessionRef),
    responses(
        (status = 204, description = "Closed"),
        (status = 404, description = "No such workspace or session", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn close_session(
    State(state): State<AppState>,
    Path(SessionRef { id, session }): Path<SessionRef>,
) -> Result<StatusCode, ApiError> {
    state.workspaces.close_session(&id, &session).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a command in a session, after any command already running there.
///
/// Answers as `POST /v1/workspaces/{id}/exec` does: once, with the
/// command's stdout, stderr and exit status, or streamed as it runs
/// (`Accept: application/x-ndjson` or `text/event-stream`, or
/// `?stream=true`). A client that goes away interrupts the command; the
/// session lives on.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/sessions/{session}/exec",
    tag = "agent",
    params(SessionRef, StreamQuery),
    request_body = SessionCommand,
    responses(
        (status = 200, description = "The command's outcome, or its events", content(
            (ExecResponse = "application/json"),
            (wire::ExecEvent = "application/x-ndjson"),
            (wire::ExecEvent = "text/event-stream"))),
        (status = 400, description = "A malformed body", body = ErrorResponse),
        (status = 404, description = "No such workspace or session, or the session has ended", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn session_exec(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
    Path(SessionRef { id, session }): Path<SessionRef>,
    ApiJson(command): ApiJson<SessionCommand>,
) -> Result<Response, ApiError> {
    let format = negotiate(&headers, query.stream);
    let cancel = CancellationToken::new();
    // Dropping the guard (the client went away) interrupts the command.
    let guard = cancel.clone().drop_guard();
    let (workspace, events) = state
        .workspaces
        .session_exec(&id, &session, command, cancel)
        .await?;
    stream::command(format, workspace, events, guard).await
}

/// Interrupts the command running in a session (SIGINT, then SIGKILL
/// after the agent's grace period); the session and its state live on.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/sessions/{session}/interrupt",
    tag = "agent",
    params(SessionRef),
    responses(
        (status = 200, description = "Whether a command was running", body = InterruptResponse),
        (status = 404, description = "No such workspace or session", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn session_interrupt(
    State(state): State<AppState>,
    Path(SessionRef { id, session }): Path<SessionRef>,
) -> Result<Json<InterruptResponse>, ApiError> {
    let interrupted = state.workspaces.interrupt_session(&id, &session).await?;
    Ok(Json(InterruptResponse { interrupted }))
}

/// An interactive terminal (a PTY) in a running workspace, over a
/// WebSocket.
///
/// Binary frames carry the terminal's bytes both ways. The client may send
/// text frames holding a `TerminalControl` (`{"type":"resize","rows":40,
/// "cols":120}`, `{"type":"signal","signal":2}`, `{"type":"eof"}`). When
/// the program ends, the server sends a text frame with its exit status
/// (`{"type":"exit","code":0,...}`) and closes; a client that closes ends
/// the program. Errors before the upgrade (no such workspace, no agent)
/// are ordinary JSON error responses.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/terminal",
    tag = "agent",
    params(WorkspaceRef, TerminalQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "A working directory leaving the workspace or not a directory", body = ErrorResponse),
        (status = 404, description = "No such workspace or working directory", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime has no agent, or the program cannot start", body = ErrorResponse),
        (status = 426, description = "Not a WebSocket upgrade request", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn terminal(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // A malformed or unknown id is answered as such, before the upgrade.
    state.workspaces.get(&id).await?;
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            "websocket_required",
            format!(
                "a terminal is served over a WebSocket: {}",
                rejection.body_text()
            ),
        )
    })?;
    let defaults = TerminalParams::default();
    // Started before the upgrade, so that a failure is an HTTP error.
    let terminal = state
        .workspaces
        .terminal(
            &id,
            TerminalParams {
                command: query.command.map(Command::Shell),
                cwd: query.cwd,
                env: BTreeMap::new(),
                rows: query.rows.unwrap_or(defaults.rows),
                cols: query.cols.unwrap_or(defaults.cols),
            },
        )
        .await?;
    Ok(upgrade.on_upgrade(move |socket| relay(socket, terminal)))
}

/// Carries a terminal's bytes to and from its WebSocket until either end
/// stops, or the workspace's instance ends. Dropping the terminal ends its
/// program.
async fn relay(mut socket: WebSocket, mut terminal: Box<dyn WorkspaceTerminal>) {
    loop {
        tokio::select! {
            event = terminal.next() => match event {
                Some(ExecEvent::Stdout { data } | ExecEvent::Stderr { data }) => {
                    if socket.send(Message::Binary(data.0.into())).await.is_err() {
                        return;
                    }
                }
                Some(exit @ ExecEvent::Exit(_)) => {
                    if let Ok(text) = serde_json::to_string(&exit) {
                        let _ = socket.send(Message::Text(text.into())).await;
                    }
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                None => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    if terminal.write(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Err(err) = control(terminal.as_mut(), text.as_str()).await {
                        let line = crate::stream::ErrorLine::new(err);
                        if let Ok(text) = serde_json::to_string(&line) {
                            let _ = socket.send(Message::Text(text.into())).await;
                        }
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}

/// Applies one control message to a terminal.
async fn control(terminal: &mut dyn WorkspaceTerminal, text: &str) -> Result<(), ApiError> {
    let message: TerminalControl = crate::extract::parse_json(text.as_bytes()).map_err(|e| {
        ApiError::new(
            "invalid_body",
            e.message
                .replacen("request body", "terminal control message", 1),
        )
    })?;
    match message {
        TerminalControl::Resize { rows, cols } => terminal.resize(rows, cols).await,
        TerminalControl::Signal { signal } => terminal.signal(signal).await,
        TerminalControl::Eof => terminal.close_stdin().await,
    }
}
