//! The agent routes — info, sessions, the terminal — against a real
//! `berth-agent`: in `docker` workspaces, where it is the container's
//! PID 1, and in `local-agent` ones (the `local` runtime with an agent
//! process started for each running workspace on a socket of its own,
//! serving the workspace's directory), where its behaviour is easy to
//! watch from the host. Runtimes without an agent answer with a clear
//! error.

use super::*;
use async_trait::async_trait;
use berth_core::{
    ExecRequest, ExecStream, FileEntry, Isolation, Runtime, RuntimeError, Workspace, WorkspacePath,
};
use futures::{SinkExt as _, StreamExt as _};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// `local` workspaces, each served by a real agent while it runs.
struct AgentLocal {
    local: LocalRuntime,
    agent: PathBuf,
    sockets: PathBuf,
    running: Mutex<HashMap<String, tokio::process::Child>>,
}

impl AgentLocal {
    fn new(home: &Path) -> AgentLocal {
        AgentLocal {
            local: LocalRuntime::new(home),
            agent: berth_agent_bin::install(&home.join("agent-bin")).unwrap(),
            sockets: home.join("agents"),
            running: Mutex::new(HashMap::new()),
        }
    }

    fn socket(&self, ws: &Workspace) -> PathBuf {
        self.sockets.join(ws.id.as_str()).join("agent.sock")
    }

    async fn stop_agent(&self, ws: &Workspace) {
        let child = self.running.lock().unwrap().remove(ws.id.as_str());
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }
}

#[async_trait]
impl Runtime for AgentLocal {
    fn name(&self) -> &'static str {
        "local-agent"
    }

    fn description(&self) -> &'static str {
        "a directory on this host, served by a berth-agent"
    }

    async fn available(&self) -> Result<(), String> {
        Ok(())
    }

    async fn create(
        &self,
        ws: &Workspace,
        from_cache: Option<&str>,
    ) -> Result<serde_json::Value, RuntimeError> {
        self.local.create(ws, from_cache).await
    }

    fn host_path(&self, ws: &Workspace) -> Option<PathBuf> {
        self.local.host_path(ws)
    }

    async fn import(
        &self,
        ws: &Workspace,
        host_dir: &Path,
        dest: &WorkspacePath,
    ) -> Result<(), RuntimeError> {
        self.local.import(ws, host_dir, dest).await
    }

    async fn start(&self, ws: &Workspace) -> Result<serde_json::Value, RuntimeError> {
        let info = self.local.start(ws).await?;
        let socket = self.socket(ws);
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&socket);
        let child = tokio::process::Command::new(&self.agent)
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(self.local.host_path(ws).unwrap())
            .args(["--grace-ms", "500"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        self.running
            .lock()
            .unwrap()
            .insert(ws.id.to_string(), child);
        Ok(info)
    }

    async fn stop(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.stop_agent(ws).await;
        self.local.stop(ws).await
    }

    async fn remove(&self, ws: &Workspace) -> Result<(), RuntimeError> {
        self.stop_agent(ws).await;
        self.local.remove(ws).await
    }

    async fn exists(&self, ws: &Workspace) -> Result<bool, RuntimeError> {
        self.local.exists(ws).await
    }

    fn isolation(&self, ws: &Workspace) -> Isolation {
        self.local.isolation(ws)
    }

    async fn exec(
        &self,
        ws: &Workspace,
        request: ExecRequest,
        cancel: CancellationToken,
    ) -> Result<ExecStream, RuntimeError> {
        self.local.exec(ws, request, cancel).await
    }

    async fn read_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
    ) -> Result<berth_core::ReadStream, RuntimeError> {
        self.local.read_file(ws, path).await
    }

    async fn write_file(
        &self,
        ws: &Workspace,
        path: &WorkspacePath,
        data: Vec<u8>,
    ) -> Result<(), RuntimeError> {
        self.local.write_file(ws, path, data).await
    }

    async fn list_files(
        &self,
        ws: &Workspace,
        dir: &WorkspacePath,
    ) -> Result<Vec<FileEntry>, RuntimeError> {
        self.local.list_files(ws, dir).await
    }

    async fn remove_file(&self, ws: &Workspace, path: &WorkspacePath) -> Result<(), RuntimeError> {
        self.local.remove_file(ws, path).await
    }

    async fn save_cache(&self, ws: &Workspace, key: &str) -> Result<(), RuntimeError> {
        self.local.save_cache(ws, key).await
    }

    async fn has_cache(&self, key: &str) -> bool {
        self.local.has_cache(key).await
    }

    async fn remove_cache(&self, key: &str) -> Result<(), RuntimeError> {
        self.local.remove_cache(key).await
    }

    fn agent_socket(&self, ws: &Workspace) -> Option<PathBuf> {
        Some(self.socket(ws))
    }

    /// Empties the workspace's directory; its agent serves on, so that
    /// only the provider can end what was open in it.
    async fn reset(&self, ws: &Workspace, to: Option<&str>) -> Result<(), RuntimeError> {
        assert_eq!(to, None, "this runtime has no snapshots");
        let root = self.local.host_path(ws).unwrap();
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        Ok(())
    }
}

