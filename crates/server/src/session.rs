//! Browser sessions: the dashboard trades the server's token, once, for an
//! opaque session id in an `HttpOnly`, `SameSite=Strict` cookie, which the
//! API then accepts as it accepts the bearer token.
//!
//! The cookie is not the token: it is 32 random bytes naming a session held
//! here, in memory, that expires [`SESSION_LIFETIME`] after login (a
//! restarted server forgets every session) and ends at logout. Only the
//! SHA-256 digests of the ids are kept, compared in constant time.
//!
//! A request that changes anything and is authenticated by the cookie must
//! say where it comes from (`Origin`, which the boundary checks against the
//! `Host`): see [`crate::auth`].

use crate::AppState;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::ApiJson;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The cookie naming a browser's session.
pub const COOKIE: &str = "berth_session";

/// How long a session lasts after its login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// The sessions opened by logging in, by the digest of their id.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<[u8; 32], Instant>>>);

impl Sessions {
    /// A new session, valid from `now` for [`SESSION_LIFETIME`]; its id.
    pub(crate) fn open(&self, now: Instant) -> std::io::Result<String> {
        let id = format!("s_{}", URL_SAFE_NO_PAD.encode(crate::auth::random_bytes()?));
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Expired sessions go whenever a new one comes, so that the map
        // holds only the live ones.
        sessions.retain(|_, expires| *expires > now);
        sessions.insert(digest(&id), now + SESSION_LIFETIME);
        Ok(id)
    }

    /// Whether `id` names a session still live at `now`.
    pub(crate) fn accepts(&self, id: &str, now: Instant) -> bool {
        let presented = digest(id);
        let sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Every live digest is compared in constant time, so that timing
        // tells nothing of how close a guess came.
        sessions.iter().fold(false, |found, (known, expires)| {
            let same = bool::from(subtle::ConstantTimeEq::ct_eq(&presented[..], &known[..]));
            found | (same & (*expires > now))
        })
    }

    /// Ends the session `id`, if there is one.
    pub(crate) fn close(&self, id: &str) {
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.remove(&digest(id));
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// The session id the request's `Cookie` header carries, if any.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .map(|cookie| cookie.value().to_string())
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(login, logout))
}

/// The server's token, traded for a session cookie.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginParams {
    /// The server's token (`$BERTH_HOME/server-token`).
    pub token: String,
}

/// Opens a browser session: with the server's token, sets an `HttpOnly`,
/// `SameSite=Strict` cookie that the API accepts instead of the bearer
/// token for 12 hours. The cookie is an opaque session id, not the token.
/// Without a token (a unix socket), any login succeeds and sets nothing.
#[utoipa::path(
    post,
    path = "/v1/session",
    tag = "session",
    security(()),
    request_body = LoginParams,
    responses(
        (status = 204, description = "Logged in; the session cookie is set"),
        (status = 400, description = "The body is not a login", body = ErrorResponse),
        (status = 401, description = "The wrong token", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
    )
)]
pub(crate) async fn login(
    State(state): State<AppState>,
    ApiJson(params): ApiJson<LoginParams>,
) -> Result<Response, ApiError> {
    if !state.auth.is_required() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if !state.auth.accepts(&params.token) {
        return Err(ApiError::new(
            "unauthorized",
            "wrong token: the server's token is in $BERTH_HOME/server-token",
        ));
    }
    let id = state.auth.sessions().open(Instant::now()).map_err(|e| {
        ApiError::new(
            "session_failed",
            format!("cannot draw a session id from the kernel's random source: {e}"),
        )
    })?;
    let cookie = Cookie::build((COOKIE, id))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    Ok(set_cookie(cookie))
}

/// Ends the browser session its cookie names, and clears the cookie.
#[utoipa::path(
    delete,
    path = "/v1/session",
    tag = "session",
    security(()),
    responses(
        (status = 204, description = "Logged out; the session cookie is cleared"),
    )
)]
pub(crate) async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        state.auth.sessions().close(&id);
    }
    let mut cookie = Cookie::build((COOKIE, ""))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .build();
    cookie.make_removal();
    set_cookie(cookie)
}

fn set_cookie(cookie: Cookie<'_>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lasts_its_lifetime_and_not_a_second_more() {
        let sessions = Sessions::default();
        let login = Instant::now();
        let id = sessions.open(login).unwrap();
        assert!(sessions.accepts(&id, login));
        assert!(sessions.accepts(&id, login + SESSION_LIFETIME - Duration::from_secs(1)));
        assert!(!sessions.accepts(&id, login + SESSION_LIFETIME));
    }

    #[test]
    fn only_the_exact_id_of_an_open_session_is_accepted() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let id = sessions.open(now).unwrap();
        let other = sessions.open(now).unwrap();
        assert_ne!(id, other);
        assert!(!sessions.accepts(&id[..id.len() - 1], now));
        assert!(!sessions.accepts("", now));
        sessions.close(&id);
        assert!(!sessions.accepts(&id, now), "a closed session is gone");
        assert!(
            sessions.accepts(&other, now),
            "closing one leaves the other"
        );
    }

    #[test]
    fn expired_sessions_are_forgotten_when_a_new_one_opens() {
        let sessions = Sessions::default();
        let then = Instant::now();
        sessions.open(then).unwrap();
        sessions.open(then + SESSION_LIFETIME).unwrap();
        assert_eq!(sessions.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_session_id_is_read_from_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; berth_session=s_abc; other=1"),
        );
        assert_eq!(session_cookie(&headers).as_deref(), Some("s_abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("berth_sessionx=1"));
        assert_eq!(session_cookie(&headers), None);
    }
}
