//! The versioned REST API under `/v1`: one handler per provider call, each
//! translating the request into that call and its answer into HTTP.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiJson, ApiQuery, body_bytes};
use crate::openapi::wire;
use crate::stream::{self, ProgressLine, negotiate, with_progress};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::{
    ExecRequest, ExitStatus, FileEntry, Labels, Output, Spec, Workspace, WorkspaceState,
};
use berth_provider::{CreateOptions, FetchResult, RuntimeStatus, WorkspaceDetails};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_workspace, list_workspaces))
        .routes(routes!(get_workspace, remove_workspace))
        .routes(routes!(start_workspace))
        .routes(routes!(stop_workspace))
        .routes(routes!(fetch_workspace))
        .routes(routes!(exec))
        .routes(routes!(list_files, remove_file))
        .routes(routes!(read_file, write_file))
        .routes(routes!(list_runtimes))
        .routes(routes!(healthz))
}

/// A new workspace: its spec, and optionally the runtime and name to use
/// instead of the spec's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceParams {
    #[serde(deserialize_with = "berth_core::object::from_object")]
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: Option<String>,
    /// `key=value` tags to list and remove the workspace by.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub labels: Labels,
    /// Overrides the spec's `timeouts.idle`: seconds without a command, a
    /// file operation or an open terminal after which it is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub idle: Option<u64>,
    /// Overrides the spec's `timeouts.lifetime`: seconds after creation at
    /// which it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 1, maximum = 18446744073709551615_u64)]
    pub lifetime: Option<u64>,
}

impl CreateWorkspaceParams {
    /// The request that creates a workspace from `spec` with `options`.
    pub fn new(spec: Spec, options: CreateOptions) -> CreateWorkspaceParams {
        CreateWorkspaceParams {
            spec,
            runtime: options.runtime,
            name: options.name,
            labels: options.labels,
            idle: options.idle,
            lifetime: options.lifetime,
        }
    }