impl Api {
    async fn with_agents() -> Api {
        let home = tempfile::tempdir().unwrap();
        let runtime = Arc::new(AgentLocal::new(home.path()));
        Api::start_with_runtimes(home, vec![runtime], |config| config).await
    }

    /// A server whose provider keeps `output_limit` bytes per stream of a
    /// command that sets no limit.
    async fn with_agents_and_output_limit(output_limit: u64) -> Api {
        let home = tempfile::tempdir().unwrap();
        let runtime = Arc::new(AgentLocal::new(home.path()));
        Api::start_with_provider(
            home,
            vec![runtime],
            |provider| ProviderConfig {
                output_limit,
                ..provider
            },
            |config| config,
        )
        .await
    }

    async fn agent_workspace(&self) -> String {
        self.create(json!({ "runtime": "local-agent" })).await
    }

    async fn open_session(&self, id: &str, params: Value) -> String {
        let (status, body) = self
            .json(
                self.post(&format!("/v1/workspaces/{id}/sessions"))
                    .json(&params),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// Opens a session and answers its id and its shell's pid.
    async fn open_session_with_pid(&self, id: &str) -> (String, u32) {
        let (status, body) = self
            .json(self.post(&format!("/v1/workspaces/{id}/sessions")))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let pid = body["pid"].as_u64().unwrap();
        (
            body["id"].as_str().unwrap().to_string(),
            u32::try_from(pid).unwrap(),
        )
    }

    async fn session_exec(&self, id: &str, session: &str, command: &str) -> (StatusCode, Value) {
        self.json(
            self.post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
                .json(&json!({ "command": command })),
        )
        .await
    }

    fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }
}

#[tokio::test]
async fn info_reports_the_agent_and_the_interpreters_it_found() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let (status, info) = api
        .json(api.get(&format!("/v1/workspaces/{id}/info?detect=true")))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["root"], api.root(&id).display().to_string());
    assert!(!info["version"].as_str().unwrap().is_empty(), "{info}");
    let sh = info["interpreters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "sh")
        .unwrap_or_else(|| panic!("no sh among the interpreters: {info}"));
    assert!(
        Path::new(sh["path"].as_str().unwrap()).is_file(),
        "{sh} is not a file on this host"
    );
    assert_eq!(sh["source"], "detected");

    let (status, body) = api
        .json(api.get(&format!("/v1/workspaces/{id}/info?detect=maybe")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_query",
        &["detect"],
    );
}

#[tokio::test]
async fn runtimes_without_an_agent_say_so_on_every_agent_route() {
    let api = Api::with_agents().await;
    let id = api.local().await;
    let mentions = ["local", "agent", &id];
    let (status, body) = api
        .json(api.get(&format!("/v1/workspaces/{id}/info")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        &mentions,
    );
    let (status, body) = api
        .json(api.post(&format!("/v1/workspaces/{id}/sessions")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        &mentions,
    );
    let (status, body) = api.json(terminal_request(&api, &id, "")).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported",
        &mentions,
    );

    // A stopped workspace's agent is not there to ask.
    let id = api.agent_workspace().await;
    let (status, _) = api
        .json(api.post(&format!("/v1/workspaces/{id}/stop")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api
        .json(api.get(&format!("/v1/workspaces/{id}/info")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "wrong_state",
        &[&id, "stopped"],
    );
}

#[tokio::test]
async fn a_session_keeps_its_directory_variables_and_functions() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    std::fs::create_dir(api.root(&id).join("sub")).unwrap();
    let session = api
        .open_session(&id, json!({ "env": { "GREETING": "hi" } }))
        .await;

    let (status, body) = api
        .session_exec(
            &id,
            &session,
            "cd sub && export X=42 && f() { echo \"f:$1\"; }",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["exit"]["code"], 0);

    let (_, body) = api
        .session_exec(&id, &session, "pwd; echo \"$X $GREETING\"; f arg")
        .await;
    let expected = format!(
        "{}\n42 hi\nf:arg\n",
        api.root(&id).join("sub").canonicalize().unwrap().display()
    );
    assert_eq!(body["stdout"], expected, "{body}");

    // Exit codes, output without a final newline, and a prompt-like line
    // change nothing in how a command's end is found.
    let (_, body) = api
        .session_exec(
            &id,
            &session,
            "printf '$ done\\n> '; echo oops >&2; (exit 7)",
        )
        .await;
    assert_eq!(body["stdout"], "$ done\n> ");
    assert_eq!(body["stderr"], "oops\n");
    assert_eq!(body["exit"]["code"], 7);
    let (_, body) = api.session_exec(&id, &session, "echo $X").await;
    assert_eq!(body["stdout"], "42\n");

    // Streamed as exec is.
    let response = api
        .post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "command": "echo one; echo two >&2; exit_code=3; (exit $exit_code)" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = ndjson(response).await;
    assert_eq!(stream_text(&events, "stdout"), "one\n");
    assert_eq!(stream_text(&events, "stderr"), "two\n");
    assert_eq!(events.last().unwrap()["type"], "exit");
    assert_eq!(events.last().unwrap()["code"], 3);
}

#[tokio::test]
async fn an_interrupted_command_ends_and_the_session_lives_on() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let session = api.open_session(&id, json!({})).await;
    api.session_exec(&id, &session, "export KEPT=yes").await;

    let (status, body) = api
        .json(api.post(&format!("/v1/workspaces/{id}/sessions/{session}/interrupt")))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "interrupted": false }))
    );

    let response = api
        .post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "command": "echo started; sleep 30 && touch finished" }))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::new(response);
    assert_eq!(lines.next().await.unwrap()["data"], "started\n");
    let (status, body) = api
        .json(api.post(&format!("/v1/workspaces/{id}/sessions/{session}/interrupt")))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "interrupted": true }))
    );
    let rest = lines.rest().await;
    let exit = rest.last().unwrap();
    assert_eq!(exit["type"], "exit", "{rest:?}");
    assert_eq!(exit["cancelled"], true, "{exit}");
    assert_ne!(exit["code"], 0, "{exit}");

    let (_, body) = api.session_exec(&id, &session, "echo $KEPT").await;
    assert_eq!(body["stdout"], "yes\n", "{body}");
    assert!(!api.root(&id).join("finished").exists());
}

