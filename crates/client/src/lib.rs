//! A typed client of berth's HTTP API (`/v1`), for `berth --server`:
//! `http://host:port` with a bearer token, or `unix:///path/to/socket`.
//! Each call is one request; an error the server answers carries its
//! stable code and its message, which is the service layer's own, so a
//! front end reports it as it would a local one.

mod jobs;
mod terminal;

pub use terminal::Terminal;

use berth_core::{
    Change, ExecEvent, ExecRequest, ExecStream, FileEntry, Labels, ProvisionEvent, ReadStream,
    Snapshot, Spec, Workspace,
};
use berth_provider::{
    CacheGc, CreateOptions, FetchResult, RuntimeGc, RuntimeStatus, WorkspaceDetails,
};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

const NDJSON: &str = "application/x-ndjson";

/// Why a call did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--server `{server}`: {reason}")]
    BadServer { server: String, reason: String },
    #[error("cannot reach the berth server at {server}: {detail}")]
    Unreachable { server: String, detail: String },
    /// The server refused or failed the call; `message` is its own.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the berth server at {server} answered unexpectedly: {detail}")]
    Protocol { server: String, detail: String },
    #[error("{what}: {source}")]
    Local {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The server's stable code for an error it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A client of one berth server. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Where requests go: the server's URL, or `http://localhost` over a
    /// unix socket.
    base: url::Url,
    /// The server as the user named it, for messages.
    server: String,
    token: Option<String>,
    /// The unix socket requests go through, when not TCP.
    socket: Option<PathBuf>,
}

/// The error body every refusal carries.
#[derive(Deserialize)]
struct ErrorResponse {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

/// A line of a progress stream: an event, or the error that ended it.
#[derive(Deserialize)]
#[serde(untagged)]
enum ProgressLine {
    Event(ProvisionEvent),
    Error { error: ErrorBody },
}

#[derive(Serialize)]
struct CreateParams<'a> {
    spec: &'a Spec,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    labels: &'a Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifetime: Option<u64>,
}

#[derive(Deserialize)]
struct WorkspaceList {
    workspaces: Vec<Workspace>,
}

#[derive(Deserialize)]
struct FetchResponse {
    results: Vec<FetchResult>,
}

#[derive(Deserialize)]
struct FileList {
    entries: Vec<FileEntry>,
}

#[derive(Deserialize)]
struct RuntimeList {
    runtimes: Vec<RuntimeStatus>,
}

#[derive(Deserialize)]
struct ChangeList {
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct GcResponse {
    runtimes: Vec<RuntimeGc>,
}

#[derive(Deserialize)]
struct NodeList {
    clustered: bool,
    nodes: Vec<berth_core::node::NodeInfo>,
}

/// What an export wrote: the counts the server reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportCounts {
    pub entries: u64,
    pub bytes: u64,
    pub deleted: u64,
}

