//! The web dashboard: a page and its files, every byte compiled into the
//! binary, served at `/` and under `/ui/`.
//!
//! The page holds no data: it asks the API (`/v1`) for everything, with
//! the session cookie it gets by logging in ([`crate::session`]). Its own
//! code is plain HTML, CSS and ES modules in `crates/server/dashboard/`;
//! the libraries it uses are vendored built files (`vendor/VENDORED.md`).
//!
//! Embedded with `include_bytes!` rather than a crate: a fixed list of a
//! dozen files needs no directory walk or build-time machinery.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

/// Where the dashboard's files are served.
const PREFIX: &str = "/ui/";

/// Every file of the dashboard: its path under [`PREFIX`], its type and
/// its bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../dashboard/app.js")),
    ("api.js", JS, include_bytes!("../dashboard/api.js")),
    ("style.css", CSS, include_bytes!("../dashboard/style.css")),
    (
        "vendor/xterm/xterm.mjs",
        JS,
        include_bytes!("../dashboard/vendor/xterm/xterm.mjs"),
    ),
    (
        "vendor/xterm/xterm.css",
        CSS,
        include_bytes!("../dashboard/vendor/xterm/xterm.css"),
    ),
    (
        "vendor/xterm-addon-fit/addon-fit.mjs",
        JS,
        include_bytes!("../dashboard/vendor/xterm-addon-fit/addon-fit.mjs"),
    ),
    (
        "vendor/diff2html/diff2html-ui-slim.min.js",
        JS,
        include_bytes!("../dashboard/vendor/diff2html/diff2html-ui-slim.min.js"),
    ),
    (
        "vendor/diff2html/diff2html.min.css",
        CSS,
        include_bytes!("../dashboard/vendor/diff2html/diff2html.min.css"),
    ),
    (
        "vendor/highlight.js/github.min.css",
        CSS,
        include_bytes!("../dashboard/vendor/highlight.js/github.min.css"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const INDEX: &[u8] = include_bytes!("../dashboard/index.html");

/// Everything the page may load or connect to is the server itself: no
/// script, style, font or connection from anywhere else, and no other page
/// may frame it. Inline styles are allowed for the libraries that position
/// their elements with them (the terminal's cursor, the diff's columns).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's (served without a token).
pub(crate) fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path.starts_with(PREFIX)
}

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route("/ui/{*path}", get(asset))
}

async fn asset(Path(path): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == path) {
        Some((_, kind, bytes)) => file(kind, bytes),
        None => crate::error::ApiError::new(
            "route_not_found",
            format!("the dashboard has no file `{}`", path.escape_debug()),
        )
        .into_response(),
    }
}

fn file(kind: &'static str, bytes: &'static [u8]) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::FILES;
    use std::path::Path;

    /// Each vendored library's files are served with its licence beside
    /// them, and `VENDORED.md` names its package and version.
    #[test]
    fn every_vendored_library_keeps_its_licence_and_is_listed() {
        let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboard/vendor");
        let listed = std::fs::read_to_string(vendor.join("VENDORED.md")).unwrap();
        let libraries: std::collections::BTreeSet<&str> = FILES
            .iter()
            .filter_map(|(path, _, _)| path.strip_prefix("vendor/"))
            .map(|path| path.split('/').next().unwrap())
            .collect();
        assert!(libraries.len() >= 3, "{libraries:?}");
        for library in libraries {
            let licences = std::fs::read_dir(vendor.join(library))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.starts_with("LICENSE"))
                .count();
            assert_eq!(licences, 1, "vendor/{library} has no licence file");
            assert!(
                listed.contains(&format!("| `{library}/` |")),
                "VENDORED.md does not list vendor/{library}"
            );
        }
    }
}
