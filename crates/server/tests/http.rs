//! The HTTP API end to end: a real provider in a scratch `BERTH_HOME`, served
//! on 127.0.0.1:0 (or a unix socket) and driven by a real HTTP client.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_provider::{Provider, ProviderConfig};
use berth_runtime_fake::{Behaviour, FakeRuntime};
use berth_runtime_local::LocalRuntime;
use berth_server::{Listen, ServerConfig, ServerError, TOKEN_FILE};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use tokio::sync::oneshot;

const TOKEN: &str = "test-token-0123456789";

/// A running server over a fresh provider.
struct Api {
    base: String,
    token: Option<String>,
    client: reqwest::Client,
    provider: Provider,
    fake: Arc<FakeRuntime>,
    home: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<Result<(), ServerError>>>,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(|config| config).await
    }

    async fn start_with(configure: impl FnOnce(ServerConfig) -> ServerConfig) -> Api {
        let home = tempfile::tempdir().unwrap();
        Api::start_in(home, configure).await
    }

    async fn start_in(
        home: tempfile::TempDir,
        configure: impl FnOnce(ServerConfig) -> ServerConfig,
    ) -> Api {
        Api::start_with_runtimes(home, Vec::new(), configure).await
    }

    /// A server whose provider has `extra` runtimes besides `fake` and
    /// `local`.
    async fn start_with_runtimes(
        home: tempfile::TempDir,
        extra: Vec<Arc<dyn berth_core::Runtime>>,
        configure: impl FnOnce(ServerConfig) -> ServerConfig,
    ) -> Api {
        Api::start_with_provider(home, extra, |provider| provider, configure).await
    }

    /// A server whose provider has `extra` runtimes besides `fake` and
    /// `local`, and is set up by `provider`.
    async fn start_with_provider(
        home: tempfile::TempDir,
        extra: Vec<Arc<dyn berth_core::Runtime>>,
        provider: impl FnOnce(ProviderConfig) -> ProviderConfig,
        configure: impl FnOnce(ServerConfig) -> ServerConfig,
    ) -> Api {
        let fake = Arc::new(FakeRuntime::new());
        let local = Arc::new(LocalRuntime::new(home.path()));
        let mut config = ProviderConfig::new(home.path())
            .runtime(fake.clone())
            .runtime(local);
        for runtime in extra {
            config = config.runtime(runtime);
        }
        let provider = Provider::open(provider(config)).await.unwrap();
        let config = configure(ServerConfig {
            listen: Listen::Tcp("127.0.0.1:0".parse().unwrap()),
            token: Some(TOKEN.into()),
            ..ServerConfig::default()
        });
        let server = berth_server::bind(provider.clone(), config).await.unwrap();
        let client = match server.socket_path() {
            Some(path) => reqwest::Client::builder().unix_socket(path),
            None => reqwest::Client::builder(),
        }
        .no_proxy()
        .build()
        .unwrap();
        let base = match server.local_addr() {
            Some(addr) => format!("http://{addr}"),
            None => "http://berth.sock".into(),
        };
        let token = server.token().map(str::to_string);
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server.run_until(async move {
            let _ = stopped.await;
        }));
        Api {
            base,
            token,
            client,
            provider,
            fake,
            home,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Stops the server and waits until it has stopped.
    async fn shutdown(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.served.take().unwrap().await.unwrap().unwrap();
        self.home
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::GET, path)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(Method::POST, path)
    }

    /// Sends a request and returns its status and JSON body.
    async fn json(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("a {status} body that is not JSON ({e}): {text}"));
        (status, body)
    }

    /// Provisions a `fake` workspace and returns its id.
    async fn create(&self, spec: Value) -> String {
        let (status, body) = self
            .json(self.post("/v1/workspaces").json(&json!({ "spec": spec })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }
}

/// Asserts an error response: its status, its stable code, and that its
/// message mentions each of `mentions`.
fn assert_error(
    status: StatusCode,
    body: &Value,
    expected: StatusCode,
    code: &str,
    mentions: &[&str],
) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    for needle in mentions {
        assert!(
            message.contains(needle),
            "`{message}` does not mention `{needle}`"
        );
    }
}

fn fake_spec() -> Value {
    json!({ "runtime": "fake", "name": "demo" })
}

/// The lines of an NDJSON body, parsed.
async fn ndjson(response: reqwest::Response) -> Vec<Value> {
    let text = response.text().await.unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

// --- authentication -------------------------------------------------------

#[tokio::test]
async fn requests_without_the_right_token_are_refused_and_change_nothing() {
    let api = Api::start().await;
    let create = json!({ "spec": fake_spec() });
    let no_token = api
        .client
        .post(format!("{}/v1/workspaces", api.base))
        .json(&create);
    let (status, body) = api.json(no_token).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &["missing bearer token"],
    );

    let wrong = api
        .client
        .post(format!("{}/v1/workspaces", api.base))
        .bearer_auth("test-token-0123456788")
        .json(&create);
    let response = wrong.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    let body: Value = response.json().await.unwrap();
    assert_error(
        StatusCode::UNAUTHORIZED,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        &["wrong bearer token"],
    );

    // Derrick's routes, unknown routes and the document are guarded too.
    for (method, path) in [
        (Method::POST, "/workspaces"),
        (Method::GET, "/workspaces"),
        (Method::GET, "/v1/openapi.json"),
        (Method::GET, "/v1/no-such-route"),
    ] {
        let response = api
            .client
            .request(method.clone(), format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{method} {path}"
        );
    }

    assert!(
        api.provider.list(true).unwrap().is_empty(),
        "nothing was created"
    );
    assert!(
        !api.fake
            .calls()
            .iter()
            .any(|call| call.starts_with("create")),
        "the runtime was not asked to create anything: {:?}",
        api.fake.calls()
    );
}

