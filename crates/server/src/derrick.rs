//! Derrick's routes, with Derrick's request and response shapes, so that
//! clients written for Derrick work against berth unchanged.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /health` | | `{"healthy": true}` |
//! | `POST /workspaces` | none, or `{env?, spec?}` | `{"id"}` |
//! | `GET /workspaces` | | `{"workspaces": [{"id", "name", "state"}]}`: the ones this server made |
//! | `DELETE /workspaces/{id}` | | `true`, or `false` when there is no such workspace (any more) |
//! | `POST /workspaces/{id}/cmd` | `{cmd, working_dir?, env?, timeout?}` | `{"exit_code", "timed_out"}` |
//! | `POST /workspaces/{id}/cmd_with_output` | same | `{"output", "exit_code", "stdout", "stderr", "timed_out"}` |
//! | `POST /workspaces/{id}/write_file` | `{path, content, working_dir?}`, content base64 | `{"success": true}` |
//! | `POST /workspaces/{id}/read_file` | `{path, working_dir?}` | the raw bytes (`application/octet-stream`); `{"content"}` base64 with `Accept: application/json` |
//!
//! As in Derrick, `cmd` is run by `bash -c` (by `/bin/sh -c` in a
//! workspace without bash) from the workspace root; `timeout` is in
//! seconds, and a command past it answers exit code 124 with its output
//! so far; `output` is stdout and stderr interleaved as they were written.
//! The workspaces made here live as long as the server: listed by
//! `GET /workspaces`, and removed when it stops.
//!
//! Paths are relative to the workspace root (or to `working_dir`). In a
//! workspace whose root is `/` (made from a Derrick config), absolute
//! paths are Derrick's: paths in the workspace's filesystem, the files its
//! commands see (in a `local` workspace, under its directory). Elsewhere an
//! absolute path is refused, never quietly moved. Errors are berth's JSON
//! errors. Bodies are read as JSON whatever their `Content-Type` says, as
//! Derrick did; the `Host` and `Origin` checks keep web pages out all the
//! same.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{AnyTypeJson, body_bytes, parse_json};
use crate::workspaces::Workspaces;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use berth_core::{ExecRequest, ProvisionEvent, Spec, Stream, Workspace, WorkspaceState};
use berth_provider::{CreateOptions, ServiceError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Runs Derrick's command (`$1`) as Derrick did, by bash, and by the
/// POSIX shell where the workspace has no bash.
const BASH_OR_SH: &str =
    r#"command -v bash >/dev/null 2>&1 && exec bash -c "$1"; exec /bin/sh -c "$1""#;

/// The exit code of a command ended by its timeout, as `timeout(1)` gives
/// it (Derrick ran commands under `timeout`).
const TIMED_OUT: i32 = 124;

/// Provisioning events buffered before provisioning waits for them.
const PROGRESS_BUFFER: usize = 64;

/// The workspaces made through Derrick's `POST /workspaces`: as in
/// Derrick, they are this server's, listed by `GET /workspaces` and removed
/// when it stops ([`Made::remove_all`]). Ids sort by creation.
#[derive(Clone, Default)]
pub struct Made(Arc<Mutex<BTreeSet<String>>>);

impl Made {
    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set stays whole whatever panicked while holding it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes every workspace still held, for a server that stopped.
    pub async fn remove_all(&self, workspaces: &dyn Workspaces) {
        let ids = std::mem::take(&mut *self.ids());
        for id in ids {
            match workspaces.remove(&id).await {
                Ok(_) => {}
                Err(e) if e.code == "not_found" => {}
                Err(e) => {
                    tracing::warn!(workspace = %id, "cannot remove the workspace: {}", e.message)
                }
            }
        }
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(create_workspace, list_workspaces))
        .routes(routes!(remove_workspace))
        .routes(routes!(cmd))
        .routes(routes!(cmd_with_output))
        .routes(routes!(write_file))
        .routes(routes!(read_file))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    pub healthy: bool,
}

/// Derrick's create body. Unknown fields are ignored, as Derrick did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateParams {
    /// Added to the spec's environment: the setup script's and every
    /// command's.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// The spec to use instead of the server's default spec.
    #[serde(
        default,
        alias = "config",
        deserialize_with = "berth_core::object::from_optional_object"
    )]
    pub spec: Option<Spec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceRef {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceSummary {
    pub id: String,
    pub name: String,
    pub state: WorkspaceState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceListResponse {
    pub workspaces: Vec<WorkspaceSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CmdParams {
    /// A shell command, run by `bash -c` (by `/bin/sh -c` where the
    /// workspace has no bash).
    #[serde(alias = "command")]
    pub cmd: String,
    /// Relative to the workspace root; the root when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Variables added to the command's environment, as they are.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds; the command's whole process tree is ended past it.
    /// Absent, null or 0 (as `timeout(1)` takes it): no limit.
    #[serde(default)]
    #[schema(format = "uint64", maximum = 18446744073709551615_u64)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CmdResponse {
    /// The exit code; 124 past the timeout; 128 + the signal that ended
    /// the command otherwise.
    pub exit_code: i32,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CmdOutputResponse {
    /// stdout and stderr interleaved as they were written (lossy UTF-8).
    pub output: String,
    /// The exit code; 124 past the timeout; 128 + the signal that ended
    /// the command otherwise.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteFileParams {
    pub path: String,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The file's bytes, base64 (line breaks allowed).
    #[schema(format = Byte)]
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteFileResponse {
    pub success: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadFileParams {
    pub path: String,
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReadFileResponse {
    /// The file's bytes, base64.
    pub content: String,
}

/// Whether the provider is up (Derrick's health check); needs no token.
#[utoipa::path(
    get,
    path = "/health",
    tag = "derrick",
    security(()),
    responses((status = 200, description = "The provider is up", body = HealthResponse))
)]
pub(crate) async fn health() -> Json<HealthResponse> {
    Json(HealthResponse { healthy: true })
}

/// Provisions a workspace from the body's spec, or from the server's default
/// spec, and answers with its id once it is running, however long its
/// setup script takes. The workspace is this server's: it is removed when
/// the server stops, and at once if provisioning fails.
#[utoipa::path(
    post,
    path = "/workspaces",
    tag = "derrick",
    request_body(content = Option<CreateParams>, description = "Optional"),
    responses(
        (status = 200, description = "The new workspace's id", body = WorkspaceRef),
        (status = 400, description = "A malformed body, or no spec to use", body = ErrorResponse),
        (status = 422, description = "An invalid spec, or provisioning failed", body = ErrorResponse),
        (status = 503, description = "The runtime is unavailable here", body = ErrorResponse),
    )
)]
pub(crate) async fn create_workspace(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<WorkspaceRef>, ApiError> {
    let params: CreateParams = optional_json(request).await?.unwrap_or_default();
    let mut spec = match (params.spec, &state.default_spec) {
        (Some(spec), _) => spec,
        (None, Some(default)) => Spec::clone(default),
        (None, None) => {
            return Err(ApiError::new(
                "no_default_spec",
                "no spec to provision from: send `{\"spec\": {...}}`, or start the server \
                 with a default spec (`berth serve --workspace-config-path FILE`)",
            ));
        }
    };
    spec.env.extend(params.env.unwrap_or_default());
    let workspaces = state.workspaces.clone();
    let (progress, mut events) = tokio::sync::mpsc::channel(PROGRESS_BUFFER);
    // Its own task: provisioning completes even if the client goes away.
    let created = tokio::spawn(async move {
        workspaces
            .create(spec, CreateOptions::default(), Some(progress))
            .await
    });
    // The id, from the event that registered it, of a workspace whose
    // provisioning failed after that.
    let mut registered = None;
    while let Some(event) = events.recv().await {
        if let ProvisionEvent::Created { id, .. } = event {
            registered = Some(id);
        }
    }
    let created = created
        .await
        .map_err(|e| ApiError::new("internal", format!("the provisioning task failed: {e}")))?;
    match created {
        Ok(ws) => {
            state.made.ids().insert(ws.id.to_string());
            Ok(Json(WorkspaceRef {
                id: ws.id.to_string(),
            }))
        }
        Err(err) => {
            // The answer carries the failure; the workspace has no use.
            if let Some(id) = registered
                && let Err(e) = state.workspaces.remove(id.as_str()).await
            {
                tracing::warn!(workspace = %id, "cannot remove the failed workspace: {}", e.message);
            }
            Err(err)
        }
    }
}

/// The workspaces this server made and still has, oldest first.
#[utoipa::path(
    get,
    path = "/workspaces",
    tag = "derrick",
    responses((status = 200, description = "The workspaces", body = WorkspaceListResponse))
)]
pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
) -> Result<Json<WorkspaceListResponse>, ApiError> {
    let made: Vec<String> = state.made.ids().iter().cloned().collect();
    let mut workspaces = Vec::new();
    for id in made {
        match state.workspaces.get(&id).await {
            // Removed some other way (the CLI, `/v1`).
            Ok(ws) if ws.state == WorkspaceState::Removed => {}
            Err(e) if e.code == "not_found" => {}
            Ok(ws) => workspaces.push(WorkspaceSummary {
                id: ws.id.to_string(),
                name: ws.name,
                state: ws.state,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok(Json(WorkspaceListResponse { workspaces }))
}

/// Removes a workspace: `true`, or `false` when there is no such
/// workspace, or it was removed already.
#[utoipa::path(
    delete,
    path = "/workspaces/{id}",
    tag = "derrick",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "Whether a workspace was removed", body = bool, content_type = "application/json"),
        (status = 409, description = "It is still being provisioned", body = ErrorResponse),
    )
)]
pub(crate) async fn remove_workspace(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<bool>, ApiError> {
    let ws = match state.workspaces.get(&id).await {
        Ok(ws) => ws,
        // Derrick answers `false` for an id that names nothing.
        Err(e) if e.code == "not_found" || e.code == "invalid_id" => return Ok(Json(false)),
        Err(e) => return Err(e),
    };
    if ws.state != WorkspaceState::Removed {
        state.workspaces.remove(ws.id.as_str()).await?;
    }
    state.made.ids().remove(ws.id.as_str());
    Ok(Json(ws.state != WorkspaceState::Removed))
}

/// Runs a shell command and answers with its exit code.
#[utoipa::path(
    post,
    path = "/workspaces/{id}/cmd",
    tag = "derrick",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = CmdParams,
    responses(
        (status = 200, description = "The command's exit code", body = CmdResponse),
        (status = 400, description = "A malformed request", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
    )
)]
pub(crate) async fn cmd(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AnyTypeJson(params): AnyTypeJson<CmdParams>,
) -> Result<Json<CmdResponse>, ApiError> {
    let done = run(&state, &id, params).await?;
    Ok(Json(CmdResponse {
        exit_code: done.exit_code,
        timed_out: done.timed_out,
    }))
}

/// Runs a shell command and answers with its output and exit code.
#[utoipa::path(
    post,
    path = "/workspaces/{id}/cmd_with_output",
    tag = "derrick",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = CmdParams,
    responses(
        (status = 200, description = "The command's output and exit code", body = CmdOutputResponse),
        (status = 400, description = "A malformed request", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
    )
)]
pub(crate) async fn cmd_with_output(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AnyTypeJson(params): AnyTypeJson<CmdParams>,
) -> Result<Json<CmdOutputResponse>, ApiError> {
    let done = run(&state, &id, params).await?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok(Json(CmdOutputResponse {
        output: text(&done.output),
        exit_code: done.exit_code,
        stdout: text(&done.stdout),
        stderr: text(&done.stderr),
        timed_out: done.timed_out,
    }))
}

