//! Serving the static agent to hosts that download it (`curl`, `wget`, the
//! `deploy/agent-wrapper.sh` script) instead of having it bind-mounted.
//!
//! The route needs the server's token like every other: the binary is not
//! secret, but a host that runs workspaces for this server is given its
//! token anyway (the wrapper sends `$BERTH_TOKEN`), and an open route would
//! be the one thing an unauthenticated client on the network could make
//! the server do. A unix socket, or the loopback no-auth mode, needs none.

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::ApiQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(agent_binary))
}

/// The header carrying the agent's SHA-256, hex, for `sha256sum -c`.
pub const SHA256_HEADER: &str = "x-berth-agent-sha256";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BinaryQuery {
    /// The architecture, as `uname -m` prints it (`x86_64`; `amd64` is the
    /// same).
    pub arch: String,
}

/// The static `berth-agent` executable for an architecture.
///
/// Runs unchanged in any Linux image as its entrypoint. The `ETag` and
/// `x-berth-agent-sha256` headers carry its SHA-256 (hex); a request whose
/// `If-None-Match` names it gets `304 Not Modified`. Like every route, it
/// needs the server's token on TCP: `deploy/agent-wrapper.sh` sends
/// `$BERTH_TOKEN`, and keeps it from the agent it starts.
#[utoipa::path(
    get,
    path = "/v1/agent/binary",
    tag = "agent",
    params(BinaryQuery),
    responses(
        (status = 200, description = "The executable", body = [u8], content_type = "application/octet-stream",
            headers(
                ("ETag" = String, description = "The SHA-256 of the executable, hex, quoted"),
                ("x-berth-agent-sha256" = String, description = "The SHA-256 of the executable, hex"),
            )),
        (status = 304, description = "The client's copy (`If-None-Match`) is this one"),
        (status = 400, description = "No `arch` parameter", body = ErrorResponse),
        (status = 404, description = "No agent is built for that architecture", body = ErrorResponse),
    )
)]
pub(crate) async fn agent_binary(
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<BinaryQuery>,
) -> Result<Response, ApiError> {
    let binary = berth_agent_bin::binary_for_arch(&query.arch).ok_or_else(|| {
        ApiError::new(
            "agent_not_built",
            format!(
                "no agent is built for architecture `{}`; this server has one for: {}",
                query.arch,
                berth_agent_bin::ARCH
            ),
        )
    })?;
    let header_value = |text: &str| {
        HeaderValue::from_str(text)
            .map_err(|e| ApiError::new("internal", format!("the agent's checksum `{text}`: {e}")))
    };
    let etag = format!("\"{}\"", berth_agent_bin::SHA256);
    let etag_value = header_value(&etag)?;
    let sha = header_value(berth_agent_bin::SHA256)?;
    let sha_name = HeaderName::from_static(SHA256_HEADER);
    if if_none_match(&headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), (sha_name, sha)],
        )
            .into_response());
    }
    // The length is set by the body itself (a static slice).
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"berth-agent\""),
            ),
            (header::ETAG, etag_value),
            (sha_name, sha),
        ],
        binary,
    )
        .into_response())
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}
