//! Derrick's routes with Derrick's semantics on a `local` workspace made
//! from a Derrick config: bash, the exit code of a timeout, paths in the
//! workspace's filesystem, what `DELETE` answers twice, and workspaces
//! that are the server's (listed by it, removed with it). The same routes
//! on isolated runtimes, driven through `derrick` itself, are in the CLI's
//! tests.

use super::*;

/// A server whose default spec is Derrick's config `config` (JSON), on
/// the `local` runtime, without a token, as the Derrick stand-in serves.
async fn derrick_server(config: &str) -> Api {
    let mut spec = berth_core::Spec::parse_derrick(config, berth_core::spec::Format::Json)
        .unwrap()
        .spec;
    spec.runtime = Some("local".into());
    Api::start_with(|server| ServerConfig {
        default_spec: Some(spec),
        token: None,
        insecure_no_auth: true,
        ..server
    })
    .await
}

async fn created(api: &Api) -> String {
    let (status, body) = api
        .json(api.post("/workspaces").json(&json!({ "env": {} })))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["id"].as_str().unwrap().to_string()
}

async fn cmd(api: &Api, id: &str, body: Value) -> Value {
    let (status, out) = api
        .json(
            api.post(&format!("/workspaces/{id}/cmd_with_output"))
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    out
}

#[tokio::test]
async fn commands_run_under_bash_and_a_timeout_answers_124_with_the_output_so_far() {
    let api = derrick_server(r#"{"name": "bash", "repositories": [], "setup_script": ""}"#).await;
    let id = created(&api).await;
    let script = "pushd /tmp >/dev/null && popd >/dev/null\n\
                  [[ -n \"$BASH_VERSION\" ]] && echo bash\n\
                  echo 'greet() { echo hi from source; }' > lib.sh && source lib.sh && greet\n\
                  cat <<-EOF\n\tindented\n\tEOF\n";
    let out = cmd(&api, &id, json!({ "cmd": script })).await;
    assert_eq!(
        (out["output"].as_str(), out["exit_code"].as_i64()),
        (Some("bash\nhi from source\nindented\n"), Some(0)),
        "{out}"
    );

    let out = cmd(
        &api,
        &id,
        json!({ "cmd": "echo started; sleep 30; echo never", "timeout": 1 }),
    )
    .await;
    assert_eq!(out["exit_code"], 124, "{out}");
    assert_eq!(out["timed_out"], true);
    assert_eq!(out["output"], "started\n");
    let (_, done) = api
        .json(
            api.post(&format!("/workspaces/{id}/cmd"))
                .json(&json!({ "cmd": "sleep 30", "timeout": 1 })),
        )
        .await;
    assert_eq!(done["exit_code"], 124, "{done}");

    // A timeout of 0 is no limit, as `timeout 0` took it.
    let out = cmd(
        &api,
        &id,
        json!({ "cmd": "sleep 1; echo done", "timeout": 0 }),
    )
    .await;
    assert_eq!(
        (out["output"].as_str(), out["exit_code"].as_i64()),
        (Some("done\n"), Some(0))
    );

    // Where there is no bash, the POSIX shell runs the command.
    let out = cmd(
        &api,
        &id,
        json!({ "cmd": "echo \"[$BASH_VERSION]\" $0", "env": { "PATH": "/nonexistent" } }),
    )
    .await;
    assert_eq!(out["output"], "[] /bin/sh\n", "{out}");
}

#[tokio::test]
async fn env_values_reach_commands_and_the_setup_script_verbatim() {
    let api = derrick_server(
        r#"{"name": "env", "repositories": [],
            "setup_script": "printf '%s' \"$PROJECT_ROOT\" > root.txt"}"#,
    )
    .await;
    let (status, body) = api
        .json(
            api.post("/workspaces")
                .json(&json!({ "env": { "PROJECT_ROOT": "/code/app" } })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap();
    let prompt = "Fix the bug.\nIt says \"can't\" and costs $5 (`echo no`) \\n 100%\n";
    let out = cmd(
        &api,
        id,
        json!({ "cmd": "cat root.txt; echo; printf '%s' \"$PROMPT\"", "env": { "PROMPT": prompt } }),
    )
    .await;
    assert_eq!(out["output"], format!("/code/app\n{prompt}"), "{out}");
    // `null` for absent things, as Python clients send it.
    let out = cmd(
        &api,
        id,
        json!({ "cmd": "echo ok", "env": null, "timeout": null, "working_dir": null }),
    )
    .await;
    assert_eq!(out["output"], "ok\n");
}

#[tokio::test]
async fn absolute_paths_of_a_derrick_workspace_stay_in_its_directory() {
    let upstream = tempfile::tempdir().unwrap();
    berth_testkit::make_repo(upstream.path(), &[("Cargo.toml", "[package]\n")]);
    let config = json!({
        "name": "paths",
        "repositories": [{
            "name": "app",
            "url": format!("file://{}", upstream.path().display()),
            "path": "/code/app",
        }],
        "setup_script": "echo ready > /code/app/ready 2>/dev/null || echo ready > code/app/ready",
    });
    let api = derrick_server(&config.to_string()).await;
    let id = created(&api).await;
    let dir = api.root(&id);
    let dir = dir.as_path();
    assert!(
        dir.join("code/app/Cargo.toml").is_file(),
        "cloned under the directory"
    );

    let out = cmd(
        &api,
        &id,
        json!({ "cmd": "ls; cat ready", "working_dir": "/code/app" }),
    )
    .await;
    assert_eq!(out["output"], "Cargo.toml\nready\nready\n", "{out}");
    let (status, written) = api
        .json(
            api.post(&format!("/workspaces/{id}/write_file"))
                .json(&json!({ "path": "/tmp/test.patch", "content": "cGF0Y2gK\n" })),
        )
        .await;
    assert_eq!(
        (status, written),
        (StatusCode::OK, json!({ "success": true }))
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("tmp/test.patch")).unwrap(),
        "patch\n"
    );
    let read = api
        .post(&format!("/workspaces/{id}/read_file"))
        .json(&json!({ "path": "/tmp/test.patch" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        read.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert_eq!(read.text().await.unwrap(), "patch\n");
    for escape in ["/../outside", "/tmp/../../outside"] {
        let (status, body) = api
            .json(
                api.post(&format!("/workspaces/{id}/write_file"))
                    .json(&json!({ "path": escape, "content": "aGk=" })),
            )
            .await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_path",
            &[".."],
        );
    }
    assert!(!dir.join("../outside").exists());
}

#[tokio::test]
async fn the_servers_workspaces_are_listed_removed_once_and_removed_when_it_stops() {
    let api = derrick_server(r#"{"name": "own", "repositories": [], "setup_script": ""}"#).await;
    // A workspace of the same home made otherwise is not Derrick's to list.
    let other = api.create(fake_spec()).await;
    let (_, list) = api.json(api.get("/workspaces")).await;
    assert_eq!(list, json!({ "workspaces": [] }));

    let first = created(&api).await;
    let second = created(&api).await;
    let (_, list) = api.json(api.get("/workspaces")).await;
    let ids: Vec<&str> = list["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), second.as_str()]);

    let delete = |id: &str| api.json(api.request(Method::DELETE, &format!("/workspaces/{id}")));
    assert_eq!(delete(&first).await, (StatusCode::OK, json!(true)));
    assert_eq!(delete(&first).await, (StatusCode::OK, json!(false)));
    assert_eq!(
        api.provider.get(&first).unwrap().state,
        berth_core::WorkspaceState::Removed
    );
    let (_, list) = api.json(api.get("/workspaces")).await;
    assert_eq!(list["workspaces"].as_array().unwrap().len(), 1);

    let provider = api.provider.clone();
    api.shutdown().await;
    assert_eq!(
        provider.get(&second).unwrap().state,
        berth_core::WorkspaceState::Removed,
        "the server's workspaces go with it"
    );
    assert_eq!(
        provider.get(&other).unwrap().state,
        berth_core::WorkspaceState::Running,
        "others stay"
    );
}

#[tokio::test]
async fn a_failed_setup_answers_its_error_and_leaves_no_workspace() {
    let api = derrick_server(
        r#"{"name": "fails", "repositories": [], "setup_script": "echo broken >&2; exit 3"}"#,
    )
    .await;
    let (status, body) = api
        .json(api.post("/workspaces").json(&json!({ "env": {} })))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "provision_failed",
        &["exited with code 3"],
    );
    let all = api.provider.list(true).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, berth_core::WorkspaceState::Removed);
}
