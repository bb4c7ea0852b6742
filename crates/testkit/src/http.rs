//! A loopback smart-HTTP git server that demands a token: real
//! `git http-backend` run as a CGI program behind a small axum server,
//! which refuses every request without `Authorization: Bearer TOKEN` (or
//! Basic with TOKEN as the password), counts what it served and refused,
//! keeps every `Authorization` header it was sent, and can hold fetches in
//! the middle of a clone until told to go on.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// The largest request body accepted (a push of test repositories is small).
const BODY_LIMIT: usize = 256 << 20;

/// How long [`GitHttpServer::wait_for_stalled`] waits before it fails the
/// test: a bound on a broken test, not a timing.
const STALL_WAIT: Duration = Duration::from_secs(60);

pub struct GitHttpServer {
    addr: SocketAddr,
    state: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    project_root: PathBuf,
    token: String,
    served: AtomicUsize,
    refused: AtomicUsize,
    gzipped: AtomicUsize,
    authorizations: Mutex<Vec<String>>,
    /// Whether fetches wait.
    stalling: tokio::sync::watch::Sender<bool>,
    /// How many fetches are waiting now.
    stalled: Mutex<usize>,
    stalled_changed: Condvar,
}

impl GitHttpServer {
    /// Serves the repositories under `base_path` (`base_path/NAME` is
    /// `{url}NAME`) to clients that present `token`. Runs on its own thread
    /// and runtime, so it works from sync and async tests alike; stopped
    /// when dropped.
    pub fn start(base_path: &Path, token: &str) -> GitHttpServer {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the listening address: {e}"));
        let state = Arc::new(Shared {
            project_root: base_path.to_path_buf(),
            token: token.to_owned(),
            served: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            gzipped: AtomicUsize::new(0),
            authorizations: Mutex::new(Vec::new()),
            stalling: tokio::sync::watch::Sender::new(false),
            stalled: Mutex::new(0),
            stalled_changed: Condvar::new(),
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot build a runtime for the git HTTP server: {e}"));
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => panic!("cannot serve on 127.0.0.1: {e}"),
                };
                tokio::select! {
                    result = axum::serve(listener, app) => {
                        if let Err(e) = result {
                            panic!("git HTTP server failed: {e}");
                        }
                    }
                    _ = stopped => {}
                }
            });
        });
        GitHttpServer {
            addr,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests that presented the token and were passed to git.
    pub fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }

    /// Requests refused for want of the token.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Every request it received, served or refused.
    pub fn requests(&self) -> usize {
        self.served() + self.refused()
    }

    /// The `Authorization` header of every request that had one, in order.
    pub fn authorizations(&self) -> Vec<String> {
        self.state
            .authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, every authorized fetch (a `git-upload-pack` POST: the
    /// part of a clone after the refs are advertised) waits, unanswered,
    /// until [`GitHttpServer::resume`]. The client is left mid-clone, with
    /// its destination made and its connection open.
    pub fn stall(&self) {
        self.state.stalling.send_replace(true);
    }

    /// Answers the fetches that wait, and every later one.
    pub fn resume(&self) {
        self.state.stalling.send_replace(false);
    }

    /// Blocks until at least `count` fetches wait in a stall.
    pub fn wait_for_stalled(&self, count: usize) {
        let stalled = self.state.stalled.lock().unwrap_or_else(|e| e.into_inner());
        let (stalled, timeout) = self
            .state
            .stalled_changed
            .wait_timeout_while(stalled, STALL_WAIT, |n| *n < count)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            panic!(
                "{} fetches stalled after {STALL_WAIT:?}, not {count}",
                *stalled
            );
        }
    }

    /// Served requests whose body was gzip'd (git compresses large ones).
    pub fn gzipped(&self) -> usize {
        self.state.gzipped.load(Ordering::SeqCst)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(State(state): State<Arc<Shared>>, request: Request) -> Response {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        state
            .authorizations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    if !authorized(request.headers(), &state.token) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"berth test\"")],
            "a token is required\n",
        )
            .into_response();
    }
    state.served.fetch_add(1, Ordering::SeqCst);
    if request.method() == axum::http::Method::POST
        && request.uri().path().ends_with("/git-upload-pack")
    {
        stall(&state).await;
    }
    let gzipped = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if gzipped {
        state.gzipped.fetch_add(1, Ordering::SeqCst);
    }
    match cgi(&state, request).await {
        Ok(response) => response,
        Err(message) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n")).into_response(),
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return bearer == token;
    }
    value
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, password)| password == token))
        .unwrap_or(false)
}

