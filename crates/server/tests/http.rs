//! The HTTP API end to end: a real provider in a scratch `BERTH_HOME`, served
//! on 127.0.0.1:0 (or a unix socket) and driven by a real HTTP client.
#![expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]

use berth_provider::{Provider, ProviderConfig};
use berth_runtime_fake::{Behaviour, FakeRuntime};
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
        let fake = Arc::new(FakeRuntime::new());
        let provider = Provider::open(ProviderConfig::new(home.path()).runtime(fake.clone()))
            .await
            .unwrap();
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
        body["runtimes"],
        json!([{
            "name": "fake",
            "description": "in memory with scripted commands, for tests",
            "available": false,
            "reason": "switched off"
        }])
    );
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