impl Client {
    /// A client of the server at `server` (`http://host:port` or
    /// `unix:///path`), sending `token` as a bearer token when given.
    /// Nothing is contacted until the first call.
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        let bad = |reason: String| ClientError::BadServer {
            server: server.into(),
            reason,
        };
        let url = url::Url::parse(server).map_err(|e| {
            bad(format!(
                "{e}; expected http://HOST:PORT or unix:///PATH/TO/SOCKET"
            ))
        })?;
        let builder = reqwest::Client::builder();
        let (builder, base, socket) = match url.scheme() {
            "http" => (builder, url.clone(), None),
            "unix" => {
                let path = PathBuf::from(url.path());
                if url.has_host() || !path.is_absolute() {
                    return Err(bad(
                        "expected an absolute socket path: unix:///PATH/TO/SOCKET".into(),
                    ));
                }
                let base = url::Url::parse("http://localhost/").map_err(|e| bad(e.to_string()))?;
                (builder.unix_socket(path.clone()), base, Some(path))
            }
            "https" => {
                return Err(bad(
                    "https is not supported; put TLS in front of berth's loopback server and \
                     reach it over a tunnel, or use unix:///PATH"
                        .into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "`{other}` is not a server scheme; expected http:// or unix://"
                )));
            }
        };
        let http = builder
            .build()
            .map_err(|e| bad(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            server: server.into(),
            token,
            socket,
        })
    }

    /// The server as the user named it.
    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, ClientError> {
        let url = self.base.join(path).map_err(|e| ClientError::BadServer {
            server: self.server.clone(),
            reason: format!("cannot address `{path}`: {e}"),
        })?;
        let request = self.http.request(method, url);
        Ok(match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        })
    }

    /// Sends a request; an answer other than a success becomes the error
    /// the server said.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Err(self.refusal(status, &body))
    }

    /// The error a server's refusal (`status` with its `body`) says.
    fn refusal(&self, status: StatusCode, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(refusal) => ClientError::Api {
                status: status.as_u16(),
                code: refusal.error.code,
                message: refusal.error.message,
            },
            Err(_) => self.protocol(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let body = self.send(request).await?.bytes().await;
        let body = body.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body).map_err(|e| self.protocol(e.to_string()))
    }

    fn unreachable(&self, err: impl std::error::Error) -> ClientError {
        // reqwest's own message says little ("error sending request");
        // the cause (connection refused, no such file) says what is wrong.
        let mut detail = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            detail = format!("{detail}: {cause}");
            source = cause.source();
        }
        ClientError::Unreachable {
            server: self.server.clone(),
            detail,
        }
    }

    fn protocol(&self, detail: String) -> ClientError {
        ClientError::Protocol {
            server: self.server.clone(),
            detail,
        }
    }

    fn workspace_path(id: &str, rest: &str) -> String {
        let id: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        format!("/v1/workspaces/{id}{rest}")
    }

    /// The lines of an NDJSON body, each parsed as it arrives.
    fn lines<T: DeserializeOwned>(
        &self,
        response: Response,
    ) -> impl Stream<Item = Result<T, ClientError>> + Send + use<T> {
        let this = self.clone();
        let body = StreamReader::new(response.bytes_stream().map_err(std::io::Error::other));
        let lines = tokio_util::codec::FramedRead::new(body, tokio_util::codec::LinesCodec::new());
        lines.map(move |line| {
            let line = line.map_err(|e| this.protocol(format!("a broken stream: {e}")))?;
            serde_json::from_str(&line).map_err(|e| this.protocol(format!("{e}: {line}")))
        })
    }

    /// Provisions and starts a workspace, passing provisioning events to
    /// `progress` as the server streams them.
    pub async fn create(
        &self,
        spec: &Spec,
        options: &CreateOptions,
        progress: mpsc::Sender<ProvisionEvent>,
    ) -> Result<Workspace, ClientError> {
        let params = CreateParams {
            spec,
            runtime: options.runtime.as_deref(),
            name: options.name.as_deref(),
            labels: &options.labels,
            idle: options.idle,
            lifetime: options.lifetime,
        };
        let request = self
            .request(Method::POST, "/v1/workspaces")?
            .header(reqwest::header::ACCEPT, NDJSON)
            .json(&params);
        let response = self.send(request).await?;
        if response.status() == StatusCode::CREATED {
            // Answered before any progress (nothing to stream).
            let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
            return serde_json::from_slice(&body).map_err(|e| self.protocol(e.to_string()));
        }
        let mut lines = std::pin::pin!(self.lines::<ProgressLine>(response));
        let mut ready = None;
        while let Some(line) = lines.next().await {
            match line? {
                ProgressLine::Event(event) => {
                    if let ProvisionEvent::Ready { id } = &event {
                        ready = Some(id.to_string());
                    }
                    let _ = progress.send(event).await;
                }
                ProgressLine::Error { error } => {
                    return Err(ClientError::Api {
                        status: StatusCode::UNPROCESSABLE_ENTITY.as_u16(),
                        code: error.code,
                        message: error.message,
                    });
                }
            }
        }
        let id = ready.ok_or_else(|| self.protocol("provisioning ended without `ready`".into()))?;
        Ok(self.describe(&id).await?.workspace)
    }

    /// The workspaces carrying every label of `selector`, oldest first.
    pub async fn list(
        &self,
        include_removed: bool,
        selector: &Labels,
    ) -> Result<Vec<Workspace>, ClientError> {
        let mut request = self.request(Method::GET, "/v1/workspaces")?;
        if include_removed {
            request = request.query(&[("all", "true")]);
        }
        if !selector.is_empty() {
            let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.query(&[("label", labels.join(","))]);
        }
        Ok(self.json::<WorkspaceList>(request).await?.workspaces)
    }

    pub async fn describe(&self, id: &str) -> Result<WorkspaceDetails, ClientError> {
        self.json(self.request(Method::GET, &Self::workspace_path(id, ""))?)
            .await
    }

    pub async fn start(&self, id: &str) -> Result<Workspace, ClientError> {
        self.json(self.request(Method::POST, &Self::workspace_path(id, "/start"))?)
            .await
    }

    pub async fn stop(&self, id: &str) -> Result<Workspace, ClientError> {
        self.json(self.request(Method::POST, &Self::workspace_path(id, "/stop"))?)
            .await
    }

    pub async fn remove(&self, id: &str) -> Result<Workspace, ClientError> {
        self.json(self.request(Method::DELETE, &Self::workspace_path(id, ""))?)
            .await
    }

    pub async fn fetch(&self, id: &str) -> Result<Vec<FetchResult>, ClientError> {
        let request = self.request(Method::POST, &Self::workspace_path(id, "/fetch"))?;
        Ok(self.json::<FetchResponse>(request).await?.results)
    }

    pub async fn runtimes(&self) -> Result<Vec<RuntimeStatus>, ClientError> {
        let request = self.request(Method::GET, "/v1/runtimes")?;
        Ok(self.json::<RuntimeList>(request).await?.runtimes)
    }

    /// Runs a command; its events arrive as the server streams them.
    /// Cancelling `cancel` closes the connection, which makes the server
    /// end the command's whole process tree.
    pub async fn exec(
        &self,
        id: &str,
        request: &ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, ClientError> {
        let request = self
            .request(Method::POST, &Self::workspace_path(id, "/exec"))?
            .header(reqwest::header::ACCEPT, NDJSON)
            .json(request);
        let response = self.send(request).await?;
        let (sender, receiver) = mpsc::channel(64);
        let events = self.lines::<ExecEvent>(response);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    event = events.next() => event,
                };
                // A broken stream ends the events without an exit, which
                // the caller reports.
                let Some(Ok(event)) = event else { return };
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(receiver)
    }

    /// A file's bytes, read as the stream is consumed.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<ReadStream, ClientError> {
        let request = self
            .request(Method::GET, &Self::workspace_path(id, "/files/content"))?
            .query(&[("path", path)]);
        Ok(self.body(self.send(request).await?))
    }

    fn body(&self, response: Response) -> ReadStream {
        ReadStream::new(StreamReader::new(
            response.bytes_stream().map_err(std::io::Error::other),
        ))
    }

    pub async fn write_file(&self, id: &str, path: &str, data: Vec<u8>) -> Result<(), ClientError> {
        let request = self
            .request(Method::PUT, &Self::workspace_path(id, "/files/content"))?
            .query(&[("path", path)])
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.send(request).await.map(drop)
    }

    pub async fn list_files(&self, id: &str, dir: &str) -> Result<Vec<FileEntry>, ClientError> {
        let request = self
            .request(Method::GET, &Self::workspace_path(id, "/files"))?
            .query(&[("path", dir)]);
        Ok(self.json::<FileList>(request).await?.entries)
    }

    pub async fn snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        self.json(self.request(Method::POST, &Self::workspace_path(id, "/snapshots"))?)
            .await
    }

    pub async fn fork(&self, id: &str, count: usize) -> Result<Vec<Workspace>, ClientError> {
        let request = self
            .request(Method::POST, &Self::workspace_path(id, "/fork"))?
            .json(&serde_json::json!({ "count": count }));
        Ok(self.json::<WorkspaceList>(request).await?.workspaces)
    }

    pub async fn reset(&self, id: &str, to: Option<&str>) -> Result<Workspace, ClientError> {
        let request = self
            .request(Method::POST, &Self::workspace_path(id, "/reset"))?
            .json(&serde_json::json!({ "to": to }));
        self.json(request).await
    }

    pub async fn changes(&self, id: &str) -> Result<Vec<Change>, ClientError> {
        let request = self.request(Method::GET, &Self::workspace_path(id, "/changes"))?;
        Ok(self.json::<ChangeList>(request).await?.changes)
    }

    pub async fn diff(&self, id: &str) -> Result<ReadStream, ClientError> {
        let request = self.request(Method::GET, &Self::workspace_path(id, "/diff"))?;
        Ok(self.body(self.send(request).await?))
    }

    /// Writes a workspace's changes to `output`: the server's archive as
    /// it is for a `.tar.zst` path, unpacked into the directory otherwise.
    pub async fn export(
        &self,
        id: &str,
        output: &Path,
        is_archive: bool,
    ) -> Result<ExportCounts, ClientError> {
        let request = self.request(Method::GET, &Self::workspace_path(id, "/export"))?;
        let response = self.send(request).await?;
        let header = |name: &str| -> Result<u64, ClientError> {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| self.protocol(format!("the export has no `{name}` header")))
        };
        let counts = ExportCounts {
            entries: header("x-berth-export-entries")?,
            bytes: header("x-berth-export-bytes")?,
            deleted: header("x-berth-export-deleted")?,
        };
        save_export(self.body(response), output, is_archive).await?;
        Ok(counts)
    }

    /// Removes what nothing uses, in every runtime that keeps layers.
    pub async fn gc(&self) -> Result<Vec<RuntimeGc>, ClientError> {
        let request = self.request(Method::POST, "/v1/gc")?;
        Ok(self.json::<GcResponse>(request).await?.runtimes)
    }

    /// Evicts unused provisioning cache entries until the cache fits
    /// `budget` bytes (the server's configured budget when `None`).
    pub async fn gc_cache(&self, budget: Option<u64>) -> Result<CacheGc, ClientError> {
        let request = self
            .request(Method::POST, "/v1/cache/gc")?
            .json(&serde_json::json!({ "budget": budget }));
        self.json(request).await
    }

    /// The nodes of the cluster the server serves, by name; `None` when it
    /// serves none.
    pub async fn nodes(&self) -> Result<Option<Vec<berth_core::node::NodeInfo>>, ClientError> {
        let list: NodeList = self.json(self.request(Method::GET, "/v1/nodes")?).await?;
        Ok(list.clustered.then_some(list.nodes))
    }

    /// What the workspace's agent reports, interpreters probed again
    /// when `detect`.
    pub async fn agent_info(
        &self,
        id: &str,
        detect: bool,
    ) -> Result<berth_core::proto::AgentInfo, ClientError> {
        let request = self
            .request(Method::GET, &Self::workspace_path(id, "/info"))?
            .query(&[("detect", detect)]);
        self.json(request).await
    }
}