#[tokio::test]
async fn a_client_that_leaves_interrupts_its_session_command() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let session = api.open_session(&id, json!({})).await;
    let response = api
        .post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
        .header(header::ACCEPT, "application/x-ndjson")
        .json(&json!({ "command": "echo started; sleep 30 && touch finished" }))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::new(response);
    assert_eq!(lines.next().await.unwrap()["data"], "started\n");
    drop(lines);

    // Queued behind the abandoned command: answered only once it has
    // ended, which without the interrupt takes half a minute.
    let (status, body) = api.session_exec(&id, &session, "echo next").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "next\n");
    assert!(!api.root(&id).join("finished").exists());
}

#[tokio::test]
async fn sessions_close_and_unknown_ones_are_not_found() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let other = api.agent_workspace().await;
    let session = api.open_session(&id, json!({ "shell": "sh" })).await;

    // A session belongs to its workspace only.
    let (status, body) = api.session_exec(&other, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&session, &other],
    );

    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
                .json(&json!({ "command": "true", "cwd": "x" })),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_body",
        &["cwd"],
    );

    let response = api
        .request(
            Method::DELETE,
            &format!("/v1/workspaces/{id}/sessions/{session}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = api.session_exec(&id, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&session],
    );
    let (status, body) = api
        .json(api.request(
            Method::DELETE,
            &format!("/v1/workspaces/{id}/sessions/{session}"),
        ))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&session],
    );

    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/sessions"))
                .json(&json!({ "cwd": "missing" })),
        )
        .await;
    assert!(status.is_client_error(), "{status}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{body}"
    );
}