#[tokio::test]
async fn health_checks_answer_without_a_token() {
    let api = Api::start().await;
    let healthz: Value = api
        .client
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(healthz["status"], "ok");
    let health: Value = api
        .client
        .get(format!("{}/health", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({ "healthy": true }));
}

#[tokio::test]
async fn a_token_is_generated_on_first_start_stored_privately_and_reused() {
    let api = Api::start_with(|config| ServerConfig {
        token: None,
        ..config
    })
    .await;
    let token = api.token.clone().unwrap();
    let path = api.home.path().join(TOKEN_FILE);
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (status, _) = api.json(api.get("/v1/workspaces")).await;
    assert_eq!(status, StatusCode::OK);

    let home = api.shutdown().await;
    let again = Api::start_in(home, |config| ServerConfig {
        token: None,
        ..config
    })
    .await;
    assert_eq!(again.token.as_deref(), Some(token.as_str()));
    let (status, _) = again.json(again.get("/v1/workspaces")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_insecure_mode_works_on_loopback_only() {
    let api = Api::start_with(|config| ServerConfig {
        token: None,
        insecure_no_auth: true,
        ..config
    })
    .await;
    assert_eq!(api.token, None);
    let (status, body) = api.json(api.get("/v1/workspaces")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!api.home.path().join(TOKEN_FILE).exists());

    let home = tempfile::tempdir().unwrap();
    let provider = Provider::open(ProviderConfig::new(home.path()))
        .await
        .unwrap();
    let everywhere: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let refused = berth_server::bind(
        provider,
        ServerConfig {
            listen: Listen::Tcp(everywhere),
            insecure_no_auth: true,
            ..ServerConfig::default()
        },
    )
    .await;
    let err = refused
        .err()
        .expect("binding every address without auth is refused");
    assert!(
        matches!(err, ServerError::InsecureNotLoopback { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0.0.0.0"), "{err}");
}

#[tokio::test]
async fn a_unix_socket_is_private_and_needs_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("berth.sock");
    let api = Api::start_with(|config| ServerConfig {
        listen: Listen::Unix(socket.clone()),
        token: None,
        ..config
    })
    .await;
    assert_eq!(api.token, None);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let id = api.create(fake_spec()).await;
    let (status, body) = api.json(api.get(&format!("/v1/workspaces/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!api.home.path().join(TOKEN_FILE).exists());
    api.shutdown().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

// --- web pages: Origin, Host and Content-Type ----------------------------

/// A server without a token, as `berth serve --insecure-no-auth` runs it,
/// whose provider has the `local` runtime: a workspace created through it
/// runs its setup script on this host.
async fn insecure() -> Api {
    Api::start_with(|config| ServerConfig {
        token: None,
        insecure_no_auth: true,
        ..config
    })
    .await
}

/// A `local` spec whose setup script leaves `marker` on the host.
fn marker_spec(marker: &std::path::Path) -> Value {
    json!({
        "runtime": "local",
        "setup_script": format!("touch '{}'", marker.display()),
    })
}

/// Asserts that nothing was created: no workspace, and no setup script ran.
fn assert_nothing_created(api: &Api, marker: &std::path::Path) {
    assert!(
        api.provider.list(true).unwrap().is_empty(),
        "a workspace was created: {:?}",
        api.provider.list(true).unwrap()
    );
    assert!(
        !marker.exists(),
        "a setup script ran on the host: {}",
        marker.display()
    );
}

#[tokio::test]
async fn a_cross_origin_text_plain_post_is_refused_without_a_token() {
    let api = insecure().await;
    let marker = api.home.path().join("setup-ran");
    let body = json!({ "spec": marker_spec(&marker) }).to_string();
    // What a page on another site can send without a preflight.
    for path in ["/workspaces", "/v1/workspaces"] {
        let (status, answer) = api
            .json(
                api.post(path)
                    .header(header::ORIGIN, "http://evil.example")
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(body.clone()),
            )
            .await;
        assert_error(
            status,
            &answer,
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            &["http://evil.example"],
        );
    }
    // A page served from another port of this host is another origin too.
    let other_port = format!(
        "http://127.0.0.1:{}",
        api.base.rsplit(':').next().unwrap().parse::<u16>().unwrap() ^ 1
    );
    let (status, answer) = api
        .json(
            api.post("/workspaces")
                .header(header::ORIGIN, other_port)
                .json(&json!({ "spec": marker_spec(&marker) })),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        &[],
    );
    // `null` is what sandboxed frames and local files send.
    let (status, _) = api
        .json(
            api.post("/workspaces")
                .header(header::ORIGIN, "null")
                .json(&json!({ "spec": marker_spec(&marker) })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_nothing_created(&api, &marker);
}

#[tokio::test]
async fn a_foreign_host_header_is_refused_without_a_token() {
    let api = insecure().await;
    let marker = api.home.path().join("setup-ran");
    let port = api.base.rsplit(':').next().unwrap().to_string();
    // DNS rebinding: the page's own name, now resolving to 127.0.0.1, is
    // the Host; the Origin is the page's own, so it looks same-origin.
    let rebound = format!("evil.example:{port}");
    for (method, path) in [
        (Method::POST, "/workspaces"),
        (Method::POST, "/v1/workspaces"),
    ] {
        let (status, answer) = api
            .json(
                api.request(method, path)
                    .header(header::HOST, rebound.as_str())
                    .header(header::ORIGIN, format!("http://{rebound}"))
                    .json(&json!({ "spec": marker_spec(&marker) })),
            )
            .await;
        assert_error(
            status,
            &answer,
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            &["evil.example", &format!("localhost:{port}")],
        );
    }
    // Reading is refused too: a rebound page could read the answers.
    for path in [
        "/v1/workspaces",
        "/workspaces",
        "/health",
        "/v1/openapi.json",
    ] {
        let response = api
            .get(path)
            .header(header::HOST, rebound.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
    }
    assert_nothing_created(&api, &marker);
}

#[tokio::test]
async fn without_a_token_loopback_names_and_the_servers_own_origin_are_served() {
    let api = insecure().await;
    let port = api.base.rsplit(':').next().unwrap().to_string();
    for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
        let (status, body) = api
            .json(
                api.post("/v1/workspaces")
                    .header(header::HOST, host.as_str())
                    .header(header::ORIGIN, format!("http://{host}"))
                    .json(&json!({ "spec": fake_spec() })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{host}: {body}");
    }
    // A wrong port is another server's address.
    let (status, body) = api
        .json(
            api.get("/v1/workspaces")
                .header(header::HOST, "localhost:1"),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        &["localhost:1"],
    );
}

#[tokio::test]
async fn a_cross_origin_request_is_refused_even_with_the_token() {
    let api = Api::start().await;
    let (status, body) = api
        .json(
            api.post("/v1/workspaces")
                .header(header::ORIGIN, "http://evil.example")
                .json(&json!({ "spec": fake_spec() })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        &["evil.example"],
    );
    // A terminal is a WebSocket, which browsers open across origins too.
    let response = api
        .get("/v1/workspaces/demo/terminal")
        .header(header::ORIGIN, "http://evil.example")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(api.provider.list(true).unwrap().is_empty());
    // With a token, any Host a proxy gives the server is served, from its
    // own origin.
    let (status, body) = api
        .json(
            api.post("/v1/workspaces")
                .header(header::HOST, "berth.example")
                .header(header::ORIGIN, "https://berth.example")
                .json(&json!({ "spec": fake_spec() })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn a_json_body_that_does_not_say_so_is_refused_except_on_derricks_routes() {
    let api = Api::start().await;
    let body = json!({ "spec": fake_spec() }).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut request = api.post("/v1/workspaces").body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let (status, answer) = api.json(request).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &["application/json", content_type.unwrap_or("none")],
        );
    }
    assert!(api.provider.list(true).unwrap().is_empty());
    let (status, answer) = api
        .json(
            api.post("/v1/workspaces")
                .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
                .body(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let id = answer["id"].as_str().unwrap().to_string();
    // An optional body left empty needs no type (the fake runtime cannot
    // fork, which is the answer past the body); one that is sent does.
    let (status, answer) = api
        .json(api.post(&format!("/v1/workspaces/{id}/fork")))
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        &[],
    );
    let (status, answer) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/fork"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body("{\"count\": 2}"),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        &["text/plain"],
    );
    // Derrick's clients do not all say it; their routes read JSON anyway.
    let (status, answer) = api
        .json(
            api.post(&format!("/workspaces/{id}/cmd"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body("{\"cmd\": \"true\"}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

// --- workspaces -----------------------------------------------------------

#[tokio::test]
async fn workspaces_are_created_listed_described_stopped_started_and_removed() {
    let api = Api::start().await;
    let response = api
        .post("/v1/workspaces")
        .json(&json!({ "spec": fake_spec(), "name": "first" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["name"], "first");
    assert_eq!(created["state"], "running");
    assert_eq!(location, format!("/v1/workspaces/{id}"));

    let (status, details) = api.json(api.get(&location)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(details["id"], id);
    assert_eq!(details["isolation"]["isolated"], false);
    // By name, too.
    let (_, by_name) = api.json(api.get("/v1/workspaces/first")).await;
    assert_eq!(by_name["id"], id);

    let (_, stopped) = api.json(api.post(&format!("{location}/stop"))).await;
    assert_eq!(stopped["state"], "stopped");
    let (status, body) = api
        .json(
            api.post(&format!("{location}/exec"))
                .json(&json!({ "command": "true" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "wrong_state",
        &[id, "stopped"],
    );
    let (_, started) = api.json(api.post(&format!("{location}/start"))).await;
    assert_eq!(started["state"], "running");

    let (_, list) = api.json(api.get("/v1/workspaces")).await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1);

    let (status, removed) = api.json(api.request(Method::DELETE, &location)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(removed["state"], "removed");
    let (_, list) = api.json(api.get("/v1/workspaces")).await;
    assert_eq!(list["workspaces"], json!([]));
    let (_, all) = api.json(api.get("/v1/workspaces?all=true")).await;
    assert_eq!(all["workspaces"][0]["state"], "removed");
    // Gone, and said so, rather than described as if it were there.
    let (status, body) = api.json(api.get(&location)).await;
    assert_error(
        status,
        &body,
        StatusCode::GONE,
        "workspace_gone",
        &[id, "removed"],
    );
}

#[tokio::test]
async fn provisioning_progress_streams_as_ndjson_and_sse() {
    let api = Api::start().await;
    api.fake.on("prepare", Behaviour::ok("prepared\n"));
    let spec = json!({ "runtime": "fake", "setup_script": "prepare" });

    let response = api
        .post("/v1/workspaces")
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "spec": spec }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let events = ndjson(response).await;
    assert_eq!(
        types(&events),
        [
            "created",
            "cache_miss",
            "setup_started",
            "setup_output",
            "setup_finished",
            "cached",
            "ready"
        ]
    );
    assert_eq!(events[3]["data"], "prepared\n");
    let id = events[0]["id"].as_str().unwrap();
    assert_eq!(api.provider.get(id).unwrap().state.to_string(), "running");

    // The same spec again: from the cache, as server-sent events.
    let response = api
        .post("/v1/workspaces")
        .header(header::ACCEPT, "text/event-stream")
        .json(&json!({ "spec": spec }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(names, ["created", "cache_hit", "ready"]);
    let data: Vec<Value> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(data[2]["type"], "ready");
}

#[tokio::test]
async fn a_failed_setup_streams_failed_then_the_error_and_keeps_the_workspace_failed() {
    let api = Api::start().await;
    api.fake.on("broken", Behaviour::fail("no such tool\n", 3));
    let spec = json!({ "runtime": "fake", "setup_script": "broken" });

    let response = api
        .post("/v1/workspaces?stream=true")
        .json(&json!({ "spec": spec }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = ndjson(response).await;
    let kinds = types(&events);
    assert_eq!(kinds[kinds.len() - 2..], ["failed", "error"]);
    assert_eq!(events[events.len() - 2]["output_tail"], "no such tool");
    assert_eq!(events.last().unwrap()["error"]["code"], "provision_failed");

    // Without streaming: 422, naming the workspace, which stays `failed`.
    let (status, body) = api
        .json(api.post("/v1/workspaces").json(&json!({ "spec": spec })))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "provision_failed",
        &["setup script", "exited with code 3"],
    );
    let failed: Vec<_> = api
        .provider
        .list(false)
        .unwrap()
        .into_iter()
        .filter(|ws| ws.state.to_string() == "failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(failed[1].id.as_str())
    );
}

#[tokio::test]
async fn a_create_refused_before_it_starts_gets_a_status_even_when_streaming() {
    let api = Api::start().await;
    let response = api
        .post("/v1/workspaces")
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "spec": { "runtime": "nope" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_runtime",
        &["nope", "fake"],
    );

    let (status, body) = api
        .json(api.post("/v1/workspaces").json(&json!({ "spec": {} })))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "no_runtime",
        &["runtime", "fake"],
    );

    api.fake.set_unavailable(Some("the daemon is down".into()));
    let (status, body) = api
        .json(
            api.post("/v1/workspaces")
                .json(&json!({ "spec": fake_spec() })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "runtime_unavailable",
        &["fake", "the daemon is down"],
    );
    assert!(api.provider.list(true).unwrap().is_empty());
}

#[tokio::test]
async fn bad_bodies_are_refused_naming_the_field() {
    let api = Api::start().await;
    let cases = [
        (
            json!({ "spec": { "runtime": "fake", "repositories": [{ "path": "a" }] } }),
            "spec.repositories[0]",
            "url",
        ),
        (
            json!({ "spec": { "runtime": "fake", "colour": "blue" } }),
            "spec",
            "colour",
        ),
        (
            json!({ "spec": { "runtime": "fake", "repositories": [{ "url": "file:///x", "path": "../up" }] } }),
            "spec.repositories[0].path",
            "..",
        ),
        (
            json!({ "spec": { "runtime": 7 } }),
            "spec.runtime",
            "string",
        ),
        (json!({ "spek": {} }), "", "spek"),
    ];
    for (body, field, detail) in cases {
        let (status, answer) = api.json(api.post("/v1/workspaces").json(&body)).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &[field, detail],
        );
    }
    let (status, answer) = api
        .json(
            api.post("/v1/workspaces")
                .header(header::CONTENT_TYPE, "application/json")
                .body("{\"spec\": "),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["EOF"],
    );

    // A spec that parses but is invalid: 422 naming the field.
    let invalid = json!({ "spec": { "runtime": "fake", "repositories": [
        { "url": "file:///a", "path": "src" }, { "url": "file:///b", "path": "src" }
    ] } });
    let (status, answer) = api.json(api.post("/v1/workspaces").json(&invalid)).await;
    assert_error(
        status,
        &answer,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_spec",
        &["repositories[1].path", "duplicate"],
    );
    assert!(
        api.provider.list(true).unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn an_object_sent_as_a_list_is_refused_naming_the_field() {
    let api = Api::start().await;
    // serde alone would read these as structs of their fields in order.
    for (body, field) in [
        (
            json!({ "spec": { "runtime": "fake", "limits": [null, null] } }),
            "spec.limits",
        ),
        (
            json!({ "spec": { "runtime": "fake", "timeouts": [1, 2] } }),
            "spec.timeouts",
        ),
        (
            json!({ "spec": { "runtime": "fake", "repositories": [["file:///x", "src"]] } }),
            "spec.repositories[0]",
        ),
        (json!({ "spec": ["demo", "fake"] }), "spec"),
        (json!([{ "runtime": "fake" }]), "an object"),
    ] {
        let (status, answer) = api.json(api.post("/v1/workspaces").json(&body)).await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &[field],
        );
    }
    let (status, answer) = api
        .json(api.post("/workspaces").json(&json!({ "spec": [null] })))
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["spec"],
    );
    assert!(api.provider.list(true).unwrap().is_empty());
}

#[tokio::test]
async fn an_integer_written_with_a_zero_fraction_is_that_integer() {
    let api = Api::start().await;
    api.fake.on("true", Behaviour::ok(""));
    let spec =
        json!({ "runtime": "fake", "limits": { "pids": 64.0 }, "timeouts": { "exec": 5.0 } });
    let (status, created) = api
        .json(api.post("/v1/workspaces").json(&json!({ "spec": spec })))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["spec"]["limits"]["pids"], 64);
    assert_eq!(created["spec"]["timeouts"]["exec"], 5);
    let id = created["id"].as_str().unwrap();
    let (status, done) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/exec"))
                .json(&json!({ "command": "true", "timeout_ms": 1000.0 })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    // A fraction is not an integer, nor is a number past the type's range.
    for (body, field) in [
        (
            json!({ "command": "true", "timeout_ms": 1.5 }),
            "timeout_ms",
        ),
        (
            json!({ "command": "true", "output_limit": -1.0 }),
            "output_limit",
        ),
        (
            json!({ "command": "true", "output_limit": 1e20 }),
            "output_limit",
        ),
    ] {
        let (status, answer) = api
            .json(api.post(&format!("/v1/workspaces/{id}/exec")).json(&body))
            .await;
        assert_error(
            status,
            &answer,
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &[field],
        );
    }
}

#[tokio::test]
async fn errors_name_the_id_and_the_path() {
    let api = Api::start().await;
    let (status, body) = api.json(api.get("/v1/workspaces/no-such-ws")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no-such-ws"],
    );
    let (status, body) = api.json(api.post("/v1/workspaces/no-such-ws/start")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no-such-ws"],
    );

    let id = api.create(fake_spec()).await;
    let (status, body) = api
        .json(api.get(&format!(
            "/v1/workspaces/{id}/files/content?path=../../etc/passwd"
        )))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_path",
        &["../../etc/passwd"],
    );
    let (status, body) = api
        .json(api.get(&format!(
            "/v1/workspaces/{id}/files/content?path=missing.txt"
        )))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "file_not_found",
        &[&id, "missing.txt"],
    );
    let (status, body) = api
        .json(api.get(&format!("/v1/workspaces/{id}/files/content")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &["path"],
    );
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/exec"))
                .json(&json!({ "command": [] })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["command"],
    );

    let (status, body) = api.json(api.get("/v1/nothing-here")).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "route_not_found",
        &["/v1/nothing-here"],
    );
    let (status, body) = api.json(api.request(Method::PATCH, "/v1/workspaces")).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &["PATCH"],
    );
}

/// This process's peak resident memory, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn reading_a_huge_sparse_file_over_http_keeps_the_server_small() {
    let api = Api::start().await;
    let id = api.local().await;
    let size: u64 = 1 << 30;
    std::fs::File::create(api.root(&id).join("huge.bin"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let before = peak_rss();
    let mut response = api
        .get(&format!("/v1/workspaces/{id}/files/content?path=huge.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, size, "every byte of the file");
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the server grew by {grown} bytes serving a {size}-byte file"
    );
}

#[tokio::test]
async fn files_are_written_read_listed_and_removed() {
    let api = Api::start().await;
    let id = api.create(fake_spec()).await;
    let content = format!("/v1/workspaces/{id}/files/content");
    let bytes = vec![0u8, 159, 146, 150, b'\n'];
    let response = api
        .request(Method::PUT, &format!("{content}?path=dir/data.bin"))
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let response = api
        .get(&format!("{content}?path=dir/data.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);

    let (status, listing) = api
        .json(api.get(&format!("/v1/workspaces/{id}/files")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing["entries"][0]["path"], "dir");
    assert_eq!(listing["entries"][0]["kind"], "dir");
    let (_, listing) = api
        .json(api.get(&format!("/v1/workspaces/{id}/files?path=dir")))
        .await;
    assert_eq!(listing["entries"][0]["path"], "dir/data.bin");
    assert_eq!(listing["entries"][0]["size"], 5);

    let response = api
        .request(
            Method::DELETE,
            &format!("/v1/workspaces/{id}/files?path=dir/data.bin"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = api
        .json(api.get(&format!("{content}?path=dir/data.bin")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "file_not_found",
        &["dir/data.bin"],
    );
}

#[tokio::test]
async fn runtimes_are_listed_with_their_availability() {
    let api = Api::start().await;
    api.fake.set_unavailable(Some("switched off".into()));
    let (status, body) = api.json(api.get("/v1/runtimes")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["runtimes"][0],
        json!({
            "name": "fake",
            "description": "in memory with scripted commands, for tests",
            "available": false,
            "reason": "switched off"
        })
    );
    assert_eq!(body["runtimes"][1]["name"], "local");
    assert_eq!(body["runtimes"][1]["available"], true);
}

// --- exec (scripted) ------------------------------------------------------

#[tokio::test]
async fn exec_answers_once_or_streams_as_asked() {
    let api = Api::start().await;
    api.fake.on(
        "greet",
        Behaviour::Exit {
            stdout: "hello\n".into(),
            stderr: "warning\n".into(),
            code: 4,
        },
    );
    let id = api.create(fake_spec()).await;
    let exec = format!("/v1/workspaces/{id}/exec");
    let request = json!({ "command": "greet" });

    let (status, body) = api.json(api.post(&exec).json(&request)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stdout"], "hello\n");
    assert_eq!(body["stderr"], "warning\n");
    assert_eq!(body["exit"]["code"], 4);

    let response = api
        .post(&exec)
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&request)
        .send()
        .await
        .unwrap();
    let events = ndjson(response).await;
    assert_eq!(types(&events), ["stdout", "stderr", "exit"]);
    assert_eq!(events[2]["code"], 4);

    let text = api
        .post(&exec)
        .header(header::ACCEPT, "text/event-stream")
        .json(&request)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("event: "))
        .collect();
    assert_eq!(names, ["stdout", "stderr", "exit"]);
}

// --- Derrick's routes (scripted) -----------------------------------------

#[tokio::test]
async fn derricks_create_needs_a_spec_from_the_body_or_the_server() {
    let api = Api::start().await;
    let (status, body) = api.json(api.post("/workspaces")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "no_default_spec",
        &["--workspace-config-path"],
    );

    let (status, body) = api
        .json(
            api.post("/workspaces")
                .json(&json!({ "spec": fake_spec(), "env": { "A": "1" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap();
    let ws = api.provider.get(id).unwrap();
    assert_eq!(ws.spec.env["A"], "1");

    let (status, deleted) = api
        .json(api.request(Method::DELETE, &format!("/workspaces/{id}")))
        .await;
    assert_eq!((status, deleted), (StatusCode::OK, json!(true)));
    let (status, deleted) = api
        .json(api.request(Method::DELETE, "/workspaces/unknown"))
        .await;
    assert_eq!((status, deleted), (StatusCode::OK, json!(false)));
}

// --- the OpenAPI document -------------------------------------------------

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = Api::start().await;
    let (status, document) = api.json(api.get("/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&String> = document["paths"].as_object().unwrap().keys().collect();
    for path in [
        "/v1/workspaces",
        "/v1/workspaces/{id}",
        "/v1/workspaces/{id}/start",
        "/v1/workspaces/{id}/stop",
        "/v1/workspaces/{id}/fetch",
        "/v1/workspaces/{id}/exec",
        "/v1/workspaces/{id}/files",
        "/v1/workspaces/{id}/files/content",
        "/v1/runtimes",
        "/v1/workspaces/{id}/snapshots",
        "/v1/snapshots/{snapshot}",
        "/v1/workspaces/{id}/reset",
        "/v1/workspaces/{id}/changes",
        "/v1/workspaces/{id}/diff",
        "/v1/workspaces/{id}/fork",
        "/v1/workspaces/{id}/export",
        "/v1/gc",
        "/v1/workspaces/{id}/info",
        "/v1/workspaces/{id}/sessions",
        "/v1/workspaces/{id}/sessions/{session}",
        "/v1/workspaces/{id}/sessions/{session}/exec",
        "/v1/workspaces/{id}/sessions/{session}/interrupt",
        "/v1/workspaces/{id}/terminal",
        "/v1/agent/binary",
        "/v1/jobs",
        "/v1/jobs/{job}/runs",
        "/v1/jobs/{job}/schedule",
        "/v1/runs/{run}",
        "/v1/runs/{run}/events",
        "/v1/runs/{run}/cancel",
        "/v1/runs/{run}/retry",
        "/v1/runs/{run}/publish",
        "/v1/runs/{run}/patch",
        "/v1/runs/{run}/tasks/{task}",
        "/v1/runs/{run}/tasks/{task}/log",
        "/v1/runs/{run}/tasks/{task}/patch",
        "/v1/runs/{run}/tasks/{task}/cancel",
        "/v1/runs/{run}/tasks/{task}/retry",
        "/v1/session",
        "/healthz",
        "/health",
        "/workspaces",
        "/workspaces/{id}",
        "/workspaces/{id}/cmd",
        "/workspaces/{id}/cmd_with_output",
        "/workspaces/{id}/write_file",
        "/workspaces/{id}/read_file",
    ] {
        assert!(paths.iter().any(|p| *p == path), "{path} is not documented");
    }
    insta::assert_json_snapshot!("openapi", document);
}

#[tokio::test]
async fn an_ambiguous_id_prefix_is_a_documented_400_on_every_workspace_route() {
    let api = Api::start().await;
    let first = api.create(fake_spec()).await;
    let second = api.create(fake_spec()).await;
    let common = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        common >= 4,
        "ids made together share a prefix: {first} {second}"
    );
    let prefix = &first[..common];
    for (method, path) in [
        (Method::GET, format!("/v1/workspaces/{prefix}")),
        (Method::GET, format!("/v1/workspaces/{prefix}/changes")),
        (Method::POST, format!("/v1/workspaces/{prefix}/stop")),
        (Method::DELETE, format!("/workspaces/{prefix}")),
    ] {
        let (status, body) = api.json(api.request(method.clone(), &path)).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "ambiguous_id",
            &[prefix, &first, &second],
        );
    }
    let (_, document) = api.json(api.get("/v1/openapi.json")).await;
    for (path, item) in document["paths"].as_object().unwrap() {
        if !path.contains("{id}") {
            continue;
        }
        for (method, operation) in item.as_object().unwrap() {
            for status in ["400", "410", "503"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path} does not document {status}"
                );
            }
        }
    }
}

// --- real commands in `local` workspaces ----------------------------------

/// Waits until `done` holds, polling; fails after a generous deadline.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done().await {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Whether a process has ended (gone, or a zombie waiting to be reaped).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Reads an NDJSON response line by line, as it arrives.
struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Lines {
    fn new(response: reqwest::Response) -> Lines {
        Lines {
            response,
            buffer: Vec::new(),
        }
    }

    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match self.response.chunk().await.unwrap() {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    assert!(self.buffer.is_empty(), "a partial last line");
                    return None;
                }
            }
        }
    }

    async fn rest(mut self) -> Vec<Value> {
        let mut lines = Vec::new();
        while let Some(line) = self.next().await {
            lines.push(line);
        }
        lines
    }
}

impl Api {
    async fn local(&self) -> String {
        self.create(json!({ "runtime": "local" })).await
    }

    /// The workspace's directory on this host.
    fn root(&self, id: &str) -> std::path::PathBuf {
        let ws = self.provider.get(id).unwrap();
        std::path::PathBuf::from(ws.runtime_info["root"].as_str().unwrap())
    }

    async fn exec_stream(&self, id: &str, request: Value) -> Lines {
        let response = self
            .post(&format!("/v1/workspaces/{id}/exec"))
            .header(header::ACCEPT, "application/x-ndjson")
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        Lines::new(response)
    }
}

/// The bytes of one stream, concatenated from exec events.
fn stream_text(events: &[Value], stream: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == stream)
        .map(|e| e["data"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn exec_output_streams_live_and_in_order_per_stream() {
    let api = Api::start().await;
    let id = api.local().await;
    let script = "for i in $(seq 1 300); do echo \"out $i\"; echo \"err $i\" >&2; done; \
                  echo waiting; while [ ! -e release ]; do sleep 0.01; done; echo released; exit 7";
    let mut lines = api.exec_stream(&id, json!({ "command": script })).await;
    let mut events = Vec::new();
    // The output arrives while the command is still running: it cannot end
    // before `release` exists.
    while !stream_text(&events, "stdout").ends_with("waiting\n") {
        events.push(lines.next().await.expect("output before the command ends"));
    }
    std::fs::write(api.root(&id).join("release"), "").unwrap();
    events.extend(lines.rest().await);

    let expected_out: String = (1..=300).map(|i| format!("out {i}\n")).collect();
    let expected_err: String = (1..=300).map(|i| format!("err {i}\n")).collect();
    assert_eq!(
        stream_text(&events, "stdout"),
        format!("{expected_out}waiting\nreleased\n")
    );
    assert_eq!(stream_text(&events, "stderr"), expected_err);
    let exit = events.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["code"], 7);
    assert_eq!(types(&events).iter().filter(|t| **t == "exit").count(), 1);
}

#[tokio::test]
async fn exec_runs_in_the_workspace_with_cwd_env_stdin_and_timeout() {
    let api = Api::start().await;
    let id = api.local().await;
    let exec = format!("/v1/workspaces/{id}/exec");
    std::fs::create_dir(api.root(&id).join("sub")).unwrap();

    let (status, body) = api
        .json(api.post(&exec).json(&json!({
            "command": ["sh", "-c", "pwd; echo $GREETING; cat"],
            "cwd": "sub",
            "env": { "GREETING": "hi" },
            "stdin": "ZnJvbSBzdGRpbg==",
        })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let root = api.root(&id);
    assert_eq!(
        body["stdout"],
        format!("{}\nhi\nfrom stdin", root.join("sub").display())
    );
    assert_eq!(body["exit"]["code"], 0);

    let (_, body) = api
        .json(
            api.post(&exec)
                .json(&json!({ "command": "sleep 30", "timeout_ms": 100 })),
        )
        .await;
    assert_eq!(body["exit"]["timed_out"], true, "{body}");

    let (status, body) = api
        .json(
            api.post(&exec)
                .json(&json!({ "command": "true", "cwd": "../.." })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_path",
        &["../.."],
    );
    let (status, body) = api
        .json(
            api.post(&exec)
                .json(&json!({ "command": ["/no/such/program"] })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "command_not_started",
        &["/no/such/program"],
    );
}

/// A directory read as a file, or a file listed as (or run in as) a
/// directory, is the caller's mistake (it used to be a 500
/// `runtime_error`).
#[tokio::test]
async fn a_path_of_the_wrong_kind_is_refused_as_the_callers_error() {
    let api = Api::start().await;
    let id = api.local().await;
    std::fs::create_dir(api.root(&id).join("dir")).unwrap();
    std::fs::write(api.root(&id).join("dir/file.txt"), "x").unwrap();
    let exec = json!({ "command": "true", "cwd": "dir/file.txt" });
    for (request, problem) in [
        (
            api.get(&format!("/v1/workspaces/{id}/files/content?path=dir")),
            "`dir` is a directory",
        ),
        (
            api.get(&format!("/v1/workspaces/{id}/files?path=dir/file.txt")),
            "`dir/file.txt` is not a directory",
        ),
        (
            api.post(&format!("/v1/workspaces/{id}/exec")).json(&exec),
            "`dir/file.txt` is not a directory",
        ),
    ] {
        let (status, body) = api.json(request).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &[&id, problem],
        );
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_ends_the_whole_command() {
    let api = Api::start().await;
    let id = api.local().await;
    let script = "sleep 300 & echo $! > child.pid; echo $$ > shell.pid; echo started; wait";
    let mut lines = api.exec_stream(&id, json!({ "command": script })).await;
    let first = lines.next().await.unwrap();
    assert_eq!(first["data"], "started\n");
    let root = api.root(&id);
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(root.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (shell, child) = (pid("shell.pid"), pid("child.pid"));
    assert!(!process_gone(shell) && !process_gone(child));

    drop(lines);
    eventually("the shell and its child are gone", || async {
        process_gone(shell) && process_gone(child)
    })
    .await;

    // The workspace is still usable.
    let (_, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/exec"))
                .json(&json!({ "command": "echo ok" })),
        )
        .await;
    assert_eq!(body["stdout"], "ok\n");
}

#[tokio::test]
async fn a_client_that_disconnects_while_waiting_for_json_ends_the_command() {
    let api = Api::start().await;
    let id = api.local().await;
    let script = "echo $$ > shell.pid; exec sleep 300";
    let request = api
        .post(&format!("/v1/workspaces/{id}/exec"))
        .json(&json!({ "command": script }));
    let waiting = tokio::spawn(async move { request.send().await });
    let pid_file = api.root(&id).join("shell.pid");
    eventually("the command has started", || async {
        std::fs::read_to_string(&pid_file).is_ok_and(|text| text.ends_with('\n'))
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(pid));

    waiting.abort();
    eventually("the command is gone", || async { process_gone(pid) }).await;
}

#[tokio::test]
async fn a_long_command_does_not_hold_up_other_requests() {
    let api = Arc::new(Api::start().await);
    let busy = api.local().await;
    let others = [api.local().await, api.local().await];
    let mut long = api
        .exec_stream(
            &busy,
            json!({ "command": "echo holding; while [ ! -e release ]; do sleep 0.01; done; echo done" }),
        )
        .await;
    assert_eq!(long.next().await.unwrap()["data"], "holding\n");
    // Another long one in the same workspace.
    let mut second = api
        .exec_stream(
            &busy,
            json!({ "command": "echo holding; while [ ! -e release ]; do sleep 0.01; done" }),
        )
        .await;
    assert_eq!(second.next().await.unwrap()["data"], "holding\n");

    let mut short = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        let id = if i % 3 == 0 {
            busy.clone()
        } else {
            others[i % 2].clone()
        };
        short.push(tokio::spawn(async move {
            if i % 4 == 0 {
                let (status, body) = api.json(api.get("/v1/workspaces")).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body["workspaces"].as_array().unwrap().len(), 3);
            } else {
                let (status, body) = api
                    .json(
                        api.post(&format!("/v1/workspaces/{id}/exec"))
                            .json(&json!({ "command": ["echo", format!("n{i}")] })),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(body["stdout"], format!("n{i}\n"));
            }
        }));
    }
    for request in short {
        request.await.unwrap();
    }
    // Every short request finished while both long commands were still
    // waiting for `release`.
    std::fs::write(api.root(&busy).join("release"), "").unwrap();
    let rest = long.rest().await;
    assert_eq!(rest[0]["data"], "done\n");
    assert_eq!(rest.last().unwrap()["code"], 0);
    assert_eq!(second.rest().await.last().unwrap()["code"], 0);
}

#[tokio::test]
async fn provisioning_goes_on_when_the_client_disconnects() {
    let api = Api::start().await;
    let release = tempfile::tempdir().unwrap();
    let gate = release.path().join("release");
    let spec = json!({
        "runtime": "local",
        "setup_script": format!(
            "while [ ! -e {} ]; do sleep 0.01; done; echo provisioned > marker",
            gate.display()
        ),
    });
    let response = api
        .post("/v1/workspaces")
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "spec": spec }))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::new(response);
    let created = lines.next().await.unwrap();
    assert_eq!(created["type"], "created");
    let id = created["id"].as_str().unwrap().to_string();
    drop(lines);

    std::fs::write(&gate, "").unwrap();
    eventually("the workspace is running", || async {
        api.provider.get(&id).unwrap().state.to_string() == "running"
    })
    .await;
    let marker = api
        .provider
        .read_file(&id, "marker")
        .await
        .unwrap()
        .read_all(u64::MAX)
        .await
        .unwrap();
    assert_eq!(marker, b"provisioned\n");
}

#[tokio::test]
async fn fetch_brings_upstream_commits_in_and_can_stream_progress() {
    let api = Api::start().await;
    let upstream = tempfile::tempdir().unwrap();
    berth_testkit::make_repo(upstream.path(), &[("README", "one\n")]);
    let spec = json!({
        "runtime": "local",
        "repositories": [{ "url": format!("file://{}", upstream.path().display()), "path": "code" }],
    });
    let id = api.create(spec).await;
    let fetch = format!("/v1/workspaces/{id}/fetch");

    let (status, body) = api.json(api.post(&fetch)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["path"], "code");
    assert_eq!(body["results"][0]["updated"], false);

    let commit = berth_testkit::commit_files(upstream.path(), &[("README", "two\n")], "second");
    let response = api
        .post(&fetch)
        .header(header::ACCEPT, "application/x-ndjson")
        .send()
        .await
        .unwrap();
    let events = ndjson(response).await;
    assert_eq!(types(&events), ["fetching", "fetched"]);
    assert_eq!(events[1]["commit"], commit.as_str());
    assert_eq!(events[1]["updated"], true);
    assert_eq!(
        api.provider
            .read_file(&id, "code/README")
            .await
            .unwrap()
            .read_all(u64::MAX)
            .await
            .unwrap(),
        b"two\n"
    );

    let (status, body) = api.json(api.post("/v1/workspaces/nope/fetch")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", &["nope"]);
}

// --- Derrick's routes, as Derrick's own test suite drives them -------------

#[tokio::test]
async fn derricks_clients_work_end_to_end() {
    let upstream = tempfile::tempdir().unwrap();
    berth_testkit::make_repo(upstream.path(), &[("Cargo.toml", "[package]\n")]);
    // Derrick's config file, as it is.
    let config: berth_core::Spec = serde_json::from_value(json!({
        "name": "test-123",
        "repositories": [{
            "url": format!("file://{}", upstream.path().display()),
            "path": "code/swiftide-ask",
            "reference": "main",
        }],
        "setup_script": "echo \"Hello World\" > hello.txt",
        "runtime": "local",
    }))
    .unwrap();
    let api = Api::start_with(|server| ServerConfig {
        default_spec: Some(config),
        token: None,
        insecure_no_auth: true,
        ..server
    })
    .await;
    let (_, list) = api.json(api.get("/workspaces")).await;
    assert_eq!(list, json!({ "workspaces": [] }));

    let (status, created) = api
        .json(api.post("/workspaces").json(&json!({ "env": {} })))
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let (_, list) = api.json(api.get("/workspaces")).await;
    assert_eq!(list["workspaces"][0]["id"], id.as_str());
    // With no body at all, too.
    let (status, second) = api.json(api.post("/workspaces")).await;
    assert_eq!(status, StatusCode::OK, "{second}");

    let cmd = format!("/workspaces/{id}/cmd_with_output");
    let run = |body: Value| {
        let request = api.post(&cmd).json(&body);
        async { api.json(request).await.1 }
    };
    let out = run(json!({ "cmd": "echo hello" })).await;
    assert_eq!(
        (out["output"].as_str(), out["exit_code"].as_i64()),
        (Some("hello\n"), Some(0))
    );
    let out = run(json!({ "cmd": "ls ./code/swiftide-ask" })).await;
    assert!(
        out["output"].as_str().unwrap().contains("Cargo.toml"),
        "{out}"
    );
    let out = run(json!({ "cmd": "cd ./code/swiftide-ask && ls" })).await;
    assert!(
        out["output"].as_str().unwrap().contains("Cargo.toml"),
        "{out}"
    );
    let out = run(json!({ "cmd": "echo hello\necho world" })).await;
    assert_eq!(out["output"], "hello\nworld\n");
    let out = run(json!({ "cmd": "cat hello.txt" })).await;
    assert_eq!(out["output"], "Hello World\n");
    let out = run(json!({ "cmd": "echo $HELLO", "env": { "HELLO": "WORLD" } })).await;
    assert_eq!(out["output"], "WORLD\n");
    let out = run(json!({ "cmd": "cat <<-\"EOF\" > t.txt\nhello\nworld\nEOF\ncat t.txt\n" })).await;
    assert_eq!(out["output"], "hello\nworld\n");
    let out = run(json!({ "cmd": "ls /nonexistent/directory" })).await;
    assert_eq!(out["exit_code"], 2);
    assert!(
        out["output"]
            .as_str()
            .unwrap()
            .contains("No such file or directory"),
        "{out}"
    );
    assert_eq!(out["stdout"], "");
    let out =
        run(json!({ "cmd": "echo one; echo two >&2; echo three", "working_dir": "code" })).await;
    assert_eq!(out["stdout"], "one\nthree\n");
    assert_eq!(out["stderr"], "two\n");
    let out = run(json!({ "cmd": "sleep 30", "timeout": 1 })).await;
    assert_eq!(out["timed_out"], true, "{out}");
    assert_ne!(out["exit_code"], 0);

    let (status, done) = api
        .json(
            api.post(&format!("/workspaces/{id}/cmd"))
                .json(&json!({ "cmd": "exit 3" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(done["exit_code"], 3);

    // Base64 with line breaks every 60 characters, as Ruby's encoder writes it.
    let content = "Hello, world! ".repeat(10);
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&content)
    };
    let wrapped: String = encoded
        .as_bytes()
        .chunks(60)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect();
    let (status, written) = api
        .json(
            api.post(&format!("/workspaces/{id}/write_file"))
                .json(&json!({ "path": "test.txt", "content": wrapped, "working_dir": "out" })),
        )
        .await;
    assert_eq!(
        (status, written),
        (StatusCode::OK, json!({ "success": true }))
    );
    let response = api
        .post(&format!("/workspaces/{id}/read_file"))
        .json(&json!({ "path": "out/test.txt" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(response.text().await.unwrap(), content);
    let (_, as_json) = api
        .json(
            api.post(&format!("/workspaces/{id}/read_file"))
                .header(header::ACCEPT, "application/json")
                .json(&json!({ "path": "test.txt", "working_dir": "out" })),
        )
        .await;
    assert_eq!(as_json["content"], encoded.as_str());

    let (status, body) = api
        .json(
            api.post(&format!("/workspaces/{id}/write_file"))
                .json(&json!({ "path": "/tmp/test.txt", "content": "aGk=" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_path",
        &["/tmp/test.txt"],
    );
    let (status, body) = api
        .json(
            api.post(&format!("/workspaces/{id}/write_file"))
                .json(&json!({ "path": "x", "content": "not base64!" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["content", "base64"],
    );
    let (status, body) = api
        .json(api.post(&cmd).json(&json!({ "working_dir": "code" })))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["cmd"],
    );

    let (_, removed) = api
        .json(api.request(Method::DELETE, &format!("/workspaces/{id}")))
        .await;
    assert_eq!(removed, json!(true));
    let (_, list) = api.json(api.get("/workspaces")).await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1);
}

// --- layers, the agent, agent distribution, deployment files --------------

#[path = "http/agent.rs"]
mod agent;
#[path = "http/dashboard.rs"]
mod dashboard;
#[path = "http/derrick.rs"]
mod derrick;
#[path = "http/distribution.rs"]
mod distribution;
#[path = "http/events.rs"]
mod events;
#[path = "http/jobs.rs"]
mod jobs;
#[path = "http/layers.rs"]
mod layers;
#[path = "http/schemathesis.rs"]
mod schemathesis;

#[tokio::test]
async fn workspaces_are_created_with_labels_and_listed_by_them() {
    let api = Api::start().await;
    for (name, team) in [("a", "search"), ("b", "search"), ("c", "ads")] {
        let (status, body) = api
            .json(api.post("/v1/workspaces").json(&json!({
                "spec": { "runtime": "fake", "name": name },
                "labels": { "team": team, "run": "r1" },
            })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["labels"]["team"], team, "{body}");
    }
    let names = |body: &Value| -> Vec<String> {
        body["workspaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ws| ws["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = api.json(api.get("/v1/workspaces?label=team=search")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(&body), ["a", "b"]);
    let (_, body) = api
        .json(api.get("/v1/workspaces?label=team=ads,run=r1"))
        .await;
    assert_eq!(names(&body), ["c"]);
    let (status, body) = api.json(api.get("/v1/workspaces?label=team%20x=y")).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &["team x=y"],
    );

    let (status, body) = api
        .json(api.post("/v1/workspaces").json(&json!({
            "spec": fake_spec(),
            "labels": { "team": "bad value" },
        })))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &["labels", "team=bad value"],
    );
    assert_eq!(
        api.provider.list(true).unwrap().len(),
        3,
        "nothing made of a bad label"
    );
}
