//! Routes over a workspace's layers: snapshots, reset, forks, the list of
//! changes, a patch of them, their export as an archive, and garbage
//! collection (of layers, and of the provisioning cache to a budget). Each
//! is one provider call.
//!
//! The export is streamed to the client from an archive the provider
//! writes in a private directory of its own and unlinks before sending: a
//! client never chooses a host path the server writes to.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{ApiQuery, JsonOrDefault};
use crate::v1::{WorkspaceList, WorkspaceRef};
use crate::workspaces::Export;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_core::{Change, Snapshot, Workspace};
use berth_provider::{CacheGc, RuntimeGc};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_snapshot))
        .routes(routes!(remove_snapshot))
        .routes(routes!(reset))
        .routes(routes!(changes))
        .routes(routes!(diff))
        .routes(routes!(fork))
        .routes(routes!(export))
        .routes(routes!(gc))
        .routes(routes!(gc_cache))
}

/// The media type of a patch.
pub const DIFF: &str = "text/x-diff; charset=utf-8";
/// The media type of an exported archive (a tar stream, zstd-compressed).
pub const TAR_ZST: &str = "application/zstd";

/// Headers of an export answer: what the archive holds.
pub const EXPORT_ENTRIES: &str = "x-berth-export-entries";
pub const EXPORT_BYTES: &str = "x-berth-export-bytes";
pub const EXPORT_DELETED: &str = "x-berth-export-deleted";

/// Where a reset goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetParams {
    /// A snapshot id; the provisioned state when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9]{1,128}$")]
    pub to: Option<String>,
}

/// How many forks to make.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkParams {
    /// From 1 to 64; 1 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub count: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangeList {
    /// Sorted by path.
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GcResponse {
    /// One report per runtime that keeps layers.
    pub runtimes: Vec<RuntimeGc>,
}

/// The size the provisioning cache is brought within.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheGcParams {
    /// Bytes the entries may keep; the server's configured budget when
    /// absent, and without one every entry no workspace uses is evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uint64", minimum = 0, maximum = 18446744073709551615_u64)]
    pub budget: Option<u64>,
}

/// An export takes no parameters: in particular no path, so that no
/// request can make the server write where it chooses. Unknown parameters
/// are refused rather than ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {}

/// Freezes a workspace's current files into a snapshot.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/snapshots",
    tag = "layers",
    params(WorkspaceRef),
    responses(
        (status = 201, description = "The snapshot", body = Snapshot),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "Neither running nor stopped", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime has no snapshots", body = ErrorResponse),
    )
)]
pub(crate) async fn create_snapshot(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.workspaces.snapshot(&id).await?),
    ))
}

/// Removes a snapshot; its layer goes once nothing else uses it.
#[utoipa::path(
    delete,
    path = "/v1/snapshots/{snapshot}",
    tag = "layers",
    params(("snapshot" = String, Path, description = "A snapshot id", pattern = "^[a-z0-9]{1,128}$")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "An id that can name no snapshot", body = ErrorResponse),
        (status = 404, description = "No such snapshot", body = ErrorResponse),
    )
)]
pub(crate) async fn remove_snapshot(
    State(state): State<AppState>,
    Path(snapshot): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.workspaces.remove_snapshot(&snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Returns a workspace's files to their provisioned state, or to a
/// snapshot. Processes running in it are ended. The body may be empty.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/reset",
    tag = "layers",
    params(WorkspaceRef),
    request_body(content = Option<ResetParams>, description = "Optional"),
    responses(
        (status = 200, description = "The workspace", body = Workspace),
        (status = 400, description = "A malformed body, or a snapshot id that can name no snapshot", body = ErrorResponse),
        (status = 404, description = "No such workspace or snapshot", body = ErrorResponse),
        (status = 409, description = "Neither running nor stopped", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime cannot reset", body = ErrorResponse),
    )
)]
pub(crate) async fn reset(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    JsonOrDefault(params): JsonOrDefault<ResetParams>,
) -> Result<Json<Workspace>, ApiError> {
    Ok(Json(
        state.workspaces.reset(&id, params.to.as_deref()).await?,
    ))
}

/// The paths added, modified and deleted since the provisioned state (or
/// the snapshot last reset to).
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/changes",
    tag = "layers",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The changes", body = ChangeList),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "Neither running nor stopped", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime cannot list changes", body = ErrorResponse),
    )
)]
pub(crate) async fn changes(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Json<ChangeList>, ApiError> {
    Ok(Json(ChangeList {
        changes: state.workspaces.changes(&id).await?,
    }))
}

/// A git-style patch of the changes in each of the workspace's
/// repositories since they were provisioned, committed or not; it applies
/// from the workspace root (`git apply -p1`). Empty when nothing changed.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/diff",
    tag = "layers",
    params(WorkspaceRef),
    responses(
        (status = 200, description = "The patch", body = String, content_type = "text/x-diff"),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "The workspace is not running", body = ErrorResponse),
        (status = 500, description = "git failed or is missing in the workspace", body = ErrorResponse),
    )
)]
pub(crate) async fn diff(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
) -> Result<Response, ApiError> {
    let patch = state.workspaces.diff(&id).await?;
    let body = crate::stream::read_body(patch);
    Ok(([(header::CONTENT_TYPE, DIFF)], body).into_response())
}