/// Writes a file from base64 content, creating parent directories.
#[utoipa::path(
    post,
    path = "/workspaces/{id}/write_file",
    tag = "derrick",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = WriteFileParams,
    responses(
        (status = 200, description = "Written", body = WriteFileResponse),
        (status = 400, description = "Bad base64, or a path leaving the workspace", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
    )
)]
pub(crate) async fn write_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    AnyTypeJson(params): AnyTypeJson<WriteFileParams>,
) -> Result<Json<WriteFileResponse>, ApiError> {
    // Some encoders (Ruby's `Base64.encode64`) break lines every 60 characters.
    let encoded: String = params
        .content
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let data = BASE64.decode(encoded).map_err(|e| {
        ApiError::new(
            "invalid_body",
            format!("request body: field `content`: expected base64: {e}"),
        )
    })?;
    let ws = state.workspaces.get(&id).await?;
    let path = derrick_path(&ws, params.working_dir.as_deref(), &params.path);
    state
        .workspaces
        .write_file(ws.id.as_str(), &path, data)
        .await?;
    Ok(Json(WriteFileResponse { success: true }))
}

/// Reads a file: its raw bytes, or `{"content"}` in base64 when the client
/// accepts `application/json`.
#[utoipa::path(
    post,
    path = "/workspaces/{id}/read_file",
    tag = "derrick",
    params(("id" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")),
    request_body = ReadFileParams,
    responses(
        (status = 200, description = "The file's bytes", content(
            ([u8] = "application/octet-stream"),
            (ReadFileResponse = "application/json"))),
        (status = 400, description = "A path leaving the workspace, not a regular file, or a file larger than a JSON answer carries (the output limit)", body = ErrorResponse),
        (status = 404, description = "No such workspace or file", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
    )
)]
pub(crate) async fn read_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    AnyTypeJson(params): AnyTypeJson<ReadFileParams>,
) -> Result<Response, ApiError> {
    let ws = state.workspaces.get(&id).await?;
    let path = derrick_path(&ws, params.working_dir.as_deref(), &params.path);
    let file = state.workspaces.read_file(ws.id.as_str(), &path).await?;
    if accepts_json(&headers) {
        // JSON carries the file whole: as much as the output limit.
        let limit = state.provider.output_limit();
        let data = file.read_all(limit).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::FileTooLarge {
                ApiError::new(
                    "invalid_request",
                    format!(
                        "`{path}` is larger than {limit} bytes, the most a JSON answer carries; \
                         ask for application/octet-stream to have it streamed"
                    ),
                )
            } else {
                ApiError::new("runtime_error", format!("cannot read `{path}`: {e}"))
            }
        })?;
        return Ok(Json(ReadFileResponse {
            content: BASE64.encode(data),
        })
        .into_response());
    }
    let body = crate::stream::read_body(file);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