    /// The spec and the options the provider creates the workspace with.
    pub fn into_parts(self) -> (Spec, CreateOptions) {
        let options = CreateOptions {
            runtime: self.runtime,
            name: self.name,
            labels: self.labels,
            idle: self.idle,
            lifetime: self.lifetime,
        };
        (self.spec, options)
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Stream events as NDJSON (same as `Accept: application/x-ndjson`).
    #[serde(default)]
    pub stream: bool,
}

/// The workspace a route is about, as its path names it.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct WorkspaceRef {
    /// An id, a unique id prefix, or a name
    #[param(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub id: String,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Include removed workspaces.
    #[serde(default)]
    pub all: bool,
    /// Only workspaces with these labels: `key=value`, several separated
    /// by commas.
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorkspaceList {
    /// Oldest first.
    pub workspaces: Vec<Workspace>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchResponse {
    /// One result per repository of the workspace's spec.
    pub results: Vec<FetchResult>,
}

/// What a command did, once it is done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    #[schema(value_type = wire::Output)]
    pub stdout: Output,
    #[schema(value_type = wire::Output)]
    pub stderr: Output,
    #[schema(value_type = wire::ExitStatus)]
    pub exit: ExitStatus,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DirQuery {
    /// A directory relative to the workspace root; the root when absent.
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileQuery {
    /// A path relative to the workspace root.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    #[schema(value_type = Vec<wire::FileEntry>)]
    pub entries: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RuntimeList {
    pub runtimes: Vec<RuntimeStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: String,
    /// berth's version.
    pub version: String,
}

/// Provisions a workspace and starts it.
///
/// With `Accept: application/x-ndjson` (or `?stream=true`) or
/// `Accept: text/event-stream` the answer is a stream of provisioning
/// events, ending with `ready` or `failed` (then an `error` line). Either
/// way provisioning goes on if the client disconnects.
#[utoipa::path(
    post,
    path = "/v1/workspaces",
    tag = "workspaces",
    params(StreamQuery),
    request_body = CreateWorkspaceParams,
    responses(
        (status = 201, description = "The workspace, provisioned and running", body = Workspace,
            headers(("Location" = String, description = "The workspace's URL"))),
        (status = 200, description = "Provisioning progress, one event per line or SSE event", content(
            (ProgressLine = "application/x-ndjson"),
            (ProgressLine = "text/event-stream"))),
        (status = 400, description = "A malformed body", body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
        (status = 422, description = "An invalid spec, an unknown runtime, or provisioning failed", body = ErrorResponse),
        (status = 503, description = "The runtime is unavailable here", body = ErrorResponse),
    )
)]
pub(crate) async fn create_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
    ApiJson(params): ApiJson<CreateWorkspaceParams>,
) -> Response {
    let workspaces = state.workspaces;
    let (spec, options) = params.into_parts();
    with_progress(
        negotiate(&headers, query.stream),
        move |progress| async move { workspaces.create(spec, options, progress).await },
        |workspace| {
            let location = HeaderValue::from_str(&format!("/v1/workspaces/{}", workspace.id));
            let mut response = (StatusCode::CREATED, Json(workspace)).into_response();
            if let Ok(location) = location {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        },
    )
    .await
}

/// Lists workspaces, oldest first.
#[utoipa::path(
    get,
    path = "/v1/workspaces",
    tag = "workspaces",
    params(ListQuery),
    responses((status = 200, description = "The workspaces", body = WorkspaceList))
)]
pub(crate) async fn list_workspaces(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<WorkspaceList>, ApiError> {
    let selector = match &query.label {
        Some(text) => berth_core::label::parse_selector(text)
            .map_err(|e| ApiError::new("invalid_query", e.to_string()))?,
        None => Labels::new(),
    };
    Ok(Json(WorkspaceList {
        workspaces: state.workspaces.list(query.all, &selector).await?,
    }))
}

/// A workspace, with the isolation in force. A removed workspace is gone
/// (410); `GET /v1/workspaces?all=true` still lists its record.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}",
    tag = "workspaces",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The workspace and its isolation", body = WorkspaceDetails),
        (status = 400, description = "An ambiguous id prefix", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 410, description = "The workspace was removed", body = ErrorResponse),
    )
)]
pub(crate) async fn get_workspace(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Json<WorkspaceDetails>, ApiError> {
    let details = state.workspaces.describe(&id).await?;
    if details.workspace.state == WorkspaceState::Removed {
        return Err(ApiError::new(
            "workspace_gone",
            format!(
                "workspace {} was removed; `GET /v1/workspaces?all=true` still lists its record",
                details.workspace.id
            ),
        ));
    }
    Ok(Json(details))
}

/// Removes a workspace and everything in it; its record stays, `removed`.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}",
    tag = "workspaces",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The removed workspace", body = Workspace),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "It is still being provisioned", body = ErrorResponse),
    )
)]
pub(crate) async fn remove_workspace(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(state.workspaces.remove(&id).await?))
}

/// Starts a stopped workspace; a running one is left as it is.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/start",
    tag = "workspaces",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "It is neither stopped nor running", body = ErrorResponse),
    )
)]
pub(crate) async fn start_workspace(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(state.workspaces.start(&id).await?))
}

/// Stops a running workspace, keeping its files.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/stop",
    tag = "workspaces",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "It is neither running nor stopped", body = ErrorResponse),
    )
)]
pub(crate) async fn stop_workspace(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(state.workspaces.stop(&id).await?))
}