/// Writes an exported archive read from `body` to `output`: the archive
/// itself (`is_archive`), or the files it holds unpacked into a directory.
/// It is downloaded beside the output first, so that an archive is renamed
/// into place whole and nothing partial is left under its name.
pub async fn save_export(
    mut body: impl tokio::io::AsyncRead + Unpin,
    output: &Path,
    is_archive: bool,
) -> Result<(), ClientError> {
    let local = |what: String| move |source| ClientError::Local { what, source };
    let beside = match output.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let download = tempfile::NamedTempFile::new_in(&beside)
        .map_err(local(format!("cannot write into {}", beside.display())))?;
    let mut file = tokio::fs::File::from_std(
        download
            .reopen()
            .map_err(local(format!("cannot write into {}", beside.display())))?,
    );
    tokio::io::copy(&mut body, &mut file)
        .await
        .map_err(local("cannot download the export".into()))?;
    if is_archive {
        download.persist(output).map_err(|e| ClientError::Local {
            what: format!("cannot write {}", output.display()),
            source: e.error,
        })?;
    } else {
        let archive = download.path().to_path_buf();
        let dest = output.to_path_buf();
        tokio::task::spawn_blocking(move || berth_layers::extract_archive(&archive, &dest))
            .await
            .map_err(|e| ClientError::Local {
                what: "cannot unpack the export".into(),
                source: std::io::Error::other(e),
            })?
            .map_err(local(format!("cannot unpack into {}", output.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_named_by_http_or_unix_urls_and_nothing_else() {
        assert!(Client::new("http://127.0.0.1:7433", None).is_ok());
        assert!(Client::new("unix:///run/berth.sock", None).is_ok());
        for (server, says) in [
            ("127.0.0.1:7433", "expected http://HOST:PORT"),
            ("ftp://host/", "not a server scheme"),
            ("unix://relative/sock", "absolute socket path"),
            ("https://host/", "https is not supported"),
            ("", "expected http://HOST:PORT"),
        ] {
            let message = Client::new(server, None)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.contains(says), "{server}: {message}");
        }
    }
}