#[tokio::test]
async fn a_session_whose_agent_died_answers_with_the_loss() {
    let home = tempfile::tempdir().unwrap();
    let runtime = Arc::new(AgentLocal::new(home.path()));
    let api = Api::start_with_runtimes(home, vec![runtime.clone()], |config| config).await;
    let id = api.agent_workspace().await;
    let session = api.open_session(&id, json!({})).await;
    runtime.stop_agent(&api.provider.get(&id).unwrap()).await;

    let (status, body) = api.session_exec(&id, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&session, "has ended", "connection to the agent was lost"],
    );
    // Gone for good.
    let (status, body) = api.session_exec(&id, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &[&session],
    );
}

#[tokio::test]
async fn stopping_a_workspace_ends_its_sessions() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let session = api.open_session(&id, json!({})).await;
    let other = api.agent_workspace().await;
    let kept = api.open_session(&other, json!({})).await;
    for action in ["stop", "start"] {
        let (status, body) = api
            .json(api.post(&format!("/v1/workspaces/{id}/{action}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = api.session_exec(&id, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no session", &session, &id],
    );
    let (status, body) = api.session_exec(&other, &kept, "echo still").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "still\n");
}

#[tokio::test]
async fn a_session_command_keeps_no_more_than_the_providers_output_limit() {
    let api = Api::with_agents_and_output_limit(8).await;
    let id = api.agent_workspace().await;
    let session = api.open_session(&id, json!({})).await;
    let (status, body) = api
        .session_exec(
            &id,
            &session,
            "head -c 100 /dev/zero | tr '\\0' x; head -c 50 /dev/zero | tr '\\0' y >&2",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "xxxxxxxx", "{body}");
    assert_eq!(body["stderr"], "yyyyyyyy", "{body}");
    assert_eq!(body["exit"]["stdout_dropped"], 92, "{body}");
    assert_eq!(body["exit"]["stderr_dropped"], 42, "{body}");

    // A request's own limit still wins.
    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/sessions/{session}/exec"))
                .json(
                    &json!({ "command": "head -c 100 /dev/zero | tr '\\0' x", "output_limit": 20 }),
                ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "x".repeat(20), "{body}");
}

#[tokio::test]
async fn a_session_command_ends_at_the_specs_exec_timeout() {
    let api = Api::with_agents().await;
    let id = api
        .create(json!({ "runtime": "local-agent", "timeouts": { "exec": 1 } }))
        .await;
    let session = api.open_session(&id, json!({})).await;
    let (status, body) = api
        .session_exec(&id, &session, "echo started; sleep 30 && touch finished")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "started\n", "{body}");
    assert_eq!(body["exit"]["timed_out"], true, "{body}");
    assert!(!api.root(&id).join("finished").exists());
    // The session lives on past its command's timeout.
    let (_, body) = api.session_exec(&id, &session, "echo after").await;
    assert_eq!(body["stdout"], "after\n", "{body}");
}