/// What a finished command did.
struct Done {
    output: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit_code: i32,
    timed_out: bool,
}

/// Runs a command to its end. Dropping this future (the client went away)
/// cancels the command.
async fn run(state: &AppState, id: &str, params: CmdParams) -> Result<Done, ApiError> {
    let ws = state.workspaces.get(id).await?;
    let mut request = ExecRequest::argv(["/bin/sh", "-c", BASH_OR_SH, "sh", &params.cmd]);
    request.cwd = params
        .working_dir
        .as_deref()
        .map(|dir| derrick_path(&ws, None, dir));
    request.env = params.env.unwrap_or_default();
    request.timeout_ms = params
        .timeout
        .filter(|secs| *secs > 0)
        .map(|secs| secs.saturating_mul(1000));
    let cancel = CancellationToken::new();
    let _guard = cancel.clone().drop_guard();
    let (workspace, mut events) = state
        .workspaces
        .exec(ws.id.as_str(), request, cancel)
        .await?;
    let (mut output, mut stdout, mut stderr) = (Vec::new(), Vec::new(), Vec::new());
    let exit = berth_core::output::each(&mut events, |stream, data| {
        output.extend_from_slice(&data);
        match stream {
            Stream::Stdout => stdout.extend(data),
            Stream::Stderr => stderr.extend(data),
        }
    })
    .await
    .map_err(|e| ServiceError::runtime(&workspace, e.into()))?;
    Ok(Done {
        output,
        stdout,
        stderr,
        exit_code: if exit.timed_out {
            TIMED_OUT
        } else {
            exit.shell_code()
        },
        timed_out: exit.timed_out,
    })
}

/// A path of a Derrick request as a path relative to the root of
/// workspace `ws`: `path` under `working_dir` when it is relative. Where
/// the root is `/`, an absolute path is Derrick's, a path in the
/// workspace's filesystem, and so relative to the root; elsewhere it is
/// left absolute, to be refused as such rather than quietly moved.
fn derrick_path(ws: &Workspace, working_dir: Option<&str>, path: &str) -> String {
    let joined = match working_dir {
        Some(dir) if !dir.is_empty() && !path.starts_with('/') => {
            format!("{}/{path}", dir.trim_end_matches('/'))
        }
        _ => path.to_string(),
    };
    if ws.spec.root() == "/" {
        joined.trim_start_matches('/').to_string()
    } else {
        joined
    }
}

fn accepts_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            item.split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        })
}

/// A JSON body that may be absent (empty, or `null`).
async fn optional_json<T: DeserializeOwned>(request: Request) -> Result<Option<T>, ApiError> {
    let bytes = body_bytes(request, &()).await?;
    let text = bytes.trim_ascii();
    if text.is_empty() || text == b"null" {
        return Ok(None);
    }
    parse_json(&bytes).map(Some)
}
