//! Errors as the API returns them: JSON `{"error": {"code", "message"}}`
//! with the service layer's stable code, and the one mapping from codes to
//! HTTP statuses.

use axum::Json;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use berth_provider::ServiceError;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable machine-readable code: the service layer's (`not_found`,
    /// `wrong_state`, ...) or the API's own (`unauthorized`,
    /// `invalid_body`, ...).
    pub code: String,
    /// What went wrong, naming the id, field or path involved.
    pub message: String,
}

/// The HTTP status for an error code. This is the only place statuses are
/// chosen for errors:
///
/// | status | codes |
/// |---|---|
/// | 400 | `invalid_request`, `invalid_path`, `invalid_body`, `invalid_query`, `ambiguous_id`, `ambiguous`, `invalid_id`, `no_default_spec` |
/// | 401 | `unauthorized` |
/// | 403 | `permission_denied`, `host_not_allowed`, `origin_not_allowed` |
/// | 404 | `not_found`, `file_not_found`, `route_not_found`, `agent_not_built` |
/// | 405 | `method_not_allowed` |
/// | 409 | `wrong_state`, `name_taken`, `cannot_fast_forward`, `already_exists`, `conflict` |
/// | 410 | `workspace_gone` |
/// | 413 | `body_too_large` |
/// | 415 | `unsupported_media_type` |
/// | 422 | `invalid_spec`, `no_runtime`, `unknown_runtime`, `provision_failed`, `command_not_started`, `invalid_repository`, `invalid_ref`, `credential_unusable`, `unsupported` |
/// | 426 | `websocket_required` |
/// | 502 | `git_authentication_failed`, `git_failed` (the remote refused or failed) |
/// | 503 | `runtime_unavailable` |
/// | 504 | `agent_timeout` (the workspace's agent did not answer in time) |
/// | 500 | anything else (`runtime_error`, `registry_error`, `credentials_invalid`, ...) |
///
/// 422 means the request was well-formed but what it asks for cannot be
/// made: an invalid spec, a runtime that does not exist or was not chosen,
/// a setup script that failed (the workspace is kept, marked `failed`), a
/// command that cannot be started, an operation the workspace's runtime
/// lacks (snapshots in `local`, sessions where there is no agent) or that
/// the workspace cannot offer (a session where there is no shell).
///
/// 403 is a path the workspace does not let be written (a read-only or
/// immutable one): the request is understood and the token is good, but no
/// retry will succeed until the workspace changes. It is also a request
/// from a foreign `Origin` (a web page), or, without a token, one
/// addressed to a `Host` that is not the server's (DNS rebinding).
///
/// 415 is a JSON body of a `/v1` route that does not say
/// `Content-Type: application/json`.
pub fn status_for(code: &str) -> StatusCode {
    match code {
        "invalid_request" | "invalid_path" | "invalid_body" | "invalid_query" | "ambiguous_id"
        | "ambiguous" | "invalid_id" | "no_default_spec" => StatusCode::BAD_REQUEST,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "permission_denied" | "host_not_allowed" | "origin_not_allowed" => StatusCode::FORBIDDEN,
        "not_found" | "file_not_found" | "route_not_found" | "agent_not_built" => {
            StatusCode::NOT_FOUND
        }
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "wrong_state" | "name_taken" | "cannot_fast_forward" | "already_exists" | "conflict" => {
            StatusCode::CONFLICT
        }
        "workspace_gone" => StatusCode::GONE,
        "body_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_spec"
        | "no_runtime"
        | "unknown_runtime"
        | "provision_failed"
        | "command_not_started"
        | "invalid_repository"
        | "invalid_ref"
        | "credential_unusable"
        | "unsupported" => StatusCode::UNPROCESSABLE_ENTITY,
        "websocket_required" => StatusCode::UPGRADE_REQUIRED,
        "git_authentication_failed" | "git_failed" => StatusCode::BAD_GATEWAY,
        "runtime_unavailable"
        | "no_node"
        | "node_lost"
        | "node_unreachable"
        | "cluster_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "agent_timeout" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub code: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        status_for(&self.code)
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                code: self.code.to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        ApiError {
            code: Cow::Borrowed(err.code()),
            message: err.to_string(),
        }
    }
}

impl From<berth_jobs::JobError> for ApiError {
    fn from(err: berth_jobs::JobError) -> Self {
        ApiError {
            code: Cow::Borrowed(err.code()),
            message: err.to_string(),
        }
    }
}

impl From<ServiceError> for ErrorBody {
    /// The code and message any front end gives for a service error.
    fn from(err: ServiceError) -> Self {
        let err = ApiError::from(err);
        ErrorBody {
            code: err.code.into_owned(),
            message: err.message,
        }
    }
}

impl From<berth_jobs::JobError> for ErrorBody {
    /// The code and message any front end gives for a jobs error.
    fn from(err: berth_jobs::JobError) -> Self {
        let err = ApiError::from(err);
        ErrorBody {
            code: err.code.into_owned(),
            message: err.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, "request failed");
        }
        (status, Json(self.body())).into_response()
    }
}

pub(crate) async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        "route_not_found",
        format!(
            "no route {method} {}; the API is described at /v1/openapi.json",
            uri.path()
        ),
    )
}

pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        "method_not_allowed",
        format!("{} does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_code_gets_a_deliberate_status() {
        // Codes the service layer produces; a new one lands on 500 until it
        // is mapped here on purpose.
        let expected = [
            ("invalid_spec", 422),
            ("invalid_request", 400),
            ("invalid_path", 400),
            ("no_runtime", 422),
            ("unknown_runtime", 422),
            ("runtime_unavailable", 503),
            ("not_found", 404),
            ("file_not_found", 404),
            ("ambiguous_id", 400),
            ("name_taken", 409),
            ("wrong_state", 409),
            ("workspace_gone", 410),
            ("command_not_started", 422),
            ("runtime_error", 500),
            ("provision_failed", 422),
            ("registry_error", 500),
            ("credentials_invalid", 500),
            ("credential_unusable", 422),
            ("invalid_repository", 422),
            ("invalid_ref", 422),
            ("git_authentication_failed", 502),
            ("cannot_fast_forward", 409),
            ("git_failed", 502),
            ("unsupported", 422),
            ("already_exists", 409),
            ("permission_denied", 403),
            ("agent_not_built", 404),
            ("websocket_required", 426),
            ("host_not_allowed", 403),
            ("origin_not_allowed", 403),
            ("unsupported_media_type", 415),
            ("agent_timeout", 504),
            // The jobs service's.
            ("ambiguous", 400),
            ("conflict", 409),
        ];
        for (code, status) in expected {
            assert_eq!(status_for(code).as_u16(), status, "{code}");
        }
    }
}