#[tokio::test]
async fn a_reset_ends_the_sessions_and_terminals_of_the_old_instance() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let (session, shell) = api.open_session_with_pid(&id).await;
    let other = api.agent_workspace().await;
    let kept = api.open_session(&other, json!({})).await;
    let mut request = api
        .ws_url(&format!("/v1/workspaces/{id}/terminal?command=sh"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let terminal = terminal_pid(&mut socket).await;
    assert!(!process_gone(shell) && !process_gone(terminal));

    let (status, body) = api
        .json(
            api.post(&format!("/v1/workspaces/{id}/reset"))
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = api.session_exec(&id, &session, "true").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        &["no session", &session, &id],
    );
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            other => panic!("the terminal went on after the reset: {other:?}"),
        }
    }
    eventually(
        "the session's shell and the terminal's have ended",
        || async { process_gone(shell) && process_gone(terminal) },
    )
    .await;
    // Other workspaces' sessions, and new ones in the new instance, work.
    let (_, body) = api.session_exec(&other, &kept, "echo still").await;
    assert_eq!(body["stdout"], "still\n", "{body}");
    let fresh = api.open_session(&id, json!({})).await;
    let (_, body) = api.session_exec(&id, &fresh, "echo new").await;
    assert_eq!(body["stdout"], "new\n", "{body}");
}

/// The pid of the shell a terminal runs, as it answers it.
async fn terminal_pid<S>(socket: &mut S) -> u32
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures::Sink<Message>
        + Unpin,
    <S as futures::Sink<Message>>::Error: std::fmt::Debug,
{
    // The echoed input shows the expression, the output its value.
    socket
        .send(Message::Binary("echo pid:$(($$ + 0)):\n".into()))
        .await
        .unwrap();
    let mut seen = String::new();
    loop {
        let found = seen
            .split("pid:")
            .skip(1)
            .find_map(|rest| rest.split_once(':')?.0.parse().ok());
        if let Some(pid) = found {
            return pid;
        }
        seen += &read_until(socket, ":").await;
    }
}