/// Fetches upstream changes into every repository of a workspace, never
/// destroying local work: a fetch that cannot fast-forward is refused.
///
/// Streams `fetching` / `fetched` events when asked as for creation.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/fetch",
    tag = "workspaces",
    params(WorkspaceRef, StreamQuery),
    responses(
        (status = 200, description = "What each repository's fetch did, or its progress", content(
            (FetchResponse = "application/json"),
            (ProgressLine = "application/x-ndjson"),
            (ProgressLine = "text/event-stream"))),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "Not running or stopped, or the fetch cannot fast-forward", body = ErrorResponse),
        (status = 502, description = "The remote refused or failed", body = ErrorResponse),
    )
)]
pub(crate) async fn fetch_workspace(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Response {
    let workspaces = state.workspaces;
    with_progress(
        negotiate(&headers, query.stream),
        move |progress| async move { workspaces.fetch(&id, progress).await },
        |results| Json(FetchResponse { results }).into_response(),
    )
    .await
}

/// Runs a command in a running workspace.
///
/// By default (or with `Accept: application/json`) the answer comes when the
/// command is done: its stdout, stderr and exit status. With
/// `Accept: application/x-ndjson` or `text/event-stream` (or
/// `?stream=true`) its output streams as it is produced, in order per
/// stream, ending with an `exit` event. A client that disconnects cancels
/// the command: its whole process tree is ended.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/exec",
    tag = "exec",
    params(WorkspaceRef, StreamQuery),
    request_body = wire::ExecRequest,
    responses(
        (status = 200, description = "The command's outcome, or its events", content(
            (ExecResponse = "application/json"),
            (wire::ExecEvent = "application/x-ndjson"),
            (wire::ExecEvent = "text/event-stream"))),
        (status = 400, description = "A malformed request, or a working directory leaving the workspace or not a directory", body = ErrorResponse),
        (status = 404, description = "No such workspace or working directory", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 422, description = "The command cannot be started", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn exec(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiJson(request): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let format = negotiate(&headers, query.stream);
    let cancel = CancellationToken::new();
    // Dropping the guard (the client went away, so this handler or its
    // stream was dropped) cancels the command.
    let guard = cancel.clone().drop_guard();
    let (workspace, events) = state.workspaces.exec(&id, request, cancel).await?;
    stream::command(format, workspace, events, guard).await
}

/// Lists a directory of a running workspace.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/files",
    tag = "files",
    params(WorkspaceRef, DirQuery),
    responses(
        (status = 200, description = "The directory's entries", body = FileList),
        (status = 400, description = "A path leaving the workspace, or not a directory", body = ErrorResponse),
        (status = 404, description = "No such workspace or directory", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn list_files(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<DirQuery>,
) -> Result<Json<FileList>, ApiError> {
    let dir = query.path.unwrap_or_default();
    Ok(Json(FileList {
        entries: state.workspaces.list_files(&id, &dir).await?,
    }))
}

/// Removes a file, or a directory with everything in it.
#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}/files",
    tag = "files",
    params(WorkspaceRef, FileQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "A path leaving the workspace, or the root", body = ErrorResponse),
        (status = 403, description = "The workspace forbids removing it (its mode, a read-only mount)", body = ErrorResponse),
        (status = 404, description = "No such workspace or file", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn remove_file(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<StatusCode, ApiError> {
    state.workspaces.remove_file(&id, &query.path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file's bytes.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/files/content",
    tag = "files",
    params(WorkspaceRef, FileQuery),
    responses(
        (status = 200, description = "The file's bytes", body = [u8], content_type = "application/octet-stream"),
        (status = 400, description = "A path leaving the workspace, or not a regular file", body = ErrorResponse),
        (status = 404, description = "No such workspace or file", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn read_file(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    let file = state.workspaces.read_file(&id, &query.path).await?;
    let body = stream::read_body(file);
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// Writes a file from the request's raw body, creating parent directories.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{id}/files/content",
    tag = "files",
    params(WorkspaceRef, FileQuery),
    request_body(content = [u8], content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 400, description = "A path leaving the workspace", body = ErrorResponse),
        (status = 403, description = "The workspace forbids writing it (its mode, a read-only mount)", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 413, description = "The body is over the limit", body = ErrorResponse),
        (status = 504, description = "The workspace's agent did not answer in time", body = ErrorResponse),
    )
)]
pub(crate) async fn write_file(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(query): ApiQuery<FileQuery>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let data = body_bytes(request, &()).await?;
    state
        .workspaces
        .write_file(&id, &query.path, data.to_vec())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The runtimes this server knows and whether each works here.
#[utoipa::path(
    get,
    path = "/v1/runtimes",
    tag = "workspaces",
    responses((status = 200, description = "The runtimes", body = RuntimeList))
)]
pub(crate) async fn list_runtimes(State(state): State<AppState>) -> Json<RuntimeList> {
    Json(RuntimeList {
        runtimes: state.provider.runtimes().await,
    })
}

/// Whether the server is up; needs no token.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "The server is up", body = Health))
)]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}
