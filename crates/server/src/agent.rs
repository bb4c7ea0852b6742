//! Routes to a workspace's agent beyond plain commands: what it reports
//! (version, interpreters, resources), persistent shell sessions, and an
//! interactive terminal over a WebSocket. Runtimes without an agent
//! (`local`) answer these with the service layer's `unsupported` error.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiQuery, JsonOrDefault};
use crate::openapi::wire;
use crate::sessions::SessionError;
use crate::stream::{self, Format, negotiate};
use crate::v1::{ExecResponse, StreamQuery, WorkspaceRef};
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_agent_client::Terminal;
use berth_core::proto::{AgentInfo, SessionParams, TerminalParams};
use berth_core::{Command, ExecEvent, Output, WorkspaceId};
use berth_provider::ServiceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio_stream::wrappers::UnboundedReceiverStream;
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

/// An open session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// The session's id, for its routes.
    pub id: String,
    /// The id of the workspace it runs in.
    pub workspace: String,
    /// The shell's process id in the workspace.
    pub pid: u32,
}

/// A command to run in a session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecParams {
    /// Shell text, run by the session's shell: `cd`, variables and
    /// functions persist to the next command.
    pub command: String,
    /// Time limit in milliseconds; past it the command is interrupted (the
    /// session lives on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub timeout_ms: Option<u64>,
    /// Bytes kept per stream; anything beyond is counted and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub output_limit: Option<u64>,
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
    Ok(Json(state.provider.agent_info(&id, query.detect).await?))
}

/// Opens a persistent shell in a running workspace. Commands run in it one
/// after another, and `cd`, exported variables and functions persist from
/// one to the next. It lives until it is closed or the workspace stops.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/sessions",
    tag = "agent",
    params(WorkspaceRef),
    request_body(content = OpenSessionParams, description = "Optional"),
    responses(
        (status = 201, description = "The session", body = SessionResponse),
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
) -> Result<(StatusCode, Json<SessionResponse>), ApiError> {
    let workspace = state.provider.get(&id)?.id;
    let agent = state.provider.agent(workspace.as_str()).await?;
    let session = agent
        .session(SessionParams {
            shell: params.shell,
            cwd: params.cwd,
            env: params.env,
        })
        .await
        .map_err(|e| ServiceError::runtime(&workspace, e.into()))?;
    let pid = session.pid;
    let session = state.sessions.open(workspace.as_str(), session);
    Ok((
        StatusCode::CREATED,
        Json(SessionResponse {
            id: session,
            workspace: workspace.to_string(),
            pid,
        }),
    ))
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
    let workspace = state.provider.get(&id)?.id;
    state
        .sessions
        .close(workspace.as_str(), &session)
        .await
        .map_err(|e| session_error(&workspace, e))?;
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
    request_body = SessionExecParams,
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
    ApiJson(params): ApiJson<SessionExecParams>,
) -> Result<Response, ApiError> {
    let format = negotiate(&headers, query.stream);
    let ws = state.provider.get(&id)?;
    // A session's command is a use of its workspace.
    drop(state.provider.busy(&ws));
    let workspace = ws.id;
    let mut events = state
        .sessions
        .run(
            workspace.as_str(),
            &session,
            params.command,
            params.timeout_ms,
            Some(
                params
                    .output_limit
                    .unwrap_or(berth_provider::DEFAULT_OUTPUT_LIMIT),
            ),
        )
        .await
        .map_err(|e| session_error(&workspace, e))?;
    if format != Format::Json {
        return Ok(stream::streamed(
            format,
            UnboundedReceiverStream::new(events),
        ));
    }
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    while let Some(event) = events.recv().await {
        match event {
            ExecEvent::Stdout { data } => stdout.extend(data.0),
            ExecEvent::Stderr { data } => stderr.extend(data.0),
            ExecEvent::Exit(exit) => {
                return Ok(Json(ExecResponse {
                    stdout: Output(stdout),
                    stderr: Output(stderr),
                    exit,
                })
                .into_response());
            }
        }
    }
    Err(session_error(&workspace, SessionError::Ended { session }))
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
    let workspace = state.provider.get(&id)?.id;
    let interrupted = state
        .sessions
        .interrupt(workspace.as_str(), &session)
        .await
        .map_err(|e| session_error(&workspace, e))?;
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
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            "websocket_required",
            format!(
                "a terminal is served over a WebSocket: {}",
                rejection.body_text()
            ),
        )
    })?;
    let ws = state.provider.get(&id)?;
    let agent = state.provider.agent(ws.id.as_str()).await?;
    // An open terminal keeps its workspace in use until it closes.
    let busy = state.provider.busy(&ws);
    let workspace = ws.id;
    let defaults = TerminalParams::default();
    // Started before the upgrade, so that a failure is an HTTP error.
    let terminal = agent
        .terminal(TerminalParams {
            command: query.command.map(Command::Shell),
            cwd: query.cwd,
            env: BTreeMap::new(),
            rows: query.rows.unwrap_or(defaults.rows),
            cols: query.cols.unwrap_or(defaults.cols),
        })
        .await
        .map_err(|e| ServiceError::runtime(&workspace, e.into()))?;
    Ok(upgrade.on_upgrade(move |socket| async move {
        relay(socket, terminal, workspace).await;
        drop(busy);
    }))
}

/// Carries a terminal's bytes to and from its WebSocket until either end
/// stops. Dropping the terminal ends its program.
async fn relay(mut socket: WebSocket, mut terminal: Terminal, workspace: WorkspaceId) {
    loop {
        tokio::select! {
            event = terminal.events.recv() => match event {
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
                    if terminal.write(&bytes).is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if let Err(err) = control(&workspace, &terminal, text.as_str()) {
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
fn control(workspace: &WorkspaceId, terminal: &Terminal, text: &str) -> Result<(), ApiError> {
    let message: TerminalControl = crate::extract::parse_json(text.as_bytes()).map_err(|e| {
        ApiError::new(
            "invalid_body",
            e.message
                .replacen("request body", "terminal control message", 1),
        )
    })?;
    let sent = match message {
        TerminalControl::Resize { rows, cols } => terminal.resize(rows, cols),
        TerminalControl::Signal { signal } => terminal.signal(signal),
        TerminalControl::Eof => terminal.close_stdin(),
    };
    sent.map_err(|e| ServiceError::runtime(format!("{workspace}, terminal"), e.into()).into())
}

/// A session request's failure: the agent's refusals as every agent
/// route reports them (naming the session), the server's own session
/// table's answers as `not_found`.
fn session_error(workspace: &WorkspaceId, err: SessionError) -> ApiError {
    match err {
        SessionError::Agent { session, source } => {
            ServiceError::runtime(format!("{workspace}, session `{session}`"), source.into()).into()
        }
        SessionError::NotFound { .. } => ApiError::new("not_found", err.to_string()),
        SessionError::Ended { .. } | SessionError::Lost { .. } => {
            ApiError::new("not_found", format!("workspace {workspace}: {err}"))
        }
    }
}