/// Reads a terminal's frames until `needle` shows in its output.
async fn read_until<S>(socket: &mut S, needle: &str) -> String
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut seen = String::new();
    while !seen.contains(needle) {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Some(Ok(Message::Text(text))) => panic!("a text frame before `{needle}`: {text}"),
            other => panic!("the terminal ended before `{needle}` ({other:?}); it said: {seen}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_terminal_runs_over_a_websocket_with_resize_and_exit() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let mut request = api
        .ws_url(&format!(
            "/v1/workspaces/{id}/terminal?command=sh&rows=30&cols=100"
        ))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    // The typed line is echoed; the answer is what tells it ran.
    socket
        .send(Message::Binary("stty size; echo $((6 * 7))\n".into()))
        .await
        .unwrap();
    let seen = read_until(&mut socket, "42\r\n").await;
    assert!(seen.contains("30 100"), "{seen}");

    socket
        .send(Message::Text(
            r#"{"type":"resize","rows":50,"cols":132}"#.into(),
        ))
        .await
        .unwrap();
    socket
        .send(Message::Binary("stty size\n".into()))
        .await
        .unwrap();
    read_until(&mut socket, "50 132").await;

    socket
        .send(Message::Text(r#"{"type":"grow"}"#.into()))
        .await
        .unwrap();
    let error = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            Message::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "invalid_body");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("grow"),
        "{error}"
    );

    socket
        .send(Message::Binary("exit 3\n".into()))
        .await
        .unwrap();
    let exit = loop {
        match socket.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            Message::Binary(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["code"], 3, "{exit}");
    assert!(matches!(
        socket.next().await,
        Some(Ok(Message::Close(_))) | None
    ));
}

#[tokio::test]
async fn a_terminal_whose_client_leaves_ends_its_program() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let mut request = api
        .ws_url(&format!("/v1/workspaces/{id}/terminal"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let pid = terminal_pid(&mut socket).await;
    assert!(!process_gone(pid));
    socket.close(None).await.unwrap();
    drop(socket);
    eventually("the terminal's shell has ended", || async {
        process_gone(pid)
    })
    .await;
}

#[tokio::test]
async fn a_terminal_needs_a_websocket_upgrade_and_the_token() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    let (status, body) = api
        .json(api.get(&format!("/v1/workspaces/{id}/terminal")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UPGRADE_REQUIRED,
        "websocket_required",
        &["WebSocket"],
    );

    let request = api
        .ws_url(&format!("/v1/workspaces/{id}/terminal"))
        .into_client_request()
        .unwrap();
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("{other}"),
    }
}

use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[tokio::test]
async fn the_agent_routes_reach_a_docker_workspace() {
    let image = super::layers::image();
    let (api, _cleanup) = Api::with_docker().await;
    let id = api
        .create(json!({ "runtime": "docker", "image": image }))
        .await;

    let (status, info) = api
        .json(api.get(&format!("/v1/workspaces/{id}/info?detect=true")))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["pid"], 1, "the agent is the container's init: {info}");
    let names: Vec<&str> = info["interpreters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sh"], "busybox's shell and nothing else: {info}");

    let session = api.open_session(&id, json!({})).await;
    api.session_exec(&id, &session, "cd /tmp && export A=1")
        .await;
    let (status, body) = api
        .session_exec(
            &id,
            &session,
            "pwd; echo $A; exit_code() { return 4; }; exit_code",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stdout"], "/tmp\n1\n");
    assert_eq!(body["exit"]["code"], 4);

    let mut request = api
        .ws_url(&format!("/v1/workspaces/{id}/terminal"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::Binary("echo $((6 * 7)); exit\n".into()))
        .await
        .unwrap();
    read_until(&mut socket, "42").await;
}

/// A request to open a terminal with `query` (may be empty), as a
/// WebSocket client sends it.
fn terminal_request(api: &Api, id: &str, query: &str) -> reqwest::RequestBuilder {
    api.get(&format!("/v1/workspaces/{id}/terminal?{query}"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
}

#[tokio::test]
async fn what_the_agent_refuses_gets_the_code_of_the_callers_mistake() {
    let api = Api::with_agents().await;
    let id = api.agent_workspace().await;
    std::fs::write(api.root(&id).join("file.txt"), "x").unwrap();
    let session = |params: Value| {
        api.post(&format!("/v1/workspaces/{id}/sessions"))
            .json(&params)
    };
    let cases = [
        (
            session(json!({ "cwd": "missing" })),
            StatusCode::NOT_FOUND,
            "file_not_found",
            "`missing`",
        ),
        (
            session(json!({ "cwd": "../up" })),
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "cwd",
        ),
        (
            session(json!({ "cwd": "file.txt" })),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`file.txt` is not a directory",
        ),
        (
            session(json!({ "shell": "/no/such/shell" })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "command_not_started",
            "/no/such/shell",
        ),
        (
            terminal_request(&api, &id, "cwd=missing"),
            StatusCode::NOT_FOUND,
            "file_not_found",
            "`missing`",
        ),
        (
            terminal_request(&api, &id, "cwd=file.txt"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`file.txt` is not a directory",
        ),
    ];
    for (request, status, code, mention) in cases {
        let (got, body) = api.json(request).await;
        assert_error(got, &body, status, code, &[&id, mention]);
    }
}

/// Commands and files in docker workspaces go through the agent too, so
/// its refusals reach them as in every other runtime: a missing working
/// directory and a directory read as a file used to be 500s, and a
/// program that cannot start was named twice over.
#[tokio::test]
async fn what_a_docker_workspaces_agent_refuses_is_the_callers_mistake() {
    let image = super::layers::image();
    let (api, _cleanup) = Api::with_docker().await;
    let id = api
        .create(json!({ "runtime": "docker", "image": image }))
        .await;
    api.put_file(&id, "dir/file.txt", "x").await;
    let exec = |request: Value| {
        api.post(&format!("/v1/workspaces/{id}/exec"))
            .json(&request)
    };
    let cases = [
        (
            exec(json!({ "command": "true", "cwd": "missing" })),
            StatusCode::NOT_FOUND,
            "file_not_found",
            "`missing`",
        ),
        (
            exec(json!({ "command": ["/no/such/program"] })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "command_not_started",
            "/no/such/program",
        ),
        (
            api.get(&format!("/v1/workspaces/{id}/files/content?path=dir")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`dir`",
        ),
        (
            api.get(&format!("/v1/workspaces/{id}/files?path=dir/file.txt")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`dir/file.txt` is not a directory",
        ),
    ];
    for (request, status, code, mention) in cases {
        let (got, body) = api.json(request).await;
        assert_error(got, &body, status, code, &[&id, mention]);
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message.matches(mention).count(), 1, "{message}");
    }
}

/// A directory of a running docker workspace, made immutable from the host
/// (through the container's root) until dropped: a path that even the
/// container's root cannot write, as a read-only one is.
struct Immutable(PathBuf);

impl Immutable {
    fn set(id: &str, dir: &str) -> Immutable {
        let label = format!("label={}={id}", berth_runtime_docker::plan::LABEL_WORKSPACE);
        let container = command_output("docker", &["ps", "-q", "--filter", &label]);
        let pid = command_output(
            "docker",
            &["inspect", "-f", "{{.State.Pid}}", container.trim()],
        );
        let path = PathBuf::from(format!("/proc/{}/root", pid.trim()))
            .join(berth_core::spec::DEFAULT_ROOT.trim_start_matches('/'))
            .join(dir);
        command_output("chattr", &["+i", path.to_str().unwrap()]);
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        // Before the container goes: its layer cannot be removed otherwise.
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .output();
    }
}

/// Runs a program; its stdout, or a panic with its stderr.
fn command_output(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writing where the workspace does not let anyone write is refused as
/// such, naming the path; it used to be a 500 `runtime_error`. Nothing is
/// changed: no new file, no directory, the existing file neither
/// overwritten nor removed.
#[tokio::test]
async fn writing_where_a_docker_workspace_forbids_it_is_permission_denied() {
    let image = super::layers::image();
    let (api, _cleanup) = Api::with_docker().await;
    let id = api
        .create(json!({ "runtime": "docker", "image": image }))
        .await;
    api.put_file(&id, "locked/old.txt", "before").await;
    let _locked = Immutable::set(&id, "locked");

    let write = |path: &str| {
        api.request(
            Method::PUT,
            &format!("/v1/workspaces/{id}/files/content?path={path}"),
        )
        .body("after")
    };
    let cases = [
        ("locked/new.txt", write("locked/new.txt")),
        ("locked/old.txt", write("locked/old.txt")),
        ("locked/deeper/new.txt", write("locked/deeper/new.txt")),
        (
            "locked/old.txt",
            api.request(
                Method::DELETE,
                &format!("/v1/workspaces/{id}/files?path=locked/old.txt"),
            ),
        ),
    ];
    for (path, request) in cases {
        let (status, body) = api.json(request).await;
        assert_error(
            status,
            &body,
            StatusCode::FORBIDDEN,
            "permission_denied",
            &[&id, &format!("`{path}`")],
        );
    }
    let (status, listed) = api
        .json(api.get(&format!("/v1/workspaces/{id}/files?path=locked")))
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let names: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["locked/old.txt"], "{listed}");
    let old = api
        .get(&format!(
            "/v1/workspaces/{id}/files/content?path=locked/old.txt"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::OK);
    assert_eq!(old.text().await.unwrap(), "before");
}
