//! Bearer-token authentication for the TCP listener, and the token file.
//!
//! The token is compared in constant time, on SHA-256 digests so that not
//! even its length leaks through timing. A unix socket needs no token: its
//! file mode (0600) already limits who can connect.
//!
//! A browser's session cookie ([`crate::session`]) stands for the token;
//! a request authenticated by it that may change anything (any method but
//! `GET`, `HEAD`, `OPTIONS`) must carry an `Origin`, which the boundary has
//! already held to the server's own: a cookie a browser attaches to a
//! request it cannot place never acts for the user.

use crate::error::ApiError;
use crate::server::ServerError;
use crate::session::{Sessions, session_cookie};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq as _;

/// The file in berth's state directory holding the server's token.
pub const TOKEN_FILE: &str = "server-token";

/// Routes that answer without a token: the health checks, so that
/// supervisors can probe them, the login, and the dashboard's page and
/// files (which hold no data: what they show comes from the API).
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/health" | "/v1/session")
        || crate::dashboard::is_dashboard_path(path)
}

/// Who may use the API.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<[u8; 32]>>,
    sessions: Sessions,
}

impl Auth {
    /// Every request but the open routes must carry this bearer token, or
    /// the cookie of a session opened with it.
    pub fn token(token: &str) -> Auth {
        Auth {
            token: Some(Arc::new(digest(token))),
            sessions: Sessions::default(),
        }
    }

    /// No token is asked for: for a unix socket, or the explicitly insecure
    /// mode on loopback.
    pub fn none() -> Auth {
        Auth {
            token: None,
            sessions: Sessions::default(),
        }
    }

    pub fn is_required(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn accepts(&self, presented: &str) -> bool {
        match &self.token {
            Some(expected) => bool::from(digest(presented).ct_eq(&**expected)),
            None => true,
        }
    }

    pub(crate) fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token from an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Refuses a request without the right token before anything is done.
pub(crate) async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    if !auth.is_required() || is_open(req.uri().path()) {
        return next.run(req).await;
    }
    let refusal = match (bearer(req.headers()), session_cookie(req.headers())) {
        (Some(token), _) if auth.accepts(token) => return next.run(req).await,
        (Some(_), _) => "wrong bearer token",
        (None, Some(session)) if auth.sessions.accepts(&session, Instant::now()) => {
            if !req.method().is_safe() && !req.headers().contains_key(header::ORIGIN) {
                return ApiError::new(
                    "origin_not_allowed",
                    format!(
                        "a {} authenticated by the session cookie must carry the `Origin` \
                         of this server's dashboard",
                        req.method()
                    ),
                )
                .into_response();
            }
            return next.run(req).await;
        }
        (None, Some(_)) => "the session has expired or was ended: log in again",
        (None, None) => {
            "missing bearer token: send `Authorization: Bearer <token>`; \
             the server's token is in $BERTH_HOME/server-token"
        }
    };
    let mut response = ApiError::new("unauthorized", refusal).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"berth\""),
    );
    response
}

/// The token stored in `home`, made (random, mode 0600) if there is none.
pub(crate) fn load_or_create_token(home: &Path) -> Result<String, ServerError> {
    let path = home.join(TOKEN_FILE);
    let token_error = |source| ServerError::Token {
        path: path.clone(),
        source,
    };
    let token = generate_token().map_err(token_error)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .map_err(token_error)?;
            tracing::info!(path = %path.display(), "generated a new server token");
            Ok(token)
        }
        // Made earlier, or by another server starting at the same moment.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token(&path),
        Err(e) => Err(token_error(e)),
    }
}

fn read_token(path: &Path) -> Result<String, ServerError> {
    let token_error = |source| ServerError::Token {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(token_error)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ServerError::TokenFileMode {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let token = std::fs::read_to_string(path).map_err(token_error)?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ServerError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// 32 bytes from the kernel's random source, URL-safe.
fn generate_token() -> std::io::Result<String> {
    Ok(format!("berth_{}", URL_SAFE_NO_PAD.encode(random_bytes()?)))
}

/// 32 bytes from the kernel's random source.
pub(crate) fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(std::io::Error::from)?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_with_mode_0600_and_reused() {
        let home = tempfile::tempdir().unwrap();
        let first = load_or_create_token(home.path()).unwrap();
        assert!(first.len() > 40, "{first}");
        let mode = std::fs::metadata(home.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_token(home.path()).unwrap(), first);
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join(TOKEN_FILE);
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create_token(home.path()).unwrap_err();
        assert!(err.to_string().contains("0644"), "{err}");
        assert!(err.to_string().contains(TOKEN_FILE), "{err}");
    }

    #[test]
    fn only_the_exact_token_is_accepted() {
        let auth = Auth::token("s3cret");
        assert!(auth.accepts("s3cret"));
        assert!(!auth.accepts("s3cre"));
        assert!(!auth.accepts("s3cret "));
        assert!(!auth.accepts(""));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer s3cret"),
        );
        assert_eq!(bearer(&headers), Some("s3cret"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic s3cret"),
        );
        assert_eq!(bearer(&headers), None);
    }
}