/// Waits while fetches are stalled, counted among the stalled meanwhile.
async fn stall(state: &Shared) {
    let mut stalling = state.stalling.subscribe();
    if !*stalling.borrow_and_update() {
        return;
    }
    /// Counts one waiting fetch for as long as it lives, however the wait
    /// ends (a client that hangs up drops it).
    struct Waiting<'a>(&'a Shared);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            *self.0.stalled.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            self.0.stalled_changed.notify_all();
        }
    }
    *state.stalled.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    state.stalled_changed.notify_all();
    let _waiting = Waiting(state);
    // The sender lives as long as the server.
    let _ = stalling.wait_for(|on| !*on).await;
}

/// Runs `git http-backend` for one request, as a CGI server would.
async fn cgi(state: &Shared, request: Request) -> Result<Response, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?;
    let header_text = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &state.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header_text("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        // http-backend inflates a gzip'd body itself when told it is one.
        .env("HTTP_CONTENT_ENCODING", header_text("content-encoding"))
        // Carries `version=2` for protocol v2.
        .env("HTTP_GIT_PROTOCOL", header_text("git-protocol"))
        .env("REMOTE_USER", "berth-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run git http-backend: {e}"))?;
    let stdin = child.stdin.take();
    // Written alongside reading the output: a large body and a large reply
    // would otherwise block each other.
    let writer = tokio::spawn(write_all(stdin, body));
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("git http-backend failed: {e}"))?;
    let _ = writer.await;
    if output.stdout.is_empty() && !output.status.success() {
        return Err(format!(
            "git http-backend failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_cgi_response(&output.stdout)
}

async fn write_all(stdin: Option<tokio::process::ChildStdin>, body: Bytes) {
    if let Some(mut stdin) = stdin {
        // The backend may exit without reading (an error); that is reported
        // by its output, not here.
        let _ = stdin.write_all(&body).await;
    }
}

/// Splits CGI output into a status, headers and the body.
fn parse_cgi_response(output: &[u8]) -> Result<Response, String> {
    let (head, body) = find(output, b"\r\n\r\n")
        .map(|at| (&output[..at], &output[at + 4..]))
        .or_else(|| find(output, b"\n\n").map(|at| (&output[..at], &output[at + 2..])))
        .ok_or("git http-backend wrote no header block")?;
    let head = String::from_utf8_lossy(head);
    let mut response = Response::new(Body::from(body.to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            *response.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("bad CGI status `{value}`"))?;
        } else {
            let name = HeaderName::try_from(name.trim())
                .map_err(|e| format!("bad CGI header `{line}`: {e}"))?;
            let value = HeaderValue::try_from(value)
                .map_err(|e| format!("bad CGI header `{line}`: {e}"))?;
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgi_output_becomes_a_response() {
        let response =
            parse_cgi_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
                .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
        let response = parse_cgi_response(b"Content-Type: a/b\n\nbody").unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(parse_cgi_response(b"no header block").is_err());
    }

    #[test]
    fn bearer_and_basic_with_the_token_pass() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "tok"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(authorized(&headers, "tok"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert!(!authorized(&headers, "tok"));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:tok");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert!(authorized(&headers, "tok"));
        assert!(!authorized(&headers, "user"));
    }
}