/// Makes new running workspaces from a workspace's current state, each
/// independent of the origin and of the others. The body may be empty
/// (one fork).
#[utoipa::path(
    post,
    path = "/v1/workspaces/{id}/fork",
    tag = "layers",
    params(WorkspaceRef),
    request_body(content = Option<ForkParams>, description = "Optional"),
    responses(
        (status = 201, description = "The new workspaces", body = WorkspaceList),
        (status = 400, description = "A count outside 1 to 64", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "Neither running nor stopped", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime cannot fork, or a fork failed", body = ErrorResponse),
    )
)]
pub(crate) async fn fork(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    JsonOrDefault(params): JsonOrDefault<ForkParams>,
) -> Result<(StatusCode, Json<WorkspaceList>), ApiError> {
    let workspaces = state
        .workspaces
        .fork(&id, params.count.unwrap_or(1))
        .await?;
    Ok((StatusCode::CREATED, Json(WorkspaceList { workspaces })))
}

/// The added and modified files as a zstd-compressed tar archive, streamed.
/// Deleted paths cannot travel as files: their number is in a header, the
/// paths themselves in `GET /v1/workspaces/{id}/changes`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}/export",
    tag = "layers",
    params(WorkspaceRef, ExportQuery),
    responses(
        (status = 200, description = "The archive (`.tar.zst`)", body = [u8], content_type = "application/zstd",
            headers(
                ("x-berth-export-entries" = u64, description = "Files, links and directories in the archive"),
                ("x-berth-export-bytes" = u64, description = "Bytes of file content, uncompressed"),
                ("x-berth-export-deleted" = u64, description = "Paths deleted in the workspace, not in the archive"),
            )),
        (status = 400, description = "A query parameter (such as a path) was given", body = ErrorResponse),
        (status = 404, description = "No such workspace", body = ErrorResponse),
        (status = 409, description = "Neither running nor stopped", body = ErrorResponse),
        (status = 422, description = "The workspace's runtime cannot export", body = ErrorResponse),
    )
)]
pub(crate) async fn export(
    State(state): State<AppState>,
    Path(WorkspaceRef { id }): Path<WorkspaceRef>,
    ApiQuery(_query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let Export {
        workspace,
        entries,
        bytes,
        deleted,
        file,
        length,
    } = state.workspaces.export(&id).await?;
    let mut response = Body::from_stream(ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(TAR_ZST));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{workspace}-changes.tar.zst\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    for (name, value) in [
        (EXPORT_ENTRIES, entries),
        (EXPORT_BYTES, bytes),
        (EXPORT_DELETED, deleted),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    }
    Ok(response)
}

/// Removes what no workspace, cache entry or snapshot uses, in every
/// runtime that keeps layers.
#[utoipa::path(
    post,
    path = "/v1/gc",
    tag = "layers",
    responses((status = 200, description = "What each runtime removed", body = GcResponse))
)]
pub(crate) async fn gc(State(state): State<AppState>) -> Result<Json<GcResponse>, ApiError> {
    Ok(Json(GcResponse {
        runtimes: state.workspaces.gc().await?,
    }))
}

/// Evicts the least recently used provisioning cache entries that no
/// workspace uses until the cache fits its budget. The body may be empty.
#[utoipa::path(
    post,
    path = "/v1/cache/gc",
    tag = "layers",
    request_body(content = Option<CacheGcParams>, description = "Optional"),
    responses(
        (status = 200, description = "What was evicted and what is kept", body = CacheGc),
        (status = 400, description = "A malformed body", body = ErrorResponse),
    )
)]
pub(crate) async fn gc_cache(
    State(state): State<AppState>,
    JsonOrDefault(params): JsonOrDefault<CacheGcParams>,
) -> Result<Json<CacheGc>, ApiError> {
    Ok(Json(state.workspaces.gc_cache(params.budget).await?))
}
